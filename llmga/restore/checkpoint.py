"""DiffRIR S2 weights on disk: strict, safe loading of the released checkpoints and saving to safetensors.

The released files are BasicSR `net_g_*.pth` pickles `{"params": …, "params_ema": …}`; inference_diffrir.py loads
`params_ema` with `strict=True`. Pickles are read with `torch.load(weights_only=True)` only. The scale is read from
the first conv of the DIRformer (`G.patch_embed.proj.weight`: 96 input channels for x1, 60 for x2, 51 for x4) and
checked against the CPEN's (`condition.E.0.weight`). Loading is strict: the file must hold exactly the official
keys and shapes, including the `diffusion.*` repeats of the shared modules and the 12 schedule buffers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import one_line
from ..files import save_safetensors_atomic, save_torch_atomic
from ..model_files import layout_problems, load_weights, name_list
from .dirformer import EMBED_CHANNELS
from .network import DiffRIR

StateDict = dict[str, Tensor]

WEIGHT_KEYS = ("params_ema", "params")  # BasicSR's save_network; inference_diffrir.py reads params_ema
FIRST_CONV = "G.patch_embed.proj.weight"
CPEN_FIRST_CONV = "condition.E.0.weight"
SCALE_BY_CHANNELS = {channels: scale for scale, channels in EMBED_CHANNELS.items()}
# DiffIR-RealSR/DiffIR/archs/S2_arch.py: the same network without the reference (lq only: 3 * 16, 3 * 4, 3).
DIFFIR_SCALE_BY_CHANNELS = {48: 1, 12: 2, 3: 4}
# The modules that ldm's DDPM registers a second time: key prefix in the file -> the prefix of the same module.
SHARED_PREFIXES = {"diffusion.model.": "denoise.", "diffusion.condition.": "condition."}
S2_WEIGHTS = ("DiffRIR S2 weights (net_g_*.pth of train_DiffRIRS2_x1 or train_DiffRIRS2_GAN_x1, from "
              "https://github.com/Zj-BinXia/DiffRIR)")
REFETCH = f"download the {S2_WEIGHTS} again"


class DiffRIRLoadError(ValueError):
    """A DiffRIR weight file that is missing, unreadable, unsafe, or not the DiffRIR S2 network asked for."""


def load_diffrir(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 expected_scale: int | None = None, **hyper: Any) -> DiffRIR:
    """A DiffRIR S2 network in eval mode on `device` in `dtype`, from a `.pth` (`params_ema`, else `params`, else a
    bare state dict) or a `.safetensors` file. Its scale comes from the weights; `expected_scale` makes any other
    scale an error. `hyper` overrides the released hyper-parameters (for networks trained at another size).
    The network's sizes are read from the weights (`hyper_from_state_dict`), so networks trained at other sizes
    load as they are. Raises DiffRIRLoadError naming what is wrong and what to do."""
    path = Path(path)
    state_dict = read_state_dict(path)
    scale = _scale_of(state_dict, path)
    if expected_scale is not None and scale != expected_scale:
        raise DiffRIRLoadError(f"{path} is a x{scale} DiffRIR model but x{expected_scale} was asked for: use the "
                               f"x{expected_scale} weights, or ask for scale {scale}")
    try:
        model = DiffRIR(scale, **{**hyper_from_state_dict(state_dict), **hyper})
    except (ValueError, TypeError, IndexError, ZeroDivisionError, RuntimeError) as error:  # sizes no network has
        raise DiffRIRLoadError(f"{path} holds DiffRIR weights of sizes no network can be built with "
                               f"({type(error).__name__}: {one_line(error)}): use the {S2_WEIGHTS}") from error
    _check_layout(state_dict, model.state_dict(), path)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device=device, dtype=dtype).eval()


def _count(state_dict: Mapping[str, Tensor], pattern: str) -> int:
    return len({match.group(1) for key in state_dict if (match := re.fullmatch(pattern, key))})


def hyper_from_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """The DiffRIR hyper-parameters a state dict was saved with (dim, blocks per level, heads, FFN expansion, bias,
    CPEN / denoiser depth, diffusion steps and schedule ends); keys it cannot read are left to the defaults, and
    `_check_layout` then reports the mismatch. The released files give the official values."""
    hyper: dict[str, Any] = {}
    first = state_dict.get(FIRST_CONV)
    if first is None or first.dim() != 4:
        return hyper
    dim = first.shape[0]
    levels = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
    blocks = [_count(state_dict, rf"G\.{level}\.(\d+)\.attn\.temperature") for level in levels]
    heads = [state_dict.get(f"G.{level}.0.attn.temperature") for level in levels]
    hidden = [state_dict.get(f"G.{level}.0.ffn.project_out.weight") for level in levels]
    if all(blocks) and all(h is not None for h in heads) and all(h is not None for h in hidden):
        hyper.update(dim=dim, num_blocks=tuple(blocks), heads=tuple(int(h.shape[0]) for h in heads))
        # int(c · f) == hidden channels at every level c = dim · 2^i: any f in the common interval; take its middle.
        widths = [(dim * 2**i, int(h.shape[1])) for i, h in enumerate(hidden)]
        low = max(h / c for c, h in widths)
        high = min((h + 1) / c for c, h in widths)
        if low < high:
            hyper["ffn_expansion_factor"] = (low + high) / 2 if not low <= 2.2 < high else 2.2
    refinement = _count(state_dict, r"G\.refinement\.(\d+)\.attn\.temperature")
    if refinement:
        hyper["num_refinement_blocks"] = refinement
    hyper["bias"] = "G.encoder_level1.0.attn.qkv.bias" in state_dict
    encoder_res = _count(state_dict, r"condition\.E\.(\d+)\.body\.0\.weight")
    if encoder_res:
        hyper["n_encoder_res"] = encoder_res
    hyper["n_denoise_res"] = _count(state_dict, r"denoise\.resmlp\.(\d+)\.resmlp\.0\.weight")
    betas = state_dict.get("diffusion.betas")
    if betas is not None and betas.dim() == 1 and len(betas) > 1:
        ends = round(float(betas[0]), 6), round(float(betas[-1]), 6)
        hyper.update(timesteps=len(betas), linear_start=ends[0], linear_end=ends[1])
    return hyper


def save_diffrir(model: DiffRIR, path: str | Path) -> None:
    """Write `model.state_dict()` to a `.safetensors` file in the official layout (the `diffusion.*` repeats
    included, stored as copies because safetensors refuses shared tensors), so `load_diffrir` reads it back."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_diffrir writes safetensors: name the file *.safetensors, not {path.name}")
    tensors = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in model.state_dict().items()}
    save_safetensors_atomic(tensors, path, metadata={"format": "pt"})


