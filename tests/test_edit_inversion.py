"""DDIM inversion and Direct Inversion (llmga.edit.inversion) against a tiny deterministic eps and diffusers' DDIM."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from llmga.edit.attention import AttentionControl
from llmga.edit.inversion import (
    alpha_at,
    ddim_inversion,
    ddim_sample,
    ddim_sample_step,
    ddim_timesteps,
    direct_inversion_edit,
    previous_timestep,
    sd15_alphas_cumprod,
)

CONTEXT_SHAPE = (1, 5, 8)
LATENT_SHAPE = (1, 4, 6, 6)


class ToyEps:
    """eps = √(1−ᾱ_t)·(x + 0.1·tanh(channel mix of x + projected context mean)); records each call's (batch, t).

    √(1−ᾱ_t)·x is the exact noise prediction for unit-Gaussian data, so the DDIM path stays SD-like; the tanh term
    makes eps nonlinear in x and dependent on the prompt.
    """

    def __init__(self, dtype: torch.dtype, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.mix = (0.3 * torch.randn(4, 4, generator=g)).to(dtype)
        self.project = (0.5 * torch.randn(CONTEXT_SHAPE[-1], 4, generator=g)).to(dtype)
        self.alphas_cumprod = sd15_ddim(50).alphas_cumprod.to(torch.float64)
        self.calls: list[tuple[int, int]] = []

    def __call__(self, latents: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
        self.calls.append((latents.shape[0], int(t)))
        mixed = torch.einsum("oc,bchw->bohw", self.mix, latents)
        summary = (context.mean(dim=1) @ self.project)[:, :, None, None]
        noise_scale = float(1.0 - self.alphas_cumprod[t]) ** 0.5
        return noise_scale * (latents + 0.1 * torch.tanh(mixed + summary))


def sd15_ddim(steps: int) -> DDIMScheduler:
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    scheduler.set_timesteps(steps)
    return scheduler


def tensors(dtype: torch.dtype, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    names = ("x0", "source", "target", "uncond")
    shapes = (LATENT_SHAPE, CONTEXT_SHAPE, CONTEXT_SHAPE, CONTEXT_SHAPE)
    return {name: torch.randn(shape, generator=g).to(dtype) for name, shape in zip(names, shapes, strict=True)}


@pytest.mark.parametrize("steps", [50, 10])
def test_schedule_matches_diffusers_ddim(steps: int) -> None:
    scheduler = sd15_ddim(steps)
    assert ddim_timesteps(steps) == scheduler.timesteps.tolist()
    assert torch.equal(sd15_alphas_cumprod(), scheduler.alphas_cumprod)
    for t in ddim_timesteps(steps):
        t_prev = previous_timestep(t, steps)
        expected_prev = scheduler.alphas_cumprod[t_prev] if t_prev >= 0 else scheduler.final_alpha_cumprod
        assert alpha_at(t) == float(scheduler.alphas_cumprod[t])
        assert alpha_at(t_prev) == float(expected_prev)


def test_sample_step_matches_diffusers_ddim_step() -> None:
    scheduler = sd15_ddim(10)
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(2, *LATENT_SHAPE, generator=g)
    for t in ddim_timesteps(10):
        expected = scheduler.step(noise, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(ddim_sample_step(x, t, previous_timestep(t, 10), noise), expected)


@pytest.mark.parametrize("t", [1, 21, 501, 981])
def test_sample_step_undoes_inversion_step_for_same_eps(t: int) -> None:
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(2, *LATENT_SHAPE, generator=g, dtype=torch.float64)
    t_prev = previous_timestep(t, 50)
    up = ddim_sample_step(x, t_prev, t, noise)
    torch.testing.assert_close(ddim_sample_step(up, t, t_prev, noise), x, rtol=0, atol=1e-12)


def test_ddim_inversion_then_sampling_reconstructs_input() -> None:
    data, eps = tensors(torch.float64), ToyEps(torch.float64)
    trajectory = ddim_inversion(data["x0"], data["source"], eps, 50)
    assert len(trajectory) == 51
    reconstruction = ddim_sample(trajectory[-1], data["source"], eps, 50)
    # Only the eps(x_{t-1}, t) ≈ eps(x_t, t) approximation separates the two paths; observed max error ≈ 0.0196.
    assert (reconstruction - data["x0"]).abs().max() < 0.05


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-8), (torch.float32, 1e-3)])
def test_direct_inversion_source_branch_returns_input(dtype: torch.dtype, atol: float) -> None:
    data, eps = tensors(dtype), ToyEps(dtype)
    _, source_x0 = direct_inversion_edit(
        data["x0"], data["source"], data["source"], data["uncond"], eps, 50, guidance=7.5
    )
    torch.testing.assert_close(source_x0, data["x0"], rtol=0, atol=atol)


def test_direct_inversion_source_row_follows_the_inversion_trajectory_at_every_step() -> None:
    """The source's conditional row sees exactly x*_t at each edit step: its attention maps are the inversion's."""
    data = tensors(torch.float64)
    seen: list[torch.Tensor] = []
    toy = ToyEps(torch.float64)

    def eps(latents: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
        seen.append(latents.clone())
        return toy(latents, t, context)

    trajectory = ddim_inversion(data["x0"], data["source"], toy, 10)
    direct_inversion_edit(data["x0"], data["source"], data["target"], data["uncond"], eps, 10, guidance=7.5)
    edit_calls = seen[10:]
    for i, latents in enumerate(edit_calls):
        assert torch.equal(latents[1:2], trajectory[10 - i])
        assert torch.equal(latents[0], latents[2])  # the unconditional row is the target's


def pnp_two_pass_reference(data: dict[str, torch.Tensor], eps: ToyEps, steps: int, guidance: float) -> torch.Tensor:
    """PnPInversion's DirectInversion as written: an offset pass on the inversion trajectory, then the edit pass."""
    scheduler = sd15_ddim(steps)
    # float64 ᾱ, or diffusers would take square roots of 0-dim float32 tensors and round the coefficients.
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
    scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.to(torch.float64)
    trajectory = ddim_inversion(data["x0"], data["source"], eps, steps)
    context = torch.cat([data["uncond"], data["uncond"], data["source"], data["target"]])

    def cfg_step(latents: torch.Tensor, t: int) -> torch.Tensor:
        noise_uncond, noise_cond = eps(torch.cat([latents, latents]), t, context).chunk(2)
        noise = noise_uncond + guidance * (noise_cond - noise_uncond)
        return scheduler.step(noise, t, latents, eta=0.0).prev_sample

    offsets, current = [], torch.cat([trajectory[-1]] * 2)
    for i, t in enumerate(scheduler.timesteps.tolist()):
        target = torch.cat([trajectory[steps - 1 - i]] * 2)
        offsets.append(target - cfg_step(current, t))
        current = target
    latents = torch.cat([trajectory[-1]] * 2)
    for i, t in enumerate(scheduler.timesteps.tolist()):
        latents = cfg_step(latents, t)
        latents = torch.cat([latents[:1] + offsets[i][:1], latents[1:]])
    return latents[1:]


