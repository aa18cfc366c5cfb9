"""Bad input through `python -m llmga` (in process, `llmga.cli.main`): hostile model names, damaged or wrong weight
files, pictures that do not fit or claim a huge size, odd text and numbers. Each refusal is one line on stderr,
`error: …`, with exit status 2 and no output file; a weight file's pickled payload never runs.

The helpers that write damaged files (also used by test_host_bad_input.py) live here, at the top.
"""

from __future__ import annotations

import pickle
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.edited import copy_checkpoint
from PIL import Image

from llmga.cli import main

# --- damaged and hostile files ----------------------------------------------------------------------------------


class Payload:
    """Unpickled, this creates (empties) the file at `path`: the stand-in for code a weight file would run."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def write_payload_pickle(path: Path, target: Path) -> Path:
    """A plain pickle (no torch zip) whose loading would create `target`."""
    path.write_bytes(pickle.dumps({"params_ema": Payload(target)}))
    return path


def write_payload_torch_file(path: Path, target: Path) -> Path:
    """A torch.save zip file (what .pth/.bin/.ckpt files are) whose loading would create `target`."""
    torch.save({"params_ema": Payload(target)}, path)
    return path


def random_bytes(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def damaged(data: bytes, how: str) -> bytes:
    """`data` made "zero" (0 bytes), "truncated" (its first half) or "random" (as many seeded random bytes)."""
    return {"zero": b"", "truncated": data[: len(data) // 2], "random": random_bytes(len(data))}[how]


def linked_copy(source: Path, folder: Path, replace: dict[str, bytes | None] | None = None) -> Path:
    """`folder` holding symlinks to the files of the model folder `source`, except those named in `replace`: written
    with the given bytes, or left out (None)."""
    replace = replace or {}
    folder.mkdir(parents=True)
    for file in source.iterdir():
        if file.name not in replace:
            (folder / file.name).symlink_to(file.resolve())
    for name, data in replace.items():
        if data is not None:
            (folder / name).write_bytes(data)
    return folder


def first_shard(model: Path) -> str:
    return sorted(path.name for path in model.glob("*.safetensors"))[0]


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A 100-byte PNG whose header says `width` x `height` (a decompression bomb's header, without its data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# --- running the command line -----------------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str


def run_cli(capsys: pytest.CaptureFixture, *argv: str | Path) -> Run:
    """`python -m llmga *argv` in this process; an exception escaping main fails the test (a raw traceback)."""
    capsys.readouterr()
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def refusal(run: Run, *, alone: bool = True) -> str:
    """The message of a refused command: exit status 2, one `error: …` line, the last on stderr (progress bars of
    model loading may come before it unless `alone`), no traceback, no terminal codes."""
    assert run.code == 2, run.err
    lines = [line for line in re.split(r"[\r\n]+", run.err) if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], run.err
    assert "Traceback" not in run.err and "\x1b" not in errors[0]
    if alone:
        assert lines == errors, run.err
    return errors[0].removeprefix("error: ")


# --- inputs -----------------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    folder: Path
    models: Path  # a models folder laid out like ComfyUI's (LLM/, clip_vision/, diffusers/, checkpoints/, diffrir/)
    assistant: Path
    sd: Path
    sd_inpainting: Path
    sd_checkpoint: Path
    diffrir: Path

    def __getattr__(self, name: str) -> Path:  # pictures, masks and damaged files by name: inputs.picture
        return self.folder / f"{name}.png" if (self.folder / f"{name}.png").exists() else self.folder / name


def _gray(path: Path, width: int, height: int, box: bool = False, value: int = 0) -> None:
    mask = np.full((height, width), value, dtype=np.uint8)
    if box:
        mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
    Image.fromarray(mask).save(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, host_assistant, sd15_models, host_diffrir) -> Inputs:
    folder = tmp_path_factory.mktemp("cli-bad-input")
    rng = np.random.default_rng(0)
    for name, (width, height) in {"picture": (40, 32), "wider": (48, 32), "tiny": (1, 1)}.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    _gray(folder / "box.png", 40, 32, box=True)
    _gray(folder / "zeros.png", 40, 32)
    _gray(folder / "ones.png", 40, 32, value=255)
    _gray(folder / "narrow_mask.png", 20, 32, value=255)
    png_claiming(folder / "bomb.png", 200_000, 200_000)
    picture, shard = (folder / "picture.png").read_bytes(), first_shard(host_assistant.path)
    shard_bytes = (host_assistant.path / shard).read_bytes()
    for how in ("zero", "truncated", "random"):
        (folder / f"{how}_image.png").write_bytes(damaged(picture, how))
        linked_copy(host_assistant.path, folder / f"{how}_shard", {shard: damaged(shard_bytes, how)})
    weights = [path.name for path in host_assistant.path.glob("*.safetensors*")]
    linked_copy(host_assistant.path, folder / "no_weights", dict.fromkeys(weights))
    linked_copy(host_assistant.path, folder / "bad_config", {"config.json": b"{not json"})
    copy_checkpoint(host_assistant.path, folder / "hub_tower", mm_vision_tower="evil-user/evil-repo")
    copy_checkpoint(host_assistant.path, folder / "etc_tower", mm_vision_tower="/etc")
    for name, writer in (("pickle_bin", write_payload_pickle), ("torch_bin", write_payload_torch_file)):
        writer(linked_copy(host_assistant.path, folder / name, dict.fromkeys(weights)) / "pytorch_model.bin",
               folder / "payload-ran")
    (folder / "not_a_model").mkdir()
    (folder / "not_a_model" / "README.md").write_text("notes, not a model")
    (folder / "zero.pth").write_bytes(b"")
    (folder / "random.safetensors").write_bytes(random_bytes(4096))
    return Inputs(folder, sd15_models.root, host_assistant.path, sd15_models.diffusers,
                  sd15_models.diffusers_inpainting, sd15_models.checkpoint, host_diffrir)


def chat(inputs: Inputs, *args: str | Path, mllm: Path | str | None = None) -> list:
    return ["chat", "--mllm", mllm or inputs.assistant, "--models-dir", inputs.models, "--device", "cpu", "--dtype",
            "fp32", "--max-new-tokens", "2", *args]


def generate(inputs: Inputs, *args: str | Path, sd: Path | str | None = None) -> list:
    return ["generate", "--sd", sd or inputs.sd, "--models-dir", inputs.models, "--device", "cpu", "--width", "64",
            "--height", "64", "--steps", "1", "--out", inputs.folder / "out", *args]


def restore(inputs: Inputs, *args: str | Path, model: Path | None = None, image: Path | None = None,
            reference: Path | None = None, mask: Path | None = None, out: Path | None = None) -> list:
    return ["restore", "--model", model or inputs.diffrir, "--image", image or inputs.picture, "--reference",
            reference or inputs.picture, "--mask", mask or inputs.box, "--device", "cpu", "--out",
            out or inputs.folder / "out", *args]


def edit(inputs: Inputs, *args: str | Path, sd: Path | None = None) -> list:
    return ["edit", "--image", inputs.picture, "--sd", sd or inputs.sd, "--source-prompt", "a cat", "--target-prompt",
            "a dog", "--steps", "1", "--device", "cpu", "--out", inputs.folder / "out", *args]


def inpaint(inputs: Inputs, *args: str | Path, image: Path | None = None, mask: Path | None = None) -> list:
    return ["inpaint", "--sd", inputs.sd_inpainting, "--image", image or inputs.picture, "--mask", mask or inputs.box,
            "--steps", "1", "--device", "cpu", "--out", inputs.folder / "out", *args, "a cat"]


@pytest.fixture(autouse=True)
def no_output_left(inputs):
    """No refused command leaves its output folder behind."""
    yield
    assert not (inputs.folder / "out").exists()


# --- numbers ----------------------------------------------------------------------------------------------------

NUMBERS = {
    "chat temperature -1": (lambda i: chat(i, "--temperature", "-1", "hi"), "--temperature is -1.0 but must be 0"),
    "chat temperature nan": (lambda i: chat(i, "--temperature", "nan", "hi"), "--temperature is nan but must be 0"),
    "chat max-new-tokens 0": (lambda i: chat(i, "--max-new-tokens", "0", "hi"), "--max-new-tokens is 0 but must be 1"),
    "generate cfg nan": (lambda i: generate(i, "--cfg", "nan", "a fox"), "--cfg is nan but must be 0 or more"),
    "generate cfg inf": (lambda i: generate(i, "--cfg", "inf", "a fox"), "--cfg is inf but must be 0 or more"),
    "generate steps 0": (lambda i: generate(i, "--steps", "0", "a fox"), "--steps is 0 but must be 1 or more"),
    "generate steps -3": (lambda i: generate(i, "--steps", "-3", "a fox"), "--steps is -3 but must be 1 or more"),
    "generate count 0": (lambda i: generate(i, "--count", "0", "a fox"), "--count is 0 but must be 1 or more"),
    "generate width 1": (lambda i: generate(i, "--width", "1", "a fox"), "width is 1 but must be a positive multiple"),
    "generate temperature -1": (lambda i: generate(i, "--mllm", i.assistant, "--temperature", "-1", "a fox"),
                                "--temperature is -1.0 but must be 0"),
    "edit steps 0": (lambda i: edit(i, "--steps", "0"), "steps is 0; use 1..1000"),
    "edit cfg nan": (lambda i: edit(i, "--cfg", "nan"), "--cfg is nan but must be 0 or more"),
    "restore tile 48": (lambda i: restore(i, "--tile", "48"), "--tile is 48; use a multiple of 32"),
    "restore dilate -1": (lambda i: restore(i, "--dilate", "-1"), "--dilate is -1 but must be 0 or more"),
}


@pytest.mark.parametrize("case", NUMBERS)
def test_a_bad_number_is_refused_before_anything_loads(capsys, inputs, case):
    argv, expected = NUMBERS[case]
    assert expected in refusal(run_cli(capsys, *argv(inputs)))


def test_an_unknown_dtype_is_refused_by_the_parser(capsys, inputs):
    run = run_cli(capsys, *restore(inputs, "--dtype", "fp8"))
    assert run.code == 2 and "Traceback" not in run.err
    assert run.err.strip().splitlines()[-1].endswith("error: argument --dtype: invalid choice: 'fp8' (choose from "
                                                     "'auto', 'bf16', 'fp16', 'fp32')")


# --- pictures and masks -----------------------------------------------------------------------------------------

PICTURES = {
    "chat image bomb": (lambda i: chat(i, "--image", i.bomb, "--task", "describe"), "134,217,728-pixel limit"),
    "inpaint image bomb": (lambda i: inpaint(i, image=i.bomb), "134,217,728-pixel limit"),
    "inpaint mask bomb": (lambda i: inpaint(i, mask=i.bomb), "134,217,728-pixel limit"),
    "restore reference bomb": (lambda i: restore(i, reference=i.bomb), "134,217,728-pixel limit"),
    "chat zero-byte image": (lambda i: chat(i, "--image", i.zero_image, "--task", "describe"), "is empty (0 bytes)"),
    "chat random-bytes image": (lambda i: chat(i, "--image", i.random_image, "--task", "describe"),
                                "could not be read as an image"),
    "restore truncated image": (lambda i: restore(i, image=i.truncated_image), "could not be read as an image"),
    "chat mask size": (lambda i: chat(i, "--image", i.picture, "--mask", i.narrow_mask, "--task", "inpaint"),
                       "the mask is 20x32 but the image is 40x32"),
    "restore mask size": (lambda i: restore(i, mask=i.narrow_mask),
                          "the mask is 20x32 but the generated image is 40x32"),
    "restore reference size": (lambda i: restore(i, reference=i.wider),
                               "the reference is 48x32 but the generated image is 40x32"),
    "restore 1x1 against 40x32": (lambda i: restore(i, image=i.tiny), "the reference is 40x32 but the generated image "
                                  "is 1x1"),
    "restore all-zero mask": (lambda i: restore(i, mask=i.zeros), "the mask marks no pixel to restore"),
    "inpaint all-zero mask": (lambda i: inpaint(i, mask=i.zeros), "the mask marks no pixel to paint"),
    "chat inpaint all-zero mask": (lambda i: chat(i, "--image", i.picture, "--mask", i.zeros, "--task", "inpaint"),
                                   "the mask marks no pixel to inpaint"),
}


@pytest.mark.parametrize("case", PICTURES)
def test_a_picture_that_does_not_fit_is_refused_before_the_model_loads(capsys, inputs, case):
    argv, expected = PICTURES[case]
    assert expected in refusal(run_cli(capsys, *argv(inputs)))


def test_a_one_pixel_picture_is_described(capsys, inputs):
    run = run_cli(capsys, *chat(inputs, "--image", inputs.tiny, "--task", "describe"))
    assert run.code == 0, run.err
    assert run.out.startswith("LLMGA: ")


# --- text -------------------------------------------------------------------------------------------------------

def test_an_empty_message_is_refused(capsys, inputs):
    assert "give a message" in refusal(run_cli(capsys, *generate(inputs, "")))
    message = refusal(run_cli(capsys, *chat(inputs, "--task", "text_to_image", "  ")), alone=False)
    assert "Task 'text_to_image' got empty text" in message


def test_a_10000_word_message_is_refused_with_the_model_limit(capsys, inputs):
    message = refusal(run_cli(capsys, *chat(inputs, "--task", "chat", "word " * 10_000)), alone=False)
    assert re.search(r"the conversation is \d+ tokens .* but the model reads at most 2048", message)


def test_right_to_left_and_nul_text_is_answered(capsys, inputs):
    run = run_cli(capsys, *chat(inputs, "--task", "chat", "مرحبا بالعالم \u202e abc \x00 日本語 🦊"))
    assert run.code == 0, run.err
    assert run.out.startswith("LLMGA: ") and "Traceback" not in run.err


# --- model names, folders and weight files ----------------------------------------------------------------------

MODELS = {
    "chat mllm ../../x": (lambda i: chat(i, "hi", mllm="../../x"), "'../../x' is neither a folder nor a released"),
    "chat mllm NUL": (lambda i: chat(i, "hi", mllm="llmga\x00x"), "'llmga\\x00x' is neither a folder nor a released"),
    "generate sd ../../x": (lambda i: generate(i, "a fox", sd="../../x"), "'../../x' is neither a folder nor"),
    "generate sd NUL": (lambda i: generate(i, "a fox", sd="sd\x00x"), "'sd\\x00x' is neither a folder nor"),
    "chat mllm an SD folder": (lambda i: chat(i, "hi", mllm=i.sd), "has no config.json: it is not a model folder"),
    "generate sd a folder that is no model": (lambda i: generate(i, "a fox", sd=i.not_a_model),
                                              "lacks model_index.json"),
    "chat zero-byte shard": (lambda i: chat(i, "hi", mllm=i.zero_shard),
                             "zero_shard/model-00001-of-00002.safetensors is empty (0 bytes)"),
    "chat truncated shard": (lambda i: chat(i, "hi", mllm=i.truncated_shard),
                             "truncated_shard/model-00001-of-00002.safetensors is truncated or not a safetensors file"),
    "chat random shard": (lambda i: chat(i, "hi", mllm=i.random_shard),
                          "random_shard/model-00001-of-00002.safetensors is truncated or not a safetensors file"),
    "chat vision tower from a hub repo": (lambda i: chat(i, "hi", mllm=i.hub_tower), "config.json names the vision "
                                          "tower 'evil-user/evil-repo' (mm_vision_tower), but LLMGA checkpoints use "
                                          "openai/clip-vit-large-patch14-336 only"),
    "chat vision tower /etc": (lambda i: chat(i, "hi", mllm=i.etc_tower), "config.json names the vision tower '/etc' "
                               "(mm_vision_tower), but LLMGA checkpoints use openai/clip-vit-large-patch14-336 only"),
    "chat plain pickle pytorch_model.bin": (lambda i: chat(i, "hi", mllm=i.pickle_bin),
                                            "pytorch_model.bin is not a readable weight file"),
    "chat no weights": (lambda i: chat(i, "hi", mllm=i.no_weights), "has no weights"),
    "chat broken config.json": (lambda i: chat(i, "hi", mllm=i.bad_config), "config.json is not valid JSON"),
    "restore zero-byte .pth": (lambda i: restore(i, model=i.folder / "zero.pth"), "zero.pth is empty (0 bytes)"),
    "restore random .safetensors": (lambda i: restore(i, model=i.folder / "random.safetensors"),
                                    "random.safetensors is truncated or not a safetensors file"),
    "restore an SD checkpoint": (lambda i: restore(i, model=i.sd_checkpoint), "is not a DiffRIR S2 state dict"),
    "edit sd the 9-channel model": (lambda i: edit(i, sd=i.sd_inpainting),
                                    "is an inpainting model (9 input channels)"),
}


@pytest.mark.parametrize("case", MODELS)
def test_a_bad_model_name_folder_or_file_is_refused(capsys, inputs, case):
    argv, expected = MODELS[case]
    assert expected in refusal(run_cli(capsys, *argv(inputs)))


@pytest.mark.parametrize(("writer", "expected"), [
    (write_payload_pickle, "is not a readable weight file"),
    (write_payload_torch_file, "holds Python objects besides tensors (io.open), and loading it would run code from "
                               "the file, so it is refused"),
], ids=["plain pickle", "torch file"])
def test_a_diffrir_file_payload_never_runs(capsys, inputs, tmp_path, writer, expected):
    target = tmp_path / "payload-ran"
    weights = writer(tmp_path / "net_g.pth", target)
    message = refusal(run_cli(capsys, *restore(inputs, model=weights)))
    assert message.startswith(f"{weights} {expected}")
    assert not target.exists()


def test_an_assistant_file_payload_never_runs(capsys, inputs):
    message = refusal(run_cli(capsys, *chat(inputs, "hi", mllm=inputs.torch_bin)))
    weights = inputs.torch_bin / "pytorch_model.bin"
    assert message.startswith(f"{weights} holds Python objects besides tensors (io.open)")
    assert not (inputs.folder / "payload-ran").exists()


@pytest.mark.parametrize(("config", "expected"), [
    (b'{"model_type": "bert"}', "config.json is not a CLIP vision config (model_type 'bert', expected "
                                "clip_vision_model or clip)"),
    (b"{not json", "config.json cannot be read"),
], ids=["another model's config", "no JSON"])
def test_a_vision_tower_whose_config_is_not_clip_is_refused(capsys, inputs, tmp_path, config, expected):
    tower = tmp_path / "towers" / "clip-vit-large-patch14-336"
    tower.mkdir(parents=True)
    (tower / "config.json").write_bytes(config)
    checkpoint = copy_checkpoint(inputs.assistant, tmp_path / "tower-by-name",
                                 mm_vision_tower="openai/clip-vit-large-patch14-336")
    run = run_cli(capsys, *chat(inputs, "--clip-vision-dir", tower.parent, "hi", mllm=checkpoint))
    assert refusal(run, alone=False).startswith(f"{tower / expected}")


@pytest.mark.parametrize("argv", [
    lambda i: chat(i, "--allow-download", "hi", mllm="binxia/llmga-Qwen2-1.5B-full-finetune"),
    lambda i: generate(i, "--allow-download", "a fox", sd="binxia/llmga-sd15-t2i-v2"),
], ids=["assistant", "sd"])
def test_a_released_model_missing_offline_is_refused_with_the_download_command(capsys, inputs, monkeypatch, argv):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = refusal(run_cli(capsys, *argv(inputs)))  # neither is in the fixtures' models folder
    assert re.match(r"binxia/\S+ is not downloaded \(HF_HUB_OFFLINE is set\)\. Searched .* Download it "
                    r"\(huggingface-cli download binxia/\S+ --local-dir ", message), message


def test_weights_of_another_family_than_config_json_says_are_refused(capsys, inputs, tmp_path):
    folder = copy_checkpoint(inputs.assistant, tmp_path / "llama-config", model_type="llava_llama",
                             architectures=["LlavaLlamaForCausalLM"])
    message = refusal(run_cli(capsys, *chat(inputs, "hi", mllm=folder)), alone=False)
    assert message.startswith(f"{folder} holds the weights of another model: they hold 6 tensors a llama model does "
                              "not have (self_attn.k_proj.bias, self_attn.q_proj.bias, self_attn.v_proj.bias); "
                              "config.json says llava_llama, but the files look like a qwen2 checkpoint")


# --- output -----------------------------------------------------------------------------------------------------

OUTPUTS = {
    "a .jpg file": ("out.jpg", "--out {out} is neither a folder nor a .png file"),
    "a .png under a file": ("picture.png/out.png", "--out {out} cannot be written: {folder}/picture.png is a file, not "
                            "a folder; choose another --out"),
    "a folder under a file": ("picture.png/out", "--out {out} cannot be written: {folder}/picture.png is a file, not a "
                              "folder; choose another --out"),
    "a file where a folder is meant": ("box_copy", "--out {out} is a file, not a folder"),
}


@pytest.mark.parametrize("case", OUTPUTS)
def test_an_output_that_cannot_be_written_is_refused_before_anything_is_read(capsys, inputs, case):
    """The model named does not exist and the picture is a bomb: the --out error comes first."""
    name, expected = OUTPUTS[case]
    (inputs.folder / "box_copy").write_bytes(b"")
    out = inputs.folder / name
    run = run_cli(capsys, *restore(inputs, model=inputs.folder / "missing.pth", image=inputs.bomb, out=out))
    assert refusal(run).startswith(expected.format(out=out, folder=inputs.folder))
    assert not out.exists() or out.stat().st_size == 0


def test_a_mask_covering_the_whole_picture_is_noted(capsys, inputs, tmp_path):
    run = run_cli(capsys, *restore(inputs, mask=inputs.ones, out=tmp_path / "restored.png"))
    assert run.code == 0, run.err
    assert run.err.strip() == ("note: the mask covers the whole picture: no pixel of the reference is kept, so DiffRIR "
                               "has nothing to match the generated picture to (mask only the generated region)")
    assert (tmp_path / "restored.png").is_file()
    # inpaint says so while reading its inputs, before the model loads (here: a model that does not exist)
    run = run_cli(capsys, "inpaint", "--sd", inputs.folder / "missing", "--image", inputs.picture, "--mask",
                  inputs.ones, "--out", tmp_path, "a cat")
    assert run.err.startswith("note: the mask covers the whole picture, so none of it is kept: inpainting paints a "
                              "new picture of its size (as generate does)\n")
    assert refusal(run, alone=False).startswith(f"model '{inputs.folder / 'missing'}' is neither a folder")