def save_basicsr_weights(weights: Mapping[str, Mapping[str, Tensor]], path: str | Path) -> None:
    """Write weights in the released BasicSR layout, a `.pth` of {"params": state dict, "params_ema": state dict}
    (S1 checkpoints hold "params" only), that `torch.load(weights_only=True)` and `load_diffrir` read. Written
    atomically: a killed run leaves the previous file or none, never half of one."""
    unknown = sorted(set(weights) - set(WEIGHT_KEYS))
    if unknown or not weights:
        raise ValueError(f"BasicSR weights are keyed {' / '.join(WEIGHT_KEYS)}, got {sorted(weights)}")
    save_torch_atomic({name: {key: value.detach().cpu().contiguous() for key, value in state.items()}
                       for name, state in weights.items()}, path)


def read_state_dict(path: Path) -> StateDict:
    """The state dict in a DiffRIR weight file, tensors as stored; checks only that it is one (name -> tensor).
    Pickles are read with torch.load(weights_only=True) only: one that would build Python objects is refused."""
    if path.is_dir():
        raise DiffRIRLoadError(f"{path} is a folder: give the DiffRIR weight file itself ({S2_WEIGHTS})")
    if not path.is_file():
        raise DiffRIRLoadError(f"no DiffRIR weight file at {path}: download the {S2_WEIGHTS} and give its path")
    stored = load_weights(path, DiffRIRLoadError, REFETCH)
    if isinstance(stored, Mapping):
        stored = next((stored[key] for key in WEIGHT_KEYS if key in stored), stored)
    if not isinstance(stored, Mapping) or not stored or not all(
            isinstance(key, str) and isinstance(value, Tensor) for key, value in stored.items()):
        raise DiffRIRLoadError(f"{path} holds no state dict (name -> tensor, bare or under "
                               f"{' / '.join(WEIGHT_KEYS)}): it is not a DiffRIR weight file; use the {S2_WEIGHTS}")
    return dict(stored)


