"""Restoration evaluation: DiffRIR on held-out images degraded as in its training, against the plain composite.

    items = prepare_restore_set(sorted(Path("held_out").glob("*.png")), out / "data", size=512, seed=0)
    result = run_restore_eval(items, out, restorers=[backends.diffrir_restorer("DiffRIR", model)], lpips=lpips)

Each image is cropped as the inpainting evaluation does (shorter side upscaled to `size`, random square crop), then
degraded with DiffRIR's training degradations (algorithms.md A.3): D1, Real-ESRGAN's second-order degradation, and
D2, one brightness/contrast error per image (c1 = 1 +- y_error, c2 = +- 0.05; y_error 0.06 as for the released x1
GAN model), rounded to 8 bits; a mask is drawn from DiffRIR's training mix (strokes 0.35, boxes 0.30, border bands
0.35). The degraded picture stands for an SD result: the "plain composite" pastes its masked region into the clean
image, and each restorer restores that region from the degraded picture with the clean image as reference.
Every draw depends only on (seed, image index). Scores: PSNR, SSIM and LPIPS of the whole image against the clean
crop (pixels outside the mask are equal in every row, so differences come from the masked region). Under
`accelerate launch` the degraded crops and the restorations are shared among the processes (`llmga.shards`) and the
main process scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..files import save_image_atomic
from ..masks import DIFFRIR_MASKS, MaskGenerator
from ..shards import SINGLE_PROCESS, Shards
from .inpaint import CROP_SIZE, Restorer, crop_for_eval, read_mask
from .pairs import EvalInputError
from .report import RunResult, Table, write_report
from .runs import check_run_settings, check_unique_names, slug
from .scoring import LpipsFn, pair_scores

if TYPE_CHECKING:
    from PIL import Image

PLAIN = "plain composite"
Y_ERROR = 0.06  # DiffRIR train_DiffRIRS2_GAN_x1.yml (the x1 GAN model LLMGA uses): c1 in [0.94, 1.06]
MASK_STREAM = 1  # the masks' seed stream, apart from the crop's (0) and the degradation's


@dataclass(frozen=True)
class RestoreItem:
    """One held-out picture: its name, the clean crop, the degraded crop and the mask (1 = region to restore)."""

    name: str
    clean: Path
    degraded: Path
    mask: Path


def _seed(seed: int, index: int, stream: int) -> int:
    """A 32-bit seed that depends only on (seed, image index, stream)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, index, stream]).generate_state(1)[0])


def degrade(clean: Image.Image, seed: int, y_error: float = Y_ERROR) -> Image.Image:
    """D1 (second-order degradation) then D2 (luminance error) and 8-bit rounding, as DiffRIR's training builds its
    lq at x1, drawn with a CPU generator seeded by `seed`. Same size as `clean`."""
    import torch

    from ..images import pil_to_tensor, tensor_to_pil
    from ..restore.degradations import DIFFRIR_DEGRADATION, Y_BIAS, luminance_error, quantize, second_order_degradation

    generator = torch.Generator("cpu").manual_seed(seed)
    gt = pil_to_tensor(clean).permute(0, 3, 1, 2)
    lq = quantize(luminance_error(second_order_degradation(gt, DIFFRIR_DEGRADATION, generator), y_error, Y_BIAS,
                                  generator))
    return tensor_to_pil(lq.permute(0, 2, 3, 1)[0])


def restore_mask(size: int, seed: int, index: int) -> np.ndarray:
    """DiffRIR's training mask mix for image `index`: [size, size] float32 in {0, 1}, redrawn while empty."""
    generator = MaskGenerator(DIFFRIR_MASKS, _seed(seed, index, MASK_STREAM))
    while True:
        mask = generator(size, size).mask
        if mask.any():
            return mask


