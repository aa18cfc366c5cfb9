r"""DiffRIR's GAN stage: the S2 network fine-tuned with perceptual and adversarial losses, the model LLMGA runs.

    accelerate launch -m training.diffrir --config training/configs/diffrir_s2_gan.yaml      # after S2 (V1)
    accelerate launch -m training.diffrir --config training/configs/diffrir_s2_gan_v2.yaml   # V2: USM-sharpened gt
    python -m training.diffrir_gan --config training/configs/diffrir_s2_gan.yaml --set max_train_steps=100

`training.diffrir` hands a config with `stage: s2_gan` to this module. What it reproduces (Zj-BinXia/DiffRIR:
options/train_DiffRIRS2_GAN_x1.yml and _V2.yml, models/DiffRIR_GAN_S2_model.py, losses/my_loss.py; BasicSR's
SRGANModel step, PerceptualLoss, GANLoss and USMSharp; Real-ESRGAN's UNetDiscriminatorSN):
- start: the generator is DiffRIR S2 loaded strictly from the S2 run's `params_ema` (`s2_checkpoint`, pretrain_network_g
  with param_key_g params_ema), and its EMA starts from the same weights; the frozen S1 (`s1_checkpoint`) supplies
  z_S1 = CPEN_S1(x, target); the discriminator, Real-ESRGAN's U-Net with spectral norm (64 channels, skip
  connections), starts from PyTorch's initialisation (or `d_checkpoint`);
- data: as stage S2 (training/diffrir.py): flip, pad/crop to 400², DiffRIR masks; D1 + D2 (y_error 0.06 in the GAN
  x1 ymls) + 8-bit rounding + one 256² crop, the 160-pair pool, x = cat(lq, (1-mask)·reference);
- V1 (`usm_gt: false`): the reference, the L1 and perceptual targets and z_S1's gt are the gt. V2 (`usm_gt: true`,
  l1_gt_usm / percep_gt_usm): the degradation starts from the USM-sharpened gt, and after the pool the gt is
  sharpened again for the reference, the L1 and perceptual targets and z_S1. The discriminator's real images are the
  plain gt in both (gan_gt_usm false);
- one iteration (net_d_iters 1, net_d_init_iters 0): the generator with the discriminator frozen, loss
  L1(output, target) ×1 + VGG19 perceptual ×1 (conv1_2 0.1, conv2_2 0.1, conv3_4 1, conv4_4 1, conv5_4 1, pre-ReLU,
  no style) + vanilla GAN ×1 + L1(z_S2, z_S1) ×1, the output *not* composited; then the discriminator,
  BCE(D(gt), real) + BCE(D(output.detach()), fake); then the EMA (0.999). Both Adam(0.9, 0.99) at 1e-4; the
  generator's rate halves every 300k iterations (set by hand every iteration, as officially); 400k iterations;
- writes `<output_dir>/<model_name>.pth` = {"params": …, "params_ema": …}, the released layout that `load_diffrir`
  (LLMGA Load DiffRIR, `python -m llmga restore`) reads strictly, and `<output_dir>/<discriminator_name>.pth` =
  {"params": …} (BasicSR's net_d_*.pth), which `d_checkpoint` takes to continue the adversarial training.

Checkpoints (every `checkpointing_steps`) hold both networks, both optimizers, the EMA and the pair pool; the draws of
each step depend only on (seed, process, step), so a resumed run continues exactly.

Deviations: the released stage cannot be built (`nn.PixelUnshufflev2` does not exist; its non-distributed branch
reads `.module.E`); here it runs at every scale and on one process. The USM blur runs as two 1-D passes (the same
Gaussian). The VGG19 weights are read from a local file only (`vgg19_weights`, torchvision's `vgg19-dcbb9e9d.pth`),
never downloaded. The discriminator's learning rate is constant (the yml's MultiStepLR milestone is the last
iteration). The generator's step calls the discriminator outside DDP (its weights are frozen there, and its
spectral-norm update depends on its weights only, so the processes stay equal). DDP only, as the S1/S2 stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator, DistributedType
from torch import Tensor, nn

from llmga.model_files import layout_problems, load_weights
from llmga.restore.checkpoint import save_basicsr_weights
from llmga.restore.degradations import Y_ERROR_S1, DegradationParams
from llmga.restore.discriminator import NUM_FEAT, UNetDiscriminatorSN
from llmga.restore.network import DiffRIR
from llmga.restore.perceptual import VGG19_FILE, PerceptualLoss, VGG19Features, load_vgg19
from llmga.restore.s1 import DiffRIRS1
from llmga.restore.training import (
    GAN_GAMMA_G,
    GAN_LR_D,
    GAN_LR_DECAY_G,
    GAN_LR_G,
    StepDecay,
    TrainingPairPool,
    build_pair,
    discriminator_losses,
    gan_generator_losses,
    synthesize_training_batch,
    usm_sharpen,
)

from . import loop
from .common import ConfigError, parse_overrides, read_config_file, run_cli
from .diffrir import (
    S1_MILESTONES,
    DiffRIRConfig,
    ParameterEMA,
    S2TrainingForward,
    adam_settings,
    cpu_weights,
    find_images,
    read_stage_weights,
    training_data,
)
from .loop import MicroStep, TrainingRun

STAGE = "s2_gan"
GAN_ITERS = 400_000  # train_DiffRIRS2_GAN_x1.yml total_iter
# DiffRIRConfig keys of stages s1 / s2 only: their schedules. The GAN stage's generator rate is lr_sr, gamma_sr,
# lr_decay_sr (the names of the GAN ymls), the discriminator's lr_d.
S1_S2_ONLY = ("learning_rate", "lr_milestones", "lr_gamma", "encoder_iters", "lr_encoder", "gamma_encoder",
              "lr_decay_encoder")


@dataclass
class DiffRIRGANConfig(DiffRIRConfig):
    """The GAN stage's settings: DiffRIRConfig's network, data and run keys, with the defaults of
    options/train_DiffRIRS2_GAN_x1.yml, plus the keys below."""

    stage: Literal["s2_gan"] = STAGE
    s2_checkpoint: str | None = None  # pretrain_network_g: the S2 run's <output_dir>/<model_name>.pth (params_ema)
    usm_gt: bool = False  # V2 (train_DiffRIRS2_GAN_x1_V2.yml): l1_gt_usm and percep_gt_usm
    vgg19_weights: str = f"models/eval/{VGG19_FILE}"  # torchvision's VGG19 ImageNet weights (a file or its folder)
    d_checkpoint: str | None = None  # start the discriminator from these weights (a net_d_*.pth); null: random
    discriminator_name: str = "net_d_latest"  # <output_dir>/<discriminator_name>.pth
    d_num_feat: int = NUM_FEAT  # network_d num_feat
    # optim_g / optim_d: Adam(0.9, 0.99) lr 1e-4; the generator's rate lr_sr · gamma_sr^⌊it / lr_decay_sr⌋
    lr_sr: float = GAN_LR_G
    gamma_sr: float = GAN_GAMMA_G
    lr_decay_sr: int = GAN_LR_DECAY_G
    lr_d: float = GAN_LR_D
    # pixel_opt, perceptual_opt (perceptual_weight), gan_opt loss weights; the prior L1 (kd_opt) keeps weight 1
    pixel_weight: float = 1.0
    perceptual_weight: float = 1.0
    gan_weight: float = 1.0

    def __post_init__(self) -> None:
        base = {field.name: field.default for field in dataclasses.fields(DiffRIRConfig)}
        # lr_milestones: DiffRIRConfig fills in its default, which dataclasses.replace passes back
        unchanged = {name: (base[name],) for name in S1_S2_ONLY} | {"lr_milestones": (None, list(S1_MILESTONES))}
        changed = [name for name in S1_S2_ONLY if getattr(self, name) not in unchanged[name]]
        if changed:
            raise ValueError(f"{', '.join(changed)}: settings of stages s1/s2 that stage s2_gan does not use; remove "
                             "them (the generator's rate is lr_sr, gamma_sr, lr_decay_sr, the discriminator's lr_d)")
        for name, produced_by in (("s1_checkpoint", "s1"), ("s2_checkpoint", "s2")):
            if not getattr(self, name):
                raise ValueError(f"stage s2_gan continues from stage {produced_by}: set {name} to the weights stage "
                                 f"{produced_by} wrote (its <output_dir>/<model_name>.pth)")
        if self.y_error is None:
            self.y_error = Y_ERROR_S1  # train_DiffRIRS2_GAN_x1.yml Y_error 0.06
        if self.max_train_steps is None:
            self.max_train_steps = GAN_ITERS
        if self.d_num_feat < 1 or self.lr_d <= 0 or self.lr_sr <= 0:
            raise ValueError("d_num_feat, lr_d and lr_sr must be positive")
        if self.model_name == self.discriminator_name:
            raise ValueError(f"model_name and discriminator_name are both {self.model_name!r}: the generator and the "
                             "discriminator need files of their own")
        super().__post_init__()

    def generator_schedule(self) -> StepDecay:
        return StepDecay(self.lr_sr, self.gamma_sr, self.lr_decay_sr)


def requests_gan_stage(argv: Sequence[str] | None) -> bool:
    """Whether a `training.diffrir` command line (`--config FILE [--set key=value ...]`) asks for stage s2_gan. An
    unreadable config says no: the S1/S2 trainer then reports it."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[])
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not args.config:
        return False
    try:
        values = {**read_config_file(args.config), **parse_overrides(args.set)}
    except ConfigError:
        return False
    return values.get("stage") == STAGE


