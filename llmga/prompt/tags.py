"""Split an LLMGA reply into the text for the user and the generation prompt(s) between `<gen_image>` tags.

The MLLM is trained to answer `"<gen_image> " + caption + " </gen_image>"` (llava/constants.py
DEFAULT_OUTPUT_START_TOKEN / DEFAULT_OUTPUT_END_TOKEN; the tags are plain text, not special tokens).

Well-formed replies give what the official CLI parser gives (first tag pair, text trimmed). Malformed
replies are handled as follows:

- no tags: no prompt; the fallback prompt is the whole reply (the official CLI's `caption`) or empty;
- only a start tag: the prompt is the rest of the text (as the official parser and Gradio demo do);
- only an end tag: the prompt is the text before it (the official parser takes the same text but then
  skips generation; we treat the end tag as a clear marker of a prompt);
- several pairs: each pair is one prompt (the Gradio demo renders one image per pair);
- an end tag with no open start tag after an earlier pair, or a start tag inside an open pair, is dropped.

Tags are matched case-insensitively and tolerate spaces inside the brackets (`< /gen_image >`), since a
sampled reply can drift from the exact training string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GEN_START = "<gen_image>"
GEN_END = "</gen_image>"

# How the official Gradio demo shows a prompt inside the chat (gradio_t2i_server.py replaces
# "<gen_image>" with "\n\n( The generation prompt: " and "</gen_image>" with ")\n\n").
DISPLAY_PREFIX = "(The generation prompt: "
DISPLAY_SUFFIX = ")"

_TAG = re.compile(r"<\s*(/?)\s*gen_image\s*>", re.IGNORECASE)
_BLANK_LINES = re.compile(r"\n{3,}")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ParsedReply:
    """A reply split into its parts.

    prompts: the non-empty generation prompts, in reply order, each trimmed.
    display_text: the reply for the user, each tagged prompt rendered as "(The generation prompt: ...)".
    fallback: the text to use as prompt when the reply has no tags (the whole reply, trimmed).
    """

    prompts: tuple[str, ...]
    display_text: str
    fallback: str

    @property
    def has_prompt(self) -> bool:
        return bool(self.prompts)

    def prompt(self, which: str = "first", no_tag_fallback: str = "whole reply") -> str:
        """The generation prompt to hand to Stable Diffusion.

        which: "first" (the official behaviour) or "all" (every prompt, one per line; whitespace inside a
            prompt, newlines included, is collapsed to single spaces so each prompt stays on one line).
        no_tag_fallback: "whole reply" or "empty": what to return when the reply holds no prompt.
        """
        if which not in WHICH_OPTIONS:
            raise ValueError(f"which is {which!r}; expected one of {WHICH_OPTIONS}")
        if no_tag_fallback not in FALLBACK_OPTIONS:
            raise ValueError(f"no_tag_fallback is {no_tag_fallback!r}; expected one of {FALLBACK_OPTIONS}")
        if not self.prompts:
            return self.fallback if no_tag_fallback == "whole reply" else ""
        if which == "first":
            return self.prompts[0]
        return "\n".join(_WHITESPACE.sub(" ", p) for p in self.prompts)


WHICH_OPTIONS = ("first", "all")
FALLBACK_OPTIONS = ("whole reply", "empty")


def parse_reply(reply: str) -> ParsedReply:
    """Parse an assistant reply.

    reply: any text, e.g. "Sure. <gen_image> a red fox in snow </gen_image>". None is treated as "".
    Returns the prompts, the display text and the no-tag fallback (see the module docstring for the rules).
    """
    text = reply or ""
    segments: list[tuple[str, str]] = []  # ("text" | "prompt", content), in reply order
    open_prompt: list[str] | None = None
    seen_tag = False
    cursor = 0
    for match in _TAG.finditer(text):
        piece = text[cursor : match.start()]
        cursor = match.end()
        is_end = bool(match.group(1))
        if open_prompt is not None:
            open_prompt.append(piece)
            if is_end:
                segments.append(("prompt", "".join(open_prompt)))
                open_prompt = None
            continue  # a start tag inside an open prompt is dropped
        if is_end and not seen_tag:
            segments.append(("prompt", piece))  # only an end tag so far: the text before it is the prompt
        else:
            segments.append(("text", piece))
            if not is_end:
                open_prompt = []
        seen_tag = True
    tail = text[cursor:]
    segments.append(("prompt", "".join(open_prompt) + tail) if open_prompt is not None else ("text", tail))

    prompts = tuple(p for kind, content in segments if kind == "prompt" and (p := content.strip()))
    return ParsedReply(prompts=prompts, display_text=_render_display(segments), fallback=text.strip())


def _render_display(segments: list[tuple[str, str]]) -> str:
    parts: list[str] = []
    after_prompt = False
    for kind, content in segments:
        if kind == "text":
            parts.append(content.lstrip(" \t") if after_prompt else content)
            after_prompt = False
        elif content.strip():
            if parts:
                parts[-1] = parts[-1].rstrip(" \t")
            parts.append(f"\n\n{DISPLAY_PREFIX}{content.strip()}{DISPLAY_SUFFIX}\n\n")
            after_prompt = True
    return _BLANK_LINES.sub("\n\n", "".join(parts)).strip()
