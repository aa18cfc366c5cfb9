"""Prompt handling: `<gen_image>` reply parsing (`tags`), long prompts through SD1.5's CLIP (`long_prompt`, with its
(word:1.2) weights in `weighting` and the transformers binding in `clip_binding`)."""

from .tags import FALLBACK_OPTIONS, GEN_END, GEN_START, WHICH_OPTIONS, ParsedReply, parse_reply

__all__ = ["FALLBACK_OPTIONS", "GEN_END", "GEN_START", "WHICH_OPTIONS", "ParsedReply", "parse_reply"]
