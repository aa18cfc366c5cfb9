"""Stage-2 SDXL UNet training (training/stage2_sd.py with family: sdxl) on the CPU.

The models are the fully tiny SDXL folders of fixtures.sdxl_small (real tokenizers, both text encoders, a text_time
UNet, SDXL's 8x VAE; t2i and 9-channel inpainting) and the images are 64x64 at most after the crop (8x8 latents), so
a training step takes a fraction of a second on a small CPU.

The micro-conditioning is checked against an independent re-implementation of the official `preprocess_train` +
`compute_time_ids` (torchvision's transforms, as the scripts use them), in both crop_coords variants.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import load_file
from sdxl_support import small_sdxl  # noqa: F401  (the fixture)
from torchvision import transforms
from torchvision.transforms.functional import crop as tv_crop
from training_support import fresh_accelerate, launch_two_processes, reset_accelerate, torch_threads  # noqa: F401

from llmga.prompt.clip_binding import sdxl_caption_embeddings, sdxl_long_prompt_embeddings
from llmga.sd.pipelines import inpaint, load_sd_pipeline, text_to_image
from training.common import ConfigError, load_config
from training.data.datasets import crop_training_image
from training.stage2_sd import (
    ImagePromptDataset,
    Stage2Config,
    collate,
    denoising_loss,
    load_sd_parts,
    place_frozen_parts,
    read_image_prompt_rows,
    sd_mask_maker,
    sdxl_time_ids,
    train,
    unet_conditioning,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESOLUTION = 64
LONG_PROMPT = ", ".join(["a red fox curled up in deep fresh snow under soft golden light"] * 8)  # > 75 tokens
PROMPTS = ["a red square", "a blue circle on white", LONG_PROMPT, "green stripes", "a yellow sun", "a gray cat"]
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"

one_thread = torch_threads(1)


@pytest.fixture(scope="module")
def models(small_sdxl) -> dict[str, Path]:  # noqa: F811
    return {"t2i": small_sdxl.t2i, "inpaint": small_sdxl.inpainting}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Six small pictures of varied sizes and aspect ratios (odd and even spare widths, portrait and landscape) with a
    .txt prompt each, one past 75 tokens."""
    folder = tmp_path_factory.mktemp("stage2_sdxl_images")
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (81, 64), (64, 96), (72, 72), (100, 70), (50, 35)]
    for index, ((width, height), prompt) in enumerate(zip(sizes, PROMPTS, strict=True)):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)  # every column differs: flips show
        pixels[height // 4: height // 2, :, :] = rng.integers(0, 256, 3, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
        (folder / f"{index}.txt").write_text(prompt)
    return folder


def make_config(model: Path, data: Path, output: Path, **overrides) -> Stage2Config:
    settings = dict(family="sdxl", resolution=RESOLUTION, train_batch_size=2, max_train_steps=6, learning_rate=1e-3,
                    use_ema=False, mixed_precision="no", gradient_checkpointing=False, allow_tf32=False,
                    checkpointing_steps=1000, checkpoints_total_limit=None, resume_from_checkpoint=None,
                    caption_dropout=0.0)
    settings.update(overrides)
    return Stage2Config(pretrained_model=str(model), train_data=str(data), output_dir=str(output), **settings)


def fixed_loss(folder: Path, config: Stage2Config) -> float:
    """The loss of `folder`'s UNet on the whole dataset, averaged over fixed seeds of noise and timesteps."""
    parts = load_sd_parts(folder, config.task, family="sdxl")
    make_mask = sd_mask_maker(config.mask_mix) if config.task == "inpaint" else None
    dataset = ImagePromptDataset(read_image_prompt_rows(config.train_data), config, make_mask)
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        return float(np.mean([denoising_loss(parts, parts.unet, batch, config, torch.Generator().manual_seed(s))
                              .item() for s in range(3)]))


@pytest.fixture(scope="module")
def trained(models, image_folder, tmp_path_factory):
    """task -> (config, TrainResult) after a few steps, one run per task for the module; inpainting under bf16 mixed
    precision (CPU autocast) with the VAE in float32, as the official runs."""
    runs = {}
    for task, model in models.items():
        reset_accelerate()
        config = make_config(model, image_folder, tmp_path_factory.mktemp(f"stage2_sdxl_{task}"), task=task,
                             caption_dropout=0.05 if task == "inpaint" else 0.0,
                             mixed_precision="bf16" if task == "inpaint" else "no")
        runs[task] = (config, train(config))
    reset_accelerate()
    return runs


@pytest.mark.parametrize("task", ["t2i", "inpaint"])
def test_training_lowers_the_loss_on_a_fixed_dataset(trained, task):
    config, result = trained[task]
    assert result.global_step == config.max_train_steps and len(result.losses) == config.max_train_steps
    before, after = fixed_loss(Path(config.pretrained_model), config), fixed_loss(result.output_dir, config)
    assert after < 0.95 * before, (before, after)


# --- micro-conditioning ------------------------------------------------------------------------------------------


def official_preprocess(image: Image.Image, resolution: int, flip: bool, variant: str,
                        crop_top_left: tuple[int, int] | None = None) -> tuple[torch.Tensor, list[int]]:
    """The official `preprocess_train` of one image with the flip decided, then `compute_time_ids`: (pixels [3, R, R]
    in [-1, 1], add_time_ids as a list). variant "llmga": LLMGA's dataset_*_sdxl.py (resize, crop, then flip with
    `x1 = image.width - x1`); "diffusers": diffusers' train_text_to_image_sdxl.py today (resize, flip, then crop).
    crop_top_left None: --center_crop; else a RandomCrop's (y1, x1) of the image it crops."""
    resize = transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR)
    center = transforms.CenterCrop(resolution)
    mirror = transforms.RandomHorizontalFlip(p=1.0)
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    original_size = (image.height, image.width)
    image = resize(image)
    if flip and variant == "diffusers":
        image = mirror(image)
    if crop_top_left is None:
        y1 = max(0, int(round((image.height - resolution) / 2.0)))
        x1 = max(0, int(round((image.width - resolution) / 2.0)))
        image = center(image)
    else:
        y1, x1 = crop_top_left
        image = tv_crop(image, y1, x1, resolution, resolution)
    if flip and variant == "llmga":
        x1 = image.width - x1
        image = mirror(image)
    target_size = (resolution, resolution)
    return to_tensor(image), list(original_size + (y1, x1) + target_size)


