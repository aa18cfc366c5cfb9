"""Stable Diffusion 1.5 and SDXL weights on disk: read for loading, with clear errors for anything that is not a
complete model of the family asked for, and the diffusers folder written.

`read_sd15_folder` / `read_sdxl_folder` turn a diffusers folder (model_index.json, unet/, vae/, text_encoder/, and
SDXL's text_encoder_2/) into the single-file state dict of its family (SD1.5: `model.diffusion_model.*`,
`first_stage_model.*`, `cond_stage_model.*`; SDXL: the same UNet and VAE prefixes with
`conditioner.embedders.0.*` (CLIP ViT-L) and `conditioner.embedders.1.model.*` (OpenCLIP ViT-bigG)), so any loader of
original checkpoints can take it. `check_sd15_single_file` / `check_sdxl_single_file` inspect a single-file checkpoint
from its safetensors header alone. All raise `SDLoadError` for a missing or truncated file, a missing part, or a
model of another kind (SD1.5 where SDXL is asked and the reverse, an SDXL refiner, SD2, SD3, Flux), naming what the
model is and what to load it with, from configs and headers before any weights are read. `write_sd_folder` writes
a diffusers folder with a new UNet (what the stage-2 trainer produces), which these readers and diffusers load.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from .convert import StateDict, sd15_single_file_state_dict, sdxl_single_file_state_dict

SD15_CONTEXT_DIM = 768  # CLIP ViT-L/14 text width: the UNet's cross-attention input
SD15_MODEL_CHANNELS = 320  # width of the first UNet level (SD1.5 and SDXL alike)
SDXL_CONTEXT_DIM = 2048  # CLIP ViT-L + OpenCLIP ViT-bigG, concatenated
SDXL_ADM_CHANNELS = 2816  # SDXL's label_emb input: pooled OpenCLIP ViT-bigG (1280) + 6 size numbers x 256
SDXL_REFINER_ADM_CHANNELS = 2560  # the refiner's: pooled ViT-bigG (1280) + 5 size/score numbers x 256
SD2_CONTEXT_DIM = 1024  # OpenCLIP ViT-H

# Weight file names in the order they are preferred: full precision before the fp16 variant, safetensors
# before pickles.
DIFFUSERS_WEIGHTS = tuple(f"diffusion_pytorch_model{v}.{e}" for e in ("safetensors", "bin") for v in ("", ".fp16"))
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.fp16.bin")
PART_WEIGHTS = {"unet": DIFFUSERS_WEIGHTS, "vae": DIFFUSERS_WEIGHTS, "text_encoder": TRANSFORMERS_WEIGHTS}
SDXL_PART_WEIGHTS = {**PART_WEIGHTS, "text_encoder_2": TRANSFORMERS_WEIGHTS}
# What diffusers' from_pretrained reads when no variant is asked for.
FULL_PRECISION_WEIGHTS = {part: tuple(name for name in names if ".fp16." not in name)
                          for part, names in PART_WEIGHTS.items()}
# Older diffusers releases (before 0.14) named the VAE attention projections differently; diffusers renames them
# when it loads such a file, and so do we.
LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

_REFETCH = "download the model again (an interrupted download leaves files missing or cut short)"
_REFETCH_FILE = f"{_REFETCH}, or use the model's .safetensors file"
_OTHER_SD = "LLMGA's SD models are SD1.5 and SDXL, so load this one with ComfyUI's own Load Checkpoint"
# What each kind of model is called in messages, and what to do with it instead (None: the other family's loader).
KINDS: dict[str, tuple[str, str | None]] = {
    "sd15": ("an SD1.5 model", None),
    "sdxl": ("an SDXL model", None),
    "sdxl-refiner": ("an SDXL refiner (it refines the latents of an SDXL base model; it does not draw from a prompt)",
                     "load it with ComfyUI's Load Checkpoint to refine an SDXL base model's latents, and choose an "
                     "SDXL base model such as llmga-sdxl-t2i here"),
    "sd2": ("an SD2 model (OpenCLIP ViT-H text encoder)", _OTHER_SD),
    "sd3": ("an SD3 model (MMDiT)", _OTHER_SD),
    "flux": ("a Flux model", _OTHER_SD),
}


class SDLoadError(ValueError):
    """A model could not be read as the Stable Diffusion family asked for; the message says what is wrong and what
    to do."""


SD15LoadError = SDLoadError  # the name SD1.5 callers catch


@dataclass(frozen=True)
class SDFamily:
    """What the pack loads of one Stable Diffusion family, and how messages name it."""

    kind: str  # "sd15" / "sdxl", as in KINDS
    name: str  # "SD1.5" / "SDXL"
    context_dim: int  # the UNet's cross-attention input width
    parts: Mapping[str, Sequence[str]]  # weighted pipeline parts -> weight file names, preferred first
    single_file_parts: Mapping[str, str]  # single-file key prefix -> part name
    example: str  # a released folder of the family
    node: str  # the ComfyUI node that loads it


SD15 = SDFamily("sd15", "SD1.5", SD15_CONTEXT_DIM, PART_WEIGHTS,
                {"model.diffusion_model.": "UNet", "first_stage_model.": "VAE", "cond_stage_model.": "text encoder"},
                "llmga-sd15-t2i-v2", "LLMGA Load SD1.5")
SDXL = SDFamily("sdxl", "SDXL", SDXL_CONTEXT_DIM, SDXL_PART_WEIGHTS,
                {"model.diffusion_model.": "UNet", "first_stage_model.": "VAE",
                 "conditioner.embedders.0.transformer.text_model.": "CLIP ViT-L text encoder",
                 "conditioner.embedders.1.model.": "OpenCLIP ViT-bigG text encoder"},
                "llmga-sdxl-t2i", "LLMGA Load SDXL")
FAMILIES = {family.kind: family for family in (SD15, SDXL)}


def _not_family(what: object, family: SDFamily, found: str) -> SDLoadError:
    """The error for a model of kind `found` (a KINDS key, or a description of an unknown model) given to the
    `family` loader."""
    description, advice = KINDS.get(found, (found, _OTHER_SD))
    if advice is None:
        other = FAMILIES[found]
        advice = f"it loads as {other.name} ({other.node})"
    return SDLoadError(f"{what} is {description}; the LLMGA {family.name} loader takes {family.name} folders such as "
                       f"{family.example} and {family.name} single-file checkpoints: {advice}")


def _kind_for_context(context_dims: set[int], family: SDFamily) -> str | None:
    """What a UNet with these cross-attention widths is, when that is not `family` (None when it is)."""
    if context_dims == {family.context_dim}:
        return None
    for width, kind in ((SDXL_CONTEXT_DIM, "sdxl"), (SD2_CONTEXT_DIM, "sd2"), (SD15_CONTEXT_DIM, "sd15")):
        if width in context_dims and kind != family.kind:
            return "an SD2 model (cross-attention width 1024, OpenCLIP ViT-H text encoder)" if kind == "sd2" else kind
    widths = ", ".join(str(d) for d in sorted(context_dims)) or "none"
    return (f"not an {family.name} model (cross-attention width {widths}; {family.name} has "
            f"{family.context_dim})")


def _context_widths(unet: Mapping[str, Sequence[int]]) -> set[int]:
    """The cross-attention input widths of a UNet, from the shapes of its attn2.to_k weights."""
    return {shape[-1] for key, shape in unet.items() if key.endswith("attn2.to_k.weight") and len(shape)}


# --- single-file layout --------------------------------------------------------------------------------


def _single_file_kind(shapes: Mapping[str, Sequence[int]]) -> str | None:
    """The kind (a KINDS key) a single file's text encoders or transformer say it is, or None when they do not
    tell (then the UNet's widths decide)."""
    if any("joint_blocks." in key for key in shapes):  # MMDiT
        return "sd3"
    if any("double_blocks." in key for key in shapes):  # Flux's double-stream blocks
        return "flux"
    if any(key.startswith("conditioner.embedders.1.model.") for key in shapes):  # OpenCLIP ViT-bigG second
        return "sdxl"
    if any(key.startswith("conditioner.embedders.0.model.") for key in shapes):  # ViT-bigG alone: the refiner
        return "sdxl-refiner"
    if any(key.startswith("cond_stage_model.model.") for key in shapes):  # OpenCLIP ViT-H
        return "sd2"
    if any(key.startswith("cond_stage_model.transformer.") for key in shapes):  # CLIP ViT-L alone
        return "sd15"
    return None


def _check_layout(what: object, shapes: Mapping[str, Sequence[int]], family: SDFamily) -> None:
    """Raise SDLoadError unless `shapes` (single-file key -> tensor shape) is a complete checkpoint of `family`: the
    UNet (320 model channels, the family's cross-attention width, SDXL's size embedding), VAE and text encoders.
    `what` names the model in the message."""
    unet = {key.removeprefix("model.diffusion_model."): shape for key, shape in shapes.items()
            if key.startswith("model.diffusion_model.")}
    adm = tuple(unet.get("label_emb.0.0.weight", (0, 0)))[-1]
    kind = "sdxl-refiner" if adm == SDXL_REFINER_ADM_CHANNELS else _single_file_kind(shapes)
    if kind is not None and kind != family.kind:
        raise _not_family(what, family, kind)
    found = _kind_for_context(_context_widths(unet), family) if unet else None
    if found is not None:
        raise _not_family(what, family, found)
    for prefix, part in family.single_file_parts.items():
        if not any(key.startswith(prefix) for key in shapes):
            raise SDLoadError(
                f"{what} holds no {part} ({prefix}*): it is not a full {family.name} checkpoint (a LoRA, VAE or "
                f"UNet-only file?); choose a checkpoint with UNet, VAE and text encoder{'s' if family is SDXL else ''}")
    channels = (tuple(unet.get("input_blocks.0.0.weight", ())) or (0,))[0]
    if channels != SD15_MODEL_CHANNELS:
        raise _not_family(what, family, f"not an {family.name} model (UNet width {channels}; {family.name} has "
                                        f"{SD15_MODEL_CHANNELS})")
    if family is SDXL and adm != SDXL_ADM_CHANNELS:
        raise _not_family(what, family, f"not an SDXL base model (size embedding input {adm or 'missing'}; SDXL has "
                                        f"{SDXL_ADM_CHANNELS})")


def _single_file_state_dict(stored: object, file: Path) -> Mapping[str, Any]:
    """The state dict inside a pickled single file, found as ComfyUI's load_torch_file finds it: under
    "state_dict", else the one entry of a one-entry dict, else the whole dict."""
    if isinstance(stored, Mapping):
        if isinstance(stored.get("state_dict"), Mapping):
            return stored["state_dict"]
        if len(stored) == 1 and isinstance(inner := next(iter(stored.values())), Mapping):
            return inner
        return stored
    raise SDLoadError(f"{file} does not hold a state dict (name -> tensor): it is not a Stable Diffusion "
                      f"checkpoint; {_REFETCH_FILE}")


def _single_file_shapes(path: str | Path, family: SDFamily) -> Shapes:
    """Name -> shape of every tensor of the single-file checkpoint at `path`. A safetensors file is read from its
    header; a pickled one (.ckpt, .pt) is mapped with torch.load(weights_only=True), which refuses a pickle that
    would build Python objects (run code)."""
    file = Path(path)
    if file.is_dir():
        raise SDLoadError(f"{file} is a folder, not a checkpoint file: choose an {family.name} checkpoint file, or put "
                          "a diffusers folder under models/diffusers")
    if not file.is_file():
        raise SDLoadError(f"{file} does not exist: choose an {family.name} checkpoint file")
    if is_safetensors(file):
        return tensor_shapes(file, SDLoadError, _REFETCH)
    stored = _single_file_state_dict(load_torch_file(file, SDLoadError, _REFETCH_FILE, mmap=True), file)
    return {key: tuple(value.shape) for key, value in stored.items() if isinstance(value, Tensor)}


def check_single_file(path: str | Path, family: SDFamily) -> None:
    """Raise SDLoadError unless the single-file checkpoint at `path` is a complete, untruncated one of `family`
    (SD1.5; SDXL base: 2048-wide cross-attention, the size embedding, CLIP ViT-L and OpenCLIP ViT-bigG; a 9-channel
    inpainting UNet is fine), read from the safetensors header or a pickle mapped with torch.load(weights_only=True)."""
    _check_layout(Path(path), _single_file_shapes(path, family), family)


def check_sd15_single_file(path: str | Path) -> None:
    """`check_single_file(path, SD15)`."""
    check_single_file(path, SD15)


def check_sdxl_single_file(path: str | Path) -> None:
    """`check_single_file(path, SDXL)`."""
    check_single_file(path, SDXL)


# --- diffusers folder ----------------------------------------------------------------------------------


def _pipeline_class(folder: Path) -> str:
    """model_index.json's pipeline class, or '' without one."""
    index = folder / "model_index.json"
    return str(read_config(index, SDLoadError, _REFETCH).get("_class_name", "")) if index.is_file() else ""


def folder_kind(folder: Path, unet: Mapping[str, Any]) -> str | None:
    """The kind (a KINDS key) of the diffusers folder whose UNet config is `unet`, from what marks SDXL (its size
    embedding, 2048-wide cross-attention, a second text encoder, an XL pipeline); None when nothing does."""
    if unet.get("addition_embed_type") == "text_time":
        refiner = unet.get("projection_class_embeddings_input_dim") == SDXL_REFINER_ADM_CHANNELS
        return "sdxl-refiner" if refiner else "sdxl"
    widths = unet.get("cross_attention_dim")
    if SDXL_CONTEXT_DIM in (widths if isinstance(widths, list) else [widths]):
        return "sdxl"
    if "XL" in _pipeline_class(folder) or (folder / "text_encoder_2").is_dir():
        return "sdxl"
    return None


def _check_folder_kind(folder: Path, unet: Mapping[str, Any], family: SDFamily) -> None:
    """Reject a folder of another kind from its UNet config, before any other part is opened: an SDXL one (or an
    SDXL refiner) for SD1.5, and for SDXL one that nothing marks as SDXL, named by its cross-attention width."""
    kind = folder_kind(folder, unet)
    if kind is None and family is SDXL:
        widths = unet.get("cross_attention_dim")
        kind = _kind_for_context(set(widths if isinstance(widths, list) else [widths]) - {None}, family)
    if kind is not None and kind != family.kind:
        raise _not_family(folder, family, kind)


def _check_configs(folder: Path, unet: Mapping[str, Any], text_encoder: Mapping[str, Any], family: SDFamily) -> None:
    """Reject other families from their configs (cross-attention and text widths), before any weights are read."""
    # 1280 is diffusers' default cross_attention_dim, what a config without the key builds.
    widths = (unet.get("cross_attention_dim", 1280),) if family is SDXL else (
        unet.get("cross_attention_dim", 1280), text_encoder.get("hidden_size", SD15_CONTEXT_DIM))
    found = _kind_for_context({width for width in widths if isinstance(width, int)}, family)
    if found is not None:
        raise _not_family(folder, family, found)
    missing = [key for key in ("block_out_channels", "layers_per_block", "up_block_types") if key not in unet]
    if missing:
        raise SDLoadError(f"{folder / 'unet' / 'config.json'} lacks {', '.join(missing)}: {_REFETCH}")


def _weights_file(part: Path, names: Sequence[str]) -> Path:
    """The first of `names` in the pipeline part `part` (unet/, vae/, text_encoder/, text_encoder_2/)."""
    for name in names:
        if (part / name).exists():  # a folder or unreadable file in its place is named by the reader
            return part / name
    raise SDLoadError(f"{part} holds no weights (looked for {', '.join(names)}): {_REFETCH}")


def _expected_shapes(part: Path, config: Mapping[str, Any]) -> Shapes:
    """Name -> shape of every weight of the model that `part`/config.json describes (built on the meta device)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    try:
        with torch.device("meta"):
            if part.name == "text_encoder_2":  # SDXL's: with the projection its pooled output goes through
                model = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(config))
            elif part.name == "text_encoder":
                model = CLIPTextModel(CLIPTextConfig.from_dict(config))
            else:
                model = (UNet2DConditionModel if part.name == "unet" else AutoencoderKL).from_config(config)
    except Exception as error:  # any type for a config no model has: TypeError, ZeroDivisionError, hub validation
        raise SDLoadError(f"{part / 'config.json'} does not describe a model ({type(error).__name__}: "
                          f"{one_line(error)}): {_REFETCH}") from error
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _comparable(part: str, shapes: Mapping[str, Sequence[int]]) -> Shapes:
    """Weight names as both sides of a comparison use them: text encoder names without `text_model.` (released files
    have it, transformers 5 modules do not) and without the position_ids buffer older files store; VAE attention
    under its current names."""
    if part.startswith("text_encoder"):
        return {key.removeprefix("text_model."): tuple(shape) for key, shape in shapes.items()
                if not key.endswith("position_ids")}
    if part == "vae":
        return {key: tuple(shape) for key, shape in _rename_legacy_vae_attention(shapes).items()}
    return {key: tuple(shape) for key, shape in shapes.items()}


def _check_weights(folder: Path, parts: Mapping[str, Sequence[str]], family: SDFamily) -> dict[str, Path]:
    """The weight file of each pipeline part (the first of `parts[part]` in folder/part), after checking that each
    is whole and safe and holds exactly the weights its config.json describes (names and shapes, read from the
    headers; nothing is loaded). Raises SDLoadError naming the file and what differs; a UNet with cross-attention
    of another width is named as its family."""
    files = {part: _weights_file(folder / part, names) for part, names in parts.items()}
    shapes = {part: tensor_shapes(file, SDLoadError, _REFETCH) for part, file in files.items()}
    found = _kind_for_context(_context_widths(shapes["unet"]), family)
    if found is not None:
        raise _not_family(folder, family, found)
    for part, file in files.items():
        config = read_config(folder / part / "config.json", SDLoadError, _REFETCH)
        expected = _expected_shapes(folder / part, config)
        problems = layout_problems(_comparable(part, shapes[part]), _comparable(part, expected))
        if problems:
            raise SDLoadError(f"{file} does not hold the weights {folder / part / 'config.json'} describes "
                              f"({problems}): the files belong to different models or are incomplete; {_REFETCH}")
    return files


def check_sd15_weights(folder: Path, parts: Mapping[str, Sequence[str]] = PART_WEIGHTS) -> dict[str, Path]:
    """`_check_weights` for an SD1.5 folder: the weight file of each part, checked against its config."""
    return _check_weights(folder, parts, SD15)


def check_sdxl_weights(folder: Path, parts: Mapping[str, Sequence[str]] = SDXL_PART_WEIGHTS) -> dict[str, Path]:
    """`_check_weights` for an SDXL folder (text_encoder_2 included): the weight file of each part, checked against
    its config."""
    return _check_weights(folder, parts, SDXL)


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


def read_folder(path: str | Path, family: SDFamily) -> StateDict:
    """A diffusers folder of `family` -> its single-file state dict (see read_sd15_folder / read_sdxl_folder)."""
    folder = Path(path)
    parts = ", ".join(f"{part}/" for part in family.parts)
    if not folder.is_dir():
        raise SDLoadError(f"{folder} is not a folder: give a diffusers {family.name} folder (model_index.json, "
                          f"{parts}) such as models/diffusers/{family.example}")
    if not (folder / "unet").is_dir():
        pipeline = _pipeline_class(folder)
        names = f" (its model_index.json names a {pipeline})" if pipeline else ""
        raise SDLoadError(f"{folder} has no unet/ folder{names}: a diffusers {family.name} folder holds {parts}; "
                          f"{_REFETCH}")
    unet_config = read_config(folder / "unet" / "config.json", SDLoadError, _REFETCH)
    _check_folder_kind(folder, unet_config, family)
    for part in family.parts:
        if not (folder / part).is_dir():
            raise SDLoadError(f"{folder} has no {part}/ folder: a diffusers {family.name} folder holds {parts}; "
                              f"{_REFETCH}")
    text_config = read_config(folder / "text_encoder" / "config.json", SDLoadError, _REFETCH)
    _check_configs(folder, unet_config, text_config, family)

    files = _check_weights(folder, family.parts, family)
    weights = {part: read_tensors(file, SDLoadError, _REFETCH) for part, file in files.items()}
    weights["vae"] = _rename_legacy_vae_attention(weights["vae"])
    try:
        if family is SDXL:
            state_dict = sdxl_single_file_state_dict(weights["unet"], unet_config, weights["vae"],
                                                     weights["text_encoder"], weights["text_encoder_2"])
        else:
            state_dict = sd15_single_file_state_dict(weights["unet"], unet_config, weights["vae"],
                                                     weights["text_encoder"])
    except KeyError as error:  # a weight the family's layout has no place for
        raise _not_family(folder, family, f"not an {family.name} model ({error.args[0]})") from error
    _check_layout(folder, {key: value.shape for key, value in state_dict.items()}, family)
    return state_dict


def read_sd15_folder(path: str | Path) -> StateDict:
    """A diffusers SD1.5 folder (model_index.json, unet/, vae/, text_encoder/; weights as .safetensors or .bin,
    full precision or the fp16 variant) -> the single-file SD1.5 state dict, tensors in their stored dtypes.
    Raises SDLoadError for a missing folder, part, config or weights file, a truncated, corrupt or unsafe file,
    weights that do not fit their config, and models that are not SD1.5 (SDXL, SD2, other UNets)."""
    return read_folder(path, SD15)


def read_sdxl_folder(path: str | Path) -> StateDict:
    """A diffusers SDXL base folder (model_index.json, unet/ (4 or 9 input channels), vae/, text_encoder/,
    text_encoder_2/; weights as read_sd15_folder takes them) -> the single-file SDXL state dict
    (`model.diffusion_model.*`, `first_stage_model.*`, `conditioner.embedders.0.transformer.text_model.*`,
    `conditioner.embedders.1.model.*`), tensors in their stored dtypes. Raises SDLoadError as read_sd15_folder does,
    and for SD1.5 folders and SDXL refiners."""
    return read_folder(path, SDXL)


def write_sd_folder(base: str | Path, path: str | Path, unet_config: Mapping[str, Any],
                    unet_state: Mapping[str, Tensor]) -> None:
    """Write a diffusers SD1.5 or SDXL folder into `path`: the pipeline parts of the `base` folder (model_index.json
    and every part it names, copied as they are) with `unet/` built from `unet_config` and `unet_state` (diffusers
    UNet2DConditionModel keys; stored as float32 safetensors). `read_folder(path, family)` and diffusers read it
    back.

    Other files in `path` stay (a trainer's checkpoints and logs). The old unet/ and model_index.json go first, each
    part is built in a temporary folder and renamed into place (the UNet last but one), and model_index.json comes
    last, so an interrupted write never leaves a folder that loads as a complete model.
    """
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    base, folder = Path(base), Path(path)
    index = read_config(base / "model_index.json", SDLoadError, _REFETCH)
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


write_sd15_folder = write_sd_folder  # the name before SDXL
