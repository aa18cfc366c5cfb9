"""`generate|inpaint|outpaint --official` (llmga.sd.official) against an independent reference of the official scripts.

The reference is diffusers' stock StableDiffusionPipeline / StableDiffusionInpaintPipeline (what the official
lpw pipelines are, once their prompt encoding is taken out) fed:
- the prompt embeddings of `ref_weighted_embeddings` from test_long_prompt.py, the independent re-implementation of
  the official `get_weighted_text_embeddings` that test_lpw_matches_official checks (and that was checked once
  against the official code itself), at 3 chunks for text to image and 4 for inpainting, negative "";
- for inpainting, `ref_resize2512` below, which follows cli-sd15-inpainting.py's `resize2512` step by step, and no
  size (the pipeline's default: the UNet's sample size × 8).
To stay fast on the CPU the parity runs use copies of the tiny models whose UNet says sample_size 8 (64x64); the
wiring tests on the real fixtures (sample_size 64) check the 512x512 sizes without running the UNet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline
from PIL import Image
from test_long_prompt import ref_weighted_embeddings

from llmga.cli import main
from llmga.sd.official import official_inpaint, official_resize, official_text_to_image
from llmga.sd.pipelines import SDPipelineError, load_sd15_pipeline

STEPS = 2
# About 280 content tokens with weights: lpw keeps 225 at 3 chunks (231 positions), all at 4 chunks (308).
PROMPT = "a (red fox:1.3) sitting in [deep] snow under a pale winter sky, " * 20


def small_copy(folder: Path, target: Path) -> Path:
    """`folder` with its UNet config saying sample_size 8 (so the official default size is 64x64); weights linked."""
    target.mkdir(parents=True)
    for part in folder.iterdir():
        if part.name != "unet":
            (target / part.name).symlink_to(part)
    (target / "unet").mkdir()
    for file in (folder / "unet").iterdir():
        (target / "unet" / file.name).symlink_to(file)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (target / "unet" / "config.json").unlink()
    (target / "unet" / "config.json").write_text(json.dumps({**config, "sample_size": 8}))
    return target


@pytest.fixture(scope="module")
def small(sd15_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("small-sd")
    return {"t2i": small_copy(sd15_models.diffusers, root / "t2i"),
            "inpaint": small_copy(sd15_models.diffusers_inpainting, root / "inpaint")}


def reference_pipeline(pipeline_class, folder: Path):
    return pipeline_class.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)


def ref_embeddings(pipe, prompt: str, chunks: int) -> dict[str, torch.Tensor]:
    positive, negative = ref_weighted_embeddings(pipe.tokenizer, pipe.text_encoder, prompt, "", chunks)
    return {"prompt_embeds": positive, "negative_prompt_embeds": negative}


def ref_resize2512(image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
    """cli-sd15-inpainting.py resize2512: short side to 512 with LANCZOS mask levels <125 -> 0, else 255"""
    width, height = image.size
    size = (512, int(height / width * 512)) if height > width else (int(width / height * 512), 512)
    mask, image = mask.resize(size, Image.LANCZOS), image.resize(size, Image.LANCZOS)
    levels = np.array(mask)
    levels[levels < 125] = 0
    levels[levels >= 125] = 255
    return image, Image.fromarray(levels.astype("uint8"))


def picture_and_mask(width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """Random pixels and a box mask whose rows run through the levels around the official threshold 125."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = 255
    mask[: height // 4, : width // 2] = np.linspace(110, 140, height // 4, dtype=np.uint8)[:, None]
    return Image.fromarray(pixels), Image.fromarray(mask)


# --- parity with the official scripts ------------------------------------------------------------------------


def test_official_text_to_image_equals_the_stock_pipeline_fed_the_official_embeddings(small):
    pipe = load_sd15_pipeline(small["t2i"], device="cpu", dtype="fp32")
    assert isinstance(pipe.scheduler, PNDMScheduler)  # the model's own scheduler, as DiffusionPipeline loads it
    ours = official_text_to_image(pipe, PROMPT, seed=3, steps=STEPS, size=64)[0]
    reference = reference_pipeline(StableDiffusionPipeline, small["t2i"])
    embeddings = ref_embeddings(reference, PROMPT, 3)
    assert embeddings["prompt_embeds"].shape[1] == 231
    expected = reference(**embeddings, num_inference_steps=STEPS, guidance_scale=7.5, height=64, width=64,
                         generator=torch.Generator("cpu").manual_seed(3), output_type="np").images[0]
    result = np.asarray(ours, dtype=np.float32) / 255
    assert ours.size == (64, 64)
    assert np.abs(result - np.round(expected * 255) / 255).max() <= 1e-4


def test_official_inpaint_equals_the_stock_pipeline_after_resize2512(small):
    pipe = load_sd15_pipeline(small["inpaint"], inpainting=True, device="cpu", dtype="fp32")
    image, mask = picture_and_mask(72, 56)
    ours = official_inpaint(pipe, image, np.asarray(mask, dtype=np.float32) / 255, PROMPT, seed=5, steps=STEPS,
                            count=2)
    reference = reference_pipeline(StableDiffusionInpaintPipeline, small["inpaint"])
    embeddings = ref_embeddings(reference, PROMPT, 4)
    assert embeddings["prompt_embeds"].shape[1] == 308
    sd_image, sd_mask = ref_resize2512(image, mask)
    assert sd_image.size == (658, 512)
    for index, picture in enumerate(ours):
        expected = reference(**embeddings, image=sd_image, mask_image=sd_mask, num_inference_steps=STEPS,
                             generator=torch.Generator("cpu").manual_seed(5 + index), output_type="np").images[0]
        assert picture.size == (64, 64)  # the pipeline's default: sample_size 8 × 8; no resizing back
        assert np.abs(np.asarray(picture, dtype=np.float32) / 255 - np.round(expected * 255) / 255).max() <= 1e-4
    assert not np.array_equal(np.asarray(ours[0]), np.asarray(ours[1]))


def test_official_resize_keeps_the_aspect_and_binarises_at_125():
    image, mask = picture_and_mask(40, 90)
    resized, binary = official_resize(image, mask)
    expected_image, expected_mask = ref_resize2512(image, mask)
    assert resized.size == binary.size == (512, 1152)
    assert np.array_equal(np.asarray(resized), np.asarray(expected_image))
    assert np.array_equal(np.asarray(binary), np.asarray(expected_mask))
    assert set(np.unique(np.asarray(binary)).tolist()) == {0, 255}


def test_official_text_to_image_refuses_an_inpainting_model(small):
    pipe = load_sd15_pipeline(small["inpaint"], device="cpu", dtype="fp32")
    with pytest.raises(SDPipelineError, match="text-to-image model such as llmga-sd15-t2i-v2"):
        official_text_to_image(pipe, "a fox", seed=0, steps=1, size=64)


# --- the command line ------------------------------------------------------------------------------------------


class RecordedCall:
    """Stands in for a pipeline's __call__: records its keyword arguments, returns a gray picture of the size asked."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, pipe, **kwargs):
        self.calls.append(kwargs)
        picture = Image.new("RGB", (kwargs["width"], kwargs["height"]), (128, 128, 128))
        return type("Output", (), {"images": [picture]})()


@pytest.fixture
def recorded(monkeypatch) -> RecordedCall:
    recorder = RecordedCall()
    for pipeline_class in (StableDiffusionPipeline, StableDiffusionInpaintPipeline):
        monkeypatch.setattr(pipeline_class, "__call__", lambda pipe, **kwargs: recorder(pipe, **kwargs))
    return recorder


def test_generate_official_runs_the_official_settings_at_512(sd15_models, recorded, tmp_path):
    out = tmp_path / "fox.png"
    assert main(["generate", "--official", "--sd", str(sd15_models.diffusers), "--device", "cpu", "--seed", "4",
                 "--out", str(out), PROMPT]) == 0
    (call,) = recorded.calls
    assert (call["width"], call["height"], call["num_inference_steps"], call["guidance_scale"]) == (512, 512, 50, 7.5)
    assert call["prompt_embeds"].shape == call["negative_prompt_embeds"].shape == (1, 231, 768)
    assert call["generator"].initial_seed() == 4
    settings = json.loads(Image.open(out).text["llmga_settings"])
    assert settings["official"] is True and settings["encoding"] == "lpw"


def test_inpaint_official_stretches_the_resized_picture_to_512_and_keeps_that_size(sd15_models, recorded, tmp_path):
    image, mask = picture_and_mask(72, 56)
    image.save(tmp_path / "picture.png")
    mask.save(tmp_path / "mask.png")
    assert main(["inpaint", "--official", "--sd", str(sd15_models.diffusers_inpainting), "--device", "cpu", "--image",
                 str(tmp_path / "picture.png"), "--mask", str(tmp_path / "mask.png"), "--steps", "3", "--out",
                 str(tmp_path / "out.png"), PROMPT]) == 0
    (call,) = recorded.calls
    expected_image, expected_mask = ref_resize2512(image, mask)
    assert (call["width"], call["height"], call["num_inference_steps"], call["strength"]) == (512, 512, 3, 1.0)
    assert np.array_equal(np.asarray(call["image"]), np.asarray(expected_image))
    assert np.array_equal(np.asarray(call["mask_image"]), np.asarray(expected_mask))
    assert call["prompt_embeds"].shape == (1, 308, 768)
    assert Image.open(tmp_path / "out.png").size == (512, 512)  # not the input's 72x56, nothing pasted back


def test_outpaint_official_pads_exactly_as_asked(sd15_models, recorded, tmp_path):
    image, _ = picture_and_mask(60, 50)
    image.save(tmp_path / "picture.png")
    assert main(["outpaint", "--official", "--sd", str(sd15_models.diffusers_inpainting), "--device", "cpu",
                 "--image", str(tmp_path / "picture.png"), "--left", "10", "--bottom", "7", "--out",
                 str(tmp_path / "out.png"), "a meadow"]) == 0
    (call,) = recorded.calls
    assert call["image"].size == (int(70 / 57 * 512), 512)  # the 70x57 canvas; 80x64 if grown to multiples of 8
    levels = np.asarray(call["mask_image"])
    assert levels[0, 0] == 255 and levels[0, -1] == 0 and levels[-1, -1] == 255  # left and bottom borders


def test_inpaint_official_takes_a_mask_of_level_125_the_default_refuses(sd15_models, recorded, tmp_path, capsys):
    image, _ = picture_and_mask(40, 32)
    image.save(tmp_path / "picture.png")
    Image.new("L", (40, 32), 125).save(tmp_path / "mask.png")
    inpaint = ["inpaint", "--sd", str(sd15_models.diffusers_inpainting), "--device", "cpu", "--image",
               str(tmp_path / "picture.png"), "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "o.png"),
               "a cat"]
    assert main(inpaint) == 2
    assert "marks no pixel" in capsys.readouterr().err
    assert main([*inpaint, "--official"]) == 0
    assert "the mask covers the whole picture" in capsys.readouterr().err
    assert set(np.unique(np.asarray(recorded.calls[0]["mask_image"])).tolist()) == {255}


@pytest.mark.parametrize(("command", "option"), [
    ("generate", ["--width", "512"]), ("generate", ["--encoding", "lpw"]), ("generate", ["--negative", "blurry"]),
    ("inpaint", ["--feathering", "4"]), ("outpaint", ["--height", "64"]),
])
def test_official_refuses_the_options_it_fixes(sd15_models, tmp_path, capsys, command, option):
    image, mask = picture_and_mask(40, 32)
    image.save(tmp_path / "picture.png")
    mask.save(tmp_path / "mask.png")
    inputs = {"generate": [], "inpaint": ["--image", str(tmp_path / "picture.png"), "--mask",
                                          str(tmp_path / "mask.png")],
              "outpaint": ["--image", str(tmp_path / "picture.png"), "--left", "8"]}[command]
    assert main([command, "--official", *option, *inputs, "--sd", str(tmp_path / "absent"), "--out",
                 str(tmp_path / "out"), "a fox"]) == 2
    error = capsys.readouterr().err
    assert f"--official renders as the official script does, which fixes {option[0]}" in error
    assert not (tmp_path / "out").exists()