def _scale_of(state_dict: Mapping[str, Tensor], path: Path) -> int:
    """1, 2 or 4 from the DIRformer's and the CPEN's first convs; errors for S1, DiffIR and other networks."""
    if any(key.startswith("E.") for key in state_dict) and not any(key.startswith("condition.") for key in state_dict):
        raise DiffRIRLoadError(f"{path} holds DiffRIR S1 (first-stage) weights: its prior network (E.*) reads the "
                               f"ground truth, which restoration does not have; use the {S2_WEIGHTS}")
    first_conv, cpen_conv = state_dict.get(FIRST_CONV), state_dict.get(CPEN_FIRST_CONV)
    if first_conv is None or cpen_conv is None or first_conv.dim() != 4 or cpen_conv.dim() != 4:
        found = ", ".join(list(state_dict)[:3])
        raise DiffRIRLoadError(f"{path} is not a DiffRIR S2 state dict: expected G.* (DIRformer), condition.* "
                               f"(CPEN) and denoise.* keys with {FIRST_CONV} and {CPEN_FIRST_CONV}, found {found}, …; "
                               f"use the {S2_WEIGHTS}")
    channels = first_conv.shape[1]
    if channels in DIFFIR_SCALE_BY_CHANNELS:
        raise DiffRIRLoadError(
            f"{path} is a DiffIR x{DIFFIR_SCALE_BY_CHANNELS[channels]} super-resolution model ({channels} input "
            f"channels, the degraded image only), not DiffRIR, which also reads the reference image; use the "
            f"{S2_WEIGHTS}")
    if channels not in SCALE_BY_CHANNELS:
        expected = ", ".join(f"{c} (x{s})" for c, s in SCALE_BY_CHANNELS.items())
        raise DiffRIRLoadError(f"{path}: {FIRST_CONV} takes {channels} input channels, a DiffRIR S2 network takes "
                               f"{expected}; use the {S2_WEIGHTS}")
    if cpen_conv.shape[1] != channels:
        raise DiffRIRLoadError(f"{path} is inconsistent: the DIRformer takes {channels} input channels but the CPEN "
                               f"takes {cpen_conv.shape[1]}; download the {S2_WEIGHTS} again")
    return SCALE_BY_CHANNELS[channels]


def _check_layout(state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor], path: Path) -> None:
    """The file's keys and shapes must be exactly the network's, and the repeated modules must hold equal tensors."""
    problems = layout_problems({key: value.shape for key, value in state_dict.items()},
                               {key: value.shape for key, value in expected.items()})
    if problems:
        raise DiffRIRLoadError(f"{path} does not match the DiffRIR S2 network ({problems}): it was saved "
                               f"from another network or another size; use the {S2_WEIGHTS}")
    differing = [key for key in state_dict for repeat, prefix in SHARED_PREFIXES.items()
                 if key.startswith(repeat) and not torch.equal(state_dict[key], state_dict[prefix + key[len(repeat):]])]
    if differing:
        raise DiffRIRLoadError(f"{path} is inconsistent: these copies of shared weights differ from their originals "
                               f"({name_list(differing)}); download the {S2_WEIGHTS} again")