# --- data ----------------------------------------------------------------------------------------------------------


def gan_training_pair(batch: dict[str, Tensor], pool: TrainingPairPool, config: DiffRIRGANConfig,
                      generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One loaded batch through D1 + D2, the crop, the pool and `build_pair`: (x [B,3+3s²,g/s,g/s], gt [B,3,g,g],
    target [B,3,g,g], mask [B,1,g,g]), g = gt_size. target is the gt (V1) or `usm_sharpen(gt)` (V2, which also
    degrades the sharpened picture and builds the reference from the sharpened gt)."""
    degrade = usm_sharpen(batch["gt"]) if config.usm_gt else None
    lq, gt, mask = synthesize_training_batch(batch["gt"], batch["mask"], generator, y_error=config.y_error,
                                             y_bias=config.y_bias, params=DegradationParams(scale=config.scale),
                                             gt_size=config.gt_size, degrade=degrade)
    lq, gt = pool(lq, gt, generator)
    target = usm_sharpen(gt) if config.usm_gt else gt  # sharpened again after the pool, as officially
    x, _ = build_pair(target, mask, lq, config.scale)
    return x, gt, target, mask


# --- weights in ----------------------------------------------------------------------------------------------------


def load_fitting(module: nn.Module, weights: Mapping[str, Tensor], key: str, path: str | Path, hint: str) -> None:
    """`module.load_state_dict(weights)` strictly; ConfigError naming the config key, the file and what differs."""
    problems = layout_problems({name: value.shape for name, value in weights.items()},
                               {name: value.shape for name, value in module.state_dict().items()})
    if problems:
        raise ConfigError(f"{key} {path} does not fit the configured network ({problems}): {hint}")
    module.load_state_dict(weights, strict=True)


def read_discriminator_weights(path: str | Path) -> dict[str, Tensor]:
    """A discriminator's state dict from a BasicSR net_d_*.pth ({"params": …}) or a bare state dict / safetensors."""
    advice = "give the <discriminator_name>.pth a GAN-stage run wrote, or null to start from random weights"
    if not Path(path).is_file():
        raise ConfigError(f"d_checkpoint {path} does not exist: {advice}")
    stored = load_weights(path, ConfigError, advice)
    if isinstance(stored, Mapping) and isinstance(stored.get("params"), Mapping):
        stored = stored["params"]
    if not isinstance(stored, Mapping) or not all(isinstance(value, Tensor) for value in stored.values()):
        raise ConfigError(f"d_checkpoint {path} holds no state dict: {advice}")
    return dict(stored)


# --- the stage -----------------------------------------------------------------------------------------------------


class GANStage:
    """The GAN stage's networks and optimizers, and one iteration (generator step, discriminator step)."""

    def __init__(self, config: DiffRIRGANConfig, accelerator: Accelerator, s1_weights: Mapping[str, Tensor],
                 s2_weights: Mapping[str, Tensor], vgg: VGG19Features,
                 d_weights: Mapping[str, Tensor] | None = None) -> None:
        self.accelerator, self.config, self.schedule = accelerator, config, config.generator_schedule()
        sizes_hint = ("set scale, dim, num_blocks, heads, num_refinement_blocks, ffn_expansion_factor and "
                      "n_encoder_res as in the S1 and S2 runs")
        self.s1 = DiffRIRS1(config.scale, **config.network_sizes())
        load_fitting(self.s1, s1_weights, "s1_checkpoint", config.s1_checkpoint, sizes_hint)
        self.s1.requires_grad_(False).eval().to(accelerator.device)
        network = DiffRIR(config.scale, **config.network_sizes())
        load_fitting(network, s2_weights, "s2_checkpoint", config.s2_checkpoint, sizes_hint)
        discriminator = UNetDiscriminatorSN(3, config.d_num_feat)
        if d_weights is not None:
            load_fitting(discriminator, d_weights, "d_checkpoint", config.d_checkpoint,
                         f"set d_num_feat to the width it was trained with (the official is {NUM_FEAT})")
        self.perceptual = PerceptualLoss(vgg.to(accelerator.device), weight=config.perceptual_weight)
        optimizer_g = torch.optim.Adam(network.parameters(), lr=config.lr_sr, **adam_settings(config))
        optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr_d, **adam_settings(config))
        self.model, self.discriminator, self.optimizer_g, self.optimizer_d = accelerator.prepare(
            S2TrainingForward(network), discriminator, optimizer_g, optimizer_d)
        # After prepare, which gives every process the weights of the first; the EMA starts from the S2 params_ema.
        self.ema = ParameterEMA(self.network, config.ema_decay)
        accelerator.register_for_checkpointing(self.ema)

    @property
    def network(self) -> DiffRIR:
        return self.accelerator.unwrap_model(self.model).network

    @property
    def bare_discriminator(self) -> UNetDiscriminatorSN:
        return self.accelerator.unwrap_model(self.discriminator)

    def step(self, x: Tensor, gt: Tensor, target: Tensor, iteration: int,
             generator: torch.Generator) -> tuple[dict[str, Tensor], float]:
        """One (micro-)iteration: the generator's step, then the discriminator's; returns the loss terms
        ("train_loss" the generator's total, the others under their official log names) and the generator's
        learning rate."""
        accelerator, config = self.accelerator, self.config
        lr = self.schedule.at(iteration)
        for group in self.optimizer_g.param_groups:
            group["lr"] = lr
        with torch.no_grad(), accelerator.autocast():
            z_s1 = self.s1.prior(x, target).float()
        # The generator's step: the discriminator frozen and called outside DDP (it takes no gradient here).
        discriminator = self.bare_discriminator.requires_grad_(False)
        output, z_s2 = self.model(x, z_s1, generator)
        output = output.float()
        with accelerator.autocast():
            perceptual = self.perceptual(output, target).float()
            fake_logits = discriminator(output).float()
        losses = gan_generator_losses(output, target, perceptual, fake_logits, z_s2.float(), z_s1,
                                      pixel_weight=config.pixel_weight, gan_weight=config.gan_weight)
        accelerator.backward(losses.total)
        self.optimizer_g.step()
        self.optimizer_g.zero_grad()
        # The discriminator's step: two forwards (real, then generated) as officially, so its spectral norm makes
        # the same power iterations; one backward of the sum (the official two give the same gradients).
        discriminator.requires_grad_(True)
        with accelerator.autocast():
            real_logits = self.discriminator(gt).float()
            fake_logits = self.discriminator(output.detach()).float()
        terms = discriminator_losses(real_logits, fake_logits)
        accelerator.backward(terms["l_d_real"] + terms["l_d_fake"])
        self.optimizer_d.step()
        self.optimizer_d.zero_grad()
        logged = {"train_loss": losses.total.detach(), **losses.log(),
                  **{name: value.detach() for name, value in terms.items()}}
        return logged, lr

    def after_step(self) -> None:
        self.ema.update(self.network)

    def weights(self) -> dict[str, dict[str, Tensor]]:
        """The released layout: {"params": the generator, "params_ema": its EMA}."""
        return {"params": cpu_weights(self.network), "params_ema": cpu_weights(self.ema.model)}

    def discriminator_weights(self) -> dict[str, dict[str, Tensor]]:
        """BasicSR's net_d_*.pth: {"params": the discriminator}."""
        return {"params": cpu_weights(self.bare_discriminator)}


