"""DiffRIR inference at any size: input checks, the official padding and compositing, and tiled inference that shares
one prior z per image (the region it regenerates, the mask grown on request, is `llmga.restore.region`).

The official path (`inference_diffrir.py`, x1): the mask is binarised at 0.5 (1 = generated region), the network gets
`cat([generated, (1-mask)*reference])` reflect-padded at the bottom/right to a multiple of `model.pad_multiple`, the
output is cropped and composited `out*mask + (1-mask)*reference`, so unmasked pixels are the reference exactly.

x2/x4 models: the released script feeds them the x1 input and fails; here they get what their training code built,
`cat([generated at 1/s, PixelUnshuffle_s((1-mask)*reference)])`, with the generated image downscaled by an s×s box
average (`area`), and restore it to full size.

Large images run in tiles of `tile` image pixels (a multiple of 32 = `pad_multiple`·`scale` for every scale) that
overlap and blend with a sin² window; every tile of an image uses the same prior z, computed once from the whole
image (downscaled to at most `PRIOR_MAX_PIXELS`). Preparation, the padded input and the blend happen on the inputs'
device in float32; only the prior input and one tile at a time go to the model's device, in the model's dtype.

Cancel: every long step (mask growing, the prior's CPEN on the whole picture, each tile's network pass) runs in short
steps that call `check()` in between (`llmga.restore.dirformer.run_stepped`), so raising from it stops a 4096² run
within a second on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..images import check_mask_size
from .dirformer import Check, never_stop
from .network import initial_noise
from .region import MASK_THRESHOLD, grow_mask

PRIOR_MAX_PIXELS = 2048 * 2048  # larger (padded) images are area-downscaled to about this many pixels for the prior
# Working memory of one network pass per padded image pixel, fp32, dim 64 (the released size). Measured: peak RSS
# growth of the official S2 network on CPU rises 1230-1630 B per pixel from 256² to 384² to 512² (the 4x upsampling
# tail, 256 floats per pixel, dominates); 2000 leaves room for allocator slack and conv workspaces. fp16/bf16: half.
BYTES_PER_PIXEL_FP32 = 2000
MIN_TILE = 128  # below this the channel attention sees too little of the picture to be useful
MAX_AUTO_TILE = 2048
CPU_FALLBACK_BUDGET = 8 << 30  # bytes assumed free when the platform cannot tell

TileCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RestoreInputs:
    """Checked inputs, batch sizes equal: generated, reference [B,H,W,3] float32 in [0,1]; mask [B,H,W] in {0,1}."""

    generated: Tensor
    reference: Tensor
    mask: Tensor


def _as_rgb(image: Tensor, name: str) -> Tensor:
    """[B,H,W,C] (or [H,W,C]) with C = 1 (gray), 3 (RGB) or 4 (RGBA, alpha dropped) -> [B,H,W,3] float32."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"the {name} image has shape {list(image.shape)}; expected [B, H, W, C] with C = 1 (gray), "
                         "3 (RGB) or 4 (RGBA)")
    image = image.float()
    if image.shape[-1] == 1:
        return image.expand(-1, -1, -1, 3)
    return image[..., :3]