@pytest.mark.parametrize("variant", ["llmga", "diffusers"])
@pytest.mark.parametrize("center_crop", [True, False])
def test_crop_and_time_ids_are_the_official_scripts(variant, center_crop):
    """A 103x67 picture at resolution 48 (resized to 73x48: 25 spare columns, so a centre crop of the mirrored image
    is not the mirrored centre crop): over seeds that flip and seeds that do not, the pixels and the time ids equal
    the official preprocess_train + compute_time_ids for the same crop."""
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 256, (67, 103, 3), dtype=np.uint8))
    flips = set()
    for seed in range(8):
        cropped = crop_training_image(picture, 48, center_crop=center_crop, flip=True,
                                      rng=np.random.default_rng(seed), crop_coords=variant)
        flips.add(cropped.flipped)
        top, left = cropped.crop_top_left
        given = None
        if center_crop:  # left round(25 / 2) = 12; LLMGA's flipped sample says 48 - 12
            assert cropped.crop_top_left == (0, 36 if cropped.flipped and variant == "llmga" else 12)
        else:  # the official RandomCrop offsets of this crop, in the image it cropped
            given = (top, 48 - left if cropped.flipped and variant == "llmga" else left)
        pixels, time_ids = official_preprocess(picture, 48, cropped.flipped, variant, given)
        assert torch.allclose(cropped.pixels, pixels, atol=1e-6)
        ids = sdxl_time_ids(torch.tensor([cropped.original_size]), torch.tensor([cropped.crop_top_left]), 48)
        assert ids.tolist() == [time_ids] and time_ids[:2] == [67, 103]
    assert flips == {True, False}
    llmga, diffusers = (official_preprocess(picture, 48, True, v)[0] for v in ("llmga", "diffusers"))
    assert not torch.allclose(llmga, diffusers)  # the variants tell apart


