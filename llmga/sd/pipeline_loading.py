"""Which Stable Diffusion model a diffusers folder holds, and loading it as a diffusers pipeline.

`read_sd_model` tells the family (SD1.5 or SDXL) and the task (the UNet's input channels) from the folder's configs
alone, never from its name, and refuses incomplete folders, refiners and other families in one line; the
`load_*_pipeline` functions build diffusers' stock pipelines on the pack's device and precision (`llmga.devices`),
without safety checker or watermark; `load_vae` swaps in another VAE (the official editing's `sd-vae-ft-mse`).
Generation on these pipelines is `llmga.sd.pipelines`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from diffusers import (
    AutoencoderKL,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from ..devices import device_and_dtype
from ..errors import one_line
from ..hub import SD_FILES, SDXL_FILES
from ..model_files import load_weights, read_config, state_dict_of
from .loading import (
    FAMILIES,
    FULL_PRECISION_WEIGHTS,
    KINDS,
    SD15_CONTEXT_DIM,
    SDXL_PART_WEIGHTS,
    SD15LoadError,
    check_sd15_weights,
    folder_kind,
)


class _EmptyFp32ListFilter(logging.Filter):
    """Drops diffusers' warning that a model has modules to keep in float32 when the list it names is empty: diffusers
    0.3x/0.4x logs it on every `.to(dtype)`, and the SDXL pipelines cast their VAE on each call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []." not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_EmptyFp32ListFilter())

SDPipeline = (StableDiffusionPipeline | StableDiffusionInpaintPipeline | StableDiffusionXLPipeline
              | StableDiffusionXLInpaintPipeline)

PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_PIPELINE_PARTS = (*PIPELINE_PARTS, "text_encoder_2", "tokenizer_2")
# The configs diffusers reads besides those of the weighted parts (which `check_sd15_weights` reads).
PIPELINE_CONFIGS = ("model_index.json", "scheduler/scheduler_config.json")
REFETCH = "download the model again (an interrupted download leaves parts missing)"
# What diffusers builds for a UNet config without cross_attention_dim.
DIFFUSERS_DEFAULT_CONTEXT_DIM = 1280
# UNet input channels: noisy latents (4) for text-to-image; + mask (1) + masked-image latents (4) for inpainting.
T2I_CHANNELS = 4
INPAINT_CHANNELS = 9
# Released names the messages suggest for each (family, inpainting).
EXAMPLE_MODELS = {("sd15", False): "binxia/llmga-sd15-t2i-v2", ("sd15", True): "binxia/llmga-sd15-inpainting-v2",
                  ("sdxl", False): "binxia/llmga-sdxl-t2i", ("sdxl", True): "binxia/llmga-sdxl-inpainting-v2"}


class SDPipelineError(ValueError):
    """An SD request that cannot be served; the message says what was wrong and what to do."""


def is_inpainting_pipeline(pipe: SDPipeline) -> bool:
    return isinstance(pipe, (StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline))


def is_sdxl_pipeline(pipe: SDPipeline) -> bool:
    return isinstance(pipe, (StableDiffusionXLPipeline, StableDiffusionXLInpaintPipeline))


def pipeline_family(pipe: SDPipeline) -> str:
    """"sdxl" or "sd15" (the keys of `llmga.sd.loading.FAMILIES`)."""
    return "sdxl" if is_sdxl_pipeline(pipe) else "sd15"


@dataclass(frozen=True)
class SDModel:
    """What a diffusers SD folder holds, read from its configs: its family ("sd15" / "sdxl") and its UNet's input
    channels (4: text to image; 9: inpainting)."""

    folder: Path
    family: str
    channels: int

    @property
    def inpainting(self) -> bool:
        return self.channels == INPAINT_CHANNELS

    @property
    def family_name(self) -> str:
        """"SD1.5" / "SDXL"."""
        return FAMILIES[self.family].name

    @property
    def description(self) -> str:
        """"an SDXL inpainting model (9-channel UNet)", "an SD1.5 text-to-image model (4-channel UNet)"."""
        task = "inpainting" if self.inpainting else "text-to-image"
        return f"an {self.family_name} {task} model ({self.channels}-channel UNet)"


