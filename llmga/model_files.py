"""Model files read without ever running code from them: weights (safetensors, and torch files through
`torch.load(weights_only=True)` only) and the JSON configs beside them.

Every reader of weights in the pack (LLMGA shards and mm_projector.bin, SD1.5 folders and single files, DiffRIR, the
evaluation networks) reads through here, so every way a file can be bad comes out as one error of the caller's
class (`error`, a ValueError or OSError) naming the file, what is wrong and what to do (`advice`, for a damaged
file): missing, a folder, empty, cut short, random bytes, a safetensors header that does not match its data, a pickle
that would build Python objects (code it would run: refused, never executed), a file of another format, a config
that is not a JSON object.

Torch files are read in both formats torch writes: the zip archive (torch >= 1.6) and the legacy pickle (older files,
such as torchvision's VGG16). A file in neither format, such as a bare `pickle.dump`, is refused before anything of it
is unpickled.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .errors import one_line

ErrorClass = Callable[[str], Exception]
Shapes = dict[str, tuple[int, ...]]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy format opens with its magic number 0x1950a86a20f9469cfc6c pickled at protocol 2
# (torch/serialization.py MAGIC_NUMBER).
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]
HEAD_BYTES = 16
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors format's own limit on its JSON header
REFUSED_PICKLE = ("use the file as released, or, if you trust this one, save its tensors to .safetensors in a "
                  "separate Python session and load that file")
LISTED = 5  # names shown per kind of mismatch before "and N more"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# What torch.load raises for a damaged zip archive or pickle stream (besides UnpicklingError).
_TORCH_READ_ERRORS = (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError, TypeError)


def is_safetensors(path: Path) -> bool:
    return path.suffix.lower() in SAFETENSORS_SUFFIXES


def _detail(error: BaseException) -> str:
    """The first sentence of an exception's message, on one line (torch and safetensors add paragraphs of advice)."""
    return one_line(error).split(". ")[0][:200]


