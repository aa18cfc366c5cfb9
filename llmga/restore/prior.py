"""DiffRIR S2's image prior: CPEN_S2 condenses the input into c [B,256]; a 4-step x0-parameterised diffusion over
the 256-d prior, started from Gaussian noise and conditioned on c, gives z [B,256] for the DIRformer.

Attribute names, module order and the 12 schedule buffers follow the official `DiffRIR/archs/S2_arch.py` (CPEN,
ResMLP, denoise) and `ldm/ddpm.py` (DDPM), so `state_dict()` keys are the official ones.

The CPEN sees the whole picture (up to 2048² px, official width 64-256 channels): with `check` (inference that must
answer Cancel) it runs layer by layer, its convolutions in strips of rows, calling `check()` between the steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .dirformer import PRIOR_DIM, UNSHUFFLE, Check, input_channels, run_stepped

CPEN_FEATURES = 64  # S2_arch.py: CPEN(n_feats=64, ...) and denoise(n_feats=64, ...) are hard-coded in DiffRIRS2
NEGATIVE_SLOPE = 0.1  # S2_arch.py / common.py: every activation is LeakyReLU(0.1)
TIME_SCALE = 10  # S2_arch.py denoise: t is fed as t / (10 * timesteps)
# ldm/ddpm.py DDPM.register_schedule, in state-dict order; all are stored, inference reads the posterior-mean pair.
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)
POSTERIOR_VARIANCE_FLOOR = 1e-20  # ldm/ddpm.py: log of the posterior variance, which is 0 at t = 0


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class ResBlock(nn.Module):
    """common.ResBlock: x + conv(lrelu(conv(x))), [B,C,H,W] -> [B,C,H,W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels), _lrelu(), _conv(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x

    def stepped(self, x: Tensor, check: Check) -> Tensor:
        """forward(x) in short steps (`run_stepped`)."""
        return run_stepped(self.body, x, check) + x


class CPEN(nn.Module):
    """Compact prior extraction network, S2 variant (input only, no GT): x [B,C_in,H,W] -> c [B,256].

    The input is pixel-unshuffled to the transformer's grid as in DIRformer (96, 60 or 51 channels), then a conv
    stack with `n_encoder_res` residual blocks, global average pooling and a 2-layer MLP. With `check`, the stack
    runs in short steps (equal up to float rounding).
    """

    def __init__(self, scale: int, n_encoder_res: int) -> None:
        super().__init__()
        self.scale = scale
        width = CPEN_FEATURES
        in_channels = input_channels(scale) * UNSHUFFLE[scale] ** 2
        self.E = nn.Sequential(
            _conv(in_channels, width), _lrelu(),
            *(ResBlock(width) for _ in range(n_encoder_res)),
            _conv(width, width * 2), _lrelu(),
            _conv(width * 2, width * 2), _lrelu(),
            _conv(width * 2, width * 4), _lrelu(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.mlp = nn.Sequential(
            nn.Linear(width * 4, width * 4), _lrelu(),
            nn.Linear(width * 4, width * 4), _lrelu(),
        )

    def forward(self, x: Tensor, check: Check | None = None) -> Tensor:
        features = nn.functional.pixel_unshuffle(x, UNSHUFFLE[self.scale]) if UNSHUFFLE[self.scale] > 1 else x
        if check is None:
            return self.mlp(self.E(features).flatten(1))
        for layer in self.E:
            features = layer.stepped(features, check) if isinstance(layer, ResBlock) else run_stepped(layer, features,
                                                                                                      check)
        return self.mlp(features.flatten(1))


class ResMLP(nn.Module):
    """Official `ResMLP`: Linear + LeakyReLU, despite the name without a skip connection. [B,N] -> [B,N]."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.resmlp = nn.Sequential(nn.Linear(features, features), _lrelu())

    def forward(self, x: Tensor) -> Tensor:
        return self.resmlp(x)


class Denoiser(nn.Module):
    """Official `denoise`: predicts z_0 from (z_t [B,256], t [B] long, c [B,256]) -> [B,256]."""

    def __init__(self, n_denoise_res: int, timesteps: int) -> None:
        super().__init__()
        self.max_period = timesteps * TIME_SCALE
        self.resmlp = nn.Sequential(
            nn.Linear(PRIOR_DIM * 2 + 1, PRIOR_DIM), _lrelu(),
            *(ResMLP(PRIOR_DIM) for _ in range(n_denoise_res)),
        )

    def forward(self, z_t: Tensor, t: Tensor, c: Tensor) -> Tensor:
        time = (t.to(c.dtype) / self.max_period).view(-1, 1)
        return self.resmlp(torch.cat([c, time, z_t], dim=1))


def diffusion_schedule(timesteps: int, linear_start: float, linear_end: float) -> dict[str, Tensor]:
    """ldm's "linear" schedule (linear in sqrt(beta)) and the derived buffers, computed in float64, stored float32."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    values = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=POSTERIOR_VARIANCE_FLOOR).log(),
        "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
    }
    return {name: values[name].float() for name in SCHEDULE_BUFFERS}


class PriorDiffusion(nn.Module):
    """Official `DDPM` in its inference use: x [B,C_in,H,W], noise z_T [B,256] -> z_0 [B,256].

    Holds the same `condition` and `denoise` modules as the parent network (registered here as `condition` and
    `model`, so the state dict repeats them under `diffusion.*`), plus the schedule buffers. Each reverse step
    returns the posterior mean q(z_{t-1} | z_t, ẑ_0) without added noise, so the chain is deterministic given z_T.
    `check`: called between the steps of the CPEN and before each reverse step (see the module docstring).
    """

    def __init__(self, denoise: Denoiser, condition: CPEN, timesteps: int, linear_start: float,
                 linear_end: float) -> None:
        super().__init__()
        self.model = denoise
        self.condition = condition
        self.num_timesteps = timesteps
        for name, value in diffusion_schedule(timesteps, linear_start, linear_end).items():
            self.register_buffer(name, value)

    def forward(self, x: Tensor, noise: Tensor, check: Check | None = None) -> Tensor:
        c = self.condition(x, check)
        z = noise.to(device=c.device, dtype=c.dtype)
        for step in reversed(range(self.num_timesteps)):
            if check is not None:
                check()
            t = torch.full((z.shape[0],), step, device=z.device, dtype=torch.long)
            z_0 = self.model(z, t, c)
            z = self.posterior_mean_coef1[step] * z_0 + self.posterior_mean_coef2[step] * z
        return z