def prepare_restore_set(images: Sequence[Path], data_dir: Path, *, size: int = CROP_SIZE, seed: int = 0,
                        y_error: float = Y_ERROR, progress: bool = True,
                        shards: Shards = SINGLE_PROCESS) -> list[RestoreItem]:
    """Write (or find) `<stem>.png` (clean crop), `<stem>_mask000.png` and `degraded/<stem>.png` under `data_dir`
    for every image, each process its share (`Shards.claim`); returns the items once every process is done. Raises
    EvalInputError for no images, unreadable ones, shared stems or a size under 80."""
    from tqdm.auto import tqdm

    from ..images import mask_to_pil, open_image
    from ..restore.degradations import MIN_SIZE

    if not images:
        raise EvalInputError("no images to evaluate: give a folder with .png/.jpg images")
    if size < MIN_SIZE:
        raise EvalInputError(f"--size {size} is below {MIN_SIZE}, the smallest image the degradation takes")
    stems = [Path(path).stem for path in images]
    if len(set(stems)) != len(stems):
        raise EvalInputError("images share a file stem: give each image its own name")
    check_run_settings(data_dir, {"size": size, "seed": seed, "y_error": y_error})
    items = [RestoreItem(stem, data_dir / f"{stem}.png", data_dir / "degraded" / f"{stem}.png",
                         data_dir / f"{stem}_mask000.png") for stem in stems]
    todo = [(index, path, item) for index, (path, item) in enumerate(zip(images, items, strict=True))
            if not (item.clean.is_file() and item.degraded.is_file() and item.mask.is_file())]
    for index, path, item in tqdm(shards.claim(todo), desc="degrading", unit="image",
                                  disable=not (progress and shards.is_main)):
        clean = crop_for_eval(open_image(path), size, np.random.RandomState([seed & 0xFFFFFFFF, index]))
        save_image_atomic(degrade(clean, _seed(seed, index, 2), y_error), item.degraded)
        save_image_atomic(mask_to_pil(restore_mask(size, seed, index)), item.mask)
        save_image_atomic(clean, item.clean)
    shards.wait()
    return items


def plain_composite(generated: Image.Image, reference: Image.Image, mask: np.ndarray, seed: int) -> Image.Image:
    """The generated picture inside the mask, the reference outside: what inpainting gives without restoration."""
    from PIL import Image

    inside = mask[..., None] >= 0.5
    return Image.fromarray(np.where(inside, np.asarray(generated.convert("RGB")), np.asarray(reference.convert("RGB"))))


def run_restore_eval(items: Sequence[RestoreItem], out_dir: Path, *, restorers: Sequence[Restorer],
                     lpips: LpipsFn | None = None, seed: int = 0, batch_size: int = 16, device: str | None = None,
                     progress: bool = True, shards: Shards = SINGLE_PROCESS) -> RunResult | None:
    """Make `results/<row>/<name>.png` for the plain composite and every restorer (skipping finished files), score
    PSNR, SSIM (and LPIPS when given) against the clean crops and write `<out_dir>/report.{json,md,png}`. With
    several processes (`shards`), each restores its share, and the main process scores and reports once all are
    made; the others return None."""
    from tqdm.auto import tqdm

    from ..images import open_image

    if not items:
        raise EvalInputError("no images to evaluate")
    rows = [Restorer(PLAIN, plain_composite), *restorers]
    check_unique_names([row.name for row in rows])
    for row in rows:
        folder = out_dir / "results" / slug(row.name)
        check_run_settings(folder, {"restorer": row.name, "seed": seed})
        todo = [(index, item) for index, item in enumerate(items) if not (folder / f"{item.name}.png").is_file()]
        mine = shards.claim(todo)
        done = len(items) - len(todo)
        with tqdm(total=done + len(mine), initial=done, desc=row.name, unit="image",
                  disable=not (progress and shards.is_main)) as bar:
            for index, item in mine:
                restored = row.restore(open_image(item.degraded), open_image(item.clean), read_mask(item.mask),
                                       seed + index)
                save_image_atomic(restored, folder / f"{item.name}.png")
                bar.update(1)
    shards.wait()
    if not shards.is_main:
        return None
    metric_names = ["PSNR", "SSIM"] + (["LPIPS"] if lpips is not None else [])
    table = Table("Restoration (DiffRIR degradations D1 + D2, DiffRIR masks)", [row.name for row in rows],
                  [("", name) for name in metric_names])
    scores = {}
    for row in rows:
        folder = out_dir / "results" / slug(row.name)
        scores[row.name] = pair_scores([folder / f"{item.name}.png" for item in items],
                                       [item.clean for item in items], lpips=lpips, with_psnr=True,
                                       batch_size=batch_size, device=device, progress=progress,
                                       desc=f"scoring ({row.name})")
        for metric in metric_names:
            table.set(row.name, "", metric, scores[row.name][metric.lower()])
    report = {"task": "restore", "protocol": {"images": len(items), "seed": seed,
                                              "lpips": getattr(lpips, "name", None)},
              "rows": [{"name": row.name, "scores": scores[row.name]} for row in rows]}
    notes = [f"{len(items)} held-out images; PSNR/SSIM (BasicSR definitions, RGB, whole image) and LPIPS (VGG "
             "v0.1) against the clean crop."]
    return RunResult(report, write_report(out_dir, report, [table], notes=notes))
