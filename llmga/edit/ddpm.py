"""LLMGA's instruction editing: edit-friendly DDPM noise maps, SDE-DPM-Solver++(2M), a DiffEdit mask, masked CFG.

What the official `cli-sd15-editing.py` really runs (pipeline `..._img2img_solver_lpw_mask.py`, scheduler
`DPMSolverMultistepSchedulerInject(algorithm_type="sde-dpmsolver++", solver_order=2)`), in its order:
1. `diffedit_mask`: |ε̂_target − ε̂_source| at the strength-0.5 noise level, averaged over 10 noise draws, binarized;
2. `edit_friendly_inversion` (Huberman-Spiegelglas et al., arXiv 2304.06140, Algorithm 1): every x_t is drawn
   independently from x0, then z_t is solved so that one SDE-DPM-Solver++ step maps x_t exactly onto x_{t−1};
3. `ddpm_edit_sample`: from x_T with the target prompt, re-injecting the z_t, ε̂ = ε_u + mask·g·(ε_tar − ε_u).

Written against the eps callable of `inversion.py`: eps(latents [B,4,h,w], t, context [B,T,C]) -> [B,4,h,w], on the
SD1.5 schedule of `sd15_alphas_cumprod`. Work happens in the latent dtype on the latent's device; noise is drawn on
the generator's device (CPU when none is given) in the latent dtype and then moved, so a seed gives the same noise
on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from .inversion import NUM_TRAIN_TIMESTEPS, EpsFn, StepCallback, check_edit_inputs, sd15_alphas_cumprod

# cli-sd15-editing.py: --steps 50 --skip 25 --src_cfg_scale 3.5 --tar_cfg_scale 7.5, mask_thresholding_ratio=3.0.
DEFAULT_STEPS = 50
DEFAULT_SKIP = 25
SOURCE_GUIDANCE = 3.5
TARGET_GUIDANCE = 7.5
MASK_THRESHOLD_RATIO = 3.0
# generate_mask defaults (DiffEdit, as diffusers' StableDiffusionDiffEditPipeline): 10 maps, strength 0.5, CFG 7.5.
MASK_NUM_MAPS = 10
MASK_ENCODE_STRENGTH = 0.5
MASK_GUIDANCE = 7.5
# diffusers DPMSolverMultistepScheduler `lower_order_final`: the last step is first order below 15 steps.
LOWER_ORDER_FINAL_BELOW = 15


def ddpm_edit_timesteps(steps: int = DEFAULT_STEPS, skip: float = DEFAULT_SKIP) -> list[int]:
    """The editing timesteps, descending: int(linspace(1000 − 10·skip − 1, 1, steps)); (50, 25) gives 749, 733, …, 1.

    skip is a percentage of the 1000 training steps left out at the noisy end (official `invert`).
    """
    start = NUM_TRAIN_TIMESTEPS - skip / 100 * NUM_TRAIN_TIMESTEPS - 1
    if not 0 <= skip < 100 or start < 1:
        raise ValueError(f"skip is {skip}, expected a percentage from 0 to 99.8 (of t left out at the noisy end)")
    if steps < 1:
        raise ValueError(f"steps is {steps}, expected at least 1")
    timesteps = np.linspace(start, 1, steps).astype(np.int64).tolist()
    if len(set(timesteps)) != steps:
        raise ValueError(f"{steps} steps do not fit between t={int(start)} and t=1 with skip {skip}: use fewer steps")
    return timesteps


def diffedit_timestep(steps: int = DEFAULT_STEPS, strength: float = MASK_ENCODE_STRENGTH) -> int:
    """The level the mask noises x0 to: the strength-`strength` start of a `steps`-step schedule (50, 0.5 → 500).

    As the official `generate_mask`: `set_timesteps(steps)` of the injecting scheduler (round(linspace(0, 999,
    steps+1)) reversed, last dropped), then img2img's `get_timesteps(steps, strength)[0]`.
    """
    if not 0 < strength <= 1 or steps < 1:
        raise ValueError(f"strength is {strength} and steps {steps}: expected 0 < strength <= 1 and steps >= 1")
    timesteps = np.linspace(0, NUM_TRAIN_TIMESTEPS - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    return int(timesteps[steps - min(int(steps * strength), steps)])


class SdeDpmSolver2M:
    """SDE-DPM-Solver++ (data prediction, 2nd-order multistep, midpoint) on the SD1.5 schedule, walking one trajectory.

    Equal to diffusers' `DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2,
    final_sigmas_type="sigma_min")` stepping through `timesteps` (descending): the last step lands on t=0's level ᾱ[0],
    as in LLMGA's injecting scheduler, which (unlike current diffusers) also keeps fp16 latents in fp16, as done here.
    With data prediction D = (x_t − σ_t·ε)/α_t, λ = log α − log σ and h = λ_next − λ_t:

        x_next = (σ_next/σ_t)·e^{−h}·x_t + α_next(1−e^{−2h})·(D0 + ½·D1) + σ_next·√(1−e^{−2h})·z,
        D1 = (h/h_0)·(D0 − D_previous step), h_0 = λ_t − λ_previous step

    D1 is dropped (first order) on the first step and, with lower_order_final, below 15 steps on the last one
    (diffusers' rule, which the official sampling follows and its inversion, `compute_noise_sde_dpm_pp_2nd`, does not).
    Call `step`, `solve_noise` or `mean_and_std` once per timestep, in order: the object keeps the previous D.
    Coefficients are computed in float64 from the float32 ᾱ and applied in the latent dtype.
    """

    def __init__(self, timesteps: Sequence[int], lower_order_final: bool = True) -> None:
        self.timesteps = [int(t) for t in timesteps]
        self.lower_order_final = lower_order_final
        self._alphas = sd15_alphas_cumprod().to(torch.float64)
        self._index = 0
        self._previous: torch.Tensor | None = None

    def _level(self, t: int) -> tuple[float, float, float]:
        """(α, σ, λ) at timestep t: α = √ᾱ_t, σ = √(1−ᾱ_t), λ = log α − log σ."""
        alpha_bar = float(self._alphas[t])
        alpha, sigma = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
        return alpha, sigma, math.log(alpha) - math.log(sigma)

    def mean_and_std(self, x_t: torch.Tensor, eps_value: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The deterministic part of this step and the std its noise is scaled by; advances to the next timestep.

        x_t, eps_value: [B,4,h,w] at the current timestep; returns ([B,4,h,w] in x_t's dtype, std).
        """
        i, count = self._index, len(self.timesteps)
        if i >= count:
            raise RuntimeError(f"all {count} steps are done: make a new SdeDpmSolver2M for another trajectory")
        alpha_t, sigma_t, lambda_t = self._level(self.timesteps[i])
        alpha_next, sigma_next, lambda_next = self._level(self.timesteps[i + 1] if i + 1 < count else 0)
        h = lambda_next - lambda_t
        data = (x_t - sigma_t * eps_value) / alpha_t
        decay = 1.0 - math.exp(-2.0 * h)
        mean = (sigma_next / sigma_t * math.exp(-h)) * x_t + (alpha_next * decay) * data
        first_order_final = self.lower_order_final and i == count - 1 and count < LOWER_ORDER_FINAL_BELOW
        if self._previous is not None and not first_order_final:
            r0 = (lambda_t - self._level(self.timesteps[i - 1])[2]) / h
            mean = mean + 0.5 * (alpha_next * decay) * ((1.0 / r0) * (data - self._previous))
        self._previous = data
        self._index += 1
        return mean, sigma_next * math.sqrt(decay)

    def step(self, x_t: torch.Tensor, eps_value: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample: x_next = mean + std·noise. All [B,4,h,w]; noise is the injected variance noise z."""
        mean, std = self.mean_and_std(x_t, eps_value)
        return mean + std * noise

    def solve_noise(
        self, x_t: torch.Tensor, eps_value: torch.Tensor, x_next: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Invert: the z with which `step` maps x_t to x_next, and x_next as `step` rebuilds it (rounding included).

        All [B,4,h,w]; returns (z, mean + std·z). Carry the rebuilt latent on, so sampling retraces it exactly.
        """
        mean, std = self.mean_and_std(x_t, eps_value)
        noise = (x_next - mean) / std
        return noise, mean + std * noise


@dataclass(frozen=True)
class DdpmInversion:
    """What `edit_friendly_inversion` returns.

    timesteps: the descending timesteps (`steps` of them), shared by sampling.
    latents: [steps+1, 1,4,h,w]; latents[0] ≈ x0 (as the last step rebuilds it), latents[k] is at level
      timesteps[steps−k], so latents[-1] (level timesteps[0]) is where sampling starts.
    noise_maps: [steps, 1,4,h,w] in sampling order: noise_maps[i] is the z injected at step i (timestep timesteps[i]).
    """

    timesteps: list[int]
    latents: torch.Tensor
    noise_maps: torch.Tensor


@dataclass(frozen=True)
class DdpmContexts:
    """The prompt contexts of each phase of `ddpm_inversion_edit`, each [1,T,C]: one T within a phase (it runs in one
    UNet batch), possibly another in each phase (the official pipeline encodes each phase its own way, see
    `llmga.edit.official`).

    mask_source, mask_target: DiffEdit's pair; inversion_source, inversion_uncond: the inversion's CFG pair;
    target, target_uncond: the sampling's CFG pair.
    """

    mask_source: torch.Tensor
    mask_target: torch.Tensor
    inversion_source: torch.Tensor
    inversion_uncond: torch.Tensor
    target: torch.Tensor
    target_uncond: torch.Tensor

    @classmethod
    def shared(cls, source: torch.Tensor, target: torch.Tensor, uncond: torch.Tensor) -> DdpmContexts:
        """One encoding for every phase: source, target and uncond [1,T,C] of one T."""
        return cls(source, target, source, uncond, target, uncond)

    def to(self, device: torch.device, dtype: torch.dtype) -> DdpmContexts:
        """Every context on `device` in `dtype`."""
        return DdpmContexts(*(getattr(self, field.name).to(device, dtype) for field in fields(self)))

    def check(self, x0: torch.Tensor) -> None:
        """Raise ValueError (naming the input) unless x0 is [1,C,h,w] and each phase's pair shares its [T,C]."""
        check_edit_inputs(x0, source_context=self.mask_source, target_context=self.mask_target)
        check_edit_inputs(x0, source_context=self.inversion_source, uncond_context=self.inversion_uncond)
        check_edit_inputs(x0, target_context=self.target, uncond_context=self.target_uncond)


def _randn(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise in like's dtype, drawn on the generator's device (CPU without one), moved to like's."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=like.dtype).to(like.device)


def _add_noise(x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
    """√ᾱ_t·x0 + √(1−ᾱ_t)·noise with ᾱ cast to the latent dtype first, as the schedulers' `add_noise`."""
    alpha_bar = sd15_alphas_cumprod().to(device=x0.device, dtype=x0.dtype)[t]
    return alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * noise


def _cfg_eps(eps: EpsFn, latents: torch.Tensor, t: int, uncond: torch.Tensor, cond: torch.Tensor, guidance: float,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """ε_u + mask·g·(ε_c − ε_u) from one eps call on [uncond, cond] (no mask: plain CFG). [1,4,h,w] -> [1,4,h,w]."""
    prediction = eps(torch.cat([latents, latents]), t, torch.cat([uncond, cond]))
    noise_uncond, noise_cond = prediction.to(latents.dtype).chunk(2)
    guidance_term = guidance * (noise_cond - noise_uncond)
    return noise_uncond + (guidance_term if mask is None else guidance_term * mask)


def threshold_difference_map(difference: torch.Tensor, threshold_ratio: float = MASK_THRESHOLD_RATIO) -> torch.Tensor:
    """DiffEdit's binarization: clamp at threshold_ratio × mean, divide by that, keep what is above 0.5.

    difference: [..., h, w] ≥ 0; returns 0/1 in its shape and dtype. An all-zero map (nothing differs) gives all ones,
    as the official 0/0 → NaN comparison does; sampling then is plain CFG, with no region singled out.
    """
    if threshold_ratio <= 0:
        raise ValueError(f"threshold_ratio is {threshold_ratio}, expected > 0 (the official default is 3.0)")
    clamp_magnitude = difference.mean() * threshold_ratio
    if clamp_magnitude == 0:
        return torch.ones_like(difference)
    normalized = difference.clamp(0, clamp_magnitude) / clamp_magnitude
    return (normalized > 0.5).to(difference.dtype)


@torch.no_grad()
def diffedit_mask(x0: torch.Tensor, source_context: torch.Tensor, target_context: torch.Tensor, eps: EpsFn, *,
                  num_maps: int = MASK_NUM_MAPS, encode_strength: float = MASK_ENCODE_STRENGTH,
                  guidance: float = MASK_GUIDANCE, threshold_ratio: float = MASK_THRESHOLD_RATIO,
                  steps: int = DEFAULT_STEPS, generator: torch.Generator | None = None,
                  x0_std: torch.Tensor | None = None) -> torch.Tensor:
    """Where the target prompt changes the noise prediction: a binary latent mask [1,1,h,w] (0/1 in x0's dtype).

    x0: [1,4,h,w] clean latent; contexts: [1,T,C], one T. x0 is noised `num_maps` times (one [num_maps,4,h,w] draw)
    to `diffedit_timestep(steps, encode_strength)`. x0_std: [1,4,h,w], the VAE posterior's std × its scaling factor;
    given, each map starts from its own posterior sample x0 + x0_std·n (one [num_maps,4,h,w] draw before the noise),
    as the official `prepare_image_latents` samples the posterior; None, every map starts from x0 (the mean).
    The mask is |ε̂_target − ε̂_source| with ε̂ = ε_u + g·(ε_c − ε_u), averaged over the maps and channels and
    binarized by `threshold_difference_map`. The unconditional prediction
    cancels in that difference (it is g·|ε_target − ε_source|), so one eps call on [source, target] × num_maps
    suffices where the official code runs 4 × num_maps rows; the official CFG arithmetic gives the same mask.
    """
    check_edit_inputs(x0, source_context=source_context, target_context=target_context)
    if num_maps < 1:
        raise ValueError(f"num_maps is {num_maps}, expected a positive number of noise draws")
    t = diffedit_timestep(steps, encode_strength)
    latents = x0.expand(num_maps, -1, -1, -1)
    if x0_std is not None:
        latents = latents + x0_std.to(x0.device, x0.dtype) * _randn(latents.shape, x0, generator)
    noisy = _add_noise(latents, _randn(latents.shape, x0, generator), t)
    context = torch.cat([c.expand(num_maps, -1, -1) for c in (source_context, target_context)])
    source, target = eps(torch.cat([noisy, noisy]), t, context).to(x0.dtype).chunk(2)
    difference = (guidance * (target - source)).abs().mean(dim=(0, 1), keepdim=True)
    return threshold_difference_map(difference, threshold_ratio)


@torch.no_grad()
def edit_friendly_inversion(x0: torch.Tensor, source_context: torch.Tensor, uncond_context: torch.Tensor, eps: EpsFn,
                            *, steps: int = DEFAULT_STEPS, skip: float = DEFAULT_SKIP,
                            guidance: float = SOURCE_GUIDANCE, generator: torch.Generator | None = None,
                            on_step: StepCallback | None = None, lower_order_final: bool = True) -> DdpmInversion:
    """Edit-friendly DDPM inversion of a clean latent: the x_t and the noise maps z_t that reproduce them.

    x0: [1,4,h,w]; contexts: [1,T,C], one T. Every x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·n_t with its own draw n_t (drawn from
    the smallest t up, one [1,4,h,w] draw each). Then, from the noisiest step down, ε̂ = ε_u + g·(ε_src − ε_u) (one eps
    call on [uncond, source] per step) and `SdeDpmSolver2M.solve_noise` give z_t with step(x_t, ε̂, z_t) = x_{t−1};
    the rebuilt x_{t−1} replaces the drawn one. on_step(done, steps) runs after each eps call. lower_order_final:
    the solver's rule for the last step below 15 steps (False: second order, as the official inversion solves it).
    """
    check_edit_inputs(x0, source_context=source_context, uncond_context=uncond_context)
    timesteps = ddpm_edit_timesteps(steps, skip)
    latents = [x0] + [_add_noise(x0, _randn(x0.shape, x0, generator), t) for t in reversed(timesteps)]
    solver = SdeDpmSolver2M(timesteps, lower_order_final)
    noise_maps = []
    for i, t in enumerate(timesteps):
        k = steps - i
        noise = _cfg_eps(eps, latents[k], t, uncond_context, source_context, guidance)
        z, latents[k - 1] = solver.solve_noise(latents[k], noise, latents[k - 1])
        noise_maps.append(z)
        if on_step is not None:
            on_step(i + 1, steps)
    return DdpmInversion(timesteps, torch.stack(latents), torch.stack(noise_maps))


@torch.no_grad()
def ddpm_edit_sample(x_T: torch.Tensor, noise_maps: torch.Tensor, target_context: torch.Tensor,
                     uncond_context: torch.Tensor, eps: EpsFn, *, timesteps: Sequence[int],
                     guidance: float = TARGET_GUIDANCE, mask: torch.Tensor | None = None,
                     on_step: StepCallback | None = None) -> torch.Tensor:
    """Sample from x_T with the target prompt, injecting the stored noise maps: the edited x0 latent [1,4,h,w].

    x_T: [1,4,h,w] (`DdpmInversion.latents[-1]`); noise_maps: [steps,1,4,h,w] in sampling order; timesteps: the
    inversion's (descending, `steps` of them); contexts: [1,T,C], one T. Per step one eps call on [uncond, target]:
    ε̂ = ε_u + mask·g·(ε_tar − ε_u), so outside the mask only the unconditional prediction drives the update
    (mask None: plain CFG). mask: [1,1,h,w] in [0, 1] (binary from `diffedit_mask`). on_step(done, steps) after each.
    """
    check_edit_inputs(x_T, target_context=target_context, uncond_context=uncond_context)
    steps = len(timesteps)
    if tuple(noise_maps.shape) != (steps, *x_T.shape):
        raise ValueError(
            f"noise_maps has shape {tuple(noise_maps.shape)}, expected {(steps, *x_T.shape)} for {steps} timesteps:"
            " pass the noise maps and timesteps of the same inversion"
        )
    if mask is not None:
        if tuple(mask.shape) != (1, 1, *x_T.shape[-2:]):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(1, 1, *x_T.shape[-2:])} (latent size)")
        mask = mask.to(device=x_T.device, dtype=x_T.dtype)
    solver = SdeDpmSolver2M(timesteps)
    latents = x_T
    for i, t in enumerate(timesteps):
        noise = _cfg_eps(eps, latents, t, uncond_context, target_context, guidance, mask)
        latents = solver.step(latents, noise, noise_maps[i])
        if on_step is not None:
            on_step(i + 1, steps)
    return latents


def _shifted(on_step: StepCallback | None, offset: int, total: int) -> Callable[[int, int], None]:
    """A callback for one phase that reports progress over all phases: on_step(offset + done, total)."""

    def report(done: int, _: int) -> None:
        if on_step is not None:
            on_step(offset + done, total)

    return report


def ddpm_inversion_edit(x0: torch.Tensor, contexts: DdpmContexts, eps: EpsFn, *, steps: int = DEFAULT_STEPS,
                        skip: float = DEFAULT_SKIP, source_guidance: float = SOURCE_GUIDANCE,
                        target_guidance: float = TARGET_GUIDANCE, mask_threshold_ratio: float = MASK_THRESHOLD_RATIO,
                        use_mask: bool = True, generator: torch.Generator | None = None,
                        on_step: StepCallback | None = None, x0_std: torch.Tensor | None = None,
                        official_last_step: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """LLMGA's editing method end to end: returns (edited x0 [1,4,h,w], mask [1,1,h,w]) in x0's dtype.

    x0: [1,4,h,w] clean latent (VAE mode × 0.18215 in the official code); contexts: each phase's prompts
    (`DdpmContexts`). Runs `diffedit_mask` (if use_mask, from the posterior samples of x0_std when given; else the
    mask is all ones and sampling is plain CFG), then `edit_friendly_inversion` with the source prompt, then
    `ddpm_edit_sample` with the target prompt, drawing all noise from `generator` in that order. official_last_step:
    below 15 steps the inversion solves the last step at second order while sampling takes it at first order, as the
    official pipeline does (so the picture is not rebuilt exactly); False: both at first order. on_step(done, total)
    runs after every eps call, total = 2·steps (+1 for the mask); an exception raised from it stops the edit with
    nothing changed.
    """
    contexts.check(x0)
    ddpm_edit_timesteps(steps, skip)  # reject bad settings before the first eps call
    offset = 1 if use_mask else 0
    total = offset + 2 * steps
    mask = None
    if use_mask:
        mask = diffedit_mask(
            x0, contexts.mask_source, contexts.mask_target, eps,
            threshold_ratio=mask_threshold_ratio, generator=generator, x0_std=x0_std,
        )
        if on_step is not None:
            on_step(1, total)
    inversion = edit_friendly_inversion(
        x0, contexts.inversion_source, contexts.inversion_uncond, eps, steps=steps, skip=skip,
        guidance=source_guidance, generator=generator, on_step=_shifted(on_step, offset, total),
        lower_order_final=not official_last_step,
    )
    edited = ddpm_edit_sample(
        inversion.latents[-1], inversion.noise_maps, contexts.target, contexts.target_uncond, eps,
        timesteps=inversion.timesteps, guidance=target_guidance, mask=mask,
        on_step=_shifted(on_step, offset + steps, total),
    )
    return edited, (torch.ones_like(x0[:, :1]) if mask is None else mask)
