"""The image pairs an editing evaluation scores: a generated (edited) image and its ground-truth target.

Two ways to name them:

Manifest (our own outputs): a `.jsonl` file (one JSON object a line), a `.json` file (a list of objects) or a
`.csv` file (a header row), one row per edit, with the columns
    output   the generated image                                   (required)
    target   the ground-truth edited image                         (required)
    caption  the target caption, for CLIP-T                        (needed only for clip-t)
    input    the source image the edit started from                (optional; not used by the metrics)
    id       a name for the row in reports                         (optional; default: the row's line number)
Relative paths are relative to the manifest's folder; other columns are ignored.

MagicBrush (the official test layout, OSU-NLP-Group/MagicBrush `evaluation/image_eval.py`):
    generated/<id>/<id>_1.png        turn 1
    generated/<id>/<id>_inde_<k>.png turn k made from the ground-truth output of turn k-1 (independent)
    generated/<id>/<id>_iter_<k>.png turn k made from the model's own turn k-1 (iterative)
    gt/<id>/<id>-output<k>.png       the ground truth of turn k (inputs and masks beside it are ignored)
    captions: local_captions.json    {"<id>": {"<id>-output<k>.png": "target caption", ...}, ...}
Settings: single-turn ("all turns") scores `_1` and every `_inde_k` against output k; multi-turn ("final turn")
scores the last `_iter_n` (or `_1` for one-turn sessions) against the last output n. `.jpg` works like `.png`.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..files import read_json

SETTINGS = ("single-turn", "multi-turn")
MANIFEST_SUFFIXES = (".jsonl", ".json", ".csv")
_IMAGE = r"\.(?:png|jpe?g)"
_GENERATED = re.compile(rf"^(?P<stem>.+?)_(?:inde_(?P<inde>\d+)|iter_(?P<iter>\d+)|(?P<first>1)){_IMAGE}$", re.I)
_GROUND_TRUTH = re.compile(rf"^(?P<stem>.+)-output(?P<turn>\d+){_IMAGE}$", re.I)


class EvalInputError(ValueError):
    """Bad evaluation input (manifest, folders, captions, metric names); the message says what to change."""


@dataclass(frozen=True)
class EditPair:
    """One scored edit: `output` (generated) vs `target` (ground truth); `caption` describes the target."""

    id: str
    output: Path
    target: Path
    caption: str | None = None
    input: Path | None = None
    turn: int | None = None


def read_manifest(path: str | Path) -> list[EditPair]:
    """The pairs a manifest lists (format in the module docstring); every image must exist."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"manifest {path} does not exist: give a .jsonl, .json or .csv file of edits")
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise EvalInputError(f"manifest {path} is not a {', '.join(MANIFEST_SUFFIXES)} file: name it by its format")
    rows = _manifest_rows(path, suffix)
    if not rows:
        raise EvalInputError(f"manifest {path} lists no edits: add one row per edit with output and target")
    return [_manifest_pair(path, where, row) for where, row in rows]


def _manifest_rows(path: Path, suffix: str) -> list[tuple[str, dict]]:
    if suffix == ".json":
        rows = read_json(path, EvalInputError, "manifest")
        if not isinstance(rows, list):
            raise EvalInputError(f"manifest {path} holds a {type(rows).__name__}: a .json manifest is a list of rows")
        return [(f"row {index}", row) for index, row in enumerate(rows, 1)]
    text = path.read_text(encoding="utf-8")
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        return [(f"line {reader.line_num}", row) for row in reader]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise EvalInputError(f"{path} line {number} is not a JSON object ({error})") from error
    return rows


def _manifest_pair(manifest: Path, where: str, row: object) -> EditPair:
    if not isinstance(row, dict):
        raise EvalInputError(f"{manifest} {where} is a {type(row).__name__}, not an object with output and target")
    paths = {}
    for column, meaning in (("output", "the generated image"), ("target", "the ground-truth edited image"),
                            ("input", "the source image")):
        value = row.get(column)
        if value in (None, ""):
            if column == "input":
                continue
            raise EvalInputError(f"{manifest} {where} has no {column!r} ({meaning}): every row needs output and target")
        image = manifest.parent / str(value)
        if not image.is_file():
            raise EvalInputError(f"{manifest} {where}: {column} image {image} does not exist")
        paths[column] = image
    caption = row.get("caption")
    return EditPair(id=str(row.get("id") or where.split()[-1]), output=paths["output"], target=paths["target"],
                    caption=str(caption) if caption not in (None, "") else None, input=paths.get("input"))


