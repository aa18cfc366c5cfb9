"""What every `python -m llmga` command that writes files shares: error reporting, output file names, atomic writes.

Light on imports (torch only when a command runs), so `python -m llmga --help` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` (hidden, ending .tmp) to write the file to: renamed onto `path` when the block
    ends without error, removed otherwise, so an interrupted run never leaves a half-written file that a resumed
    run would take for finished. Writers that pick a format by suffix must be told the format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temp)
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def run_reporting(body: Callable[[], int], errors: tuple[type[BaseException], ...], out_of_memory_hint: str) -> int:
    """Run a command's body: an error of `errors` prints one line and returns 2, CUDA out-of-memory prints one line
    ending in `out_of_memory_hint` and returns 2, Ctrl-C returns 130."""
    import torch

    try:
        return body()
    except errors as error:
        print("error: " + " ".join(str(error).splitlines()), file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError as error:
        print(f"error: out of GPU memory ({str(error).splitlines()[0]}): {out_of_memory_hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def is_png_file(out: Path) -> bool:
    """Whether `out` names a .png file to write (not a folder)."""
    return out.suffix.lower() == ".png" and not out.is_dir()


def unique_png(out: Path, stem: str) -> Path:
    """`out` itself when it names a .png file (its folder created); else `<out>/<stem>.png` in the folder `out`
    (created), numbered `<stem>-1.png`, `<stem>-2.png`, ... rather than overwriting a file there."""
    if is_png_file(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        return out
    out.mkdir(parents=True, exist_ok=True)
    path, copy = out / f"{stem}.png", 1
    while path.exists():
        path, copy = out / f"{stem}-{copy}.png", copy + 1
    return path
