"""Images as the LLMGA assistant saw them in training and in the official CLIs.

The official inference CLIs stretch the picture to a square of its longer side (PIL `ANTIALIAS`, i.e. LANCZOS),
then run `CLIPImageProcessor.preprocess` (shortest edge to 336 with bicubic resampling, centre crop 336 — a
no-op on a square —, rescale to [0, 1], normalise with the CLIP mean/std). Nothing is padded or cropped away.
For inpainting and outpainting the model sees the picture with the masked pixels set to black
(`image * (1 - mask)`, the official mask threshold being 125/255).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..images import check_mask_size

# openai/clip-vit-large-patch14-336 preprocessor_config.json (the vision tower of every released checkpoint).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 336
# cli-sd15-inpainting.py: mask pixels >= 125 (of 255) are masked.
MASK_THRESHOLD = 125 / 255


@dataclass(frozen=True)
class ImageProcessing:
    """What the vision tower's `preprocessor_config.json` says (CLIPImageProcessor fields)."""

    size: int = CLIP_SIZE
    crop_size: int = CLIP_SIZE
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: int = Image.Resampling.BICUBIC

    @classmethod
    def from_folder(cls, folder: Path) -> ImageProcessing:
        """Read `folder/preprocessor_config.json`; the CLIP ViT-L/14-336 values when the file is absent."""
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            return cls()
        config = json.loads(path.read_text())
        size = config.get("size", CLIP_SIZE)
        crop = config.get("crop_size", CLIP_SIZE)
        return cls(
            size=size.get("shortest_edge", CLIP_SIZE) if isinstance(size, dict) else int(size),
            crop_size=crop.get("height", CLIP_SIZE) if isinstance(crop, dict) else int(crop),
            mean=tuple(config.get("image_mean", CLIP_MEAN)),
            std=tuple(config.get("image_std", CLIP_STD)),
            resample=int(config.get("resample", Image.Resampling.BICUBIC)),
        )


def stretch_to_square(image: Image.Image) -> Image.Image:
    """Resize to a square of the longer side, as the official CLIs do (aspect ratio is not kept)."""
    side = max(image.size)
    if image.size == (side, side):
        return image
    return image.resize((side, side), Image.Resampling.LANCZOS)


def black_out_mask(image: Image.Image, mask: np.ndarray, threshold: float = MASK_THRESHOLD) -> Image.Image:
    """The picture with masked pixels set to black, as the model saw inpainting/outpainting inputs.

    mask: [H, W] floats in [0, 1] (1 = to be painted), the same size as the image.
    """
    rgb = np.asarray(image.convert("RGB"))
    check_mask_size(mask.shape, image.size)
    keep = (mask < threshold)[:, :, None]
    return Image.fromarray((rgb * keep).astype(np.uint8))


def pixel_values(image: Image.Image, processing: ImageProcessing = ImageProcessing(), *,
                 stretch: bool = True) -> torch.Tensor:
    """[3, crop, crop] float32 tensor for the vision tower, from a PIL image of any size and mode.

    stretch: stretch to a square first (the official CLIs and fine-tuning data); False keeps the aspect ratio and
    centre-crops, the plain CLIP processor that the official projector pretraining fell back to."""
    square = stretch_to_square(image.convert("RGB")) if stretch else image.convert("RGB")
    width, height = square.size
    scale = processing.size / min(width, height)
    resized = square.resize((round(width * scale), round(height * scale)), processing.resample)
    left = (resized.width - processing.crop_size) // 2
    top = (resized.height - processing.crop_size) // 2
    cropped = resized.crop((left, top, left + processing.crop_size, top + processing.crop_size))
    array = np.asarray(cropped, dtype=np.float32) / 255.0
    array = (array - np.asarray(processing.mean, dtype=np.float32)) / np.asarray(processing.std, dtype=np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())
