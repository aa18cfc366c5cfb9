"""ComfyUI nodes of the pack: thin adapters from ComfyUI types to the `llmga` library."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .assistant import Chat, LoadAssistant
from .canvas import OutpaintCanvas, PasteBack
from .edit import InversionEdit
from .long_prompt import LongPromptEncode, LongPromptEncodeSDXL
from .model_folders import register_model_folders
from .prompt import ExtractGenerationPrompt
from .restore import DiffRIRRestore, LoadDiffRIR
from .sd_loader import LoadSD15, LoadSDXL

register_model_folders()

NODES: list[type[io.ComfyNode]] = [
    LoadAssistant, Chat, ExtractGenerationPrompt, LongPromptEncode, LongPromptEncodeSDXL, LoadSD15, OutpaintCanvas,
    LoadSDXL, PasteBack, InversionEdit, LoadDiffRIR, DiffRIRRestore,
]


class LLMGAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> LLMGAExtension:
    return LLMGAExtension()
