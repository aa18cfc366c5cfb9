"""Deterministic DDIM inversion and Direct Inversion ("PnP Inversion", Ju et al., ICLR'24) on the SD1.5 schedule.

Everything here is written against a plain noise-prediction callable, so the same code serves diffusers, ComfyUI
and tests:

    eps(latents: [B,4,h,w], t: int, context: [B,T,C]) -> [B,4,h,w]

Timesteps and ᾱ follow diffusers' `DDIMScheduler` for SD1.5 (scaled_linear betas 0.00085→0.012 over 1000 train
steps, "leading" spacing, `steps_offset=1`, `set_alpha_to_one=False`, eta 0), computed here without diffusers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .attention import AttentionControl

EpsFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]
"""eps(latents [B,4,h,w], t, context [B,T,C]) -> predicted noise [B,4,h,w]."""

StepCallback = Callable[[int, int], None]
"""on_step(done, total): called after every UNet call of a pass (progress; raise from it to cancel)."""

# SD1.5 `scheduler_config.json`: scaled_linear, beta 0.00085 -> 0.012, 1000 train steps, steps_offset 1.
NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
STEPS_OFFSET = 1


def sd15_alphas_cumprod() -> torch.Tensor:
    """ᾱ_t for t = 0..999: [1000] float32, computed in float32 exactly as diffusers does for SD1.5."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(steps: int) -> list[int]:
    """DDIM sampling timesteps, descending (50 steps: 981, 961, ..., 1), as diffusers' "leading" spacing."""
    if not 1 <= steps <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"steps is {steps}, expected 1..{NUM_TRAIN_TIMESTEPS}: pick a step count in that range")
    ratio = NUM_TRAIN_TIMESTEPS // steps
    return [i * ratio + STEPS_OFFSET for i in reversed(range(steps))]


def previous_timestep(t: int, steps: int) -> int:
    """The timestep one DDIM step below t; negative below the first one (that level uses ᾱ[0], see `alpha_at`)."""
    return t - NUM_TRAIN_TIMESTEPS // steps


def alpha_at(t: int, alphas_cumprod: torch.Tensor | None = None) -> float:
    """ᾱ_t; for t < 0 (the clean end) ᾱ[0], because SD1.5 uses `set_alpha_to_one=False`."""
    alphas = sd15_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    return float(alphas[max(t, 0)])


def ddim_sample_step(
    x_t: torch.Tensor, t: int, t_prev: int, eps_value: torch.Tensor, alphas_cumprod: torch.Tensor | None = None
) -> torch.Tensor:
    """Move a latent from level t to level t_prev along the deterministic DDIM (eta 0) path for a given eps.

    The same formula runs both ways: t_prev < t samples (denoises), t_prev > t inverts (adds noise):
    x_prev = √ᾱ_prev · (x_t − √(1−ᾱ_t)·eps)/√ᾱ_t + √(1−ᾱ_prev)·eps. A negative level means ᾱ[0].
    x_t, eps_value: [B,4,h,w]; returns [B,4,h,w] in x_t's dtype.
    """
    alphas = sd15_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    a_t, a_prev = alpha_at(t, alphas), alpha_at(t_prev, alphas)
    x0_pred = (x_t - (1.0 - a_t) ** 0.5 * eps_value) / a_t**0.5
    return a_prev**0.5 * x0_pred + (1.0 - a_prev) ** 0.5 * eps_value


def _guided_eps(
    eps: EpsFn, latents: torch.Tensor, t: int, context: torch.Tensor, uncond: torch.Tensor | None, guidance: float
) -> torch.Tensor:
    """eps for [B] latents; with guidance != 1, classifier-free guidance from one call on [uncond; cond]."""
    if guidance == 1.0:
        return eps(latents, t, context)
    if uncond is None:
        raise ValueError(f"guidance is {guidance} but uncond is None: pass the empty-prompt context or use 1.0")
    noise_uncond, noise_cond = eps(torch.cat([latents, latents]), t, torch.cat([uncond, context])).chunk(2)
    return noise_uncond + guidance * (noise_cond - noise_uncond)


def _ddim_walk(x: torch.Tensor, context: torch.Tensor, eps: EpsFn, steps: int, guidance: float,
               uncond: torch.Tensor | None, *, upward: bool, on_step: StepCallback | None = None) -> list[torch.Tensor]:
    """The latents the deterministic DDIM path visits from x, x first: up from x_0 to level T (`upward`, inversion)
    or down from level T to x_0 (sampling); steps + 1 latents [B,4,h,w]. Each step evaluates eps at the upper of
    its two levels, t. on_step(done, steps) runs after each step."""
    alphas = sd15_alphas_cumprod()
    timesteps = ddim_timesteps(steps)
    latents = [x]
    for i, t in enumerate(reversed(timesteps) if upward else timesteps):
        noise = _guided_eps(eps, latents[-1], t, context, uncond, guidance)
        lower = previous_timestep(t, steps)
        levels = (lower, t) if upward else (t, lower)
        latents.append(ddim_sample_step(latents[-1], *levels, noise, alphas))
        if on_step is not None:
            on_step(i + 1, steps)
    return latents