def unet_channels(folder: Path) -> int:
    """The UNet's input channels, after checking that `folder` is a complete SD1.5 diffusers folder (from the configs
    alone, before any weights are read)."""
    return _checked_channels(Path(folder), "sd15")


def read_sd_model(folder: str | Path) -> SDModel:
    """The family and UNet channels of the diffusers folder `folder`, after checking it is a complete folder of its
    family, from the configs alone (no weights are read). The family comes from what marks SDXL (`llmga.sd.loading`:
    the UNet's `text_time` size embedding, 2048-wide cross-attention, a second text encoder, an XL pipeline class);
    anything else must be SD1.5. Raises SDPipelineError, in one line, for a missing or incomplete folder, an SDXL
    refiner, and models of other families."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SDPipelineError(f"{folder} is not a folder: give a diffusers SD1.5 or SDXL folder ({SD_FILES}; SDXL "
                              "adds text_encoder_2/, tokenizer_2/) such as models/diffusers/llmga-sd15-t2i-v2 or "
                              "llmga-sdxl-t2i (single-file checkpoints load in ComfyUI)")
    config = folder / "unet" / "config.json"
    unet = read_config(config, SDPipelineError, REFETCH) if config.is_file() else {}
    kind = folder_kind(folder, unet)
    if kind == "sdxl-refiner":
        raise SDPipelineError(f"{folder} is {KINDS[kind][0]}: choose an SDXL base model such as llmga-sdxl-t2i")
    family = "sdxl" if kind == "sdxl" else "sd15"
    return SDModel(folder, family, _checked_channels(folder, family))


def _checked_channels(folder: Path, family: str) -> int:
    """The UNet's input channels of the `family` folder `folder`, after checking from its configs that it is complete
    and of that family."""
    name = FAMILIES[family].name
    parts, files = (SDXL_PIPELINE_PARTS, SDXL_FILES) if family == "sdxl" else (PIPELINE_PARTS, SD_FILES)
    if not folder.is_dir():
        raise SDPipelineError(f"{folder} is not a folder: give a diffusers {name} folder ({files}) such as "
                              f"models/diffusers/{FAMILIES[family].example} (single-file checkpoints load in ComfyUI)")
    missing = [part for part in ("model_index.json", *parts) if not (folder / part).exists()]
    if missing:
        raise SDPipelineError(f"{folder} lacks {', '.join(missing)}: a diffusers {name} folder holds {files}; "
                              f"{REFETCH}")
    for config in PIPELINE_CONFIGS:
        read_config(folder / config, SDPipelineError, REFETCH)
    config = read_config(folder / "unet" / "config.json", SDPipelineError, REFETCH)
    width = config.get("cross_attention_dim", DIFFUSERS_DEFAULT_CONTEXT_DIM)
    if family == "sd15" and width != SD15_CONTEXT_DIM:
        raise SDPipelineError(f"{folder} is not an SD1.5 model (cross-attention width {width}; SD1.5 has "
                              f"{SD15_CONTEXT_DIM}): choose an SD1.5 folder such as llmga-sd15-t2i-v2")
    channels = config.get("in_channels", T2I_CHANNELS)
    if channels not in (T2I_CHANNELS, INPAINT_CHANNELS):
        raise SDPipelineError(f"{folder} has a UNet with {channels} input channels; {name} text-to-image UNets have "
                              f"{T2I_CHANNELS} and inpainting UNets {INPAINT_CHANNELS}")
    return channels


def check_sd_task(model: SDModel, inpainting: bool) -> None:
    """Raise SDPipelineError when an SDXL model is asked for the task it was not trained for: its text-to-image model
    for inpainting, its inpainting model for text to image (SD1.5 serves both: a 9-channel UNet paints a blank canvas,
    a 4-channel one inpaints by blending latents). inpainting: the task is inpainting / outpainting."""
    if model.family != "sdxl" or model.inpainting == inpainting:
        return
    if inpainting:
        raise SDPipelineError(f"{model.folder} is {model.description}: inpainting and outpainting need an SDXL "
                              f"inpainting model such as {EXAMPLE_MODELS[('sdxl', True)]} (as cli-sdxl-inpainting.py)")
    raise SDPipelineError(f"{model.folder} is {model.description}: text to image needs an SDXL text-to-image model "
                          f"such as {EXAMPLE_MODELS[('sdxl', False)]} (as cli-sdxl.py), or inpaint with this one")


def load_sd_pipeline(folder: str | Path, *, inpainting: bool = False, device: str = "auto",
                     dtype: str = "auto") -> SDPipeline:
    """A diffusers pipeline of the folder's family (`read_sd_model`) on `device` in `dtype` (see `llmga.devices`):
    `load_sd15_pipeline` (inpainting as there) or `load_sdxl_pipeline` (the pipeline class from the UNet; callers
    check the task with `check_sd_task` first, and `text_to_image` / `inpaint` refuse the other one)."""
    model = read_sd_model(folder)
    if model.family == "sd15":
        return load_sd15_pipeline(model.folder, inpainting=inpainting, device=device, dtype=dtype)
    return load_sdxl_pipeline(model.folder, device=device, dtype=dtype)


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
    return _from_pretrained(pipeline_class, folder, "SD1.5", device, dtype, safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False)


def load_sdxl_pipeline(folder: str | Path, *, device: str = "auto",
                       dtype: str = "auto") -> StableDiffusionXLPipeline | StableDiffusionXLInpaintPipeline:
    """A diffusers SDXL pipeline from `folder` on `device` in `dtype` (see `llmga.devices`), without the invisible
    watermark: StableDiffusionXLInpaintPipeline for a 9-channel UNet (llmga-sdxl-inpainting-v2), else
    StableDiffusionXLPipeline (llmga-sdxl-t2i), whatever model_index.json names. Weights are read in full precision
    where the folder has them, else its fp16 variant (as stabilityai's releases ship some parts). Raises
    SDPipelineError, in one line, for a missing or incomplete folder, an SD1.5 folder or an SDXL refiner (from the
    configs, before any weights are read) and for files diffusers cannot load (damaged, unsafe, not fitting their
    configs). Any width loads (diffusers builds the configs' sizes), so tiny test models do too."""
    model = read_sd_model(folder)
    if model.family != "sdxl":
        raise SDPipelineError(f"{model.folder} is {model.description}, not an SDXL model: load it as SD1.5 "
                              "(`load_sd15_pipeline`) or choose an SDXL folder such as llmga-sdxl-t2i")
    pipeline_class = StableDiffusionXLInpaintPipeline if model.inpainting else StableDiffusionXLPipeline
    return _from_pretrained(pipeline_class, model.folder, "SDXL", device, dtype,
                            variant=_weights_variant(model.folder, SDXL_PART_WEIGHTS), add_watermarker=False)


def _weights_variant(folder: Path, parts: dict[str, tuple[str, ...]]) -> str | None:
    """"fp16" when some part of `folder` holds only the fp16 variant of its weights (diffusers then takes the variant
    where there is one and the full-precision files elsewhere), else None (full precision)."""
    for part, names in parts.items():
        if not any((folder / part / name).is_file() for name in names if ".fp16." not in name):
            return "fp16"
    return None


def _from_pretrained(pipeline_class: type, folder: Path, family: str, device: str, dtype: str,
                     **options) -> SDPipeline:
    """`pipeline_class.from_pretrained(folder, **options)` in the pack's precision, moved to the pack's device; any
    failure is an SDPipelineError naming the folder."""
    target, torch_dtype = device_and_dtype("sd", device, dtype)
    try:
        with warnings.catch_warnings():  # newer diffusers call it `dtype`; `torch_dtype` works in every version
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = pipeline_class.from_pretrained(folder, torch_dtype=torch_dtype, **options)
    except Exception as error:  # any type for a damaged part: TypeError (a config), tokenizers' bare Exception
        raise SDPipelineError(f"{folder} could not be loaded as an {family} pipeline ({type(error).__name__}: "
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
