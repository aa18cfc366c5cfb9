"""What every trainer in `training/` shares: config files and the command line, the Accelerator and its logs,
seeding, per-sample random generators and epoch-ordered sampling. The optimizer-step loop, checkpoints and resuming
are `training/loop.py`.

    config = load_config(path, MyConfig)           # YAML or JSON -> dataclass, clear errors (run_cli does this)
    accelerator = make_accelerator(config, name)   # mixed precision, accumulation, logs (TrainingRun does this)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import Dataset, Sampler

from llmga.errors import run_reporting
from llmga.files import append_jsonl

ConfigT = TypeVar("ConfigT")
LOG_FILE = "train.jsonl"
OUT_OF_MEMORY_HINT = ("lower the batch size per process (per_device_train_batch_size or train_batch_size) and raise "
                      "gradient_accumulation_steps to keep the global batch")


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
            argv: Sequence[str] | None = None) -> int:
    """A trainer's command line: `--config FILE [--set key=value ...]`, `description` (the trainer's module docstring)
    as its help. Returns the exit status: 0 trained; 2 a bad config, missing data or another request that cannot be
    served, reported as one line `error: <what to fix>` (`llmga.errors.run_reporting`, as every command line of the
    pack); 130 Ctrl-C."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help=f"YAML or JSON file with {config_type.__name__} keys")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)

    def body() -> int:
        train(load_config(args.config, config_type, parse_overrides(args.set)))
        return 0

    return run_reporting(body, OUT_OF_MEMORY_HINT)


# --- accelerator, logging, seeding --------------------------------------------------------------------------------


class AcceleratorSettings(Protocol):
    output_dir: str
    mixed_precision: str | None
    gradient_accumulation_steps: int


class JsonlTracker(GeneralTracker):
    """An accelerate tracker that appends one JSON object per `log` call to a file (the config first; values are
    numbers, strings and bools). Always on, so every run leaves a machine-readable log even without tensorboard;
    `llmga.files.read_jsonl` reads it back (a row torn by a killed run is skipped)."""

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)

    @property
    def tracker(self) -> Path:
        return self.path

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        append_jsonl(self.path, [{"config": values}])

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        append_jsonl(self.path, [{"step": step, **values}])


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
    """Seed python, numpy and torch, differently on each process (the trainers' own draws use `sample_rng` and
    `loop.step_generator`)."""
    set_seed(seed + accelerator.process_index)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample's augmentation in one epoch: the same in every process and after a resume."""
    return np.random.default_rng([seed, epoch, index])


def frozen_model_context(accelerator: Accelerator) -> contextlib.AbstractContextManager:
    """Load frozen models (VAE, text encoder) inside this: under DeepSpeed ZeRO-3 it keeps them whole instead of
    partitioned, since only the trained model goes through `accelerator.prepare`."""
    plugin = accelerator.state.deepspeed_plugin
    return plugin.zero3_init_context_manager(enable=False) if plugin is not None else contextlib.nullcontext()


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


