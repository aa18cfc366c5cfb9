"""Seeded inpainting/outpainting masks: LaMa-style brush strokes, boxes and border bands, mixed as the official does.

The training mixes, each with the parameters of its source (all three repositories carry LaMa's `make_mask.py`
generators):

- `MLLM_MASKS`, stage-1 MLLM inpainting data. LLMGA `llmga/llava/masks/make_mask.py` `get_mask_generator()`:
  strokes 0.25, boxes 0.25, outpainting 0.5 with bands of 35-40% of the side. `is_outpaint` picks the instruction list.
- `SD_INPAINT_MASKS`, stage-2 SD1.5 inpainting UNet. LLMGA `llmga/diffusers/my_datasets/dataset_inpainting.py`
  (`InpaintingTextTrainDataset` mask_gen_kwargs): strokes 0.25, boxes 0.25, outpainting 0.5 with 25-40% bands, then
  25% of the samples get an all-ones mask (the dataset's hard-coded `random.random() < 0.25`).
- `DIFFRIR_MASKS`, DiffRIR training. DiffRIR `options/train_DiffRIRS*_x1.yml` `mask_kwargs` with `masks/make_mask.py`:
  strokes 0.35, boxes 0.30, outpainting 0.35 with 15-40% bands.

The evaluation mixes (`EVAL_MASKS`, drawn by `llmga.eval.inpaint` on 512x512 crops with LaMa's 50% area cap):
- `LAMA_THIN`, `LAMA_MEDIUM`, `LAMA_THICK`: LaMa `configs/data_gen/random_{thin,medium,thick}_512.yaml` (as vendored
  in DiffIR-inpainting), the "narrow" (thin), medium and "wide" (thick) test masks of the LaMa protocol. LaMa's
  `MixedMaskGenerator` normalises `irregular_proba 1` and `box_proba 0.3` into one choice per mask, as here.
- `OUTPAINT_EVAL`: border bands only, 15-40% of the side (DiffRIR's outpainting spec; LLMGA's own outpainting masks are
  not published).

The arithmetic is the official one, which differs from the configured numbers in two places:
- strokes: `times = randint(min_times, max_times + 2)`, i.e. 1-5 strokes for `max_times 4` (the generator adds 1 to
  max_times before `make_random_irregular_mask` adds another); each stroke has 1-5 segments, angle `0.01 + randint(4)`
  radians (mirrored as `2*3.1415926 - angle` on even strokes), length `10 + randint(max_len)`, width
  `5 + randint(max_width)`; the segment end is truncated to int and clipped to [0, W] x [0, H];
- boxes: sides `randint(35, 161)`, i.e. 35-160 (the generator passes `max_size + 1`), at most `H - 2*margin` /
  `W - 2*margin`; 1-4 boxes; corners `randint(margin, W - margin - side + 1)`.
Bands: each side is drawn as `randint(int(lo*n), int(hi*n)) / n` (top and bottom with n = W, left and right with
n = H, then scaled by the other side: the official quirk, harmless on squares), applied with p=0.5 each in the order
left, top, right, bottom; if none was applied, one side is chosen uniformly.

Every draw goes through one `numpy.random.RandomState`, with the same calls in the same order as the official code
makes on the global `np.random`, so a generator seeded like `np.random.seed(s)` draws the same shapes: box and band
masks come out identical to the official ones. Strokes are rasterised here (numpy, no OpenCV) the way `cv2.line`
draws a thick line (band plus round caps): on the three mixes the stroke masks overlap OpenCV's with a mean IoU of
0.998 (only border pixels differ). The SD mix draws its full-mask coin from the same
generator (the official dataset uses Python's `random` for it) and, like the official, first spends one draw on the
disabled `blank_mask_proba = 0` coin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("irregular", "box", "outpaint", "full")


@dataclass(frozen=True)
class StrokeSpec:
    """LaMa `RandomIrregularMaskGenerator` kwargs; `times` is (min_times, max_times) as configured (the draw allows
    one more stroke)."""

    max_angle: int = 4
    max_len: int = 240
    max_width: int = 100
    times: tuple[int, int] = (1, 4)


@dataclass(frozen=True)
class BoxSpec:
    """LaMa `RandomRectangleMaskGenerator` kwargs: `margin`, `sides` (bbox_min_size, bbox_max_size) as configured
    (sides reach the maximum inclusively) and `times` (min_times, max_times)."""

    margin: int = 10
    sides: tuple[int, int] = (35, 160)
    times: tuple[int, int] = (1, 4)


@dataclass(frozen=True)
class BandSpec:
    """LaMa `OutpaintingMaskGenerator` kwargs: band width as a fraction of the side, per-side probabilities
    in the order left, top, right, bottom."""

    min_fraction: float
    max_fraction: float
    side_probs: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.5)


@dataclass(frozen=True)
class MaskMix:
    """A `MixedMaskGenerator` configuration: kind probabilities (normalised as float32, as the official does),
    the kinds' parameters, the probability of replacing the result by an all-ones mask, and whether the official
    spends a draw on a disabled blank-mask coin first (the stage-2 SD generator does)."""

    name: str
    irregular_p: float
    box_p: float
    outpaint_p: float
    strokes: StrokeSpec
    boxes: BoxSpec
    bands: BandSpec
    full_p: float = 0.0
    blank_coin: bool = False


# llmga/llava/masks/make_mask.py get_mask_generator() defaults.
MLLM_MASKS = MaskMix("llmga_mllm", 0.25, 0.25, 0.5, StrokeSpec(), BoxSpec(), BandSpec(0.35, 0.4))
# llmga/diffusers/my_datasets/dataset_inpainting.py: mask_gen_kwargs, blank_mask_proba 0, then 25% all-ones masks.
SD_INPAINT_MASKS = MaskMix("llmga_sd_inpaint", 0.25, 0.25, 0.5, StrokeSpec(), BoxSpec(), BandSpec(0.25, 0.4),
                           full_p=0.25, blank_coin=True)
# DiffRIR options/train_DiffRIRS1_x1.yml, train_DiffRIRS2_x1.yml, train_DiffRIRS2_GAN_x1*.yml: mask_kwargs.
DIFFRIR_MASKS = MaskMix("diffrir", 0.35, 0.30, 0.35, StrokeSpec(), BoxSpec(), BandSpec(0.15, 0.4))

MIXES = {mix.name: mix for mix in (MLLM_MASKS, SD_INPAINT_MASKS, DIFFRIR_MASKS)}

# LaMa configs/data_gen/random_thin_512.yaml: strokes only, 4-70 strokes, width <= 20, length <= 100.
LAMA_THIN = MaskMix("thin", 1.0, 0.0, 0.0,
                    StrokeSpec(max_angle=4, max_len=100, max_width=20, times=(4, 70)),
                    BoxSpec(), BandSpec(0.0, 0.0))
# random_medium_512.yaml: strokes 4-10 (width <= 100, length <= 200), boxes p=0.3 (30-150 px, 1-5 boxes).
LAMA_MEDIUM = MaskMix("medium", 1.0, 0.3, 0.0,
                      StrokeSpec(max_angle=4, max_len=200, max_width=100, times=(4, 10)),
                      BoxSpec(margin=10, sides=(30, 150), times=(1, 5)), BandSpec(0.0, 0.0))
# random_thick_512.yaml: strokes 1-5 (width <= 250, length <= 450), boxes p=0.3 (30-300 px, 1-4 boxes).
LAMA_THICK = MaskMix("thick", 1.0, 0.3, 0.0,
                     StrokeSpec(max_angle=4, max_len=450, max_width=250, times=(1, 5)),
                     BoxSpec(margin=10, sides=(30, 300), times=(1, 4)), BandSpec(0.0, 0.0))
# DiffRIR masks/make_mask.py OutpaintingMaskGenerator as in its ymls: 15-40% bands (LLMGA's are unpublished).
OUTPAINT_EVAL = MaskMix("outpaint", 0.0, 0.0, 1.0, StrokeSpec(), BoxSpec(), BandSpec(0.15, 0.4))
# The mask sets of the inpainting evaluation by their table names: LaMa's narrow = thin, wide = thick.
EVAL_MASKS = {"narrow": LAMA_THIN, "medium": LAMA_MEDIUM, "wide": LAMA_THICK, "outpaint": OUTPAINT_EVAL}


@dataclass(frozen=True)
class MaskDraw:
    """One drawn mask. mask: [H, W] float32 in {0, 1}, 1 = to be painted. kind: one of KINDS."""

    mask: np.ndarray
    kind: str

    @property
    def is_outpaint(self) -> bool:
        """True iff the outpainting generator made it (what the stage-1 inpainting data keys its instruction on)."""
        return self.kind == "outpaint"


def _draw_thick_segment(mask: np.ndarray, x0: int, y0: int, x1: int, y1: int, width: int) -> None:
    """Set to 1 the pixels `cv2.line(mask, (x0, y0), (x1, y1), 1, width)` (LINE_8) sets, approximately.

    OpenCV fills a band of half-width ceil(width/2) around the segment (its scanline fill and 8-connected edges
    reach about half a pixel further along the dominant axis) and a filled disc of that radius at each end; measured
    against OpenCV 5 on random segments, about 1% of a stroke's pixels differ, all on its border."""
    radius = (width + 1) // 2
    reach = radius + 1
    height, size_x = mask.shape
    left, right = max(min(x0, x1) - reach, 0), min(max(x0, x1) + reach, size_x - 1)
    top, bottom = max(min(y0, y1) - reach, 0), min(max(y0, y1) + reach, height - 1)
    if left > right or top > bottom:
        return
    ys, xs = np.mgrid[top:bottom + 1, left:right + 1].astype(np.float64)
    inside = ((xs - x0) ** 2 + (ys - y0) ** 2 <= radius * radius) | ((xs - x1) ** 2 + (ys - y1) ** 2 <= radius * radius)
    length = float(np.hypot(x1 - x0, y1 - y0))
    if length > 0:
        cos, sin = (x1 - x0) / length, (y1 - y0) / length
        slack = 0.5 * max(abs(cos), abs(sin))
        along = (xs - x0) * cos + (ys - y0) * sin
        across = np.abs((ys - y0) * cos - (xs - x0) * sin)
        inside |= (along >= -slack) & (along <= length + slack) & (across <= radius + slack)
    mask[top:bottom + 1, left:right + 1][inside] = 1.0


