"""The evaluation runs (`llmga.eval.t2i`, `inpaint`, `restore_eval`, `report`) and `python -m llmga eval ...`: the loops
with tiny fake generators and feature extractors, and end to end on the tiny SD1.5, assistant and DiffRIR fixtures
with random-weight Inception / LPIPS files and a tiny CLIP (no real weights, no network)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval_editing import clip_dir  # noqa: F401  (the tiny CLIP folder fixture)

from llmga.cli import main
from llmga.eval.backends import LazyAssistant
from llmga.eval.editing import METRICS
from llmga.eval.inpaint import (
    InpaintGeneration,
    InpaintMetrics,
    InpaintSetting,
    Restorer,
    eval_mask,
    mask_area_bin,
    prepare_inpaint_set,
    read_mask,
    run_inpaint_eval,
)
from llmga.eval.networks import INCEPTION_FILE, INCEPTION_URL, LPIPS_LIN_FILE, LPIPS_VGG_FILE
from llmga.eval.pairs import EvalInputError
from llmga.eval.report import Table, markdown_table, plot_tables
from llmga.eval.runs import parse_metrics, parse_names
from llmga.eval.t2i import (
    Caption,
    T2IGeneration,
    T2IMetrics,
    T2ISetting,
    parse_setting,
    read_t2i_captions,
    run_t2i_eval,
)
from llmga.masks import EVAL_MASKS
from llmga.sd.pipelines import load_sd15_pipeline, text_to_image

FAST_SD = ["--steps", "2", "--device", "cpu", "--dtype", "fp32"]


def save_picture(path: Path, width: int, height: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


class FakeFeatures:
    """A tiny feature extractor: per-image channel means and spreads as "pool", three made-up logits."""

    name = "fake-features"
    image_size = None

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        pool = torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], dim=1)
        return {"pool": pool.numpy(), "logits": (pool[:, :3] * 4).numpy(), "embed": pool.numpy()}


class CountingGenerator:
    """generate_fn that paints each image a colour drawn from its seed, remembering every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], list[int]]] = []

    def __call__(self, model: str, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        self.calls.append((model, list(prompts), list(seeds)))
        return [Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))
                for seed in seeds]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder whose eval/ holds random-weight FID Inception and LPIPS files under their released names."""
    from llmga.eval.networks import LPIPS, InceptionFeatures

    folder = tmp_path_factory.mktemp("models")
    (folder / "eval").mkdir()
    torch.manual_seed(0)
    torch.save(InceptionFeatures().state_dict(), folder / "eval" / INCEPTION_FILE)
    lpips = LPIPS().state_dict()
    torch.save({key: value for key, value in lpips.items() if key.startswith("features.")},
               folder / "eval" / LPIPS_VGG_FILE)
    torch.save({key: value for key, value in lpips.items() if key.startswith("lin")}, folder / "eval" / LPIPS_LIN_FILE)
    return folder


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- masks ---------------------------------------------------------------------------------------------------------


def test_training_masks_are_the_library_masks():
    import llmga.masks
    import training.data.masks

    assert training.data.masks.MaskGenerator is llmga.masks.MaskGenerator
    assert training.data.masks.DIFFRIR_MASKS is llmga.masks.DIFFRIR_MASKS


@pytest.mark.parametrize("mask_type", list(EVAL_MASKS))
def test_eval_masks_are_deterministic_and_cover_at_most_half(mask_type):
    masks = [eval_mask(mask_type, 256, seed=3, index=index) for index in range(6)]
    assert np.array_equal(masks[0], eval_mask(mask_type, 256, seed=3, index=0))
    assert not np.array_equal(masks[0], masks[1])
    assert not np.array_equal(masks[0], eval_mask(mask_type, 256, seed=4, index=0))
    for mask in masks:
        assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0.0, 1.0}
        assert 0 < mask.mean() <= 0.5


def test_outpaint_masks_are_border_bands_of_15_to_40_percent():
    for index in range(8):
        mask = eval_mask("outpaint", 512, seed=0, index=index)
        rows, cols = np.nonzero(mask == 0)
        top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
        assert not mask[top:bottom + 1, left:right + 1].any()  # the kept part is one rectangle
        bands = [top, 511 - bottom, left, 511 - right]
        assert all(band == 0 or int(0.15 * 512) <= band <= int(0.4 * 512) for band in bands) and any(bands)


def test_prepared_set_uses_lama_names_crops_mixed_sizes_and_is_reused(tmp_path):
    images = [save_picture(tmp_path / "in" / "small.png", 40, 30), save_picture(tmp_path / "in" / "big.jpg", 90, 70)]
    sets = prepare_inpaint_set(images, tmp_path / "data", ("narrow", "outpaint"), size=64, seed=1, progress=False)
    for mask_type, items in sets.items():
        assert [item.name for item in items] == ["small_crop000", "big_crop000"]
        for item in items:
            assert item.image == tmp_path / "data" / mask_type / f"{item.name}.png"
            assert item.mask.name == f"{item.name}_mask000.png"
            assert Image.open(item.image).size == (64, 64)
            assert 0 < read_mask(item.mask).mean() <= 0.5
    stamp = sets["narrow"][0].mask.stat().st_mtime_ns
    again = prepare_inpaint_set(images, tmp_path / "data", ("narrow", "outpaint"), size=64, seed=1, progress=False)
    assert again == sets and sets["narrow"][0].mask.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings"):
        prepare_inpaint_set(images, tmp_path / "data", ("narrow",), size=64, seed=2, progress=False)


# --- what every run shares -----------------------------------------------------------------------------------------


def test_metric_and_mask_names_parse_one_way_for_every_task():
    assert parse_metrics("CLIP-I, l1,l1", METRICS) == ("l1", "clip-i")  # the known order, each name once
    assert parse_names("outpaint, Narrow", tuple(EVAL_MASKS), "--masks", "mask types") == ("outpaint", "narrow")
    with pytest.raises(EvalInputError, match=r"unknown metrics \['psnr'\] in --metrics 'fid,psnr': choose from fid, "
                                             r"is, clip \(comma-separated\)"):
        parse_metrics("fid,psnr", ("fid", "is", "clip"))
    with pytest.raises(EvalInputError, match=r"--metrics ' , ' names no metrics"):
        parse_metrics(" , ", ("fid",))
    with pytest.raises(EvalInputError, match=r"unknown mask types \['thin'\] in --masks"):
        parse_names("thin", tuple(EVAL_MASKS), "--masks", "mask types")


def test_lazy_assistant_loads_on_first_use_and_again_after_close(monkeypatch):
    from llmga.eval import backends

    loads, freed = [], []
    monkeypatch.setattr(backends, "free_memory", lambda: freed.append(True))
    lazy = LazyAssistant(lambda: loads.append("load") or f"assistant {len(loads)}",
                         lambda assistant: lambda text: f"{assistant}: {text}")
    assert loads == []
    assert (lazy("a"), lazy("b")) == ("assistant 1: a", "assistant 1: b") and loads == ["load"]
    lazy.close()
    assert freed == [True] and lazy("c") == "assistant 2: c"


def test_assistant_backends_send_first_turns_in_one_batch(monkeypatch):
    from llmga.eval import backends
    from llmga.mllm import batch

    sent = []

    class FakeAssistant:
        def new_history(self):
            return "history"

        def turn(self, history, task, text="", *, image=None, mask=None):
            return (history, task, text, image, None if mask is None else mask.shape)

    def reply_batch(assistant, turns, settings):
        sent.append((turns, settings.temperature))
        return [SimpleNamespace(text=f"reply {index}") for index in range(len(turns))]

    monkeypatch.setattr(batch, "reply_batch", reply_batch)
    assert backends.AssistantRefiner(FakeAssistant())(["a fox", "a cat"]) == ["reply 0", "reply 1"]
    assert sent[-1] == ([("history", "text_to_image", "a fox", None, None),
                         ("history", "text_to_image", "a cat", None, None)], 0.0)  # greedy by default
    picture = Image.new("RGB", (8, 8))
    assert backends.AssistantPrompter(FakeAssistant())([picture], [np.ones((8, 8))], ["outpaint"]) == ["reply 0"]
    assert sent[-1][0] == [("history", "outpaint", "", picture, (8, 8))]


# --- captions and the t2i loop -------------------------------------------------------------------------------------


def test_coco_captions_are_sampled_one_per_image_reproducibly(tmp_path):
    annotations = [{"image_id": image, "caption": f" caption {k} of image {image}\n"} for image in range(10)
                   for k in range(5)]
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps({"annotations": annotations}))
    picked = read_t2i_captions(path, num=4, seed=7)
    assert picked == read_t2i_captions(path, num=4, seed=7) != read_t2i_captions(path, num=4, seed=8)
    assert len({caption.id for caption in picked}) == 4 and picked == sorted(picked, key=lambda c: c.id)
    for caption in picked:
        assert caption.id == f"{int(caption.text.split()[-1]):012d}" and caption.text.startswith("caption ")
    lines = tmp_path / "captions.txt"
    lines.write_text("a red fox\n\n  a  lighthouse \n")
    assert read_t2i_captions(lines) == [Caption("000000", "a red fox"), Caption("000001", "a lighthouse")]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(EvalInputError, match="holds no captions"):
        read_t2i_captions(tmp_path / "empty.txt")


def test_settings_parse_labels_models_with_colons_and_prompt_sources():
    assert parse_setting("SD1.5 + short caption=C:/models/sd15:caption") == T2ISetting(
        "SD1.5 + short caption", "C:/models/sd15", "caption")
    assert parse_setting("models/llmga-sd15-t2i-v2:refined").name == "llmga-sd15-t2i-v2 + refined prompt"
    with pytest.raises(EvalInputError, match="LABEL=MODEL:PROMPT"):
        parse_setting("models/sd15:long")


def test_t2i_run_batches_resumes_and_refines_each_caption_once(tmp_path):
    captions = [Caption(f"{i:06d}", f"caption {i}") for i in range(6)]
    reference = tmp_path / "real"
    for index, (width, height) in enumerate([(40, 30), (24, 24), (50, 60), (32, 32)]):  # mixed sizes are resized
        save_picture(reference / f"{index}.png", width, height, seed=100 + index)
    settings = [T2ISetting("SD1.5 + short caption", "sd15", "caption"),
                T2ISetting("LLMGA SD1.5-ft + refined prompt", "llmga-sd", "refined")]
    refined_batches = []

    def refine(texts: list[str]) -> list[str]:
        refined_batches.append(texts)
        return [f"<gen_image> {text}, detailed </gen_image>" if "5" not in text else "no tags" for text in texts]

    metrics = T2IMetrics(inception=FakeFeatures(), clip_image=FakeFeatures(),
                         clip_text=lambda texts: np.ones((len(texts), 6)), fid_size=32, is_splits=3)
    generation = T2IGeneration(seed=10, batch_size=4)
    first = CountingGenerator()
    result = run_t2i_eval(settings, captions, tmp_path / "run", generate_fn=first, metrics=metrics, refine_fn=refine,
                          assistant="tiny", generation=generation, reference=reference, progress=False)
    assert [len(prompts) for _, prompts, _ in first.calls] == [4, 2, 4, 2]
    assert first.calls[0][2] == [10, 11, 12, 13] and first.calls[2][2] == [10, 11, 12, 13]  # same seeds per caption
    assert first.calls[2][1][0] == "caption 0, detailed" and first.calls[3][1][1] == "caption 5"  # no tags: caption
    assert sum(len(batch) for batch in refined_batches) == 6
    rows = {row["name"]: row for row in result.report["settings"]}
    assert all(np.isfinite(row[key]) for row in rows.values() for key in ("fid", "is_mean", "clip_score"))
    assert result.report["refinement"]["without_prompt"] == 1
    assert "| SD1.5 + short caption |" in result.files.markdown.read_text()

    (tmp_path / "run" / "images" / "SD1.5_short_caption" / "000002.png").unlink()
    again = CountingGenerator()
    second = run_t2i_eval(settings, captions, tmp_path / "run", generate_fn=again, metrics=metrics, refine_fn=refine,
                          assistant="tiny", generation=generation, reference=reference, progress=False)
    assert again.calls == [("sd15", ["caption 2"], [12])]
    assert sum(len(batch) for batch in refined_batches) == 6
    assert second.report["settings"][1]["fid"] == pytest.approx(rows["LLMGA SD1.5-ft + refined prompt"]["fid"])
    with pytest.raises(ValueError, match="other settings"):
        run_t2i_eval(settings, captions, tmp_path / "run", generate_fn=again, metrics=metrics, refine_fn=refine,
                     assistant="tiny", generation=T2IGeneration(seed=11), reference=reference, progress=False)


def test_inpaint_run_restores_generated_results_and_resumes(tmp_path):
    images = [save_picture(tmp_path / "in" / f"{i}.png", 48, 48, seed=i) for i in range(3)]
    sets = prepare_inpaint_set(images, tmp_path / "run" / "data", ("wide", "outpaint"), size=32, progress=False)
    calls, restored = [], []

    def inpaint_fn(model, image, mask, prompt, seed):
        calls.append((model, prompt, seed))
        pixels = np.asarray(image).copy()
        pixels[mask >= 0.5] = 128
        return Image.fromarray(pixels)

    def restore(generated, reference, mask, seed):
        restored.append(seed)
        return reference

    def prompt_fn(images, masks, tasks):
        return [f"<gen_image> fill for {task} </gen_image>" for task in tasks]

    def lpips(a, b):
        return (a - b).abs().mean(dim=(1, 2, 3))

    settings = [InpaintSetting("plain", "inpainting", "plain"), InpaintSetting("assisted", "inpainting", "assistant")]
    metrics = InpaintMetrics(inception=FakeFeatures(), lpips=lpips)
    kwargs = dict(inpaint_fn=inpaint_fn, metrics=metrics, prompt_fn=prompt_fn, assistant="tiny",
                  restorers=[Restorer("oracle", restore)], generation=InpaintGeneration(plain_prompt="a photo"),
                  progress=False)
    result = run_inpaint_eval(settings, sets, tmp_path / "run", **kwargs)
    assert len(calls) == 12 and len(restored) == 12
    assert {prompt for _, prompt, _ in calls} == {"a photo", "fill for inpaint", "fill for outpaint"}
    assert [seed for _, _, seed in calls[:3]] == [0, 1, 2]
    rows = {row["name"]: row["scores"] for row in result.report["rows"]}
    assert set(rows) == {"plain", "assisted", "plain + oracle", "assisted + oracle"}
    assert rows["plain + oracle"]["wide"]["lpips"] == 0 and rows["plain + oracle"]["wide"]["ssim"] == 1
    assert rows["plain"]["outpaint"]["lpips"] > 0
    assert (tmp_path / "run" / "results" / "plain" / "wide" / sets["wide"][0].result_name).is_file()
    markdown = result.files.markdown.read_text()
    assert "Table 3" in markdown and "Table 4" in markdown and "outpaint FID ↓" in markdown
    # LaMa's breakdown by mask coverage: every image in the bin of its mask's area, the bin means average back to
    # the whole set's, FID only where a bin has two images or more.
    for mask_type, items in sets.items():
        by_area = rows["plain"][mask_type]["by_area"]
        expected = {}
        for item in items:
            expected.setdefault(mask_area_bin(float(read_mask(item.mask).mean())), []).append(item)
        assert {label: entry["count"] for label, entry in by_area.items()} == {k: len(v) for k, v in expected.items()}
        total = sum(entry["lpips"] * entry["count"] for entry in by_area.values()) / len(items)
        assert total == pytest.approx(rows["plain"][mask_type]["lpips"])
        assert all(("fid" in entry) == (entry["count"] >= 2) for entry in by_area.values())
        assert f"{mask_type} masks, LPIPS by mask area" in markdown
    run_inpaint_eval(settings, sets, tmp_path / "run", **kwargs)
    assert len(calls) == 12 and len(restored) == 12


@pytest.mark.parametrize(("area", "label"), [(0.0, "0-10%"), (0.099, "0-10%"), (0.1, "10-20%"), (0.45, "40-50%"),
                                             (0.5, "40-50%")])
def test_mask_area_bins_are_lamas_ten_percent_steps(area, label):
    assert mask_area_bin(area) == label


def test_report_table_markdown_and_plot_without_matplotlib(tmp_path, monkeypatch):
    table = Table("Table 3", ["a", "b"], [("narrow", "FID"), ("narrow", "LPIPS")])
    table.set("a", "narrow", "FID", 12.345)
    table.set("a", "narrow", "LPIPS", 0.1234)
    text = markdown_table(table)
    assert "| Setting | narrow FID ↓ | narrow LPIPS ↓ |" in text and "| a | 12.35 | 0.1234 |" in text
    assert "| b | – | – |" in text
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plot_tables([table], tmp_path / "plot.png") is False


# --- the commands end to end ---------------------------------------------------------------------------------------


def test_eval_t2i_end_to_end_with_the_assistant(tmp_path, capsys, sd15_models, host_assistant, models_dir,
                                                clip_dir):  # noqa: F811
    captions = tmp_path / "captions.txt"
    captions.write_text("a red fox in the snow\na lighthouse at night\n")
    out = tmp_path / "run"
    # FID's 2048x2048 matrix square root takes ~10 s on two cores; the loop test above covers FID.
    code, stdout, stderr = run_main(
        capsys, "eval", "t2i", captions, "--setting", f"LLMGA={sd15_models.diffusers}:refined", "--mllm",
        host_assistant.path, "--max-new-tokens", "6", "--metrics", "is,clip", "--models-dir", models_dir,
        "--clip", clip_dir, "--width", "64", "--height", "64", "--batch-size", "2", "--out", out, *FAST_SD)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    row = report["settings"][0]
    assert row["name"] == "LLMGA" and row["images"] == 2 and row["made_this_run"] == 2
    assert "fid" not in row and all(np.isfinite(row[key]) for key in ("is_mean", "clip_score"))
    assert report["protocol"]["fid_size"] == 256 and report["protocol"]["captions"] == 2
    assert sorted(path.name for path in (out / "images").iterdir() for path in path.glob("*.png")) == \
        ["000000.png", "000001.png"]
    refined = [json.loads(line) for line in (out / "refined.jsonl").read_text().splitlines()]
    assert [row["caption"] for row in refined] == ["a red fox in the snow", "a lighthouse at night"]
    # The batched loop gives caption i the image the library makes alone from seed i.
    pipe = load_sd15_pipeline(sd15_models.diffusers, device="cpu", dtype="fp32")
    alone = text_to_image(pipe, refined[1]["prompt"], seed=1, width=64, height=64, steps=2, cfg=7.5)[0]
    batched = Image.open(out / "images" / "LLMGA" / "000001.png")
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(batched, np.int16)).max() <= 2
    assert "Table 1" in stdout and (out / "report.md").is_file()
    assert list((out / "feature_cache" / "clip_text").glob("*.npz"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib" in stderr
    else:
        assert (out / "report.png").is_file()


def test_eval_inpaint_end_to_end_with_the_assistant_and_diffrir(tmp_path, capsys, sd15_models, host_assistant,
                                                               host_diffrir, models_dir):
    folder = tmp_path / "places"
    save_picture(folder / "a.png", 64, 80, seed=1)
    save_picture(folder / "b.png", 48, 48, seed=2)
    out = tmp_path / "run"
    model = sd15_models.diffusers_inpainting
    code, stdout, stderr = run_main(
        capsys, "eval", "inpaint", folder, "--masks", "outpaint", "--size", "64", "--setting",
        f"SD inpainting={model}:plain", "--setting", f"LLMGA={model}:assistant", "--mllm", host_assistant.path,
        "--max-new-tokens", "4", "--diffrir", f"DiffRIR={host_diffrir}", "--models-dir", models_dir, "--metrics",
        "lpips,ssim", "--out", out, *FAST_SD)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert [row["name"] for row in report["rows"]] == ["SD inpainting", "LLMGA", "SD inpainting + DiffRIR",
                                                       "LLMGA + DiffRIR"]
    assert all(0 <= row["scores"]["outpaint"]["ssim"] <= 1 for row in report["rows"])
    replies = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert [(row["task"], row["name"]) for row in replies] == [("outpaint", "a_crop000"), ("outpaint", "b_crop000")]
    assert (out / "data" / "outpaint" / "a_crop000_mask000.png").is_file()
    assert (out / "results" / "SD_inpainting_DiffRIR" / "outpaint" / "b_crop000_mask000.png").is_file()
    assert "Table 4" in stdout


def test_eval_restore_end_to_end(tmp_path, capsys, host_diffrir, models_dir):
    folder = tmp_path / "held_out"
    for index in range(2):
        save_picture(folder / f"{index}.png", 96, 112, seed=index)
    out = tmp_path / "run"
    code, stdout, stderr = run_main(capsys, "eval", "restore", folder, "--size", "96", "--diffrir", host_diffrir,
                                    "--models-dir", models_dir, "--out", out, "--device", "cpu")
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert [row["name"] for row in report["rows"]] == ["plain composite", f"DiffRIR ({host_diffrir.stem})"]
    for row in report["rows"]:
        assert set(row["scores"]) == {"psnr", "ssim", "lpips"} and np.isfinite(row["scores"]["psnr"])
    clean = np.asarray(Image.open(out / "data" / "0.png"), np.float32)
    degraded = np.asarray(Image.open(out / "data" / "degraded" / "0.png"), np.float32)
    assert clean.shape == degraded.shape == (96, 96, 3) and np.abs(clean - degraded).mean() > 1


def test_eval_edit_is_the_magicbrush_evaluation(tmp_path, capsys):
    for name, seed in (("out.png", 1), ("gt.png", 2)):
        save_picture(tmp_path / name, 32, 32, seed=seed)
    manifest = tmp_path / "edits.jsonl"
    manifest.write_text(json.dumps({"output": "out.png", "target": "gt.png"}) + "\n")
    results = [run_main(capsys, *command, manifest, "--metrics", "l1,l2") for command in (("eval", "edit"),
                                                                                         ("eval-edit",))]
    assert results[0][0] == results[1][0] == 0 and results[0][1] == results[1][1] and "l1" in results[0][1]


@pytest.mark.parametrize("case", ["empty captions", "missing inception", "unreadable image", "refined without mllm",
                                  "unknown mask type", "negative temperature"])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, monkeypatch, sd15_models, case):
    monkeypatch.delenv("LLMGA_EVAL_MODELS", raising=False)
    captions = tmp_path / "captions.txt"
    captions.write_text("" if case == "empty captions" else "a red fox\n")
    t2i = ["eval", "t2i", captions, "--setting", f"{sd15_models.diffusers}:caption", "--metrics", "is",
           "--models-dir", tmp_path / "no-models", "--out", tmp_path / "run", "--device", "cpu"]
    if case == "unreadable image":
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
        argv = ["eval", "inpaint", tmp_path / "in", "--setting", f"{sd15_models.diffusers_inpainting}:plain",
                "--metrics", "ssim", "--out", tmp_path / "run", "--device", "cpu"]
    elif case == "refined without mllm":
        argv = [*t2i[:3], "--setting", f"{sd15_models.diffusers}:refined", *t2i[5:]]
    elif case == "unknown mask type":
        argv = ["eval", "inpaint", tmp_path, "--setting", "x:plain", "--masks", "narrow,thin"]
    elif case == "negative temperature":
        argv = [*t2i, "--temperature", "-1"]
    else:
        argv = t2i
    code, _, stderr = run_main(capsys, *argv)
    error = stderr.replace("\r", "\n").strip().splitlines()[-1]  # after any progress bar
    assert code == 2 and "Traceback" not in stderr
    assert error.startswith("error: ") and stderr.count("error: ") == 1
    expected = {"empty captions": "holds no captions", "missing inception": INCEPTION_FILE,
                "unreadable image": "broken.png could not be read", "refined without mllm": "--mllm",
                "unknown mask type": "unknown mask types ['thin'] in --masks",
                "negative temperature": "--temperature is -1.0 but must be 0"}[case]
    assert expected in error
    if case == "missing inception":
        assert INCEPTION_URL in error and str(tmp_path / "no-models" / "eval") in error
