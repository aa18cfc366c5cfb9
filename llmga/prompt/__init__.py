"""Prompt handling: `<gen_image>` reply parsing (and, later, long-prompt token chunking)."""

from .tags import FALLBACK_OPTIONS, GEN_END, GEN_START, WHICH_OPTIONS, ParsedReply, parse_reply

__all__ = ["FALLBACK_OPTIONS", "GEN_END", "GEN_START", "WHICH_OPTIONS", "ParsedReply", "parse_reply"]
