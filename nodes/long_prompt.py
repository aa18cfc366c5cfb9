"""LLMGA Long Prompt Encode (SD1.5) and LLMGA Long Prompt Encode (SDXL): the assistant's long prompts as native
conditioning, encoded the way LLMGA's SD models were trained.

The algorithms are `llmga.prompt.long_prompt` (SD1.5) and `llmga.prompt.long_prompt_xl` (SDXL); this file binds them to
ComfyUI's CLIP object (its tokenizers and `encode_from_tokens`), so CLIP skip, LoRA-patched CLIPs and ComfyUI's device
handling all apply.
"""

from __future__ import annotations

import logging

import torch
from comfy.sd1_clip import SD1Tokenizer
from comfy.sdxl_clip import SDXLClipModel, SDXLRefinerClipModel, SDXLTokenizer
from comfy_api.latest import io, ui

from ..llmga.prompt.long_prompt import encode_long_prompts
from ..llmga.prompt.long_prompt_xl import encode_sdxl_long_prompts
from .errors import reported_as
from .schema import pack_schema

MODES = ("llmga", "lpw", "comfy")
SDXL_MODES = ("llmga", "comfy")
logger = logging.getLogger("comfyui-llmga")

SD15_NODE = "LLMGA Long Prompt Encode"
SDXL_NODE = "LLMGA Long Prompt Encode (SDXL)"


def clip_family(clip) -> str:
    """Which text encoders a ComfyUI CLIP holds: "sd15" (CLIP-L), "sdxl" (CLIP-L and CLIP-G), "sdxl_refiner"
    (CLIP-G alone) or "other"."""
    model, tokenizer = getattr(clip, "cond_stage_model", None), getattr(clip, "tokenizer", None)
    if isinstance(model, SDXLClipModel) and isinstance(tokenizer, SDXLTokenizer):
        return "sdxl"
    if isinstance(model, SDXLRefinerClipModel):
        return "sdxl_refiner"
    if isinstance(tokenizer, SD1Tokenizer) and tokenizer.clip_name == "l" and getattr(tokenizer, "clip_l", None):
        return "sd15"
    return "other"


def require_clip_family(clip, family: str) -> None:
    """Refuse a CLIP of another family than `family` ("sd15" or "sdxl") with one line that names the node to use."""
    found = clip_family(clip)
    if found == family:
        return
    if found == "sdxl":
        raise ValueError(f"this CLIP is SDXL's (CLIP-L and CLIP-G): use {SDXL_NODE} for SDXL models")
    if found == "sd15":
        raise ValueError(f"this CLIP is SD1.5's (CLIP-L only): use {SD15_NODE} for SD1.5 models")
    if found == "sdxl_refiner":
        raise ValueError("this CLIP is an SDXL refiner's (CLIP-G only): LLMGA's SDXL models use the SDXL base CLIP "
                         "(CLIP-L and CLIP-G); load the base model's CLIP, or use mode 'comfy'")
    wanted = "SD1.5's (CLIP-L only)" if family == "sd15" else "SDXL's (CLIP-L and CLIP-G)"
    models = "SD1.5" if family == "sd15" else "SDXL"
    raise ValueError(f"this CLIP is not {wanted}: LLMGA's long-prompt encoding is for {models} models; use "
                     "ComfyUI's CLIPTextEncode for other model families, or mode 'comfy'")


class ComfyCLIPBinding:
    """`tokenize` and `encode` for the long-prompt encoder, backed by a ComfyUI SD1.5 CLIP."""

    def __init__(self, clip):
        require_clip_family(clip, "sd15")
        tokenizer = clip.tokenizer.clip_l
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


