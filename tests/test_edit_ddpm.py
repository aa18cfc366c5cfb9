"""LLMGA's editing method (llmga.edit.ddpm): DDPM noise maps, SDE-DPM-Solver++(2M), DiffEdit mask, masked CFG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from llmga.edit.ddpm import (
    DdpmContexts,
    SdeDpmSolver2M,
    ddpm_edit_sample,
    ddpm_edit_timesteps,
    ddpm_inversion_edit,
    diffedit_mask,
    diffedit_timestep,
    edit_friendly_inversion,
    threshold_difference_map,
)
from llmga.edit.inversion import sd15_alphas_cumprod

CONTEXT_SHAPE = (1, 5, 8)


class LocalEps:
    """eps = √(1−ᾱ_t)·(x + 0.1·tanh(channel mix of x) + 0.3·window·(projected context mean)); records (batch, t).

    Nonlinear in x, pointwise in space (each pixel sees only itself), and the prompt acts only inside `window`, so
    source and target predictions differ exactly there.
    """

    def __init__(self, dtype: torch.dtype, window: torch.Tensor, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.mix = (0.3 * torch.randn(4, 4, generator=g)).to(dtype)
        self.project = (0.5 * torch.randn(CONTEXT_SHAPE[-1], 4, generator=g)).to(dtype)
        self.window = window.to(dtype)
        self.alphas_cumprod = sd15_alphas_cumprod().to(torch.float64)
        self.calls: list[tuple[int, int]] = []

    def __call__(self, latents: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
        self.calls.append((latents.shape[0], int(t)))
        mixed = torch.einsum("oc,bchw->bohw", self.mix, latents)
        prompt = (context.mean(dim=1) @ self.project)[:, :, None, None] * self.window
        noise_scale = float(1.0 - self.alphas_cumprod[t]) ** 0.5
        return noise_scale * (latents + 0.1 * torch.tanh(mixed) + 0.3 * prompt)


def window_of(height: int, width: int, rows: slice, cols: slice) -> torch.Tensor:
    window = torch.zeros(1, 1, height, width)
    window[..., rows, cols] = 1
    return window


def setup(dtype: torch.dtype, height: int = 6, width: int = 6, seed: int = 1):
    """A latent, three contexts and a LocalEps whose prompt window is the top-left quarter-ish block."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(1, 4, height, width, generator=g).to(dtype)
    source, target, uncond = (torch.randn(CONTEXT_SHAPE, generator=g).to(dtype) for _ in range(3))
    window = window_of(height, width, slice(0, height // 2), slice(0, width // 2))
    return x0, source, target, uncond, LocalEps(dtype, window)


@pytest.mark.parametrize(("steps", "skip"), [(50, 25), (30, 15), (10, 0), (20, 40.5)])
def test_timesteps_follow_official_formula(steps: int, skip: float) -> None:
    expected = np.linspace(1000 - skip / 100 * 1000 - 1, 1, steps).astype(np.int64).tolist()
    assert ddpm_edit_timesteps(steps, skip) == expected


def test_default_timesteps_run_749_to_1() -> None:
    timesteps = ddpm_edit_timesteps()
    assert len(timesteps) == 50 and timesteps[0] == 749 and timesteps[-1] == 1
    assert timesteps[:4] == [749, 733, 718, 703]


def test_mask_level_is_the_strength_half_start_of_50_steps() -> None:
    assert diffedit_timestep(50, 0.5) == 500
    assert diffedit_timestep(50, 1.0) == 999


@pytest.mark.parametrize("skip", [-1, 100, 99.9])
def test_skip_out_of_range_is_rejected(skip: float) -> None:
    with pytest.raises(ValueError, match="skip is"):
        ddpm_edit_timesteps(50, skip)


def test_more_steps_than_levels_are_rejected() -> None:
    with pytest.raises(ValueError, match="use fewer steps"):
        ddpm_edit_timesteps(800, 25)


@pytest.mark.parametrize(("steps", "lower_order_final"), [(50, True), (10, True), (10, False)])
def test_solver_matches_diffusers_sde_dpmsolver_pp_2m(steps: int, lower_order_final: bool) -> None:
    """lower_order_final False: the last step at second order, as the official inversion solves it at any count."""
    timesteps = ddpm_edit_timesteps(steps, 25)
    scheduler = DPMSolverMultistepScheduler(
        lower_order_final=lower_order_final,
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        algorithm_type="sde-dpmsolver++",
        solver_order=2,
        final_sigmas_type="sigma_min",  # the last step lands on ᾱ[0], like the official injecting scheduler
    )
    # diffusers >= 0.2x keeps sigmas beside timesteps, so custom timesteps go through set_timesteps rather than by
    # assigning `scheduler.timesteps` as the official (older) injecting scheduler is driven.
    scheduler.set_timesteps(timesteps=timesteps)
    _, _, _, context, eps = setup(torch.float32)
    g = torch.Generator().manual_seed(5)
    start = torch.randn(1, 4, 6, 6, generator=g)
    noises = torch.randn(steps, 1, 4, 6, 6, generator=g)
    solver, ours, theirs = SdeDpmSolver2M(timesteps, lower_order_final), start, start
    for i, t in enumerate(timesteps):
        theirs = scheduler.step(eps(theirs, t, context), t, theirs, variance_noise=noises[i]).prev_sample
        ours = solver.step(ours, eps(ours, t, context), noises[i])
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_stored_noise_maps_reconstruct_the_input(dtype: torch.dtype, atol: float) -> None:
    x0, source, _, uncond, eps = setup(dtype)
    generator = torch.Generator().manual_seed(0)
    inversion = edit_friendly_inversion(x0, source, uncond, eps, guidance=3.5, generator=generator)
    assert inversion.latents.shape == (51, 1, 4, 6, 6) and inversion.noise_maps.shape == (50, 1, 4, 6, 6)
    assert inversion.timesteps == ddpm_edit_timesteps(50, 25)
    reconstruction = ddpm_edit_sample(
        inversion.latents[-1], inversion.noise_maps, source, uncond, eps, timesteps=inversion.timesteps, guidance=3.5
    )
    assert torch.equal(reconstruction, inversion.latents[0])  # sampling retraces the rebuilt trajectory exactly
    torch.testing.assert_close(reconstruction, x0, rtol=0, atol=atol)


@pytest.mark.parametrize(("steps", "exact"), [(10, False), (14, False), (15, True), (20, True)])
def test_official_last_step_orders_rebuild_the_input_only_from_15_steps(steps: int, exact: bool) -> None:
    """The official inversion solves the last step at second order; its sampling takes it at first order below 15
    steps (lower_order_final), so there the official edit does not give the input back. The default both ways first."""
    x0, source, _, uncond, eps = setup(torch.float64)
    contexts = DdpmContexts.shared(source, source, uncond)

    def edit(official: bool) -> torch.Tensor:
        return ddpm_inversion_edit(x0, contexts, eps, steps=steps, source_guidance=7.5, use_mask=False,
                                   official_last_step=official, generator=torch.Generator().manual_seed(0))[0]

    torch.testing.assert_close(edit(False), x0, rtol=0, atol=1e-10)
    official = edit(True)
    assert torch.allclose(official, x0, rtol=0, atol=1e-10) == exact
    assert torch.equal(official, edit(False)) == exact


def test_full_edit_with_target_equal_to_source_returns_the_input() -> None:
    x0, source, _, uncond, eps = setup(torch.float64)
    edited, mask = ddpm_inversion_edit(
        x0, DdpmContexts.shared(source, source, uncond), eps, source_guidance=7.5, target_guidance=7.5,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(mask, torch.ones(1, 1, 6, 6, dtype=torch.float64))  # nothing differs: the official all-ones
    torch.testing.assert_close(edited, x0, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("height", "width", "rows", "cols"), [(8, 8, slice(2, 6), slice(1, 4)), (6, 10, slice(1, 4), slice(6, 9))]
)
def test_mask_covers_where_the_prompts_change_eps(height: int, width: int, rows: slice, cols: slice) -> None:
    x0, source, target, uncond, _ = setup(torch.float32, height, width)
    window = window_of(height, width, rows, cols)
    eps = LocalEps(torch.float32, window)
    mask = diffedit_mask(x0, source, target, eps, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (1, 1, height, width) and mask.dtype == torch.float32
    assert torch.equal(mask, window)
    assert eps.calls == [(20, 500)]  # one call: [source, target] × 10 maps at the strength-0.5 level


def test_mask_equals_the_official_cfg_arithmetic_with_the_unconditional_rows() -> None:
    """Official: ε̂ = ε_u + 7.5·(ε_c − ε_u) for both prompts, |ε̂_tar − ε̂_src|; the uncond cancels, the mask is equal."""
    x0, source, target, uncond, _ = setup(torch.float64, 8, 8)
    eps = LocalEps(torch.float64, torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(3)))
    mask = diffedit_mask(x0, source, target, eps, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(10, 4, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    alpha = float(sd15_alphas_cumprod()[500])
    noisy = alpha**0.5 * x0 + (1 - alpha) ** 0.5 * noise
    u, c_src, c_tar = (eps(noisy, 500, c.expand(10, -1, -1)) for c in (uncond, source, target))
    official = ((u + 7.5 * (c_tar - u)) - (u + 7.5 * (c_src - u))).abs().mean(dim=(0, 1), keepdim=True)
    assert 0 < mask.sum() < 64
    assert torch.equal(mask, threshold_difference_map(official, 3.0))


def test_mask_from_posterior_samples_draws_them_before_the_noise() -> None:
    """Official: the VAE posterior is sampled for each of the 10 maps (x0 + std·n), then the noise is drawn."""
    x0, source, target, _, _ = setup(torch.float64, 8, 8)
    project = torch.randn(CONTEXT_SHAPE[-1], 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    window = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64) ** 3

    def eps(latents: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
        """The prompt's effect depends on the latent (so the mask does too), more in some places than others."""
        return latents + window * torch.tanh(3 * latents * (context.mean(dim=1) @ project)[:, :, None, None])

    std = 3 * torch.rand(1, 4, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mask = diffedit_mask(x0, source, target, eps, generator=torch.Generator().manual_seed(4), x0_std=std)
    g = torch.Generator().manual_seed(4)
    sampled = x0 + std * torch.randn(10, 4, 8, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(10, 4, 8, 8, generator=g, dtype=torch.float64)
    alpha = float(sd15_alphas_cumprod()[500])
    noisy = alpha**0.5 * sampled + (1 - alpha) ** 0.5 * noise
    c_src, c_tar = (eps(noisy, 500, c.expand(10, -1, -1)) for c in (source, target))
    expected = threshold_difference_map((7.5 * (c_tar - c_src)).abs().mean(dim=(0, 1), keepdim=True), 3.0)
    assert 0 < mask.sum() < 64 and torch.equal(mask, expected)
    assert not torch.equal(mask, diffedit_mask(x0, source, target, eps, generator=torch.Generator().manual_seed(4)))


def test_each_phase_runs_with_its_own_contexts() -> None:
    """The official pipeline encodes the mask's, the inversion's and the sampling's prompts to different lengths."""
    x0, *_, eps = setup(torch.float32)
    g = torch.Generator().manual_seed(7)
    lengths = {"mask": 5, "inversion": 7, "sampling": 9}
    mask_pair, inversion_pair, sampling_pair = (
        [torch.randn(1, t, CONTEXT_SHAPE[-1], generator=g) for _ in range(2)] for t in lengths.values())
    seen: list[int] = []

    def recording(latents: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
        seen.append(context.shape[1])
        return eps(latents, t, context)

    contexts = DdpmContexts(*mask_pair, *inversion_pair, *sampling_pair)
    ddpm_inversion_edit(x0, contexts, recording, steps=6, generator=torch.Generator().manual_seed(0))
    assert seen == [5] + [7] * 6 + [9] * 6
    with pytest.raises(ValueError, match="contexts differ"):
        ddpm_inversion_edit(x0, DdpmContexts(*mask_pair, inversion_pair[0], sampling_pair[1], *sampling_pair), eps)


def test_mask_without_guidance_batches_only_the_two_prompts() -> None:
    x0, source, target, uncond, eps = setup(torch.float32)
    mask = diffedit_mask(x0, source, target, eps, guidance=1.0, num_maps=4)
    assert eps.calls == [(8, 500)]
    assert torch.equal(mask, eps.window)


def test_large_threshold_ratio_empties_the_mask() -> None:
    # The window is 9/36 of the map and the difference is flat inside it, so it survives only while 0.5·ratio·9/36 < 1.
    x0, source, target, uncond, eps = setup(torch.float32)
    assert torch.equal(diffedit_mask(x0, source, target, eps, threshold_ratio=7.5), eps.window)
    assert not diffedit_mask(x0, source, target, eps, threshold_ratio=8.5).any()


def test_threshold_clamps_at_ratio_times_mean() -> None:
    difference = torch.tensor([[0.0, 1.0, 2.0, 9.0]])  # mean 3
    assert threshold_difference_map(difference, 1.0).tolist() == [[0.0, 0.0, 1.0, 1.0]]  # clamp 3: 0, ⅓, ⅔, 1
    assert threshold_difference_map(difference, 3.0).tolist() == [[0.0, 0.0, 0.0, 1.0]]  # clamp 9: 0, ⅑, 2/9, 1
    with pytest.raises(ValueError, match="threshold_ratio"):
        threshold_difference_map(difference, 0.0)


def test_outside_the_mask_only_the_unconditional_prediction_drives_sampling() -> None:
    x0, source, target, uncond, eps = setup(torch.float64)
    inversion = edit_friendly_inversion(x0, source, uncond, eps, steps=20, generator=torch.Generator().manual_seed(0))
    start, maps, timesteps = inversion.latents[-1], inversion.noise_maps, inversion.timesteps
    mask = window_of(6, 6, slice(1, 5), slice(2, 6)).to(torch.float64)
    gated = ddpm_edit_sample(start, maps, target, uncond, eps, timesteps=timesteps, guidance=7.5, mask=mask)
    full = ddpm_edit_sample(start, maps, target, uncond, eps, timesteps=timesteps, guidance=7.5)
    unconditional = ddpm_edit_sample(start, maps, target, uncond, eps, timesteps=timesteps, guidance=0.0)
    # LocalEps and the solver are pointwise, so each pixel follows its own guidance exactly.
    assert torch.equal(gated, torch.where(mask.bool(), full, unconditional))
    assert not torch.equal(full, unconditional)


def test_one_eps_call_per_step_and_progress_over_all_calls() -> None:
    x0, source, target, uncond, eps = setup(torch.float32)
    progress: list[tuple[int, int]] = []
    ddpm_inversion_edit(x0, DdpmContexts.shared(source, target, uncond), eps, steps=12,
                        on_step=lambda *p: progress.append(p))
    timesteps = ddpm_edit_timesteps(12, 25)
    assert eps.calls == [(20, 500)] + [(2, t) for t in timesteps] * 2
    assert progress == [(done, 25) for done in range(1, 26)]


def test_without_mask_sampling_is_plain_cfg_and_skips_the_mask_call() -> None:
    x0, source, target, uncond, eps = setup(torch.float32)
    progress: list[tuple[int, int]] = []
    edited, mask = ddpm_inversion_edit(
        x0, DdpmContexts.shared(source, target, uncond), eps, steps=12, use_mask=False,
        generator=torch.Generator().manual_seed(0), on_step=lambda *p: progress.append(p),
    )
    assert torch.equal(mask, torch.ones(1, 1, 6, 6))
    assert progress == [(done, 24) for done in range(1, 25)] and len(eps.calls) == 24
    inversion = edit_friendly_inversion(x0, source, uncond, eps, steps=12, generator=torch.Generator().manual_seed(0))
    expected = ddpm_edit_sample(
        inversion.latents[-1], inversion.noise_maps, target, uncond, eps, timesteps=inversion.timesteps
    )
    assert torch.equal(edited, expected)


def test_seeded_generator_makes_edits_deterministic() -> None:
    x0, source, target, uncond, eps = setup(torch.float32)

    def edit(seed: int) -> torch.Tensor:
        return ddpm_inversion_edit(x0, DdpmContexts.shared(source, target, uncond), eps, steps=12,
                                   generator=torch.Generator().manual_seed(seed))[0]

    assert torch.equal(edit(3), edit(3))
    assert not torch.equal(edit(3), edit(4))


def test_cancel_from_on_step_leaves_inputs_untouched_and_no_state_behind() -> None:
    x0, source, target, uncond, eps = setup(torch.float32)
    kept = x0.clone()

    def cancel(done: int, total: int) -> None:
        if done == 20:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        ddpm_inversion_edit(x0, DdpmContexts.shared(source, target, uncond), eps, steps=12,
                            generator=torch.Generator().manual_seed(0), on_step=cancel)
    assert len(eps.calls) == 20 and torch.equal(x0, kept)
    contexts = DdpmContexts.shared(source, target, uncond)
    again = ddpm_inversion_edit(x0, contexts, eps, steps=12, generator=torch.Generator().manual_seed(0))
    fresh = ddpm_inversion_edit(x0, contexts, LocalEps(torch.float32, eps.window), steps=12,
                                generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], fresh[0]) and torch.equal(again[1], fresh[1])


def test_works_in_the_latent_dtype() -> None:
    x0, source, target, uncond, eps = setup(torch.bfloat16)
    edited, mask = ddpm_inversion_edit(x0, DdpmContexts.shared(source, target, uncond), eps, steps=12,
                                       generator=torch.Generator().manual_seed(0))
    assert edited.dtype == mask.dtype == torch.bfloat16 and torch.isfinite(edited).all()


def test_contexts_of_different_length_are_rejected() -> None:
    x0, source, target, uncond, eps = setup(torch.float32)
    with pytest.raises(ValueError, match="contexts differ"):
        ddpm_inversion_edit(x0, DdpmContexts.shared(source, target[:, :3], uncond), eps, steps=12)
    with pytest.raises(ValueError, match="contexts differ"):
        edit_friendly_inversion(x0, source, uncond[:, :3], eps, steps=12)
    assert eps.calls == []


def test_batch_other_than_one_is_rejected() -> None:
    x0, source, target, uncond, eps = setup(torch.float32)
    with pytest.raises(ValueError, match="one image at a time"):
        ddpm_inversion_edit(torch.cat([x0, x0]), DdpmContexts.shared(source, target, uncond), eps, steps=12)
    with pytest.raises(ValueError, match="expected \\[1,T,C\\]"):
        ddpm_inversion_edit(x0, DdpmContexts.shared(torch.cat([source, source]), target, uncond), eps, steps=12)


def test_skip_out_of_range_is_rejected_before_any_eps_call() -> None:
    x0, source, target, uncond, eps = setup(torch.float32)
    with pytest.raises(ValueError, match="skip is"):
        ddpm_inversion_edit(x0, DdpmContexts.shared(source, target, uncond), eps, skip=100)
    assert eps.calls == []


def test_noise_maps_must_match_the_timesteps() -> None:
    x0, _, target, uncond, eps = setup(torch.float32)
    with pytest.raises(ValueError, match="noise_maps has shape"):
        ddpm_edit_sample(x0, torch.zeros(5, 1, 4, 6, 6), target, uncond, eps, timesteps=ddpm_edit_timesteps(6, 25))
