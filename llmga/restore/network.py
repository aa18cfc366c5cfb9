"""DiffRIR S2: the reference-based restoration network that LLMGA runs after inpainting and outpainting.

`DiffRIR(scale)` is the official `DiffRIRS2` (DiffRIR/archs/S2_arch.py) with the hyper-parameters of every DiffRIR
config and of inference_diffrir.py as defaults; its `state_dict()` has the official keys, shapes and order:
`G.*` (DIRformer), `condition.*` (CPEN_S2), `denoise.*`, then `diffusion.<12 schedule buffers>`,
`diffusion.model.*` and `diffusion.condition.*` (the same denoise/CPEN modules again, as ldm's DDPM registers them).

Input at scale s: x = cat([lq, reference]) on lq's grid, values in [0,1]:
- s=1: [B,6,H,W], reference = (1-mask)*gt;
- s=2: [B,15,H,W], reference = PixelUnshuffle(2)((1-mask)*gt) with gt at 2H×2W;
- s=4: [B,51,H,W], reference = PixelUnshuffle(4)((1-mask)*gt) with gt at 4H×4W.
Output: [B,3,s*H,s*W]; H and W must be multiples of `pad_multiple` (inference reflect-pads bottom/right).

The official inference draws the prior's initial noise inside `DDPM.forward` (ldm/ddpm.py, eval branch) as
`torch.randn((B, 256), device=<the model's device>)` from the global generator, before anything else random. Here
that noise is an argument: `forward(x, initial_noise(B, seed))` equals the official `model(x)` run on the CPU right
after `torch.manual_seed(seed)` (the same draw from the same CPU generator); on CUDA the official draw comes from
the CUDA generator instead, while `initial_noise` always draws on the CPU, so a seed gives one result everywhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .dirformer import PRIOR_DIM, SCALES, Check, DIRformer, input_channels
from .prior import CPEN, Denoiser, PriorDiffusion

__all__ = ["SCALES", "TRANSFORMER_MULTIPLE", "DiffRIR", "initial_noise"]

TRANSFORMER_MULTIPLE = 32  # the output grid must divide by 4 (tail) * 8 (three downsamplings)


def initial_noise(batch: int, seed: int) -> Tensor:
    """The prior's starting point for `seed`: float32 [batch,256] ~ N(0, I), always drawn on the CPU."""
    return torch.randn((batch, PRIOR_DIM), generator=torch.Generator("cpu").manual_seed(seed))


class DiffRIR(nn.Module):
    """DiffRIR S2 at `scale` 1, 2 or 4: x [B,C_in,H,W] in [0,1] and noise [B,256] -> [B,3,H*scale,W*scale].

    Hyper-parameters default to the released ones (inference_diffrir.py, options/train_DiffRIRS2_*.yml): the CPEN's
    and the denoiser's depths and the prior diffusion's schedule here, the DIRformer's `sizes` (dim, num_blocks,
    num_refinement_blocks, heads, ffn_expansion_factor, bias) as `DIRformer` takes them.
    """

    initial_noise = staticmethod(initial_noise)

    def __init__(self, scale: int = 1, *, n_encoder_res: int = 9, n_denoise_res: int = 1, timesteps: int = 4,
                 linear_start: float = 0.1, linear_end: float = 0.99, **sizes: Any) -> None:
        super().__init__()
        self.G = DIRformer(scale, **sizes)
        self.scale = scale
        self.condition = CPEN(scale, n_encoder_res)
        self.denoise = Denoiser(n_denoise_res, timesteps)
        self.diffusion = PriorDiffusion(self.denoise, self.condition, timesteps, linear_start, linear_end)

    @property
    def in_channels(self) -> int:
        """Channels of x: 6 (x1), 15 (x2) or 51 (x4)."""
        return input_channels(self.scale)

    @property
    def pad_multiple(self) -> int:
        """H and W of x must be multiples of this: 32 (x1), 16 (x2), 8 (x4), as inference_diffrir.py pads."""
        return TRANSFORMER_MULTIPLE // self.scale

    def prior(self, x: Tensor, noise: Tensor, check: Check | None = None) -> Tensor:
        """The image prior z [B,256]: CPEN_S2(x) conditions 4 deterministic reverse steps from `noise` [B,256].
        check: called between short steps of the work; raise from it to cancel (equal up to float rounding)."""
        return self.diffusion(x, noise, check)

    def restore(self, x: Tensor, z: Tensor, check: Check | None = None) -> Tensor:
        """The DIRformer given the prior: x [B,C_in,H,W], z [B,256] -> [B,3,H*scale,W*scale]. check: as `prior`."""
        return self.G(x, z, check)

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        """`restore(x, prior(x, noise))`, the official S2 inference forward (see the module docstring for noise)."""
        return self.restore(x, self.prior(x, noise))