def _unpickler_detail(failure: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler met (its last paragraph, after torch's advice and before its link)."""
    paragraphs = [part.strip() for part in str(failure).split("\n\n") if part.strip()]
    inner = [part for part in paragraphs[1:] if not part.startswith("Check the documentation")]
    return one_line(inner[-1])[:200] if inner else _detail(failure)


def read_config(path: str | Path, error: ErrorClass, advice: str) -> dict[str, Any]:
    """The JSON object in a model's config file (config.json, model_index.json, ...)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as failure:
        raise error(f"{path} is missing: {advice}") from failure
    except (OSError, ValueError) as failure:  # ValueError: not JSON, or not UTF-8
        raise error(f"{path} is not valid JSON ({_detail(failure)}): {advice}") from failure
    if not isinstance(value, dict):
        raise error(f"{path} is not valid JSON for a config (a JSON {type(value).__name__}, not an object): {advice}")
    return value


def _head(path: Path, error: ErrorClass, advice: str) -> bytes:
    """The first bytes of the weight file `path`, after checking that it is a non-empty file that can be read."""
    if path.is_dir():
        raise error(f"{path} is a folder where a weight file is expected: give the weight file itself")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
    except FileNotFoundError as failure:
        raise error(f"{path} does not exist: {advice}") from failure
    except OSError as failure:
        raise error(f"{path} cannot be read ({failure.strerror or _detail(failure)}): check that it is a file "
                    "you may read") from failure
    if size == 0:
        raise error(f"{path} is empty (0 bytes): {advice}")
    return head


@contextmanager
def open_safetensors(path: str | Path, error: ErrorClass, advice: str) -> Iterator[Any]:
    """safe_open of `path`, which checks the header and that the file holds every byte the header declares."""
    path = Path(path)
    _head(path, error, advice)
    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as failure:
        raise error(f"{path} is truncated or not a safetensors file ({_detail(failure)}): {advice}") from failure
    with handle:
        yield handle


def _looks_like_safetensors(head: bytes) -> bool:
    """True for a safetensors header: a little-endian length, then its JSON object."""
    return len(head) > 8 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < MAX_SAFETENSORS_HEADER


def load_torch_file(path: str | Path, error: ErrorClass, advice: str, *, mmap: bool = False) -> Any:
    """What a torch file holds (tensors in plain containers), read with torch.load(weights_only=True) onto the CPU.

    mmap: map a zip-format file instead of reading it (a check of a large file costs little; legacy files are read).
    A pickle that names anything but tensors and plain containers is refused, naming what it would build."""
    path = Path(path)
    head = _head(path, error, advice)
    if head.startswith(ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise error(f"{path} is truncated or corrupt (its zip archive has no end): {advice}")
    elif head.startswith(LEGACY_MAGIC):
        mmap = False  # only zip archives can be mapped
    elif _looks_like_safetensors(head):
        raise error(f"{path} is a safetensors file named {path.suffix}: rename it to {path.stem}.safetensors")
    else:
        raise error(f"{path} is not a readable weight file: it is neither a torch file (zip archive or legacy pickle) "
                    f"nor safetensors, so it is damaged or of another format; {advice}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as failure:
        names = sorted(set(_GLOBAL.findall(str(failure))))
        if not names:
            raise error(f"{path} is truncated or corrupt ({_unpickler_detail(failure)}): {advice}") from failure
        raise error(f"{path} holds Python objects besides tensors ({', '.join(names)}), and loading it would run "
                    f"code from the file, so it is refused (torch.load weights_only=True): "
                    f"{REFUSED_PICKLE}") from failure
    except _TORCH_READ_ERRORS as failure:
        raise error(f"{path} is truncated or corrupt ({_detail(failure)}): {advice}") from failure


def load_weights(path: str | Path, error: ErrorClass, advice: str, *, mmap: bool = False) -> Any:
    """What a weight file holds: a safetensors file's tensors (name -> tensor), or a torch file's contents
    (`load_torch_file`), chosen by the suffix."""
    path = Path(path)
    if not is_safetensors(path):
        return load_torch_file(path, error, advice, mmap=mmap)
    with open_safetensors(path, error, advice) as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def state_dict_of(stored: Any, path: Path, error: ErrorClass, advice: str) -> dict[str, torch.Tensor]:
    """`stored` as a state dict (name -> tensor), or `error` saying the file holds something else."""
    if not isinstance(stored, Mapping) or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in stored.items()):
        raise error(f"{path} does not hold a state dict (name -> tensor): {advice}")
    return dict(stored)


def iter_tensors(path: str | Path, error: ErrorClass, advice: str,
                 prefixes: tuple[str, ...] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of a flat weight file, only names starting with `prefixes` when given; a safetensors file is
    read one tensor at a time, so picking a few tensors out of a large file reads only those."""
    path = Path(path)
    if is_safetensors(path):
        with open_safetensors(path, error, advice) as handle:
            for key in handle.keys():
                if prefixes is None or key.startswith(prefixes):
                    yield key, handle.get_tensor(key)
    else:
        state = state_dict_of(load_torch_file(path, error, advice), path, error, advice)
        yield from ((key, value) for key, value in state.items() if prefixes is None or key.startswith(prefixes))


def read_tensors(path: str | Path, error: ErrorClass, advice: str) -> dict[str, torch.Tensor]:
    """The state dict (name -> tensor) of a flat weight file, safetensors or torch."""
    return dict(iter_tensors(path, error, advice))


def tensor_shapes(path: str | Path, error: ErrorClass, advice: str) -> Shapes:
    """Name -> shape of a flat weight file, without reading its tensors (the safetensors header; a torch file mapped,
    not read): checks the whole file as reading it would."""
    path = Path(path)
    if is_safetensors(path):
        with open_safetensors(path, error, advice) as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    state = state_dict_of(load_torch_file(path, error, advice, mmap=True), path, error, advice)
    return {key: tuple(value.shape) for key, value in state.items()}


def name_list(names: Sequence[str]) -> str:
    """The first 5 of `names`, comma-separated, then "and N more"."""
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def layout_problems(found: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]]) -> str:
    """'' when `found` (name -> shape) has exactly the names and shapes of `expected`; otherwise what differs, as
    "missing: a, b; unexpected: c; wrong shape: d (1, 2) (expected (3, 4))" (5 names of each kind, then "and N
    more")."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    mismatched = [f"{key} {tuple(found[key])} (expected {tuple(shape)})" for key, shape in expected.items()
                  if key in found and tuple(found[key]) != tuple(shape)]
    return "; ".join(f"{label}: {name_list(keys)}" for label, keys in
                     (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)) if keys)