def irregular_mask(rng: np.random.RandomState, height: int, width: int, spec: StrokeSpec = StrokeSpec()) -> np.ndarray:
    """LaMa brush strokes (`make_random_irregular_mask`, LINE draw method). Returns [H, W] float32 in {0, 1}."""
    mask = np.zeros((height, width), np.float32)
    min_times, max_times = spec.times
    times = rng.randint(min_times, max_times + 2)  # generator's max_times + 1, then randint's + 1
    for stroke in range(times):
        start_x, start_y = rng.randint(width), rng.randint(height)
        for _ in range(1 + rng.randint(5)):
            angle = 0.01 + rng.randint(spec.max_angle)
            if stroke % 2 == 0:
                angle = 2 * 3.1415926 - angle  # sic: the official constant
            length = 10 + rng.randint(spec.max_len)
            brush_width = 5 + rng.randint(spec.max_width)
            end_x = int(np.clip(np.int32(start_x + length * np.sin(angle)), 0, width))
            end_y = int(np.clip(np.int32(start_y + length * np.cos(angle)), 0, height))
            _draw_thick_segment(mask, start_x, start_y, end_x, end_y, brush_width)
            start_x, start_y = end_x, end_y
    return mask


def box_mask(rng: np.random.RandomState, height: int, width: int, spec: BoxSpec = BoxSpec()) -> np.ndarray:
    """LaMa boxes (`make_random_rectangle_mask`). Returns [H, W] float32 in {0, 1}.

    Raises ValueError when the image is too small for a box inside the margins."""
    max_size = min(spec.sides[1] + 1, height - 2 * spec.margin, width - 2 * spec.margin)
    min_size = min(spec.sides[0], max_size - 1)
    if min_size < 1:
        raise ValueError(f"box masks need an image larger than {2 * spec.margin + 2} pixels a side (margin "
                         f"{spec.margin}); got {width}x{height}: use a larger image or a smaller margin")
    mask = np.zeros((height, width), np.float32)
    for _ in range(rng.randint(spec.times[0], spec.times[1] + 1)):
        box_width = rng.randint(min_size, max_size)
        box_height = rng.randint(min_size, max_size)
        start_x = rng.randint(spec.margin, width - spec.margin - box_width + 1)
        start_y = rng.randint(spec.margin, height - spec.margin - box_height + 1)
        mask[start_y:start_y + box_height, start_x:start_x + box_width] = 1.0
    return mask


