"""Text-to-image evaluation (LLMGA Table 1): captions -> (assistant-refined) prompts -> SD images -> FID, IS, CLIP.

    captions = read_t2i_captions("captions_val2014.json", num=30000, seed=0)
    settings = [T2ISetting("SD1.5 + short caption", "models/sd15", "caption"),
                T2ISetting("LLMGA SD1.5-ft + refined prompt", "binxia/llmga-sd15-t2i-v2", "refined")]
    result = run_t2i_eval(settings, captions, Path("runs/t2i"), generate_fn=..., refine_fn=..., metrics=...)

The protocol (algorithms.md C.2, the usual zero-shot COCO FID): one random caption for each of N random COCO val
images, one image per caption with a fixed seed per caption (the same in every setting), FID of the generated set
against the real images (or precomputed statistics) with both sides resized to 256x256, Inception Score over 10
splits of the generated set, CLIP score (100 * cosine, ViT-B/32) of each image against its short caption.

Generation is injected (`generate_fn(model, prompts, seeds) -> images`, `refine_fn(captions) -> replies`), so the
loop runs on any backend; `backends.PipelineGenerator` and `backends.AssistantRefiner` bind it to the library's
SD1.5 / SDXL pipelines and assistant. A setting may carry its own generation (`Setting.generation`: an SDXL row's
official 1024x1024, CFG 5.0 beside SD1.5 rows). Every image is written atomically as it is made, and a resumed run
skips images already on disk; refinements are kept in `refined.jsonl` and computed once. Under `accelerate launch`
the replies and images are shared among the processes (`llmga.shards`) and the main process scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..files import save_image_atomic
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

if TYPE_CHECKING:
    from PIL import Image

    from .features import FeatureCache, FeatureExtractor

# A row's prompt: the short caption as it is, or the assistant's prompt between <gen_image> tags (how a label
# without LABEL= names it).
PROMPT_SOURCES = {"caption": "short caption", "refined": "refined prompt"}
# The paper's Table 1 rows; `--setting LABEL=MODEL:PROMPT` gives each its model.
TABLE1_ROWS = (("SD1.5 + short caption", "caption"), ("SD1.5 + refined prompt", "refined"),
               ("LLMGA SD1.5-ft + refined prompt", "refined"))
FID_SIZE = 256  # the usual zero-shot COCO protocol: generated and real images at 256x256 for FID
IS_SPLITS = 10  # improved-gan / torch-fidelity

GenerateFn = Callable[[str, list[str], list[int]], list["Image.Image"]]
RefineFn = Callable[[list[str]], list[str]]
TextEmbedFn = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Caption:
    """One caption to generate from. id: the image's file stem (the COCO image id, or the caption's line number)."""

    id: str
    text: str


T2ISetting = Setting  # a row of Table 1; its prompt is one of PROMPT_SOURCES


@dataclass(frozen=True)
class T2IGeneration(Generation):
    """How every image is made: `Generation` at width x height, batch_size prompts per SD call. Image i of the
    caption list uses seed + i in every setting."""

    width: int = 512
    height: int = 512
    batch_size: int = 4

    def summary(self) -> str:
        """"512x512, 50 steps, CFG 7.5"."""
        return f"{self.width}x{self.height}, {super().summary()}"


@dataclass
class T2IMetrics:
    """The metric networks (any may be None: that metric is skipped) and how features are extracted.

    inception: FID Inception extractor ({"pool", "logits"}); clip_image: CLIP image extractor ({"embed"});
    clip_text(captions) -> [N, D] CLIP text embeddings; with_is: report the Inception Score; fid_size: the square
    size images are brought to for Inception (None: as they are); cache: where features are kept between runs."""

    inception: FeatureExtractor | None = None
    with_is: bool = True
    clip_image: FeatureExtractor | None = None
    clip_text: TextEmbedFn | None = None
    cache: FeatureCache | None = None
    fid_size: int | None = FID_SIZE
    is_splits: int = IS_SPLITS
    batch_size: int = 32
    device: str | None = None


# --- captions and settings -----------------------------------------------------------------------------------


def read_t2i_captions(path: Path, num: int | None = None, seed: int = 0) -> list[Caption]:
    """Captions from a COCO captions JSON (`{"annotations": [{"image_id", "caption"}, ...]}`: with `num`, `num`
    random images and one random caption of each; without it, the first caption of every image) or from a text
    file (one caption a line, blank lines skipped; with `num`, `num` random lines). Drawn with
    numpy RandomState(seed); returned in image-id / line order. Raises EvalInputError for a missing, unreadable or
    empty file and for `num` larger than what it holds."""
    if not path.is_file():
        raise EvalInputError(f"{path} does not exist: give a COCO captions .json or a text file, one caption a line")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise EvalInputError(f"{path} could not be read as UTF-8 text ({error})") from error
    groups = _coco_groups(path, text) if path.suffix.lower() == ".json" else {
        f"{line:06d}": [caption] for line, caption in enumerate(
            " ".join(raw.split()) for raw in text.splitlines() if raw.strip())}
    if not groups:
        raise EvalInputError(f"{path} holds no captions: give a COCO captions .json ({{\"annotations\": [{{"
                             "\"image_id\", \"caption\"}, ...]}) or a text file with one caption a line")
    ids = sorted(groups)
    if num is None:
        return [Caption(image_id, groups[image_id][0]) for image_id in ids]
    if not 1 <= num <= len(ids):
        raise EvalInputError(f"--num {num} but {path} has captions for {len(ids)} images: give --num between 1 and "
                             f"{len(ids)}")
    rng = np.random.RandomState(seed)
    chosen = sorted(rng.choice(len(ids), size=num, replace=False))
    return [Caption(ids[index], groups[ids[index]][rng.randint(len(groups[ids[index]]))]) for index in chosen]


def _coco_groups(path: Path, text: str) -> dict[str, list[str]]:
    """{zero-padded image id: [captions]} of a COCO captions file."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise EvalInputError(f"{path} is not valid JSON ({error}): give a COCO captions file") from error
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise EvalInputError(f"{path} has no \"annotations\" list: give a COCO captions file "
                             "(captions_val2014.json) or a text file with one caption a line")
    groups: dict[str, list[str]] = {}
    for row in annotations:
        if not isinstance(row, dict) or "image_id" not in row or not isinstance(row.get("caption"), str):
            raise EvalInputError(f"{path}: annotation {row!r} lacks \"image_id\" or \"caption\"")
        image_id = row["image_id"]
        key = f"{image_id:012d}" if isinstance(image_id, int) else str(image_id)  # COCO's file-name padding
        caption = " ".join(row["caption"].split())
        if caption:
            groups.setdefault(key, []).append(caption)
    return groups


