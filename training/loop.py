"""The optimizer-step loop every trainer runs, from resuming to writing the trained model.

A trainer reads top to bottom (diffusers' examples/text_to_image/train_text_to_image.py is the model):

    run = TrainingRun(config, "my_run")            # Accelerator, logs, seeding, TF32
    ...models, optimizer, EpochShuffleSampler + DataLoader, run.accelerator.prepare(...)
    run.resume()                                   # the newest output_dir/checkpoint-<step>, or step 0
    run.train(model, dataloader, (sampler, dataset), total_steps, micro_step)
    state = run.accelerator.get_state_dict(model)  # on every process
    return run.finish(lambda: write(state))        # the main process writes the model; training ends

`micro_step(batch, generator, step) -> MicroStep` runs forward, backward and the optimizer step of one micro-batch
(inside `accelerator.accumulate(model)`); the loop averages its loss terms over processes and accumulation, logs one
row per optimizer step (the terms, lr, step_seconds, samples and the summed counts), shows the progress bar and saves
`checkpoint-<step>` every `checkpointing_steps`.

Resuming is exact: `accelerator.save_state` keeps model, optimizer, scheduler and registered objects (EMA, pools);
the data order and per-sample augmentation depend only on (seed, epoch, index), and the draws of each micro-step
only on (seed, process, step, micro-step), so a resumed run draws what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn
from tqdm.auto import tqdm

from llmga.files import atomic_folder

from .common import AcceleratorSettings, ConfigError, make_accelerator, seed_everything

CHECKPOINT_PREFIX = "checkpoint-"


class RunSettings(AcceleratorSettings, Protocol):
    """The config keys every trainer has for its run."""

    seed: int
    allow_tf32: bool
    checkpointing_steps: int
    checkpoints_total_limit: int | None
    resume_from_checkpoint: str | None


@dataclass
class MicroStep:
    """What one micro-step reports: its loss terms (detached scalars; "train_loss" is the total), the learning rate
    it used, its batch size on this process, and counts summed over the optimizer step (e.g. text tokens)."""

    terms: dict[str, torch.Tensor]
    lr: float
    batch_size: int
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class TrainResult:
    losses: list[float]  # per optimizer step of this run: the total loss, averaged over processes and accumulation
    global_step: int
    output_dir: Path


def step_generator(seed: int, process_index: int, step: int, micro_step: int, device: torch.device) -> torch.Generator:
    """The generator for one micro-step's random draws (noise, timesteps, VAE sampling): a function of its
    arguments only, so a resumed run draws exactly what the uninterrupted run drew."""
    mixed = np.random.SeedSequence([seed, process_index, step, micro_step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)


def progress_bar(accelerator: Accelerator, total: int, initial: int) -> tqdm:
    """A step counter shown by the main process of each machine only."""
    return tqdm(total=total, initial=initial, desc="steps", disable=not accelerator.is_local_main_process)


def data_position(step: int, steps_per_epoch: int, gradient_accumulation_steps: int) -> tuple[int, int]:
    """(epoch, batches of that epoch already consumed) after `step` optimizer steps."""
    epoch, step_in_epoch = divmod(step, steps_per_epoch)
    return epoch, step_in_epoch * gradient_accumulation_steps


def epoch_batches(accelerator: Accelerator, dataloader: Any, epoch: int, skip: int,
                  epoch_aware: Iterable[Any] = ()) -> Iterable[Any]:
    """The prepared dataloader's batches of `epoch`, without its first `skip` ones (not loaded, only skipped in the
    sampler). `epoch_aware` objects (sampler, dataset) get `set_epoch(epoch)` first."""
    for item in epoch_aware:
        item.set_epoch(epoch)
    dataloader.set_epoch(epoch)
    return accelerator.skip_first_batches(dataloader, skip) if skip else dataloader


# --- checkpoints --------------------------------------------------------------------------------------------------


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """output_dir/checkpoint-<step> folders, oldest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str | Path) -> int:
    """The step in a checkpoint folder's name (checkpoint-2000 -> 2000)."""
    name = Path(path).name
    if not name.startswith(CHECKPOINT_PREFIX) or not name[len(CHECKPOINT_PREFIX):].isdigit():
        raise ConfigError(f"{path} is not a checkpoint folder: its name must be {CHECKPOINT_PREFIX}<step>")
    return int(name[len(CHECKPOINT_PREFIX):])


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, total_limit: int | None) -> Path:
    """`accelerator.save_state` into output_dir/checkpoint-<step> (call on every process), keeping at most
    `total_limit` checkpoints (the oldest are removed first; None keeps all). The processes write into a temporary
    folder that becomes checkpoint-<step> once all are done, so a run killed while saving leaves no checkpoint that
    `resume_checkpoint` would take."""
    if accelerator.is_main_process and total_limit is not None:
        existing = checkpoint_dirs(output_dir)
        for old in existing[: max(0, len(existing) - total_limit + 1)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    path = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    with atomic_folder(path) if accelerator.is_main_process else contextlib.nullcontext() as temporary:
        # Every process writes its part (its random states, its DeepSpeed shards) into the main process's folder.
        (target,) = broadcast_object_list([str(temporary) if accelerator.is_main_process else None])
        accelerator.save_state(target)
        accelerator.wait_for_everyone()
    accelerator.wait_for_everyone()
    return path


def resume_checkpoint(accelerator: Accelerator, output_dir: str | Path, resume: str | None) -> int:
    """Load a checkpoint and return its step (0 when starting fresh).

    resume: None (start fresh), "latest" (the newest checkpoint in output_dir, or start fresh when there is none),
    or the path of a checkpoint-<step> folder (an error when missing).
    """
    if resume is None:
        return 0
    if resume == "latest":
        found = checkpoint_dirs(output_dir)
        if not found:
            return 0
        path = found[-1]
    else:
        path = Path(resume)
        if not path.is_dir():
            raise ConfigError(f"resume_from_checkpoint {resume} is not a folder: give a checkpoint-<step> folder, "
                              "'latest', or null to start fresh")
    step = checkpoint_step(path)
    accelerator.load_state(str(path))
    accelerator.print(f"resumed from {path} at step {step}")
    return step


# --- the run ------------------------------------------------------------------------------------------------------


class TrainingRun:
    """One training run on accelerate (see the module docstring): its Accelerator, the optimizer step it is at and
    the losses of the steps it ran."""

    def __init__(self, config: RunSettings, run_name: str) -> None:
        self.config = config
        self.accelerator = make_accelerator(config, run_name)
        seed_everything(config.seed, self.accelerator)
        if config.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        self.step = 0
        self.losses: list[float] = []

    def resume(self) -> int:
        """Load the checkpoint `resume_from_checkpoint` names (after `accelerator.prepare` and registering the
        checkpointed objects); returns the step it is at (0: a fresh start)."""
        self.step = resume_checkpoint(self.accelerator, self.config.output_dir, self.config.resume_from_checkpoint)
        return self.step

    def train(self, model: nn.Module, dataloader: Any, epoch_aware: Iterable[Any], total_steps: int,
              micro_step: Callable[[Any, torch.Generator, int], MicroStep],
              after_step: Callable[[], None] | None = None) -> list[float]:
        """Optimizer steps from the current one up to `total_steps`: `micro_step(batch, generator, step)` for each
        micro-batch of the prepared `dataloader` (epoch_aware: its sampler and dataset), `after_step()` after each
        optimizer step (an EMA update). Returns the losses of the steps run, one per optimizer step."""
        accelerator, config = self.accelerator, self.config
        accumulation = accelerator.gradient_accumulation_steps  # a DeepSpeed config that sets it wins over ours
        steps_per_epoch = math.ceil(len(dataloader) / accumulation)
        first_epoch, skip = data_position(self.step, steps_per_epoch, accumulation)
        bar = progress_bar(accelerator, total_steps, self.step)
        terms: dict[str, float] = {}
        counts: dict[str, int] = {}
        micro, started = 0, time.perf_counter()
        for epoch in range(first_epoch, math.ceil(total_steps / steps_per_epoch)):
            if self.step >= total_steps:
                break
            for batch in epoch_batches(accelerator, dataloader, epoch, skip if epoch == first_epoch else 0,
                                       epoch_aware):
                with accelerator.accumulate(model):
                    generator = step_generator(config.seed, accelerator.process_index, self.step, micro,
                                               accelerator.device)
                    micro += 1
                    done = micro_step(batch, generator, self.step)
                    for name, value in done.terms.items():
                        mean = accelerator.gather(value.float().reshape(1)).mean().item()
                        terms[name] = terms.get(name, 0.0) + mean / accumulation
                for name, count in done.counts.items():
                    counts[name] = counts.get(name, 0) + count
                if not accelerator.sync_gradients:
                    continue
                if after_step is not None:
                    after_step()
                self.step += 1
                seconds, started = time.perf_counter() - started, time.perf_counter()
                accelerator.log({**terms, "lr": done.lr, "step_seconds": seconds,
                                 "samples": done.batch_size * accelerator.num_processes * accumulation, **counts},
                                step=self.step)
                bar.update(1)
                bar.set_postfix(loss=f"{terms['train_loss']:.4f}")
                self.losses.append(terms["train_loss"])
                terms, counts, micro = {}, {}, 0
                if self.step % config.checkpointing_steps == 0:
                    save_checkpoint(accelerator, config.output_dir, self.step, config.checkpoints_total_limit)
                    started = time.perf_counter()  # step_seconds times training, not checkpoint writes
                if self.step >= total_steps:
                    break
        bar.close()
        accelerator.wait_for_everyone()
        return self.losses

    def finish(self, write: Callable[[], str]) -> TrainResult:
        """`write()` on the main process (it writes the trained model and says what it wrote, which is printed),
        then the end of training on every process."""
        if self.accelerator.is_main_process:
            self.accelerator.print(write())
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return TrainResult(losses=self.losses, global_step=self.step, output_dir=Path(self.config.output_dir))
