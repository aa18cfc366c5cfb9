"""LLMGA's SDXL models on diffusers (`llmga.sd.pipelines`, `llmga.sd.official`) and `python -m llmga generate|inpaint|
outpaint` with an SDXL --sd, on the fully tiny SDXL folders (`fixtures.sdxl_small`).

The reference is diffusers' stock StableDiffusionXLPipeline / StableDiffusionXLInpaintPipeline (what the official
pipeline_stable_diffusion_xl*_lpw.py are, once their prompt encoding is taken out) fed the prompt embeddings of
`ref_pipeline_prompt` from test_long_prompt_xl.py, the independent re-implementation of the official SDXL encoding,
and zeros for the missing negative (`force_zeros_for_empty_prompt`). The parity runs use copies of the tiny folders
whose UNet says sample_size 8, so the pipelines' default size (what the official scripts render at) is 64x64; the CLI's
defaults (50 steps / CFG 5.0 / 1024x1024; 30 steps / strength 0.8 / 1024x1024) are read from recorded pipeline calls.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline
from PIL import Image
from sdxl_support import small_sdxl  # noqa: F401  (the tiny SDXL folders fixture)
from test_long_prompt_xl import ref_pipeline_prompt
from test_sd_official import picture_and_mask, small_copy

from llmga.cli import main
from llmga.sd import pipelines
from llmga.sd.official import official_inpaint, official_sampling, official_text_to_image
from llmga.sd.pipelines import SDPipelineError, inpaint, load_sd_pipeline, read_sd_model, text_to_image

STEPS = 2
# About 130 tokens: 2 chunks, 152 positions.
PROMPT = "a red fox sitting in deep snow under a pale winter sky, " * 10


@pytest.fixture(scope="module")
def small(small_sdxl, tmp_path_factory):  # noqa: F811
    """The tiny SDXL folders with UNets that say sample_size 8: the pipelines' default size is 64x64."""
    root = tmp_path_factory.mktemp("sdxl-64")
    return SimpleNamespace(t2i=small_copy(small_sdxl.t2i, root / "t2i"),
                           inpainting=small_copy(small_sdxl.inpainting, root / "inpainting"))


