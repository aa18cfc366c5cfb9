"""Canvases for outpainting and pasting an inpainting result back onto its original.

Images are `[B, H, W, C]` float tensors in [0, 1]; masks are `[B, H, W]` (or `[H, W]`) floats in [0, 1],
1 where new content is painted (the ComfyUI conventions, which the library shares without importing ComfyUI).

Feathering shapes, chosen once for the whole module:
- `outpaint_canvas` ramps the mask into the original image near the seam with ImagePadForOutpaint's quadratic
  curve, shifted so it never reaches the new area's 1: the pixel at distance d (1 = touching the new area)
  gets ((F + 1 - d) / (F + 1))², so F pixels of the original carry a mask strictly between 0 and 1.
- `paste_back` blends linearly inside the masked region only: a masked pixel at Chebyshev distance d
  (1 = touching an unmasked pixel) takes the generated pixel with weight mask × d / (F + 1) while d <= F,
  so every unmasked pixel stays exactly the original's.
"""

from __future__ import annotations

import torch

from ..images import as_mask_batch, check_mask_size

SD15_LATENT_SCALE = 8  # SD1.5's VAE maps 8x8 pixels to one latent


def _check_image(image: torch.Tensor, name: str) -> None:
    if image.dim() != 4:
        raise ValueError(f"the {name} must be [B, H, W, C], got shape {list(image.shape)}: pass an IMAGE batch")


def _check_not_negative(**values: int) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} is {value} but must be 0 or more pixels: give the number of pixels to add "
                             "(crop the image first to remove pixels)")


def _grow_to_multiple(size: int, before: int, after: int, multiple: int) -> tuple[int, int]:
    """Padding (before, after) grown so size + before + after is a multiple of `multiple`.

    The extra pixels go after the image (right/bottom) unless only the side before it (left/top) is padded:
    then they join that padding, so rounding never adds a thin strip along an edge the user left untouched.
    """
    extra = -(size + before + after) % multiple
    if after > 0 or before == 0:
        return before, after + extra
    return before + extra, after


