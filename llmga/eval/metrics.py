"""The arithmetic of the image metrics, on numpy arrays (no torch): FID, IS, CLIP score, PSNR, SSIM.

    stats = feature_stats(pool_features)               # [N, 2048] Inception pool features -> mean and covariance
    fid(stats, FeatureStats.load("coco_val.npz"))      # pytorch-fid's precomputed .npz files load as they are
    inception_score(softmax(logits))                   # (mean, std) over 10 splits
    psnr(image, target), ssim(image, target)           # HxWxC float in [0, 1], BasicSR's definitions

Sources: FID as pytorch-fid's `calculate_frechet_distance` (the trace of the square root from eigenvalues); IS as
openai/improved-gan's `inception_score`; CLIP score as torchmetrics' `CLIPScore` (100 * cosine); PSNR and SSIM as
BasicSR's `calculate_psnr` / `calculate_ssim`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# BasicSR metrics/psnr_ssim.py `_ssim`: cv2.getGaussianKernel(11, 1.5), constants on the 0-255 scale.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2


@dataclass
class FeatureStats:
    """Mean `mu` [D] and covariance `sigma` [D, D] (float64) of `count` feature vectors (0: not recorded)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int

    def save(self, path: str | Path) -> None:
        """Write an .npz with "mu", "sigma" (pytorch-fid's layout) and "count", atomically (temp file + rename)."""
        from ..files import save_npz_atomic

        save_npz_atomic(Path(path), mu=self.mu, sigma=self.sigma, count=np.int64(self.count))

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """The statistics of an .npz with "mu" and "sigma" (ours, or pytorch-fid's, which have no "count")."""
        with np.load(path) as data:
            if "mu" not in data or "sigma" not in data:
                raise ValueError(f"{path} holds {sorted(data.files)}, not feature statistics: expected the arrays "
                                 "'mu' and 'sigma' (an .npz written by FeatureStats.save or pytorch-fid --save-stats)")
            count = int(data["count"]) if "count" in data else 0
            return cls(np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64), count)


def feature_stats(features: np.ndarray) -> FeatureStats:
    """features [N, D] -> their mean [D] and covariance [D, D] (float64, unbiased as np.cov)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features have shape {features.shape}: expected [N, D], one row per image")
    if len(features) < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {len(features)}: give more images")
    return FeatureStats(features.mean(axis=0), np.cov(features, rowvar=False), len(features))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), the Frechet distance of two Gaussians.

    Tr(sqrt(sigma1 sigma2)) is computed as the sum of the square roots of the eigenvalues of the symmetric
    sqrt(sigma1) sigma2 sqrt(sigma1), which has the same eigenvalues. pytorch-fid takes `scipy.linalg.sqrtm` of the
    product instead: the same value in exact arithmetic, but ~5x slower at 2048 dimensions and prone to complex
    round-off that it has to patch (eps * I retries, dropped imaginary parts). Round-off negatives are clipped to 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"the two sets of statistics differ in size (mu {mu1.shape} vs {mu2.shape}, sigma "
                         f"{sigma1.shape} vs {sigma2.shape}): compute both with the same feature extractor")
    values, vectors = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    product = root1 @ sigma2 @ root1
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


def fid(a: FeatureStats, b: FeatureStats) -> float:
    """The Frechet distance between two sets of feature statistics (FID for Inception pool features)."""
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits [N, C] in float64 (p(y|x) for inception_score)."""
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` consecutive chunks of exp(E_x KL(p(y|x) || p(y))), p(y) the chunk's mean.

    probs: [N, C] class probabilities p(y|x), rows summing to 1. Chunk i is rows [i*N//splits, (i+1)*N//splits),
    as openai/improved-gan and torch-fidelity split them.
    """
    from scipy.special import rel_entr

    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probabilities have shape {probs.shape}: expected [N, C], one row per image")
    if splits < 1 or len(probs) < splits:
        raise ValueError(f"cannot split {len(probs)} images into {splits} chunks: give at least as many images "
                         "as splits, and splits >= 1")
    scores = []
    for i in range(splits):
        part = probs[i * len(probs) // splits:(i + 1) * len(probs) // splits]
        kl = rel_entr(part, part.mean(axis=0, keepdims=True)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def clip_score(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """Per pair 100 * max(cos(image, text), 0): [N, D] and [N, D] -> [N] float64.

    torchmetrics' CLIPScore scales the cosine by 100 but clips the mean instead of each pair; the two agree
    whenever no pair has a negative cosine (CLIP image-text cosines are practically always positive).
    """
    images, texts = np.atleast_2d(np.asarray(image_embeds, np.float64)), np.atleast_2d(np.asarray(text_embeds,
                                                                                                 np.float64))
    if images.shape != texts.shape:
        raise ValueError(f"{images.shape} image embeddings vs {texts.shape} text embeddings: give one text per image")
    images = images / np.maximum(np.linalg.norm(images, axis=-1, keepdims=True), 1e-12)
    texts = texts / np.maximum(np.linalg.norm(texts, axis=-1, keepdims=True), 1e-12)
    return 100 * np.maximum((images * texts).sum(axis=-1), 0)


def psnr(a: np.ndarray, b: np.ndarray, max_value: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two HxWxC (or HxW) images in [0, max_value]; inf when identical.

    BasicSR calculate_psnr (crop_border 0, RGB): 10 log10(255^2 / MSE) on the 0-255 scale.
    """
    a, b = _to_255(a, b, max_value)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, max_value: float = 1.0) -> float:
    """Structural similarity of two HxWxC (or HxW) images in [0, max_value]; 1 when identical.

    BasicSR calculate_ssim (crop_border 0, RGB): on the 0-255 scale, an 11x11 Gaussian window (sigma 1.5), the
    valid region only (no padding), the SSIM map averaged per channel, then over channels.
    """
    a, b = _to_255(a, b, max_value)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"images of {a.shape[1]}x{a.shape[0]} are smaller than SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} "
                         "window")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    mu_a, mu_b = _gaussian_valid(a), _gaussian_valid(b)
    var_a = _gaussian_valid(a * a) - mu_a**2
    var_b = _gaussian_valid(b * b) - mu_b**2
    cov = _gaussian_valid(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2))
    return float(ssim_map.mean(axis=(0, 1)).mean())


def _to_255(a: np.ndarray, b: np.ndarray, max_value: float) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(f"images of shapes {a.shape} and {b.shape}: expected two HxWxC (or HxW) arrays of the same "
                         "size; resize one to the other first")
    scale = 255.0 / max_value
    return a.astype(np.float64) * scale, b.astype(np.float64) * scale


def _gaussian_valid(x: np.ndarray) -> np.ndarray:
    """x [H, W, C] filtered with the normalised 11x11 Gaussian over H and W, valid region: [H-10, W-10, C]."""
    taps = np.exp(-((np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2) ** 2) / (2 * SSIM_SIGMA**2))
    taps /= taps.sum()
    height, width = x.shape[0] - SSIM_WINDOW + 1, x.shape[1] - SSIM_WINDOW + 1
    rows = sum(weight * x[i:i + height] for i, weight in enumerate(taps))
    return sum(weight * rows[:, i:i + width] for i, weight in enumerate(taps))
