"""Inpainting and outpainting evaluation (LLMGA Tables 3 and 4): LaMa's protocol on a folder of images.

    sets = prepare_inpaint_set(sorted(Path("places_val").glob("*.jpg")), out / "data", ("narrow", "wide", "outpaint"))
    result = run_inpaint_eval(settings, sets, out, inpaint_fn=..., prompt_fn=..., restorers=[...], metrics=...)

Preparation (algorithms.md C.3, LaMa `bin/gen_mask_dataset.py`): an image whose shorter side is under `size` (512) is
upscaled (bicubic) to it, then a random `size` x `size` crop is taken; each mask type draws one mask per image from
its generator (`llmga.masks.EVAL_MASKS`: LaMa thin = narrow, medium, thick = wide, border bands = outpaint) at 512x512
(resized when `size` differs, so coverage does not depend on it), redrawn while it covers more than half of the image
(LaMa's max_tamper_area 0.5). Crop, offsets and masks depend only on
(seed, image index, mask type), and are written in LaMa's naming, `data/<type>/<stem>_crop000.png` and
`<stem>_crop000_mask000.png`, so every run (and DiffRIR's own inference script) sees the same set.

Each setting inpaints every masked crop with an SD1.5 or SDXL inpainting model (an SDXL row at its official
strength 0.8 and 1024x1024, the result resized back to the crop, unless told otherwise), prompted with a fixed text
(LaMa's protocol has none; default "") or with the assistant's prompt for the masked picture (its inpaint/outpaint
task); each restorer (DiffRIR weights) then restores those results. Results go to
`results/<row>/<type>/<stem>_crop000_mask000.png` (LaMa's prediction naming) and are skipped when present. Metrics per
row and mask type: FID of the results against the crops (whole set, Inception at 512), LPIPS (VGG, per image, mean)
and SSIM (per image, mean). Under `accelerate launch` the crops, prompts and results are shared among the processes
(`llmga.shards`) and the main process scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..files import save_image_atomic
from ..masks import EVAL_MASKS, MaskGenerator
from ..prompt import parse_reply
from ..shards import SINGLE_PROCESS, Shards
from .pairs import EvalInputError
from .report import RunResult, Table, write_report
from .runs import (
    Generation,
    Setting,
    cached_rows,
    check_run_settings,
    check_unique_names,
    parse_setting_spec,
    setting_generation,
    slug,
)
from .scoring import LpipsFn, pair_values

if TYPE_CHECKING:
    from PIL import Image

    from .features import FeatureCache, FeatureExtractor

# A row's prompt: the fixed --prompt text, or the assistant's prompt for the masked picture (how a label without
# LABEL= names it).
PROMPT_SOURCES = {"plain": "plain", "assistant": "assistant prompt"}
CROP_SIZE = 512  # LaMa configs/data_gen/random_*_512.yaml: out_min_size 512, out_square_crop
MAX_MASK_AREA = 0.5  # LaMa max_tamper_area
MAX_MASK_TRIES = 1000
AREA_BIN_PERCENT = 10  # LaMa reports its metrics per 10% bin of mask coverage
METRICS = ("FID", "LPIPS", "SSIM")

InpaintFn = Callable[[str, "Image.Image", np.ndarray, str, int], "Image.Image"]
PromptFn = Callable[[list["Image.Image"], list[np.ndarray], list[str]], list[str]]
RestoreFn = Callable[["Image.Image", "Image.Image", np.ndarray, int], "Image.Image"]


@dataclass(frozen=True)
class InpaintItem:
    """One masked crop: its mask type, LaMa name (`<stem>_crop000`), crop and mask files."""

    mask_type: str
    name: str
    image: Path
    mask: Path

    @property
    def result_name(self) -> str:
        """LaMa's prediction file name: the mask's."""
        return self.mask.name


InpaintSetting = Setting  # a row of Table 3: an SD inpainting model; its prompt is one of PROMPT_SOURCES


@dataclass(frozen=True)
class Restorer:
    """A restoration variant (Table 4): a label and restore(generated, reference, mask [H,W] in {0,1}, seed)."""

    name: str
    restore: RestoreFn


@dataclass(frozen=True)
class InpaintGeneration(Generation):
    """How every result is made: `Generation`, with `plain_prompt` for the "plain" settings (LaMa's protocol has no
    text: empty by default); item i of a mask type uses seed + i in every setting. strength: how far the picture
    under the mask is noised (1, SD1.5's; SDXL's official 0.8). SD works at the library's size (SD1.5: the crop's;
    SDXL: 1024x1024, the official size), the result resized back to the crop."""

    plain_prompt: str = ""
    strength: float = 1.0

    def summary(self) -> str:
        """"50 steps, CFG 7.5", with ", strength 0.8" below 1."""
        return super().summary() + (f", strength {self.strength}" if self.strength != 1 else "")


@dataclass
class InpaintMetrics:
    """inception: FID extractor; lpips(a, b) -> [B] on [B, 3, H, W] in [0, 1]; either may be None (skipped)."""

    inception: FeatureExtractor | None = None
    lpips: LpipsFn | None = None
    ssim: bool = True
    cache: FeatureCache | None = None
    batch_size: int = 16
    device: str | None = None


def parse_inpaint_setting(text: str) -> InpaintSetting:
    """`LABEL=MODEL:PROMPT` or `MODEL:PROMPT` (PROMPT: plain or assistant) -> InpaintSetting."""
    return parse_setting_spec(text, PROMPT_SOURCES, "LLMGA + assistant=binxia/llmga-sd15-inpainting-v2:assistant")


# --- the evaluation set ------------------------------------------------------------------------------------------


def crop_for_eval(image: Image.Image, size: int, rng: np.random.RandomState) -> Image.Image:
    """LaMa's cropping: shorter side under `size` -> upscaled to it (bicubic, rounded), then a random square crop."""
    from PIL import Image

    if min(image.size) < size:
        factor = size / min(image.size)
        image = image.resize(tuple(max(size, round(side * factor)) for side in image.size), Image.Resampling.BICUBIC)
    left = rng.randint(0, image.width - size + 1)
    top = rng.randint(0, image.height - size + 1)
    return image.crop((left, top, left + size, top + size))


