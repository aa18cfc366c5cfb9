"""What every trainer in `training/` shares: config files, the Accelerator and its logs, seeding, per-step random
generators, epoch-ordered sampling, checkpoints and resuming, the progress bar.

A trainer reads top to bottom (diffusers' examples/text_to_image/train_text_to_image.py is the model):

    config = load_config(path, MyConfig)                       # YAML or JSON -> dataclass, clear errors
    accelerator = make_accelerator(config, "my_run")           # mixed precision, accumulation, logs
    ...models, optimizer, EpochShuffleSampler + DataLoader, accelerator.prepare(...)
    step = resume_checkpoint(accelerator, config.output_dir, config.resume_from_checkpoint)
    epoch, skip = data_position(step, steps_per_epoch, config.gradient_accumulation_steps)
    for batch in epoch_batches(accelerator, dataloader, epoch, skip, sampler, dataset): ...
        generator = step_generator(config.seed, accelerator.process_index, step, micro_step, accelerator.device)
        ... save_checkpoint(accelerator, config.output_dir, step, config.checkpoints_total_limit)

Resuming is exact: `accelerator.save_state` keeps model, optimizer, scheduler and registered objects (EMA); the data
order and per-sample augmentation depend only on (seed, epoch, index), and the noise of each step only on
(seed, process, step, micro-step), so a resumed run draws what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import shutil
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import Dataset, Sampler
from tqdm.auto import tqdm

ConfigT = TypeVar("ConfigT")
CHECKPOINT_PREFIX = "checkpoint-"
LOG_FILE = "train.jsonl"


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the key and what is expected."""


# --- config files ------------------------------------------------------------------------------------------------


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping stored in a .yaml / .yml / .json file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: give the path of a .yaml or .json file")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as error:
            raise ConfigError(f"{path} is YAML but PyYAML is not installed: pip install pyyaml, "
                              "or write the config as JSON") from error
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
    elif path.suffix == ".json":
        try:
            values = json.loads(text)
        except ValueError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from error
    else:
        raise ConfigError(f"{path}: config files end in .yaml, .yml or .json")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, got {type(values).__name__}")
    return values


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """["max_train_steps=10", "use_ema=false"] -> {"max_train_steps": 10, "use_ema": False} (values read as YAML
    scalars when PyYAML is installed, else as JSON, else kept as strings)."""
    overrides = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (for example max_train_steps=100)")
        try:
            import yaml

            overrides[key.strip()] = yaml.safe_load(raw)
        except ImportError:
            try:
                overrides[key.strip()] = json.loads(raw)
            except ValueError:
                overrides[key.strip()] = raw
    return overrides


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


_YAML_BOOLS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(fits, value): whether `value` fits the type hint, with ints and numeric strings ("2e-5", which YAML 1.1
    reads as a string) turned into floats for float fields."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            fits, coerced = _coerce(value, option)
            if fits:
                return True, coerced
        return False, value
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/off/yes/on as a bool
            spelled = [a for a in typing.get_args(hint) if isinstance(a, str) and a.lower() in _YAML_BOOLS[value]]
            if spelled:
                return True, spelled[0]
        return value in typing.get_args(hint), value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        coerced = [_coerce(item, typing.get_args(hint)[0]) for item in value]
        return all(fits for fits, _ in coerced), [item for _, item in coerced]
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return False, value
        try:
            return True, float(value)
        except ValueError:
            return False, value
    if hint is str:
        return isinstance(value, str), value
    return True, value


def load_config(path: str | Path, config_type: type[ConfigT], overrides: Mapping[str, Any] | None = None) -> ConfigT:
    """Build the dataclass `config_type` from a YAML or JSON file, then `overrides` on top.

    Raises ConfigError for a missing or unreadable file, unknown keys (listing the valid ones), missing required
    keys, values of the wrong type, and whatever the dataclass's `__post_init__` rejects (ValueError).
    """
    values = {**read_config_file(path), **(overrides or {})}
    fields = {field.name: field for field in dataclasses.fields(config_type)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"valid keys: {', '.join(fields)}")
    missing = [name for name, field in fields.items() if name not in values
               and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{path}: missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    hints = typing.get_type_hints(config_type)
    for key, value in values.items():
        fits, values[key] = _coerce(value, hints[key])
        if not fits:
            raise ConfigError(f"{path}: {key} must be {_describe(hints[key])}, got {value!r}")
    try:
        return config_type(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path}: {error}") from error


def run_cli(description: str, config_type: type[ConfigT], train: Callable[[ConfigT], Any],
            argv: Sequence[str] | None = None) -> None:
    """A trainer's command line: `--config FILE [--set key=value ...]`; a bad config or missing data exits with
    "error: <what to fix>" instead of a stack trace."""
    from .data.datasets import DataError

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help=f"YAML or JSON file with {config_type.__name__} keys")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)
    try:
        train(load_config(args.config, config_type, parse_overrides(args.set)))
    except (ConfigError, DataError) as error:
        raise SystemExit(f"error: {error}") from None