@pytest.fixture(scope="module")
def t2i_pipe(small):
    return load_sd_pipeline(small.t2i, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def inpaint_pipe(small):
    return load_sd_pipeline(small.inpainting, inpainting=True, device="cpu", dtype="fp32")


def official_embeddings(pipe, prompt: str) -> dict[str, torch.Tensor]:
    """The official SDXL lpw pipelines' prompt embeddings with no negative prompt (zeros)."""
    positive, pooled = ref_pipeline_prompt(pipe, [prompt])
    return {"prompt_embeds": positive, "pooled_prompt_embeds": pooled,
            "negative_prompt_embeds": torch.zeros_like(positive),
            "negative_pooled_prompt_embeds": torch.zeros_like(pooled)}


def assert_same_picture(picture: Image.Image, expected: np.ndarray) -> None:
    """`picture` (8-bit) is the reference's float output rounded to 8 bits, to 1e-4."""
    assert picture.size == (expected.shape[1], expected.shape[0])
    result = np.asarray(picture, dtype=np.float32) / 255
    assert np.abs(result - np.round(expected * 255) / 255).max() <= 1e-4


# --- the library against the stock diffusers pipelines --------------------------------------------------------------


def test_folders_are_told_apart_by_their_configs(small_sdxl, small):  # noqa: F811
    for folder, inpainting in ((small_sdxl.t2i, False), (small_sdxl.inpainting, True), (small.t2i, False)):
        model = read_sd_model(folder)
        assert (model.family, model.inpainting) == ("sdxl", inpainting)
    renamed = small.t2i.parent / "llmga-sd15-t2i-v2"  # the name says nothing
    renamed.symlink_to(small.t2i)
    assert read_sd_model(renamed).family == "sdxl"


def test_text_to_image_equals_the_stock_pipeline_fed_the_official_embeddings(small, t2i_pipe):
    assert isinstance(t2i_pipe, StableDiffusionXLPipeline)
    assert isinstance(t2i_pipe.scheduler, EulerDiscreteScheduler)  # the model's own scheduler
    ours = text_to_image(t2i_pipe, PROMPT, steps=STEPS, cfg=5.0, seed=3, width=64, height=64)[0]
    official = official_text_to_image(t2i_pipe, PROMPT, seed=3, steps=STEPS)[0]  # CFG 5.0, the pipeline's 64x64
    reference = StableDiffusionXLPipeline.from_pretrained(small.t2i, add_watermarker=False)
    embeddings = official_embeddings(reference, PROMPT)
    assert embeddings["prompt_embeds"].shape == (1, 152, 96) and embeddings["pooled_prompt_embeds"].shape == (1, 32)
    expected = reference(**embeddings, num_inference_steps=STEPS, guidance_scale=5.0, height=64, width=64,
                         generator=torch.Generator("cpu").manual_seed(3), output_type="np").images[0]
    assert_same_picture(ours, expected)
    assert_same_picture(official, expected)


def test_inpaint_equals_the_stock_pipeline_and_keeps_the_unmasked_pixels(small, inpaint_pipe):
    image, mask = picture_and_mask(64, 64)
    soft = np.asarray(mask, dtype=np.float32) / 255
    raw = inpaint(inpaint_pipe, image, soft, PROMPT, steps=3, cfg=7.5, seed=5, strength=0.8, paste_back=False)[0]
    reference = StableDiffusionXLInpaintPipeline.from_pretrained(small.inpainting, add_watermarker=False)
    hard = Image.fromarray(((soft >= 0.5) * 255).astype(np.uint8))
    expected = reference(**official_embeddings(reference, PROMPT), image=image, mask_image=hard, strength=0.8,
                         num_inference_steps=3, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(5),
                         output_type="np").images[0]
    assert_same_picture(raw, expected)  # at the pipeline's default size (64x64 here, 1024x1024 released)
    pasted = np.asarray(inpaint(inpaint_pipe, image, soft, PROMPT, steps=3, cfg=7.5, seed=5, strength=0.8)[0])
    assert np.array_equal(pasted[soft == 0], np.asarray(image)[soft == 0])
    assert np.array_equal(pasted[soft == 1], np.asarray(raw)[soft == 1])


def test_official_inpaint_hands_the_picture_and_mask_as_given_to_the_pipeline(small, inpaint_pipe):
    image, mask = picture_and_mask(72, 56)  # mask levels around 125: the pipeline binarises at 0.5 after resizing
    ours = official_inpaint(inpaint_pipe, image, np.asarray(mask, dtype=np.float32) / 255, PROMPT, seed=5, steps=4,
                            count=2)
    reference = StableDiffusionXLInpaintPipeline.from_pretrained(small.inpainting, add_watermarker=False)
    embeddings = official_embeddings(reference, PROMPT)
    expected = reference(**embeddings, image=image, mask_image=mask, num_inference_steps=4, strength=0.8,
                         generator=torch.Generator("cpu").manual_seed(6), output_type="np").images[0]
    assert_same_picture(ours[1], expected)  # picture 1 from seed 5 + 1; 64x64: the pipeline's default, not 72x56
    assert ours[0].size == (64, 64) and not np.array_equal(np.asarray(ours[0]), np.asarray(ours[1]))


def test_the_library_refuses_the_task_an_sdxl_model_was_not_trained_for(t2i_pipe, inpaint_pipe):
    with pytest.raises(SDPipelineError, match="is an SDXL inpainting model .* text-to-image model such as"):
        text_to_image(inpaint_pipe, "a fox", steps=1, cfg=5.0, seed=0, width=64, height=64)
    with pytest.raises(SDPipelineError, match="is an SDXL text-to-image model .* inpainting model such as"):
        inpaint(t2i_pipe, Image.new("RGB", (64, 64)), np.ones((64, 64), np.float32), "a fox", steps=1, cfg=5, seed=0)
    with pytest.raises(SDPipelineError, match="runs a text-to-image model such as llmga-sdxl-t2i"):
        official_text_to_image(inpaint_pipe, "a fox", seed=0, steps=1)
    with pytest.raises(SDPipelineError, match="SDXL prompts have one encoding"):
        text_to_image(t2i_pipe, "a fox", steps=1, cfg=5.0, seed=0, width=64, height=64, mode="lpw")
    with pytest.raises(SDPipelineError, match="leaves no denoising step"):
        inpaint(inpaint_pipe, Image.new("RGB", (64, 64)), np.ones((64, 64), np.float32), "a", steps=2, cfg=5, seed=0,
                strength=0.4)


# --- the command line: what it passes ------------------------------------------------------------------------------


class RecordedCall:
    """Stands in for a pipeline's __call__: records its keyword arguments, returns a gray picture of the size asked
    (a tensor where the caller asks for one)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, pipe, **kwargs):
        self.calls.append(kwargs)
        if kwargs.get("output_type") == "pt":
            images = torch.full((1, 3, kwargs["height"], kwargs["width"]), 0.5)
        else:
            images = [Image.new("RGB", (kwargs["width"], kwargs["height"]), (128, 128, 128))]
        return SimpleNamespace(images=images)


@pytest.fixture
def recorded(monkeypatch) -> RecordedCall:
    recorder = RecordedCall()
    for pipeline_class in (StableDiffusionXLPipeline, StableDiffusionXLInpaintPipeline):
        monkeypatch.setattr(pipeline_class, "__call__", lambda pipe, **kwargs: recorder(pipe, **kwargs))
    return recorder


@pytest.fixture
def load_dtypes(monkeypatch) -> list[str]:
    """The dtype each pipeline is loaded with."""
    dtypes, load = [], pipelines.load_sd_pipeline

    def recording(folder, **options):
        dtypes.append(options["dtype"])
        return load(folder, **options)

    monkeypatch.setattr(pipelines, "load_sd_pipeline", recording)
    return dtypes


def settings_of(path: Path) -> dict:
    return json.loads(Image.open(path).text["llmga_settings"])


def save_inputs(folder: Path, width: int = 72, height: int = 56) -> tuple[Image.Image, Image.Image]:
    image, mask = picture_and_mask(width, height)
    image.save(folder / "picture.png")
    mask.save(folder / "mask.png")
    return image, mask


def test_generate_defaults_are_cli_sdxl_50_steps_cfg_5_at_1024(small_sdxl, recorded, load_dtypes,  # noqa: F811
                                                                 tmp_path):
    out = tmp_path / "fox.png"
    assert main(["generate", "--sd", str(small_sdxl.t2i), "--device", "cpu", "--seed", "4", "--out", str(out),
                 PROMPT]) == 0
    (call,) = recorded.calls
    assert (call["width"], call["height"], call["num_inference_steps"], call["guidance_scale"]) == (1024, 1024, 50, 5.0)
    assert call["prompt_embeds"].shape == (1, 152, 96) and call["pooled_prompt_embeds"].shape == (1, 32)
    assert not call["negative_prompt_embeds"].any() and not call["negative_pooled_prompt_embeds"].any()
    assert call["generator"].initial_seed() == 4 and "strength" not in call
    settings = settings_of(out)
    assert (settings["steps"], settings["cfg"], settings["width"], settings["sd_family"]) == (50, 5.0, 1024, "sdxl")
    assert load_dtypes == ["auto"]


def test_inpaint_defaults_are_cli_sdxl_inpainting_30_steps_strength_08_at_1024(small_sdxl, recorded,  # noqa: F811
                                                                                 tmp_path):
    image, _ = save_inputs(tmp_path)
    out = tmp_path / "out.png"
    assert main(["inpaint", "--sd", str(small_sdxl.inpainting), "--device", "cpu", "--image",
                 str(tmp_path / "picture.png"), "--mask", str(tmp_path / "mask.png"), "--out", str(out), "a cat"]) == 0
    (call,) = recorded.calls
    assert (call["width"], call["height"], call["num_inference_steps"], call["strength"], call["guidance_scale"]) \
        == (1024, 1024, 30, 0.8, 7.5)
    assert call["image"].size == call["mask_image"].size == (1024, 1024)
    assert Image.open(out).size == image.size  # resized back and pasted onto the input
    assert (settings_of(out)["steps"], settings_of(out)["strength"]) == (30, 0.8)


def test_outpaint_defaults_and_given_options(small_sdxl, recorded, tmp_path):  # noqa: F811
    save_inputs(tmp_path, 60, 50)
    out = tmp_path / "out.png"
    assert main(["outpaint", "--sd", str(small_sdxl.inpainting), "--device", "cpu", "--image",
                 str(tmp_path / "picture.png"), "--left", "10", "--steps", "12", "--strength", "0.5", "--cfg", "3",
                 "--width", "96", "--out", str(out), "a meadow"]) == 0
    (call,) = recorded.calls
    # the 70x50 canvas grown to 72x56; --width 96 gives the height from its aspect ratio
    assert (call["width"], call["height"], call["num_inference_steps"], call["strength"], call["guidance_scale"]) \
        == (96, 72, 12, 0.5, 3.0)
    assert Image.open(out).size == (72, 56)


def test_generate_official_is_cli_sdxl_in_fp32(small_sdxl, recorded, load_dtypes, tmp_path):  # noqa: F811
    out = tmp_path / "fox.png"
    assert main(["generate", "--official", "--sd", str(small_sdxl.t2i), "--device", "cpu", "--seed", "2", "--out",
                 str(out), PROMPT]) == 0
    (call,) = recorded.calls
    assert (call["width"], call["height"], call["num_inference_steps"], call["guidance_scale"]) == (1024, 1024, 50, 5.0)
    assert call["prompt_embeds"].shape == (1, 152, 96) and not call["negative_prompt_embeds"].any()
    assert load_dtypes == [official_sampling("sdxl", inpainting=False).dtype] == ["fp32"]
    assert settings_of(out)["official"] is True


def test_inpaint_official_gives_the_pipeline_the_picture_and_mask_as_they_are(small_sdxl, recorded,  # noqa: F811
                                                                               load_dtypes, tmp_path):
    image, mask = save_inputs(tmp_path)
    out = tmp_path / "out.png"
    assert main(["inpaint", "--official", "--sd", str(small_sdxl.inpainting), "--device", "cpu", "--image",
                 str(tmp_path / "picture.png"), "--mask", str(tmp_path / "mask.png"), "--out", str(out), "a cat"]) == 0
    (call,) = recorded.calls
    assert (call["width"], call["height"], call["num_inference_steps"], call["strength"]) == (1024, 1024, 30, 0.8)
    assert np.array_equal(np.asarray(call["image"]), np.asarray(image))  # no resize2512
    assert np.array_equal(np.asarray(call["mask_image"]), np.asarray(mask))  # not binarised: the pipeline does it
    assert Image.open(out).size == (1024, 1024)  # the pipeline's picture, nothing pasted back
    assert load_dtypes == ["auto"]  # cli-sdxl-inpainting.py loads fp16: what auto gives on GPUs


# --- the command line: real runs -------------------------------------------------------------------------------------


def test_inpaint_and_outpaint_run_and_keep_every_pixel_outside_the_mask(small, tmp_path):
    image, mask = save_inputs(tmp_path, 40, 32)
    common = ["--sd", str(small.inpainting), "--device", "cpu", "--steps", "3", "--seed", "1", "--image",
              str(tmp_path / "picture.png")]
    assert main(["inpaint", *common, "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "i.png"),
                 "a cat"]) == 0
    result, levels = np.asarray(Image.open(tmp_path / "i.png")), np.asarray(mask)
    assert result.shape == (32, 40, 3) and np.array_equal(result[levels == 0], np.asarray(image)[levels == 0])
    assert not np.array_equal(result[levels == 255], np.asarray(image)[levels == 255])
    assert main(["outpaint", *common, "--right", "8", "--bottom", "16", "--out", str(tmp_path / "o.png"),
                 "a meadow"]) == 0
    extended = np.asarray(Image.open(tmp_path / "o.png"))
    assert extended.shape == (48, 48, 3) and np.array_equal(extended[:32, :40], np.asarray(image))


# --- the command line: bad input ---------------------------------------------------------------------------------


def _bad_cases(tmp_path: Path, sdxl, sd15) -> dict[str, tuple[list[str], str]]:
    inputs = ["--image", str(tmp_path / "picture.png"), "--mask", str(tmp_path / "mask.png")]
    return {
        "sdxl inpainting model for generate": (
            ["generate", "--sd", str(sdxl.inpainting)],
            "is an SDXL inpainting model (9-channel UNet): text to image needs an SDXL text-to-image model such as "
            "binxia/llmga-sdxl-t2i"),
        "sdxl text-to-image model for inpaint": (
            ["inpaint", "--sd", str(sdxl.t2i), *inputs],
            "is an SDXL text-to-image model (4-channel UNet): inpainting and outpainting need an SDXL inpainting "
            "model such as binxia/llmga-sdxl-inpainting-v2"),
        "sdxl text-to-image model for outpaint": (
            ["outpaint", "--sd", str(sdxl.t2i), "--image", str(tmp_path / "picture.png"), "--left", "8"],
            "inpainting and outpainting need an SDXL inpainting model"),
        "sd1.5 encoding for sdxl": (
            ["generate", "--sd", str(sdxl.t2i), "--encoding", "lpw"],
            "SDXL prompts have one encoding, 'llmga'"),
        "sdxl strength for sd1.5": (
            ["inpaint", "--sd", str(sd15.diffusers_inpainting), "--strength", "0.8", *inputs],
            "strength 0.8 is an SDXL inpainting setting (cli-sdxl-inpainting.py: 0.8) but"),
        "official fixes strength": (
            ["inpaint", "--official", "--sd", str(sdxl.inpainting), "--strength", "0.5", *inputs],
            "--official renders as the official script does, which fixes --strength"),
        "strength out of range": (
            ["inpaint", "--sd", str(sdxl.inpainting), "--strength", "1.5", *inputs],
            "--strength is 1.5 but must be in (0, 1]"),
        "strength leaves no step": (
            ["inpaint", "--sd", str(sdxl.inpainting), "--strength", "0.1", "--steps", "5", *inputs],
            "strength 0.1 at 5 steps leaves no denoising step"),
        "steps 0 names the sdxl inpainting official": (
            ["inpaint", "--sd", str(sdxl.inpainting), "--steps", "0", *inputs],
            "--steps is 0 but must be 1 or more (official: 30)"),
        "cfg -1 names the sdxl official": (
            ["generate", "--sd", str(sdxl.t2i), "--cfg", "-1"],
            "--cfg is -1.0 but must be 0 or more (official: 5.0)"),
        "sdxl refiner": (
            ["generate", "--sd", str(tmp_path / "refiner")],
            "is an SDXL refiner"),
    }


BAD_CASES = list(_bad_cases(Path("."), SimpleNamespace(inpainting="", t2i=""), SimpleNamespace(
    diffusers_inpainting="")))


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line(case, small_sdxl, sd15_models, tmp_path, capsys):  # noqa: F811
    save_inputs(tmp_path, 40, 32)
    refiner = small_copy(small_sdxl.t2i, tmp_path / "refiner")
    config = json.loads((refiner / "unet" / "config.json").read_text())
    (refiner / "unet" / "config.json").unlink()  # the refiner's size embedding: 5 numbers x 256 + 1280
    (refiner / "unet" / "config.json").write_text(json.dumps({**config, "projection_class_embeddings_input_dim": 2560}))
    argv, message = _bad_cases(tmp_path, small_sdxl, sd15_models)[case]
    out = tmp_path / "out"
    assert main([*argv, "--device", "cpu", "--out", str(out), "a fox"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and message in error, error
    assert not out.exists()
