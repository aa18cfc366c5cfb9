"""Stage-2 SD1.5 UNet training (training/stage2_sd.py) on the CPU.

The models are micro SD1.5 diffusers folders (real tokenizer, VAE / CLIP / UNet shrunk, still SD1.5's 768-wide
context) written in the released layout, and the images are 32x32 (4x4 latents), so that a training step takes a
fraction of a second on a small CPU.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from fixtures.sd15 import _Shared as SharedParts
from fixtures.sd15 import _write_pipeline as write_pipeline
from PIL import Image
from safetensors.torch import load_file
from training_support import fresh_accelerate, launch_two_processes, reset_accelerate, torch_threads  # noqa: F401
from transformers import CLIPTextConfig, CLIPTextModel

from llmga.sd.pipelines import inpaint, load_sd15_pipeline, text_to_image
from training.common import ConfigError, load_config
from training.data.datasets import DataError
from training.stage2_sd import (
    ImagePromptDataset,
    Stage2Config,
    collate,
    denoising_loss,
    load_sd_parts,
    main,
    read_image_prompt_rows,
    sd_mask_maker,
    train,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESOLUTION = 32
LONG_PROMPT = ", ".join(["a red fox curled up in deep fresh snow under soft golden light"] * 8)  # > 75 tokens
PROMPTS = ["a red square", "a blue circle on white", LONG_PROMPT, "green stripes", "a yellow sun", "a gray cat"]


one_thread = torch_threads(1)


def _micro_unet(channels: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(sample_size=RESOLUTION // 8, in_channels=channels, out_channels=4,
                                block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=768,
                                attention_head_dim=8, norm_num_groups=16)


@pytest.fixture(scope="module")
def micro_models(clip_tokenizer_dir, tmp_path_factory) -> dict[str, Path]:
    """task -> a micro SD1.5 diffusers folder in the released layout (tests/fixtures/sd15.py's writer): the real
    SD1.5 tokenizer and scheduler, a 4-level VAE of width 32, a one-layer 768-wide CLIP text encoder and a UNet of
    widths 32/64 with 4 or 9 input channels."""
    root = tmp_path_factory.mktemp("micro_sd15")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4,
                            sample_size=RESOLUTION)
        config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=256, num_hidden_layers=1,
                                num_attention_heads=12, max_position_embeddings=77, projection_dim=768)
        config.architectures, config.dtype = ["CLIPTextModel"], torch.float32
        text_encoder = CLIPTextModel(config)
        unets = {"t2i": _micro_unet(4), "inpaint": _micro_unet(9)}
    half = {name: {k: v.half() for k, v in model.state_dict().items()} for name, model in
            (("vae", vae), ("text_encoder", text_encoder))}  # stored in float16, as the released folders
    shared = SharedParts(vae, half["vae"], text_encoder, half["text_encoder"], clip_tokenizer_dir)
    for task, pipeline_class in (("t2i", "StableDiffusionPipeline"), ("inpaint", "StableDiffusionInpaintPipeline")):
        write_pipeline(root / task, pipeline_class, shared, unets[task])
    return {task: root / task for task in unets}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Six small pictures of varied sizes (crop and resize paths) with a .txt prompt each, one past 75 tokens."""
    folder = tmp_path_factory.mktemp("stage2_images")
    rng = np.random.default_rng(0)
    sizes = [(32, 32), (40, 32), (32, 48), (36, 36), (32, 32), (50, 35)]
    for index, ((width, height), prompt) in enumerate(zip(sizes, PROMPTS, strict=True)):
        pixels = np.zeros((height, width, 3), np.uint8)
        pixels[...] = rng.integers(0, 256, 3, dtype=np.uint8)
        pixels[height // 4: height // 2, :, :] = rng.integers(0, 256, 3, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
        (folder / f"{index}.txt").write_text(prompt)
    return folder


def make_config(model: Path, data: Path, output: Path, **overrides) -> Stage2Config:
    settings = dict(resolution=RESOLUTION, train_batch_size=2, max_train_steps=6, learning_rate=1e-3,
                    use_ema=False, mixed_precision="no", gradient_checkpointing=False, allow_tf32=False,
                    checkpointing_steps=1000, checkpoints_total_limit=None, resume_from_checkpoint=None,
                    caption_dropout=0.0)
    settings.update(overrides)
    return Stage2Config(pretrained_model=str(model), train_data=str(data), output_dir=str(output), **settings)


def fixed_loss(folder: Path, config: Stage2Config) -> float:
    """The loss of `folder`'s UNet on the whole dataset, averaged over fixed seeds of noise and timesteps."""
    parts = load_sd_parts(folder, config.task)
    make_mask = sd_mask_maker(config.mask_mix) if config.task == "inpaint" else None
    dataset = ImagePromptDataset(read_image_prompt_rows(config.train_data), config, make_mask)
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        return float(np.mean([denoising_loss(parts, parts.unet, batch, config, torch.Generator().manual_seed(s))
                              .item() for s in range(2)]))


@pytest.fixture(scope="module")
def trained(micro_models, image_folder, tmp_path_factory):
    """task -> (config, TrainResult) after a few steps, one run per task for the module."""
    runs = {}
    for task, model in micro_models.items():
        reset_accelerate()
        config = make_config(model, image_folder, tmp_path_factory.mktemp(f"stage2_{task}"), task=task,
                             caption_dropout=0.05 if task == "inpaint" else 0.0)
        runs[task] = (config, train(config))
    reset_accelerate()
    return runs


@pytest.mark.parametrize("task", ["t2i", "inpaint"])
def test_training_lowers_the_loss_on_a_fixed_dataset(trained, task):
    config, result = trained[task]
    assert result.global_step == config.max_train_steps and len(result.losses) == config.max_train_steps
    before, after = fixed_loss(Path(config.pretrained_model), config), fixed_loss(result.output_dir, config)
    assert after < 0.95 * before, (before, after)


def test_the_written_t2i_folder_loads_and_generates(trained):
    config, result = trained["t2i"]
    pipe = load_sd15_pipeline(result.output_dir, device="cpu", dtype="fp32")
    image = text_to_image(pipe, LONG_PROMPT, steps=2, cfg=7.5, seed=0, width=RESOLUTION, height=RESOLUTION)[0]
    assert image.size == (RESOLUTION, RESOLUTION) and np.isfinite(np.asarray(image, np.float32)).all()
    # Only the UNet changed: the frozen parts are the base model's files.
    base = Path(config.pretrained_model)
    for part in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "tokenizer/vocab.json"):
        assert (result.output_dir / part).read_bytes() == (base / part).read_bytes()


def test_the_written_inpainting_folder_loads_with_a_9_channel_unet_and_inpaints(trained):
    _, result = trained["inpaint"]
    pipe = load_sd15_pipeline(result.output_dir, device="cpu", dtype="fp32")
    assert pipe.unet.config.in_channels == 9
    picture = Image.new("RGB", (RESOLUTION, RESOLUTION), (200, 30, 30))
    mask = np.zeros((RESOLUTION, RESOLUTION), np.float32)
    mask[16:48, 16:48] = 1
    out = inpaint(pipe, picture, mask, "a blue circle", steps=2, cfg=7.5, seed=0)[0]
    assert out.size == picture.size and np.asarray(out)[0, 0].tolist() == [200, 30, 30]


def test_training_logs_every_step_to_jsonl(trained):
    config, result = trained["t2i"]
    records = [json.loads(line) for line in (result.output_dir / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train_loss" in r]
    assert records[0]["config"]["task"] == "t2i"
    assert [r["step"] for r in steps] == list(range(1, config.max_train_steps + 1))
    assert [r["train_loss"] for r in steps] == pytest.approx(result.losses)


def test_resume_continues_at_the_same_step_with_identical_state(micro_models, image_folder, tmp_path):
    """An uninterrupted 5-step run (3 batches per epoch, a checkpoint every step, at most 2 kept) against one resumed
    from its step-4 checkpoint, mid-epoch, with EMA on and inpainting masks and caption dropout drawn: the resumed
    step gives the same loss and the same final (EMA) weights."""
    config = make_config(micro_models["inpaint"], image_folder, tmp_path / "full", task="inpaint", max_train_steps=5,
                         checkpointing_steps=1, checkpoints_total_limit=2, use_ema=True, caption_dropout=0.5)
    full = train(config)
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    reset_accelerate()
    shutil.copytree(tmp_path / "full" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    resumed = train(replace(config, output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest"))
    assert resumed.global_step == 5 and resumed.losses == full.losses[4:]
    weights = "unet/diffusion_pytorch_model.safetensors"
    full_sd, resumed_sd = load_file(tmp_path / "full" / weights), load_file(tmp_path / "resumed" / weights)
    assert full_sd.keys() == resumed_sd.keys()
    assert all(torch.equal(full_sd[key], resumed_sd[key]) for key in full_sd)


@pytest.mark.timeout(240)
def test_accelerate_launch_runs_two_processes_on_the_cpu(micro_models, image_folder, tmp_path):
    config = {"pretrained_model": str(micro_models["t2i"]), "train_data": str(image_folder),
              "output_dir": str(tmp_path / "out"), "resolution": RESOLUTION, "train_batch_size": 1,
              "max_train_steps": 2, "mixed_precision": "no", "gradient_checkpointing": True, "allow_tf32": False,
              "checkpointing_steps": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    run = launch_two_processes(["-m", "training.stage2_sd", "--config", str(tmp_path / "config.json")], tmp_path, 220)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["samples"] == 2 for r in steps)
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    assert load_sd15_pipeline(tmp_path / "out", device="cpu", dtype="fp32").unet.config.in_channels == 4


# --- bad configs and data -------------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ('{"pretrained_model": "m", "train_data": "d", "output_dir": "o", "learning_rat": 1e-4}',
     "unknown key learning_rat; valid keys: pretrained_model, train_data, output_dir"),
    ('{"pretrained_model": "m", "output_dir": "o"}', "missing required key train_data"),
    ('{"pretrained_model": "m", "train_data": "d", "output_dir": "o", "train_batch_size": "big"}',
     "train_batch_size must be int, got 'big'"),
    ('{"pretrained_model": "m", "train_data": "d", "output_dir": "o", "task": "edit"}',
     "task must be 't2i' or 'inpaint', got 'edit'"),
    ('{"pretrained_model": "m", "train_data": "d", "output_dir": "o", "resolution": 500}',
     "resolution must be a multiple of 8"),
    ('{"pretrained_model": "m", "train_data": "d", "output_dir": "o", "mask_mix": "lama"}',
     "mask_mix 'lama' is not one of"),
    ("[1, 2]", "must hold a mapping"),
])
def test_a_bad_config_file_names_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(write(tmp_path / "c.json", text), Stage2Config)


def test_yaml_configs_read_floats_written_without_a_dot_and_the_shipped_ones_load():
    config = load_config(REPO_ROOT / "training" / "configs" / "stage2_inpaint.yaml", Stage2Config,
                         {"learning_rate": "1e-5"})
    assert config.task == "inpaint" and config.learning_rate == 1e-5 and config.caption_dropout == 0.05
    t2i = load_config(REPO_ROOT / "training" / "configs" / "stage2_t2i.yaml", Stage2Config)
    assert (t2i.train_batch_size, t2i.learning_rate, t2i.lr_warmup_steps, t2i.use_ema) == (32, 2e-5, 0, True)


def test_the_cli_exits_with_the_message(tmp_path, capsys):
    assert main(["--config", str(write(tmp_path / "c.json", '{"nope": 1}'))]) == 2
    assert re.search("^error: .*unknown key", capsys.readouterr().err, re.MULTILINE)


def test_a_unet_of_the_other_task_is_refused(micro_models, image_folder, tmp_path):
    config = make_config(micro_models["inpaint"], image_folder, tmp_path, task="t2i")
    with pytest.raises(ConfigError, match="9-channel UNet, which trains task 'inpaint'"):
        train(config)


def test_a_base_model_whose_weights_do_not_fit_its_config_is_refused_before_loading(micro_models, image_folder,
                                                                                     tmp_path):
    base = tmp_path / "base"
    shutil.copytree(micro_models["t2i"], base)
    config_file = base / "vae" / "config.json"
    vae = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**vae, "latent_channels": vae["latent_channels"] * 2}))
    with pytest.raises(ConfigError, match="pretrained_model: .*vae.* does not hold the weights .*vae/config.json"):
        train(make_config(base, image_folder, tmp_path))


