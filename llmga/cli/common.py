"""What the commands of `python -m llmga` share: bad-input errors, the library's warnings on stderr, SIGTERM ending a
command as Ctrl-C does, where models are looked up, the assistant loaded from the options, and how output files are
checked (before anything runs), named and written (atomically).

Light on imports (torch only when a command runs), so `python -m llmga --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..devices import ASSISTANT_ATTENTIONS, DEVICES, DTYPES
from ..errors import run_reporting
from ..mllm.tasks import LANGUAGE_CHOICES

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_MODELS_DIR = Path("models")
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, the status a shell reports for a command ended by SIGTERM


class InputError(ValueError):
    """Bad command-line input; the message says what to change."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt: the files being written are removed on
    the way out (`llmga.files`), and the command exits with EXIT_TERMINATED."""


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated in the main thread (elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(body: Callable[[], int], out_of_memory_hint: str) -> int:
    """Run a command's body with the library's warnings shown and every error reported as one line (exit 2).
    Ctrl-C (SIGINT) returns 130 and SIGTERM 143, both without a message; files are complete or absent either way."""
    show_library_warnings()
    try:
        with _sigterm_raises():
            return run_reporting(body, out_of_memory_hint)
    except Terminated:
        return EXIT_TERMINATED


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever `sys.stderr` is when a record comes, so a redirected stderr gets it."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_library_warnings() -> None:
    """Print the library's warnings (prompt truncation) as one line each on stderr; set up once per process."""
    library = logging.getLogger("llmga")
    if not any(isinstance(handler, _StderrHandler) for handler in library.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        library.addHandler(handler)
        library.setLevel(logging.WARNING)


# --- options every model-running command shares ------------------------------------------------------------------


def add_models_arguments(parser: argparse.ArgumentParser, kinds: str) -> None:
    """--models-dir (repeatable) and --allow-download; `kinds` says which subfolders the command looks in."""
    parser.add_argument("--models-dir", type=Path, action="append", default=[],
                        help=f"models folder laid out like ComfyUI's (repeatable; default: models): {kinds}")
    parser.add_argument("--allow-download", action="store_true", help="download missing released LLMGA checkpoints")


def add_device_arguments(parser: argparse.ArgumentParser, dtype_help: str, dtypes: tuple[str, ...] = DTYPES) -> None:
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--dtype", choices=dtypes, default="auto", help=dtype_help)


ASSISTANT_AND_SD_FOLDERS = ("the assistant is looked up in it and its LLM/, the CLIP vision tower in its clip_vision/, "
                            "SD in its diffusers/")


def add_assistant_arguments(parser: argparse.ArgumentParser, *, required: bool, temperature: float = 0.2,
                            other_kinds: str = "") -> None:
    """--mllm, --models-dir, --allow-download, the decoding options (--temperature, --top-p, --top-k,
    --repetition-penalty, --max-new-tokens) and --language. other_kinds: what else the command looks up in the models
    folders, for --models-dir's help."""
    parser.add_argument("--mllm", required=required, help="assistant checkpoint folder or released name (e.g. "
                        "binxia/llmga-Qwen2-0.5B-full-finetune)" + ("" if required else "; optional"))
    add_models_arguments(parser, ASSISTANT_AND_SD_FOLDERS + (f", {other_kinds}" if other_kinds else ""))
    parser.add_argument("--temperature", type=float, default=temperature,
                        help=f"assistant sampling temperature (0: greedy; default {temperature})")
    checkpoint = "default: the checkpoint's generation_config.json, as the official CLIs"
    parser.add_argument("--top-p", type=float, help=f"nucleus sampling, in (0, 1] ({checkpoint})")
    parser.add_argument("--top-k", type=int, help=f"sample among the k most likely tokens, 0: all ({checkpoint})")
    parser.add_argument("--repetition-penalty", type=float,
                        help=f"> 1 makes repeats less likely, greedy decoding included; 1: none ({checkpoint})")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="longest assistant reply (official: 512)")
    parser.add_argument("--language", choices=LANGUAGE_CHOICES, default="auto",
                        help="language of the instruction phrasings (auto: Chinese when an llmga-cn checkpoint is "
                        "asked in Chinese, else English)")
    parser.add_argument("--attention", choices=ASSISTANT_ATTENTIONS, default="auto",
                        help="the assistant's attention: auto (flash-attention 2 on a CUDA GPU when the flash-attn "
                        "package is installed, else PyTorch's SDPA), sdpa, flash_attention_2, eager (the reference)")


def check_assistant_numbers(args: argparse.Namespace) -> None:
    """InputError for a negative or non-finite --temperature, a --top-p outside (0, 1], a negative --top-k, a
    --repetition-penalty that is not a positive number, or a --max-new-tokens below 1."""
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise InputError(f"--temperature is {args.temperature} but must be 0 (greedy) or more")
    top_p, top_k, penalty = (getattr(args, name, None) for name in ("top_p", "top_k", "repetition_penalty"))
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"--top-p is {top_p} but must be in (0, 1]")
    if top_k is not None and top_k < 0:
        raise InputError(f"--top-k is {top_k} but must be 0 (no limit) or more")
    if penalty is not None and not (math.isfinite(penalty) and penalty > 0):
        raise InputError(f"--repetition-penalty is {penalty} but must be more than 0 (1: none)")
    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens is {args.max_new_tokens} but must be 1 or more")


def check_at_least(value: float, minimum: float, flag: str, note: str = "") -> None:
    """InputError unless `value` is a finite number >= `minimum` (`note`: e.g. the official value)."""
    if not math.isfinite(value) or value < minimum:
        raise InputError(f"{flag} is {value} but must be {minimum} or more{note}")


