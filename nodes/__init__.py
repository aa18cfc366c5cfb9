"""ComfyUI nodes of the pack: thin adapters from ComfyUI types to the `llmga` library."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .prompt import ExtractGenerationPrompt

NODES: list[type[io.ComfyNode]] = [ExtractGenerationPrompt]


class LLMGAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> LLMGAExtension:
    return LLMGAExtension()
