"""DiffRIR training pieces: the training batch, the training-pair pool, the network input, the stage-2 prior in
training mode, the learning-rate schedule of stage 2 and the losses of each stage.

The order of one training step follows the official `feed_data` / `optimize_parameters`
(DiffRIR/models/DiffIR_S1_model.py, DiffIR_S2_model.py):
1. `synthesize_training_batch`: D1 (second-order degradation) on the whole 400×400 gt, D2 (luminance error), 8-bit
   rounding, then one random 256×256 crop of (gt, mask, lq) at the same place;
2. `TrainingPairPool`: the pool of 160 (lq, gt) pairs that mixes degradations across batches (masks not pooled);
3. `build_pair`: x = cat(lq, (1-mask)·gt) — the reference is built from the clean gt after the pool; target = gt;
4. the losses: S1 `s1_loss`; S2 phase a (iteration < 100k, CPEN_S2 + denoiser only) `s2_encoder_losses`; S2 phase b
   (all of S2) `s2_losses`; the GAN stage (DiffRIR_GAN_S2_model.py) `gan_generator_losses` with the VGG19
   perceptual loss (`perceptual.py`), then `discriminator_losses` for the U-Net discriminator (`discriminator.py`).
   The KL term of the official KDLoss is computed and returned for logging only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .degradations import (
    DIFFRIR_DEGRADATION,
    Y_BIAS,
    DegradationParams,
    luminance_error,
    quantize,
    second_order_degradation,
)
from .network import DiffRIR

QUEUE_SIZE = 160  # train_DiffRIR*_x*.yml queue_size (the models' fallback of 180 is never used)
GT_SIZE = 256  # train_DiffRIR*_x*.yml gt_size: the crop after the degradation
KD_TEMPERATURE = 0.15  # train_DiffRIRS2_*.yml kd_opt (DiffRIR/losses/my_loss.py KDLoss)
# train_DiffRIRS2_x1.yml: phase a trains CPEN_S2 + denoiser for encoder_iter iterations at lr_encoder, ×gamma_encoder
# every lr_decay_encoder; phase b trains everything at lr_sr, ×gamma_sr every lr_decay_sr after encoder_iter.
ENCODER_ITERS = 100_000
LR_ENCODER, GAMMA_ENCODER, LR_DECAY_ENCODER = 2e-4, 0.1, 60_000
LR_SR, GAMMA_SR, LR_DECAY_SR = 2e-4, 0.5, 600_000


def paired_random_crop(gt: Tensor, mask: Tensor, lq: Tensor, gt_size: int, scale: int,
                       generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """BasicSR paired_random_crop on tensors: one window for the whole batch, gt_size² on gt [B,3,H,W] and mask
    [B,1,H,W], (gt_size/scale)² on lq [B,3,H/scale,W/scale] at the corresponding place. Returns (gt, mask, lq)."""
    h_lq, w_lq = lq.shape[-2:]
    lq_size = gt_size // scale
    if gt.shape[-2:] != (h_lq * scale, w_lq * scale) or mask.shape[-2:] != gt.shape[-2:]:
        raise ValueError(f"gt {tuple(gt.shape[-2:])}, mask {tuple(mask.shape[-2:])} and lq {(h_lq, w_lq)} do not "
                         f"match at scale {scale}: gt and mask must be {scale}× the lq")
    if h_lq < lq_size or w_lq < lq_size:
        raise ValueError(f"lq is {h_lq}x{w_lq}, smaller than the {lq_size}x{lq_size} crop: use larger images or a "
                         "smaller gt_size")
    top = int(torch.randint(0, h_lq - lq_size + 1, (), generator=generator, device=generator.device))
    left = int(torch.randint(0, w_lq - lq_size + 1, (), generator=generator, device=generator.device))
    window = (slice(None), slice(None), slice(top * scale, top * scale + gt_size),
              slice(left * scale, left * scale + gt_size))
    return gt[window], mask[window], lq[:, :, top:top + lq_size, left:left + lq_size]


def synthesize_training_batch(gt: Tensor, mask: Tensor, generator: torch.Generator, *, y_error: float,
                              y_bias: float = Y_BIAS, params: DegradationParams = DIFFRIR_DEGRADATION,
                              gt_size: int = GT_SIZE, degrade: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 1 of the module docstring: gt [B,3,H,W] in [0,1] (400×400 officially), mask [B,1,H,W] in {0,1} (1 =
    region to generate) -> (lq [B,3,g/s,g/s] multiples of 1/255 in [0,1], gt [B,3,g,g], mask [B,1,g,g]) with
    g = gt_size, s = params.scale. y_error: `Y_ERROR_S1` (0.06) for S1, `Y_ERROR_S2` (0.08) for S2. degrade: the
    image the lq is made from, gt by default (the GAN stage's V2 degrades `usm_sharpen(gt)`)."""
    lq = second_order_degradation(gt if degrade is None else degrade, params, generator)
    lq = quantize(luminance_error(lq, y_error, y_bias, generator))
    gt, mask, lq = paired_random_crop(gt, mask, lq, gt_size, params.scale, generator)
    return lq.contiguous(), gt, mask


