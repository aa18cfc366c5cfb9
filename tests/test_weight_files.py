"""Hostile and broken weight files: every reader of weights refuses each of them with one error of the library's kind,
on one line, naming the file and what is wrong, and never runs code from a file.

The readers: LLMGA shards (.safetensors, .bin) and mm_projector.bin (`read_checkpoint`), an SD1.5 diffusers folder read
for ComfyUI (`read_sd15_folder`) and loaded by diffusers (`load_sd15_pipeline`), SD1.5 single files (.safetensors,
.ckpt), DiffRIR (.pth, .safetensors), and the evaluation networks (FID Inception .pth, DINO's official .pth, a CLIP
folder). Each bad file takes the place of one good file in an otherwise good setting, so the error must name it.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import random
import re
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fixtures.sd15 import SD15Fixtures
from safetensors.torch import save, save_file

from llmga.errors import USER_ERRORS
from llmga.eval.encoders import load_clip, load_dino
from llmga.eval.networks import load_inception
from llmga.hub import ModelNotFoundError
from llmga.mllm.checkpoint import CheckpointError, read_checkpoint
from llmga.restore.checkpoint import DiffRIRLoadError, load_diffrir
from llmga.sd.loading import SD15LoadError, check_sd15_single_file, read_sd15_folder
from llmga.sd.pipelines import SDPipelineError, load_sd15_pipeline

GOOD_TENSORS = {"weight": torch.arange(64, dtype=torch.float32).reshape(8, 8), "bias": torch.zeros(8)}
LLMGA_CONFIG = {"model_type": "llava_qwen2", "architectures": ["LlavaQwen2ForCausalLM"], "mm_hidden_size": 32}
# A safetensors header lies only in a safetensors file; a safetensors file where a pickle is expected is its own case.
COMMON_KINDS = ("zero-byte", "truncated", "random", "bad-opcode", "payload-zip", "payload-legacy", "raw-pickle",
                "folder")
SAFETENSORS_KINDS = (*COMMON_KINDS, "lying-header")
TORCH_KINDS = (*COMMON_KINDS, "safetensors-named-pickle")


class Payload:
    """An object whose unpickling calls `call(*args)`: what a hostile weight file hides to run code."""

    def __init__(self, call: Callable, *args: object) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


# Each creates the file `target` when unpickled.
PAYLOADS = {
    "os.system": lambda target: Payload(os.system, f"touch '{target}'"),
    "builtins.open": lambda target: Payload(open, str(target), "w"),
    "pathlib.Path.touch": lambda target: Payload(Path.touch, Path(target)),
}


def torch_bytes(obj: object, legacy: bool = False) -> bytes:
    """What torch.save writes for `obj`: the zip archive, or the legacy (torch < 1.6) pickle stream."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def lying_safetensors() -> bytes:
    """A safetensors file whose header declares an 800x800 tensor over the 256 bytes of an 8x8 one."""
    data = save(GOOD_TENSORS)
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    header["weight"]["shape"] = [800, 800]
    header["weight"]["data_offsets"] = [header["weight"]["data_offsets"][0], 800 * 800 * 4]
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + length:]


def bad_opcode_torch_file() -> bytes:
    """A whole torch zip archive whose pickle starts with an opcode the weights-only unpickler does not take."""
    source, out = zipfile.ZipFile(io.BytesIO(torch_bytes(GOOD_TENSORS))), io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for item in source.infolist():
            data = source.read(item.filename)
            archive.writestr(item, b"\x95" + data[1:] if item.filename.endswith("data.pkl") else data)
    return out.getvalue()


