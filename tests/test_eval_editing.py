"""MagicBrush editing metrics (`llmga.eval`) and `python -m llmga eval-edit`, on small PNGs and tiny random-weight
CLIP and DINO models written in their released layouts (openai/clip-vit-base-patch32, facebook/dino-vits16, the
official dino_deitsmall16_pretrain.pth)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from llmga.cli import main
from llmga.eval import (
    EvalInputError,
    clip_pixel_values,
    dino_pixel_values,
    load_clip,
    load_dino,
    pixel_distances,
    read_captions,
    read_magicbrush,
    read_manifest,
    score_pairs,
)
from llmga.hub import ModelNotFoundError

REPO = Path(__file__).resolve().parent.parent
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DINO_WIDTH, DINO_HEADS, DINO_BLOCKS = 128, 2, 2  # DINO ViTs have 64-wide heads


def save_picture(path: Path, width: int, height: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def save_solid(path: Path, width: int, height: int, color: tuple[int, int, int]) -> Path:
    Image.new("RGB", (width, height), color).save(path)
    return path


# ---------------------------------------------------------------- tiny models in their released layouts


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory, clip_tokenizer_dir: Path) -> Path:
    """openai/clip-vit-base-patch32's layout: CLIPModel weights (prefixed keys), config with the release's legacy
    text token ids, and the real CLIP BPE tokenizer files."""
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("clip-vit-base-patch32")
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(**small, max_position_embeddings=77, vocab_size=49408, bos_token_id=0,
                                         eos_token_id=2, pad_token_id=1),
                        vision_config=dict(**small, image_size=224, patch_size=32), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(clip_tokenizer_dir / name, folder / name)
    return folder


class ReferenceDino(nn.Module):
    """DINO's ViT as its vision_transformer.py computes it (keys like dino_deitsmall16_pretrain.pth), tiny."""

    def __init__(self, width: int = DINO_WIDTH, heads: int = DINO_HEADS, depth: int = DINO_BLOCKS, patch: int = 16):
        super().__init__()
        self.heads = heads
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, width, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (224 // patch) ** 2, width))
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.Module()
            block.norm1, block.norm2 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
            block.attn = nn.Module()
            block.attn.qkv, block.attn.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            block.mlp = nn.Module()
            block.mlp.fc1, block.mlp.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
            self.blocks.append(block)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        for module in self.modules():  # LayerNorms away from identity, so a misplaced one shows
            if isinstance(module, nn.LayerNorm):
                nn.init.normal_(module.weight, 1.0, 0.2)
                nn.init.normal_(module.bias, 0.0, 0.2)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            batch, tokens, width = x.shape
            qkv = block.attn.qkv(block.norm1(x)).reshape(batch, tokens, 3, self.heads, width // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            attention = (q @ k.transpose(-2, -1) * (width // self.heads) ** -0.5).softmax(dim=-1)
            x = x + block.attn.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, width))
            x = x + block.mlp.fc2(nn.functional.gelu(block.mlp.fc1(block.norm2(x))))
        return self.norm(x)[:, 0]


@pytest.fixture(scope="module")
def reference_dino() -> ReferenceDino:
    torch.manual_seed(1)
    return ReferenceDino().eval()


