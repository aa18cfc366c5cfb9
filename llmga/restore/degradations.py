"""DiffRIR's training degradations: Real-ESRGAN's second-order degradation (D1) and the luminance error (D2).

D1 (`second_order_degradation`) blurs, resizes, adds noise to and JPEG-compresses a clean image twice, then resizes
it to the target size with a final sinc filter, in one of two orders. The arithmetic follows BasicSR
(`basicsr/data/degradations.py`: kernels and noise; `basicsr/utils/img_process_util.py`: filter2D;
`basicsr/utils/diffjpeg.py`: DiffJPEG, see `jpeg.py`) as DiffRIR drives it (`DiffRIR/models/DiffIR_S1_model.py`
feed_data, kernels drawn as in `DiffRIR/data/diffrir_y_mask_dataset.py`). Probabilities and ranges are those of every
DiffRIR yml (`options/train_DiffRIR{S1,S2,S2_GAN}_x{1,2,4}.yml` share them): `DegradationParams()`.

D2 (`luminance_error`, `DiffRIR/utils/img_util.py` add_lumi_error): lq = clamp(lq * c1 + c2, 0, 1) with one
c1 = 1 + U(-1,1) * y_error and one c2 = U(-1,1) * y_bias per image, on all RGB channels.

Every random draw comes from one `torch.Generator`, so a seed fixes the result (the official code draws from Python's
`random`, NumPy and torch's global generator: same distributions, other streams). Noise maps are drawn on the
generator's device: use a generator on the images' device when training on a GPU (a CPU generator works, but moves
the maps across; Poisson noise on the CPU takes ~1.5 s for a 8×3×400×400 batch). Batch-level choices (resize
factor and mode, Gaussian or Poisson noise, the order of the last steps) are shared by the batch, as officially;
kernels, noise levels, gray-noise flags, JPEG qualities and D2 coefficients are drawn per image. One deviation: for
gray Gaussian noise BasicSR draws a single [H,W] pattern for the whole batch (scaled per image); here each image
gets its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.filters import filter2d
from torch import Tensor

from .jpeg import jpeg_compress

KERNEL_SIZES = tuple(range(7, 22, 2))  # diffrir_y_mask_dataset.py: kernel_range = [2 * v + 1 for v in range(3, 11)]
PADDED_KERNEL_SIZE = 21  # diffrir_y_mask_dataset.py: every kernel is zero-padded to 21×21
KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")  # DiffIR_S1_model.py: random.choice over these for every resize
# torchvision rgb_to_grayscale, used by BasicSR's gray Poisson noise (kornia's, even with these weights, rounds
# differently, so the sum is written out as torchvision does).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
Y_ERROR_S1 = 0.06  # train_DiffRIRS1_x{1,2,4}.yml, train_DiffRIRS2_GAN_x1(_V2).yml: c1 in [0.94, 1.06]
Y_ERROR_S2 = 0.08  # train_DiffRIRS2_x{1,2,4}.yml, train_DiffRIRS2_GAN_x4.yml: c1 in [0.92, 1.08]
Y_BIAS = 0.05  # every DiffRIR yml: c2 in [-0.05, 0.05]
MIN_SIZE = 80  # the first resize may shrink by 0.15, and the 21×21 blur then reflect-pads by 10 (needs > 10 pixels)


@dataclass(frozen=True)
class KernelParams:
    """How one round's blur kernel is drawn (yml `kernel_list`/`kernel_prob`, `blur_sigma`, `betag_range`,
    `betap_range`, `sinc_prob`; the `…2` keys for the second round). Probabilities follow `KERNEL_TYPES`."""

    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma_range: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1


@dataclass(frozen=True)
class DegradationRound:
    """One round of D1: blur (with `blur_prob`), resize (up/down/keep), noise, JPEG. Noise sigmas are on the 0-255
    scale; `resize_probs` are (up, down, keep)."""

    kernel: KernelParams
    blur_prob: float
    resize_probs: tuple[float, float, float]
    resize_range: tuple[float, float]
    gaussian_noise_prob: float
    noise_range: tuple[float, float]
    poisson_scale_range: tuple[float, float]
    gray_noise_prob: float
    jpeg_range: tuple[float, float]


# The DiffRIR ymls (all stages and scales): the first round's keys have no suffix, the second round's end in 2.
FIRST_ROUND = DegradationRound(KernelParams(), 1.0, (0.2, 0.7, 0.1), (0.15, 1.5), 0.5, (1.0, 30.0), (0.05, 3.0), 0.4,
                               (30.0, 95.0))
SECOND_ROUND = DegradationRound(KernelParams(sigma_range=(0.2, 1.5)), 0.8, (0.3, 0.4, 0.3), (0.3, 1.2), 0.5,
                                (1.0, 25.0), (0.05, 2.5), 0.4, (30.0, 95.0))


@dataclass(frozen=True)
class DegradationParams:
    """D1 as configured in every DiffRIR yml; `scale` is the super-resolution factor (the lq is gt / scale)."""

    first: DegradationRound = FIRST_ROUND
    second: DegradationRound = SECOND_ROUND
    final_sinc_prob: float = 0.8
    scale: int = 1


DIFFRIR_DEGRADATION = DegradationParams()  # every DiffRIR yml at x1


def _uniform(generator: torch.Generator, low: float, high: float, count: int | None = None) -> Tensor:
    """U(low, high): a 0-d float64 tensor, or [count] — on the generator's device."""
    shape = () if count is None else (count,)
    return low + (high - low) * torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)