class TrainingPairPool:
    """Real-ESRGAN's training-pair pool (`_dequeue_and_enqueue`), which mixes the batch-level degradation choices
    (resize factor, noise type, step order) across batches.

    While it fills (the first size/B calls) each batch is stored and returned unchanged. Once full, every call
    shuffles the pool, returns its first B pairs and stores the batch in their place. Only (lq, gt) are pooled,
    not the mask: as in the official code the caller pairs the current batch's mask with the (lq, gt) that come
    out. That is harmless because masks do not depend on the image, and the reference (1-mask)·gt is built after
    the pool from the gt that comes out. The pool lives on the batches' device. The official pool is not
    checkpointed (it refills in size/B steps); `state_dict` / `load_state_dict` let a trainer save it, so that a
    resumed run draws what the uninterrupted run drew.
    """

    def __init__(self, size: int = QUEUE_SIZE) -> None:
        self.size = size
        self.lq: Tensor | None = None
        self.gt: Tensor | None = None
        self.batch = 0
        self.filled = 0

    @property
    def full(self) -> bool:
        return self.lq is not None and self.filled == self.size

    def __call__(self, lq: Tensor, gt: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """lq [B,3,h,w], gt [B,3,H,W] -> (lq, gt) of the same shapes (see the class docstring)."""
        batch = lq.shape[0]
        if self.lq is None:
            if self.size % batch:
                raise ValueError(f"the pool size {self.size} must be divisible by the batch size {batch}: change one "
                                 "(drop the last incomplete batch of an epoch)")
            self.lq = lq.new_zeros((self.size, *lq.shape[1:]))
            self.gt = gt.new_zeros((self.size, *gt.shape[1:]))
            self.batch = batch
        if lq.shape[1:] != self.lq.shape[1:] or gt.shape[1:] != self.gt.shape[1:] or batch != self.batch:
            raise ValueError(f"the pool holds lq {tuple(self.lq.shape[1:])} and gt {tuple(self.gt.shape[1:])} "
                             f"pairs, got a batch of {batch} with lq {tuple(lq.shape[1:])} and gt "
                             f"{tuple(gt.shape[1:])}: keep crop and batch sizes fixed (drop_last=True)")
        if self.lq.device != lq.device:  # a loaded state arrives on the CPU
            self.lq, self.gt = self.lq.to(lq.device), self.gt.to(gt.device)
        if not self.full:
            self.lq[self.filled:self.filled + batch] = lq.detach()
            self.gt[self.filled:self.filled + batch] = gt.detach()
            self.filled += batch
            return lq, gt
        order = torch.randperm(self.size, generator=generator, device=generator.device).to(self.lq.device)
        self.lq, self.gt = self.lq[order], self.gt[order]
        out_lq, out_gt = self.lq[:batch].clone(), self.gt[:batch].clone()
        self.lq[:batch] = lq.detach()
        self.gt[:batch] = gt.detach()
        return out_lq, out_gt

    def state_dict(self) -> dict[str, Any]:
        """The stored pairs (None before the first call) and how full the pool is."""
        return {"size": self.size, "batch": self.batch, "filled": self.filled, "lq": self.lq, "gt": self.gt}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; the pairs move to the next batch's device when it comes."""
        if state["size"] != self.size:
            raise ValueError(f"the saved pool holds {state['size']} pairs but this one {self.size}: resume with the "
                             "queue size the run was started with")
        self.batch, self.filled, self.lq, self.gt = state["batch"], state["filled"], state["lq"], state["gt"]


def build_pair(gt: Tensor, mask: Tensor, lq: Tensor, scale: int = 1) -> tuple[Tensor, Tensor]:
    """The network input and target: gt [B,3,H,W] in [0,1], mask [B,1,H,W] (1 = generated), lq [B,3,H/s,W/s] ->
    (x, gt) with x = cat(lq, PixelUnshuffle_s((1-mask)·gt)) [B,3+3s²,H/s,W/s] (6, 15 or 51 channels)."""
    if gt.shape[-2:] != (lq.shape[-2] * scale, lq.shape[-1] * scale):
        raise ValueError(f"gt is {tuple(gt.shape[-2:])} and lq {tuple(lq.shape[-2:])}: at scale {scale} gt must be "
                         f"{scale}× the lq")
    reference = (1 - mask) * gt
    if scale > 1:
        reference = F.pixel_unshuffle(reference, scale)
    return torch.cat([lq, reference], dim=1), gt


def s2_training_prior(s2: DiffRIR, x: Tensor, z_s1: Tensor, generator: torch.Generator) -> Tensor:
    """The S2 prior in training mode (ldm/ddpm.py DDPM.forward, training branch): z_S1 [B,256] noised to the last
    step, q(z_T | z_S1) = N(√ᾱ_T z_S1, (1-ᾱ_T) I), then the 4 deterministic reverse steps conditioned on
    CPEN_S2(x), with gradients through the chain. x [B,C_in,H,W] -> z_S2 [B,256]."""
    diffusion = s2.diffusion
    last = diffusion.num_timesteps - 1
    noise = torch.randn(z_s1.shape, generator=generator, device=generator.device).to(z_s1)
    start = diffusion.sqrt_alphas_cumprod[last] * z_s1.detach() + diffusion.sqrt_one_minus_alphas_cumprod[last] * noise
    return diffusion(x, start)


@dataclass(frozen=True)
class StepDecay:
    """BasicSR's step decay: the learning rate `lr · gamma^⌊iteration / every⌋`."""

    lr: float
    gamma: float
    every: int

    def at(self, iteration: int) -> float:
        return self.lr * self.gamma ** (iteration // self.every)


@dataclass(frozen=True)
class S2Schedule:
    """The two phases of stage 2 and their learning rates (defaults: train_DiffRIRS2_x1.yml, see the constants):
    phase a (iteration < encoder_iters) trains CPEN_S2 + denoiser at `encoder`, phase b all of S2 at `sr`, counted
    from the start of phase b."""

    encoder_iters: int = ENCODER_ITERS
    encoder: StepDecay = StepDecay(LR_ENCODER, GAMMA_ENCODER, LR_DECAY_ENCODER)
    sr: StepDecay = StepDecay(LR_SR, GAMMA_SR, LR_DECAY_SR)

    def encoder_phase(self, iteration: int) -> bool:
        """True in phase a, where only CPEN_S2 + denoiser train (`s2_encoder_losses`)."""
        return iteration < self.encoder_iters


S2_SCHEDULE = S2Schedule()


def s2_learning_rate(iteration: int, schedule: S2Schedule = S2_SCHEDULE) -> float:
    """The stage-2 learning rate at `iteration` (0-based), set by hand each step: phase a (< encoder_iters, the
    CPEN_S2 + denoiser optimiser) 2e-4·0.1^⌊it/60k⌋; phase b (all of S2) 2e-4·0.5^⌊(it-100k)/600k⌋ (official
    values; `schedule` changes them)."""
    if schedule.encoder_phase(iteration):
        return schedule.encoder.at(iteration)
    return schedule.sr.at(iteration - schedule.encoder_iters)


def s1_loss(output: Tensor, gt: Tensor) -> Tensor:
    """Stage 1: L1(output, gt), mean over all elements; the output is not composited."""
    return F.l1_loss(output, gt)


def prior_l1(z_s2: Tensor, z_s1: Tensor) -> Tensor:
    """KDLoss's absolute term: L1(z_S2, z_S1) with z_S1 [B,256] detached (the S1 network is frozen)."""
    return F.l1_loss(z_s2, z_s1.detach())


def prior_kl(z_s2: Tensor, z_s1: Tensor, temperature: float = KD_TEMPERATURE) -> Tensor:
    """KDLoss's distillation term: KL(softmax(z_S1/T) ‖ softmax(z_S2/T)), batch mean; officially logged only."""
    return F.kl_div(F.log_softmax(z_s2 / temperature, dim=1), F.softmax(z_s1.detach() / temperature, dim=1),
                    reduction="batchmean")


def composite(output: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """(1-mask)·gt + mask·output: only the generated region comes from the network. [B,3,H,W]."""
    return (1 - mask) * gt + output * mask


@dataclass
class S2Losses:
    """Stage-2 loss terms: `total` is what is back-propagated; `pixel` is None in phase a; `prior_kl` is logged."""

    total: Tensor
    prior_l1: Tensor
    prior_kl: Tensor
    pixel: Tensor | None = None

    def log(self) -> dict[str, float]:
        """Detached values under the official log names (l_pix, l_abs_3, l_kd_3: the last of the 4 steps)."""
        named = {"l_pix": self.pixel, "l_abs_3": self.prior_l1, "l_kd_3": self.prior_kl}
        return {name: float(value.detach()) for name, value in named.items() if value is not None}


def s2_encoder_losses(z_s2: Tensor, z_s1: Tensor) -> S2Losses:
    """Stage 2, phase a: total = L1(z_S2, z_S1)."""
    l1 = prior_l1(z_s2, z_s1)
    return S2Losses(total=l1, prior_l1=l1, prior_kl=prior_kl(z_s2, z_s1).detach())


def s2_losses(output: Tensor, gt: Tensor, mask: Tensor, z_s2: Tensor, z_s1: Tensor, scale: int = 1) -> S2Losses:
    """Stage 2, phase b: total = L1(composite(output), gt) + L1(z_S2, z_S1). output, gt [B,3,H,W], mask [B,1,H,W];
    as officially the output is composited with the gt at scale 1 only."""
    image = composite(output, gt, mask) if scale == 1 else output
    pixel = F.l1_loss(image, gt)
    l1 = prior_l1(z_s2, z_s1)
    return S2Losses(total=pixel + l1, prior_l1=l1, prior_kl=prior_kl(z_s2, z_s1).detach(), pixel=pixel)


# --- the GAN stage (DiffRIR/models/DiffRIR_GAN_S2_model.py, options/train_DiffRIRS2_GAN_x1*.yml) -----------------

# train_DiffRIRS2_GAN_x1.yml: optim_g / optim_d Adam lr 1e-4; the generator's rate lr_sr · gamma_sr^⌊it / lr_decay_sr⌋
# set by hand every iteration (the MultiStepLR [400k] it configures only reaches the discriminator at the very end).
GAN_LR_G, GAN_GAMMA_G, GAN_LR_DECAY_G = 1e-4, 0.5, 300_000
GAN_LR_D = 1e-4
GAN_SCHEDULE = StepDecay(GAN_LR_G, GAN_GAMMA_G, GAN_LR_DECAY_G)
# BasicSR USMSharp(radius=50, sigma=0) called with weight 0.5, threshold 10: a 51×51 Gaussian whose σ OpenCV derives
# from the size (getGaussianKernel: 0.3·((51-1)/2 - 1) + 0.8 = 8).
USM_SIZE, USM_WEIGHT, USM_THRESHOLD = 51, 0.5, 10 / 255


def _usm_kernel(device: torch.device) -> Tensor:
    """The normalised 1-D Gaussian of USMSharp (its 2-D kernel is the outer product of this with itself)."""
    sigma = 0.3 * ((USM_SIZE - 1) * 0.5 - 1) + 0.8
    x = torch.arange(USM_SIZE, dtype=torch.float64) - (USM_SIZE - 1) / 2
    kernel = torch.exp(-x**2 / (2 * sigma**2))
    return (kernel / kernel.sum()).float().to(device)


def _gaussian_blur(image: Tensor, kernel: Tensor) -> Tensor:
    """BasicSR filter2D with the outer product of `kernel` (reflect padding), as two 1-D passes: the same sum in
    another order, 51× cheaper than the 51×51 one."""
    channels, half = image.shape[1], USM_SIZE // 2
    x = F.pad(image, (half, half, half, half), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, USM_SIZE).to(x.dtype), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, USM_SIZE, 1).to(x.dtype), groups=channels)


def usm_sharpen(image: Tensor) -> Tensor:
    """BasicSR's USM sharpening of the ground truth: image [B,3,H,W] in [0,1] (H, W > 25) -> the same, sharpened
    (image + 0.5·(image - blur), clipped to [0,1]) where |image - blur| > 10/255, blended in by the blurred mask."""
    kernel = _usm_kernel(image.device)
    residual = image - _gaussian_blur(image, kernel)
    soft_mask = _gaussian_blur((residual.abs() > USM_THRESHOLD).to(image.dtype), kernel)
    sharp = (image + USM_WEIGHT * residual).clamp(0, 1)
    return soft_mask * sharp + (1 - soft_mask) * image


def gan_loss(logits: Tensor, real: bool) -> Tensor:
    """BasicSR's vanilla GANLoss (real label 1, fake label 0): BCE with logits against the label, mean over all
    pixels of the per-pixel logits [B,1,H,W]."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if real else 0.0))


@dataclass
class GANGeneratorLosses:
    """The generator's terms in the GAN stage; `total` is back-propagated, `prior_kl` is logged only."""

    total: Tensor
    pixel: Tensor
    perceptual: Tensor
    gan: Tensor
    prior_l1: Tensor
    prior_kl: Tensor

    def log(self) -> dict[str, Tensor]:
        """Detached values under the official log names (l_abs_3, l_kd_3: the last of the 4 prior steps)."""
        named = {"l_g_pix": self.pixel, "l_g_percep": self.perceptual, "l_g_gan": self.gan,
                 "l_abs_3": self.prior_l1, "l_kd_3": self.prior_kl}
        return {name: value.detach() for name, value in named.items()}


def gan_generator_losses(output: Tensor, target: Tensor, perceptual: Tensor, fake_logits: Tensor, z_s2: Tensor,
                         z_s1: Tensor, *, pixel_weight: float = 1.0, gan_weight: float = 1.0) -> GANGeneratorLosses:
    """The GAN stage's generator loss: pixel_weight·L1(output, target) + perceptual (already weighted) +
    gan_weight·BCE(D(output), real) + L1(z_S2, z_S1). output, target [B,3,H,W] (target: gt, or the USM gt in V2);
    as officially the output is not composited with the gt. fake_logits: D(output) [B,1,H,W]; z [B,256]."""
    pixel = pixel_weight * F.l1_loss(output, target)
    adversarial = gan_weight * gan_loss(fake_logits, real=True)
    l1 = prior_l1(z_s2, z_s1)
    return GANGeneratorLosses(total=pixel + perceptual + adversarial + l1, pixel=pixel, perceptual=perceptual,
                              gan=adversarial, prior_l1=l1, prior_kl=prior_kl(z_s2, z_s1).detach())


def discriminator_losses(real_logits: Tensor, fake_logits: Tensor) -> dict[str, Tensor]:
    """The discriminator's two terms (weight 1, as BasicSR's GANLoss for discriminators): l_d_real = BCE(D(gt),
    real), l_d_fake = BCE(D(output), fake), back-propagated as their sum; out_d_* are the mean logits (logged)."""
    return {"l_d_real": gan_loss(real_logits, real=True), "l_d_fake": gan_loss(fake_logits, real=False),
            "out_d_real": real_logits.detach().mean(), "out_d_fake": fake_logits.detach().mean()}
