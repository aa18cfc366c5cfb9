"""SD1.5 generation on diffusers (`llmga.sd.pipelines`) and `python -m llmga generate|inpaint|outpaint`, on the tiny
random-weight fixtures (64x64-ish images, 2 steps)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llmga.cli import main
from llmga.images import ImageInputError
from llmga.sd.pipelines import (
    SDPipelineError,
    encode_prompts,
    inpaint,
    is_inpainting_pipeline,
    load_sd15_pipeline,
    outpaint,
    text_to_image,
)

REPO = Path(__file__).resolve().parent.parent
FAST = dict(steps=2, cfg=7.5)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmga", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def random_picture(path: Path, width: int, height: int, seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def box_mask(path: Path | None, width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4: height // 2, width // 3: 2 * width // 3] = 255
    if path is not None:
        Image.fromarray(mask).save(path)
    return mask


@pytest.fixture(scope="module")
def t2i_pipe(sd15_models):
    return load_sd15_pipeline(sd15_models.diffusers, device="cpu")


@pytest.fixture(scope="module")
def inpaint_pipe(sd15_models):
    return load_sd15_pipeline(sd15_models.diffusers_inpainting, inpainting=True, device="cpu")


# --- library -------------------------------------------------------------------------------------------------


def test_text_to_image_is_reproducible_from_its_seed(t2i_pipe):
    first = text_to_image(t2i_pipe, "a red fox in the snow", seed=3, width=64, height=48, **FAST)
    again = text_to_image(t2i_pipe, "a red fox in the snow", seed=3, width=64, height=48, **FAST)
    assert first[0].size == (64, 48)
    assert np.array_equal(np.asarray(first[0]), np.asarray(again[0]))


def test_each_of_several_images_is_reproduced_by_its_own_seed(t2i_pipe):
    pair = text_to_image(t2i_pipe, "a lighthouse", seed=10, count=2, width=64, height=64, mode="lpw", **FAST)
    alone = text_to_image(t2i_pipe, "a lighthouse", seed=11, width=64, height=64, mode="lpw", **FAST)
    assert len(pair) == 2
    assert not np.array_equal(np.asarray(pair[0]), np.asarray(pair[1]))
    assert np.array_equal(np.asarray(pair[1]), np.asarray(alone[0]))


def test_inpaint_keeps_unmasked_pixels_and_the_size_and_is_reproducible(inpaint_pipe):
    pixels = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)  # not multiples of 8
    mask = box_mask(None, 70, 50).astype(np.float32) / 255
    image = Image.fromarray(pixels)
    first = inpaint(inpaint_pipe, image, mask, "a cat", seed=5, **FAST)[0]
    again = inpaint(inpaint_pipe, image, Image.fromarray((mask * 255).astype(np.uint8)), "a cat", seed=5, **FAST)[0]
    result = np.asarray(first)
    assert first.size == (70, 50)
    assert np.array_equal(result[mask == 0], pixels[mask == 0])
    assert not np.array_equal(result[mask == 1], pixels[mask == 1])
    assert np.array_equal(result, np.asarray(again))


def test_outpaint_grows_the_canvas_to_multiples_of_8_around_the_original(inpaint_pipe):
    pixels = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    result = outpaint(inpaint_pipe, Image.fromarray(pixels), 6, 0, 0, 5, "a beach", seed=1, **FAST)[0]
    assert result.size == (56, 48)  # 50 + 6 -> 56; 40 + 5 -> 45 -> 48 (rounding joins the bottom padding)
    assert np.array_equal(np.asarray(result)[:40, 6:], pixels)


def test_a_prompt_past_the_token_limit_is_cut_with_a_warning(t2i_pipe, caplog):
    encoded = encode_prompts(t2i_pipe, "fox " * 310, "", mode="llmga")
    assert encoded.length == 302  # 4 chunks: 75 * 4 + 2
    assert "positive prompt: dropped 10 tokens past the 300-token limit" in caplog.text


def test_a_9_channel_unet_saved_as_text_to_image_pipeline_loads_for_inpainting(sd15_models, tmp_path):
    """llmga-sd15-inpainting-v2 is released as a StableDiffusionPipeline whose UNet has 9 input channels."""
    folder = tmp_path / "llmga-sd15-inpainting-v2"
    folder.mkdir()
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (folder / part).symlink_to(sd15_models.diffusers_inpainting / part)
    index = json.loads((sd15_models.diffusers_inpainting / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    pipe = load_sd15_pipeline(folder, device="cpu")
    assert is_inpainting_pipeline(pipe)
    assert text_to_image(pipe, "a house", seed=0, width=48, height=40, **FAST)[0].size == (48, 40)


def test_inpaint_rejects_a_text_to_image_pipeline_and_a_wrong_mask(t2i_pipe, inpaint_pipe):
    image = Image.new("RGB", (64, 64))
    with pytest.raises(SDPipelineError, match="inpainting=True"):
        inpaint(t2i_pipe, image, np.ones((64, 64)), "x", seed=0, **FAST)
    with pytest.raises(ImageInputError, match="mask is 32x64 but the image is 64x64"):
        inpaint(inpaint_pipe, image, np.ones((64, 32)), "x", seed=0, **FAST)
    with pytest.raises(ImageInputError, match="marks no pixel"):
        inpaint(inpaint_pipe, image, np.zeros((64, 64)), "x", seed=0, **FAST)


def test_an_incomplete_folder_names_what_is_missing(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(SDPipelineError, match="lacks unet, vae, text_encoder, tokenizer, scheduler"):
        load_sd15_pipeline(tmp_path, device="cpu")


# --- command line --------------------------------------------------------------------------------------------


def png_text(path: Path) -> dict[str, str]:
    with Image.open(path) as image:
        return dict(image.text)


def test_generate_without_assistant_uses_the_message_and_writes_metadata(sd15_models, tmp_path):
    out = tmp_path / "fox.png"
    result = run_cli("generate", "--sd", str(sd15_models.diffusers), "--device", "cpu", "--steps", "2",
                     "--width", "64", "--height", "48", "--seed", "3", "--negative", "blurry", "--out", str(out),
                     "a red fox in the snow")
    assert result.returncode == 0, result.stderr
    assert "Generation prompt: a red fox in the snow" in result.stdout
    with Image.open(out) as image:
        assert image.size == (64, 48)
    text = png_text(out)
    assert text["llmga_prompt"] == "a red fox in the snow" and text["llmga_negative"] == "blurry"
    assert "Negative prompt: blurry" in text["parameters"] and "Seed: 3" in text["parameters"]
    settings = json.loads(text["llmga_settings"])
    assert settings | {"sd_model": "tiny-sd15", "steps": 2, "cfg": 7.5, "seed": 3, "mllm": None} == settings


def test_generate_with_assistant_prints_its_reply_and_the_prompt(sd15_models, mllm_checkpoints, tmp_path):
    assistant = mllm_checkpoints["qwen2"].path
    result = run_cli("generate", "--mllm", str(assistant), "--sd", str(sd15_models.diffusers), "--device", "cpu",
                     "--dtype", "fp32", "--temperature", "0", "--max-new-tokens", "8", "--steps", "2",
                     "--width", "64", "--height", "64", "--seed", "1", "--count", "2", "--out", str(tmp_path),
                     "a red fox")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("LLMGA: ") and "Generation prompt: " in result.stdout
    # A random-weight assistant writes no <gen_image> tags: the message is used, and the CLI says so.
    assert "no <gen_image> prompt" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["generate-1.png", "generate-2.png"]
    settings = json.loads(png_text(tmp_path / "generate-2.png")["llmga_settings"])
    assert settings["mllm"] == assistant.name and settings["reply"] is not None and settings["seed"] == 2


def test_inpaint_keeps_every_unmasked_pixel_of_the_input(sd15_models, mllm_checkpoints, tmp_path):
    pixels = random_picture(tmp_path / "picture.png", 72, 56)
    mask = box_mask(tmp_path / "mask.png", 72, 56)
    result = run_cli("inpaint", "--mllm", str(mllm_checkpoints["qwen2"].path), "--max-new-tokens", "4",
                     "--sd", str(sd15_models.diffusers_inpainting), "--device", "cpu", "--steps", "2", "--seed", "0",
                     "--image", str(tmp_path / "picture.png"), "--mask", str(tmp_path / "mask.png"),
                     "--out", str(tmp_path / "out.png"), "put a cat there")
    assert result.returncode == 0, result.stderr
    output = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    assert output.shape == pixels.shape
    assert np.array_equal(output[mask == 0], pixels[mask == 0])
    assert json.loads(png_text(tmp_path / "out.png")["llmga_settings"])["command"] == "inpaint"


def test_outpaint_writes_the_padded_canvas_size(sd15_models, tmp_path):
    pixels = random_picture(tmp_path / "picture.png", 60, 50)
    result = run_cli("outpaint", "--sd", str(sd15_models.diffusers_inpainting), "--device", "cpu", "--steps", "2",
                     "--image", str(tmp_path / "picture.png"), "--left", "10", "--right", "3", "--bottom", "7",
                     "--seed", "2", "--out", str(tmp_path / "wide.png"), "a meadow")
    assert result.returncode == 0, result.stderr
    output = np.asarray(Image.open(tmp_path / "wide.png").convert("RGB"))
    assert output.shape == (64, 80, 3)  # 50 + 7 -> 64 and 60 + 13 -> 80 (rounding grows bottom and right)
    assert np.array_equal(output[:50, 10:70], pixels)


@pytest.mark.parametrize("case", ["missing image", "mask size", "missing model", "bad width", "nothing to add"])
def test_bad_input_is_one_line_and_exit_status_2(sd15_models, tmp_path, case):
    random_picture(tmp_path / "picture.png", 40, 30)
    box_mask(tmp_path / "mask.png", 20, 30)
    inpainting = ["--sd", str(sd15_models.diffusers_inpainting), "--image", str(tmp_path / "picture.png")]
    args, expected = {
        "missing image": (["inpaint", "--sd", str(sd15_models.diffusers_inpainting), "--image",
                           str(tmp_path / "nope.png"), "--mask", str(tmp_path / "mask.png")],
                          "nope.png does not exist"),
        "mask size": (["inpaint", *inpainting, "--mask", str(tmp_path / "mask.png")],
                      "mask is 20x30 but the image is 40x30"),
        "missing model": (["generate", "--models-dir", str(tmp_path), "a fox"], "llmga-sd15-t2i-v2 is not downloaded"),
        "bad width": (["generate", "--sd", str(sd15_models.diffusers), "--width", "100", "a fox"], "use 96 or 104"),
        "nothing to add": (["outpaint", *inpainting], "outpainting adds nothing"),
    }[case]
    result = run_cli(*args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says `width` x `height` but holds no pixel data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("case", ["cfg nan", "steps 0", "steps -3", "temperature -1", "zero-byte image",
                                  "truncated image", "large image", "bomb image", "edit on the inpainting model",
                                  "edit steps 0", "edit cfg nan"])
def test_bad_numbers_images_and_models_fail_in_one_line_before_anything_runs(sd15_models, tmp_path, capsys, case):
    random_picture(tmp_path / "picture.png", 40, 32)
    box_mask(tmp_path / "mask.png", 40, 32)
    (tmp_path / "empty.png").write_bytes(b"")
    whole = (tmp_path / "picture.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[:len(whole) // 2])
    generate = ["generate", "--sd", str(sd15_models.diffusers), "a fox"]

    def inpaint(image: Path) -> list[str]:
        return ["inpaint", "--sd", str(sd15_models.diffusers_inpainting), "--image", str(image), "--mask",
                str(tmp_path / "mask.png")]

    def edit(sd: Path, *extra: str) -> list[str]:
        return ["edit", "--sd", str(sd), "--image", str(tmp_path / "picture.png"), "--source-prompt", "a cat",
                "--target-prompt", "a dog", *extra]

    args, expected = {
        "cfg nan": ([*generate, "--cfg", "nan"], "--cfg is nan but must be 0 or more (official: 7.5)"),
        "steps 0": ([*generate, "--steps", "0"], "--steps is 0 but must be 1 or more (official: 50)"),
        "steps -3": ([*generate, "--steps", "-3"], "--steps is -3 but must be 1 or more (official: 50)"),
        "temperature -1": ([*generate, "--mllm", "absent", "--temperature", "-1"],
                           "--temperature is -1.0 but must be 0 (greedy) or more"),
        "zero-byte image": (inpaint(tmp_path / "empty.png"), "empty.png is empty (0 bytes)"),
        "truncated image": (inpaint(tmp_path / "cut.png"), "cut.png could not be read as an image"),
        "large image": (inpaint(header_only_png(tmp_path / "large.png", 12000, 12000)),
                        "is 12000x12000 pixels, more than the 134,217,728-pixel limit"),
        "bomb image": (inpaint(header_only_png(tmp_path / "bomb.png", 20000, 20000)),
                       "is larger than the 134,217,728-pixel limit"),
        "edit on the inpainting model": (edit(sd15_models.diffusers_inpainting),
                                         "is an inpainting model (9 input channels)"),
        "edit steps 0": (edit(sd15_models.diffusers, "--steps", "0"), "steps is 0; use 1..1000"),
        "edit cfg nan": (edit(sd15_models.diffusers, "--cfg", "nan"), "--cfg is nan but must be 0 or more"),
    }[case]
    assert main([*args, "--device", "cpu", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and expected in error and error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()


def test_inpaint_notes_a_mask_that_covers_the_whole_picture(sd15_models, tmp_path, capsys):
    random_picture(tmp_path / "picture.png", 40, 32)
    Image.new("L", (40, 32), 255).save(tmp_path / "mask.png")
    assert main(["inpaint", "--sd", str(sd15_models.diffusers_inpainting), "--device", "cpu", "--steps", "1",
                 "--image", str(tmp_path / "picture.png"), "--mask", str(tmp_path / "mask.png"), "--seed", "0",
                 "--out", str(tmp_path / "out.png"), "a meadow"]) == 0
    assert ("note: the mask covers the whole picture, so none of it is kept: inpainting paints a new picture of its "
            "size (as generate does)\n") in capsys.readouterr().err
    assert (tmp_path / "out.png").is_file()


def test_the_parser_loads_no_torch():
    """`python -m llmga extract-prompt` stays instant: building the parser with the SD commands imports no torch."""
    code = ("import sys, llmga.cli as m; m.build_parser(); "
            "print('torch' in sys.modules, 'diffusers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "False"], result.stderr
