"""Stable Diffusion 1.5 and SDXL text-to-image, inpainting and outpainting on diffusers, with LLMGA's long-prompt
encodings.

`load_sd_pipeline` builds a diffusers pipeline from a diffusers folder of either family, told apart by its configs
(`read_sd_model`: SDXL's size embedding, 2048-wide cross-attention, second text encoder), never by its name:
SD1.5 (llmga-sd15-t2i-v2, llmga-sd15-inpainting-v2, any SD1.5 folder; `load_sd15_pipeline`) or SDXL (llmga-sdxl-t2i,
llmga-sdxl-inpainting-v2 with its 9-channel UNet, any SDXL base folder; `load_sdxl_pipeline`); those live in
`llmga.sd.pipeline_loading` and are re-exported here. Prompts go through
`llmga.prompt.long_prompt` (SD1.5: up to 300 tokens, "llmga" or "lpw" mode) or `llmga.prompt.long_prompt_xl` (SDXL:
the encoding LLMGA's SDXL models were trained with, which the official SDXL pipelines also run; no negative prompt
gives zero negative embeddings, as `force_zeros_for_empty_prompt`) and reach diffusers' stock pipelines as
`prompt_embeds` / `negative_prompt_embeds` (and SDXL's `pooled_prompt_embeds` / `negative_pooled_prompt_embeds`).
Images go in and come out as PIL images; masks are [H, W] floats in [0, 1] (or PIL images), 1 / white where new
content is painted.

The official CLIs' settings (`llmga.sd.official.official_sampling`: cli-sd15.py 50 steps, guidance 7.5, 512x512;
cli-sdxl.py 50 steps, 5.0, 1024x1024; cli-sdxl-inpainting.py 30 steps, 7.5, strength 0.8, 1024x1024) are what
callers pass (the `python -m llmga` commands default to them); every run uses the scheduler saved with the model
(PNDM for the released SD1.5 folders, Euler for the SDXL ones); SDXL's micro-conditioning (original and target size
the output's, crop (0, 0)) is what the stock pipelines compute, as the official ones do. `llmga.sd.official`
reproduces the scripts (their `--official` mode). Where this module differs from them:
- no safety checker (SD1.5) or invisible watermark (SDXL) is loaded (the released SD1.5 folders name a checker the
  official scripts ran; the SDXL watermark needs a package the official code does not install);
- the SD1.5 prompt encoding is a choice: "llmga" (the default here), the one the SD UNet was trained with, or "lpw";
- SD1.5 inpainting runs at the image's own size rounded to multiples of 8 (the official script stretches every input
  to 512x512 and returns 512x512), SDXL inpainting at the pipeline's default 1024x1024 as the official script; either
  result is resized back to the input's size and pasted back onto it, so unmasked pixels are the input's bit for bit
  (the official scripts keep the VAE round trip everywhere);
- seeds drive a CPU `torch.Generator`, so a seed gives the same image on any device (up to kernel differences).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..images import mask_array, pil_to_tensor, tensor_to_pil
from ..prompt.clip_binding import TransformersCLIP, sdxl_long_prompt_embeddings
from ..prompt.long_prompt import LPW_INPAINT_MAX_CHUNKS, LongPromptResult, encode_long_prompts
from ..prompt.long_prompt_xl import SDXLLongPromptResult
from . import canvas
from .canvas import SD15_LATENT_SCALE, outpaint_canvas
from .pipeline_loading import (
    EXAMPLE_MODELS,
    INPAINT_CHANNELS,
    T2I_CHANNELS,
    SDModel,
    SDPipeline,
    SDPipelineError,
    check_sd_task,
    is_inpainting_pipeline,
    is_sdxl_pipeline,
    load_sd15_pipeline,
    load_sd_pipeline,
    load_sdxl_pipeline,
    load_vae,
    pipeline_family,
    read_sd_model,
    unet_channels,
)

# The loading names are part of this module's interface too (most callers import everything SD from here).
__all__ = [
    "BLANK_GRAY", "EXAMPLE_MODELS", "INPAINT_CHANNELS", "MASK_THRESHOLD", "SD15_LATENT_SCALE", "SDXL_ENCODING",
    "T2I_CHANNELS", "PromptEncoding", "SDModel", "SDPipeline", "SDPipelineError", "check_encoding",
    "check_family_options", "check_sd_task", "check_size", "check_strength", "encode_prompts", "inpaint",
    "is_inpainting_pipeline", "is_sdxl_pipeline", "load_sd15_pipeline", "load_sd_pipeline", "load_sdxl_pipeline",
    "load_vae", "outpaint", "outpaint_inputs", "pipeline_default_size", "pipeline_embeddings", "pipeline_family",
    "read_sd_model", "round_to_latent", "seeded_generator", "text_to_image", "unet_channels",
]

logger = logging.getLogger(__name__)

PromptEncoding = LongPromptResult | SDXLLongPromptResult

# pipeline_stable_diffusion_inpaint_lpw.py binarises the mask at 0.5 (masked_image = image * (mask < 0.5)).
MASK_THRESHOLD = 0.5
# The gray of a blank canvas (InpaintModelConditioning's value for masked pixels).
BLANK_GRAY = 0.5
# SDXL prompts have one encoding (train_text_to_image_sdxl*.py and pipeline_stable_diffusion_xl*_lpw.py agree).
SDXL_ENCODING = "llmga"

# --- prompts, seeds, image conversion ------------------------------------------------------------------------


def encode_prompts(pipe: SDPipeline, prompt: str, negative: str, *, mode: str = "llmga",
                   max_chunks: int | None = None) -> PromptEncoding:
    """Both prompts through the pipeline family's long-prompt encoder (`llmga.prompt.long_prompt` for SD1.5, with
    its modes; `llmga.prompt.long_prompt_xl` for SDXL, whose one mode is "llmga": an empty negative gives zeros);
    each prompt that loses tokens is logged as a warning."""
    if is_sdxl_pipeline(pipe):
        check_encoding("sdxl", mode)
        result = sdxl_long_prompt_embeddings(pipe.text_encoder, pipe.text_encoder_2, pipe.tokenizer, pipe.tokenizer_2,
                                             prompt, negative, max_chunks=max_chunks)
    else:
        clip = TransformersCLIP(pipe.text_encoder, pipe.tokenizer)
        result = encode_long_prompts(prompt, negative, clip.tokenize, clip.encode, mode=mode, bos=clip.bos,
                                     eos=clip.eos, pad=clip.pad, max_chunks=max_chunks)
    for warning in result.truncation_warnings():
        logger.warning(warning)
    return result


def check_encoding(family: str, mode: str) -> None:
    """Raise SDPipelineError for an encoding `family` does not have: SDXL has only "llmga"."""
    if family == "sdxl" and mode != SDXL_ENCODING:
        raise SDPipelineError(f"SDXL prompts have one encoding, {SDXL_ENCODING!r} (LLMGA's SDXL models were trained "
                              f"with it and the official SDXL pipelines run it), not {mode!r}: leave the encoding out "
                              "or choose an SD1.5 model")


def check_family_options(model: SDModel, *, encoding: str | None = None, strength: float | None = None) -> None:
    """Raise SDPipelineError for an option `model`'s family does not take (None: not given): an encoding other than
    "llmga" for SDXL, a strength other than 1 for SD1.5 (its inpainting repaints from pure noise, as
    cli-sd15-inpainting.py; strength is SDXL inpainting's setting, 0.8 in cli-sdxl-inpainting.py)."""
    if encoding is not None:
        check_encoding(model.family, encoding)
    if strength is not None and strength != 1 and model.family == "sd15":
        raise SDPipelineError(f"strength {strength} is an SDXL inpainting setting (cli-sdxl-inpainting.py: 0.8) but "
                              f"{model.folder} is {model.description}, which repaints from pure noise as "
                              "cli-sd15-inpainting.py: leave the strength out or choose an SDXL inpainting model such "
                              f"as {EXAMPLE_MODELS[('sdxl', True)]}")


def pipeline_embeddings(pipe: SDPipeline, *encoded: PromptEncoding) -> dict[str, torch.Tensor]:
    """The pipeline's prompt arguments for one or more encodings of the same length (stacked on the batch), on its
    device in its text dtype: `prompt_embeds` / `negative_prompt_embeds` ([B, T, 768] for SD1.5, [B, L, 2048] for
    SDXL) and, for SDXL, `pooled_prompt_embeds` / `negative_pooled_prompt_embeds` ([B, 1280])."""
    if is_sdxl_pipeline(pipe):
        dtype = pipe.text_encoder_2.dtype
        parts = {"prompt_embeds": [e.embeddings for e in encoded],
                 "negative_prompt_embeds": [e.negative_embeddings for e in encoded],
                 "pooled_prompt_embeds": [e.pooled for e in encoded],
                 "negative_pooled_prompt_embeds": [e.negative_pooled for e in encoded]}
    else:
        dtype = pipe.text_encoder.dtype
        parts = {"prompt_embeds": [e.positive.cond for e in encoded],
                 "negative_prompt_embeds": [e.negative.cond for e in encoded]}
    return {name: torch.cat(tensors).to(pipe.device, dtype) for name, tensors in parts.items()}


def pipeline_default_size(pipe: SDPipeline) -> int:
    """The side of the square a pipeline works at when given no size: the UNet's sample size x the VAE's scale (512
    for the released SD1.5 models, 1024 for the SDXL ones)."""
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator: the starting noise is drawn on the CPU, so it does not depend on the device."""
    return torch.Generator("cpu").manual_seed(seed)


def check_size(width: int | None, height: int | None) -> None:
    """Raise SDPipelineError unless each size given (None: not given) is a positive multiple of 8."""
    for name, value in (("width", width), ("height", height)):
        if value is not None and (value < SD15_LATENT_SCALE or value % SD15_LATENT_SCALE):
            lower = max(SD15_LATENT_SCALE, value - value % SD15_LATENT_SCALE)
            raise SDPipelineError(f"{name} is {value} but must be a positive multiple of {SD15_LATENT_SCALE} (SD "
                                  f"latents are 1/8 of the image): use {lower} or {lower + SD15_LATENT_SCALE}")


def round_to_latent(size: int) -> int:
    """`size` rounded to the nearest multiple of 8, at least 8."""
    return max(SD15_LATENT_SCALE, round(size / SD15_LATENT_SCALE) * SD15_LATENT_SCALE)


# --- generation ------------------------------------------------------------------------------------------------


def text_to_image(pipe: SDPipeline, prompt: str, negative: str = "", *, steps: int, cfg: float, seed: int,
                  width: int, height: int, mode: str = "llmga", count: int = 1) -> list[Image.Image]:
    """`count` images of width x height (multiples of 8) for `prompt`; image i is drawn with seed + i alone, so each
    one is reproduced by its own seed. An SD1.5 inpainting pipeline paints a blank canvas under a whole-image mask (the
    LLMGA inpainting UNet was trained with such masks for a quarter of its samples); an SDXL one is refused
    (`check_sd_task`)."""
    check_size(width, height)
    if is_inpainting_pipeline(pipe):
        _check_pipeline_task(pipe, inpainting=False)
        blank = Image.new("RGB", (width, height), (round(BLANK_GRAY * 255),) * 3)
        return inpaint(pipe, blank, np.ones((height, width), dtype=np.float32), prompt, negative, steps=steps,
                       cfg=cfg, seed=seed, mode=mode, count=count, paste_back=False, size=(width, height))
    embeddings = pipeline_embeddings(pipe, encode_prompts(pipe, prompt, negative, mode=mode))
    return [pipe(**embeddings, num_inference_steps=steps, guidance_scale=cfg, width=width, height=height,
                 generator=seeded_generator(seed + index)).images[0] for index in range(count)]


def _check_pipeline_task(pipe: SDPipeline, inpainting: bool) -> None:
    """`check_sd_task` for a loaded pipeline."""
    folder = Path(getattr(pipe, "name_or_path", None) or "the model")
    check_sd_task(SDModel(folder, pipeline_family(pipe), pipe.unet.config.in_channels), inpainting)


def check_strength(strength: float, steps: int) -> None:
    """Raise SDPipelineError unless 0 < strength <= 1 leaves at least one of `steps` denoising steps (diffusers runs
    int(steps * strength) of them)."""
    if not 0 < strength <= 1:
        raise SDPipelineError(f"strength is {strength} but must be in (0, 1]: 1 repaints from pure noise, 0.8 (SDXL "
                              "inpainting's official value) keeps a fifth of the picture under the mask")
    if int(steps * strength) < 1:
        raise SDPipelineError(f"strength {strength} at {steps} steps leaves no denoising step (diffusers runs "
                              f"int(steps x strength)): use more steps or a larger strength")


def inpaint(pipe: SDPipeline, image: Image.Image, mask: np.ndarray | Image.Image, prompt: str, negative: str = "", *,
            steps: int, cfg: float, seed: int, mode: str = "llmga", count: int = 1,
            size: tuple[int, int] | None = None, paste_back: bool = True, feathering: int = 0,
            strength: float = 1.0) -> list[Image.Image]:
    """`count` inpainted versions of `image` (seeds seed, seed + 1, ...), each the size of `image`.

    mask: [H, W] float in [0, 1] or a grayscale PIL image, the image's size; SD repaints where it is >= 0.5 (the
    official binarisation). size: (width, height) SD runs at, multiples of 8; None: for SD1.5 the image's size rounded
    to multiples of 8, for SDXL the pipeline's default square (`pipeline_default_size`: 1024x1024, as
    cli-sdxl-inpainting.py). The result is resized back to the image's size. paste_back: composite onto the input
    with `canvas.paste_back` (the mask as given, so pixels where it is 0 stay the input's exactly, and soft mask
    values blend); feathering: pixels inside the mask over which the generated image fades in. strength: how far
    the picture under the mask is noised before denoising (1: pure noise, as the SD1.5 scripts; SDXL's official
    0.8 runs int(steps x 0.8) steps from the noised picture).
    """
    if not is_inpainting_pipeline(pipe):
        if is_sdxl_pipeline(pipe):
            _check_pipeline_task(pipe, inpainting=True)
        raise SDPipelineError("inpainting needs a pipeline loaded with inpainting=True (or a 9-channel inpainting "
                              "UNet such as llmga-sd15-inpainting-v2)")
    check_strength(strength, steps)
    image = image.convert("RGB")
    soft_mask = mask_array(mask, image.size, threshold=MASK_THRESHOLD, action="paint")
    if size is None and is_sdxl_pipeline(pipe):
        size = (pipeline_default_size(pipe),) * 2
    width, height = size or (round_to_latent(image.width), round_to_latent(image.height))
    check_size(width, height)
    sd_image = image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS)
    hard = Image.fromarray(((soft_mask >= MASK_THRESHOLD) * 255).astype(np.uint8))
    sd_mask = hard if hard.size == (width, height) else hard.resize((width, height), Image.Resampling.NEAREST)
    max_chunks = LPW_INPAINT_MAX_CHUNKS if mode == "lpw" else None  # the official inpainting lpw pipeline keeps 300
    embeddings = pipeline_embeddings(pipe, encode_prompts(pipe, prompt, negative, mode=mode, max_chunks=max_chunks))
    original = pil_to_tensor(image)
    results = []
    for index in range(count):
        generated = pipe(**embeddings, image=sd_image, mask_image=sd_mask, width=width, height=height,
                         strength=strength, num_inference_steps=steps, guidance_scale=cfg,
                         generator=seeded_generator(seed + index), output_type="pt").images  # [1, 3, h, w] in [0, 1]
        generated = generated.float().cpu()
        if (width, height) != image.size:
            generated = torch.nn.functional.interpolate(generated, size=(image.height, image.width), mode="bicubic",
                                                        antialias=True).clamp(0, 1)
        generated = generated.permute(0, 2, 3, 1)
        if paste_back:
            generated = canvas.paste_back(original, generated, torch.from_numpy(soft_mask), feathering=feathering)
        results.append(tensor_to_pil(generated))
    return results


def outpaint_inputs(image: Image.Image, left: int, top: int, right: int, bottom: int, feathering: int = 0,
                    multiple: int = SD15_LATENT_SCALE) -> tuple[Image.Image, np.ndarray]:
    """The canvas to outpaint and its mask ([H', W'] float in [0, 1]): `image` padded with gray by the given pixels,
    grown to multiples of `multiple` (8; 1: exactly as given), the mask ramping into the original over `feathering`
    pixels (see `canvas.outpaint_canvas`)."""
    if left == top == right == bottom == 0:
        raise SDPipelineError("outpainting adds nothing: give the pixels to add on at least one side")
    try:
        padded, mask = outpaint_canvas(pil_to_tensor(image), left, top, right, bottom, feathering=feathering,
                                       multiple=multiple, fill=BLANK_GRAY)
    except ValueError as error:
        raise SDPipelineError(str(error)) from error
    return tensor_to_pil(padded), mask[0].numpy()


def outpaint(pipe: SDPipeline, image: Image.Image, left: int, top: int, right: int, bottom: int, prompt: str,
             negative: str = "", *, steps: int, cfg: float, seed: int, mode: str = "llmga", count: int = 1,
             feathering: int = 0, size: tuple[int, int] | None = None, strength: float = 1.0) -> list[Image.Image]:
    """`image` extended by left/top/right/bottom pixels (grown to multiples of 8): `outpaint_inputs` + `inpaint`
    (size and strength as there). feathering: pixels of the original next to the new area that are repainted and
    blended softly."""
    padded, mask = outpaint_inputs(image, left, top, right, bottom, feathering)
    return inpaint(pipe, padded, mask, prompt, negative, steps=steps, cfg=cfg, seed=seed, mode=mode, count=count,
                   size=size, strength=strength)
