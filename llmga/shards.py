"""How a run's items are shared among the processes `accelerate launch` starts (GPUs, nodes): the evaluation runs and
the data tools scale through accelerate, never through a launcher of their own.

    shards = process_shards()                       # one process unless accelerate launched several
    todo = [item for item in items if not done(item)]
    for batch in batches(shards.claim(todo, batch_size), batch_size):
        ...                                         # each item written atomically in place, as in one process
    shards.wait()
    if shards.is_main:
        ...                                         # merge, score, report

What keeps a result independent of the number of processes:
- an item's seed and output depend on its index in the run (seed + index), never on the process that makes it;
- the items still to do are cut into blocks of the batch size and block k goes to process k % count, so every batch
  is one that a single process would have made from the same files: even batched results are identical;
- a file per item (an image) is written atomically in place; rows of a shared JSONL (assistant replies, recorded
  prompts) go to the process's own part file `<stem>.part-<rank><suffix>`, folded into the JSONL by the main process
  in the order one process would have written them;
- the main process merges and scores; the others print only their own warnings and errors.
A rerun resumes with any number of processes: finished items are on disk, and part files that an interrupted run
left are folded in first.

A single process (plain `python -m ...`) never imports accelerate or torch.distributed: its files are exactly those
of an unsharded run.

When a process fails, it prints its one-line error and exits; accelerate's launcher (torchrun) then stops the others
(SIGTERM: they end quietly, every file complete or absent) and exits non-zero, and a rerun resumes. A process that
was waiting for the failed one may notice first: it stops with one line saying so (`RunStopped`). Processes started by
something else that sets WORLD_SIZE notice at the next barrier, or after the process group's timeout (30 minutes).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .files import read_jsonl, write_bytes_atomic

T = TypeVar("T")

# Where launchers put the number of processes (accelerate's list: torchrun, then the MPI launchers).
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class RunStopped(ConnectionError):
    """A process of a run of several ended while the others waited for it (an OSError: reported as one line)."""


@dataclass(frozen=True)
class Shards:
    """This process's place in the run: `rank` in 0..count-1 (0 is the main process) among `count` processes, and
    accelerate's PartialState when count > 1 (barriers, this process's device)."""

    rank: int = 0
    count: int = 1
    state: Any = field(default=None, repr=False, compare=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T], block: int = 1) -> list[T]:
        """This process's items: `items` cut into blocks of `block` consecutive items, block k to process k % count
        (all of them in a single process)."""
        return [item for index, item in enumerate(items) if (index // block) % self.count == self.rank]

    def claim(self, todo: Sequence[T], block: int = 1) -> list[T]:
        """This process's share of `todo`, the items whose files are not on disk yet, after every process has listed
        them: no process writes an item before all agree on what is to do."""
        self.wait()
        return self.share(todo, block)

    def wait(self) -> None:
        """Wait until every process gets here (nothing in a single process). RunStopped when another process ended
        first (gloo and NCCL notice a peer's closed connection) or the process group's timeout passed."""
        if self.state is None:
            return
        try:
            self.state.wait_for_everyone()
        except RuntimeError as error:  # torch.distributed's DistBackendError and gloo's errors are RuntimeErrors
            raise RunStopped(f"process {self.rank}: another process of this run stopped before it (its error is "
                             "printed above); what was made is kept: run the same command again to resume") from error

    def device(self, asked: str) -> str:
        """Where this process runs a model asked to run on `asked` (auto/cuda/cpu/mps): auto is this process's own
        device (its GPU, cuda:<local rank>) when accelerate launched several; anything else as asked."""
        return str(self.state.device) if self.state is not None and asked == "auto" else asked

    def part(self, path: Path) -> Path:
        """Where this process appends rows meant for the JSONL `path`: `path` itself in a single process, else its
        own part file beside it (`prompts.jsonl` -> `prompts.part-1.jsonl`), folded in by `merge`."""
        return path if self.count == 1 else path.with_name(f"{path.stem}.part-{self.rank}{path.suffix}")

    def merge(self, path: Path, key_field: str, order: Sequence[str] = ()) -> None:
        """The main process folds the part files of `path` into it (`merge_parts`), then every process waits for it."""
        if self.is_main:
            merge_parts(path, key_field, order)
        self.wait()


SINGLE_PROCESS = Shards()  # a run of one process: the default of every loop that shares its items


def launched_processes() -> int:
    """How many processes the launcher started (1 when none did)."""
    for name in WORLD_SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return max(int(value), 1)
    return 1


def process_shards() -> Shards:
    """This process's Shards: one of several when a launcher (`accelerate launch`, torchrun, mpirun) started several
    (accelerate's PartialState joins them: NCCL on GPUs, gloo on the CPU, with ACCELERATE_USE_CPU or no CUDA GPU;
    processes other than the main one get no transformers/diffusers loading bars), else the only one, without
    accelerate."""
    if launched_processes() == 1:
        return Shards()
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    if not state.is_main_process:
        _hide_loading_bars()
    return Shards(state.process_index, state.num_processes, state)


def _hide_loading_bars() -> None:
    """Turn off transformers' and diffusers' loading bars: with several processes, only the main one shows progress."""
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def part_files(path: Path) -> list[Path]:
    """The part files of the JSONL `path` on disk, whatever number of processes wrote them, by rank."""
    pattern = re.compile(rf"{re.escape(path.stem)}\.part-(\d+){re.escape(path.suffix)}")
    found = [(int(match.group(1)), child) for child in path.parent.glob(f"{path.stem}.part-*{path.suffix}")
             if (match := pattern.fullmatch(child.name))] if path.parent.is_dir() else []
    return [child for _, child in sorted(found)]


def merge_parts(path: Path, key_field: str, order: Sequence[str] = ()) -> int:
    """Fold the part files of the JSONL `path` into it and delete them; returns how many rows were added. Rows keep
    their text; a row whose `key_field` is already in `path` (or in an earlier part) is dropped; the new rows follow
    `order` (keys; the rest after them, as found). `path` is rewritten
    atomically before the parts go, so an interruption loses nothing."""
    parts = part_files(path)
    if not parts:
        return 0
    data = path.read_bytes() if path.is_file() else b""
    kept = data if data.endswith(b"\n") or not data else data + b"\n"  # a torn last line is ended, as append_jsonl does
    known = {str(row[key_field]) for row in read_jsonl(path) if key_field in row}
    new: dict[str, dict] = {}
    for part in parts:
        for row in read_jsonl(part):
            if key_field in row and str(row[key_field]) not in known:
                new.setdefault(str(row[key_field]), row)
    position = {key: index for index, key in enumerate(order)}
    rows = sorted(new.values(), key=lambda row: position.get(str(row[key_field]), len(position)))
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)  # as append_jsonl writes them
    write_bytes_atomic(path, kept + lines.encode("utf-8"))
    for part in parts:
        part.unlink(missing_ok=True)
    return len(rows)

