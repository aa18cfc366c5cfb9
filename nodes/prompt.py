"""Nodes that work on assistant replies and prompts as text."""

from __future__ import annotations

from comfy_api.latest import io

from ..llmga.prompt import FALLBACK_OPTIONS, WHICH_OPTIONS, parse_reply
from .schema import pack_schema


class ExtractGenerationPrompt(io.ComfyNode):
    """Split an LLMGA reply into the generation prompt between <gen_image> tags and the text shown to the user."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return pack_schema(cls, "LLMGAExtractGenerationPrompt", "LLMGA Extract Generation Prompt", "prompt", inputs=[
            io.String.Input(
                "reply", multiline=True, default="",
                tooltip="The assistant's reply, e.g. 'Sure. <gen_image> a red fox in snow </gen_image>'.",
            ),
            io.Combo.Input(
                "which", options=list(WHICH_OPTIONS), default="first",
                tooltip="'first': the first tagged prompt, as the official LLMGA code uses. "
                "'all': every tagged prompt, one per line (for batching several images).",
            ),
            io.Combo.Input(
                "no_tag_fallback", options=list(FALLBACK_OPTIONS), default="whole reply",
                tooltip="The prompt to output when the reply has no <gen_image> tag: the whole reply "
                "(the official code's behaviour) or an empty string. 'has prompt' is false either way.",
            ),
        ], outputs=[
            io.String.Output("generation_prompt", display_name="generation prompt",
                             tooltip="The text for Stable Diffusion, trimmed."),
            io.String.Output(
                "reply_text", display_name="reply text",
                tooltip="The reply for the user, each prompt shown as '(The generation prompt: ...)'.",
            ),
            io.Boolean.Output("has_prompt", display_name="has prompt",
                              tooltip="True when the reply holds at least one non-empty tagged prompt."),
        ])

    @classmethod
    def execute(cls, reply: str, which: str, no_tag_fallback: str) -> io.NodeOutput:
        parsed = parse_reply(reply)
        prompt = parsed.prompt(which=which, no_tag_fallback=no_tag_fallback)
        return io.NodeOutput(prompt, parsed.display_text, parsed.has_prompt)