def ddim_inversion(x0_latent: torch.Tensor, context: torch.Tensor, eps: EpsFn, steps: int, guidance: float = 1.0,
                   uncond: torch.Tensor | None = None, on_step: StepCallback | None = None) -> list[torch.Tensor]:
    """Invert a clean latent along the DDIM path: returns [x_0, x_1, ..., x_T] (steps + 1 latents, [B,4,h,w] each).

    Approximation (as PnPInversion and prompt-to-prompt): the step from level t_prev up to level t uses
    eps(x_{t_prev}, t, context), the noise predicted at the *current* latent with the *next* timestep, in place of
    the unknown eps(x_t, t). x_0 sits at level ᾱ[0]. PnPInversion's default is guidance 1 (conditional only);
    other values apply CFG with `uncond` ([B,T,C]) during inversion (its ablation variant).
    on_step(done, steps) runs after each step.
    """
    return _ddim_walk(x0_latent, context, eps, steps, guidance, uncond, upward=True, on_step=on_step)


def ddim_sample(x_t: torch.Tensor, context: torch.Tensor, eps: EpsFn, steps: int, guidance: float = 1.0,
                uncond: torch.Tensor | None = None) -> torch.Tensor:
    """Plain deterministic DDIM sampling from level T down to x_0: x_t [B,4,h,w] -> [B,4,h,w]."""
    return _ddim_walk(x_t, context, eps, steps, guidance, uncond, upward=False)[-1]


def check_edit_inputs(x0: torch.Tensor, **contexts: torch.Tensor) -> None:
    """x0 must be [1,C,h,w]; the contexts (by name) [1,T,C] with one T and C, since they share UNet batches.
    Raises ValueError naming the input that is off."""
    if x0.ndim != 4 or x0.shape[0] != 1:
        raise ValueError(f"latent has shape {tuple(x0.shape)}, expected [1,4,h,w]: edit one image at a time")
    for name, context in contexts.items():
        if context.ndim != 3 or context.shape[0] != 1:
            raise ValueError(f"{name} has shape {tuple(context.shape)}, expected [1,T,C]: pass one encoded prompt")
    shapes = {name: tuple(context.shape[1:]) for name, context in contexts.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(
            f"contexts differ in [T,C]: {shapes}; they run through the UNet in one batch, so encode them to the same"
            " length (pad the shorter prompt, e.g. the negative one, with its end token)"
        )


def direct_inversion_edit(
    x0: torch.Tensor,
    source_context: torch.Tensor,
    target_context: torch.Tensor,
    uncond_context: torch.Tensor,
    eps: EpsFn,
    steps: int,
    guidance: float,
    control: AttentionControl | None = None,
    on_step: StepCallback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edit a latent with Direct Inversion: returns (edited_x0, source_x0), each [1,4,h,w].

    x0: [1,4,h,w] clean latent (VAE mean × 0.18215); contexts: [1,T,C] each, same T. Steps follow PnPInversion:
    DDIM inversion with the source prompt (guidance 1) gives x*_0..x*_T; both branches start at x*_T. The target
    branch is sampled with CFG `guidance`; after each step the source branch gets offset_t = x*_{t-1} − x^src_{t-1},
    which puts it back on the inversion trajectory, so it *is* x*_{t-1}; the target branch gets no offset.

    Because the offset cancels the source's own update exactly, the source branch needs no CFG: its unconditional
    row would only feed a latent that the offset overwrites. Each step is therefore one eps call on the batch
    [uncond at the target latent, source at x*_t, target at the target latent] — the conditional rows last, the
    layout P2P attention control expects (`llmga.edit.attention`) — three rows where PnPInversion runs four, with
    the same attention maps and the same result. PnPInversion measures its offsets in a separate pass with the
    source row also at x*_t; since attention control never rewrites source rows, that pass sees the same source
    eps, so this fused form equals it (checked against the two-pass form in the tests).

    control: a Prompt-to-Prompt controller (`llmga.edit.attention.AttentionControl`). It is active only during the
    editing pass (the inversion pass calls the same `eps` with it inactive); `begin_step(i)` precedes each
    step's UNet call, whose attention layers it rewrites through the binding `eps` was built with, and
    `step_callback(i, t, latents [2,4,h,w])` (LocalBlend) follows each step's update and offset.
    on_step(done, 2·steps) runs after every UNet call of both passes (progress; raise from it to cancel).
    """
    check_edit_inputs(x0, source_context=source_context, target_context=target_context,
                      uncond_context=uncond_context)
    alphas = sd15_alphas_cumprod()
    total = 2 * steps

    def inversion_progress(done: int, _: int) -> None:
        if on_step is not None:
            on_step(done, total)

    if control is not None:
        control.end_edit()
    trajectory = ddim_inversion(x0, source_context, eps, steps, on_step=inversion_progress)
    batch_context = torch.cat([uncond_context, source_context, target_context])
    latents = torch.cat([trajectory[-1], trajectory[-1]])
    if control is not None:
        control.begin_edit(steps, (x0.shape[-2], x0.shape[-1]))
    try:
        for i, t in enumerate(ddim_timesteps(steps)):
            if control is not None:
                control.begin_step(i)
            source, target = latents[:1], latents[1:]
            noise_uncond, _, noise_target = eps(torch.cat([target, source, target]), t, batch_context).chunk(3)
            noise = noise_uncond + guidance * (noise_target - noise_uncond)
            target = ddim_sample_step(target, t, previous_timestep(t, steps), noise, alphas)
            latents = torch.cat([trajectory[steps - 1 - i], target])
            if control is not None:
                latents = control.step_callback(i, t, latents)
            if on_step is not None:
                on_step(steps + i + 1, total)
    finally:
        if control is not None:
            control.end_edit()
    return latents[1:], latents[:1]