# --- training ------------------------------------------------------------------------------------------------------


@dataclass
class TrainResult(loop.TrainResult):
    weights: Path  # <output_dir>/<model_name>.pth
    discriminator: Path  # <output_dir>/<discriminator_name>.pth


def train(config: DiffRIRGANConfig) -> TrainResult:
    """Train the GAN stage and write its two files (see the module docstring). Every input file (images, S1, S2,
    VGG19, discriminator) is read before training starts, so a missing one stops the run at once."""
    paths = find_images(config.train_data)
    s1_weights = read_stage_weights(config.s1_checkpoint, "s1")
    s2_weights = read_stage_weights(config.s2_checkpoint, "s2")
    d_weights = read_discriminator_weights(config.d_checkpoint) if config.d_checkpoint else None
    vgg = load_vgg19(config.vgg19_weights)
    run = TrainingRun(config, f"diffrir_{STAGE}")
    accelerator = run.accelerator
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise ConfigError("DiffRIR trains with DDP (accelerate's multi_gpu / single_gpu configs), not DeepSpeed or "
                          "FSDP: its 25M-parameter network and the discriminator fit every GPU")
    stage = GANStage(config, accelerator, s1_weights, s2_weights, vgg, d_weights)
    dataloader, epoch_setters, pool = training_data(config, accelerator, paths)
    run.resume()

    def micro_step(batch: dict[str, Tensor], generator: torch.Generator, step: int) -> MicroStep:
        x, gt, target, _ = gan_training_pair(batch, pool, config, generator)
        terms, lr = stage.step(x, gt, target, step, generator)
        return MicroStep(terms, lr, len(x))

    run.train(stage.model, dataloader, epoch_setters, config.max_train_steps, micro_step, stage.after_step)
    output_dir = Path(config.output_dir)
    path = output_dir / f"{config.model_name}.pth"
    discriminator_path = output_dir / f"{config.discriminator_name}.pth"

    def write() -> str:
        save_basicsr_weights(stage.weights(), path)
        save_basicsr_weights(stage.discriminator_weights(), discriminator_path)
        return f"wrote the DiffRIR GAN-stage weights to {path} and the discriminator to {discriminator_path}"

    result = run.finish(write)
    return TrainResult(result.losses, result.global_step, result.output_dir, path, discriminator_path)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(__doc__, DiffRIRGANConfig, train, argv)


if __name__ == "__main__":
    sys.exit(main())
