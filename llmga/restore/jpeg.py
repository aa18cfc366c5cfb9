"""Batched JPEG compression in torch with a float quality per image, for D1 on the training device.

The arithmetic of BasicSR's DiffJPEG with `differentiable=False` (basicsr/utils/diffjpeg.py, after mlomnitz/DiffJPEG),
which Real-ESRGAN and DiffRIR run: pad bottom/right with zeros to multiples of 16; RGB·255 -> YCbCr (JFIF, chroma
+128); 2×2 average of the chroma; 8×8 blocks; DCT-II of (block − 128); divide by the quantisation table times
factor(quality) and round; multiply back; inverse DCT + 128; nearest-neighbour chroma upsampling; YCbCr -> RGB; clamp
to [0, 255]; /255; crop. As in DiffJPEG the decoded pixels stay floats (no 8-bit rounding) and the standard tables are
applied transposed (standard entry [i][j] scales horizontal frequency i, vertical frequency j; the tables are nearly
symmetric). Written here (not PIL) because it runs batched on the GPU and takes non-integer qualities, as DiffJPEG does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

BLOCK = 8
PAD_MULTIPLE = 16  # DiffJPEG: 8×8 blocks of the 2×-subsampled chroma
# ITU T.81 Annex K tables in natural order (rows: vertical frequency), as listed in diffjpeg.py before its `.T`.
LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55), (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62), (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_CORNER = ((17, 18, 24, 47), (18, 21, 26, 66), (24, 26, 56, 99), (47, 66, 99, 99))  # the rest is 99
RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
YCBCR_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))
CHROMA_OFFSET = 128.0


def quality_to_factor(quality: Tensor) -> Tensor:
    """libjpeg's quality scaling as DiffJPEG computes it: 50/q below 50, else 2 − q/50 (quality in (0, 100])."""
    return torch.where(quality < 50, 5000.0 / quality, 200.0 - 2.0 * quality) / 100.0


def _tables(device: torch.device) -> tuple[Tensor, Tensor]:
    luma = torch.tensor(LUMA_TABLE, dtype=torch.float32, device=device).T
    chroma = torch.full((BLOCK, BLOCK), 99.0, device=device)
    chroma[:4, :4] = torch.tensor(CHROMA_CORNER, dtype=torch.float32, device=device).T
    return luma, chroma


def _dct_basis(device: torch.device) -> tuple[Tensor, Tensor]:
    """D [8,8] with D[u, x] = cos((2x+1)uπ/16), and the normalisation α_u α_v [8,8] (α_0 = 1/√2, else 1)."""
    index = torch.arange(BLOCK, dtype=torch.float32, device=device)
    basis = torch.cos((2 * index[None, :] + 1) * index[:, None] * math.pi / 16)
    alpha = torch.ones(BLOCK, device=device)
    alpha[0] = 1 / math.sqrt(2)
    return basis, alpha[:, None] * alpha[None, :]


def _code_channel(channel: Tensor, table: Tensor, factor: Tensor) -> Tensor:
    """Encode and decode one channel [B,H,W] (0-255 scale, H and W multiples of 8): blockwise DCT, quantise with
    table [8,8] × factor [B], dequantise, inverse DCT."""
    blocks = rearrange(channel, "b (h y) (w x) -> b h w y x", y=BLOCK, x=BLOCK)
    basis, alpha = _dct_basis(channel.device)
    coefficients = 0.25 * alpha * (basis @ (blocks - 128.0) @ basis.T)
    step = table * factor.view(-1, 1, 1, 1, 1)
    dequantised = torch.round(coefficients / step) * step
    decoded = 0.25 * (basis.T @ (alpha * dequantised) @ basis) + 128.0
    return rearrange(decoded, "b h w y x -> b (h y) (w x)")


# Not kornia's jpeg_codec_differentiable or rgb_to_ycbcr: a cubic rounding surrogate and rounded chroma coefficients.
def jpeg_compress(image: Tensor, quality: Tensor | float) -> Tensor:
    """JPEG-compress and decode: image [B,3,H,W] RGB in [0,1], quality a float or [B] (30-95 in DiffRIR) ->
    [B,3,H,W] float32 in [0,1]."""
    b, _, h, w = image.shape
    quality = torch.as_tensor(quality, dtype=torch.float32, device=image.device).expand(b)
    factor = quality_to_factor(quality)
    padded = F.pad(image.float(), (0, -w % PAD_MULTIPLE, 0, -h % PAD_MULTIPLE))
    ycbcr = torch.einsum("bchw,dc->bdhw", padded * 255.0, padded.new_tensor(RGB_TO_YCBCR))
    luma_table, chroma_table = _tables(image.device)
    y = _code_channel(ycbcr[:, 0], luma_table, factor)
    chroma = F.avg_pool2d(ycbcr[:, 1:] + CHROMA_OFFSET, kernel_size=2)
    cb, cr = (_code_channel(chroma[:, i], chroma_table, factor) for i in range(2))
    chroma = repeat(torch.stack([cb, cr], 1), "b c h w -> b c (h 2) (w 2)") - CHROMA_OFFSET
    rgb = torch.einsum("bchw,dc->bdhw", torch.cat([y[:, None], chroma], 1), padded.new_tensor(YCBCR_TO_RGB))
    return (rgb.clamp(0, 255) / 255.0)[:, :, :h, :w]