def outpaint_canvas(image: torch.Tensor, left: int, top: int, right: int, bottom: int, feathering: int = 0,
                    multiple: int = SD15_LATENT_SCALE, fill: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The image padded for outpainting, and the mask of the area to paint.

    image: [B, H, W, C] float in [0, 1]. left/top/right/bottom: pixels to add on each side (>= 0).
    feathering: pixels of the original, next to each padded side, whose mask ramps from near 1 down to 0
    (see the module docstring for the curve) so the seam is repainted softly. multiple: width and height are
    grown to multiples of it (8: SD1.5 latents), see `_grow_to_multiple` for which side grows. fill: the value
    of the new pixels (0.5 gray, the neutral value InpaintModelConditioning also gives masked pixels).
    Returns (canvas [B, H', W', C], mask [B, H', W'] float: 1 on the new area, 0 on the original beyond the ramp).
    """
    _check_image(image, "image")
    _check_not_negative(left=left, top=top, right=right, bottom=bottom, feathering=feathering)
    if multiple < 1:
        raise ValueError(f"multiple is {multiple} but must be 1 or more: use 8 for SD1.5 (1 turns rounding off)")
    batch, height, width, channels = image.shape
    left, right = _grow_to_multiple(width, left, right, multiple)
    top, bottom = _grow_to_multiple(height, top, bottom, multiple)
    new_height, new_width = height + top + bottom, width + left + right

    canvas = torch.full((batch, new_height, new_width, channels), fill, dtype=image.dtype, device=image.device)
    canvas[:, top:top + height, left:left + width] = image
    mask = torch.ones((batch, new_height, new_width), dtype=torch.float32, device=image.device)
    mask[:, top:top + height, left:left + width] = _seam_ramp(height, width, (left, top, right, bottom), feathering,
                                                              image.device)
    return canvas, mask


def _seam_ramp(height: int, width: int, padding: tuple[int, int, int, int], feathering: int,
               device: torch.device) -> torch.Tensor:
    """[H, W] mask over the original: ((F + 1 - d) / (F + 1))² within F pixels of a padded side, else 0."""
    if feathering == 0:
        return torch.zeros((height, width), device=device)
    left, top, right, bottom = padding
    far = float("inf")
    rows = torch.arange(height, dtype=torch.float32, device=device)
    cols = torch.arange(width, dtype=torch.float32, device=device)
    # Distance from each padded side, 1 for the row/column touching it; unpadded sides are no seam.
    from_top = rows + 1 if top > 0 else torch.full_like(rows, far)
    from_bottom = height - rows if bottom > 0 else torch.full_like(rows, far)
    from_left = cols + 1 if left > 0 else torch.full_like(cols, far)
    from_right = width - cols if right > 0 else torch.full_like(cols, far)
    distance = torch.minimum(torch.minimum(from_top, from_bottom)[:, None], torch.minimum(from_left, from_right)[None])
    return ((feathering + 1 - distance).clamp(min=0) / (feathering + 1)) ** 2


def _size(tensor: torch.Tensor) -> str:
    return f"{tensor.shape[-2]}x{tensor.shape[-3]}" if tensor.dim() == 4 else f"{tensor.shape[-1]}x{tensor.shape[-2]}"


def _common_batch(**batches: int) -> int:
    sizes = set(batches.values()) - {1}
    if len(sizes) > 1:
        listed = ", ".join(f"{name} {size}" for name, size in batches.items())
        raise ValueError(f"batch sizes differ ({listed}): each must be 1 or the same number, so one original or mask "
                         "can serve many generated images")
    return sizes.pop() if sizes else 1


def _blend_weight(mask: torch.Tensor, feathering: int) -> torch.Tensor:
    """[B, H, W] weight of the generated image: the mask, scaled by d / (F + 1) within F pixels of its border."""
    weight = mask.float().clamp(0, 1)
    if feathering == 0:
        return weight
    # Dilating the unmasked area k times reaches masked pixels at Chebyshev distance <= k; summing the
    # F dilations counts F + 1 - d for a pixel at distance d <= F, and 0 beyond.
    reached = weight == 0
    reach_count = torch.zeros(weight.shape, dtype=torch.int32, device=weight.device)
    for _ in range(feathering):
        reached = _dilate_3x3(reached)
        reach_count += reached
    return weight * (1 - reach_count / (feathering + 1))


def _dilate_3x3(reached: torch.Tensor) -> torch.Tensor:
    """[B, H, W] bool grown by one pixel in all eight directions (as two 1-D passes: cheaper than max_pool2d)."""
    across = reached.clone()
    across[..., 1:] |= reached[..., :-1]
    across[..., :-1] |= reached[..., 1:]
    grown = across.clone()
    grown[..., 1:, :] |= across[..., :-1, :]
    grown[..., :-1, :] |= across[..., 1:, :]
    return grown


def paste_back_notes(mask: torch.Tensor) -> list[str]:
    """What pasting with `mask` ([H, W] or [B, H, W] in [0, 1]) does in vain, one line per case: a mask of all 0
    keeps the original everywhere (the generated image is not used), a mask of all 1 takes the generated image
    everywhere (nothing of the original is kept). Empty when every mask marks part of its image."""
    masks = as_mask_batch(mask)
    count = masks.shape[0]
    cases = (((masks == 0), "all 0: the output is the original, the generated image is not used"),
             ((masks >= 1), "all 1: the output is the generated image, nothing of the original is kept"))
    notes = []
    for where, meaning in cases:
        which = [index for index in range(count) if bool(where[index].all())]
        if count == 1 and which:
            notes.append(f"the mask is {meaning}")
        elif which:
            listed = ", ".join(str(index + 1) for index in which)
            notes.append(f"mask{'s' * (len(which) > 1)} {listed} of {count} {'are' if len(which) > 1 else 'is'} "
                         f"{meaning}")
    return notes


def paste_back(original: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor,
               feathering: int = 0) -> torch.Tensor:
    """The generated image composited onto the original: unmasked pixels exactly the original's.

    original, generated: [B, H, W, C] float in [0, 1], the same size; mask: [B, H, W] or [H, W] (1 = generated).
    Batches broadcast: each of original, generated and mask has batch 1 or the common batch N.
    feathering: pixels inside the masked region, along its border, over which the generated image fades in
    linearly (see the module docstring); 0 keeps the mask as given.
    Returns [N, H, W, C] in the original's dtype and device: the original bit for bit where the mask is 0, the
    generated image bit for bit where the blend weight is 1, and original + (generated - original) × weight between.
    """
    _check_image(original, "original image")
    _check_image(generated, "generated image")
    _check_not_negative(feathering=feathering)
    mask = as_mask_batch(mask)
    if generated.shape[1:3] != original.shape[1:3]:
        raise ValueError(f"the generated image is {_size(generated)} but the original is {_size(original)}: decode at "
                         "the original size, or resize the generated image to it before pasting back")
    if generated.shape[3] != original.shape[3]:
        raise ValueError(f"the generated image has {generated.shape[3]} channels but the original has "
                         f"{original.shape[3]}: convert both to RGB")
    check_mask_size(tuple(mask.shape), (original.shape[2], original.shape[1]), image_name="original image")
    batch = _common_batch(original=original.shape[0], generated=generated.shape[0], mask=mask.shape[0])
    weight = _blend_weight(mask.to(original.device), feathering).unsqueeze(-1)
    generated = generated.to(device=original.device, dtype=original.dtype)
    shape = (batch, *original.shape[1:])
    original, generated, weight = original.expand(shape), generated.expand(shape), weight.expand(*shape[:3], 1)
    blended = torch.lerp(original, generated, weight.to(original.dtype))
    blended = torch.where(weight == 1, generated, blended)
    return torch.where(weight == 0, original, blended)