def test_direct_inversion_matches_pnp_two_pass_form() -> None:
    data = tensors(torch.float64)
    edited, _ = direct_inversion_edit(
        data["x0"], data["source"], data["target"], data["uncond"], ToyEps(torch.float64), 10, guidance=7.5
    )
    expected = pnp_two_pass_reference(data, ToyEps(torch.float64), 10, guidance=7.5)
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-10)
    assert (edited - data["x0"]).abs().max() > 1e-3  # a different target really changes the result


def test_direct_inversion_calls_eps_once_per_step_with_batch_of_three() -> None:
    data, eps = tensors(torch.float32), ToyEps(torch.float32)
    events: list[tuple] = []

    class Recorder(AttentionControl):
        def begin_step(self, step_index: int) -> None:
            super().begin_step(step_index)
            events.append(("begin", step_index, len(eps.calls)))

        def step_callback(self, step_index: int, t: int, latents: torch.Tensor) -> torch.Tensor:
            events.append(("callback", step_index, t, tuple(latents.shape)))
            return latents

    control = Recorder()
    progress: list[tuple[int, int]] = []
    direct_inversion_edit(data["x0"], data["source"], data["target"], data["uncond"], eps, 10, 7.5, control,
                          on_step=lambda done, total: progress.append((done, total)))
    inversion_calls, sampling_calls = eps.calls[:10], eps.calls[10:]
    assert inversion_calls == [(1, t) for t in reversed(ddim_timesteps(10))]
    assert sampling_calls == [(3, t) for t in ddim_timesteps(10)]
    expected = []
    for i, t in enumerate(ddim_timesteps(10)):
        expected += [("begin", i, 10 + i), ("callback", i, t, (2, 4, 6, 6))]
    assert events == expected
    assert progress == [(done, 20) for done in range(1, 21)]
    assert not control.active


def test_direct_inversion_deactivates_the_controller_when_cancelled() -> None:
    data, eps = tensors(torch.float32), ToyEps(torch.float32)
    control = AttentionControl()

    def cancel(done: int, total: int) -> None:
        if done == 13:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        direct_inversion_edit(data["x0"], data["source"], data["target"], data["uncond"], eps, 10, 7.5, control,
                              on_step=cancel)
    assert not control.active


def test_direct_inversion_rejects_contexts_of_different_length() -> None:
    data = tensors(torch.float32)
    with pytest.raises(ValueError, match=r"contexts differ in \[T,C\]: .*'target_context': \(3,"):
        direct_inversion_edit(
            data["x0"], data["source"], data["target"][:, :3], data["uncond"], ToyEps(torch.float32), 10, 7.5
        )