def eval_mask(mask_type: str, size: int, seed: int, index: int, max_area: float = MAX_MASK_AREA) -> np.ndarray:
    """The mask of image `index` for `mask_type` ([size, size] float32 in {0, 1}, 1 = to paint): drawn at 512x512
    (the size LaMa's configs are written for) from the type's generator seeded by (seed, type, index), resized to
    `size` (nearest) when that differs, and redrawn until it is non-empty and covers at most `max_area`."""
    from PIL import Image

    from ..images import mask_to_pil, pil_to_mask

    if mask_type not in EVAL_MASKS:
        raise EvalInputError(f"unknown mask type {mask_type!r}: choose from {', '.join(EVAL_MASKS)}")
    generator = MaskGenerator(EVAL_MASKS[mask_type], [seed & 0xFFFFFFFF, list(EVAL_MASKS).index(mask_type), index])
    for _ in range(MAX_MASK_TRIES):
        mask = generator(CROP_SIZE, CROP_SIZE).mask
        if size != CROP_SIZE:
            mask = pil_to_mask(mask_to_pil(mask).resize((size, size), Image.Resampling.NEAREST))
        if 0 < mask.mean() <= max_area:
            return mask
    raise ValueError(f"no {mask_type} mask of at most {max_area:.0%} of the image in {MAX_MASK_TRIES} draws")


def prepare_inpaint_set(images: Sequence[Path], data_dir: Path, mask_types: Sequence[str], *, size: int = CROP_SIZE,
                        seed: int = 0, max_area: float = MAX_MASK_AREA, progress: bool = True,
                        shards: Shards = SINGLE_PROCESS) -> dict[str, list[InpaintItem]]:
    """Write (or find, when a previous run wrote them) the crop and mask of every image for every mask type under
    `data_dir/<type>/`, each process its share of the images (`Shards.claim`); returns {mask type: items in image
    order} once every process is done. Raises EvalInputError for no images, an unreadable image, or two images with
    one file stem."""
    from tqdm.auto import tqdm

    from ..images import mask_to_pil, open_image

    if not images:
        raise EvalInputError("no images to evaluate: give a folder with .png/.jpg images")
    stems = [Path(path).stem for path in images]
    twins = sorted({stem for stem in stems if stems.count(stem) > 1})
    if twins:
        raise EvalInputError(f"images share the file stem(s) {', '.join(twins)}: the LaMa naming needs one image per "
                             "stem; rename or remove the duplicates")
    for mask_type in mask_types:
        if mask_type not in EVAL_MASKS:
            raise EvalInputError(f"unknown mask type {mask_type!r}: choose from {', '.join(EVAL_MASKS)}")
    check_run_settings(data_dir, {"size": size, "seed": seed, "max_area": max_area})
    rows = [(index, path, [InpaintItem(mask_type, f"{stem}_crop000", data_dir / mask_type / f"{stem}_crop000.png",
                                       data_dir / mask_type / f"{stem}_crop000_mask000.png")
                           for mask_type in mask_types])
            for index, (path, stem) in enumerate(zip(images, stems, strict=True))]
    todo = [row for row in rows if not all(item.image.is_file() and item.mask.is_file() for item in row[2])]
    mine = shards.claim(todo)
    for index, path, items in tqdm(mine, desc="preparing crops and masks", unit="image",
                                   disable=not (progress and shards.is_main)):
        crop = crop_for_eval(open_image(path), size, np.random.RandomState([seed & 0xFFFFFFFF, index]))
        for item in items:
            save_image_atomic(crop, item.image)
            save_image_atomic(mask_to_pil(eval_mask(item.mask_type, size, seed, index, max_area)), item.mask)
    shards.wait()
    return {mask_type: [items[position] for _, _, items in rows] for position, mask_type in enumerate(mask_types)}


