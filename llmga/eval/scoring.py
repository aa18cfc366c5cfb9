"""Per-pair scores of result images on disk against their targets: LPIPS, SSIM and PSNR (inpainting, restoration).

    values = pair_values(results, crops, lpips=load_lpips(vgg, lin), with_psnr=True)   # {"lpips": [...], ...}
    means = pair_scores(results, crops, lpips=...)                                     # {"lpips": 0.21, ...}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .pairs import EvalInputError

if TYPE_CHECKING:
    import torch

LpipsFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]  # a, b [B, 3, H, W] in [0, 1] -> [B]


def pair_scores(outputs: Sequence[Path], targets: Sequence[Path], **options) -> dict[str, float]:
    """Means over the pairs of `pair_values`: {"lpips", "ssim", "psnr"}, the metrics asked for."""
    return {key: float(np.mean(found)) for key, found in pair_values(outputs, targets, **options).items()}


def pair_values(outputs: Sequence[Path], targets: Sequence[Path], *, lpips: LpipsFn | None = None,
                with_ssim: bool = True, with_psnr: bool = False, batch_size: int = 16, device: str | None = None,
                progress: bool = True, desc: str = "LPIPS/SSIM") -> dict[str, list[float]]:
    """LPIPS (when `lpips` is given), SSIM and PSNR of each output against its target image (same size), per pair in
    order: {"lpips": [...], "ssim": [...], "psnr": [...]}, the metrics asked for."""
    import torch
    from tqdm.auto import tqdm

    from ..images import open_image
    from .encoders import rgb_tensor
    from .metrics import psnr, ssim

    values: dict[str, list[float]] = {"lpips": [], "ssim": [], "psnr": []}
    with tqdm(total=len(outputs), desc=desc, unit="image", disable=not progress) as bar:
        for start in range(0, len(outputs), batch_size):
            pairs = []
            for output, target in zip(outputs[start:start + batch_size], targets[start:start + batch_size],
                                      strict=True):
                a, b = rgb_tensor(open_image(output)), rgb_tensor(open_image(target))
                if a.shape != b.shape:
                    raise EvalInputError(f"{output} is {a.shape[2]}x{a.shape[1]} but {target} is {b.shape[2]}x"
                                         f"{b.shape[1]}: results must keep the image size")
                pairs.append((a, b))
            if lpips is not None:
                a, b = torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])
                if device is not None:
                    a, b = a.to(device), b.to(device)
                with torch.inference_mode():
                    values["lpips"].extend(lpips(a, b).float().cpu().tolist())
            arrays = [(a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy()) for a, b in pairs]
            if with_ssim:
                values["ssim"].extend(ssim(a, b) for a, b in arrays)
            if with_psnr:
                values["psnr"].extend(psnr(a, b) for a, b in arrays)
            bar.update(len(pairs))
    return {key: found for key, found in values.items() if found}