def read_captions(path: str | Path) -> dict[str, dict[str, str]]:
    """MagicBrush captions: {session id: {ground-truth file name: caption}} (e.g. local_captions.json)."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"caption file {path} does not exist: give MagicBrush's local_captions.json")
    captions = read_json(path, EvalInputError, "caption file")
    if not isinstance(captions, dict) or not all(isinstance(turns, dict) for turns in captions.values()):
        raise EvalInputError(f"caption file {path} is not {{id: {{'<id>-output<k>.png': caption}}}} "
                             "like MagicBrush's local_captions.json")
    return captions


def read_edit_pairs(source: str | Path, ground_truth: str | Path | None = None, setting: str = "both",
                    captions: str | Path | None = None) -> dict[str, list[EditPair]]:
    """{setting name: pairs} of an editing evaluation: {"manifest": read_manifest(source)} for a manifest file; with
    `ground_truth`, `source` is the folder of generated MagicBrush sessions and the MagicBrush `setting` (one of
    SETTINGS, or "both") is read, captions from `captions` (local_captions.json) when given."""
    source = Path(source)
    if ground_truth is None:
        if source.is_dir():
            raise EvalInputError(f"{source} is a folder: give --gt <ground-truth folder> to score it as MagicBrush "
                                 "sessions, or give a manifest file")
        return {"manifest": read_manifest(source)}
    if source.is_file():
        raise EvalInputError(f"{source} is a file but --gt was given: --gt goes with a folder of generated MagicBrush "
                             "sessions; drop --gt to read a manifest")
    turns = read_captions(captions) if captions is not None else None
    names = SETTINGS if setting == "both" else (setting,)
    return {name: read_magicbrush(source, ground_truth, name, turns) for name in names}


def read_magicbrush(generated: str | Path, ground_truth: str | Path, setting: str,
                    captions: dict[str, dict[str, str]] | None = None) -> list[EditPair]:
    """The pairs of one MagicBrush setting ('single-turn' or 'multi-turn'), sessions in sorted id order.

    Like the official script, the generated and ground-truth folders must hold the same session folders and
    single-turn needs one generated image per ground-truth turn. Unlike it, a missing turn is an error naming the
    file rather than a silent pairing with a neighbouring turn.
    """
    if setting not in SETTINGS:
        raise EvalInputError(f"setting {setting!r} is unknown: choose one of {', '.join(SETTINGS)}")
    generated, ground_truth = Path(generated), Path(ground_truth)
    sessions = _session_ids(generated, "generated"), _session_ids(ground_truth, "ground-truth")
    if sessions[0] != sessions[1]:
        only_generated, only_truth = sorted(sessions[0] - sessions[1]), sorted(sessions[1] - sessions[0])
        raise EvalInputError(
            f"{generated} and {ground_truth} must hold the same session folders: only generated "
            f"{only_generated[:5]}{' ...' if len(only_generated) > 5 else ''}, only ground truth "
            f"{only_truth[:5]}{' ...' if len(only_truth) > 5 else ''}")
    pairs = []
    for session in sorted(sessions[0]):
        truths = _ground_truth_turns(ground_truth / session)
        made = _generated_turns(generated / session)
        last = max(truths)
        turns = range(1, last + 1) if setting == "single-turn" else [last]
        for turn in turns:
            kind = "first" if turn == 1 else "inde" if setting == "single-turn" else "iter"
            output = made.get((kind, turn))
            if output is None:
                expected = f"{session}_1.png" if turn == 1 else f"{session}_{kind}_{turn}.png"
                raise EvalInputError(f"{generated / session} has no {expected}: {setting} compares it with "
                                     f"{truths[turn].name} (turn {turn} of {last})")
            caption = (captions or {}).get(session, {}).get(truths[turn].name)
            pairs.append(EditPair(id=session, output=output, target=truths[turn], caption=caption, turn=turn))
        extra = sorted(k for kind, k in made if kind == "inde" and k > last)
        if setting == "single-turn" and extra:
            raise EvalInputError(f"{generated / session} has _inde_ turns {extra} but the ground truth stops at turn "
                                 f"{last}: the turn counts must match")
    return pairs


def _session_ids(folder: Path, what: str) -> set[str]:
    if not folder.is_dir():
        raise EvalInputError(f"{what} folder {folder} does not exist: give the folder of MagicBrush session folders")
    ids = {child.name for child in folder.iterdir() if child.is_dir()}
    if not ids:
        raise EvalInputError(f"{what} folder {folder} has no session folders (<id>/): see the MagicBrush layout")
    return ids


def _ground_truth_turns(folder: Path) -> dict[int, Path]:
    turns = {}
    for file in folder.iterdir():
        match = _GROUND_TRUTH.match(file.name)
        if match and match["stem"] == folder.name and file.is_file():
            turns[int(match["turn"])] = file
    if not turns or sorted(turns) != list(range(1, len(turns) + 1)):
        raise EvalInputError(f"{folder} must hold {folder.name}-output1.png ... -output<n>.png without gaps; found "
                             f"turns {sorted(turns)}")
    return turns


def _generated_turns(folder: Path) -> dict[tuple[str, int], Path]:
    """{('first', 1) | ('inde', k) | ('iter', k): file} of the session's generated images."""
    made = {}
    for file in folder.iterdir():
        match = _GENERATED.match(file.name)
        if match and match["stem"] == folder.name and file.is_file():
            kind = next(name for name in ("inde", "iter", "first") if match[name])
            made[(kind, int(match[kind]))] = file
    if not made:
        raise EvalInputError(f"{folder} holds no generated image named {folder.name}_1.png, _inde_<k> or _iter_<k>")
    return made