def parse_setting(text: str) -> T2ISetting:
    """`LABEL=MODEL:PROMPT` or `MODEL:PROMPT` (PROMPT: caption or refined) -> T2ISetting; without a label, one in the
    paper's wording ("<model> + short caption" / "+ refined prompt")."""
    return parse_setting_spec(text, PROMPT_SOURCES, "SD1.5 + short caption=models/sd15:caption")


def check_settings(settings: Sequence[T2ISetting]) -> None:
    if not settings:
        raise EvalInputError("give at least one --setting LABEL=MODEL:PROMPT, e.g. \"SD1.5 + short caption="
                             "models/diffusers/stable-diffusion-v1-5:caption\"")
    check_unique_names([setting.name for setting in settings])


# --- refinement and generation -------------------------------------------------------------------------------


def refine_captions(captions: Sequence[Caption], cache_path: Path, refine_fn: RefineFn, *, assistant: str,
                    batch_size: int = 8, progress: bool = True, shards: Shards = SINGLE_PROCESS) -> dict[str, dict]:
    """The assistant's prompt for every caption: {caption id: {"reply", "prompt", "has_prompt"}}.

    Replies are cached in `cache_path` (JSONL) under (assistant, caption) and computed once, `batch_size` at a time
    with `refine_fn(captions) -> replies`, each process its share (`runs.cached_rows`). The prompt is the text between
    the first <gen_image> tags; a reply without tags falls back to the caption (has_prompt False, counted in the
    report)."""

    def key(caption: Caption) -> str:
        return f"{assistant}\t{caption.text}"

    def make(batch: list[Caption]) -> list[dict]:
        replies = refine_fn([caption.text for caption in batch])
        if len(replies) != len(batch):
            raise ValueError(f"refine_fn answered {len(replies)} of {len(batch)} captions")
        rows = []
        for caption, reply in zip(batch, replies, strict=True):
            parsed = parse_reply(reply)
            rows.append({"key": key(caption), "assistant": assistant, "caption": caption.text, "reply": reply,
                         "prompt": parsed.prompt() if parsed.has_prompt else caption.text,
                         "has_prompt": parsed.has_prompt})
        return rows

    cache = cached_rows(cache_path, captions, key, make, batch_size=batch_size, shards=shards, progress=progress,
                        desc="refining captions", unit="caption")
    return {caption.id: cache.get(key(caption)) for caption in captions}