def test_a_batch_carries_each_samples_size_conditioning(models, image_folder, tmp_path):
    """The dataset's items through collate and unet_conditioning: time_ids [B, 6] in the text encoders' dtype, each row
    the official compute_time_ids of that image's original size and (LLMGA) centre-crop offsets."""
    config = make_config(models["t2i"], image_folder, tmp_path)
    dataset = ImagePromptDataset(read_image_prompt_rows(config.train_data), config, None)
    items = [dataset[i] for i in range(len(dataset))]
    parts = load_sd_parts(config.pretrained_model, "t2i", family="sdxl")
    _, added = unet_conditioning(parts, collate(items), config)
    assert added["time_ids"].shape == (len(items), 6) and added["time_ids"].dtype == parts.text_encoder.dtype
    for row, (item, (path, _)) in enumerate(zip(items, dataset.rows, strict=True)):
        picture = Image.open(path).convert("RGB")
        expected = [official_preprocess(picture, RESOLUTION, flip, "llmga") for flip in (False, True)]
        match = [torch.allclose(item["pixel_values"], pixels, atol=1e-6) for pixels, _ in expected]
        assert any(match), path
        assert added["time_ids"][row].tolist() == expected[match.index(True)][1]


def test_captions_are_encoded_as_the_official_sdxl_training_batch(models, image_folder, tmp_path):
    """unet_conditioning's context and pooled embedding are encode_sdxl_prompt_batch's (through the transformers
    binding); a 300-token caption gives k = 4, L = 302, which the batch's short and empty captions share."""
    config = make_config(models["t2i"], image_folder, tmp_path)
    parts = load_sd_parts(config.pretrained_model, "t2i", family="sdxl")
    caption = " ".join(["cat"] * 300)
    assert len(parts.tokenizer(caption, add_special_tokens=False)["input_ids"]) == 300
    assert len(parts.tokenizer_2(caption, add_special_tokens=False)["input_ids"]) == 300
    captions = [caption, "", "a red square"]
    batch = {"prompt": captions, "original_size": torch.tensor([[64, 64]] * 3), "crop_top_left": torch.zeros(3, 2)}
    context, added = unet_conditioning(parts, batch, config)
    expected = sdxl_caption_embeddings(parts.text_encoder, parts.text_encoder_2, parts.tokenizer, parts.tokenizer_2,
                                       captions)
    width = parts.text_encoder.config.hidden_size + parts.text_encoder_2.config.hidden_size
    assert context.shape == (3, 302, width) and expected.chunks == 4
    assert torch.equal(context, expected.embeddings) and torch.equal(added["text_embeds"], expected.pooled)
    assert added["text_embeds"].shape == (3, parts.text_encoder_2.config.projection_dim)


def test_mixed_precision_keeps_the_sdxl_vae_in_float32(models):
    parts = load_sd_parts(models["t2i"], "t2i", family="sdxl")
    place_frozen_parts(parts, torch.device("cpu"), torch.bfloat16)
    assert parts.vae.dtype == torch.float32
    assert parts.text_encoder.dtype == parts.text_encoder_2.dtype == torch.bfloat16
    assert not any(p.requires_grad for m in (parts.vae, parts.text_encoder, parts.text_encoder_2)
                   for p in m.parameters())


# --- the written folder ------------------------------------------------------------------------------------------


def test_the_written_t2i_folder_loads_and_generates_through_the_pack_and_diffusers(trained):
    config, result = trained["t2i"]
    base = Path(config.pretrained_model)
    for part in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "text_encoder_2/model.safetensors", "tokenizer_2/vocab.json", "scheduler/scheduler_config.json",
                 "model_index.json"):  # only the UNet changed
        assert (result.output_dir / part).read_bytes() == (base / part).read_bytes(), part
    trained_unet, base_unet = load_file(result.output_dir / UNET_WEIGHTS), load_file(base / UNET_WEIGHTS)
    assert trained_unet.keys() == base_unet.keys() and any(not torch.equal(trained_unet[k], base_unet[k])
                                                           for k in base_unet)
    pipe = StableDiffusionXLPipeline.from_pretrained(result.output_dir, torch_dtype=torch.float32)
    encoded = sdxl_long_prompt_embeddings(pipe.text_encoder, pipe.text_encoder_2, pipe.tokenizer, pipe.tokenizer_2,
                                          LONG_PROMPT)
    image = pipe(prompt_embeds=encoded.embeddings, pooled_prompt_embeds=encoded.pooled,
                 negative_prompt_embeds=encoded.negative_embeddings,
                 negative_pooled_prompt_embeds=encoded.negative_pooled, num_inference_steps=2, guidance_scale=5.0,
                 width=RESOLUTION, height=RESOLUTION, generator=torch.Generator().manual_seed(0)).images[0]
    assert encoded.length == 152
    assert image.size == (RESOLUTION, RESOLUTION) and np.asarray(image).std() > 0
    pipe = load_sd_pipeline(result.output_dir, device="cpu", dtype="fp32")  # what `llmga generate --sd` runs
    assert isinstance(pipe, StableDiffusionXLPipeline)
    image = text_to_image(pipe, LONG_PROMPT, steps=2, cfg=5.0, seed=0, width=RESOLUTION, height=RESOLUTION)[0]
    assert image.size == (RESOLUTION, RESOLUTION) and np.asarray(image).std() > 0