def _coin(generator: torch.Generator, prob: float) -> bool:
    return bool(_uniform(generator, 0.0, 1.0) < prob)


def _choice(generator: torch.Generator, options: tuple, probs: tuple[float, ...] | None = None):
    weights = torch.tensor(probs if probs is not None else [1.0] * len(options), dtype=torch.float64)
    index = torch.multinomial(weights.to(generator.device), 1, generator=generator)
    return options[int(index)]


# BasicSR's kernel formulas in float64: kornia has no rotated, generalized or plateau kernels (other numbers).
def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> Tensor:
    """BasicSR's pdf2 argument: p^T Σ^-1 p on the centred size×size grid (x along columns), Σ rotated by theta."""
    axis = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([xx, yy], dim=-1)
    c, s = math.cos(theta), math.sin(theta)
    rotation = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    sigma = rotation @ torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64)) @ rotation.T
    return ((grid @ torch.linalg.inv(sigma)) * grid).sum(-1)


def bivariate_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, family: str = "gaussian",
                     beta: float = 1.0) -> Tensor:
    """A normalised size×size float64 kernel: `gaussian` exp(-q/2), `generalized` exp(-q^β/2) or `plateau`
    1/(q^β+1), with q = p^T Σ^-1 p (BasicSR bivariate_Gaussian / _generalized_Gaussian / _plateau)."""
    q = _quadratic_form(size, sigma_x, sigma_y, theta)
    if family == "gaussian":
        kernel = torch.exp(-0.5 * q)
    elif family == "generalized":
        kernel = torch.exp(-0.5 * q.pow(beta))
    elif family == "plateau":
        kernel = 1.0 / (q.pow(beta) + 1.0)
    else:
        raise ValueError(f"kernel family {family!r} is unknown: use gaussian, generalized or plateau")
    return kernel / kernel.sum()


def sinc_kernel(cutoff: float, size: int, pad_to: int = 0) -> Tensor:
    """BasicSR circular_lowpass_kernel: the 2-D circular low-pass (sinc) filter with `cutoff` in radians (π is no
    filtering), size×size (odd), normalised, zero-padded to pad_to×pad_to when larger. float64."""
    centre = (size - 1) / 2
    index = torch.arange(size, dtype=torch.float64) - centre
    radius = torch.sqrt(index[:, None] ** 2 + index[None, :] ** 2)
    safe = torch.where(radius == 0, torch.ones_like(radius), radius)
    kernel = cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe)
    kernel = torch.where(radius == 0, torch.full_like(radius, cutoff**2 / (4 * math.pi)), kernel)
    kernel = kernel / kernel.sum()
    return _pad_kernel(kernel, pad_to) if pad_to > size else kernel