def prepare_inputs(generated: Tensor, reference: Tensor, mask: Tensor) -> RestoreInputs:
    """Check and normalise the three inputs.

    generated: [B,H,W,C] float in [0,1], the picture after inpainting/outpainting; reference: [1 or B,H,W,C], the
    original (its pixels outside the mask are kept); C = 1, 3 or 4 (gray becomes RGB, alpha is dropped).
    mask: [1 or B,H,W] (or [H,W]) float, >= 0.5 where the picture was generated. A single reference or mask serves
    every picture of the batch. Raises ValueError naming the mismatch.
    """
    generated, reference = _as_rgb(generated, "generated"), _as_rgb(reference, "reference")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ValueError(f"the mask has shape {list(mask.shape)}; expected [B, H, W] (one channel, white = generated)")
    height, width = generated.shape[1:3]
    if reference.shape[1:3] != (height, width):
        raise ValueError(f"the reference is {reference.shape[2]}x{reference.shape[1]} but the generated image is "
                         f"{width}x{height}: resize the reference to the generated image's size (or crop both the "
                         "same way)")
    check_mask_size(mask.shape, (width, height), image_name="generated image")
    batch = generated.shape[0]
    for name, count in (("reference", reference.shape[0]), ("mask", mask.shape[0])):
        if count not in (1, batch):
            raise ValueError(f"the {name} batch holds {count} images but the generated batch {batch}: give one "
                             f"{name} for all or one per generated image")
    mask = (mask.float() >= MASK_THRESHOLD).float()
    return RestoreInputs(generated, reference.expand(batch, -1, -1, -1), mask.expand(batch, -1, -1))


def reflect_pad(x: Tensor, multiple: int) -> Tensor:
    """[B,C,H,W] reflect-padded at the bottom/right to multiples of `multiple` (inference_diffrir.py `pad_test`).
    Pictures smaller than the padding reflect repeatedly instead of failing (one pixel wide: replicated)."""
    if min(x.shape[-2:]) == 1:
        return F.pad(x, (0, -x.shape[-1] % multiple, 0, -x.shape[-2] % multiple), mode="replicate")
    while x.shape[-2] % multiple or x.shape[-1] % multiple:
        height, width = x.shape[-2:]
        x = F.pad(x, (0, min(-width % multiple, width - 1), 0, min(-height % multiple, height - 1)), mode="reflect")
    return x


def network_input(generated: Tensor, hidden_reference: Tensor, scale: int) -> Tensor:
    """generated, hidden_reference = (1-mask)*reference: [B,3,H,W] with H, W multiples of `scale` -> the network input
    on the low-resolution grid: x1 [B,6,H,W]; x2 [B,15,H/2,W/2]; x4 [B,51,H/4,W/4] (algorithms.md A.2)."""
    if scale == 1:
        return torch.cat([generated, hidden_reference], dim=1)
    low = F.avg_pool2d(generated, scale)  # = F.interpolate(mode="area") at an integer factor
    return torch.cat([low, F.pixel_unshuffle(hidden_reference, scale)], dim=1)