def test_the_written_inpainting_folder_has_a_9_channel_unet_and_inpaints(trained):
    _, result = trained["inpaint"]
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(result.output_dir, torch_dtype=torch.float32)
    assert pipe.unet.config.in_channels == 9
    picture = Image.new("RGB", (RESOLUTION, RESOLUTION), (200, 30, 30))
    mask = Image.new("L", (RESOLUTION, RESOLUTION), 0)
    mask.paste(255, (16, 16, 48, 48))
    out = pipe("a blue circle", image=picture, mask_image=mask, num_inference_steps=2, strength=0.8,
               width=RESOLUTION, height=RESOLUTION, generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == picture.size and np.isfinite(np.asarray(out, np.float32)).all()
    pipe = load_sd_pipeline(result.output_dir, inpainting=True, device="cpu", dtype="fp32")  # `llmga inpaint --sd`
    out = inpaint(pipe, picture, np.asarray(mask, np.float32) / 255, "a blue circle", steps=2, cfg=5.0, seed=0,
                  size=(RESOLUTION, RESOLUTION), strength=0.8)[0]
    assert out.size == picture.size and np.asarray(out)[0, 0].tolist() == [200, 30, 30]


def test_training_logs_every_step_to_jsonl(trained):
    config, result = trained["inpaint"]
    records = [json.loads(line) for line in (result.output_dir / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train_loss" in r]
    assert records[0]["config"]["family"] == "sdxl" and records[0]["config"]["task"] == "inpaint"
    assert [r["train_loss"] for r in steps] == pytest.approx(result.losses)


# --- resume and two processes ------------------------------------------------------------------------------------


def test_resume_continues_at_the_same_step_with_identical_state(models, image_folder, tmp_path):
    """An uninterrupted 5-step run (gradient accumulation 2, 3 batches of 2 per epoch, a checkpoint every step, at
    most 2 kept) against one resumed from its step-4 checkpoint, with EMA on, random crops and flips, inpainting masks
    and caption dropout drawn: the resumed step gives the same loss and the same final (EMA) weights."""
    config = make_config(models["inpaint"], image_folder, tmp_path / "full", task="inpaint", max_train_steps=5,
                         train_batch_size=1, gradient_accumulation_steps=2, checkpointing_steps=1,
                         checkpoints_total_limit=2, use_ema=True, caption_dropout=0.5, center_crop=False)
    full = train(config)
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    reset_accelerate()
    shutil.copytree(tmp_path / "full" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    resumed = train(replace(config, output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest"))
    assert resumed.global_step == 5 and resumed.losses == full.losses[4:]
    full_sd, resumed_sd = load_file(tmp_path / "full" / UNET_WEIGHTS), load_file(tmp_path / "resumed" / UNET_WEIGHTS)
    assert full_sd.keys() == resumed_sd.keys()
    assert all(torch.equal(full_sd[key], resumed_sd[key]) for key in full_sd)


# Runs stage2_sd's command line and saves what each process holds at the end: accelerator.get_state_dict of the
# trained UNet, which every process calls after the EMA weights are copied in.
RECORD_EACH_PROCESS = """
import sys
from accelerate import Accelerator
from safetensors.torch import save_file
from training import stage2_sd

get_state_dict = Accelerator.get_state_dict


def recording(self, model, unwrap=True):
    state = get_state_dict(self, model, unwrap)
    save_file({k: v.contiguous() for k, v in state.items()}, f"{sys.argv[1]}/rank{self.process_index}.safetensors")
    return state


Accelerator.get_state_dict = recording
sys.exit(stage2_sd.main(sys.argv[2:]))
"""


@pytest.mark.timeout(240)
def test_accelerate_launch_trains_on_two_processes_with_identical_weights(models, image_folder, tmp_path):
    config = {"pretrained_model": str(models["inpaint"]), "train_data": str(image_folder), "family": "sdxl",
              "task": "inpaint", "output_dir": str(tmp_path / "out"), "resolution": RESOLUTION,
              "train_batch_size": 1, "gradient_accumulation_steps": 2, "max_train_steps": 2, "learning_rate": 1e-3,
              "mixed_precision": "no", "gradient_checkpointing": True, "allow_tf32": False, "checkpointing_steps": 2,
              "caption_dropout": 0.05}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "record.py").write_text(RECORD_EACH_PROCESS)
    run = launch_two_processes([str(tmp_path / "record.py"), str(tmp_path), "--config", str(tmp_path / "config.json")],
                               tmp_path, 220)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["samples"] == 4 for r in steps)
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    written, base = load_file(tmp_path / "out" / UNET_WEIGHTS), load_file(models["inpaint"] / UNET_WEIGHTS)
    assert rank0.keys() == rank1.keys() == written.keys() == base.keys()
    assert all(torch.equal(rank0[k], rank1[k]) and torch.equal(rank0[k], written[k]) for k in rank0)
    assert any(not torch.equal(rank0[k], base[k]) for k in base)


# --- configs and bad input ---------------------------------------------------------------------------------------


def test_the_shipped_sdxl_configs_carry_the_official_hyper_parameters():
    for name, task, dropout in (("stage2_sdxl_t2i.yaml", "t2i", 0.0), ("stage2_sdxl_inpaint.yaml", "inpaint", 0.05)):
        c = load_config(REPO_ROOT / "training" / "configs" / name, Stage2Config)
        assert (c.family, c.task, c.caption_dropout, c.resolution, c.center_crop, c.random_flip) == (
            "sdxl", task, dropout, 1024, True, True)
        assert (c.train_batch_size, c.gradient_accumulation_steps, c.max_train_steps) == (4, 4, 50000)
        assert (c.learning_rate, c.lr_scheduler, c.lr_warmup_steps, c.max_grad_norm) == (
            2e-5, "constant_with_warmup", 0, 1.0)
        assert (c.adam_beta1, c.adam_beta2, c.adam_weight_decay, c.adam_epsilon) == (0.9, 0.999, 1e-2, 1e-8)
        assert (c.use_ema, c.ema_decay, c.snr_gamma, c.noise_offset, c.crop_coords) == (True, 0.9999, None, 0.0,
                                                                                        "llmga")
        assert (c.mixed_precision, c.gradient_checkpointing, c.checkpointing_steps, c.checkpoints_total_limit) == (
            "bf16", True, 2000, 2)


def sd15_configs(folder: Path) -> Path:
    """An SD1.5 diffusers folder's configs and part folders, without weights: what the family check reads (the
    trainer refuses the family before it reads any weights)."""
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (folder / part).mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "PNDMScheduler"}))
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel",
                                                             "cross_attention_dim": 768, "in_channels": 4}))
    return folder


