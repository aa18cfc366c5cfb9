"""DiffRIR training pieces (`llmga.restore.degradations`, `jpeg`, `training`, `s1`): D1 and D2 as the official code
configures them, the training-pair pool, the network input, S1 in the official layout, S1 -> S2 initialisation, the
stage-2 training prior and the losses of each stage.

The official facts used here (Zj-BinXia/DiffRIR @51ecb5c options/*.yml, archs/S1_arch.py, models/*.py,
losses/my_loss.py; XPixelGroup/BasicSR basicsr/data/degradations.py, utils/diffjpeg.py) are restated next to the
tests; the S2 key layout comes from the `diffrir_official_keys.json` fixture that test_restore_network.py uses.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from training_support import torch_threads

from llmga.restore import degradations as d
from llmga.restore.jpeg import jpeg_compress, quality_to_factor
from llmga.restore.network import DiffRIR
from llmga.restore.s1 import DiffRIRS1, cpen_s1_channels, init_s2_from_s1
from llmga.restore.training import (
    S2Losses,
    TrainingPairPool,
    build_pair,
    composite,
    paired_random_crop,
    prior_kl,
    s1_loss,
    s2_encoder_losses,
    s2_learning_rate,
    s2_losses,
    s2_training_prior,
    synthesize_training_batch,
)

OFFICIAL_KEYS = Path(__file__).parent / "fixtures" / "diffrir_official_keys.json"
TINY = {"n_encoder_res": 1, "dim": 8, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def smooth_image(batch: int = 2, size: int = 96, seed: int = 0) -> torch.Tensor:
    """[batch,3,size,size] in [0,1] with structure at several scales (so blur, resize and JPEG all show)."""
    coarse = torch.rand((batch, 3, size // 8, size // 8), generator=gen(seed))
    fine = torch.rand((batch, 3, size, size), generator=gen(seed + 1))
    return (0.7 * F.interpolate(coarse, size=(size, size), mode="bilinear") + 0.3 * fine).clamp(0, 1)


def high_frequency_energy(image: torch.Tensor) -> float:
    vertical = (image[..., 1:, :] - image[..., :-1, :]).pow(2).mean()
    horizontal = (image[..., 1:] - image[..., :-1]).pow(2).mean()
    return float(vertical + horizontal)


one_thread = torch_threads(1)  # tiny forwards: one thread avoids oversubscription stalls on busy machines


# ----------------------------------------------------------------------------------------------- D2 (luminance)

@pytest.mark.parametrize("y_error", [d.Y_ERROR_S1, d.Y_ERROR_S2])
def test_luminance_coefficients_stay_in_range_and_fill_it(y_error: float) -> None:
    c1, c2 = d.sample_luminance_error(20000, y_error, d.Y_BIAS, gen())
    assert c1.min() >= 1 - y_error and c1.max() <= 1 + y_error
    assert c2.min() >= -d.Y_BIAS and c2.max() <= d.Y_BIAS
    assert c1.min() < 1 - 0.95 * y_error and c1.max() > 1 + 0.95 * y_error
    assert c2.min() < -0.95 * d.Y_BIAS and c2.max() > 0.95 * d.Y_BIAS
    assert abs(float(c1.mean()) - 1) < 0.05 * y_error and abs(float(c2.mean())) < 0.05 * d.Y_BIAS


def test_stage_constants_are_the_yml_values() -> None:
    # train_DiffRIRS1_x1.yml Y_error 0.06, train_DiffRIRS2_x1.yml 0.08, Y_bias 0.05 everywhere
    assert (d.Y_ERROR_S1, d.Y_ERROR_S2, d.Y_BIAS) == (0.06, 0.08, 0.05)


def test_luminance_error_is_one_affine_map_per_image_then_clamped() -> None:
    image = torch.tensor([0.0, 0.5, 0.97, 1.0]).view(1, 1, 1, 4).expand(2, 3, 1, 4)
    out = d.apply_luminance_error(image, torch.tensor([1.08, 0.92]), torch.tensor([0.05, -0.05]))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.05, 0.59, 1.0, 1.0]))
    torch.testing.assert_close(out[1, 2, 0], torch.tensor([0.0, 0.41, 0.8424, 0.87]))
    c1, c2 = d.sample_luminance_error(2, 0.08, 0.05, gen(3))
    torch.testing.assert_close(d.luminance_error(image, 0.08, 0.05, gen(3)), d.apply_luminance_error(image, c1, c2))


# ------------------------------------------------------------------------------------------------ D1 (kernels)

def test_random_kernels_are_21x21_and_sum_to_one() -> None:
    generator = gen()
    for params in (d.FIRST_ROUND.kernel, d.SECOND_ROUND.kernel, d.KernelParams(sinc_prob=1.0)):
        for _ in range(40):
            kernel = d.random_blur_kernel(params, generator)
            assert kernel.shape == (21, 21) and kernel.dtype == torch.float32
            assert abs(float(kernel.sum()) - 1) < 1e-5
    for prob in (0.0, 1.0):
        assert abs(float(d.random_final_sinc_kernel(prob, generator).sum()) - 1) < 1e-5
    assert d.random_final_sinc_kernel(0.0, generator)[10, 10] == 1


@pytest.mark.parametrize("family", ["gaussian", "generalized", "plateau"])
def test_bivariate_kernels_are_normalised_and_shaped(family: str) -> None:
    iso = d.bivariate_kernel(21, 2.0, 2.0, 0.0, family, beta=1.5)
    assert abs(float(iso.sum()) - 1) < 1e-12 and int(iso.argmax()) == 21 * 10 + 10
    torch.testing.assert_close(iso, iso.T)
    torch.testing.assert_close(iso, iso.flip(0))
    # wide along x (columns) before rotation; a quarter turn makes it wide along y
    aniso = d.bivariate_kernel(21, 3.0, 1.0, 0.0, family, beta=1.5)
    assert aniso[10, 13] > aniso[13, 10]
    torch.testing.assert_close(d.bivariate_kernel(21, 3.0, 1.0, math.pi / 2, family, beta=1.5), aniso.T)


def test_gaussian_kernel_is_the_sampled_normal_density() -> None:
    kernel = d.bivariate_kernel(7, 1.3, 1.3, 0.0)
    axis = torch.arange(-3, 4, dtype=torch.float64)
    expected = torch.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * 1.3**2))
    torch.testing.assert_close(kernel, expected / expected.sum())


def test_sinc_kernel_is_a_low_pass_with_the_official_centre() -> None:
    kernel = d.sinc_kernel(math.pi / 3, 13, pad_to=21)
    assert kernel.shape == (21, 21) and abs(float(kernel.sum()) - 1) < 1e-12
    assert float(kernel[:4].abs().sum()) == 0  # zero padding
    # BasicSR: the centre is cutoff² / (4π) before normalisation
    raw = d.sinc_kernel(math.pi / 3, 13)
    scipy_special = pytest.importorskip("scipy.special")
    r = torch.sqrt(torch.tensor(1.0**2 + 2.0**2, dtype=torch.float64))
    j1 = float(scipy_special.j1(math.pi / 3 * float(r)))
    ratio = (math.pi / 3 * j1 / (2 * math.pi * float(r))) / ((math.pi / 3) ** 2 / (4 * math.pi))
    assert abs(float(raw[6 + 1, 6 + 2] / raw[6, 6]) - ratio) < 1e-9


def test_blur_lowers_high_frequency_energy_and_keeps_constants() -> None:
    image = smooth_image()
    kernel = d.bivariate_kernel(21, 2.0, 2.0, 0.0).float()
    blurred = d.blur(image, kernel)
    assert blurred.shape == image.shape
    assert high_frequency_energy(blurred) < 0.2 * high_frequency_energy(image)
    flat = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(d.blur(flat, kernel), flat)
    pulse = d.random_final_sinc_kernel(0.0, gen())
    torch.testing.assert_close(d.blur(image, pulse), image)
    per_image = torch.stack([kernel, pulse])
    torch.testing.assert_close(d.blur(image, per_image)[1], image[1])


# -------------------------------------------------------------------------------------------------- D1 (noise)

def test_gaussian_noise_has_the_requested_sigma_and_gray_noise_is_shared() -> None:
    flat = torch.full((2, 3, 128, 128), 0.5)
    noisy = d.add_gaussian_noise(flat, torch.tensor([20.0, 10.0]), torch.tensor([0.0, 1.0]), gen())
    assert abs(float(noisy[0].std()) - 20 / 255) < 0.003
    assert abs(float(noisy[1].std()) - 10 / 255) < 0.002
    torch.testing.assert_close(noisy[1, 0], noisy[1, 2])
    assert not torch.allclose(noisy[0, 0], noisy[0, 2])
    assert noisy.min() >= 0 and noisy.max() <= 1


def test_poisson_noise_raises_variance_with_its_scale() -> None:
    image = 0.3 + 0.4 * smooth_image(1, 64)  # away from 0 and 1, so clipping plays no part
    small = d.add_poisson_noise(image, torch.tensor([0.1]), torch.tensor([0.0]), gen())
    large = d.add_poisson_noise(image, torch.tensor([3.0]), torch.tensor([0.0]), gen())
    assert 0 < float((small - image).var()) < float((large - image).var())
    gray = d.add_poisson_noise(image, torch.tensor([1.0]), torch.tensor([1.0]), gen())
    torch.testing.assert_close((gray - image)[0, 0], (gray - image)[0, 1], atol=1e-6, rtol=0)
    assert large.min() >= 0 and large.max() <= 1


# --------------------------------------------------------------------------------------------------- D1 (JPEG)

def test_quality_factor_is_libjpeg_scaling() -> None:
    torch.testing.assert_close(quality_to_factor(torch.tensor([25.0, 50.0, 75.0, 95.0])),
                               torch.tensor([2.0, 1.0, 0.5, 0.1]))


def test_jpeg_keeps_shape_and_range_and_loses_more_at_low_quality() -> None:
    # gray, 50×50: no colour for the chroma subsampling to lose, and not a multiple of 16 (padded, cropped back)
    image = smooth_image(2, 50).mean(1, keepdim=True).expand(2, 3, 50, 50)
    outputs = [jpeg_compress(image, quality) for quality in (10.0, 30.0, 60.0, torch.tensor([95.0, 95.0]))]
    assert all(out.shape == image.shape and out.min() >= 0 and out.max() <= 1 for out in outputs)
    errors = [float((out - image).abs().mean()) for out in outputs]
    assert errors == sorted(errors, reverse=True) and errors[0] > 3 * errors[-1] > 0
    flat = torch.full((1, 3, 32, 32), 0.4)
    torch.testing.assert_close(jpeg_compress(flat, 30.0), flat, atol=1 / 255, rtol=0)


def test_jpeg_is_close_to_a_real_jpeg_codec() -> None:
    image = (smooth_image(1, 64) * 255).round() / 255
    ours = jpeg_compress(image, 40.0)
    buffer = io.BytesIO()
    Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(buffer, "JPEG", quality=40)
    theirs = torch.from_numpy(np.asarray(Image.open(buffer)).astype(np.float32) / 255).permute(2, 0, 1)[None]
    # same codec up to the transposed tables, chroma filtering and integer rounding: much closer than to the input
    assert float((ours - theirs).abs().mean()) < 0.5 * float((ours - image).abs().mean())


# ----------------------------------------------------------------------------------------------- D1 (pipeline)

@pytest.mark.parametrize("scale", [1, 2])
def test_second_order_degradation_shape_range_and_determinism(scale: int) -> None:
    gt = smooth_image(2, 96)
    params = d.DegradationParams(scale=scale)
    out = d.second_order_degradation(gt, params, gen(5))
    assert out.shape == (2, 3, 96 // scale, 96 // scale) and torch.isfinite(out).all()
    assert out.min() > -0.5 and out.max() < 1.5  # only a final sinc may leave [0,1], slightly
    assert torch.equal(out, d.second_order_degradation(gt, params, gen(5)))
    assert not torch.equal(out, d.second_order_degradation(gt, params, gen(6)))
    lq = d.quantize(out)
    assert lq.min() >= 0 and lq.max() <= 1 and torch.equal(lq, (lq * 255).round() / 255)


def test_second_order_degradation_degrades() -> None:
    gt = smooth_image(2, 96)
    outputs = [d.second_order_degradation(gt, d.DIFFRIR_DEGRADATION, gen(seed)) for seed in range(4)]
    errors = [float((out - gt).abs().mean()) for out in outputs]
    assert min(errors) > 0.01


def test_second_order_degradation_refuses_small_images() -> None:
    with pytest.raises(ValueError, match="at least 80x80"):
        d.second_order_degradation(torch.rand(1, 3, 64, 64), d.DIFFRIR_DEGRADATION, gen())


# ----------------------------------------------------------------------------------- training batch, pool, input

def test_training_batch_is_rounded_and_cropped_together() -> None:
    gt = smooth_image(2, 96)
    mask = (torch.rand((2, 1, 96, 96), generator=gen(9)) > 0.5).float()
    lq, gt_crop, mask_crop = synthesize_training_batch(gt, mask, gen(1), y_error=d.Y_ERROR_S1, gt_size=64)
    assert lq.shape == gt_crop.shape == (2, 3, 64, 64) and mask_crop.shape == (2, 1, 64, 64)
    assert torch.equal(lq, (lq * 255).round() / 255) and lq.min() >= 0 and lq.max() <= 1
    windows = [(top, left) for top in range(33) for left in range(33)
               if torch.equal(gt[:, :, top:top + 64, left:left + 64], gt_crop)]
    assert len(windows) == 1
    top, left = windows[0]
    assert torch.equal(mask[:, :, top:top + 64, left:left + 64], mask_crop)


def test_paired_crop_maps_the_lq_window_to_the_gt_window() -> None:
    gt = torch.arange(64.0).view(1, 1, 8, 8).expand(1, 3, 8, 8)
    lq = gt[:, :, ::2, ::2]
    gt_crop, mask_crop, lq_crop = paired_random_crop(gt, gt[:, :1], lq, 4, 2, gen(2))
    assert torch.equal(lq_crop, gt_crop[:, :, ::2, ::2]) and torch.equal(mask_crop, gt_crop[:, :1])
    with pytest.raises(ValueError, match="smaller than"):
        paired_random_crop(gt, gt[:, :1], lq, 16, 2, gen())


def test_pool_fills_then_swaps_random_stored_pairs() -> None:
    pool = TrainingPairPool(size=4)
    batches = [torch.full((2, 3, 2, 2), float(i)) for i in range(4)]
    seen = []
    for i, batch in enumerate(batches):
        lq, gt = pool(batch, batch * 10, gen(i))
        if i < 2:  # filling: the batch goes through unchanged
            assert torch.equal(lq, batch) and torch.equal(gt, batch * 10)
        else:  # full: pairs from earlier batches come out, still paired
            ids = lq[:, 0, 0, 0].tolist()
            assert torch.equal(gt, lq * 10) and all(value < i for value in ids)
            seen += ids
        assert pool.full == (i >= 1)
    stored = sorted(pool.lq[:, 0, 0, 0].tolist() + seen)
    assert stored == [0, 0, 1, 1, 2, 2, 3, 3]  # nothing lost, nothing duplicated


def test_pool_is_reproducible_and_checks_batch_sizes() -> None:
    def run(seed: int) -> list[float]:
        pool = TrainingPairPool(size=4)
        return [pool(torch.full((2, 1, 1, 1), float(i)) + torch.arange(2.0).view(2, 1, 1, 1) / 10,
                     torch.zeros(2, 1, 2, 2), gen(seed + i))[0].flatten().tolist() for i in range(6)]
    assert run(0) == run(0)
    with pytest.raises(ValueError, match="divisible"):
        TrainingPairPool(size=160)(torch.zeros(3, 3, 4, 4), torch.zeros(3, 3, 4, 4), gen())
    pool = TrainingPairPool(size=4)
    pool(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), gen())
    with pytest.raises(ValueError, match="drop_last"):
        pool(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), gen())


@pytest.mark.parametrize(("scale", "channels"), [(1, 6), (2, 15), (4, 51)])
def test_build_pair_concatenates_the_masked_reference(scale: int, channels: int) -> None:
    gt = torch.rand(2, 3, 32, 32, generator=gen())
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    lq = torch.rand(2, 3, 32 // scale, 32 // scale, generator=gen(1))
    x, target = build_pair(gt, mask, lq, scale)
    assert x.shape == (2, channels, 32 // scale, 32 // scale) and channels == DiffRIR(scale, **TINY).in_channels
    assert torch.equal(target, gt) and torch.equal(x[:, :3], lq)
    reference = F.pixel_shuffle(x[:, 3:], scale) if scale > 1 else x[:, 3:]
    assert torch.equal(reference, (1 - mask) * gt) and float(reference[:, :, 8:24, 8:24].abs().sum()) == 0


# ------------------------------------------------------------------------------------------ S1 and S1 -> S2 init

@pytest.mark.parametrize(("scale", "channels"), [(1, 144), (2, 108), (4, 99)])
def test_s1_layout_is_the_official_s1_layout(scale: int, channels: int) -> None:
    official = json.loads(OFFICIAL_KEYS.read_text())
    shapes = {key: shape for key, shape in official["keys"]}
    shapes.update(official["shapes_by_scale"].get(str(scale), {}))
    # S1_arch.py: G is S2's DIRformer; E is S2's CPEN (keys condition.*) with a first conv of 144/108/99 channels
    expected = {key: shape for key, shape in shapes.items() if key.startswith("G.")}
    expected.update({"E." + key[len("condition."):]: shape for key, shape in shapes.items()
                     if key.startswith("condition.")})
    expected["E.E.0.weight"] = [64, channels, 3, 3]
    ours = DiffRIRS1(scale).state_dict()
    assert list(ours) == list(expected)
    assert {key: list(value.shape) for key, value in ours.items()} == expected
    assert cpen_s1_channels(scale) == channels


def test_s1_prior_sees_the_ground_truth() -> None:
    model = DiffRIRS1(1, **TINY).eval()
    x, gt = torch.rand(1, 6, 32, 32, generator=gen()), torch.rand(1, 3, 32, 32, generator=gen(1))
    with torch.no_grad():
        z = model.prior(x, gt)
        assert z.shape == (1, 256) and not torch.allclose(z, model.prior(x, 1 - gt))
        assert torch.equal(model(x, gt), model.G(x, z))
    with pytest.raises(ValueError, match="1× the input"):
        model.prior(x, gt[..., :16, :16])


def test_init_s2_from_s1_copies_the_dirformer_only() -> None:
    torch.manual_seed(0)
    s1, s2 = DiffRIRS1(1, **TINY), DiffRIR(1, **TINY)
    before = {key: value.clone() for key, value in s2.state_dict().items()}
    copied = init_s2_from_s1(s2, s1.state_dict())
    assert copied == [key for key in before if key.startswith("G.")]
    after, source = s2.state_dict(), s1.state_dict()
    assert all(torch.equal(after[key], source[key]) for key in copied)
    assert all(torch.equal(after[key], before[key]) for key in before if not key.startswith("G."))
    with pytest.raises(ValueError, match="S1 was trained with"):
        init_s2_from_s1(DiffRIR(1, **{**TINY, "dim": 16}), s1.state_dict())


def test_a_few_s1_steps_lower_the_l1_loss() -> None:
    torch.manual_seed(0)
    model = DiffRIRS1(1, **TINY)
    gt = smooth_image(2, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24] = 1
    x, target = build_pair(gt, mask, (gt * 0.8 + 0.1).clamp(0, 1))
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.99))
    losses = []
    for _ in range(12):
        optimiser.zero_grad()
        loss = s1_loss(model(x, target), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# ---------------------------------------------------------------------------------------------- stage-2 pieces

def test_s2_training_prior_starts_from_the_noised_s1_prior() -> None:
    torch.manual_seed(0)
    s2 = DiffRIR(1, **TINY)
    x, z_s1 = torch.rand(2, 6, 32, 32, generator=gen()), torch.randn(2, 256, generator=gen(1))
    z = s2_training_prior(s2, x, z_s1, gen(7))
    noise = torch.randn(2, 256, generator=gen(7))
    start = s2.diffusion.sqrt_alphas_cumprod[3] * z_s1 + s2.diffusion.sqrt_one_minus_alphas_cumprod[3] * noise
    assert abs(float(s2.diffusion.alphas_cumprod[3]) - 0.0026) < 1e-4  # ᾱ_T: z_S1 is nearly all noise
    torch.testing.assert_close(z, s2.diffusion(x, start))
    z.pow(2).sum().backward()
    assert s2.condition.E[0].weight.grad is not None and s2.denoise.resmlp[0].weight.grad is not None
    assert s2.G.patch_embed.proj.weight.grad is None


def test_losses_match_hand_computations() -> None:
    output, gt = torch.tensor([[[[0.2, 0.9]]]]), torch.tensor([[[[0.4, 0.5]]]])
    mask = torch.tensor([[[[0.0, 1.0]]]])
    assert float(s1_loss(output, gt)) == pytest.approx(0.3)
    assert torch.equal(composite(output, gt, mask), torch.tensor([[[[0.4, 0.9]]]]))
    z_s1, z_s2 = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.5, 0.5, -1.0]])
    p = torch.softmax(z_s1 / 0.15, 1)
    kl = float((p * (p.log() - torch.log_softmax(z_s2 / 0.15, 1))).sum())
    assert float(prior_kl(z_s2, z_s1)) == pytest.approx(kl)
    phase_b = s2_losses(output, gt, mask, z_s2, z_s1)
    assert float(phase_b.pixel) == pytest.approx(0.2)  # only the masked pixel differs: |0.9 - 0.5| / 2
    assert float(phase_b.prior_l1) == pytest.approx(1 / 3)
    assert float(phase_b.total) == pytest.approx(0.2 + 1 / 3) and float(phase_b.prior_kl) == pytest.approx(kl)
    assert float(s2_losses(output, gt, mask, z_s2, z_s1, scale=2).pixel) == pytest.approx(0.3)  # no composite
    phase_a = s2_encoder_losses(z_s2, z_s1)
    assert phase_a.pixel is None and float(phase_a.total) == pytest.approx(1 / 3)
    assert set(phase_a.log()) == {"l_abs_3", "l_kd_3"} and isinstance(phase_b, S2Losses)


def test_kl_term_is_logged_not_trained() -> None:
    z_s2 = torch.randn(2, 256, requires_grad=True)
    z_s1 = torch.randn(2, 256, requires_grad=True)
    losses = s2_encoder_losses(z_s2, z_s1)
    assert not losses.prior_kl.requires_grad
    losses.total.backward()
    assert z_s2.grad is not None and z_s1.grad is None
    torch.testing.assert_close(z_s2.grad, torch.sign(z_s2 - z_s1).detach() / z_s2.numel())


def test_stage2_learning_rate_schedule() -> None:
    # train_DiffRIRS2_x1.yml: lr_encoder 2e-4, gamma 0.1 / 60k until encoder_iter 100k; then lr_sr 2e-4, 0.5 / 600k
    assert s2_learning_rate(0) == 2e-4 and s2_learning_rate(59_999) == 2e-4
    assert s2_learning_rate(60_000) == pytest.approx(2e-5)
    assert s2_learning_rate(100_000) == 2e-4 and s2_learning_rate(699_999) == 2e-4
    assert s2_learning_rate(700_000) == pytest.approx(1e-4)
