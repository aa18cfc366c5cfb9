r"""Stage 2 of LLMGA: fine-tune the UNet of an SD1.5 or SDXL diffusers folder on images and long (MLLM-style) prompts.

    accelerate launch --config_file training/configs/accelerate/multi_gpu.yaml \
        -m training.stage2_sd --config training/configs/stage2_t2i.yaml
    accelerate launch -m training.stage2_sd --config training/configs/stage2_sdxl_inpaint.yaml
    python -m training.stage2_sd --config training/configs/stage2_inpaint.yaml --set max_train_steps=100

What it reproduces (llmga/diffusers/train_text_to_image.py and train_text_to_image_inpaint.py, run by
scripts/train_llmga_s2_sd15_{t2i,inpaint}.sh):
- only the UNet trains (VAE and CLIP text encoder frozen, run in the mixed-precision dtype); AdamW, constant lr
  after warm-up, gradient clipping, diffusers `EMAModel` (its saved weights are the EMA ones), epsilon-prediction
  MSE on the scheduler's DDPM noise (`snr_gamma` / `noise_offset` available, off as in the official runs);
- prompts encoded with the "llmga" long-prompt encoding (`llmga.prompt.long_prompt`: up to 4 x 75 tokens, interior
  BOS/EOS dropped, k chunks set by the batch's longest prompt), inside the training step as the official code does;
- images resized (bilinear, shorter side) to `resolution`, center-cropped, randomly flipped, scaled to [-1, 1];
- inpainting: a 9-channel UNet input `cat([noisy latents, mask at latent size (nearest), masked-image latents])`,
  mask 1 = hole, `masked_image = image * (1 - mask)`, masks of the official mix (training/data/masks.py, with its
  25% all-ones masks), 5% empty prompts;
- the result is the base folder with the new `unet/` (what `load_sd15_pipeline` and `LLMGA Load SD1.5` read).

SDXL (`family: sdxl`; train_text_to_image_sdxl.py and train_text_to_image_sdxl_inpainting.py, run by
scripts/train_llmga_s2_sdxl_{t2i,inpaint}.sh), the same but:
- captions encoded by both text encoders as the official SDXL training does (`llmga.prompt.long_prompt_xl.
  encode_sdxl_prompt_batch`: k shared by the batch, hidden_states[-2] of both on channels, [B, 75k + 2, 2048], the
  pooled embedding of encoder 2's last window; an empty caption is encoded as text);
- the UNet's size micro-conditioning `time_ids` = (original height, width, crop top, left, resolution, resolution)
  per sample, in the mixed-precision dtype; `crop_coords` says how a flipped sample's crop offset is taken
  (training/data/datasets.py `crop_training_image`; the default is LLMGA's);
- the VAE runs in float32 (the official script keeps SDXL's VAE, which overflows in float16, in float32 always);
- inpainting: the same masks, masked image and 9-channel input as SD1.5 (dataset_inpainting_sdxl.py), 5% empty
  captions; text-to-image drops none (dataset_text2img_sdxl.py).

Deviations: images are converted to RGB (the official SDXL datasets paste transparent ones on white);
`center_crop: false` gives a random crop (the official datasets always center-crop); besides the released
T2I/train.json the data may be a user's captioned images (training/data/datasets.py; the official SDXL runs also
swapped in LAION's short prompt for 5% of the samples, which this data lacks); random draws come from per-sample /
per-step generators so resuming is exact; the written folder keeps the base's frozen parts as they are (the official
SDXL scripts save them in the training dtype).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator, DistributedType
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import SchedulerType, get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from torch.utils.data import DataLoader
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from llmga.devices import mixed_precision_dtype
from llmga.errors import one_line
from llmga.prompt.clip_binding import TransformersCLIP, sdxl_caption_embeddings
from llmga.prompt.long_prompt import LLMGA_MAX_CHUNKS, encode_prompt_group
from llmga.sd.loading import FAMILIES, FULL_PRECISION_WEIGHTS, SD15LoadError, check_sd15_weights, write_sd_folder
from llmga.sd.pipelines import INPAINT_CHANNELS, T2I_CHANNELS, SDPipelineError, read_sd_model

from .common import ConfigError, EpochDataset, EpochShuffleSampler, frozen_model_context, run_cli, sample_rng
from .data.datasets import DataError, crop_training_image, open_training_image, read_t2i, read_user_captions
from .data.masks import MIXES, SD_INPAINT_MASKS, draw_mask
from .loop import MicroStep, TrainingRun, TrainResult

MaskFn = Callable[[int, int, np.random.Generator], np.ndarray]
TASK_CHANNELS = {"t2i": T2I_CHANNELS, "inpaint": INPAINT_CHANNELS}
# A config of each family, named when the base model is of the other.
FAMILY_CONFIGS = {"sd15": "training/configs/stage2_t2i.yaml", "sdxl": "training/configs/stage2_sdxl_t2i.yaml"}


@dataclass
class Stage2Config:
    """Stage-2 settings; defaults are scripts/train_llmga_s2_sd15_t2i.sh (and diffusers' defaults it relies on);
    training/configs/stage2_sdxl_*.yaml hold the SDXL scripts' values."""

    pretrained_model: str  # a diffusers folder of `family`: 4-channel UNet for t2i, 9-channel for inpaint
    train_data: str  # T2I/train.json (released), a .jsonl of {"image", "caption"}, or a folder of image + .txt
    output_dir: str  # checkpoints, logs, and the trained diffusers folder
    image_root: str | None = None  # where T2I/train.json's image paths start (the official ./data/imgs)
    task: Literal["t2i", "inpaint"] = "t2i"
    family: Literal["sd15", "sdxl"] = "sd15"  # what pretrained_model is: SD1.5 (one CLIP) or SDXL (two, micro-cond.)
    resolution: int = 512
    center_crop: bool = True  # the official datasets always center-crop; false: random crop
    random_flip: bool = True
    crop_coords: Literal["llmga", "diffusers"] = "llmga"  # SDXL: a flipped sample's crop_top_left (crop_training_image)
    train_batch_size: int = 32  # per process
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 50000
    learning_rate: float = 2e-5
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 0  # the script passes 1000 then 0; the last one wins
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    use_ema: bool = True
    ema_decay: float = 0.9999  # diffusers EMAModel default (no warm-up: min(decay, (1 + n) / (10 + n)))
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    caption_dropout: float = 0.0  # dataset_inpainting.py: 0.05; dataset_text2img.py: none
    mask_mix: str = SD_INPAINT_MASKS.name  # a training/data/masks.py mix; the default is dataset_inpainting.py's
    max_chunks: int = LLMGA_MAX_CHUNKS  # my_utils/util.py get_text_index(max_embeddings_multiples=4)
    mixed_precision: Literal["no", "fp16", "bf16"] | None = "bf16"  # None: what `accelerate launch` says
    allow_tf32: bool = True
    gradient_checkpointing: bool = True
    dataloader_num_workers: int = 0
    checkpointing_steps: int = 2000
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = "latest"  # "latest", a checkpoint-<step> folder, or null
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("resolution", "train_batch_size", "gradient_accumulation_steps", "max_train_steps",
                    "checkpointing_steps", "max_chunks")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8 (the VAE's factor), got {self.resolution}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout is a probability in [0, 1], got {self.caption_dropout}")
        if self.mask_mix not in MIXES:
            raise ValueError(f"mask_mix {self.mask_mix!r} is not one of {', '.join(MIXES)}")
        if self.seed < 0 or self.lr_warmup_steps < 0 or self.dataloader_num_workers < 0:
            raise ValueError("seed, lr_warmup_steps and dataloader_num_workers must not be negative")
        schedulers = [s.value for s in SchedulerType]
        if self.lr_scheduler not in schedulers:
            raise ValueError(f"lr_scheduler {self.lr_scheduler!r} is not one of {', '.join(schedulers)}")
        if self.family == "sd15" and self.crop_coords != "llmga":
            raise ValueError("crop_coords is SDXL's size conditioning, which SD1.5 has not: leave it at llmga or set "
                             "family: sdxl")
        if Path(self.output_dir).resolve() == Path(self.pretrained_model).resolve():
            raise ValueError("output_dir must not be the pretrained_model folder: the trained model is written there")


# --- data ----------------------------------------------------------------------------------------------------------


def read_image_prompt_rows(source: str | Path, image_root: str | Path | None = None) -> list[tuple[Path, str]]:
    """(image path, prompt) rows, read by training/data/datasets.py: the released T2I/train.json (a .json list;
    its detailed `caption` is the prompt, as dataset_text2img.py; images under `image_root`, records without one
    skipped), or a user's folder of images with same-stem .txt captions, or a .jsonl of {"image", "caption"}.
    Raises DataError for unreadable records, no records, and images that do not exist."""
    source = Path(source)
    if source.suffix == ".json":
        rows = [(r.image, r.caption) for r in read_t2i(source, image_root) if r.image is not None]
    else:
        rows = [(r.image, r.caption) for r in read_user_captions(source)]
    if not rows:
        raise DataError(f"{source}: no records with an image")
    missing = [str(path) for path, _ in rows if not path.is_file()]
    if missing:
        raise DataError(f"{source}: {len(missing)} image(s) not found ({', '.join(missing[:5])}); check the paths"
                        + ("" if source.suffix != ".json" else " and image_root"))
    return rows


def sd_mask_maker(mix_name: str) -> MaskFn:
    """make_mask(height, width, rng) drawing from a mix of training/data/masks.py (the official stage-2 one is
    "llmga_sd_inpaint": strokes 0.25 / boxes 0.25 / outpainting 0.5, then 25% all-ones masks)."""
    mix = MIXES[mix_name]

    def make_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        state = np.random.RandomState(rng.integers(0, 2**32, size=4))
        return draw_mask(mix, height, width, state).mask

    return make_mask


class ImagePromptDataset(EpochDataset):
    """Items {"pixel_values": [3, R, R] in [-1, 1], "prompt": str}, plus for inpainting "mask": [1, R, R] in {0, 1}
    and "masked_image": pixel_values * (1 - mask), and for SDXL "original_size" and "crop_top_left" (LongTensor [2],
    (height, width) and (top, left)). Random choices come from `sample_rng(seed, epoch, index)`."""

    def __init__(self, rows: Sequence[tuple[Path, str]], config: Stage2Config, make_mask: MaskFn | None) -> None:
        self.rows = list(rows)
        self.config = config
        self.make_mask = make_mask

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        c = self.config
        rng = sample_rng(c.seed, self.epoch, index)
        path, prompt = self.rows[index]
        if rng.random() < c.caption_dropout:
            prompt = ""
        cropped = crop_training_image(open_training_image(path), c.resolution, center_crop=c.center_crop,
                                      flip=c.random_flip, rng=rng, crop_coords=c.crop_coords)
        pixels = cropped.pixels
        item = {"pixel_values": pixels, "prompt": prompt}
        if c.family == "sdxl":
            item.update(original_size=torch.tensor(cropped.original_size),
                        crop_top_left=torch.tensor(cropped.crop_top_left))
        if self.make_mask is not None:
            mask = np.asarray(self.make_mask(c.resolution, c.resolution, rng), dtype=np.float32)
            if mask.shape != (c.resolution, c.resolution):
                raise ValueError(f"make_mask returned shape {mask.shape}, expected ({c.resolution}, {c.resolution})")
            mask = torch.from_numpy((mask >= 0.5).astype(np.float32))[None]
            item.update(mask=mask, masked_image=pixels * (1 - mask))
        return item


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0] if key != "prompt"}
    batch["prompt"] = [item["prompt"] for item in items]
    return batch