def _band_fraction(rng: np.random.RandomState, size: int, spec: BandSpec) -> float:
    """`get_padding`: a whole number of pixels of `size`, as a fraction (the lower end when the range is empty)."""
    low, high = int(spec.min_fraction * size), int(spec.max_fraction * size)
    return (rng.randint(low, high) if high > low else low) / size


def outpaint_mask(rng: np.random.RandomState, height: int, width: int, spec: BandSpec) -> np.ndarray:
    """LaMa border bands (`OutpaintingMaskGenerator`). Returns [H, W] float32 in {0, 1}."""
    # Drawn in the official order: left (of H), top (of W), right (of H), bottom (of W).
    left, top = _band_fraction(rng, height, spec), _band_fraction(rng, width, spec)
    right, bottom = 1 - _band_fraction(rng, height, spec), 1 - _band_fraction(rng, width, spec)
    # (row_start, row_end, col_start, col_end) as fractions, applied as int(fraction * side).
    bands = ((0, 1, 0, left), (0, top, 0, 1), (0, 1, right, 1), (bottom, 1, 0, 1))
    mask = np.zeros((height, width), np.float32)

    def apply(band: tuple[float, float, float, float]) -> None:
        r0, r1, c0, c1 = band
        mask[int(r0 * height):int(r1 * height), int(c0 * width):int(c1 * width)] = 1.0

    applied = False
    for prob, band in zip(spec.side_probs, bands, strict=True):
        if rng.random_sample() < prob:
            applied = True
            apply(band)
    if not applied:
        probs = np.array(spec.side_probs) / sum(spec.side_probs)
        apply(bands[rng.choice(4, p=probs)])
    return mask