@pytest.fixture(scope="module")
def dino_pth(tmp_path_factory: pytest.TempPathFactory, reference_dino: ReferenceDino) -> Path:
    path = tmp_path_factory.mktemp("dino_official") / "dino_deitsmall16_pretrain.pth"
    torch.save(reference_dino.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory: pytest.TempPathFactory, reference_dino: ReferenceDino) -> Path:
    """facebook/dino-vits16's layout: a ViTConfig (transformers' default LayerNorm eps, as converted) and the
    released ViT key names, written here from the reference model's weights."""
    from transformers import ViTConfig

    folder = tmp_path_factory.mktemp("dino-vits16")
    ViTConfig(hidden_size=DINO_WIDTH, num_hidden_layers=DINO_BLOCKS, num_attention_heads=DINO_HEADS,
              intermediate_size=4 * DINO_WIDTH, image_size=224, patch_size=16, qkv_bias=True).save_pretrained(folder)
    state = reference_dino.state_dict()
    released = {"embeddings.cls_token": state["cls_token"], "embeddings.position_embeddings": state["pos_embed"],
                "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
                "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
                "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    for i in range(DINO_BLOCKS):
        layer, block = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"{block}attn.qkv.{kind}"].chunk(3)
            released.update({
                f"{layer}attention.attention.query.{kind}": q, f"{layer}attention.attention.key.{kind}": k,
                f"{layer}attention.attention.value.{kind}": v,
                f"{layer}attention.output.dense.{kind}": state[f"{block}attn.proj.{kind}"],
                f"{layer}layernorm_before.{kind}": state[f"{block}norm1.{kind}"],
                f"{layer}layernorm_after.{kind}": state[f"{block}norm2.{kind}"],
                f"{layer}intermediate.dense.{kind}": state[f"{block}mlp.fc1.{kind}"],
                f"{layer}output.dense.{kind}": state[f"{block}mlp.fc2.{kind}"]})
    save_file({key: value.contiguous() for key, value in released.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder


# ---------------------------------------------------------------- L1 / L2


def test_pixel_distances_of_solid_colours_after_resizing_to_the_target(tmp_path: Path):
    output = Image.new("RGB", (8, 6), (10, 20, 30))
    target = Image.new("RGB", (4, 3), (40, 20, 0))
    l1, l2 = pixel_distances(output, target)
    assert l1 == pytest.approx((30 + 0 + 30) / 3 / 255, abs=1e-7)
    assert l2 == pytest.approx((30**2 + 0 + 30**2) / 3 / 255**2, abs=1e-8)  # MSE, not RMSE


def test_pixel_distances_match_numpy_on_random_images_of_other_sizes():
    rng = np.random.default_rng(3)
    output = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    target = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    resized = np.asarray(output.resize((16, 12), Image.Resampling.BICUBIC), dtype=np.float64) / 255
    difference = resized - np.asarray(target, dtype=np.float64) / 255
    l1, l2 = pixel_distances(output, target)
    assert l1 == pytest.approx(np.abs(difference).mean(), abs=1e-6)
    assert l2 == pytest.approx((difference**2).mean(), abs=1e-6)
    assert pixel_distances(target, target) == (0.0, 0.0)


# ---------------------------------------------------------------- preprocessing against torchvision


@pytest.mark.parametrize("size", [(301, 217), (150, 400), (224, 224), (100, 90)])
def test_preprocessing_equals_the_official_torchvision_transforms(size: tuple[int, int]):
    transforms = pytest.importorskip("torchvision.transforms")
    bicubic = transforms.InterpolationMode.BICUBIC
    image = Image.fromarray(np.random.default_rng(sum(size)).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    clip = transforms.Compose([transforms.Resize(224, interpolation=bicubic), transforms.CenterCrop(224),
                               transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    dino = transforms.Compose([transforms.Resize(256, interpolation=bicubic), transforms.CenterCrop(224),
                               transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406),
                                                                           (0.229, 0.224, 0.225))])
    torch.testing.assert_close(clip_pixel_values(image), clip(image), atol=1e-6, rtol=0)
    torch.testing.assert_close(dino_pixel_values(image), dino(image), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- CLIP


def test_clip_tokens_are_openai_clip_ids_cut_to_77(clip_dir: Path):
    encoder = load_clip(clip_dir)
    assert encoder.token_ids("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    long_ids = encoder.token_ids("cat " * 200)
    assert len(long_ids) == 77 and long_ids[0] == 49406 and long_ids[-1] == 49407 and set(long_ids[1:-1]) == {2368}


def test_clip_scores_equal_an_independent_computation(clip_dir: Path, tmp_path: Path):
    transforms = pytest.importorskip("torchvision.transforms")
    from transformers import CLIPModel, CLIPTokenizer

    save_picture(tmp_path / "out.png", 300, 200, seed=1)
    save_picture(tmp_path / "gt.png", 240, 320, seed=2)
    pair = read_manifest(_manifest(tmp_path, [{"output": "out.png", "target": "gt.png", "caption": "a red car"}]))
    row = score_pairs(pair, ("clip-i", "clip-t"), clip=load_clip(clip_dir)).rows[0]

    model = CLIPModel.from_pretrained(clip_dir).eval()
    preprocess = transforms.Compose([transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
                                     transforms.CenterCrop(224), transforms.ToTensor(),
                                     transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    images = torch.stack([preprocess(Image.open(tmp_path / name).convert("RGB")) for name in ("out.png", "gt.png")])
    ids = CLIPTokenizer.from_pretrained(clip_dir)("a red car", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        image_features, text_features = model.get_image_features(pixel_values=images), model.get_text_features(ids)
    image_features = getattr(image_features, "pooler_output", image_features)  # transformers 5 returns an output
    text_features = getattr(text_features, "pooler_output", text_features)
    cosine = nn.functional.cosine_similarity
    assert row["clip-i"] == pytest.approx(cosine(image_features[0], image_features[1], dim=0).item(), abs=1e-5)
    assert row["clip-t"] == pytest.approx(cosine(image_features[0], text_features[0], dim=0).item(), abs=1e-5)
    assert row["clip-t_oracle"] == pytest.approx(cosine(image_features[1], text_features[0], dim=0).item(), abs=1e-5)


def test_identical_images_score_perfectly(clip_dir: Path, dino_pth: Path, tmp_path: Path):
    save_picture(tmp_path / "same.png", 64, 48)
    pairs = read_manifest(_manifest(tmp_path, [{"output": "same.png", "target": "same.png", "caption": "x"}]))
    scores = score_pairs(pairs, ("l1", "l2", "clip-i", "dino"), clip=load_clip(clip_dir, with_text=False),
                         dino=load_dino(dino_pth))
    assert scores.means["l1"] == scores.means["l2"] == 0.0
    assert scores.means["clip-i"] == pytest.approx(1.0, abs=1e-6)
    assert scores.means["dino"] == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- DINO


@pytest.mark.parametrize("source", ["pth_file", "pth_folder", "hf_folder"])
def test_dino_embeddings_equal_the_official_vit(source: str, dino_pth: Path, dino_dir: Path,
                                               reference_dino: ReferenceDino):
    path = {"pth_file": dino_pth, "pth_folder": dino_pth.parent, "hf_folder": dino_dir}[source]
    images = [Image.fromarray(np.random.default_rng(seed).integers(0, 256, (250, 300, 3), dtype=np.uint8))
              for seed in (0, 1)]
    with torch.no_grad():
        expected = reference_dino(torch.stack([dino_pixel_values(image) for image in images]))
    torch.testing.assert_close(load_dino(path).embed_images(images), expected, atol=2e-5, rtol=1e-4)


def test_dino_file_that_is_not_a_backbone_is_refused(tmp_path: Path, reference_dino: ReferenceDino):
    torch.save({"teacher": reference_dino.state_dict()}, tmp_path / "full.pth")
    with pytest.raises(ModelNotFoundError, match="not a DINO backbone state dict"):
        load_dino(tmp_path / "full.pth")
    torch.save({**reference_dino.state_dict(), "head.weight": torch.zeros(2)}, tmp_path / "head.pth")
    with pytest.raises(ModelNotFoundError, match="head.weight"):
        load_dino(tmp_path / "head.pth")


# ---------------------------------------------------------------- weight folders: clear errors


def test_missing_or_incomplete_weight_folders_name_files_and_repos(tmp_path: Path, clip_dir: Path):
    with pytest.raises(ModelNotFoundError, match=r"nowhere does not exist.*openai/clip-vit-base-patch32"):
        load_clip(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(clip_dir / "config.json", partial / "config.json")
    with pytest.raises(ModelNotFoundError, match=r"lacks model\.safetensors or pytorch_model\.bin, vocab\.json"):
        load_clip(partial)
    with pytest.raises(ModelNotFoundError, match=r"facebook/dino-vits16.*dino_deitsmall16_pretrain\.pth"):
        load_dino(tmp_path / "no-dino")
    with pytest.raises(ModelNotFoundError, match="holds a 'clip' model, not 'vit'"):
        load_dino(clip_dir)


# ---------------------------------------------------------------- manifests


def _manifest(folder: Path, rows: list[dict], name: str = "edits.jsonl") -> Path:
    path = folder / name
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_manifest_formats_resolve_paths_beside_the_manifest(tmp_path: Path):
    for name in ("in.png", "out.png", "gt.png"):
        save_picture(tmp_path / "images" / name, 8, 8)
    jsonl = _manifest(tmp_path, [{"input": "images/in.png", "output": "images/out.png", "target": "images/gt.png",
                                  "caption": "a dog", "id": "dog", "seed": 3}])
    (tmp_path / "edits.csv").write_text("output,target,caption\nimages/out.png,images/gt.png,a dog\n")
    (tmp_path / "edits.json").write_text(json.dumps([{"output": "images/out.png", "target": "images/gt.png"}]))
    first, = read_manifest(jsonl)
    assert (first.id, first.caption, first.input) == ("dog", "a dog", tmp_path / "images" / "in.png")
    assert first.output == tmp_path / "images" / "out.png" and first.target == tmp_path / "images" / "gt.png"
    assert read_manifest(tmp_path / "edits.csv")[0].caption == "a dog"
    assert read_manifest(tmp_path / "edits.json")[0].caption is None


@pytest.mark.parametrize("content, message", [
    ('{"output": "a.png"}\n', r"line 1 has no 'target'"),
    ('{"output": "a.png", "target": "missing.png"}\n', r"line 1: target image .*missing\.png does not exist"),
    ('\n{"output": "a.png", "target": \n', r"line 2 is not a JSON object"),
    ('["a.png", "b.png"]\n', r"line 1 is a list, not an object"),
    ("\n", "lists no edits"),
])
def test_bad_manifest_rows_are_named(tmp_path: Path, content: str, message: str):
    save_picture(tmp_path / "a.png", 4, 4)
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(EvalInputError, match=message):
        read_manifest(tmp_path / "bad.jsonl")


def test_means_are_the_arithmetic_mean_and_clip_t_needs_captions(tmp_path: Path):
    rows = []
    for index, value in enumerate((0, 51, 255)):
        save_solid(tmp_path / f"out{index}.png", 6, 4, (value, value, value))
        rows.append({"output": f"out{index}.png", "target": "black.png"})
    save_solid(tmp_path / "black.png", 3, 2, (0, 0, 0))
    pairs = read_manifest(_manifest(tmp_path, rows))
    scores = score_pairs(pairs, ("l1", "l2"))
    assert [row["l1"] for row in scores.rows] == pytest.approx([0, 0.2, 1.0], abs=1e-7)
    assert scores.means == pytest.approx({"l1": 1.2 / 3, "l2": (0 + 0.04 + 1) / 3}, abs=1e-7)
    with pytest.raises(EvalInputError, match=r"clip-t needs the target caption.*3 have none \(e\.g\. 1, 2, 3\)"):
        score_pairs(pairs, ("clip-t",), clip=object())


# ---------------------------------------------------------------- MagicBrush layout


@pytest.fixture()
def magicbrush(tmp_path: Path) -> tuple[Path, Path, dict]:
    """Session 139 has two turns (inde and iter images), session 30 one."""
    generated, truth = tmp_path / "generated", tmp_path / "gt"
    for session, turns in (("139", 2), ("30", 1)):
        save_picture(truth / session / f"{session}-input.png", 8, 8)
        for turn in range(1, turns + 1):
            save_picture(truth / session / f"{session}-output{turn}.png", 8, 8, seed=turn)
            save_picture(truth / session / f"{session}-mask{turn}.png", 8, 8)
        save_picture(generated / session / f"{session}_1.png", 16, 16)
        for turn in range(2, turns + 1):
            save_picture(generated / session / f"{session}_inde_{turn}.png", 16, 16)
            save_picture(generated / session / f"{session}_iter_{turn}.png", 16, 16)
    captions = {"139": {"139-output1.png": "one", "139-output2.png": "two"}, "30": {"30-output1.png": "single"}}
    return generated, truth, captions


def _names(pairs) -> list[tuple[str, int, str, str, str | None]]:
    return [(pair.id, pair.turn, pair.output.name, pair.target.name, pair.caption) for pair in pairs]


def test_magicbrush_single_and_multi_turn_selection(magicbrush):
    generated, truth, captions = magicbrush
    assert _names(read_magicbrush(generated, truth, "single-turn", captions)) == [
        ("139", 1, "139_1.png", "139-output1.png", "one"), ("139", 2, "139_inde_2.png", "139-output2.png", "two"),
        ("30", 1, "30_1.png", "30-output1.png", "single")]
    assert _names(read_magicbrush(generated, truth, "multi-turn")) == [
        ("139", 2, "139_iter_2.png", "139-output2.png", None), ("30", 1, "30_1.png", "30-output1.png", None)]


def test_magicbrush_layout_errors_name_what_is_missing(magicbrush):
    generated, truth, _ = magicbrush
    (generated / "139" / "139_iter_2.png").unlink()
    with pytest.raises(EvalInputError, match=r"has no 139_iter_2\.png: multi-turn compares it with 139-output2\.png"):
        read_magicbrush(generated, truth, "multi-turn")
    (generated / "139" / "139_inde_2.png").rename(generated / "139" / "139_inde_3.png")
    with pytest.raises(EvalInputError, match=r"has no 139_inde_2\.png"):
        read_magicbrush(generated, truth, "single-turn")
    (generated / "30").rename(generated / "31")
    with pytest.raises(EvalInputError, match=r"same session folders: only generated \['31'\].*\['30'\]"):
        read_magicbrush(generated, truth, "single-turn")


# ---------------------------------------------------------------- CLI


def test_cli_scores_a_magicbrush_folder_end_to_end(magicbrush, clip_dir: Path, dino_pth: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture):
    generated, truth, captions = magicbrush
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    code = main(["eval-edit", str(generated), "--gt", str(truth), "--captions", str(tmp_path / "captions.json"),
                 "--clip", str(clip_dir), "--dino", str(dino_pth), "--device", "cpu", "--json",
                 str(tmp_path / "out" / "scores.json")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert report["metrics"] == ["l1", "l2", "clip-i", "clip-t", "dino"]
    single, multi = report["settings"]["single-turn"], report["settings"]["multi-turn"]
    assert (single["count"], multi["count"]) == (3, 2)
    assert list(single["means"]) == ["l1", "l2", "clip-i", "clip-t", "clip-t_oracle", "dino"]
    assert single["means"]["dino"] == pytest.approx(sum(row["dino"] for row in single["rows"]) / 3)
    assert "single-turn (3 pairs): l1 " in capsys.readouterr().out


def test_cli_refuses_weight_metrics_without_weights(tmp_path: Path, capsys: pytest.CaptureFixture):
    save_picture(tmp_path / "a.png", 4, 4)
    manifest = _manifest(tmp_path, [{"output": "a.png", "target": "a.png"}])
    assert main(["eval-edit", str(manifest), "--metrics", "l1,clip-i"]) == 2
    assert "clip-i need --clip" in capsys.readouterr().err
    assert main(["eval-edit", str(manifest), "--metrics", "dino", "--dino", str(tmp_path / "none")]) == 2
    assert "facebook/dino-vits16" in capsys.readouterr().err
    assert main(["eval-edit", str(tmp_path), "--metrics", "l1"]) == 2
    assert "give --gt" in capsys.readouterr().err
    assert main(["eval-edit", str(manifest), "--metrics", "l1,psnr"]) == 2
    assert "unknown metrics ['psnr']" in capsys.readouterr().err


def test_cli_json_report_is_written_whole_or_not_at_all(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch):
    import llmga.files

    save_solid(tmp_path / "out.png", 4, 4, (255, 255, 255))
    save_solid(tmp_path / "gt.png", 2, 2, (0, 0, 0))
    manifest = _manifest(tmp_path, [{"output": "out.png", "target": "gt.png"}])
    report = tmp_path / "out" / "scores.json"
    assert main(["eval-edit", str(manifest), "--metrics", "l1", "--json", str(report)]) == 0
    first = json.loads(report.read_text())
    assert first["settings"]["manifest"]["means"] == {"l1": 1.0} and report.read_text().endswith("}\n")
    assert [path.name for path in report.parent.iterdir()] == ["scores.json"]  # no temporary file left beside it

    def interrupted(source, target):  # the run dies between writing the new report and putting it in place
        raise OSError("disk full")

    monkeypatch.setattr(llmga.files.os, "replace", interrupted)
    assert main(["eval-edit", str(manifest), "--metrics", "l1,l2", "--json", str(report)]) == 2
    assert "error: disk full" in capsys.readouterr().err
    assert json.loads(report.read_text()) == first  # the previous report is whole, not half replaced
    assert [path.name for path in report.parent.iterdir()] == ["scores.json"]


@pytest.mark.parametrize(("name", "content", "reader", "message"), [
    ("captions.json", '{"139": ', read_captions, r"caption file .*captions\.json is not valid JSON"),
    ("edits.json", "[{", read_manifest, r"manifest .*edits\.json is not valid JSON"),
])
def test_json_that_does_not_parse_is_named(tmp_path: Path, name: str, content: str, reader, message: str):
    (tmp_path / name).write_text(content)
    with pytest.raises(EvalInputError, match=message):
        reader(tmp_path / name)


def test_cli_subprocess_pixel_metrics(tmp_path: Path):
    save_solid(tmp_path / "out.png", 4, 4, (255, 255, 255))
    save_solid(tmp_path / "gt.png", 2, 2, (0, 0, 0))
    manifest = tmp_path / "edits.csv"
    manifest.write_text("output,target\nout.png,gt.png\n")
    result = subprocess.run([sys.executable, "-m", "llmga", "eval-edit", str(manifest), "--metrics", "l1,l2"],
                            cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "manifest (1 pairs): l1 1.0000  l2 1.0000"
