"""Stable Diffusion 1.5 weights on disk: read for loading, with clear errors for anything that is not a complete SD1.5
model, and the diffusers folder written.

`read_sd15_folder` turns a diffusers SD1.5 folder (model_index.json, unet/, vae/, text_encoder/) into the
single-file SD1.5 state dict (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`), so any
loader of original checkpoints can take it. `check_sd15_single_file` inspects a single-file checkpoint from its
safetensors header alone. Both raise `SD15LoadError` for a missing or truncated file, a missing part, or a model
of another family (SD2, SDXL), naming what is wrong and what to do. `write_sd15_folder` writes a diffusers folder
with a new UNet (what the stage-2 trainer produces), which these readers and diffusers load.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import one_line
from ..files import atomic_folder, write_bytes_atomic
from ..model_files import (
    Shapes,
    is_safetensors,
    layout_problems,
    load_torch_file,
    read_config,
    read_tensors,
    tensor_shapes,
)
from .convert import StateDict, sd15_single_file_state_dict

SD15_CONTEXT_DIM = 768  # CLIP ViT-L/14 text width: the UNet's cross-attention input
SD15_MODEL_CHANNELS = 320  # width of the first UNet level
SDXL_CONTEXT_DIM = 2048  # CLIP ViT-L + OpenCLIP ViT-bigG, concatenated
SD2_CONTEXT_DIM = 1024  # OpenCLIP ViT-H

# Weight file names in the order they are preferred: full precision before the fp16 variant, safetensors
# before pickles.
DIFFUSERS_WEIGHTS = tuple(f"diffusion_pytorch_model{v}.{e}" for e in ("safetensors", "bin") for v in ("", ".fp16"))
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.fp16.bin")
PART_WEIGHTS = {"unet": DIFFUSERS_WEIGHTS, "vae": DIFFUSERS_WEIGHTS, "text_encoder": TRANSFORMERS_WEIGHTS}
# What diffusers' from_pretrained reads when no variant is asked for.
FULL_PRECISION_WEIGHTS = {part: tuple(name for name in names if ".fp16." not in name)
                          for part, names in PART_WEIGHTS.items()}
# Older diffusers releases (before 0.14) named the VAE attention projections differently; diffusers renames them
# when it loads such a file, and so do we.
LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# The single-file prefixes of the three parts (the original CompVis layout).
SINGLE_FILE_PARTS = {"model.diffusion_model.": "UNet", "first_stage_model.": "VAE", "cond_stage_model.": "text encoder"}

_FITS = "the LLMGA SD1.5 loader takes SD1.5 folders such as llmga-sd15-t2i-v2 and SD1.5 single-file checkpoints"
_REFETCH = "download the model again (an interrupted download leaves files missing or cut short)"
_REFETCH_FILE = f"{_REFETCH}, or use the model's .safetensors file"


class SD15LoadError(ValueError):
    """A model could not be read as SD1.5; the message says what is wrong and what to do."""


def _not_sd15(what: object, family: str) -> SD15LoadError:
    return SD15LoadError(f"{what} is {family}; {_FITS}")


def _family_for_context(context_dims: set[int]) -> str | None:
    """What a UNet with these cross-attention widths is, when that is not SD1.5 (None for SD1.5)."""
    if context_dims == {SD15_CONTEXT_DIM}:
        return None
    if SDXL_CONTEXT_DIM in context_dims:
        return "an SDXL model"
    if SD2_CONTEXT_DIM in context_dims:
        return "an SD2 model (cross-attention width 1024, OpenCLIP ViT-H text encoder)"
    widths = ", ".join(str(d) for d in sorted(context_dims)) or "none"
    return f"not an SD1.5 model (cross-attention width {widths}; SD1.5 has {SD15_CONTEXT_DIM})"


def _context_widths(unet: Mapping[str, Sequence[int]]) -> set[int]:
    """The cross-attention input widths of a UNet, from the shapes of its attn2.to_k weights."""
    return {shape[-1] for key, shape in unet.items() if key.endswith("attn2.to_k.weight") and len(shape)}


# --- single-file layout --------------------------------------------------------------------------------


def _check_sd15_layout(what: object, shapes: Mapping[str, Sequence[int]]) -> None:
    """Raise SD15LoadError unless `shapes` (single-file key -> tensor shape) is a complete SD1.5 checkpoint:
    UNet with 320 model channels and 768-wide cross-attention, VAE and text encoder. `what` names the model
    in the message."""
    unet = {key.removeprefix("model.diffusion_model."): shape for key, shape in shapes.items()
            if key.startswith("model.diffusion_model.")}
    if any(key.startswith("conditioner.embedders.") for key in shapes):
        raise _not_sd15(what, "an SDXL model")
    if any(key.startswith("cond_stage_model.model.") for key in shapes):  # OpenCLIP text tower
        raise _not_sd15(what, "an SD2 model (OpenCLIP ViT-H text encoder)")
    for prefix, part in SINGLE_FILE_PARTS.items():
        if not any(key.startswith(prefix) for key in shapes):
            raise SD15LoadError(
                f"{what} holds no {part} ({prefix}*): it is not a full SD1.5 checkpoint (a LoRA, VAE or UNet-only "
                f"file?); choose a checkpoint with UNet, VAE and text encoder")
    family = _family_for_context(_context_widths(unet))
    if family is not None:
        raise _not_sd15(what, family)
    channels = (tuple(unet.get("input_blocks.0.0.weight", ())) or (0,))[0]
    if channels != SD15_MODEL_CHANNELS:
        raise _not_sd15(what, f"not an SD1.5 model (UNet width {channels}; SD1.5 has {SD15_MODEL_CHANNELS})")


def _single_file_state_dict(stored: object, file: Path) -> Mapping[str, Any]:
    """The state dict inside a pickled single file, found as ComfyUI's load_torch_file finds it: under
    "state_dict", else the one entry of a one-entry dict, else the whole dict."""
    if isinstance(stored, Mapping):
        if isinstance(stored.get("state_dict"), Mapping):
            return stored["state_dict"]
        if len(stored) == 1 and isinstance(inner := next(iter(stored.values())), Mapping):
            return inner
        return stored
    raise SD15LoadError(f"{file} does not hold a state dict (name -> tensor): it is not an SD1.5 checkpoint; "
                        f"{_REFETCH_FILE}")


def check_sd15_single_file(path: str | Path) -> None:
    """Raise SD15LoadError unless the single-file checkpoint at `path` is a complete, untruncated SD1.5 one.
    A safetensors file is judged from its header; a pickled one (.ckpt, .pt) is mapped with
    torch.load(weights_only=True), which refuses a pickle that would build Python objects (run code)."""
    file = Path(path)
    if file.is_dir():
        raise SD15LoadError(f"{file} is a folder, not a checkpoint file: choose an SD1.5 checkpoint file, or put a "
                            "diffusers folder under models/diffusers")
    if not file.is_file():
        raise SD15LoadError(f"{file} does not exist: choose an SD1.5 checkpoint file")
    if is_safetensors(file):
        shapes = tensor_shapes(file, SD15LoadError, _REFETCH)
    else:
        stored = _single_file_state_dict(load_torch_file(file, SD15LoadError, _REFETCH_FILE, mmap=True), file)
        shapes = {key: value.shape for key, value in stored.items() if isinstance(value, Tensor)}
    _check_sd15_layout(file, shapes)


# --- diffusers folder ----------------------------------------------------------------------------------


def _pipeline_class(folder: Path) -> str:
    """model_index.json's pipeline class, or '' without one."""
    index = folder / "model_index.json"
    return str(read_config(index, SD15LoadError, _REFETCH).get("_class_name", "")) if index.is_file() else ""