def read_mask(path: Path) -> np.ndarray:
    """A saved mask as [H, W] float32 in {0, 1} (binarised at 50%, as DiffRIR's inference reads it)."""
    from ..images import open_image, pil_to_mask

    return (pil_to_mask(open_image(path, "L")) >= 0.5).astype(np.float32)


# --- the run -----------------------------------------------------------------------------------------------------


def assistant_prompts(sets: dict[str, list[InpaintItem]], cache_path: Path, prompt_fn: PromptFn, *, assistant: str,
                      batch_size: int = 8, progress: bool = True,
                      shards: Shards = SINGLE_PROCESS) -> dict[tuple[str, str], dict]:
    """The assistant's prompt for every masked crop: {(mask type, name): {"reply", "prompt", "has_prompt"}}, cached
    in `cache_path` (JSONL) under (assistant, mask type, name), each process its share (`runs.cached_rows`). The task
    is "outpaint" for the outpaint masks and "inpaint" for the others; a reply without <gen_image> tags gives an
    empty prompt."""
    from ..images import open_image

    def key(item: InpaintItem) -> str:
        return f"{assistant}\t{item.mask_type}\t{item.name}"

    def make(batch: list[InpaintItem]) -> list[dict]:
        tasks = ["outpaint" if item.mask_type == "outpaint" else "inpaint" for item in batch]
        replies = prompt_fn([open_image(item.image) for item in batch], [read_mask(item.mask) for item in batch],
                            tasks)
        rows = []
        for item, task, reply in zip(batch, tasks, replies, strict=True):
            parsed = parse_reply(reply)
            rows.append({"key": key(item), "assistant": assistant, "task": task, "name": item.name,
                         "reply": reply, "prompt": parsed.prompt() if parsed.has_prompt else "",
                         "has_prompt": parsed.has_prompt})
        return rows

    items = [item for items in sets.values() for item in items]
    cache = cached_rows(cache_path, items, key, make, batch_size=batch_size, shards=shards, progress=progress,
                        desc="assistant prompts", unit="image")
    return {(item.mask_type, item.name): cache.get(key(item)) for item in items}