def write_bad_file(path: Path, kind: str, side_effect: Path) -> None:
    """Put a bad file of `kind` at `path` (in the container its suffix names), replacing what is there; a pickle
    payload would create `side_effect`."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    good = save(GOOD_TENSORS) if path.suffix == ".safetensors" else torch_bytes(GOOD_TENSORS)
    hostile = {**GOOD_TENSORS, "hook": PAYLOADS["os.system"](side_effect)}
    data = {
        "zero-byte": b"",
        "truncated": good[: len(good) // 2],
        "random": random.Random(0).randbytes(4096),
        "bad-opcode": bad_opcode_torch_file(),
        "lying-header": lying_safetensors(),
        "payload-zip": torch_bytes(hostile),
        "payload-legacy": torch_bytes(hostile, legacy=True),
        "raw-pickle": pickle.dumps(hostile),
        "safetensors-named-pickle": save(GOOD_TENSORS),
    }.get(kind)
    if kind == "folder":
        path.mkdir(parents=True)
        (path / "weights.bin").write_bytes(good)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


REFUSED_PICKLE = r"holds Python objects besides tensors \((posix\.system|io\.open|builtins\.open|getattr)\), and " \
                 r"loading it would run code from the file, so it is refused \(torch\.load weights_only=True\).*" \
                 r"\.safetensors"
NOT_SAFETENSORS = r"is truncated or not a safetensors file \(.+\)"
EXPECTED = {
    ("zero-byte", "safetensors"): r"is empty \(0 bytes\)",
    ("zero-byte", "torch"): r"is empty \(0 bytes\)",
    ("truncated", "torch"): r"is truncated or corrupt \(its zip archive has no end\)",
    ("random", "torch"): r"is not a readable weight file: it is neither a torch file",
    ("bad-opcode", "torch"): r"is truncated or corrupt \(Unsupported operand 149\)",
    ("payload-zip", "torch"): REFUSED_PICKLE,
    ("payload-legacy", "torch"): REFUSED_PICKLE,
    ("raw-pickle", "torch"): r"is not a readable weight file",
    ("safetensors-named-pickle", "torch"): r"is a safetensors file named \.\w+: rename it to",
    ("folder", "safetensors"): r"is a folder where a weight file is expected: give the weight file itself",
    ("folder", "torch"): r"is a folder where a weight file is expected: give the weight file itself",
}


@dataclass(frozen=True)
class Reader:
    """One reader of weights, set up so that `bad` (a path under the test's folder) is the file it must refuse."""

    error: type[Exception]
    bad: str  # relative to the test's folder
    read: Callable[[Path], object]  # the test's folder -> the reader's result
    setup: Callable[[Path, SD15Fixtures], None] = lambda folder, models: None
    folder_message: str | None = None  # what it says when `bad` is a folder, where that differs

    @property
    def container(self) -> str:
        return "safetensors" if self.bad.endswith(".safetensors") else "torch"


def llmga_folder(folder: Path, models: SD15Fixtures) -> None:
    (folder / "llm").mkdir()
    (folder / "llm" / "config.json").write_text(json.dumps(LLMGA_CONFIG))


def sd15_folder(folder: Path, models: SD15Fixtures) -> None:
    """A copy of the tiny SD1.5 folder whose files are links (write_bad_file replaces a link by a file)."""
    for file in models.diffusers.rglob("*"):
        if file.is_file():
            link = folder / "sd" / file.relative_to(models.diffusers)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(file)


def sd15_folder_with_bin_unet(folder: Path, models: SD15Fixtures) -> None:
    sd15_folder(folder, models)
    (folder / "sd" / "unet" / "diffusion_pytorch_model.safetensors").unlink()


def clip_folder(folder: Path, models: SD15Fixtures) -> None:
    (folder / "clip").mkdir()
    (folder / "clip" / "config.json").write_text(json.dumps({"model_type": "clip"}))


def pipeline(folder: Path) -> object:
    return load_sd15_pipeline(folder / "sd", device="cpu", dtype="fp32")


READERS = {
    "llmga-shard-safetensors": Reader(CheckpointError, "llm/model.safetensors", lambda f: read_checkpoint(f / "llm"),
                                      llmga_folder),
    "llmga-shard-bin": Reader(CheckpointError, "llm/pytorch_model.bin", lambda f: read_checkpoint(f / "llm"),
                              llmga_folder),
    "mm_projector.bin": Reader(CheckpointError, "llm/mm_projector.bin",
                               lambda f: read_checkpoint(f / "llm", projector_only=True), llmga_folder),
    "sd15-folder-safetensors": Reader(SD15LoadError, "sd/unet/diffusion_pytorch_model.safetensors",
                                      lambda f: read_sd15_folder(f / "sd"), sd15_folder),
    "sd15-folder-bin": Reader(SD15LoadError, "sd/unet/diffusion_pytorch_model.bin",
                              lambda f: read_sd15_folder(f / "sd"), sd15_folder_with_bin_unet),
    "sd15-pipeline-safetensors": Reader(SDPipelineError, "sd/text_encoder/model.safetensors", pipeline, sd15_folder),
    "sd15-pipeline-bin": Reader(SDPipelineError, "sd/unet/diffusion_pytorch_model.bin", pipeline,
                                sd15_folder_with_bin_unet),
    "sd15-single-safetensors": Reader(SD15LoadError, "sd15.safetensors", lambda f: check_sd15_single_file(
        f / "sd15.safetensors"), folder_message="is a folder, not a checkpoint file"),
    "sd15-single-ckpt": Reader(SD15LoadError, "sd15.ckpt", lambda f: check_sd15_single_file(f / "sd15.ckpt"),
                               folder_message="is a folder, not a checkpoint file"),
    "diffrir-pth": Reader(DiffRIRLoadError, "net_g.pth", lambda f: load_diffrir(f / "net_g.pth"),
                          folder_message="is a folder: give the DiffRIR weight file itself"),
    "diffrir-safetensors": Reader(DiffRIRLoadError, "diffrir.safetensors", lambda f: load_diffrir(
        f / "diffrir.safetensors"), folder_message="is a folder: give the DiffRIR weight file itself"),
    "fid-inception-pth": Reader(ModelNotFoundError, "inception.pth", lambda f: load_inception(f / "inception.pth"),
                                folder_message="has no pt_inception-2015-12-05-6726825d.pth"),
    "dino-pth": Reader(ModelNotFoundError, "dino.pth", lambda f: load_dino(f / "dino.pth"),
                       folder_message="lacks config.json"),
    "clip-folder": Reader(ModelNotFoundError, "clip/model.safetensors", lambda f: load_clip(f / "clip",
                                                                                            with_text=False),
                          clip_folder),
}
PICKLE_READERS = [name for name, reader in READERS.items() if reader.container == "torch"]


def assert_refused(reader: Reader, folder: Path, pattern: str) -> str:
    """The reader's error: its library kind (a ValueError or OSError), one line without colour codes, naming the bad
    file and matching `pattern`."""
    with pytest.raises(reader.error) as caught:
        reader.read(folder)
    message = str(caught.value)
    assert isinstance(caught.value, USER_ERRORS)
    assert "\n" not in message and "\x1b" not in message and "Traceback" not in message, message
    assert str(folder / reader.bad) in message, message
    assert re.search(pattern, message), message
    return message


def matrix() -> list:
    return [pytest.param(name, kind, id=f"{name}-{kind}") for name, reader in READERS.items()
            for kind in (TORCH_KINDS if reader.container == "torch" else SAFETENSORS_KINDS)]


@pytest.mark.parametrize("name, kind", matrix())
def test_every_reader_refuses_a_bad_file_in_one_line(name: str, kind: str, sd15_models: SD15Fixtures,
                                                     tmp_path: Path) -> None:
    reader, side_effect = READERS[name], tmp_path / "payload-ran"
    reader.setup(tmp_path, sd15_models)
    write_bad_file(tmp_path / reader.bad, kind, side_effect)
    expected = EXPECTED.get((kind, reader.container), NOT_SAFETENSORS)
    if kind == "folder" and reader.folder_message:
        expected = re.escape(reader.folder_message)
    message = assert_refused(reader, tmp_path, expected)
    assert not side_effect.exists()
    if reader.container == "safetensors" and kind != "folder":
        assert "refused" not in message  # a pickle where safetensors is expected is never unpickled


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("name", PICKLE_READERS)
def test_a_pickle_that_would_create_a_file_is_refused_and_the_file_never_appears(
        name: str, payload: str, legacy: bool, sd15_models: SD15Fixtures, tmp_path: Path) -> None:
    reader, side_effect = READERS[name], tmp_path / "created-by-the-payload"
    reader.setup(tmp_path, sd15_models)
    bad = tmp_path / reader.bad
    if bad.is_symlink():
        bad.unlink()
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(torch_bytes({"params_ema": GOOD_TENSORS, "hook": PAYLOADS[payload](side_effect)}, legacy))
    assert_refused(reader, tmp_path, REFUSED_PICKLE)
    assert not side_effect.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_payloads_are_live(payload: str, tmp_path: Path) -> None:
    """Plain unpickling runs each payload and creates its file: the absent files above mean the readers refused."""
    target = tmp_path / "created"
    pickle.loads(pickle.dumps(PAYLOADS[payload](target)))
    assert target.exists()


def test_legacy_torch_files_of_tensors_are_read(tmp_path: Path) -> None:
    """The published metric weights (torchvision's VGG16, pytorch-fid's Inception) predate torch's zip format: a legacy
    file of tensors only reads through weights_only, as a zip one does."""
    from llmga.model_files import read_tensors

    (tmp_path / "legacy.pth").write_bytes(torch_bytes(GOOD_TENSORS, legacy=True))
    state = read_tensors(tmp_path / "legacy.pth", ValueError, "")
    assert state.keys() == GOOD_TENSORS.keys() and all(torch.equal(state[k], v) for k, v in GOOD_TENSORS.items())


# --- folders that are not models, and files where folders are expected -----------------------------------------------


def llmga_of_another_family(folder: Path) -> Path:
    (folder / "bert").mkdir()
    (folder / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    save_file(GOOD_TENSORS, folder / "bert" / "model.safetensors")
    return folder / "bert"


def weights_without_config(folder: Path) -> Path:
    (folder / "weights").mkdir()
    save_file(GOOD_TENSORS, folder / "weights" / "model.safetensors")
    return folder / "weights"


def a_file(folder: Path) -> Path:
    save_file(GOOD_TENSORS, folder / "model.safetensors")
    return folder / "model.safetensors"


def empty(folder: Path) -> Path:
    (folder / "empty").mkdir()
    return folder / "empty"


NOT_MODELS = {
    "empty": empty,
    "no-config": weights_without_config,
    "another-family": llmga_of_another_family,
    "a-file": a_file,
}
# (reader, what it is given) -> (error, message)
NOT_A_MODEL_MESSAGES = {
    ("llmga", "empty"): (CheckpointError, "has no config.json: it is not a model folder"),
    ("llmga", "no-config"): (CheckpointError, "has no config.json: it is not a model folder"),
    ("llmga", "another-family"): (CheckpointError, "is not an LLMGA checkpoint: config.json has model_type 'bert'"),
    ("llmga", "a-file"): (CheckpointError, "is a file, not a checkpoint folder"),
    ("sd15-folder", "empty"): (SD15LoadError, "has no unet/ folder"),
    ("sd15-folder", "no-config"): (SD15LoadError, "has no unet/ folder"),
    ("sd15-folder", "another-family"): (SD15LoadError, "has no unet/ folder"),
    ("sd15-folder", "a-file"): (SD15LoadError, "is not a folder: give a diffusers SD1.5 folder"),
    ("sd15-pipeline", "empty"): (SDPipelineError, "lacks model_index.json, unet, vae, text_encoder"),
    ("sd15-pipeline", "no-config"): (SDPipelineError, "lacks model_index.json, unet, vae, text_encoder"),
    ("sd15-pipeline", "another-family"): (SDPipelineError, "lacks model_index.json, unet, vae, text_encoder"),
    ("sd15-pipeline", "a-file"): (SDPipelineError, "is not a folder: give a diffusers SD1.5 folder"),
    ("clip", "empty"): (ModelNotFoundError, "lacks config.json, model.safetensors or pytorch_model.bin"),
    ("clip", "no-config"): (ModelNotFoundError, "lacks config.json"),
    ("clip", "another-family"): (ModelNotFoundError, "holds a 'bert' model, not 'clip'"),
    ("clip", "a-file"): (ModelNotFoundError, "is a file, not a folder"),
}
FOLDER_READERS = {
    "llmga": read_checkpoint,
    "sd15-folder": read_sd15_folder,
    "sd15-pipeline": lambda path: load_sd15_pipeline(path, device="cpu", dtype="fp32"),
    "clip": lambda path: load_clip(path, with_text=False),
}


@pytest.mark.parametrize("reader, given", NOT_A_MODEL_MESSAGES)
def test_a_folder_that_is_not_a_model_is_refused_in_one_line(reader: str, given: str, tmp_path: Path) -> None:
    path = NOT_MODELS[given](tmp_path)
    error, expected = NOT_A_MODEL_MESSAGES[reader, given]
    with pytest.raises(error) as caught:
        FOLDER_READERS[reader](path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and expected in message, message


# --- no reader can run code from a file ------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
SOURCE_FOLDERS = ("llmga", "nodes", "training", "bench", "scripts", "tests")


def unsafe_loads(file: Path) -> list[str]:
    """Calls in `file` that could run code from a file: torch.load without weights_only=True, and (outside tests)
    pickle.load / pickle.loads."""
    found = []
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)):
            continue
        call = f"{node.func.value.id}.{node.func.attr}"
        safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                   for k in node.keywords)
        unpickles = call in ("pickle.load", "pickle.loads") and "tests" not in file.relative_to(REPO).parts
        if (call == "torch.load" and not safe) or unpickles:
            found.append(f"{file.relative_to(REPO)}:{node.lineno} {call}")
    return found


def test_every_torch_load_is_weights_only():
    files = [file for folder in SOURCE_FOLDERS for file in (REPO / folder).rglob("*.py")]
    assert len(files) > 100
    assert [call for file in files for call in unsafe_loads(file)] == []