def draw_mask(mix: MaskMix, height: int, width: int, rng: np.random.RandomState) -> MaskDraw:
    """One mask of the mix for an image of height x width, drawn with `rng` (`MixedMaskGenerator.__call__`)."""
    if mix.blank_coin:
        rng.random_sample()  # the official `np.random.random() < blank_mask_proba` with blank_mask_proba = 0
    kinds = [(kind, p) for kind, p in (("irregular", mix.irregular_p), ("box", mix.box_p),
                                       ("outpaint", mix.outpaint_p)) if p > 0]
    probs = np.array([p for _, p in kinds], dtype="float32")
    probs /= probs.sum()
    kind = kinds[rng.choice(len(kinds), p=probs)][0]
    if kind == "irregular":
        mask = irregular_mask(rng, height, width, mix.strokes)
    elif kind == "box":
        mask = box_mask(rng, height, width, mix.boxes)
    else:
        mask = outpaint_mask(rng, height, width, mix.bands)
    if mix.full_p > 0 and rng.random_sample() < mix.full_p:
        return MaskDraw(np.ones((height, width), np.float32), "full")
    return MaskDraw(mask, kind)


class MaskGenerator:
    """A seeded stream of masks from one mix: `MaskGenerator(MLLM_MASKS, seed)(512, 512)` -> MaskDraw.

    The same seed gives the same sequence; `for_sample(seed, index)` gives a generator that depends only on
    (seed, index), so a dataset item gets the same mask whichever dataloader worker draws it."""

    def __init__(self, mix: MaskMix, seed: int | list[int]) -> None:
        self.mix = mix
        self.rng = np.random.RandomState(seed)

    @classmethod
    def for_sample(cls, mix: MaskMix, seed: int, index: int) -> MaskGenerator:
        return cls(mix, [seed & 0xFFFFFFFF, index & 0xFFFFFFFF])

    def __call__(self, height: int, width: int) -> MaskDraw:
        if height < 1 or width < 1:
            raise ValueError(f"mask size must be positive, got {width}x{height}")
        return draw_mask(self.mix, height, width, self.rng)