@pytest.mark.parametrize(("layout", "message"), [
    ("missing", "file not found"),
    ("no_caption", "no caption file a.txt"),
    ("bad_line", "record 1 has no 'caption' field"),
    ("missing_image", "1 image\\(s\\) not found"),
    ("t2i_json_without_images", "no records with an image"),
])
def test_missing_or_broken_data_is_reported(tmp_path, layout, message):
    source = tmp_path / "data"
    if layout == "no_caption":
        source.mkdir()
        Image.new("RGB", (8, 8)).save(source / "a.png")
    elif layout == "bad_line":
        source = write(tmp_path / "d.jsonl", '{"image": "a.png"}\n')
    elif layout == "missing_image":
        source = write(tmp_path / "d.jsonl", '{"image": "a.png", "caption": "x"}\n')
    elif layout == "t2i_json_without_images":
        source = write(tmp_path / "train.json", '[{"ori_caption": "a cat", "caption": "a fluffy gray cat"}]')
    with pytest.raises(DataError, match=message):
        read_image_prompt_rows(source)


def test_the_released_t2i_json_trains_on_its_detailed_captions(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "cat.png")
    source = write(tmp_path / "train.json", json.dumps([
        {"ori_caption": "a cat", "caption": "a fluffy gray cat on a sofa", "image": "cat.png"},
        {"ori_caption": "a dog", "caption": "a dog running on a beach"}]))
    assert read_image_prompt_rows(source, tmp_path) == [(tmp_path / "cat.png", "a fluffy gray cat on a sofa")]
