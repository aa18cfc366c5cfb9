"""DiffRIR S1, the first-stage network: the DIRformer with a prior extracted from the input *and* the ground truth.

Official `DiffRIRS1` (DiffRIR/archs/S1_arch.py): `G` is the same DIRformer as in S2 and `E` is `CPEN` of S1_arch.py,
which reads cat(PixelUnshuffle_s(x), PixelUnshuffle4(gt)) — 96+48 = 144 channels at x1, 60+48 = 108 at x2 and
51+48 = 99 at x4 — so `state_dict()` has the official S1 keys: `G.*` (identical to S2's `G.*`), `E.E.*`, `E.mlp.*`.
Stage 2 starts from an S1 checkpoint with `strict_load_g: False`, which transfers exactly the `G.*` tensors
(`init_s2_from_s1`); the frozen S1 CPEN then supplies the target prior z_S1 for the S2 prior network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dirformer import EMBED_CHANNELS, UNSHUFFLE, DIRformer
from .network import DiffRIR
from .prior import CPEN, CPEN_FEATURES

GT_UNSHUFFLE = 4  # S1_arch.py CPEN: the ground truth is always PixelUnshuffle(4)-ed (it is 4× the transformer grid)
GT_CHANNELS = 3 * GT_UNSHUFFLE**2
GENERATOR_PREFIX = "G."


def cpen_s1_channels(scale: int) -> int:
    """Input channels of the S1 CPEN's first conv: 144 (x1), 108 (x2), 99 (x4)."""
    return EMBED_CHANNELS[scale] + GT_CHANNELS


class CPENS1(CPEN):
    """S1 CPEN: x [B,C_in,H,W] and gt [B,3,H·s,W·s] in [0,1] -> z [B,256].

    The S2 CPEN with a wider first conv (the ground truth is concatenated to the unshuffled input); same layers,
    same names.
    """

    def __init__(self, scale: int, n_encoder_res: int) -> None:
        super().__init__(scale, n_encoder_res)
        self.E[0] = nn.Conv2d(cpen_s1_channels(scale), CPEN_FEATURES, kernel_size=3, padding=1)

    def forward(self, x: Tensor, gt: Tensor) -> Tensor:
        features = F.pixel_unshuffle(x, UNSHUFFLE[self.scale]) if UNSHUFFLE[self.scale] > 1 else x
        gt_features = F.pixel_unshuffle(gt, GT_UNSHUFFLE)
        if features.shape[-2:] != gt_features.shape[-2:]:
            raise ValueError(f"x is {tuple(x.shape[-2:])} and gt {tuple(gt.shape[-2:])}: gt must be {self.scale}× "
                             "the input's size (the network's output size)")
        return self.mlp(self.E(torch.cat([features, gt_features], 1)).flatten(1))


class DiffRIRS1(nn.Module):
    """DiffRIR S1 at `scale` 1, 2 or 4: x [B,C_in,H,W] (`build_pair`'s input) and gt [B,3,H·s,W·s] in [0,1] ->
    [B,3,H·s,W·s]. Hyper-parameters default to train_DiffRIRS1_x{1,2,4}.yml (the same as S2's): the CPEN's depth
    here, the DIRformer's `sizes` as `DIRformer` takes them."""

    def __init__(self, scale: int = 1, *, n_encoder_res: int = 9, **sizes: Any) -> None:
        super().__init__()
        self.G = DIRformer(scale, **sizes)
        self.scale = scale
        self.E = CPENS1(scale, n_encoder_res)

    def prior(self, x: Tensor, gt: Tensor) -> Tensor:
        """z_S1 [B,256], the prior that S2 learns to predict without the ground truth."""
        return self.E(x, gt)

    def forward(self, x: Tensor, gt: Tensor) -> Tensor:
        return self.G(x, self.prior(x, gt))


def init_s2_from_s1(s2: DiffRIR, s1_state_dict: Mapping[str, Tensor]) -> list[str]:
    """Copy the S1 DIRformer (`G.*`) into `s2` in place, as the official S2 start (`pretrain_network_g` = the S1
    checkpoint, `strict_load_g: False`: only keys with the same name load, and S1's CPEN is `E.*`, not
    `condition.*`). Returns the copied keys. Raises ValueError when the S1 DIRformer does not fit `s2`'s."""
    target = {key: value for key, value in s2.state_dict().items() if key.startswith(GENERATOR_PREFIX)}
    missing = [key for key in target if key not in s1_state_dict]
    mismatched = [f"{key} {tuple(s1_state_dict[key].shape)} (S2: {tuple(value.shape)})"
                  for key, value in target.items() if key in s1_state_dict and s1_state_dict[key].shape != value.shape]
    if missing or mismatched:
        listed = ", ".join((missing + mismatched)[:5])
        raise ValueError(f"the S1 weights do not fit this S2 network's DIRformer ({len(missing)} G.* keys missing, "
                         f"{len(mismatched)} of another shape: {listed}): build S2 with the scale and sizes S1 was "
                         "trained with")
    s2.G.load_state_dict({key[len(GENERATOR_PREFIX):]: s1_state_dict[key] for key in target}, strict=True)
    return list(target)