def _check_configs(folder: Path, unet: Mapping[str, Any], text_encoder: Mapping[str, Any]) -> None:
    """Reject SD2, SDXL and other families from their configs, before any weights are read."""
    pipeline = _pipeline_class(folder)
    if "XL" in pipeline or unet.get("addition_embed_type") or (folder / "text_encoder_2").is_dir():
        raise _not_sd15(folder, "an SDXL model")
    # 1280 is diffusers' default cross_attention_dim, what a config without the key builds.
    widths = (unet.get("cross_attention_dim", 1280), text_encoder.get("hidden_size", SD15_CONTEXT_DIM))
    family = _family_for_context({width for width in widths if isinstance(width, int)})
    if family is not None:
        raise _not_sd15(folder, family)
    missing = [key for key in ("block_out_channels", "layers_per_block", "up_block_types") if key not in unet]
    if missing:
        raise SD15LoadError(f"{folder / 'unet' / 'config.json'} lacks {', '.join(missing)}: {_REFETCH}")


def _weights_file(part: Path, names: Sequence[str]) -> Path:
    """The first of `names` in the pipeline part `part` (unet/, vae/, text_encoder/)."""
    for name in names:
        if (part / name).exists():  # a folder or unreadable file in its place is named by the reader
            return part / name
    raise SD15LoadError(f"{part} holds no weights (looked for {', '.join(names)}): {_REFETCH}")


