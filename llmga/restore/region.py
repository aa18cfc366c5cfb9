"""The region DiffRIR regenerates: the mask binarised as the official inference does, grown and feathered on request,
and what an empty or full mask means for the result.

Masks are [B,H,W] floats, >= MASK_THRESHOLD (white) where the picture was generated. Growing runs in passes that call
`check()` between them, so a large mask grown by many pixels still answers Cancel within a second.
"""

from __future__ import annotations

from kornia.morphology import dilation, erosion
from torch import Tensor

from .dirformer import Check, never_stop

MASK_THRESHOLD = 0.5  # inference_diffrir.py: mask < 0.5 -> 0, mask >= 0.5 -> 1
DILATE_STEP = 4  # px grown per dilation pass, so one pass over a 4096² mask stays well under a second


def _which_masks(indices: list[int], count: int, verb: str) -> str:
    """"the mask <verb>s" for a batch of one, else "masks 1, 3 of 4 <verb>" (1-based)."""
    if count == 1:
        return f"the mask {verb}s"
    if len(indices) == 1:
        return f"mask {indices[0] + 1} of {count} {verb}s"
    return f"masks {', '.join(str(index + 1) for index in indices)} of {count} {verb}"


def mask_notes(mask: Tensor) -> list[str]:
    """What restoring with `mask` ([H,W] or [B,H,W], >= 0.5 where generated) does in vain, one line per case: a mask
    that marks no pixel (the output is the reference unchanged) or every pixel (no pixel of the reference is kept, so
    DiffRIR has nothing to match the generated picture to). Empty when every mask marks part of its picture."""
    marked = (mask[None] if mask.ndim == 2 else mask) >= MASK_THRESHOLD
    count = marked.shape[0]
    empty = [index for index in range(count) if not marked[index].any()]
    full = [index for index in range(count) if marked[index].all()]
    notes = []
    if empty:
        notes.append(f"{_which_masks(empty, count, 'mark')} no pixel to restore: the output is the reference unchanged "
                     "(paint the generated region white)")
    if full:
        notes.append(f"{_which_masks(full, count, 'cover')} the whole picture: no pixel of the reference is kept, so "
                     "DiffRIR has nothing to match the generated picture to (mask only the generated region)")
    return notes


def _dilate(mask: Tensor, radius: int, check: Check) -> Tensor:
    """[B,1,H,W] {0,1} grown by `radius` px (a square, as a column then a row; outside the image counts as empty), in
    passes of at most DILATE_STEP px (square dilations add up exactly), `check()` before each."""
    while radius > 0:
        size = 2 * min(radius, DILATE_STEP) + 1
        for kernel in (mask.new_ones(size, 1), mask.new_ones(1, size)):
            check()
            mask = dilation(mask, kernel)
        radius -= DILATE_STEP
    return mask


def grow_mask(mask: Tensor, dilate: int = 0, feather: int = 0,
              check: Check = never_stop) -> tuple[Tensor, Tensor]:
    """mask [B,H,W] in {0,1} -> (region, blend), both [B,H,W].

    region {0,1}: the mask grown by `dilate` px (square), the area the network regenerates (the reference is hidden
    from it there). blend in [0,1]: the compositing weight of the network output, 1 deep inside the region, falling
    linearly over its outermost `feather` px to 1/(feather+1) at its edge, 0 outside it (image borders do not count as
    edges, so outpainted bands stay fully restored). Outside the region the result is the reference exactly. With
    dilate >= feather the original mask keeps weight 1. dilate = feather = 0 gives the official mask for both.
    check: called before each pass over the mask; raise from it to cancel.
    """
    if dilate < 0 or feather < 0:
        raise ValueError(f"dilate is {dilate} and feather is {feather}; both are pixel counts, 0 or more")
    region = _dilate(mask[:, None].float(), dilate, check)
    blend, inside = region, region
    for _ in range(feather):
        check()
        inside = erosion(inside, inside.new_ones(3, 3))  # one more pixel off the edge (outside the image: ignored)
        blend = blend + inside
    return region[:, 0], (blend / (feather + 1))[:, 0]
