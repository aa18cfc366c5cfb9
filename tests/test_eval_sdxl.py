"""`python -m llmga eval t2i|inpaint` with SDXL settings: rows whose model is an SDXL folder get its official sampling
(cli-sdxl.py: CFG 5.0, 1024x1024; cli-sdxl-inpainting.py: 30 steps, strength 0.8, 1024x1024) for every option left
out, beside SD1.5 rows with theirs; the tiny SDXL folders of `fixtures.sdxl_small` (inpainting: a copy whose UNet says
sample_size 8, so SDXL's default size is 64x64), the tiny CLIP of test_eval_editing for the CLIP score."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sdxl_support import small_sdxl  # noqa: F401  (the tiny SDXL folders fixture)
from test_eval_editing import clip_dir  # noqa: F401  (the tiny CLIP folder fixture)
from test_eval_runs import run_main, save_picture
from test_sd_official import small_copy

from llmga.sd.pipelines import load_sd_pipeline, text_to_image

FAST = ["--device", "cpu", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def sdxl_inpainting_64(small_sdxl, tmp_path_factory):  # noqa: F811
    return small_copy(small_sdxl.inpainting, tmp_path_factory.mktemp("sdxl-64") / "tiny-sdxl-small-inpainting")


def run_record(folder) -> dict:
    return json.loads((folder / "run.json").read_text())


def test_eval_t2i_gives_sdxl_rows_their_official_sampling(tmp_path, capsys, small_sdxl, sd15_models,  # noqa: F811
                                                          clip_dir):  # noqa: F811
    captions = tmp_path / "captions.txt"
    captions.write_text("a red fox in the snow\na lighthouse at night\n")
    out = tmp_path / "run"
    for index in range(2):  # the SD1.5 row's images as a resumed run finds them (SD1.5 takes ~10 s an image here)
        save_picture(out / "images" / "SD15" / f"{index:06d}.png", 64, 64, seed=index)
    code, stdout, stderr = run_main(
        capsys, "eval", "t2i", captions, "--setting", f"XL={small_sdxl.t2i}:caption", "--setting",
        f"SD15={sd15_models.diffusers}:caption", "--metrics", "clip", "--clip", clip_dir, "--width", "64",
        "--height", "64", "--steps", "2", "--batch-size", "2", "--out", out, *FAST)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert (report["protocol"]["cfg"], report["protocol"]["steps"], report["protocol"]["width"]) == (5.0, 2, 64)
    rows = {row["name"]: row for row in report["settings"]}
    assert rows["XL"]["generation"] is None and rows["SD15"]["generation"]["cfg"] == 7.5  # each family's official
    assert (rows["XL"]["made_this_run"], rows["SD15"]["made_this_run"]) == (2, 0)
    assert run_record(out / "images" / "XL")["cfg"] == 5.0 and run_record(out / "images" / "SD15")["cfg"] == 7.5
    assert all(np.isfinite(row["clip_score"]) for row in rows.values())
    assert "SD15: 64x64, 2 steps, CFG 7.5" in (out / "report.md").read_text()
    # The batched loop gives caption i the image the library makes alone from seed i.
    pipe = load_sd_pipeline(small_sdxl.t2i, device="cpu", dtype="fp32")
    alone = text_to_image(pipe, "a lighthouse at night", seed=1, width=64, height=64, steps=2, cfg=5.0)[0]
    batched = Image.open(out / "images" / "XL" / "000001.png")
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(batched, np.int16)).max() <= 2


def test_eval_inpaint_runs_an_sdxl_row_at_strength_08(tmp_path, capsys, sdxl_inpainting_64):
    folder = tmp_path / "places"
    save_picture(folder / "a.png", 64, 80, seed=1)
    save_picture(folder / "b.png", 72, 64, seed=2)
    out = tmp_path / "run"
    code, stdout, stderr = run_main(
        capsys, "eval", "inpaint", folder, "--masks", "outpaint", "--size", "64", "--setting",
        f"XL={sdxl_inpainting_64}:plain", "--metrics", "ssim", "--steps", "4", "--out", out, *FAST)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    protocol = report["protocol"]
    assert (protocol["steps"], protocol["cfg"], protocol["strength"]) == (4, 7.5, 0.8)
    assert 0 <= report["rows"][0]["scores"]["outpaint"]["ssim"] <= 1
    for name in ("a", "b"):
        crop = np.asarray(Image.open(out / "data" / "outpaint" / f"{name}_crop000.png"))
        mask = np.asarray(Image.open(out / "data" / "outpaint" / f"{name}_crop000_mask000.png"))
        result = np.asarray(Image.open(out / "results" / "XL" / "outpaint" / f"{name}_crop000_mask000.png"))
        assert result.shape == crop.shape and np.array_equal(result[mask == 0], crop[mask == 0])


@pytest.mark.parametrize(("task", "model", "options", "message"), [
    ("inpaint", "t2i", [], "is an SDXL text-to-image model (4-channel UNet): inpainting and outpainting need"),
    ("t2i", "inpainting", [], "is an SDXL inpainting model (9-channel UNet): text to image needs"),
    ("t2i", "t2i", ["--encoding", "lpw"], "SDXL prompts have one encoding, 'llmga'"),
    ("inpaint", "sd15", ["--strength", "0.8"], "strength 0.8 is an SDXL inpainting setting"),
])
def test_eval_refuses_a_model_that_does_not_fit_in_one_line(tmp_path, capsys, small_sdxl, sd15_models,  # noqa: F811
                                                             task, model, options, message):
    folder = {"t2i": small_sdxl.t2i, "inpainting": small_sdxl.inpainting,
              "sd15": sd15_models.diffusers_inpainting}[model]
    source = tmp_path / "captions.txt"
    source.write_text("a fox\n")
    if task == "inpaint":
        source = save_picture(tmp_path / "places" / "a.png", 64, 64).parent
    out = tmp_path / "run"
    prompt = "caption" if task == "t2i" else "plain"
    metrics = "is" if task == "t2i" else "ssim"
    code, _, stderr = run_main(capsys, "eval", task, source, "--setting", f"X={folder}:{prompt}", "--metrics",
                               metrics, *options, "--out", out, *FAST)
    assert code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr, stderr
    assert not list(out.glob("**/*.png"))
