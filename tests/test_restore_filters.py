"""D1's blur (`llmga.restore.degradations.blur`, kornia's filter2d) against BasicSR's filter2D, restated here from
basicsr/utils/img_process_util.py: reflect-pad by k//2, then one convolution — a plain one when a single kernel
serves the whole batch, else a grouped one over the batch folded into channels, each image's kernel repeated over
its channels. The results must be equal to the bit, for the kernels D1 draws and on the channels-last images its
JPEG step returns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmga.restore import degradations as d
from llmga.restore.jpeg import jpeg_compress


def basicsr_filter2d(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """image [B,C,H,W], kernel [1 or B,k,k] (k odd) -> [B,C,H,W]."""
    b, c, h, w = image.shape
    k = kernel.shape[-1]
    padded = F.pad(image, (k // 2,) * 4, mode="reflect")
    if kernel.shape[0] == 1:
        return F.conv2d(padded.reshape(b * c, 1, h + k - 1, w + k - 1), kernel[None]).reshape(b, c, h, w)
    weights = kernel[:, None].repeat(1, c, 1, 1).reshape(b * c, 1, k, k)
    folded = padded.reshape(1, b * c, h + k - 1, w + k - 1)
    return F.conv2d(folded, weights, groups=b * c).reshape(b, c, h, w)


def drawn_kernels(batch: int, seed: int) -> torch.Tensor:
    """[batch,21,21] kernels as D1 draws them (mixed families, sinc filters among them)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([d.random_blur_kernel(d.KernelParams(sinc_prob=0.5), generator) for _ in range(batch)])


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 40, 40), (4, 57, 83), (8, 96, 64)])
def test_blur_is_basicsr_filter2d_per_image(batch: int, height: int, width: int) -> None:
    image = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(batch))
    kernels = drawn_kernels(batch, batch)
    assert torch.equal(d.blur(image, kernels), basicsr_filter2d(image, kernels))


def test_blur_with_one_kernel_for_the_batch_is_basicsr_filter2d() -> None:
    image = torch.rand(3, 3, 50, 61, generator=torch.Generator().manual_seed(0))
    kernel = drawn_kernels(1, 5)
    assert torch.equal(d.blur(image, kernel[0]), basicsr_filter2d(image, kernel))
    assert torch.equal(d.blur(image, kernel), basicsr_filter2d(image, kernel))


def test_blur_of_a_jpeg_output_is_basicsr_filter2d() -> None:
    """The JPEG step returns channels-last tensors; the blur reads them as the same NCHW values."""
    image = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    compressed = jpeg_compress(image, torch.tensor([40.0, 80.0]))
    kernels = drawn_kernels(2, 9)
    blurred = d.blur(compressed, kernels)
    assert torch.equal(blurred, basicsr_filter2d(compressed.contiguous(), kernels)) and blurred.is_contiguous()
