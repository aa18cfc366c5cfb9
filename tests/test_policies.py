"""The library's policies, each written once: device and dtype per model kind, images and masks, atomic files, and
how an error reaches the user."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llmga import devices, errors, files, images

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


# --- devices -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", devices.MODEL_KINDS)
def test_every_kind_runs_in_fp32_on_the_cpu(kind):
    assert devices.auto_dtype(kind, CPU) == torch.float32


@pytest.mark.parametrize(("bf16_supported", "assistant"), [(True, torch.bfloat16), (False, torch.float16)])
def test_automatic_precision_on_cuda_follows_each_kind(monkeypatch, bf16_supported, assistant):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    assert devices.auto_dtype("assistant", CUDA) == assistant  # the released weights are bf16
    assert devices.auto_dtype("sd", CUDA) == torch.float16  # the official scripts' SD1.5 precision
    assert devices.auto_dtype("diffrir", CUDA) == torch.float32  # the official DiffRIR inference
    assert devices.auto_dtype("metrics", CUDA) == torch.float32


def test_automatic_precision_on_apple_gpus():
    assert devices.auto_dtype("assistant", MPS) == torch.float16
    assert devices.auto_dtype("sd", MPS) == torch.float16
    assert devices.auto_dtype("diffrir", MPS) == torch.float32


def test_an_explicit_dtype_is_taken_as_given():
    assert devices.pick_dtype("diffrir", "fp16", CPU) == torch.float16
    assert devices.pick_dtype("sd", torch.bfloat16, CPU) == torch.bfloat16
    with pytest.raises(ValueError, match="auto, bf16, fp16, fp32"):
        devices.pick_dtype("sd", "int8", CPU)
    with pytest.raises(ValueError, match="model kind 'vae'"):
        devices.auto_dtype("vae", CPU)


def test_auto_device_is_the_hosts_device_when_it_has_one():
    assert devices.pick_device("auto", default=torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert devices.pick_device("cpu", default=CUDA) == CPU
    assert devices.pick_device(CPU) == CPU
    if not torch.cuda.is_available():
        assert devices.pick_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            devices.pick_device("cuda")
    with pytest.raises(ValueError, match="'tpu' is not one of auto, cuda, cpu, mps"):
        devices.pick_device("tpu")


def test_device_and_dtype_and_names():
    assert devices.device_and_dtype("sd", "cpu", "auto") == (CPU, torch.float32)
    assert devices.dtype_name(torch.bfloat16) == "bfloat16"
    assert devices.TORCH_DTYPES["bf16"] == torch.bfloat16
    assert devices.mixed_precision_dtype("bf16") == torch.bfloat16
    assert devices.mixed_precision_dtype("no") == torch.float32


@pytest.fixture
def flash_installed(monkeypatch):
    """Pretend the flash-attn package is importable (it is not on these machines)."""
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_auto_attention_is_flash_attention_where_it_can_run(flash_installed, dtype):
    assert devices.assistant_attention("auto", CUDA, dtype) == "flash_attention_2"
    assert devices.assistant_attention("flash_attention_2", CUDA, dtype) == "flash_attention_2"


@pytest.mark.parametrize(("device", "dtype", "supports", "why"), [
    (CPU, torch.float16, True, "it runs on CUDA GPUs only and the assistant runs on cpu"),
    (MPS, torch.float16, True, "it runs on CUDA GPUs only and the assistant runs on mps"),
    (CUDA, torch.float32, True, "it needs fp16 or bf16 weights and the language model is float32"),
    (CUDA, torch.bfloat16, False, "this model class has no flash-attention in the installed transformers"),
])
def test_auto_attention_is_sdpa_where_flash_attention_cannot_run(flash_installed, device, dtype, supports, why):
    assert devices.assistant_attention("auto", device, dtype, model_supports_flash=supports) == "sdpa"
    with pytest.raises(ValueError, match=f"^attention flash_attention_2 cannot run: {why}; choose auto or sdpa$"):
        devices.assistant_attention("flash_attention_2", device, dtype, model_supports_flash=supports)


def test_flash_attention_without_the_package_is_sdpa_or_one_error():
    """These machines have no flash-attn: auto falls back, an explicit choice says what is missing (no kernel is
    fetched from the hub instead)."""
    assert devices.assistant_attention("auto", CUDA, torch.bfloat16) == "sdpa"
    with pytest.raises(ValueError, match="the flash-attn package is not installed in this Python"):
        devices.assistant_attention("flash_attention_2", CUDA, torch.bfloat16)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_sdpa_and_eager_are_taken_as_given(attention):
    assert devices.assistant_attention(attention, CPU, torch.float32) == attention


def test_an_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="attention 'flash' is not one of auto, sdpa, flash_attention_2, eager"):
        devices.assistant_attention("flash", CPU, torch.float32)


# --- images and masks --------------------------------------------------------------------------------------------


def test_pil_and_tensor_round_trip_is_exact():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tensor = images.pil_to_tensor(Image.fromarray(pixels))
    assert tensor.shape == (1, 5, 7, 3) and tensor.dtype == torch.float32
    assert np.array_equal(np.asarray(images.tensor_to_pil(tensor)), pixels)
    assert np.array_equal(np.asarray(images.tensor_to_pil(tensor[0])), pixels)
    rgba = torch.cat([tensor, torch.ones(1, 5, 7, 1)], dim=-1)  # alpha is dropped
    assert np.array_equal(np.asarray(images.tensor_to_pil(rgba)), pixels)
    assert np.array_equal(np.asarray(images.tensor_to_pil(tensor * 2 - 0.5)).min(), 0)  # clamped, not wrapped


def test_mask_forms_read_the_same():
    array = np.zeros((4, 6), np.float32)
    array[1:3, 2:5] = 1.0
    as_image = images.mask_to_pil(array)
    assert as_image.mode == "L" and as_image.size == (6, 4)
    for mask in (array, as_image, torch.from_numpy(array), torch.from_numpy(array)[None]):
        assert np.array_equal(images.mask_array(mask, (6, 4)), array)
    assert np.array_equal(images.pil_to_mask(as_image), array)


def test_a_mask_of_another_size_has_one_message_everywhere():
    expected = "the mask is 6x4 but the image is 8x4: use the mask made for this image (the same size) or resize it"
    with pytest.raises(images.ImageInputError) as raised:
        images.mask_array(np.zeros((4, 6)), (8, 4))
    assert str(raised.value) == expected
    with pytest.raises(images.ImageInputError, match="the mask is 6x4 but the original image is 8x4"):
        images.check_mask_size((1, 4, 6), (8, 4), image_name="original image")


def test_an_empty_mask_is_refused_where_something_must_be_generated():
    faint = np.full((4, 4), 0.49, np.float32)
    images.mask_array(faint, (4, 4))  # no threshold: an empty mask is fine (the assistant sees nothing black)
    with pytest.raises(images.ImageInputError, match="marks no pixel to paint .*below 50% gray.*in white"):
        images.mask_array(faint, (4, 4), threshold=0.5, action="paint")


def test_a_mask_must_be_one_channel():
    with pytest.raises(images.ImageInputError, match=r"got shape \[1, 8, 8, 3\]: pass a MASK, not an IMAGE"):
        images.as_mask_batch(torch.zeros(1, 8, 8, 3))
    with pytest.raises(images.ImageInputError, match=r"got shape \[8, 8, 3\]"):
        images.mask_array(np.zeros((8, 8, 3)), (8, 8))
    assert images.as_mask_batch(torch.zeros(8, 8)).shape == (1, 8, 8)


def test_open_image_reads_and_converts(tmp_path):
    path = tmp_path / "picture.png"
    Image.new("RGBA", (9, 5), (10, 20, 30, 0)).save(path)
    opened = images.open_image(path)
    assert (opened.mode, opened.size, opened.getpixel((0, 0))) == ("RGB", (9, 5), (10, 20, 30))
    assert images.open_image(path, "L").mode == "L"


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.png", None, "does not exist"),
    ("empty.png", b"", "is empty"),
    ("text.png", b"not an image at all", "could not be read as an image"),
])
def test_open_image_refuses_bad_files_with_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(images.ImageInputError, match=message):
        images.open_image(path)


def test_open_image_refuses_a_truncated_file(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(images.ImageInputError, match="could not be read as an image"):
        images.open_image(path)


def test_open_image_refuses_pictures_past_the_pixel_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 40 * 30 - 1)
    with pytest.raises(images.ImageInputError, match="40x30 pixels, more than the 1,199-pixel limit"):
        images.open_image(path)


# --- atomic files ------------------------------------------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    files.write_json_atomic(target, {"done": 1})
    with pytest.raises(KeyboardInterrupt), files.atomic_path(target) as temp:
        temp.write_text("{half")
        raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"done": 1}
    assert leftovers(tmp_path) == []


def test_atomic_writers_replace_the_target_and_create_folders(tmp_path):
    files.write_text_atomic(tmp_path / "a" / "b.txt", "one")
    files.write_text_atomic(tmp_path / "a" / "b.txt", "two")
    files.write_bytes_atomic(tmp_path / "a" / "c.bin", b"\x00\x01")
    files.save_image_atomic(Image.new("L", (3, 2), 7), tmp_path / "a" / "d.png")
    files.save_npz_atomic(tmp_path / "a" / "e.npz", x=np.arange(3))
    files.save_torch_atomic({"w": torch.ones(2)}, tmp_path / "a" / "f.pth")
    files.save_safetensors_atomic({"w": torch.zeros(2)}, tmp_path / "a" / "g.safetensors", {"format": "pt"})
    folder = tmp_path / "a"
    assert (folder / "b.txt").read_text() == "two"
    assert (folder / "c.bin").read_bytes() == b"\x00\x01"
    assert Image.open(folder / "d.png").getpixel((0, 0)) == 7
    assert np.load(folder / "e.npz")["x"].tolist() == [0, 1, 2]
    assert torch.load(folder / "f.pth", weights_only=True)["w"].tolist() == [1.0, 1.0]
    from safetensors.torch import load_file

    assert load_file(str(folder / "g.safetensors"))["w"].tolist() == [0.0, 0.0]
    assert leftovers(folder) == []


def test_a_folder_appears_complete_or_not_at_all(tmp_path):
    target = tmp_path / "checkpoint"
    with files.atomic_folder(target) as building:
        (building / "config.json").write_text("{}")
        assert not target.exists()
    assert (target / "config.json").is_file()
    with pytest.raises(RuntimeError), files.atomic_folder(target) as building:
        (building / "weights.bin").write_bytes(b"half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    with files.atomic_folder(target) as building:
        (building / "new.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["new.json"]  # replaced, not merged
    assert leftovers(tmp_path) == []


def test_jsonl_appends_survive_a_torn_line(tmp_path):
    log = tmp_path / "rows.jsonl"
    files.append_jsonl(log, [{"key": 1}])
    with log.open("a") as file:
        file.write('{"key": 2, "tor')  # a run killed mid-line
    files.append_jsonl(log, [{"key": 3}, {"key": "ü"}])
    assert files.read_jsonl(log) == [{"key": 1}, {"key": 3}, {"key": "ü"}]
    assert files.read_jsonl(tmp_path / "none.jsonl") == []


# --- errors ------------------------------------------------------------------------------------------------------


def test_one_line_drops_colour_codes_and_joins_lines():
    assert errors.one_line(ValueError("\x1b[31mbad\x1b[0m file\n  try again\n")) == "bad file try again"
    assert errors.one_line(OSError()) == "OSError"


def test_the_reporter_prints_one_line_and_exits_2(capsys):
    def fail() -> int:
        raise images.ImageInputError("picture.png is empty (0 bytes):\ngive a PNG")

    assert errors.run_reporting(fail, "use less") == 2
    assert capsys.readouterr().err == "error: picture.png is empty (0 bytes): give a PNG\n"
    assert errors.run_reporting(lambda: 0, "use less") == 0


def test_the_reporter_names_ctrl_c_and_out_of_memory(capsys):
    def interrupted() -> int:
        raise KeyboardInterrupt

    def out_of_memory() -> int:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore details")

    assert errors.run_reporting(interrupted, "x") == 130
    assert errors.run_reporting(out_of_memory, "use a smaller --tile") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of GPU memory (CUDA out of memory. Tried to allocate 2 GiB): use a smaller")
    assert err.count("\n") == 1


def test_a_bug_is_not_hidden_as_a_user_error():
    def bug() -> int:
        raise KeyError("programming error")

    with pytest.raises(KeyError):
        errors.run_reporting(bug, "x")


def test_no_temporary_names_are_left_by_the_helpers(tmp_path):
    files.write_json_atomic(tmp_path / "x.json", [1])
    assert os.listdir(tmp_path) == ["x.json"]