# --- models ----------------------------------------------------------------------------------------------------


def model_folders(models_dirs: list[Path], kind: str) -> list[Path]:
    """Where a model of `kind` (a ComfyUI model-folder name: LLM, diffusers, clip_vision, diffrir, eval) is looked
    up: each models folder's `kind`/ subfolder, then the models folders themselves (default: models/)."""
    roots = models_dirs or [DEFAULT_MODELS_DIR]
    return [root / kind for root in roots] + roots


def model_path(name: str, models_dirs: list[Path], kind: str, allow_download: bool) -> Path:
    """A model folder: `name` as a path, a folder in `model_folders(models_dirs, kind)`, or a released name
    (downloaded into the first models folder's `kind`/ when allowed)."""
    from ..hub import resolve_model

    return resolve_model(name, model_folders(models_dirs, kind), allow_download=allow_download)


def load_assistant(args: argparse.Namespace, *, template: str | None = None, quantization: str = "none"):
    """The assistant named by --mllm, loaded with --dtype/--device and speaking --language; the vision tower is looked
    up in the models folders' clip_vision/ (or --clip-vision-dir where the command has it)."""
    from ..mllm.chat import Assistant
    from ..mllm.loader import load_llmga

    path = model_path(args.mllm, args.models_dir, "LLM", args.allow_download)
    roots = args.models_dir or [DEFAULT_MODELS_DIR]
    vision_dirs = getattr(args, "clip_vision_dir", None) or [root / "clip_vision" for root in roots]
    loaded = load_llmga(path, dtype=args.dtype, device=args.device, quantization=quantization,
                        attention=getattr(args, "attention", "auto"), clip_vision_dirs=vision_dirs,
                        allow_download=args.allow_download)
    print(f"assistant: {loaded.describe()}", file=sys.stderr)
    return Assistant(loaded, template=template, language=args.language)


def assistant_settings(args: argparse.Namespace, seed: int | None, **overrides):
    """The assistant's decoding settings from --max-new-tokens, --temperature, --top-p, --top-k,
    --repetition-penalty and `seed` (`overrides` win); options left out are the checkpoint's."""
    from ..mllm.chat import GenerationSettings

    values = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                  top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=seed)
    return GenerationSettings(**{**values, **overrides})


def ask_streamed(assistant, history, task: str, text: str = "", **options):
    """`assistant.ask(history, task, text, **options)` with the reply streamed to stdout after "LLMGA: ", and the
    decoding settings it used on stderr ("settings: ...")."""
    print("LLMGA: ", end="", flush=True)
    result = assistant.ask(history, task, text, on_text=lambda piece: print(piece, end="", flush=True), **options)
    print()
    print(f"settings: {result.settings.describe(options.get('settings'))}", file=sys.stderr)
    return result


# --- output files ------------------------------------------------------------------------------------------------


def _why_not_writable(folder: Path) -> str | None:
    """Why files cannot be written in `folder` (created when missing), or None when they can: the nearest folder
    that exists must be a folder and take a new file (tried with a temporary one, so permissions, read-only mounts and
    ACLs all count)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return f"{existing} does not take new files ({error.strerror or error})"
    return None


def check_writable(path: Path, flag: str, *, folder: bool) -> None:
    """InputError unless `path`, given as `flag`, can be written: a folder (created if needed) when `folder`, else a
    file (its folder created if needed). Commands check their outputs before any model loads."""
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder: give a folder (it is created if needed)")
    if not folder and path.is_dir():
        raise InputError(f"{flag} {path} is a folder: give a file name")
    problem = _why_not_writable(path if folder else path.parent)
    if problem is not None:
        raise InputError(f"{flag} {path} cannot be written: {problem}; choose another {flag}")


def check_png_out(out: Path) -> None:
    """InputError unless --out names a folder (existing or to be created) or a .png file, and can be written."""
    if out.suffix.lower() == ".png" and out.is_dir():
        raise InputError(f"--out {out} is a folder but its name ends in .png: give a .png file name, or the folder "
                         "under a name without .png")
    if out.suffix.lower() not in ("", ".png") and not out.is_dir():
        raise InputError(f"--out {out} is neither a folder nor a .png file: images are written as PNG")
    check_writable(out, "--out", folder=not is_png_file(out))


def is_png_file(out: Path) -> bool:
    """Whether `out` names a .png file to write (not a folder)."""
    return out.suffix.lower() == ".png" and not out.is_dir()


def output_paths(out: Path, stems: list[str]) -> list[Path]:
    """Where a command writes its images, one per stem: `out` itself when it names a .png file (numbered `-000`,
    `-001`, ... for several), else `<out>/<stem>.png` in the folder `out`, numbered `<stem>-1.png`, `<stem>-2.png`,
    ... rather than replacing a file there. Folders are created."""
    if is_png_file(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        if len(stems) == 1:
            return [out]
        return [out.with_name(f"{out.stem}-{index:03d}.png") for index in range(len(stems))]
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for stem in stems:
        path, copy = out / f"{stem}.png", 1
        while path.exists() or path in paths:
            path, copy = out / f"{stem}-{copy}.png", copy + 1
        paths.append(path)
    return paths


def save_png(image: Image.Image, path: Path, settings: dict | None = None, **texts: str) -> None:
    """Write `image` as PNG atomically, with `texts` as iTXt chunks and `settings` as JSON under llmga_settings."""
    import json

    from PIL.PngImagePlugin import PngInfo

    from ..files import save_image_atomic

    info = PngInfo()
    for key, value in texts.items():
        info.add_itxt(key, value)
    if settings is not None:
        info.add_itxt("llmga_settings", json.dumps(settings, ensure_ascii=False))
    save_image_atomic(image, path, pnginfo=info)