def generate_images(model: str, items: Sequence[tuple[str, str, int]], folder: Path, generate_fn: GenerateFn, *,
                    batch_size: int, progress: bool = True, desc: str = "generating",
                    shards: Shards = SINGLE_PROCESS) -> int:
    """Make `<folder>/<id>.png` for every (id, prompt, seed) whose image is not there yet, `batch_size` per call of
    `generate_fn(model, prompts, seeds)`, each process its share of the batches (`Shards.claim`); each image is saved
    (atomically) as soon as its batch is done. Returns how many images the run made (all processes together)."""
    from tqdm.auto import tqdm

    todo = [item for item in items if not (folder / f"{item[0]}.png").is_file()]
    mine = shards.claim(todo, batch_size)
    done = len(items) - len(todo)
    with tqdm(total=done + len(mine), initial=done, desc=desc, unit="image",
              disable=not (progress and shards.is_main)) as bar:
        for start in range(0, len(mine), batch_size):
            batch = mine[start:start + batch_size]
            images = generate_fn(model, [prompt for _, prompt, _ in batch], [seed for _, _, seed in batch])
            if len(images) != len(batch):
                raise ValueError(f"generate_fn made {len(images)} images for {len(batch)} prompts")
            for (image_id, _, _), image in zip(batch, images, strict=True):
                save_image_atomic(image, folder / f"{image_id}.png")
            bar.update(len(batch))
    return len(todo)


# --- the run -----------------------------------------------------------------------------------------------------


def run_t2i_eval(settings: Sequence[T2ISetting], captions: Sequence[Caption], out_dir: Path, *,
                 generate_fn: GenerateFn, metrics: T2IMetrics, refine_fn: RefineFn | None = None,
                 assistant: str = "", generation: T2IGeneration = T2IGeneration(),
                 reference: Path | None = None, progress: bool = True,
                 shards: Shards = SINGLE_PROCESS) -> RunResult | None:
    """Generate every setting's images into `<out_dir>/images/<setting>/<caption id>.png` (resuming), then score
    them: FID against `reference` (a folder of real images or an .npz of statistics; None: no FID), IS, CLIP score.
    Writes `<out_dir>/report.{json,md,png}` and returns the report. `assistant` names the refiner in the cache.
    With several processes (`shards`), each makes its share of the replies and images, and the main process scores
    and reports once all are made; the others return None."""
    check_settings(settings)
    if not captions:
        raise EvalInputError("no captions to evaluate: the captions file is empty")
    refined = {}
    if any(setting.prompt == "refined" for setting in settings):
        if refine_fn is None:
            raise EvalInputError("a setting uses the refined prompt: give the assistant (--mllm)")
        refined = refine_captions(captions, out_dir / "refined.jsonl", refine_fn, assistant=assistant,
                                  batch_size=generation.batch_size, progress=progress, shards=shards)
    made = {}
    for setting in settings:
        folder = out_dir / "images" / slug(setting.name)
        recipe = {"model": setting.model, "prompt": setting.prompt, **asdict(setting_generation(setting, generation))}
        recipe.pop("batch_size")
        if setting.prompt == "refined":
            recipe["assistant"] = assistant
        check_run_settings(folder, recipe)
        items = [(caption.id, refined[caption.id]["prompt"] if setting.prompt == "refined" else caption.text,
                  generation.seed + index) for index, caption in enumerate(captions)]
        made[setting.name] = generate_images(setting.model, items, folder, generate_fn,
                                             batch_size=generation.batch_size, progress=progress,
                                             desc=f"generating ({setting.name})", shards=shards)
    shards.wait()
    if not shards.is_main:
        return None
    table, rows = score_t2i(settings, captions, out_dir, metrics, reference, progress)
    report = {"task": "t2i", "protocol": _protocol(captions, metrics, generation, reference, assistant),
              "settings": [{**asdict(setting), **rows[setting.name], "made_this_run": made[setting.name]}
                           for setting in settings]}
    if refined:
        report["refinement"] = {"assistant": assistant,
                                "without_prompt": sum(not row["has_prompt"] for row in refined.values())}
    files = write_report(out_dir, report, [table], notes=_notes(report, settings, generation))
    return RunResult(report, files)