def run_inpaint_eval(settings: Sequence[InpaintSetting], sets: dict[str, list[InpaintItem]], out_dir: Path, *,
                     inpaint_fn: InpaintFn, metrics: InpaintMetrics, prompt_fn: PromptFn | None = None,
                     assistant: str = "", restorers: Sequence[Restorer] = (),
                     generation: InpaintGeneration = InpaintGeneration(), progress: bool = True,
                     shards: Shards = SINGLE_PROCESS) -> RunResult | None:
    """Inpaint every masked crop of `sets` (from prepare_inpaint_set) for every setting, restore the results with
    every restorer, score each (row, mask type) and write `<out_dir>/report.{json,md,png}` (Table 3: every row;
    Table 4: the restoration variants on the outpaint masks, when there are restorers and outpaint masks). With
    several processes (`shards`), each makes its share of the prompts and results, and the main process scores and
    reports once all are made; the others return None."""
    from ..images import open_image

    if not settings:
        raise EvalInputError("give at least one --setting LABEL=MODEL:PROMPT, e.g. \"SD1.5-inpainting="
                             "models/diffusers/stable-diffusion-inpainting:plain\"")
    rows = [(setting, None) for setting in settings] + [(s, r) for s in settings for r in restorers]
    names = [_row_name(setting, restorer) for setting, restorer in rows]
    check_unique_names(names)
    prompts = {}
    if any(setting.prompt == "assistant" for setting in settings):
        if prompt_fn is None:
            raise EvalInputError("a setting uses the assistant's prompt: give the assistant (--mllm)")
        prompts = assistant_prompts(sets, out_dir / "prompts.jsonl", prompt_fn, assistant=assistant,
                                    progress=progress, shards=shards)
    for setting in settings:
        recipe = {"model": setting.model, "prompt": setting.prompt, **asdict(setting_generation(setting, generation)),
                  "assistant": assistant if setting.prompt == "assistant" else None}
        _make_results(out_dir / "results" / slug(setting.name), recipe, sets, setting.name, progress, shards,
                      lambda item, index, s=setting: inpaint_fn(
                          s.model, open_image(item.image), read_mask(item.mask),
                          prompts[(item.mask_type, item.name)]["prompt"] if s.prompt == "assistant"
                          else generation.plain_prompt, generation.seed + index))
    for setting in settings:
        for restorer in restorers:
            source = out_dir / "results" / slug(setting.name)
            recipe = {"source": setting.name, "restorer": restorer.name, "seed": generation.seed}
            _make_results(out_dir / "results" / slug(_row_name(setting, restorer)), recipe, sets,
                          _row_name(setting, restorer), progress, shards,
                          lambda item, index, r=restorer, src=source: r.restore(
                              open_image(src / item.mask_type / item.result_name), open_image(item.image),
                              read_mask(item.mask),
                              generation.seed + index))
    if not shards.is_main:
        return None
    table3, scores = score_inpainting(names, sets, out_dir, metrics, progress)
    tables = [table3]
    if restorers and "outpaint" in sets:
        table4 = Table("Table 4: restoration on outpainting", names, [("outpaint", m) for m in _metric_names(metrics)])
        table4.values = {key: value for key, value in table3.values.items() if key[1] == "outpaint"}
        tables.append(table4)
    report = {"task": "inpaint",
              "protocol": {"images": len(next(iter(sets.values()), [])), "mask_types": list(sets),
                           "fid_features": getattr(metrics.inception, "name", None),
                           "lpips": getattr(metrics.lpips, "name", None), "assistant": assistant or None,
                           **asdict(generation)},
              "rows": [{"name": name, "setting": asdict(setting), "restorer": restorer and restorer.name,
                        "scores": scores[name]} for name, (setting, restorer) in zip(names, rows, strict=True)]}
    if prompts:
        report["assistant_replies_without_prompt"] = sum(not row["has_prompt"] for row in prompts.values())
    notes = [f"{report['protocol']['images']} images, one mask per image and type, crops of the images' size "
             "(512 by default); FID of the results against the crops at their size; LPIPS (VGG v0.1) and SSIM per "
             "image, averaged."]
    notes += [f"{setting.name}: {setting.generation.summary()}." for setting in settings
              if setting.generation not in (None, generation)]
    notes.append("By mask area: the same scores per bin of mask coverage (LaMa's breakdown; `by_area` in report.json "
                 "also counts the images of each bin); FID only for bins of 2 or more images.")
    metric = "LPIPS" if metrics.lpips is not None else "SSIM" if metrics.ssim else "FID"
    key = metric.lower()
    tables += [area_table(names, scores, mask_type, metric, key) for mask_type in sets]
    # Table 4 is a view of Table 3's outpaint columns: plotting Table 3 shows both.
    return RunResult(report, write_report(out_dir, report, tables, notes=notes, plotted=[table3]))


def _row_name(setting: InpaintSetting, restorer: Restorer | None) -> str:
    return setting.name if restorer is None else f"{setting.name} + {restorer.name}"


def _make_results(folder: Path, recipe: dict, sets: dict[str, list[InpaintItem]], name: str, progress: bool,
                  shards: Shards, make: Callable[[InpaintItem, int], Image.Image]) -> None:
    """`<folder>/<type>/<result name>` for every item not there yet, made by make(item, index in its type), each
    process its share; returns once every process is done."""
    from tqdm.auto import tqdm

    check_run_settings(folder, recipe)
    todo = [(item, index) for items in sets.values() for index, item in enumerate(items)
            if not (folder / item.mask_type / item.result_name).is_file()]
    mine = shards.claim(todo)
    done = sum(len(items) for items in sets.values()) - len(todo)
    with tqdm(total=done + len(mine), initial=done, desc=name, unit="image",
              disable=not (progress and shards.is_main)) as bar:
        for item, index in mine:
            save_image_atomic(make(item, index), folder / item.mask_type / item.result_name)
            bar.update(1)
    shards.wait()


def _metric_names(metrics: InpaintMetrics) -> list[str]:
    return [name for name, on in zip(METRICS, (metrics.inception is not None, metrics.lpips is not None,
                                               metrics.ssim), strict=True) if on]


