r"""DiffRIR training: the reference-based restoration network that LLMGA runs after inpainting and outpainting.

    accelerate launch --config_file training/configs/accelerate/multi_gpu.yaml \
        -m training.diffrir --config training/configs/diffrir_s1.yaml
    accelerate launch -m training.diffrir --config training/configs/diffrir_s2.yaml   # after S1
    python -m training.diffrir --config training/configs/diffrir_s1.yaml --set max_train_steps=100

What it reproduces (Zj-BinXia/DiffRIR: options/train_DiffRIRS1_x1.yml, train_DiffRIRS2_x1.yml,
models/DiffIR_S1_model.py, DiffIR_S2_model.py, data/diffrir_y_mask_dataset.py; the pieces live in
llmga/restore/training.py and s1.py):
- data: HR images, each flipped (p 0.5), reflect-padded or randomly cropped to 400², with a DiffRIR mask drawn at
  that size (training/data/masks.py `DIFFRIR_MASKS`); per batch D1 (second-order degradation) + D2 (luminance error,
  y_error 0.06 in S1, 0.08 in S2) + 8-bit rounding + one paired 256² crop, the training-pair pool (160), then
  x = cat(lq, (1-mask)·gt);
- stage `s1`: DIRformer + CPEN_S1 (which sees the gt), L1(output, gt) not composited, Adam(0.9, 0.99) 2e-4,
  MultiStepLR [200k, 300k] ×0.5, 400k iterations, no EMA; writes `<output_dir>/<model_name>.pth` = {"params": …};
- stage `s2`: the DIRformer starts from S1 (`init_s2_from_s1`), the frozen S1 supplies z_S1 = CPEN_S1(x, gt); the
  prior of S2 starts from z_S1 noised to the last step and runs the 4 reverse steps (`s2_training_prior`), and the
  DIRformer restores with it. Phase a (iteration < 100k): only CPEN_S2 + denoiser, L1(z_S2, z_S1), their own Adam;
  phase b: all of S2, L1(composited output, gt) + L1(z_S2, z_S1); the learning rate of each phase set by hand every
  iteration (`s2_learning_rate`); EMA 0.999 of the parameters after every step; writes `<output_dir>/<model_name>.pth`
  = {"params": …, "params_ema": …}, the layout of the released net_g_*.pth that `load_diffrir` (the LLMGA Load
  DiffRIR node, `python -m llmga restore`) reads.

Stage `s2_gan` (train_DiffRIRS2_GAN_x1*.yml: VGG perceptual loss + U-Net discriminator, after S2) is
training/diffrir_gan.py; a config with `stage: s2_gan` is handed to it. Not here: validation during training.

Deviations: images are read as RGB by PIL (the official reads BGR with OpenCV and converts); random draws come from
per-sample / per-step generators, and the pool, optimizers and EMA are checkpointed, so a resumed run continues
exactly; the EMA starts as a copy of the S2 network (the official loads its G from S1 and leaves its CPEN and
denoiser at an independent random init); under DDP the phase-a gradients are averaged over the processes (the
official phase a bypasses DDP, so its replicas drift apart). DDP only: DeepSpeed and FSDP are refused (two optimizers
share parameters and the network is small).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator, DistributedType
from torch import Tensor, nn
from torch.utils.data import DataLoader

from llmga.images import pil_to_tensor
from llmga.restore.checkpoint import DiffRIRLoadError, read_state_dict, save_basicsr_weights
from llmga.restore.degradations import MIN_SIZE, Y_BIAS, Y_ERROR_S1, Y_ERROR_S2, DegradationParams
from llmga.restore.network import SCALES, TRANSFORMER_MULTIPLE, DiffRIR
from llmga.restore.s1 import DiffRIRS1, init_s2_from_s1
from llmga.restore.training import (
    GT_SIZE,
    QUEUE_SIZE,
    S2_SCHEDULE,
    S2Schedule,
    StepDecay,
    TrainingPairPool,
    build_pair,
    s1_loss,
    s2_encoder_losses,
    s2_learning_rate,
    s2_losses,
    s2_training_prior,
    synthesize_training_batch,
)

from . import loop
from .common import ConfigError, EpochDataset, EpochShuffleSampler, run_cli, sample_rng
from .data.datasets import IMAGE_EXTENSIONS, DataError, open_training_image
from .data.masks import DIFFRIR_MASKS, MaskGenerator
from .loop import MicroStep, TrainingRun

CROP_SIZE = 400  # diffrir_y_mask_dataset.py: crop_pad_size, "400 is hard-coded"
S1_ITERS, S1_MILESTONES = 400_000, [200_000, 300_000]  # train_DiffRIRS1_x1.yml (x2/x4: 1M, [500k, 700k])
S2_ITERS = 1_000_000  # train_DiffRIRS2_x1.yml total_iter
ENCODER_PREFIXES = ("condition.", "denoise.")  # DiffIR_S2_model.py optimizer_e: "denoise" or "condition" in the name


@dataclass
class DiffRIRConfig:
    """DiffRIR settings; defaults are options/train_DiffRIRS{1,2}_x1.yml (null: the stage's official value)."""

    train_data: str  # a folder of HR images, searched recursively (officially DF2K + OST, multiscale sub-images)
    output_dir: str  # checkpoints, logs and <model_name>.pth
    stage: Literal["s1", "s2"] = "s1"
    s1_checkpoint: str | None = None  # s2: the S1 weights (the S1 run's <output_dir>/<model_name>.pth)
    model_name: str = "net_g_latest"  # BasicSR's name for the last weights (what inference_diffrir.py loads)
    # network_g / network_S1 of every DiffRIR yml (the released size; llmga/restore/network.py)
    scale: int = 1
    dim: int = 64
    num_blocks: list[int] = field(default_factory=lambda: [13, 1, 1, 1])
    num_refinement_blocks: int = 13
    heads: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    ffn_expansion_factor: float = 2.2
    n_encoder_res: int = 9
    # data (diffrir_y_mask_dataset.py and the yml top level)
    crop_size: int = CROP_SIZE  # every image is padded or cropped to this before the degradation
    gt_size: int = GT_SIZE  # the training patch, cropped after the degradation
    use_hflip: bool = True  # use_hflip: True, use_rot: False
    queue_size: int = QUEUE_SIZE  # the training-pair pool
    y_error: float | None = None  # D2 contrast error: null = 0.06 (s1) / 0.08 (s2), Y_error of the ymls
    y_bias: float = Y_BIAS  # D2 brightness error, Y_bias
    train_batch_size: int = 8  # batch_size_per_gpu
    gradient_accumulation_steps: int = 1  # none officially
    max_train_steps: int | None = None  # total_iter: null = 400k (s1) / 1M (s2)
    # optim_g: Adam, betas (0.9, 0.99), weight_decay 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    adam_weight_decay: float = 0.0
    # s1: lr 2e-4, MultiStepLR milestones [200k, 300k] (null), gamma 0.5
    learning_rate: float = 2e-4
    lr_milestones: list[int] | None = None
    lr_gamma: float = 0.5
    # s2: train_DiffRIRS2_x1.yml encoder_iter, lr_encoder, gamma_encoder, lr_decay_encoder, lr_sr, gamma_sr,
    # lr_decay_sr (the MultiStepLR it also configures is overridden by these every iteration); ema_decay
    encoder_iters: int = S2_SCHEDULE.encoder_iters
    lr_encoder: float = S2_SCHEDULE.encoder.lr
    gamma_encoder: float = S2_SCHEDULE.encoder.gamma
    lr_decay_encoder: int = S2_SCHEDULE.encoder.every
    lr_sr: float = S2_SCHEDULE.sr.lr
    gamma_sr: float = S2_SCHEDULE.sr.gamma
    lr_decay_sr: int = S2_SCHEDULE.sr.every
    ema_decay: float = 0.999
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None  # None: what `accelerate launch` says (official fp32)
    allow_tf32: bool = True
    dataloader_num_workers: int = 12  # num_worker_per_gpu
    checkpointing_steps: int = 5000  # official save_checkpoint_freq 5e4; more often, since resuming is exact
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = "latest"  # "latest", a checkpoint-<step> folder, or null
    seed: int = 0  # manual_seed

    def __post_init__(self) -> None:
        if self.stage == "s2" and not self.s1_checkpoint:
            raise ValueError("stage s2 starts from the S1 network: set s1_checkpoint to the weights stage s1 wrote "
                             "(its <output_dir>/<model_name>.pth)")
        positive = ("dim", "num_refinement_blocks", "n_encoder_res", "crop_size", "gt_size", "queue_size",
                    "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "lr_decay_encoder",
                    "lr_decay_sr")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("num_blocks", "heads"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                raise ValueError(f"{name} must be 4 positive integers (one per level), got {value!r}")
        if any((self.dim * 2**level) % heads for level, heads in enumerate(self.heads)):
            raise ValueError(f"the channels of each level (dim · 2^level, dim {self.dim}) must divide by its heads "
                             f"{list(self.heads)}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(map(str, SCALES))}, got {self.scale}")
        if self.crop_size < max(MIN_SIZE, self.gt_size):
            raise ValueError(f"crop_size {self.crop_size} must be at least gt_size ({self.gt_size}) and {MIN_SIZE} "
                             "(the smallest picture the degradation takes)")
        if self.crop_size % self.scale:
            raise ValueError(f"crop_size {self.crop_size} must be a multiple of scale {self.scale}")
        if self.gt_size % TRANSFORMER_MULTIPLE:
            raise ValueError(f"gt_size must be a multiple of {TRANSFORMER_MULTIPLE} (the network's grid), got "
                             f"{self.gt_size}")
        if self.queue_size % self.train_batch_size:
            raise ValueError(f"queue_size {self.queue_size} must be divisible by train_batch_size "
                             f"{self.train_batch_size} (the pool swaps whole batches)")
        if self.seed < 0 or self.dataloader_num_workers < 0 or self.encoder_iters < 0:
            raise ValueError("seed, dataloader_num_workers and encoder_iters must not be negative")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.y_error is None:
            self.y_error = Y_ERROR_S1 if self.stage == "s1" else Y_ERROR_S2
        if self.max_train_steps is None:
            self.max_train_steps = S1_ITERS if self.stage == "s1" else S2_ITERS
        if self.max_train_steps < 1:
            raise ValueError(f"max_train_steps must be at least 1, got {self.max_train_steps}")
        if self.lr_milestones is None:
            self.lr_milestones = list(S1_MILESTONES)
        if not isinstance(self.lr_milestones, (list, tuple)) or not all(
                isinstance(m, int) and not isinstance(m, bool) for m in self.lr_milestones):
            raise ValueError(f"lr_milestones must be a list of steps, got {self.lr_milestones!r}")

    def network_sizes(self) -> dict[str, Any]:
        """The keyword arguments of DiffRIR / DiffRIRS1 besides the scale."""
        return {"dim": self.dim, "num_blocks": tuple(self.num_blocks), "heads": tuple(self.heads),
                "num_refinement_blocks": self.num_refinement_blocks,
                "ffn_expansion_factor": self.ffn_expansion_factor, "n_encoder_res": self.n_encoder_res}

    def s2_schedule(self) -> S2Schedule:
        return S2Schedule(self.encoder_iters, StepDecay(self.lr_encoder, self.gamma_encoder, self.lr_decay_encoder),
                          StepDecay(self.lr_sr, self.gamma_sr, self.lr_decay_sr))


# --- data ----------------------------------------------------------------------------------------------------------


def find_images(folder: str | Path) -> list[Path]:
    """The image files under `folder`, in subfolders too, sorted. Raises DataError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"train_data {folder} is not a folder: give a folder of high-resolution images "
                        "(officially DF2K + OST)")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not images:
        raise DataError(f"train_data {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}, subfolders "
                        "included): put the training images there")
    return images


def pad_or_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """diffrir_y_mask_dataset.py: reflect-pad the bottom and right edges up to size (cv2.BORDER_REFLECT_101, NumPy's
    "reflect"), then a random size×size crop. image [H,W,3] -> [size,size,3]."""
    height, width = image.shape[:2]
    if height < size or width < size:
        image = np.pad(image, ((0, max(0, size - height)), (0, max(0, size - width)), (0, 0)), mode="reflect")
        height, width = image.shape[:2]
    top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    return image[top:top + size, left:left + size]


class MaskedCropDataset(EpochDataset):
    """Items {"gt": [3,C,C] float32 in [0,1], "mask": [1,C,C] float32 in {0,1} (1 = region to generate)} with
    C = crop_size: the image flipped (p 0.5), padded or cropped, and a `DIFFRIR_MASKS` mask drawn at C×C.
    Random choices come from `sample_rng(seed, epoch, index)`."""

    def __init__(self, paths: Sequence[Path], crop_size: int, use_hflip: bool, seed: int) -> None:
        self.paths = list(paths)
        self.crop_size = crop_size
        self.use_hflip = use_hflip
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rng = sample_rng(self.seed, self.epoch, index)
        pixels = pil_to_tensor(open_training_image(self.paths[index], "remove it from train_data"))[0].numpy()
        if self.use_hflip and rng.random() < 0.5:  # BasicSR augment: the flip comes before the pad/crop
            pixels = pixels[:, ::-1]
        pixels = pad_or_crop(pixels, self.crop_size, rng)
        masks = MaskGenerator.for_sample(DIFFRIR_MASKS, int(rng.integers(2**32)), index)
        mask = masks(self.crop_size, self.crop_size).mask
        return {"gt": torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
                "mask": torch.from_numpy(mask)[None]}


def training_pair(batch: dict[str, Tensor], pool: TrainingPairPool, config: DiffRIRConfig,
                  generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """One loaded batch through D1 + D2, the crop, the pool and `build_pair`: (x [B,3+3s²,g/s,g/s], gt [B,3,g,g],
    mask [B,1,g,g]) with g = gt_size; mask is the batch's own, gt may come from the pool (as officially)."""
    lq, gt, mask = synthesize_training_batch(batch["gt"], batch["mask"], generator, y_error=config.y_error,
                                             y_bias=config.y_bias, params=DegradationParams(scale=config.scale),
                                             gt_size=config.gt_size)
    lq, gt = pool(lq, gt, generator)
    x, gt = build_pair(gt, mask, lq, config.scale)
    return x, gt, mask


def training_data(config: DiffRIRConfig, accelerator: Accelerator, paths: Sequence[Path]
                  ) -> tuple[DataLoader, tuple[EpochShuffleSampler, MaskedCropDataset], TrainingPairPool]:
    """The prepared loader of `MaskedCropDataset` batches of `paths`, what follows the epoch (sampler, dataset) and
    the training-pair pool, registered for checkpointing: call it after the stage has registered its own state, so
    that checkpoints keep their order. DataError when a process would get no whole batch."""
    dataset = MaskedCropDataset(paths, config.crop_size, config.use_hflip, config.seed)
    sampler = EpochShuffleSampler(len(dataset), config.seed)
    # drop_last: the pool takes batches of one size only.
    dataloader = accelerator.prepare(DataLoader(dataset, batch_size=config.train_batch_size, sampler=sampler,
                                                drop_last=True, num_workers=config.dataloader_num_workers))
    if len(dataloader) == 0:
        raise DataError(f"train_data has {len(dataset)} image(s), fewer than one batch of {config.train_batch_size} "
                        f"on each of {accelerator.num_processes} process(es): add images or lower train_batch_size")
    pool = TrainingPairPool(config.queue_size)
    accelerator.register_for_checkpointing(pool)
    return dataloader, (sampler, dataset), pool


# --- the two stages ------------------------------------------------------------------------------------------------


def cpu_weights(module: nn.Module) -> dict[str, Tensor]:
    """The module's state dict as float32 CPU tensors, for torch.save."""
    return {key: value.detach().float().cpu() for key, value in module.state_dict().items()}


def adam_settings(config: DiffRIRConfig) -> dict[str, Any]:
    """optim_g's Adam settings besides the learning rate."""
    return {"betas": (config.adam_beta1, config.adam_beta2), "weight_decay": config.adam_weight_decay}


# The prior network's key prefix in each stage's weights: CPEN_S1 (which sees the gt) in S1, CPEN_S2 in S2.
STAGE_PRIOR_PREFIXES = {"s1": "E.", "s2": "condition."}


def read_stage_weights(path: str | Path, stage: Literal["s1", "s2"]) -> dict[str, Tensor]:
    """The state dict of a stage's weights, for the `<stage>_checkpoint` key (.pth: params_ema, params or bare, read
    with weights_only=True; or .safetensors). Raises ConfigError for a missing or unreadable file and for weights
    without that stage's prior network."""
    path, key = Path(path), f"{stage}_checkpoint"
    if not path.is_file():
        raise ConfigError(f"{key} {path} does not exist: train stage {stage} first (it writes "
                          "<output_dir>/<model_name>.pth) and give that file")
    try:
        state = read_state_dict(path)
    except DiffRIRLoadError as error:
        raise ConfigError(f"{key}: {error}") from error
    held = [other for other, prefix in STAGE_PRIOR_PREFIXES.items() if any(name.startswith(prefix) for name in state)]
    if stage not in held:
        kind = f"DiffRIR {held[0].upper()}" if held else "other"
        raise ConfigError(f"{key} {path} holds {kind} weights, not the {stage.upper()} network (its prior network "
                          f"{STAGE_PRIOR_PREFIXES[stage]}* is missing): give the weights stage {stage} wrote")
    return state


class ParameterEMA:
    """BasicSR's `model_ema`: a copy of the network whose parameters follow p_ema ← decay·p_ema + (1-decay)·p after
    every optimizer step (buffers stay as copied). `state_dict` / `load_state_dict` make it checkpointable."""

    def __init__(self, network: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(network).requires_grad_(False).eval()
        self.decay = decay

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        for average, param in zip(self.model.parameters(), network.parameters(), strict=True):
            average.mul_(self.decay).add_(param.detach(), alpha=1 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.model.load_state_dict(state)


class S1Stage:
    """Stage 1: DiffRIRS1 trained with L1(output, gt), Adam and MultiStepLR."""

    def __init__(self, config: DiffRIRConfig, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        network = DiffRIRS1(config.scale, **config.network_sizes())
        optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate, **adam_settings(config))
        # The prepared scheduler steps once per process per step, hence the factor (as in stage2_sd.py).
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, [m * accelerator.num_processes for m in config.lr_milestones], config.lr_gamma)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(network, optimizer, scheduler)

    def step(self, x: Tensor, gt: Tensor, mask: Tensor, iteration: int,
             generator: torch.Generator) -> tuple[dict[str, Tensor], float]:
        """One (micro-)step: backward and optimizer step; returns the loss terms ("train_loss" the total) and the
        learning rate used."""
        lr = self.optimizer.param_groups[0]["lr"]
        loss = s1_loss(self.model(x, gt).float(), gt)
        self.accelerator.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        return {"train_loss": loss.detach(), "l_pix": loss.detach()}, lr

    def after_step(self) -> None:
        """Nothing: stage 1 keeps no EMA."""

    def weights(self) -> dict[str, dict[str, Tensor]]:
        """BasicSR's S1 net_g_*.pth: {"params": state dict}."""
        return {"params": cpu_weights(self.accelerator.unwrap_model(self.model))}


class S2TrainingForward(nn.Module):
    """DiffRIRS2's forward in training mode as one module call, so that DDP sees the whole step: the prior from z_S1
    noised to the last step (`s2_training_prior`), then the DIRformer with it. x [B,C_in,H,W], z_S1 [B,256] ->
    (output [B,3,H·s,W·s], or None with prior_only, z_S2 [B,256])."""

    def __init__(self, network: DiffRIR) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, z_s1: Tensor, generator: torch.Generator,
                prior_only: bool = False) -> tuple[Tensor | None, Tensor]:
        z_s2 = s2_training_prior(self.network, x, z_s1, generator)
        return (None if prior_only else self.network.restore(x, z_s2)), z_s2


class S2Stage:
    """Stage 2: DiffRIR (S2) from the S1 DIRformer, distilling the frozen S1 prior; phases a and b; EMA."""

    def __init__(self, config: DiffRIRConfig, accelerator: Accelerator, s1_weights: dict[str, Tensor]) -> None:
        self.accelerator, self.scale, self.schedule = accelerator, config.scale, config.s2_schedule()
        self.s1 = DiffRIRS1(config.scale, **config.network_sizes())
        network = DiffRIR(config.scale, **config.network_sizes())
        expected = self.s1.state_dict()
        differing = [key for key, value in expected.items()
                     if key not in s1_weights or s1_weights[key].shape != value.shape]
        differing += [key for key in s1_weights if key not in expected]
        if differing:
            listed = ", ".join(differing[:3]) + (f" and {len(differing) - 3} more" if len(differing) > 3 else "")
            raise ConfigError(f"s1_checkpoint {config.s1_checkpoint} does not fit the configured network (missing, "
                              f"unexpected or of another shape: {listed}); set scale, dim, num_blocks, heads, "
                              "num_refinement_blocks, ffn_expansion_factor and n_encoder_res as in the S1 run")
        self.s1.load_state_dict(s1_weights)
        init_s2_from_s1(network, s1_weights)
        self.s1.requires_grad_(False).eval().to(accelerator.device)
        self.encoder_params = [p for name, p in network.named_parameters() if name.startswith(ENCODER_PREFIXES)]
        optimizer_g = torch.optim.Adam(network.parameters(), lr=config.lr_sr, **adam_settings(config))
        optimizer_e = torch.optim.Adam(self.encoder_params, lr=config.lr_encoder, **adam_settings(config))
        self.model, self.optimizer_g, self.optimizer_e = accelerator.prepare(S2TrainingForward(network), optimizer_g,
                                                                             optimizer_e)
        # After prepare, which gives every process the weights of the first.
        self.ema = ParameterEMA(self.network, config.ema_decay)
        accelerator.register_for_checkpointing(self.ema)

    @property
    def network(self) -> DiffRIR:
        return self.accelerator.unwrap_model(self.model).network

    def step(self, x: Tensor, gt: Tensor, mask: Tensor, iteration: int,
             generator: torch.Generator) -> tuple[dict[str, Tensor], float]:
        """One (micro-)step of phase a or b: backward and optimizer step; returns the loss terms ("train_loss" the
        total, the others under their official log names) and the learning rate used."""
        accelerator = self.accelerator
        encoder_phase = self.schedule.encoder_phase(iteration)
        optimizer = self.optimizer_e if encoder_phase else self.optimizer_g
        lr = s2_learning_rate(iteration, self.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.no_grad(), accelerator.autocast():
            z_s1 = self.s1.prior(x, gt).float()
        if encoder_phase:
            # The DIRformer takes no part, which DDP would wait for: average the encoder's gradients by hand.
            with accelerator.no_sync(self.model):
                _, z_s2 = self.model(x, z_s1, generator, prior_only=True)
                losses = s2_encoder_losses(z_s2.float(), z_s1)
                accelerator.backward(losses.total)
            if accelerator.num_processes > 1 and accelerator.sync_gradients:
                for param in self.encoder_params:
                    if param.grad is not None:
                        param.grad.copy_(accelerator.reduce(param.grad, "mean"))
        else:
            output, z_s2 = self.model(x, z_s1, generator)
            losses = s2_losses(output.float(), gt, mask, z_s2.float(), z_s1, self.scale)
            accelerator.backward(losses.total)
        optimizer.step()
        optimizer.zero_grad()
        named = {"train_loss": losses.total, "l_pix": losses.pixel, "l_abs_3": losses.prior_l1,
                 "l_kd_3": losses.prior_kl}
        return {name: value.detach() for name, value in named.items() if value is not None}, lr

    def after_step(self) -> None:
        self.ema.update(self.network)

    def weights(self) -> dict[str, dict[str, Tensor]]:
        """The released layout: {"params": the network, "params_ema": its EMA}."""
        return {"params": cpu_weights(self.network), "params_ema": cpu_weights(self.ema.model)}


# --- training ------------------------------------------------------------------------------------------------------


@dataclass
class TrainResult(loop.TrainResult):
    weights: Path  # <output_dir>/<model_name>.pth


def train(config: DiffRIRConfig) -> TrainResult:
    """Train the configured stage and write `<output_dir>/<model_name>.pth` (see the module docstring)."""
    paths = find_images(config.train_data)
    s1_weights = read_stage_weights(config.s1_checkpoint, "s1") if config.stage == "s2" else None
    run = TrainingRun(config, f"diffrir_{config.stage}")
    accelerator = run.accelerator
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise ConfigError("DiffRIR trains with DDP (accelerate's multi_gpu / single_gpu configs), not DeepSpeed or "
                          "FSDP: its 25M-parameter network fits every GPU")
    stage = S1Stage(config, accelerator) if s1_weights is None else S2Stage(config, accelerator, s1_weights)
    dataloader, epoch_setters, pool = training_data(config, accelerator, paths)
    run.resume()

    def micro_step(batch: dict[str, Tensor], generator: torch.Generator, step: int) -> MicroStep:
        x, gt, mask = training_pair(batch, pool, config, generator)
        terms, lr = stage.step(x, gt, mask, step, generator)
        return MicroStep(terms, lr, len(x))

    run.train(stage.model, dataloader, epoch_setters, config.max_train_steps, micro_step, stage.after_step)
    path = Path(config.output_dir) / f"{config.model_name}.pth"

    def write() -> str:
        save_basicsr_weights(stage.weights(), path)
        return f"wrote the DiffRIR {config.stage.upper()} weights to {path}"

    result = run.finish(write)
    return TrainResult(result.losses, result.global_step, result.output_dir, path)


def main(argv: Sequence[str] | None = None) -> int:
    from . import diffrir_gan  # it builds on this module

    if diffrir_gan.requests_gan_stage(argv):
        return diffrir_gan.main(argv)
    return run_cli(__doc__, DiffRIRConfig, train, argv)


if __name__ == "__main__":
    sys.exit(main())