# --- models and the loss -----------------------------------------------------------------------------------------


@dataclass
class SDParts:
    """A base model's parts; SDXL's second text encoder and tokenizer are None for SD1.5."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    tokenizer_2: CLIPTokenizer | None = None
    text_encoder_2: CLIPTextModelWithProjection | None = None


def _load_sdxl_parts(folder: Path) -> tuple[CLIPTextModel, CLIPTextModelWithProjection, AutoencoderKL]:
    """SDXL's frozen parts (text encoders and VAE), a failure of any in one line naming it."""
    loaders = (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection),
               ("vae", AutoencoderKL))
    loaded = []
    for part, model_class in loaders:
        try:
            loaded.append(model_class.from_pretrained(folder, subfolder=part))
        except Exception as error:  # any type for a damaged part: OSError, ValueError, safetensors' own errors
            raise ConfigError(f"pretrained_model {folder}: {part} could not be loaded ({type(error).__name__}: "
                              f"{one_line(error)}): download the model again") from error
    return tuple(loaded)


def load_sd_parts(folder: str | Path, task: str, accelerator: Accelerator | None = None,
                  family: Literal["sd15", "sdxl"] = "sd15") -> SDParts:
    """The parts of an SD1.5 or SDXL (`family`) diffusers folder on the CPU, the UNet in float32 and the frozen parts
    as stored (`place_frozen_parts` sets their dtype), after checking that it is that family and its UNet fits `task`
    (4 / 9 input channels). `accelerator`: the run's, so DeepSpeed ZeRO-3 leaves the frozen parts whole."""
    folder = Path(folder)
    try:
        model = read_sd_model(folder)  # the family and UNet channels, from the configs of a complete folder
        if model.family != family:
            raise ConfigError(f"pretrained_model {folder} is {model.description}, but family is {family}: set "
                              f"family: {model.family} (as {FAMILY_CONFIGS[model.family]} does) or choose an "
                              f"{FAMILIES[family].name} folder")
        if family == "sd15":
            check_sd15_weights(folder, FULL_PRECISION_WEIGHTS)  # whole, safe, and what the configs describe
    except (SDPipelineError, SD15LoadError) as error:
        raise ConfigError(f"pretrained_model: {error}") from error
    channels = model.channels
    if channels != TASK_CHANNELS[task]:
        other = next(name for name, n in TASK_CHANNELS.items() if n == channels)
        raise ConfigError(f"pretrained_model {folder} has a {channels}-channel UNet, which trains task '{other}', "
                          f"not '{task}': set task: {other} or choose a {TASK_CHANNELS[task]}-channel model")
    second = {}
    with frozen_model_context(accelerator) if accelerator is not None else contextlib.nullcontext():
        if family == "sdxl":
            text_encoder, text_encoder_2, vae = _load_sdxl_parts(folder)
            second = dict(text_encoder_2=text_encoder_2,
                          tokenizer_2=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2"))
        else:
            text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    return SDParts(
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        text_encoder=text_encoder,
        vae=vae,
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32),
        noise_scheduler=DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
        **second,
    )