def score_inpainting(names: Sequence[str], sets: dict[str, list[InpaintItem]], out_dir: Path,
                     metrics: InpaintMetrics, progress: bool = True) -> tuple[Table, dict[str, dict]]:
    """Table 3 (rows: `names`; columns: mask type x FID, LPIPS, SSIM) from the results on disk, and the scores as
    {row: {mask type: {"fid", "lpips", "ssim"}}}."""
    from .features import extract_features
    from .metrics import feature_stats, fid

    metric_names = _metric_names(metrics)
    table = Table("Table 3: inpainting and outpainting", list(names),
                  [(mask_type, metric) for mask_type in sets for metric in metric_names])
    options = dict(cache=metrics.cache, batch_size=metrics.batch_size, device=metrics.device, progress=progress)
    real = {mask_type: feature_stats(extract_features([item.image for item in items], metrics.inception,
                                                      **options)["pool"])
            for mask_type, items in sets.items()} if metrics.inception is not None else {}
    scores: dict[str, dict] = {}
    for name in names:
        scores[name] = {}
        for mask_type, items in sets.items():
            results = [out_dir / "results" / slug(name) / mask_type / item.result_name for item in items]
            row = {}
            if metrics.inception is not None:
                row["fid"] = fid(feature_stats(extract_features(results, metrics.inception, **options)["pool"]),
                                 real[mask_type])
            per_image = {}
            if metrics.lpips is not None or metrics.ssim:
                per_image = pair_values(results, [item.image for item in items], lpips=metrics.lpips,
                                        with_ssim=metrics.ssim, batch_size=metrics.batch_size, device=metrics.device,
                                        progress=progress, desc=f"LPIPS/SSIM ({name}, {mask_type})")
                row.update({key: float(np.mean(found)) for key, found in per_image.items()})
            for metric, key in (("FID", "fid"), ("LPIPS", "lpips"), ("SSIM", "ssim")):
                if key in row:
                    table.set(name, mask_type, metric, row[key])
            row["by_area"] = _area_scores(items, results, per_image, metrics, options)
            scores[name][mask_type] = row
    return table, scores


def mask_area_bin(area: float) -> str:
    """The mask-area bin of a coverage fraction, as LaMa's evaluation breaks results down: "0-10%", ..., "40-50%"
    (masks never cover more than half the image)."""
    top = round(MAX_MASK_AREA * 100) - AREA_BIN_PERCENT  # a mask of exactly the largest area is in the last bin
    low = min(int(area * 100 // AREA_BIN_PERCENT) * AREA_BIN_PERCENT, top)
    return f"{low}-{low + AREA_BIN_PERCENT}%"


def _area_scores(items: Sequence[InpaintItem], results: Sequence[Path], per_image: dict[str, list[float]],
                 metrics: InpaintMetrics, options: dict) -> dict[str, dict]:
    """{bin: {"count", "lpips", "ssim", and "fid" for bins of 2 or more images}}, bins in increasing area."""
    from .features import extract_features
    from .metrics import feature_stats, fid

    bins: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        bins.setdefault(mask_area_bin(float(read_mask(item.mask).mean())), []).append(index)
    breakdown = {}
    for label in sorted(bins, key=lambda label: int(label.split("-")[0])):
        members = bins[label]
        entry: dict[str, float] = {"count": len(members)}
        entry.update({key: float(np.mean([values[i] for i in members])) for key, values in per_image.items()})
        if metrics.inception is not None and len(members) >= 2:  # features come from the cache of the full set
            quiet = {**options, "progress": False}
            fake = extract_features([results[i] for i in members], metrics.inception, **quiet)["pool"]
            real = extract_features([items[i].image for i in members], metrics.inception, **quiet)["pool"]
            entry["fid"] = fid(feature_stats(fake), feature_stats(real))
        breakdown[label] = entry
    return breakdown


def area_table(names: Sequence[str], scores: dict[str, dict], mask_type: str, metric: str, key: str) -> Table:
    """`metric` of every row by mask-area bin for one mask type (LaMa's breakdown), from score_inpainting's scores."""
    labels = sorted({label for name in names for label in scores[name][mask_type]["by_area"]},
                    key=lambda label: int(label.split("-")[0]))
    table = Table(f"{mask_type} masks, {metric} by mask area", list(names), [(label, metric) for label in labels])
    for name in names:
        for label, entry in scores[name][mask_type]["by_area"].items():
            if key in entry:
                table.set(name, label, metric, entry[key])
    return table