# --- accelerator, logging, seeding --------------------------------------------------------------------------------


class AcceleratorSettings(Protocol):
    output_dir: str
    mixed_precision: str | None
    gradient_accumulation_steps: int


class JsonlTracker(GeneralTracker):
    """An accelerate tracker that appends one JSON object per `log` call to a file (the config first). Always on,
    so every run leaves a machine-readable log even without tensorboard."""

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)

    @property
    def tracker(self) -> Path:
        return self.path

    def _write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, default=str) + "\n")

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        self._write({"config": values})

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        self._write({"step": step, **values})


def make_accelerator(config: AcceleratorSettings, run_name: str) -> Accelerator:
    """An Accelerator for `config` (mixed_precision None: what `accelerate launch` / its config file says), logging
    to output_dir/logs: always `train.jsonl`, plus tensorboard (output_dir/logs/<run_name>) when it is installed.
    The config's fields are stored as the run's hyper-parameters."""
    logs = Path(config.output_dir) / "logs"
    trackers: list[Any] = [JsonlTracker(logs / LOG_FILE)]
    if importlib.util.find_spec("tensorboard") is not None:
        trackers.append("tensorboard")
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(config.output_dir), logging_dir=str(logs)),
    )
    # tensorboard's hparams take numbers, strings and bools only.
    hparams = {key: value if isinstance(value, (int, float, str, bool)) else str(value)
               for key, value in dataclasses.asdict(config).items()}
    accelerator.init_trackers(run_name, config=hparams)
    return accelerator


def seed_everything(seed: int, accelerator: Accelerator) -> None:
    """Seed python, numpy and torch, differently on each process (the trainers' own draws use `step_generator`)."""
    set_seed(seed + accelerator.process_index)


def step_generator(seed: int, process_index: int, step: int, micro_step: int, device: torch.device) -> torch.Generator:
    """The generator for one micro-step's random draws (noise, timesteps, VAE sampling): a function of its
    arguments only, so a resumed run draws exactly what the uninterrupted run drew."""
    mixed = np.random.SeedSequence([seed, process_index, step, micro_step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample's augmentation in one epoch: the same in every process and after a resume."""
    return np.random.default_rng([seed, epoch, index])


def frozen_model_context(accelerator: Accelerator) -> contextlib.AbstractContextManager:
    """Load frozen models (VAE, text encoder) inside this: under DeepSpeed ZeRO-3 it keeps them whole instead of
    partitioned, since only the trained model goes through `accelerator.prepare`."""
    plugin = accelerator.state.deepspeed_plugin
    return plugin.zero3_init_context_manager(enable=False) if plugin is not None else contextlib.nullcontext()


def progress_bar(accelerator: Accelerator, total: int, initial: int) -> tqdm:
    """A step counter shown by the main process of each machine only."""
    return tqdm(total=total, initial=initial, desc="steps", disable=not accelerator.is_local_main_process)


# --- data order ---------------------------------------------------------------------------------------------------


class EpochDataset(Dataset):
    """A dataset whose random draws depend on the epoch (`sample_rng(seed, epoch, index)`); `epoch_batches` calls
    `set_epoch` before each epoch, in the main process, before the dataloader's workers copy the dataset."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class EpochShuffleSampler(Sampler[int]):
    """The indices 0..size-1 in an order fixed by (seed, epoch). Every process draws the same order (accelerate
    deals its batches out among the processes) and a resumed run draws it again."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


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
    `total_limit` checkpoints (the oldest are removed first; None keeps all)."""
    if accelerator.is_main_process and total_limit is not None:
        existing = checkpoint_dirs(output_dir)
        for old in existing[: max(0, len(existing) - total_limit + 1)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    path = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    accelerator.save_state(str(path))
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