def prior_input(generated: Tensor, hidden_reference: Tensor, scale: int, grid: int) -> Tensor:
    """The network input the prior sees: the whole padded picture [B,3,H,W] (H, W multiples of `grid`), area-
    downscaled first when it holds more than PRIOR_MAX_PIXELS, to sides that stay multiples of `grid`."""
    height, width = generated.shape[-2:]
    if height * width > PRIOR_MAX_PIXELS:
        factor = math.sqrt(PRIOR_MAX_PIXELS / (height * width))
        size = (max(grid, int(height * factor) // grid * grid), max(grid, int(width * factor) // grid * grid))
        generated = F.interpolate(generated, size=size, mode="area")
        hidden_reference = F.interpolate(hidden_reference, size=size, mode="area")
    return network_input(generated, hidden_reference, scale)


def reflect_indices(length: int, multiple: int, replicate: bool = False) -> Tensor:
    """Indices into an axis of `length` that `reflect_pad` reads for each padded position ([L_padded] int64); with
    `replicate` (a picture one pixel high or wide), edge replication as `reflect_pad` then does on both axes."""
    index = torch.arange(length, dtype=torch.float32)[None, None]
    if replicate:
        return F.pad(index, (0, -length % multiple), mode="replicate")[0, 0].long()
    while index.shape[-1] % multiple:
        size = index.shape[-1]
        index = F.pad(index, (0, min(-size % multiple, size - 1)), mode="reflect")
    return index[0, 0].long()


def channels_last(x: Tensor) -> Tensor:
    """x [B,C,H,W] in channels-last memory: the layout inference_diffrir.py feeds (HWC images permuted to CHW), which
    the convolutions round slightly differently from NCHW; matching it keeps results bit-identical."""
    return x.contiguous(memory_format=torch.channels_last)


class TileSource:
    """The reflect-padded network input of every picture, read a box at a time, so a big picture's whole padded
    input never sits in memory at once (tiles and the prior gather the pixels they need).

    generated, reference: [B,H,W,3] float32; region: [B,H,W] {0,1} (1: hidden from the network); grid: the padding
    multiple in image px; scale: the network's.
    """

    def __init__(self, generated: Tensor, reference: Tensor, region: Tensor, grid: int, scale: int) -> None:
        self.generated, self.reference, self.region, self.scale = generated, reference, region, scale
        height, width = region.shape[1:]
        replicate = min(height, width) == 1
        self.rows = reflect_indices(height, grid, replicate).to(region.device)
        self.cols = reflect_indices(width, grid, replicate).to(region.device)

    @property
    def padded(self) -> tuple[int, int]:
        """(Hp, Wp): the padded picture size in image px."""
        return len(self.rows), len(self.cols)

    def parts(self, image: int, top: int, left: int, height: int, width: int) -> tuple[Tensor, Tensor]:
        """(generated, (1 - region)·reference), each [1,3,height,width], of the padded picture's box."""
        rows, cols = self.rows[top:top + height], self.cols[left:left + width]
        generated = self.generated[image][rows][:, cols].permute(2, 0, 1)[None]
        kept = 1 - self.region[image][rows][:, cols]
        hidden = (kept[..., None] * self.reference[image][rows][:, cols]).permute(2, 0, 1)[None]
        return generated, hidden

    def tile(self, image: int, top: int, left: int, height: int, width: int) -> Tensor:
        """The network input of a box of the padded picture: [1, C_in, height/s, width/s] (`network_input`)."""
        return channels_last(network_input(*self.parts(image, top, left, height, width), self.scale))


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` px covering `length` px, consecutive tiles overlapping by at least `overlap`
    (the last one is moved back to end at `length`). length, tile, overlap: multiples of the grid."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return [*starts, length - tile]


def _ramp(size: int, start: int, length: int, overlap: int) -> Tensor:
    """[size] weights of one tile along one axis: sin² rising over `overlap` px at an edge shared with a neighbour, 1
    elsewhere; two neighbours at the regular step sum to 1 exactly, and no weight is 0."""
    weight = torch.ones(size)
    if overlap == 0:
        return weight
    rise = torch.sin(0.5 * math.pi * (torch.arange(overlap) + 0.5) / overlap) ** 2
    if start > 0:
        weight[:overlap] = rise
    if start + size < length:
        weight[-overlap:] = rise.flip(0)
    return weight


def bytes_per_pixel(dtype: torch.dtype) -> int:
    """Peak working memory of one full-size (dim 64) network pass per image pixel in `dtype`."""
    return BYTES_PER_PIXEL_FP32 if dtype == torch.float32 else BYTES_PER_PIXEL_FP32 // 2


def available_memory(device: torch.device) -> int:
    """Bytes a network pass may use on `device`: CUDA free + cached, MPS recommended - allocated, CPU MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return CPU_FALLBACK_BUDGET


def auto_tile(budget: int, dtype: torch.dtype, grid: int = 32) -> int:
    """The largest tile side (a multiple of `grid`, MIN_TILE..MAX_AUTO_TILE) whose pass fits `budget` bytes."""
    side = int(math.sqrt(max(budget, 0) / bytes_per_pixel(dtype))) // grid * grid
    return max(MIN_TILE, min(MAX_AUTO_TILE, side))


def _check_tiling(tile: int, overlap: int, grid: int) -> None:
    if tile < grid or tile % grid:
        raise ValueError(f"tile is {tile} px; use a multiple of {grid} (the network's grid), e.g. 512")
    if overlap < 0 or overlap % grid or overlap >= tile:
        raise ValueError(f"overlap is {overlap} px with tile {tile}; use a multiple of {grid} smaller than the tile "
                         f"(e.g. {tile // 4 // grid * grid})")


def default_overlap(tile: int, grid: int = 32) -> int:
    """A quarter of the tile, on the grid (at least one grid step)."""
    return max(grid, tile // 4 // grid * grid) if tile > grid else 0


def _model_placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


@dataclass(frozen=True)
class _Tile:
    """One network pass: picture `image`, image-pixel box [top, top+height) x [left, left+width) of the padded grid."""

    image: int
    top: int
    left: int
    height: int
    width: int


def _plan(region: Tensor, padded: tuple[int, int], tile: int | None, overlap: int) -> list[_Tile]:
    """The passes to run: one per picture (tile None) or its tiles, leaving out those with no masked pixel."""
    tiles = []
    for image in range(region.shape[0]):
        height, width = padded if tile is None else (min(tile, padded[0]), min(tile, padded[1]))
        for top in tile_starts(padded[0], height, overlap):
            for left in tile_starts(padded[1], width, overlap):
                if region[image, top:top + height, left:left + width].any():
                    tiles.append(_Tile(image, top, left, height, width))
    return tiles


def _run_tiles(model: nn.Module, source: TileSource, priors: dict[int, Tensor], tiles: list[_Tile], scale: int,
               overlap: int, on_tile: TileCallback | None, check: Check) -> dict[int, Tensor]:
    """Run the passes, reading each tile's input from `source`; returns {picture: [3,Hp,Wp] float32}, each tile's
    output weighted by its window and normalised by the summed windows."""
    device, dtype = _model_placement(model)
    padded = source.padded
    home = source.region.device
    sums: dict[int, Tensor] = {}
    weights: dict[int, Tensor] = {}
    for done, part in enumerate(tiles, start=1):
        check()
        if part.image not in sums:
            sums[part.image] = torch.zeros((3, *padded), device=home)
            weights[part.image] = torch.zeros((1, *padded), device=home)
        x = source.tile(part.image, part.top, part.left, part.height, part.width)
        out = model.restore(x.to(device, dtype), priors[part.image], check)
        window = (_ramp(part.height, part.top, padded[0], overlap)[:, None]
                  * _ramp(part.width, part.left, padded[1], overlap)[None, :]).to(home)
        box = (slice(None), slice(part.top, part.top + part.height), slice(part.left, part.left + part.width))
        sums[part.image][box] += out[0].float().to(home) * window
        weights[part.image][box] += window
        del out, x
        if on_tile is not None:
            on_tile(done, len(tiles))
    return {image: total / weights[image].clamp_min(1e-12) for image, total in sums.items()}


def _overlap(tile: int | None, overlap: int | None, grid: int) -> int:
    """The overlap used with `tile` (None: one pass, no overlap): as asked when it is smaller than the tile."""
    if tile is None:
        return 0
    return overlap if overlap is not None and overlap < tile else default_overlap(tile, grid)


def _smaller_tile(tile: int | None, padded: tuple[int, int], dtype: torch.dtype, device: torch.device,
                  grid: int) -> int:
    """The tile size to try after running out of memory with `tile` (None: the whole picture): half its side, or
    less when the free memory says so, at least MIN_TILE."""
    halved = max(MIN_TILE, (max(padded) if tile is None else tile) // 2 // grid * grid)
    return min(halved, auto_tile(available_memory(device), dtype, grid))


def _run_passes(model: nn.Module, source: TileSource, priors: dict[int, Tensor], region: Tensor, tile: int | None,
                overlap: int | None, grid: int, on_tile: TileCallback | None, check: Check) -> dict[int, Tensor]:
    """`_run_tiles` with the tile size asked for, or chosen: the whole picture when its estimated memory fits the
    device, else the largest tile that fits; on CUDA out-of-memory, again with tiles half as large."""
    device, dtype = _model_placement(model)
    scale = int(model.scale)
    padded = source.padded
    plan_tile = tile
    if tile is None and padded[0] * padded[1] * bytes_per_pixel(dtype) > available_memory(device):
        plan_tile = auto_tile(available_memory(device), dtype, grid)
    while True:
        step = _overlap(plan_tile, overlap, grid)
        try:
            return _run_tiles(model, source, priors, _plan(region, padded, plan_tile, step), scale, step, on_tile,
                              check)
        except torch.cuda.OutOfMemoryError:
            if tile is not None or (max(padded) if plan_tile is None else plan_tile) <= MIN_TILE:
                raise
        torch.cuda.empty_cache()  # out of the except block: the failed pass's tensors are released by now
        plan_tile = _smaller_tile(plan_tile, padded, dtype, device, grid)


def restore_image(model: nn.Module, generated: Tensor, reference: Tensor, mask: Tensor, *, seed: int = 0,
                  tile: int | None = None, overlap: int | None = None, dilate: int = 0, feather: int = 0,
                  on_tile: TileCallback | None = None, check: Check = never_stop) -> Tensor:
    """Restore the generated region of each picture with DiffRIR; returns [B,H,W,3] float32 in [0,1].

    generated, reference, mask: as `prepare_inputs` takes them. model: a DiffRIR (`scale`, `pad_multiple`,
    `prior(x, noise)`, `restore(x, z)`) in eval mode; it runs in its own dtype and device. seed: the prior noise,
    `initial_noise(B, seed)`, row i for picture i. tile: None = automatic (the whole picture when its estimated memory
    fits the device, else tiles; on CUDA out-of-memory, tiles of half the size are tried), or a tile side in image px,
    a multiple of 32. overlap: between tiles, a multiple of 32 (default a quarter of the tile). dilate, feather: see
    `grow_mask`. on_tile(done, total): called after every network pass (progress). check(): called between short
    steps of every long part of the work (at most ~0.2 s of two CPU cores apart); an exception raised from either
    cancels. Pixels outside the (grown) mask are the reference exactly; pictures whose mask is empty are the reference.
    The model's `prior` and `restore` take `check` as a third argument (`DiffRIR`'s run in short steps with it).
    """
    inputs = prepare_inputs(generated, reference, mask)
    region, blend = grow_mask(inputs.mask, dilate, feather, check)
    scale = int(model.scale)
    grid = int(model.pad_multiple) * scale  # 32 image px for x1, x2 and x4
    if tile is not None:
        _check_tiling(tile, default_overlap(tile, grid) if overlap is None else overlap, grid)
    elif overlap is not None and (overlap < 0 or overlap % grid):
        raise ValueError(f"overlap is {overlap} px; use a multiple of {grid} (the network's grid), e.g. 128")
    device, dtype = _model_placement(model)
    source = TileSource(inputs.generated, inputs.reference, region, grid, scale)
    noise = initial_noise(region.shape[0], seed)
    priors = {}
    with torch.no_grad():
        for image in (image for image in range(region.shape[0]) if region[image].any()):
            check()
            whole = source.parts(image, 0, 0, *source.padded)
            check()
            x = channels_last(prior_input(*whole, scale, grid)).to(device, dtype)
            del whole
            priors[image] = model.prior(x, noise[image:image + 1].to(device, dtype), check)
        restored = _run_passes(model, source, priors, region, tile, overlap, grid, on_tile, check)
    result = inputs.reference.clone()
    height, width = region.shape[1:]
    for image, out in restored.items():
        check()
        out = out[:, :height, :width].clamp(0, 1).permute(1, 2, 0)
        weight = blend[image][..., None]
        result[image] = torch.where(weight > 0, weight * out + (1 - weight) * inputs.reference[image], result[image])
    return result