def encode_batch_prompts(clip: TransformersCLIP, prompts: Sequence[str], max_chunks: int) -> torch.Tensor:
    """The batch's prompts with the "llmga" encoding, all to the same length T = 75k + 2: [B, T, 768]."""
    group = encode_prompt_group(prompts, clip.tokenize, clip.encode, mode="llmga", bos=clip.bos, eos=clip.eos,
                                pad=clip.pad, max_chunks=max_chunks)
    return torch.cat([encoded.cond for encoded in group.encoded])


def sdxl_time_ids(original_sizes: torch.Tensor, crop_top_lefts: torch.Tensor, resolution: int) -> torch.Tensor:
    """SDXL's size micro-conditioning of a batch, as train_text_to_image_sdxl.py's compute_time_ids makes it:
    original_sizes [B, 2] (height, width), crop_top_lefts [B, 2] (top, left) -> [B, 6] float32 rows
    (height, width, top, left, resolution, resolution), the target size being the training resolution."""
    target = torch.tensor([resolution, resolution]).expand(original_sizes.shape[0], 2)
    return torch.cat([original_sizes, crop_top_lefts, target.to(original_sizes.device)], dim=1).float()


def unet_conditioning(parts: SDParts, batch: dict[str, Any], config: Stage2Config
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """The UNet's text conditioning of a batch: SD1.5 (context [B, T, 768], None); SDXL (context [B, T, 2048],
    {"text_embeds": pooled [B, 1280], "time_ids": [B, 6]}), the captions encoded as `encode_sdxl_prompt_batch` does
    and the time ids in the text encoders' (the mixed-precision) dtype, as the official script casts them."""
    if parts.text_encoder_2 is None:
        clip = TransformersCLIP(parts.text_encoder, parts.tokenizer)
        return encode_batch_prompts(clip, batch["prompt"], config.max_chunks), None
    encoded = sdxl_caption_embeddings(parts.text_encoder, parts.text_encoder_2, parts.tokenizer, parts.tokenizer_2,
                                      batch["prompt"], max_chunks=config.max_chunks)
    time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], config.resolution)
    time_ids = time_ids.to(encoded.embeddings.device, parts.text_encoder.dtype)
    return encoded.embeddings, {"text_embeds": encoded.pooled, "time_ids": time_ids}