def score_t2i(settings: Sequence[T2ISetting], captions: Sequence[Caption], out_dir: Path, metrics: T2IMetrics,
              reference: Path | None, progress: bool = True) -> tuple[Table, dict[str, dict]]:
    """Table 1 (rows: settings; FID, IS, CLIP score) and each setting's numbers from the images on disk."""
    from .features import extract_features, stats_for
    from .metrics import clip_score, feature_stats, fid, inception_score, softmax

    options = dict(cache=metrics.cache, batch_size=metrics.batch_size, device=metrics.device, progress=progress)
    fid_on = metrics.inception is not None and reference is not None
    real = stats_for(reference, metrics.inception, image_size=metrics.fid_size, **options) if fid_on else None
    text_embeds = metrics.clip_text([caption.text for caption in captions]) if metrics.clip_text else None
    is_on = metrics.inception is not None and metrics.with_is
    columns = [name for name, on in (("FID", fid_on), ("IS", is_on),
                                     ("CLIP score", metrics.clip_image is not None and text_embeds is not None)) if on]
    table = Table("Table 1: text-to-image", [setting.name for setting in settings], [("", name) for name in columns])
    rows = {}
    for setting in settings:
        folder = out_dir / "images" / slug(setting.name)
        paths = [folder / f"{caption.id}.png" for caption in captions]
        row: dict = {"images": len(paths), "folder": str(folder)}
        if metrics.inception is not None:
            features = extract_features(paths, metrics.inception, image_size=metrics.fid_size, **options)
            if fid_on:
                row["fid"] = fid(feature_stats(features["pool"]), real)
        if is_on:
            splits = min(metrics.is_splits, len(paths))
            row["is_mean"], row["is_std"] = inception_score(softmax(features["logits"]), splits=splits)
            row["is_splits"] = splits
        if "CLIP score" in columns:
            image_embeds = extract_features(paths, metrics.clip_image, **options)["embed"]
            row["clip_score"] = float(clip_score(image_embeds, text_embeds).mean())
        for column, key in (("FID", "fid"), ("IS", "is_mean"), ("CLIP score", "clip_score")):
            if key in row:
                table.set(setting.name, "", column, row[key])
        rows[setting.name] = row
    return table, rows


def _protocol(captions: Sequence[Caption], metrics: T2IMetrics, generation: T2IGeneration,
              reference: Path | None, assistant: str) -> dict:
    return {"captions": len(captions), "reference": None if reference is None else str(reference),
            "fid_size": metrics.fid_size, "fid_features": getattr(metrics.inception, "name", None),
            "is_splits": metrics.is_splits, "clip": getattr(metrics.clip_image, "name", None),
            "assistant": assistant or None, **asdict(generation)}


def _notes(report: dict, settings: Sequence[T2ISetting], generation: T2IGeneration) -> list[str]:
    protocol = report["protocol"]
    size = f"{protocol['fid_size']}x{protocol['fid_size']}" if protocol["fid_size"] else "their own size"
    parts = [f"N = {protocol['captions']} captions, one image each, {protocol['width']}x{protocol['height']}, "
             f"{protocol['steps']} steps, CFG {protocol['cfg']}, seeds from {protocol['seed']}"]
    parts += [f"{setting.name}: {setting.generation.summary()}" for setting in settings
              if setting.generation not in (None, generation)]
    if protocol["fid_features"]:
        against = f"FID against {protocol['reference']} and " if protocol["reference"] else ""
        parts.append(f"{against}IS with the pytorch-fid Inception ({protocol['fid_features']}) on images at {size}")
    if protocol["clip"]:
        parts.append(f"CLIP score with {protocol['clip']} against the short caption")
    notes = ["; ".join(parts) + "."]
    splits = {row.get("is_splits") for row in report["settings"]} - {None}
    if splits and splits != {protocol["is_splits"]}:
        notes.append(f"IS over {min(splits)} splits (fewer images than the {protocol['is_splits']} splits of the "
                     "protocol).")
    if "refinement" in report and report["refinement"]["without_prompt"]:
        notes.append(f"{report['refinement']['without_prompt']} assistant replies had no <gen_image> prompt; their "
                     "short caption was used.")
    return notes