def _pad_kernel(kernel: Tensor, size: int) -> Tensor:
    pad = (size - kernel.shape[-1]) // 2
    return F.pad(kernel, (pad, pad, pad, pad))


def _beta(generator: torch.Generator, beta_range: tuple[float, float]) -> float:
    """BasicSR: half the time U(low, 1), else U(1, high)."""
    if _coin(generator, 0.5):
        return float(_uniform(generator, beta_range[0], 1.0))
    return float(_uniform(generator, 1.0, beta_range[1]))


def random_mixed_kernel(size: int, params: KernelParams, generator: torch.Generator) -> Tensor:
    """BasicSR random_mixed_kernels (no multiplicative noise, rotation in [-π, π]): a size×size float64 kernel of a
    type drawn from `KERNEL_TYPES` with `params.kernel_probs`."""
    kind = _choice(generator, KERNEL_TYPES, params.kernel_probs)
    isotropic = not kind.endswith("aniso")
    sigma_x = float(_uniform(generator, *params.sigma_range))
    sigma_y, theta = sigma_x, 0.0
    if not isotropic:
        sigma_y = float(_uniform(generator, *params.sigma_range))
        theta = float(_uniform(generator, -math.pi, math.pi))
    if kind.startswith("generalized"):
        return bivariate_kernel(size, sigma_x, sigma_y, theta, "generalized", _beta(generator, params.betag_range))
    if kind.startswith("plateau"):
        return bivariate_kernel(size, sigma_x, sigma_y, theta, "plateau", _beta(generator, params.betap_range))
    return bivariate_kernel(size, sigma_x, sigma_y, theta, "gaussian")


def random_blur_kernel(params: KernelParams, generator: torch.Generator) -> Tensor:
    """One round's blur kernel as the dataset draws it: size from 7..21, a sinc filter with `sinc_prob` (cutoff in
    [π/3, π] below size 13, else [π/5, π]), otherwise a mixed kernel; float32 [21,21], sums to 1."""
    size = _choice(generator, KERNEL_SIZES)
    if _coin(generator, params.sinc_prob):
        cutoff = float(_uniform(generator, math.pi / 3 if size < 13 else math.pi / 5, math.pi))
        kernel = sinc_kernel(cutoff, size)
    else:
        kernel = random_mixed_kernel(size, params, generator)
    return _pad_kernel(kernel, PADDED_KERNEL_SIZE).float()