class ComfySDXLCLIPBinding:
    """SDXL's two text encoders for `llmga.prompt.long_prompt_xl` (its `SDXLTextEncoders`), backed by a ComfyUI SDXL
    CLIP: both encoders run in one `encode_from_tokens` call, which returns the pooled output of the first CLIP-G
    window only (`pooled_per_call`)."""

    pooled_per_call = True

    def __init__(self, clip):
        require_clip_family(clip, "sdxl")
        clip_l, clip_g = clip.tokenizer.clip_l, clip.tokenizer.clip_g
        self.clip = clip
        self.tokenizers = (clip_l.tokenizer, clip_g.tokenizer)
        self.bos, self.eos = clip_l.start_token, clip_l.end_token
        self.pad_1, self.pad_2 = clip_l.pad_token, clip_g.pad_token  # 49407 and 0 ("!"), as SDXL's tokenizers
        self.width_1 = clip_l.embedding_size  # CLIP-L's channels come first in ComfyUI's SDXL cond
        self.extras: list[dict] = []  # per encode call, what ComfyUI returns beside cond and pooled output (hooks)

    def tokenize_1(self, text: str) -> list[int]:
        """CLIP-L's content ids of `text`, no BOS/EOS, no truncation."""
        return list(self.tokenizers[0](text, add_special_tokens=False, verbose=False)["input_ids"])

    def tokenize_2(self, text: str) -> list[int]:
        """CLIP-G's content ids of `text`, no BOS/EOS, no truncation."""
        return list(self.tokenizers[1](text, add_special_tokens=False, verbose=False)["input_ids"])

    def encode(self, ids_1: torch.Tensor, ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windows ids_1 [n1, 77] (CLIP-L) and ids_2 [n2, 77] (CLIP-G) -> hidden [n1, 77, 768], [n2, 77, 1280] (the
        CLIP's layer, penultimate by default, no final norm) and CLIP-G's projected pooled output of the first ids_2
        window, repeated [n2, 1280]."""
        rows_1, rows_2 = ids_1.tolist(), ids_2.tolist()
        n = max(len(rows_1), len(rows_2))  # ComfyUI cuts both encoders to the shorter: give both n windows
        windows = {name: [[(int(t), 1.0) for t in row] for row in rows + rows[-1:] * (n - len(rows))]
                   for name, rows in (("l", rows_1), ("g", rows_2))}
        out = self.clip.encode_from_tokens(windows, return_dict=True)
        self.extras.append({key: value for key, value in out.items() if key not in ("cond", "pooled_output")})
        if out["pooled_output"] is None:
            raise ValueError("this SDXL CLIP returned no pooled output; SDXL conditioning needs CLIP-G's")
        hidden = out["cond"].reshape(n, ids_1.shape[1], -1)
        pooled = out["pooled_output"][:1]
        return hidden[: len(rows_1), :, : self.width_1], hidden[: len(rows_2), :, self.width_1 :], pooled.expand(
            len(rows_2), -1)


class LongPromptEncode(io.ComfyNode):
    """Encode a long (up to 300-token) prompt and a negative prompt for SD1.5 the way LLMGA's SD models were
    trained; both conditionings get the same length and work with KSampler and ControlNet."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return pack_schema(cls, "LLMGALongPromptEncode", SD15_NODE, "conditioning", inputs=[
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
        with reported_as(SD15_NODE):
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
            logger.warning("%s: %s", SD15_NODE, warning)
        return io.NodeOutput(*conditionings, ui=ui.PreviewText("\n".join([result.summary(), *warnings])))


def _size_inputs() -> list:
    tips = {
        "width": "The original image width SDXL is conditioned on (original_size); the official pipeline uses the "
                 "output size, 1024.",
        "height": "The original image height SDXL is conditioned on (original_size); the official pipeline uses the "
                  "output size, 1024.",
        "crop_w": "The left crop SDXL is conditioned on (crops_coords_top_left); 0 = uncropped, as the official.",
        "crop_h": "The top crop SDXL is conditioned on (crops_coords_top_left); 0 = uncropped, as the official.",
        "target_width": "The target width SDXL is conditioned on (target_size); the official pipeline uses the output "
                        "size, 1024.",
        "target_height": "The target height SDXL is conditioned on (target_size); the official pipeline uses the "
                         "output size, 1024.",
    }
    defaults = {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}
    return [io.Int.Input(name, default=defaults[name], min=0, max=16384, tooltip=tip) for name, tip in tips.items()]


class LongPromptEncodeSDXL(io.ComfyNode):
    """Encode a long (up to 300-token) prompt and a negative prompt for SDXL the way LLMGA's SDXL models were trained
    and are run (both text encoders, interior BOS/EOS dropped, the pooled output of the last chunk, an empty negative
    as zeros); the conditioning carries the size conditioning KSampler needs, like CLIPTextEncodeSDXL."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return pack_schema(cls, "LLMGALongPromptEncodeSDXL", SDXL_NODE, "conditioning", inputs=[
            io.Clip.Input("clip", tooltip="An SDXL CLIP (CLIP-L and CLIP-G: from an SDXL checkpoint, the LLMGA SDXL "
                          "loader, or DualCLIPLoader of type sdxl)."),
            io.String.Input("prompt", multiline=True, default="",
                            tooltip="The generation prompt, e.g. from LLMGA Chat's 'generation prompt'."),
            io.String.Input("negative_prompt", multiline=True, default="",
                            tooltip="The negative prompt. Empty: zeros, as the official LLMGA SDXL pipeline uses "
                            "(mode comfy encodes the empty text instead, as CLIPTextEncodeSDXL)."),
            io.Combo.Input("mode", options=list(SDXL_MODES), default="llmga",
                           tooltip="llmga: LLMGA's SDXL encoding, the one its SDXL models were trained with and the "
                           "official pipeline runs (up to 4 x 75 tokens, one BOS/EOS pair around the whole prompt, "
                           "the last chunk's pooled output). comfy: ComfyUI's own CLIPTextEncodeSDXL."),
            io.Int.Input("max_chunks", default=0, min=0, max=8,
                         tooltip="How many 75-token chunks at most; 0 = the official 4 (300 tokens)."),
            *_size_inputs(),
        ], outputs=[
            io.Conditioning.Output("positive", display_name="positive"),
            io.Conditioning.Output("negative", display_name="negative"),
        ])

    @classmethod
    def execute(cls, clip, prompt: str, negative_prompt: str, mode: str, max_chunks: int, width: int, height: int,
                crop_w: int, crop_h: int, target_width: int, target_height: int) -> io.NodeOutput:
        sizes = {"width": width, "height": height, "crop_w": crop_w, "crop_h": crop_h, "target_width": target_width,
                 "target_height": target_height}
        with reported_as(SDXL_NODE):
            if clip is None:
                raise ValueError("no CLIP connected; the checkpoint may lack a text encoder")
            if mode == "comfy":
                encoded = [clip.encode_from_tokens_scheduled(clip.tokenize(text), add_dict=sizes)
                           for text in (prompt, negative_prompt)]
                return io.NodeOutput(*encoded, ui=ui.PreviewText("ComfyUI's native encoding"))
            binding = ComfySDXLCLIPBinding(clip)
            result = encode_sdxl_long_prompts(binding, prompt, negative_prompt, max_chunks=max_chunks or None)
        # The encoder ran once for the prompt and once more for an explicit negative; a zero negative keeps the
        # prompt's extras (hooks), as ConditioningZeroOut would.
        extras = (binding.extras[0], binding.extras[-1])
        conditionings = [[[embeddings, {"pooled_output": pooled, **sizes, **extra}]] for embeddings, pooled, extra in (
            (result.embeddings, result.pooled, extras[0]),
            (result.negative_embeddings, result.negative_pooled, extras[1]),
        )]
        warnings = result.truncation_warnings()
        for warning in warnings:
            logger.warning("%s: %s", SDXL_NODE, warning)
        return io.NodeOutput(*conditionings, ui=ui.PreviewText("\n".join([result.summary(), *warnings])))