def test_a_base_model_of_the_other_family_is_named_with_the_key_to_set(models, image_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"is an SDXL text-to-image model \(4-channel UNet\), but family is sd15: "
                       r"set family: sdxl \(as training/configs/stage2_sdxl_t2i.yaml does\)"):
        train(make_config(models["t2i"], image_folder, tmp_path / "a", family="sd15"))
    reset_accelerate()
    with pytest.raises(ConfigError, match="is an SD1.5 text-to-image model .*, but family is sdxl: set family: sd15"):
        train(make_config(sd15_configs(tmp_path / "sd15"), image_folder, tmp_path / "b"))


def test_a_unet_of_the_other_task_is_refused(models, image_folder, tmp_path):
    with pytest.raises(ConfigError, match="9-channel UNet, which trains task 'inpaint'"):
        train(make_config(models["inpaint"], image_folder, tmp_path, task="t2i"))


def test_a_folder_without_the_second_tokenizer_is_named(models, image_folder, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(models["t2i"], base)
    shutil.rmtree(base / "tokenizer_2")
    with pytest.raises(ConfigError, match="lacks tokenizer_2: a diffusers SDXL folder holds"):
        train(make_config(base, image_folder, tmp_path / "out"))


def test_crop_coords_is_refused_for_sd15(tmp_path):
    with pytest.raises(ValueError, match="crop_coords is SDXL's size conditioning"):
        Stage2Config(pretrained_model="m", train_data="d", output_dir=str(tmp_path), crop_coords="diffusers")
