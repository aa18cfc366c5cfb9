"""LLMGA Long Prompt Encode: the assistant's long prompts as SD1.5 conditioning, encoded the way LLMGA's SD was trained.

The algorithm is `llmga.prompt.long_prompt`; this file binds it to ComfyUI's CLIP object (its SD1.5 tokenizer and
`encode_from_tokens`), so CLIP skip, LoRA-patched CLIPs and ComfyUI's device handling all apply.
"""

from __future__ import annotations

import logging

import torch
from comfy.sd1_clip import SD1Tokenizer
from comfy_api.latest import io, ui

from ..llmga.prompt.long_prompt import encode_long_prompts
from .errors import reported_as
from .schema import pack_schema

MODES = ("llmga", "lpw", "comfy")
logger = logging.getLogger("comfyui-llmga")


class ComfyCLIPBinding:
    """`tokenize` and `encode` for the long-prompt encoder, backed by a ComfyUI SD1.5 CLIP."""

    def __init__(self, clip):
        tokenizer = getattr(clip.tokenizer, "clip_l", None)
        if not isinstance(clip.tokenizer, SD1Tokenizer) or clip.tokenizer.clip_name != "l" or tokenizer is None:
            raise ValueError("this CLIP is not SD1.5's (CLIP-L only): LLMGA's long-prompt encoding is for SD1.5 "
                             "models; use ComfyUI's CLIPTextEncode for other model families, or mode 'comfy'")
        self.clip = clip
        self.hf_tokenizer = tokenizer.tokenizer
        self.bos, self.eos = tokenizer.start_token, tokenizer.end_token
        self.pad = tokenizer.pad_token if tokenizer.pad_token is not None else tokenizer.end_token
        self.extras: list[dict] = []  # per encode call, what ComfyUI returns beside cond and pooled output (hooks)

    def tokenize(self, text: str) -> list[int]:
        """Content ids of `text`, no BOS/EOS, no truncation (the raw CLIP tokenizer, as LLMGA's training used)."""
        return list(self.hf_tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [n, 77] -> hidden [n, 77, C] and pooled [n, C'] (ComfyUI returns the first window's pooled output,
        which is the one the conditioning keeps; it is repeated for the others: encode with `call_per_prompt`)."""
        chunks = [[(int(token), 1.0) for token in row] for row in ids.tolist()]
        out = self.clip.encode_from_tokens({"l": chunks}, return_dict=True)
        self.extras.append({key: value for key, value in out.items() if key not in ("cond", "pooled_output")})
        hidden = out["cond"].reshape(len(chunks), ids.shape[1], -1)
        pooled = out["pooled_output"]
        return hidden, pooled.expand(len(chunks), -1) if pooled is not None else torch.zeros(len(chunks), 1)


class LongPromptEncode(io.ComfyNode):
    """Encode a long (up to 300-token) prompt and a negative prompt for SD1.5 the way LLMGA's SD models were
    trained; both conditionings get the same length and work with KSampler and ControlNet."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return pack_schema(cls, "LLMGALongPromptEncode", "LLMGA Long Prompt Encode", "conditioning", inputs=[
            io.Clip.Input("clip", tooltip="An SD1.5 CLIP (from LLMGA Load SD1.5 or any SD1.5 checkpoint)."),
            io.String.Input("prompt", multiline=True, default="",
                            tooltip="The generation prompt, e.g. from LLMGA Chat's 'generation prompt'."),
            io.String.Input("negative_prompt", multiline=True, default="",
                            tooltip="The negative prompt; the official LLMGA code uses an empty one."),
            io.Combo.Input("mode", options=list(MODES), default="llmga",
                           tooltip="llmga: the stage-2 training encoding (up to 4 x 75 tokens, one BOS/EOS pair "
                           "around the whole prompt) — best for LLMGA's SD models. lpw: the official inference "
                           "pipeline (every 75-token chunk with its own BOS/EOS, (word:1.2) weights). comfy: "
                           "ComfyUI's own CLIPTextEncode."),
            io.Int.Input("max_chunks", default=0, min=0, max=8,
                         tooltip="How many 75-token chunks at most; 0 = the mode's default (llmga 4, lpw 3 as the "
                         "official text-to-image CLI; the official inpainting pipeline uses 4)."),
        ], outputs=[
            io.Conditioning.Output("positive", display_name="positive"),
            io.Conditioning.Output("negative", display_name="negative"),
        ])

    @classmethod
    def execute(cls, clip, prompt: str, negative_prompt: str, mode: str, max_chunks: int) -> io.NodeOutput:
        with reported_as("LLMGA Long Prompt Encode"):
            if clip is None:
                raise ValueError("no CLIP connected; the checkpoint may lack a text encoder")
            if mode == "comfy":
                encoded = [clip.encode_from_tokens_scheduled(clip.tokenize(text)) for text in (prompt, negative_prompt)]
                return io.NodeOutput(*encoded, ui=ui.PreviewText("ComfyUI's native encoding"))
            binding = ComfyCLIPBinding(clip)
            result = encode_long_prompts(prompt, negative_prompt, binding.tokenize, binding.encode, mode=mode,
                                         bos=binding.bos, eos=binding.eos, pad=binding.pad,
                                         max_chunks=max_chunks or None, call_per_prompt=True)
        conditionings = [[[encoded.cond, {"pooled_output": encoded.pooled, **extra}]]
                         for encoded, extra in zip((result.positive, result.negative), binding.extras, strict=True)]
        warnings = result.truncation_warnings()
        for warning in warnings:
            logger.warning("LLMGA Long Prompt Encode: %s", warning)
        return io.NodeOutput(*conditionings, ui=ui.PreviewText("\n".join([result.summary(), *warnings])))