def random_final_sinc_kernel(prob: float, generator: torch.Generator) -> Tensor:
    """The final sinc filter: with `prob` a sinc of size 7..21 and cutoff in [π/3, π], else the identity pulse;
    float32 [21,21], sums to 1."""
    if not _coin(generator, prob):
        pulse = torch.zeros(PADDED_KERNEL_SIZE, PADDED_KERNEL_SIZE)
        pulse[PADDED_KERNEL_SIZE // 2, PADDED_KERNEL_SIZE // 2] = 1.0
        return pulse
    size = _choice(generator, KERNEL_SIZES)
    return sinc_kernel(float(_uniform(generator, math.pi / 3, math.pi)), size, pad_to=PADDED_KERNEL_SIZE).float()


def blur(image: Tensor, kernel: Tensor) -> Tensor:
    """BasicSR filter2D: image [B,C,H,W] correlated with kernel [k,k] (all images) or [B,k,k] (one per image), k odd,
    reflect padding; same shape out. H and W must exceed k // 2. kornia's filter2d is the same grouped conv2d."""
    # contiguous: kornia 0.7 views the padded input, which fails on the channels-last images the JPEG step returns
    return filter2d(image.contiguous(), kernel if kernel.dim() == 3 else kernel[None], border_type="reflect")


def random_resize(image: Tensor, generator: torch.Generator, *, scale_factor: float | None = None,
                  size: tuple[int, int] | None = None) -> Tensor:
    """F.interpolate to `size` or by `scale_factor` with a mode drawn from area/bilinear/bicubic (not clamped)."""
    # Not kornia's resize: it takes a size only, and a scale factor maps pixel centres differently from that size.
    mode = _choice(generator, RESIZE_MODES)
    return F.interpolate(image, size=size, scale_factor=scale_factor, mode=mode)


def _resize_factor(round_: DegradationRound, generator: torch.Generator) -> float:
    direction = _choice(generator, ("up", "down", "keep"), round_.resize_probs)
    if direction == "up":
        return float(_uniform(generator, 1.0, round_.resize_range[1]))
    if direction == "down":
        return float(_uniform(generator, round_.resize_range[0], 1.0))
    return 1.0


def _flags(generator: torch.Generator, count: int, prob: float) -> Tensor:
    return (_uniform(generator, 0.0, 1.0, count) < prob).float()


def add_gaussian_noise(image: Tensor, sigma: Tensor, gray: Tensor, generator: torch.Generator) -> Tensor:
    """BasicSR add_gaussian_noise_pt (clip, no rounding): image [B,C,H,W] in [0,1] plus N(0, (sigma/255)²) noise,
    sigma [B] on the 0-255 scale; where gray [B] is 1 the same noise goes to every channel. Out in [0,1]."""
    b, c, h, w = image.shape
    sigma = sigma.to(image).view(b, 1, 1, 1) / 255.0
    gray = gray.to(image).view(b, 1, 1, 1)
    color = torch.randn((b, c, h, w), generator=generator, device=generator.device).to(image)
    mono = torch.randn((b, 1, h, w), generator=generator, device=generator.device).to(image)
    noise = (color * (1 - gray) + mono * gray) * sigma
    return (image + noise).clamp(0, 1)


def _poisson_noise(image: Tensor, generator: torch.Generator) -> Tensor:
    """Shot noise of `image` [B,C,H,W] rounded to 8 bits, each image counted with 2^ceil(log2(#distinct values))
    photons per unit (BasicSR generate_poisson_noise_pt)."""
    image = (image * 255.0).round().clamp(0, 255) / 255.0
    levels = [2 ** math.ceil(math.log2(len(torch.unique(single)))) for single in image]
    vals = image.new_tensor(levels).view(-1, 1, 1, 1)
    rates = (image * vals).to(generator.device)
    return torch.poisson(rates, generator=generator).to(image) / vals - image


def add_poisson_noise(image: Tensor, scale: Tensor, gray: Tensor, generator: torch.Generator) -> Tensor:
    """BasicSR add_poisson_noise_pt (clip, no rounding): image [B,3,H,W] in [0,1] plus scale [B] × Poisson noise;
    where gray [B] is 1 the noise of the luma (same on every channel) is used. Out in [0,1]."""
    b = image.shape[0]
    gray = gray.to(image).view(b, 1, 1, 1)
    noise = _poisson_noise(image, generator)
    if bool(gray.sum() > 0):
        luma = (image * image.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)
        noise = noise * (1 - gray) + _poisson_noise(luma, generator).expand_as(image) * gray
    return (image + noise * scale.to(image).view(b, 1, 1, 1)).clamp(0, 1)


def random_noise(image: Tensor, round_: DegradationRound, generator: torch.Generator) -> Tensor:
    """Gaussian noise (with `gaussian_noise_prob`, for the whole batch) or Poisson noise, with per-image level and
    gray flag; image [B,3,H,W] in [0,1] -> same shape in [0,1]."""
    b = image.shape[0]
    if _coin(generator, round_.gaussian_noise_prob):
        sigma = _uniform(generator, *round_.noise_range, count=b)
        return add_gaussian_noise(image, sigma, _flags(generator, b, round_.gray_noise_prob), generator)
    scale = _uniform(generator, *round_.poisson_scale_range, count=b)
    return add_poisson_noise(image, scale, _flags(generator, b, round_.gray_noise_prob), generator)


def random_jpeg(image: Tensor, jpeg_range: tuple[float, float], generator: torch.Generator) -> Tensor:
    """Clamp to [0,1], then JPEG at a per-image quality drawn from `jpeg_range` (float, as DiffJPEG takes it)."""
    quality = _uniform(generator, *jpeg_range, count=image.shape[0])
    return jpeg_compress(image.clamp(0, 1), quality.to(image.device))


def second_order_degradation(gt: Tensor, params: DegradationParams, generator: torch.Generator) -> Tensor:
    """Real-ESRGAN's second-order degradation as DiffRIR's feed_data runs it (D1).

    gt: [B,3,H,W] float in [0,1], H and W ≥ 80 (DiffRIR trains on 400×400); params: `DIFFRIR_DEGRADATION` for
    the released models (x1; `DegradationParams(scale=2)` etc. for x2/x4). Returns [B,3,H/s,W/s] with s =
    `params.scale`; values are not clamped after the last step (the final sinc may over- or undershoot when it comes
    last), as officially: D2 and the 8-bit rounding follow (`luminance_error`, `quantize`).
    """
    b, _, h, w = gt.shape
    if min(h, w) < MIN_SIZE:
        raise ValueError(f"gt is {h}x{w}; the second-order degradation needs at least {MIN_SIZE}x{MIN_SIZE} (the "
                         f"first resize may shrink by {params.first.resize_range[0]}): use larger crops")
    first, second, s = params.first, params.second, params.scale
    kernel1 = torch.stack([random_blur_kernel(first.kernel, generator) for _ in range(b)])
    kernel2 = torch.stack([random_blur_kernel(second.kernel, generator) for _ in range(b)])
    final_sinc = torch.stack([random_final_sinc_kernel(params.final_sinc_prob, generator) for _ in range(b)])

    out = blur(gt, kernel1) if _coin(generator, first.blur_prob) else gt
    out = random_resize(out, generator, scale_factor=_resize_factor(first, generator))
    out = random_noise(out, first, generator)
    out = random_jpeg(out, first.jpeg_range, generator)

    if _coin(generator, second.blur_prob):
        out = blur(out, kernel2)
    factor = _resize_factor(second, generator)
    out = random_resize(out, generator, size=(int(h / s * factor), int(w / s * factor)))
    out = random_noise(out, second, generator)
    # Real-ESRGAN: [resize back + sinc] and JPEG in either order; other orders give twisted lines.
    if _coin(generator, 0.5):
        out = blur(random_resize(out, generator, size=(h // s, w // s)), final_sinc)
        return random_jpeg(out, second.jpeg_range, generator)
    out = random_jpeg(out, second.jpeg_range, generator)
    return blur(random_resize(out, generator, size=(h // s, w // s)), final_sinc)


def sample_luminance_error(batch: int, y_error: float, y_bias: float,
                           generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """D2's per-image coefficients: c1 = 1 + U(-1,1)·y_error and c2 = U(-1,1)·y_bias, each float32 [batch]."""
    c1 = 1.0 + _uniform(generator, -1.0, 1.0, count=batch) * y_error
    c2 = _uniform(generator, -1.0, 1.0, count=batch) * y_bias
    return c1.float().cpu(), c2.float().cpu()


def apply_luminance_error(image: Tensor, c1: Tensor, c2: Tensor) -> Tensor:
    """add_lumi_error: clamp(image · c1 + c2, 0, 1) with c1, c2 [B] per image; image [B,C,H,W]."""
    shape = (-1, 1, 1, 1)
    return (image * c1.to(image).view(shape) + c2.to(image).view(shape)).clamp(0, 1)


def luminance_error(lq: Tensor, y_error: float, y_bias: float, generator: torch.Generator) -> Tensor:
    """D2: a random brightness/contrast shift per image, lq [B,C,H,W] -> [B,C,H,W] in [0,1]. Use y_error =
    `Y_ERROR_S1` (0.06) for stage 1 and `Y_ERROR_S2` (0.08) for stage 2, y_bias = `Y_BIAS` (0.05)."""
    c1, c2 = sample_luminance_error(lq.shape[0], y_error, y_bias, generator)
    return apply_luminance_error(lq, c1, c2)


def quantize(image: Tensor) -> Tensor:
    """clamp(round(image · 255), 0, 255) / 255: the 8-bit rounding DiffRIR applies to the lq after D2."""
    return (image * 255.0).round().clamp(0, 255) / 255.0
