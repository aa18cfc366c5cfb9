"""Stable Diffusion 1.5 text-to-image, inpainting and outpainting on diffusers, with LLMGA's long-prompt encoding.

`load_sd15_pipeline` builds a diffusers pipeline from an SD1.5 folder (llmga-sd15-t2i-v2, llmga-sd15-inpainting-v2,
any SD1.5 diffusers folder). Prompts go through `llmga.prompt.long_prompt` (up to 300 tokens, "llmga" or "lpw"
mode) and reach diffusers as `prompt_embeds` / `negative_prompt_embeds`. Images go in and come out as PIL images;
masks are [H, W] floats in [0, 1] (or PIL images), 1 / white where new content is painted.

The official CLIs (cli-sd15.py, cli-sd15-inpainting.py) use 50 steps, guidance 7.5, negative "" and the scheduler
saved with the model (PNDM for the released ones); callers pass those (the `python -m llmga` commands default to
them). `llmga.sd.official` reproduces those scripts (their `--official` mode). Where this module differs from them:
- no safety checker is loaded (the released folders name one; the official scripts ran it);
- the prompt encoding is a choice: "llmga" (the default here), the one the SD UNet was trained with, or "lpw";
- inpainting runs at the image's own size rounded to multiples of 8 (the official script stretches every input to
  512x512 and returns 512x512), and the result is pasted back onto the input, so unmasked pixels are the input's
  bit for bit (the official script keeps the VAE round trip everywhere);
- seeds drive a CPU `torch.Generator`, so a seed gives the same image on any device (up to kernel differences).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionInpaintPipeline, StableDiffusionPipeline
from PIL import Image

from ..devices import device_and_dtype
from ..errors import one_line
from ..hub import SD_FILES
from ..images import mask_array, pil_to_tensor, tensor_to_pil
from ..model_files import load_weights, read_config, state_dict_of
from ..prompt.clip_binding import TransformersCLIP
from ..prompt.long_prompt import LPW_INPAINT_MAX_CHUNKS, LongPromptResult, encode_long_prompts
from . import canvas
from .canvas import SD15_LATENT_SCALE, outpaint_canvas
from .loading import FULL_PRECISION_WEIGHTS, SD15_CONTEXT_DIM, SD15LoadError, check_sd15_weights

logger = logging.getLogger(__name__)

SDPipeline = StableDiffusionPipeline | StableDiffusionInpaintPipeline

PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# The configs diffusers reads besides those of the weighted parts (which `check_sd15_weights` reads).
PIPELINE_CONFIGS = ("model_index.json", "scheduler/scheduler_config.json")
REFETCH = "download the model again (an interrupted download leaves parts missing)"
# What diffusers builds for a UNet config without cross_attention_dim.
DIFFUSERS_DEFAULT_CONTEXT_DIM = 1280
# UNet input channels: noisy latents (4) for text-to-image; + mask (1) + masked-image latents (4) for inpainting.
T2I_CHANNELS = 4
INPAINT_CHANNELS = 9
# pipeline_stable_diffusion_inpaint_lpw.py binarises the mask at 0.5 (masked_image = image * (mask < 0.5)).
MASK_THRESHOLD = 0.5
# The gray of a blank canvas (InpaintModelConditioning's value for masked pixels).
BLANK_GRAY = 0.5


class SDPipelineError(ValueError):
    """An SD request that cannot be served; the message says what was wrong and what to do."""


# --- loading ---------------------------------------------------------------------------------------------------


def is_inpainting_pipeline(pipe: SDPipeline) -> bool:
    return isinstance(pipe, StableDiffusionInpaintPipeline)


def unet_channels(folder: Path) -> int:
    """The UNet's input channels, after checking that `folder` is a complete SD1.5 diffusers folder (from the configs
    alone, before any weights are read)."""
    if not folder.is_dir():
        raise SDPipelineError(f"{folder} is not a folder: give a diffusers SD1.5 folder ({SD_FILES}) such as "
                              "models/diffusers/llmga-sd15-t2i-v2 (single-file checkpoints load in ComfyUI)")
    missing = [name for name in ("model_index.json", *PIPELINE_PARTS) if not (folder / name).exists()]
    if missing:
        raise SDPipelineError(f"{folder} lacks {', '.join(missing)}: a diffusers SD1.5 folder holds {SD_FILES}; "
                              f"{REFETCH}")
    for name in PIPELINE_CONFIGS:
        read_config(folder / name, SDPipelineError, REFETCH)
    config = read_config(folder / "unet" / "config.json", SDPipelineError, REFETCH)
    width = config.get("cross_attention_dim", DIFFUSERS_DEFAULT_CONTEXT_DIM)
    if width != SD15_CONTEXT_DIM:
        raise SDPipelineError(f"{folder} is not an SD1.5 model (cross-attention width {width}; SD1.5 has "
                              f"{SD15_CONTEXT_DIM}): choose an SD1.5 folder such as llmga-sd15-t2i-v2")
    channels = config.get("in_channels", T2I_CHANNELS)
    if channels not in (T2I_CHANNELS, INPAINT_CHANNELS):
        raise SDPipelineError(f"{folder} has a UNet with {channels} input channels; SD1.5 text-to-image UNets have "
                              f"{T2I_CHANNELS} and inpainting UNets {INPAINT_CHANNELS}")
    return channels


def load_sd15_pipeline(folder: str | Path, *, inpainting: bool = False, device: str = "auto",
                       dtype: str = "auto") -> SDPipeline:
    """A diffusers SD1.5 pipeline from `folder`, on `device` in `dtype` (see `llmga.devices`), safety checker off.

    inpainting: build a StableDiffusionInpaintPipeline. The released llmga-sd15-inpainting-v2 is saved as a
    StableDiffusionPipeline with a 9-channel UNet, so the pipeline class comes from the UNet, not model_index.json:
    a 9-channel UNet always gets the inpainting pipeline (`text_to_image` then paints a blank canvas), a 4-channel one
    gets it only when asked (diffusers then blends latents with the mask). Raises SDPipelineError, in one line, for
    a missing or incomplete folder, a damaged or unsafe file, weights that do not fit their config, and models that
    are not SD1.5; the folder is checked before diffusers reads it.
    """
    folder = Path(folder)
    channels = unet_channels(folder)
    try:
        check_sd15_weights(folder, FULL_PRECISION_WEIGHTS)
    except SD15LoadError as error:
        raise SDPipelineError(str(error)) from error
    pipeline_class = StableDiffusionInpaintPipeline if inpainting or channels == INPAINT_CHANNELS \
        else StableDiffusionPipeline
    target, torch_dtype = device_and_dtype("sd", device, dtype)
    try:
        with warnings.catch_warnings():  # newer diffusers call it `dtype`; `torch_dtype` works in every version
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = pipeline_class.from_pretrained(folder, torch_dtype=torch_dtype, safety_checker=None,
                                                  feature_extractor=None, requires_safety_checker=False)
    except Exception as error:  # any type for a damaged part: TypeError (a config), tokenizers' bare Exception
        raise SDPipelineError(f"{folder} could not be loaded as an SD1.5 pipeline ({type(error).__name__}: "
                              f"{one_line(error)}): download the model again or choose another folder") from error
    return pipe.to(target)


def load_vae(path: str | Path, sd_folder: str | Path, pipe: SDPipeline) -> AutoencoderKL:
    """The VAE at `path`, on `pipe`'s VAE device and dtype, to swap in for the model's own (`pipe.vae = ...`).

    path: a diffusers VAE folder (config.json + diffusion_pytorch_model.*, as stabilityai/sd-vae-ft-mse) or a
    single-file VAE in the original layout (as vae-ft-mse-840000-ema-pruned.safetensors, what ComfyUI's models/vae
    holds), built with the config of `sd_folder`'s vae/ (every SD1.5 VAE shares it). Raises SDPipelineError, in one
    line, for a missing, damaged or unsafe file and for weights that are not an SD1.5 VAE.
    """
    path, sd_folder = Path(path), Path(sd_folder)
    advice = "give a diffusers VAE folder (as stabilityai/sd-vae-ft-mse) or a single-file SD1.5 VAE"
    try:
        if path.is_dir():
            read_config(path / "config.json", SDPipelineError, advice)
            vae = AutoencoderKL.from_pretrained(path)
        else:
            stored = load_weights(path, SDPipelineError, advice)
            if isinstance(stored, dict) and isinstance(stored.get("state_dict"), dict):
                stored = stored["state_dict"]  # the .ckpt releases wrap their tensors
            vae = AutoencoderKL.from_single_file(state_dict_of(stored, path, SDPipelineError, advice),
                                                 config=str(sd_folder), subfolder="vae", local_files_only=True)
    except SDPipelineError:
        raise
    except Exception as error:  # diffusers raises many types for weights that do not fit
        raise SDPipelineError(f"{path} could not be loaded as an SD1.5 VAE ({type(error).__name__}: "
                              f"{one_line(error)}): {advice}") from error
    if vae.config.latent_channels != pipe.vae.config.latent_channels:
        raise SDPipelineError(f"{path} is a VAE with {vae.config.latent_channels} latent channels; SD1.5 has "
                              f"{pipe.vae.config.latent_channels}: {advice}")
    return vae.to(pipe.vae.device, pipe.vae.dtype)


# --- prompts, seeds, image conversion ------------------------------------------------------------------------


def encode_prompts(pipe: SDPipeline, prompt: str, negative: str, *, mode: str = "llmga",
                   max_chunks: int | None = None) -> LongPromptResult:
    """Both prompts through the long-prompt encoder with the pipeline's text encoder (see
    `llmga.prompt.long_prompt` for the modes); each prompt that loses tokens is logged as a warning."""
    clip = TransformersCLIP(pipe.text_encoder, pipe.tokenizer)
    result = encode_long_prompts(prompt, negative, clip.tokenize, clip.encode, mode=mode, bos=clip.bos, eos=clip.eos,
                                 pad=clip.pad, max_chunks=max_chunks)
    for warning in result.truncation_warnings():
        logger.warning(warning)
    return result


def pipeline_embeddings(pipe: SDPipeline, encoded: LongPromptResult) -> dict[str, torch.Tensor]:
    """The pipeline's `prompt_embeds` / `negative_prompt_embeds` ([1, T, 768] on its device, in its text dtype)."""
    dtype = pipe.text_encoder.dtype
    return {"prompt_embeds": encoded.positive.cond.to(pipe.device, dtype),
            "negative_prompt_embeds": encoded.negative.cond.to(pipe.device, dtype)}


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator: the starting noise is drawn on the CPU, so it does not depend on the device."""
    return torch.Generator("cpu").manual_seed(seed)


def check_size(width: int | None, height: int | None) -> None:
    """Raise SDPipelineError unless each size given (None: not given) is a positive multiple of 8."""
    for name, value in (("width", width), ("height", height)):
        if value is not None and (value < SD15_LATENT_SCALE or value % SD15_LATENT_SCALE):
            lower = max(SD15_LATENT_SCALE, value - value % SD15_LATENT_SCALE)
            raise SDPipelineError(f"{name} is {value} but must be a positive multiple of {SD15_LATENT_SCALE} (SD1.5 "
                                  f"latents are 1/8 of the image): use {lower} or {lower + SD15_LATENT_SCALE}")


def round_to_latent(size: int) -> int:
    """`size` rounded to the nearest multiple of 8, at least 8."""
    return max(SD15_LATENT_SCALE, round(size / SD15_LATENT_SCALE) * SD15_LATENT_SCALE)


# --- generation ------------------------------------------------------------------------------------------------


def text_to_image(pipe: SDPipeline, prompt: str, negative: str = "", *, steps: int, cfg: float, seed: int,
                  width: int, height: int, mode: str = "llmga", count: int = 1) -> list[Image.Image]:
    """`count` images of width x height (multiples of 8) for `prompt`; image i is drawn with seed + i alone, so each
    one is reproduced by its own seed. An inpainting pipeline paints a blank canvas under a whole-image mask (the
    LLMGA inpainting UNet was trained with such masks for a quarter of its samples)."""
    check_size(width, height)
    if is_inpainting_pipeline(pipe):
        blank = Image.new("RGB", (width, height), (round(BLANK_GRAY * 255),) * 3)
        return inpaint(pipe, blank, np.ones((height, width), dtype=np.float32), prompt, negative, steps=steps,
                       cfg=cfg, seed=seed, mode=mode, count=count, paste_back=False)
    embeddings = pipeline_embeddings(pipe, encode_prompts(pipe, prompt, negative, mode=mode))
    return [pipe(**embeddings, num_inference_steps=steps, guidance_scale=cfg, width=width, height=height,
                 generator=seeded_generator(seed + index)).images[0] for index in range(count)]


def inpaint(pipe: SDPipeline, image: Image.Image, mask: np.ndarray | Image.Image, prompt: str, negative: str = "", *,
            steps: int, cfg: float, seed: int, mode: str = "llmga", count: int = 1,
            size: tuple[int, int] | None = None, paste_back: bool = True, feathering: int = 0) -> list[Image.Image]:
    """`count` inpainted versions of `image` (seeds seed, seed + 1, ...), each the size of `image`.

    mask: [H, W] float in [0, 1] or a grayscale PIL image, the image's size; SD repaints where it is >= 0.5 (the
    official binarisation). size: (width, height) SD runs at, multiples of 8; None: the image's size rounded to
    multiples of 8. The result is resized back to the image's size. paste_back: composite onto the input with
    `canvas.paste_back` (the mask as given, so pixels where it is 0 stay the input's exactly, and soft mask values
    blend); feathering: pixels inside the mask over which the generated image fades in.
    """
    if not is_inpainting_pipeline(pipe):
        raise SDPipelineError("inpainting needs a pipeline loaded with inpainting=True (or a 9-channel inpainting "
                              "UNet such as llmga-sd15-inpainting-v2)")
    image = image.convert("RGB")
    soft_mask = mask_array(mask, image.size, threshold=MASK_THRESHOLD, action="paint")
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
        generated = pipe(**embeddings, image=sd_image, mask_image=sd_mask, width=width, height=height, strength=1.0,
                         num_inference_steps=steps, guidance_scale=cfg, generator=seeded_generator(seed + index),
                         output_type="pt").images  # [1, 3, h, w] in [0, 1]
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
             feathering: int = 0) -> list[Image.Image]:
    """`image` extended by left/top/right/bottom pixels (grown to multiples of 8): `outpaint_inputs` + `inpaint`.
    feathering: pixels of the original next to the new area that are repainted and blended softly."""
    padded, mask = outpaint_inputs(image, left, top, right, bottom, feathering)
    return inpaint(pipe, padded, mask, prompt, negative, steps=steps, cfg=cfg, seed=seed, mode=mode, count=count)