def denoising_loss(parts: SDParts, unet: torch.nn.Module, batch: dict[str, Any], config: Stage2Config,
                   generator: torch.Generator) -> torch.Tensor:
    """The stage-2 loss of one batch (scalar): MSE between the UNet's prediction and the noise (or velocity) target,
    optionally min-SNR weighted. `unet` is the (prepared) trained model; all random draws come from `generator`."""
    vae, scheduler = parts.vae, parts.noise_scheduler
    dtype, device = vae.dtype, vae.device
    latents = vae.encode(batch["pixel_values"].to(device, dtype)).latent_dist.sample(generator)
    latents = latents * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=dtype)
    if config.noise_offset:
        noise += config.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator, device=device,
                                                   dtype=dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator,
                              device=device)
    model_input = scheduler.add_noise(latents, noise, timesteps)
    if config.task == "inpaint":
        masked = vae.encode(batch["masked_image"].to(device, dtype)).latent_dist.sample(generator)
        masked = masked * vae.config.scaling_factor
        mask = F.interpolate(batch["mask"].to(device, dtype), size=latents.shape[-2:])
        model_input = torch.cat([model_input, mask, masked], dim=1)
    context, added_conditions = unet_conditioning(parts, batch, config)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    elif scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ConfigError(f"unsupported prediction_type {scheduler.config.prediction_type!r} in the scheduler config")
    prediction = unet(model_input, timesteps, context, added_cond_kwargs=added_conditions).sample
    if config.snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")
    snr = compute_snr(scheduler, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        snr = snr + 1
    weights = torch.clamp(snr, max=config.snr_gamma) / snr
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (loss * weights).mean()


def place_frozen_parts(parts: SDParts, device: torch.device, weight_dtype: torch.dtype) -> None:
    """Freeze the VAE and text encoder(s) and move them to `device`, as the official scripts: SD1.5's in the
    mixed-precision dtype (as loaded without mixed precision); SDXL's text encoders in that dtype and its VAE in
    float32 whatever the precision (train_text_to_image_sdxl.py: SDXL's VAE overflows in float16)."""
    if parts.text_encoder_2 is None:
        cast = weight_dtype if weight_dtype != torch.float32 else None
        placed = [(parts.vae, cast), (parts.text_encoder, cast)]
    else:
        placed = [(parts.text_encoder, weight_dtype), (parts.text_encoder_2, weight_dtype), (parts.vae, torch.float32)]
    for model, dtype in placed:
        model.requires_grad_(False)
        model.to(device, dtype=None if dtype == model.dtype else dtype)  # diffusers warns of any dtype given


# --- training ------------------------------------------------------------------------------------------------------


def train(config: Stage2Config, make_mask: MaskFn | None = None) -> TrainResult:
    """Train the UNet as configured and write the diffusers folder to config.output_dir.

    make_mask: the inpainting masks, `make_mask(height, width, rng) -> [H, W] in {0, 1}` (default: config.mask_mix);
    unused for t2i.
    """
    rows = read_image_prompt_rows(config.train_data, config.image_root)
    run = TrainingRun(config, "stage2_sd")
    accelerator = run.accelerator
    sharded = accelerator.distributed_type == DistributedType.FSDP or (
        accelerator.state.deepspeed_plugin is not None and accelerator.state.deepspeed_plugin.zero_stage == 3)
    if config.use_ema and sharded:
        raise ConfigError("use_ema needs the whole UNet on every process: use DDP or DeepSpeed ZeRO-2, or set "
                          "use_ema: false for ZeRO-3 / FSDP")
    parts = load_sd_parts(config.pretrained_model, config.task, accelerator, config.family)
    weight_dtype = mixed_precision_dtype(accelerator.mixed_precision)
    place_frozen_parts(parts, accelerator.device, weight_dtype)
    unet = parts.unet
    unet.train()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    ema = EMAModel(unet.parameters(), decay=config.ema_decay, model_cls=UNet2DConditionModel,
                   model_config=unet.config) if config.use_ema else None
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, betas=(config.adam_beta1,
                                  config.adam_beta2), weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    if config.task == "inpaint":
        make_mask = make_mask or sd_mask_maker(config.mask_mix)
    dataset = ImagePromptDataset(rows, config, make_mask if config.task == "inpaint" else None)
    sampler = EpochShuffleSampler(len(dataset), config.seed)
    dataloader = DataLoader(dataset, batch_size=config.train_batch_size, sampler=sampler, collate_fn=collate,
                            num_workers=config.dataloader_num_workers)
    # The prepared scheduler steps once per process per step, hence the factor (as the official script).
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=config.max_train_steps * accelerator.num_processes)
    unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    run.resume()
    if ema is not None:
        ema.to(accelerator.device)  # load_state leaves the shadow weights on the CPU

    def micro_step(batch: dict[str, Any], generator: torch.Generator, step: int) -> MicroStep:
        loss = denoising_loss(parts, unet, batch, config, generator)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(unet.parameters(), config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        return MicroStep({"train_loss": loss.detach()}, lr_scheduler.get_last_lr()[0], len(batch["prompt"]))

    run.train(unet, dataloader, (sampler, dataset), config.max_train_steps, micro_step,
              None if ema is None else lambda: ema.step(unet.parameters()))
    if ema is not None:
        ema.copy_to(accelerator.unwrap_model(unet).parameters())
    state_dict = accelerator.get_state_dict(unet)

    def write() -> str:
        write_sd_folder(config.pretrained_model, config.output_dir, accelerator.unwrap_model(unet).config,
                          state_dict)
        return f"wrote the trained {FAMILIES[config.family].name} folder to {config.output_dir}"

    return run.finish(write)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(__doc__, Stage2Config, train, argv)


if __name__ == "__main__":
    sys.exit(main())
