"""Images and masks as every part of the pack reads them: opening files, PIL <-> tensor, and the one mask check.

Conventions (ComfyUI's, shared without importing ComfyUI):
- an image tensor is [B, H, W, C] float in [0, 1] (C = 3, RGB), a PIL image is 8-bit;
- a mask is [H, W] (numpy or torch) or [B, H, W] (torch) float in [0, 1], or a grayscale PIL image, and white
  (1) marks the pixels that are generated: painted by SD, seen black by the assistant, restored by DiffRIR.

Every mask that enters the library goes through `check_mask_size` (and, where an empty mask is an error,
`check_mask_marks`), so a wrong mask reads the same everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# The largest picture read (2**27 = 134 M pixels, e.g. 16384 x 8192): far past what SD or DiffRIR work on, and below
# the 179 M pixels at which PIL refuses a file as a decompression bomb, so the error names this limit.
MAX_IMAGE_PIXELS = 2**27


class ImageInputError(ValueError):
    """An image or mask that cannot be used; the message says what is wrong and what to do."""


def open_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """The image file at `path`, fully read and converted to `mode` ("RGB", or "L" for masks).

    Raises ImageInputError for a missing, empty, truncated or unreadable file and for one past MAX_IMAGE_PIXELS.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"{path} does not exist: give the path of an image file")
    if path.stat().st_size == 0:
        raise ImageInputError(f"{path} is empty (0 bytes): give a PNG or JPEG file")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ImageInputError(f"{path} is {image.width}x{image.height} pixels, more than the "
                                      f"{MAX_IMAGE_PIXELS:,}-pixel limit: scale it down first")
            return image.convert(mode)
    except Image.DecompressionBombError as error:
        raise ImageInputError(f"{path} is larger than the {MAX_IMAGE_PIXELS:,}-pixel limit ({error}): scale it "
                              "down first") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageInputError):
            raise
        raise ImageInputError(f"{path} could not be read as an image ({error}): give a complete PNG or JPEG "
                              "file") from error


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> [1, H, W, 3] float32 in [0, 1] (RGB)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).unsqueeze(0)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """[H, W, C] or [1, H, W, C] float in [0, 1] -> 8-bit PIL image (RGB; alpha dropped), rounded to the nearest
    level as BasicSR's tensor2img does: exact for values that came from 8-bit pixels."""
    pixels = image.squeeze(0)[..., :3].detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(pixels.numpy())


def pil_to_mask(mask: Image.Image) -> np.ndarray:
    """A mask image -> [H, W] float32 in [0, 1], read as grayscale (white = 1)."""
    return np.asarray(mask.convert("L"), dtype=np.float32) / 255.0


def mask_to_pil(mask: np.ndarray | torch.Tensor) -> Image.Image:
    """[H, W] float in [0, 1] -> 8-bit grayscale PIL image (white = 1)."""
    array = mask.detach().float().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask, np.float32)
    return Image.fromarray((array.clip(0, 1) * 255).round().astype(np.uint8), mode="L")


def _size_text(width: int, height: int) -> str:
    return f"{width}x{height}"


def check_mask_size(mask_shape: tuple[int, ...], image_size: tuple[int, int], *, image_name: str = "image") -> None:
    """Raise ImageInputError unless a mask of shape [..., H, W] fits an image of `image_size` (width, height)."""
    height, width = mask_shape[-2:]
    if (width, height) != tuple(image_size):
        raise ImageInputError(f"the mask is {_size_text(width, height)} but the {image_name} is "
                              f"{_size_text(*image_size)}: use the mask made for this {image_name} (the same size) "
                              "or resize it")


def check_mask_marks(mask: np.ndarray | torch.Tensor, threshold: float, *, action: str = "generate") -> None:
    """Raise ImageInputError when no pixel of `mask` reaches `threshold` (nothing would be generated)."""
    if not bool((mask >= threshold).any()):
        raise ImageInputError(f"the mask marks no pixel to {action} (all of it is below {threshold:.0%} gray): mark "
                              f"the area to {action} in white")


def _shape_error(shape: tuple[int, ...] | list[int]) -> ImageInputError:
    return ImageInputError(f"a mask must be one channel, [H, W] or [B, H, W], got shape {list(shape)}: pass a MASK, "
                           "not an IMAGE (convert an image with an image-to-mask step first)")


def as_mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """A mask tensor as [B, H, W]: [H, W] becomes a batch of one; other shapes raise ImageInputError."""
    if mask.dim() == 2:
        return mask.unsqueeze(0)
    if mask.dim() != 3:
        raise _shape_error(mask.shape)
    return mask


def mask_array(mask: np.ndarray | torch.Tensor | Image.Image, image_size: tuple[int, int], *,
               threshold: float | None = None, action: str = "generate", image_name: str = "image") -> np.ndarray:
    """A mask of any accepted form -> [H, W] float32 in [0, 1], checked against `image_size` (width, height).

    mask: a grayscale PIL image, an [H, W] array, or a [1, H, W] / [B, H, W] tensor (its first mask is taken).
    threshold: when given, at least one pixel must reach it (`check_mask_marks`).
    """
    if isinstance(mask, Image.Image):
        array = pil_to_mask(mask)
    elif isinstance(mask, torch.Tensor):
        array = as_mask_batch(mask)[0].detach().float().cpu().numpy()
    else:
        array = np.asarray(mask, dtype=np.float32)
    if array.ndim != 2:
        raise _shape_error(array.shape)
    check_mask_size(array.shape, image_size, image_name=image_name)
    if threshold is not None:
        check_mask_marks(array, threshold, action=action)
    return array.clip(0, 1).astype(np.float32, copy=False)