def _expected_shapes(part: Path, config: Mapping[str, Any]) -> Shapes:
    """Name -> shape of every weight of the model that `part`/config.json describes (built on the meta device)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    try:
        with torch.device("meta"):
            if part.name == "text_encoder":
                model = CLIPTextModel(CLIPTextConfig.from_dict(config))
            else:
                model = (UNet2DConditionModel if part.name == "unet" else AutoencoderKL).from_config(config)
    except Exception as error:  # any type for a config no model has: TypeError, ZeroDivisionError, hub validation
        raise SD15LoadError(f"{part / 'config.json'} does not describe a model ({type(error).__name__}: "
                            f"{one_line(error)}): {_REFETCH}") from error
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _comparable(part: str, shapes: Mapping[str, Sequence[int]]) -> Shapes:
    """Weight names as both sides of a comparison use them: text encoder names without `text_model.` (released files
    have it, transformers 5 modules do not) and without the position_ids buffer older files store; VAE attention
    under its current names."""
    if part == "text_encoder":
        return {key.removeprefix("text_model."): tuple(shape) for key, shape in shapes.items()
                if not key.endswith("position_ids")}
    if part == "vae":
        return {key: tuple(shape) for key, shape in _rename_legacy_vae_attention(shapes).items()}
    return {key: tuple(shape) for key, shape in shapes.items()}


def check_sd15_weights(folder: Path, parts: Mapping[str, Sequence[str]] = PART_WEIGHTS) -> dict[str, Path]:
    """The weight file of each pipeline part (the first of `parts[part]` in folder/part), after checking that each
    is whole and safe and holds exactly the weights its config.json describes (names and shapes, read from the
    headers; nothing is loaded). Raises SD15LoadError naming the file and what differs; a UNet with cross-attention
    of another width is named as its family (SD2, SDXL)."""
    files = {part: _weights_file(folder / part, names) for part, names in parts.items()}
    shapes = {part: tensor_shapes(file, SD15LoadError, _REFETCH) for part, file in files.items()}
    family = _family_for_context(_context_widths(shapes["unet"]))
    if family is not None:
        raise _not_sd15(folder, family)
    for part, file in files.items():
        config = read_config(folder / part / "config.json", SD15LoadError, _REFETCH)
        expected = _expected_shapes(folder / part, config)
        problems = layout_problems(_comparable(part, shapes[part]), _comparable(part, expected))
        if problems:
            raise SD15LoadError(f"{file} does not hold the weights {folder / part / 'config.json'} describes "
                                f"({problems}): the files belong to different models or are incomplete; {_REFETCH}")
    return files


def _rename_legacy_vae_attention(sd: Mapping[str, Any]) -> dict[str, Any]:
    """`…mid_block.attentions.0.query.weight` -> `…to_q.weight`, and so on; other keys unchanged."""
    renamed = {}
    for key, value in sd.items():
        module, _, parameter = key.rpartition(".")
        parent, _, name = module.rpartition(".")
        if ".attentions." in module and name in LEGACY_VAE_ATTENTION:
            key = f"{parent}.{LEGACY_VAE_ATTENTION[name]}.{parameter}"
        renamed[key] = value
    return renamed


def read_sd15_folder(path: str | Path) -> StateDict:
    """A diffusers SD1.5 folder (model_index.json, unet/, vae/, text_encoder/; weights as .safetensors or .bin,
    full precision or the fp16 variant) -> the single-file SD1.5 state dict, tensors in their stored dtypes.
    Raises SD15LoadError for a missing folder, part, config or weights file, a truncated, corrupt or unsafe file,
    weights that do not fit their config, and models that are not SD1.5 (SD2, SDXL, other UNets)."""
    folder = Path(path)
    if not folder.is_dir():
        raise SD15LoadError(f"{folder} is not a folder: give a diffusers SD1.5 folder (model_index.json, unet/, vae/, "
                            "text_encoder/) such as models/diffusers/llmga-sd15-t2i-v2")
    for part in ("unet", "vae", "text_encoder"):
        if not (folder / part).is_dir():
            pipeline = _pipeline_class(folder)
            names = f" (its model_index.json names a {pipeline})" if pipeline else ""
            raise SD15LoadError(f"{folder} has no {part}/ folder{names}: a diffusers SD1.5 folder holds unet/, vae/ "
                                f"and text_encoder/; {_REFETCH}")
    unet_config, text_config = (read_config(folder / part / "config.json", SD15LoadError, _REFETCH)
                                for part in ("unet", "text_encoder"))
    _check_configs(folder, unet_config, text_config)

    files = check_sd15_weights(folder)
    unet, vae, text_encoder = (read_tensors(files[part], SD15LoadError, _REFETCH) for part in PART_WEIGHTS)
    vae = _rename_legacy_vae_attention(vae)
    try:
        state_dict = sd15_single_file_state_dict(unet, unet_config, vae, text_encoder)
    except KeyError as error:  # a weight the SD1.5 layout has no place for
        raise _not_sd15(folder, f"not an SD1.5 model ({error.args[0]})") from error
    _check_sd15_layout(folder, {key: value.shape for key, value in state_dict.items()})
    return state_dict


def write_sd15_folder(base: str | Path, path: str | Path, unet_config: Mapping[str, Any],
                      unet_state: Mapping[str, Tensor]) -> None:
    """Write a diffusers SD1.5 folder into `path`: the pipeline parts of the `base` folder (model_index.json and every
    part it names, copied as they are) with `unet/` built from `unet_config` and `unet_state` (diffusers
    UNet2DConditionModel keys; stored as float32 safetensors). `read_sd15_folder(path)` and diffusers read it back.

    Other files in `path` stay (a trainer's checkpoints and logs). The old unet/ and model_index.json go first, each
    part is built in a temporary folder and renamed into place (the UNet last but one), and model_index.json comes
    last, so an interrupted write never leaves a folder that loads as a complete model.
    """
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    base, folder = Path(base), Path(path)
    index = read_config(base / "model_index.json", SD15LoadError, _REFETCH)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").unlink(missing_ok=True)
    shutil.rmtree(folder / "unet", ignore_errors=True)
    for part in index:
        if not part.startswith("_") and part != "unet" and (base / part).is_dir():
            with atomic_folder(folder / part) as temporary:
                shutil.copytree(base / part, temporary, dirs_exist_ok=True)
    with init_empty_weights(include_buffers=False):
        unet = UNet2DConditionModel.from_config(unet_config)
    unet.load_state_dict({key: value.float().cpu() for key, value in unet_state.items()}, assign=True)
    with atomic_folder(folder / "unet") as temporary:
        unet.save_pretrained(temporary)
    write_bytes_atomic(folder / "model_index.json", (base / "model_index.json").read_bytes())
