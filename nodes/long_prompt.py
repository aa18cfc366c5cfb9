"""LLMGA Long Prompt Encode: the assistant's long prompts as SD1.5 conditioning, encoded the way LLMGA's SD was trained.

The algorithm is `llmga.prompt.long_prompt`; this file binds it to ComfyUI's CLIP object (its SD1.5 tokenizer and
`encode_from_tokens`), so CLIP skip, LoRA-patched CLIPs and ComfyUI's device handling all apply.
"""

from __future__ import annotations

import logging

import torch
from comfy.sd1_clip import SD1Tokenizer
from comfy_api.latest import io, ui

from ..llmga.prompt.long_prompt import (
    LLMGA_MAX_CHUNKS,
    LPW_T2I_MAX_CHUNKS,
    chunk_prompt_tokens,
    encode_chunks,
    tokenize_prompt,
)

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
        self.extra: dict = {}

    def tokenize(self, text: str) -> list[int]:
        """Content ids of `text`, no BOS/EOS, no truncation (the raw CLIP tokenizer, as LLMGA's training used)."""
        return list(self.hf_tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [n, 77] -> hidden [n, 77, C] and pooled [n, C'] (ComfyUI returns the first window's pooled output,
        which is the one the conditioning keeps; it is repeated for the others)."""
        chunks = [[(int(token), 1.0) for token in row] for row in ids.tolist()]
        out = self.clip.encode_from_tokens({"l": chunks}, return_dict=True)
        self.extra = {key: value for key, value in out.items() if key not in ("cond", "pooled_output")}
        hidden = out["cond"].reshape(len(chunks), ids.shape[1], -1)
        pooled = out["pooled_output"]
        return hidden, pooled.expand(len(chunks), -1) if pooled is not None else torch.zeros(len(chunks), 1)


class LongPromptEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LLMGALongPromptEncode",
            display_name="LLMGA Long Prompt Encode",
            category="LLMGA/conditioning",
            description="Encode a long (up to 300-token) prompt and a negative prompt for SD1.5 the way LLMGA's SD "
            "models were trained; both conditionings get the same length and work with KSampler and ControlNet.",
            inputs=[
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
            ],
            outputs=[
                io.Conditioning.Output("positive", display_name="positive"),
                io.Conditioning.Output("negative", display_name="negative"),
            ],
        )

    @classmethod
    def execute(cls, clip, prompt: str, negative_prompt: str, mode: str, max_chunks: int) -> io.NodeOutput:
        texts = (prompt, negative_prompt)
        if clip is None:
            raise RuntimeError("LLMGA Long Prompt Encode: no CLIP connected; the checkpoint may lack a text encoder")
        if mode == "comfy":
            encoded = [clip.encode_from_tokens_scheduled(clip.tokenize(text)) for text in texts]
            return io.NodeOutput(*encoded, ui=ui.PreviewText("ComfyUI's native encoding"))
        try:
            binding = ComfyCLIPBinding(clip)
            limit = max_chunks or (LLMGA_MAX_CHUNKS if mode == "llmga" else LPW_T2I_MAX_CHUNKS)
            tokens = [tokenize_prompt(text, binding.tokenize, mode=mode, max_chunks=limit) for text in texts]
            chunked = chunk_prompt_tokens(tokens, bos=binding.bos, eos=binding.eos, pad=binding.pad)
        except ValueError as error:
            raise RuntimeError(f"LLMGA Long Prompt Encode: {error}") from error
        conditionings = []
        for prompt in chunked:  # one CLIP call per prompt, so each keeps its own first-window pooled output
            (encoded,) = encode_chunks([prompt], binding.encode, mode=mode)
            conditionings.append([[encoded.cond, {"pooled_output": encoded.pooled, **binding.extra}]])
        report = [f"{mode}: {len(chunked[0].chunks)} chunk(s), {conditionings[0][0][0].shape[1]} positions"]
        for name, token_list in zip(("positive", "negative"), tokens, strict=True):
            if token_list.dropped:
                message = f"{name} prompt: dropped {token_list.dropped} tokens past the {75 * limit}-token limit"
                logger.warning("LLMGA Long Prompt Encode: %s", message)
                report.append(message)
        return io.NodeOutput(*conditionings, ui=ui.PreviewText("\n".join(report)))
