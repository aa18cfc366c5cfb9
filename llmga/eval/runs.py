"""What the evaluation runs share: settings given as `LABEL=MODEL:PROMPT`, the record of
how a folder's images were made, and JSONL caches of assistant replies."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..files import write_json_atomic
from .pairs import EvalInputError


def parse_setting_spec(text: str, sources: tuple[str, ...], example: str) -> tuple[str, str, str]:
    """`LABEL=MODEL:SOURCE` or `MODEL:SOURCE` -> (label, or "" when not given; model; source, one of `sources`).
    MODEL may hold ':' (a Windows drive): the source is after the last one."""
    label, _, rest = text.partition("=") if "=" in text else ("", "", text)
    model, _, source = rest.rpartition(":")
    source = source.strip().lower()
    if not model.strip() or source not in sources:
        raise EvalInputError(f"--setting {text!r}: expected LABEL=MODEL:PROMPT with PROMPT one of "
                             f"{', '.join(sources)}, e.g. \"{example}\"")
    return label.strip(), model.strip(), source


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
    """Rows of a JSONL file keyed by a string, appended as they are made, so a resumed run computes each once.
    A line that does not parse (an interrupted write) is ignored."""

    def __init__(self, path: Path, key_field: str = "key") -> None:
        self.path, self.key_field = path, key_field
        self.rows: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and key_field in row:
                    self.rows[str(row[key_field])] = row

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def add(self, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as file:  # an interrupted write left a partial line: end it first
            file.seek(0, os.SEEK_END)
            if file.tell():
                file.seek(-1, os.SEEK_END)
                if file.read(1) != b"\n":
                    file.write(b"\n")
        with self.path.open("a", encoding="utf-8") as file:
            for row in rows:
                self.rows[str(row[self.key_field])] = row
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
