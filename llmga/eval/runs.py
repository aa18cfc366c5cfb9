"""What the evaluation runs share: settings given as `LABEL=MODEL:PROMPT`, how images are generated, comma-separated
choices (`--metrics fid,is`), the record of how a folder's images were made, and JSONL caches of assistant replies
(filled by every process of a sharded run, `llmga.shards`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..files import append_jsonl, read_jsonl, write_json_atomic
from ..shards import Shards
from .pairs import EvalInputError

T = TypeVar("T")


@dataclass(frozen=True)
class Setting:
    """A row of a table: a label, the SD model (an SD1.5 or SDXL folder or released name), where its prompt comes
    from (one of the task's PROMPT_SOURCES: t2i "caption" / "refined", inpaint "plain" / "assistant") and, where it
    is not the run's, how its images are made (e.g. an SDXL row's official steps, CFG, size and strength in a run of
    SD1.5 rows)."""

    name: str
    model: str
    prompt: str
    generation: Generation | None = None


@dataclass(frozen=True)
class Generation:
    """How every image of a run is made (the official scripts' 50 steps, CFG 7.5, empty negative); item i of the
    run uses seed + i in every setting."""

    steps: int = 50
    cfg: float = 7.5
    negative: str = ""
    seed: int = 0
    encoding: str = "llmga"  # the long-prompt encoding (llmga or lpw; SDXL has llmga only)

    def summary(self) -> str:
        """"50 steps, CFG 7.5"."""
        return f"{self.steps} steps, CFG {self.cfg}"


def setting_generation(setting: Setting, generation: Generation) -> Generation:
    """How `setting`'s images are made: its own generation, else the run's."""
    return setting.generation or generation


def split_label(text: str) -> tuple[str, str]:
    """`LABEL=REST` -> (LABEL without surrounding spaces, REST); text without '=' -> ("", text)."""
    label, _, rest = text.partition("=") if "=" in text else ("", "", text)
    return label.strip(), rest


def parse_setting_spec(text: str, sources: Mapping[str, str], example: str) -> Setting:
    """`LABEL=MODEL:SOURCE` or `MODEL:SOURCE` -> Setting, SOURCE one of `sources` ({source: how a default label
    names it}); without a label, "<model folder name> + <that name>". MODEL may hold ':' (a Windows drive): the
    source is after the last one."""
    label, rest = split_label(text)
    model, _, source = rest.rpartition(":")
    source = source.strip().lower()
    if not model.strip() or source not in sources:
        raise EvalInputError(f"--setting {text!r}: expected LABEL=MODEL:PROMPT with PROMPT one of "
                             f"{', '.join(sources)}, e.g. \"{example}\"")
    model = model.strip()
    return Setting(label or f"{Path(model).name} + {sources[source]}", model, source)


def parse_names(text: str, known: Sequence[str], flag: str, what: str) -> tuple[str, ...]:
    """A comma-separated choice ('narrow, Wide,narrow') -> the names of `known` it gives, lower-cased, in the order
    given, each once. EvalInputError naming the unknown names (`what`: e.g. "metrics"), or saying none was given."""
    names = tuple(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in known]
    choose = f"choose from {', '.join(known)} (comma-separated)"
    if unknown:
        raise EvalInputError(f"unknown {what} {unknown} in {flag} {text!r}: {choose}")
    if not names:
        raise EvalInputError(f"{flag} {text!r} names no {what}: {choose}")
    return names


def parse_metrics(text: str, known: Sequence[str]) -> tuple[str, ...]:
    """`--metrics` of any evaluation ('clip-i,l1') -> the metric names in `known` order (('l1', 'clip-i')), so reports
    list them the same way however they were typed; unknown or no names are an EvalInputError."""
    names = parse_names(text, known, "--metrics", "metrics")
    return tuple(name for name in known if name in names)


def check_unique_names(names: list[str]) -> None:
    """EvalInputError unless every setting has its own name and folder."""
    if len({slug(name) for name in names}) != len(names):
        raise EvalInputError(f"settings {names} share a name (or its folder name): give each its own LABEL=")


def slug(name: str) -> str:
    """A folder name for a setting: "SD1.5 + short caption" -> "SD1.5_short_caption"."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_") or "setting"


def check_run_settings(folder: Path, settings: dict) -> None:
    """Record the settings that images in `folder` are made with (`run.json`), or check a resumed run against them:
    ValueError naming the differences when the folder's images were made otherwise."""
    record = folder / "run.json"
    if record.is_file():
        try:
            saved = json.loads(record.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            saved = None
        if saved != settings:
            changed = sorted(key for key in set(settings) | set(saved or {})
                             if (saved or {}).get(key) != settings.get(key))
            raise ValueError(f"{folder} holds images made with other settings ({', '.join(changed)} differ; see "
                             f"{record}): use another output folder, or delete {folder} to make them again")
        return
    write_json_atomic(record, settings)


class JsonlCache:
    """Rows of a JSONL file keyed by a string, appended as they are made (`llmga.files.append_jsonl`), so a resumed
    run computes each once. A line that does not parse (an interrupted write) is ignored. `append_to`: where new rows
    go when not to `path` (a process's part file, `Shards.part`)."""

    def __init__(self, path: Path, key_field: str = "key", append_to: Path | None = None) -> None:
        self.path, self.key_field, self.append_to = path, key_field, append_to or path
        self.rows = {str(row[key_field]): row for row in read_jsonl(path) if key_field in row}

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def add(self, rows: list[dict]) -> None:
        append_jsonl(self.append_to, rows)
        self.rows.update((str(row[self.key_field]), row) for row in rows)


def cached_rows(path: Path, items: Sequence[T], key: Callable[[T], str], make: Callable[[list[T]], list[dict]], *,
                batch_size: int, shards: Shards, progress: bool, desc: str, unit: str) -> JsonlCache:
    """The JSONL cache at `path` with a row for every item (under "key": `key(item)`): the missing rows are made by
    `make(batch) -> rows`, `batch_size` items a call, each process its share (`Shards.share`), appended as each batch
    is done. With several processes, each appends to its part file; the main one merges them in the order one
    process would have written them, and every process gets the whole cache."""
    from tqdm.auto import tqdm

    shards.merge(path, "key")  # rows that an interrupted run of several processes left in part files
    cache = JsonlCache(path, append_to=shards.part(path))
    todo = list({key(item): item for item in items if cache.get(key(item)) is None}.values())
    mine = shards.share(todo, batch_size)
    with tqdm(total=len(mine), desc=desc, unit=unit, disable=not (progress and shards.is_main)) as bar:
        for start in range(0, len(mine), batch_size):
            batch = mine[start:start + batch_size]
            cache.add(make(batch))
            bar.update(len(batch))
    if shards.count == 1:
        return cache
    shards.wait()
    shards.merge(path, "key", [key(item) for item in todo])
    return JsonlCache(path)
