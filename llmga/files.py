"""Every file the pack writes is complete or absent at any moment: one atomic writer, and the helpers built on it.

A file is written to a hidden temporary name beside its target (`.<name>.<random>.tmp`) and renamed onto the target
when it is complete (`os.replace`, atomic on POSIX and Windows); a run killed half-way leaves no half file, and a
rerun simply replaces what is there. A folder (a checkpoint) is built the same way under a temporary name and
renamed into place. Append-only logs (JSONL) are the one exception: each row is one line, a torn last line is
ended before the next append and skipped when read.

Light on imports (numpy/PIL/torch only inside the helpers that need them), so the command line stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write the file to: renamed onto `path` when the block ends without error,
    removed otherwise. Writers that pick a format by suffix must be told the format (the temporary name ends .tmp)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named first and created inside the try (not tempfile.mkstemp): a Ctrl-C or SIGTERM that lands just after the
    # file appears, even inside the call that creates it, still reaches the finally that removes it.
    temp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 2) -> None:
    """`data` as JSON (UTF-8, non-ASCII kept, a final newline) written to `path` atomically."""
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def save_image_atomic(image, path: str | Path, *, format: str = "PNG", **options) -> None:
    """Save a PIL image to `path` atomically; `options` go to `Image.save` (e.g. pnginfo)."""
    with atomic_path(path) as temp:
        image.save(temp, format=format, **options)


def save_npz_atomic(path: str | Path, **arrays) -> None:
    """np.savez of `arrays` to `path` atomically."""
    import numpy as np

    with atomic_path(path) as temp, temp.open("wb") as file:
        np.savez(file, **arrays)


def save_torch_atomic(obj: Any, path: str | Path) -> None:
    """torch.save of `obj` to `path` atomically (tensors and plain containers: loadable with weights_only=True)."""
    import torch

    with atomic_path(path) as temp:
        torch.save(obj, temp)


def save_safetensors_atomic(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors.torch.save_file of `tensors` to `path` atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=metadata)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside `path` to build a folder in (a checkpoint): moved onto `path` when the block ends
    without error, replacing a folder already there; removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"  # named first, made inside the try (atomic_path)
    try:
        temp.mkdir(mode=0o700)
        yield temp
        if path.exists():
            old = path.parent / f".{path.name}.{secrets.token_hex(8)}.old"
            os.replace(path, old)
            try:
                os.replace(temp, path)
            except BaseException:
                os.replace(old, path)  # the previous folder goes back: never lose a complete checkpoint
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, path)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Append `rows` to a JSONL file, one line each, flushed to disk; a torn last line (a killed run) is ended
    first so it cannot swallow the next row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as file:
        file.seek(0, os.SEEK_END)
        if file.tell():
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                file.write(b"\n")
        for row in rows:
            file.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        file.flush()
        os.fsync(file.fileno())


def read_json(path: str | Path, error: type[Exception] = ValueError, what: str = "") -> Any:
    """The JSON value in the UTF-8 file at `path`; `error("<what> <path> is not valid JSON (<why>)")` when it does
    not parse (check that the file exists first, with a message that says what to give)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as problem:
        raise error(f"{what} {path} is not valid JSON ({problem})".lstrip()) from problem


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSONL file (none when it does not exist); lines that do not parse as a JSON object (a torn
    write) are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
