"""Instruction editing on a diffusers SD1.5 pipeline: PIL image + source/target prompts -> edited image and mask.

The editing itself is `llmga.edit.run.edit_latent`; this module binds it to diffusers (text encoder through the
long-prompt encoder, the UNet through `llmga.edit.diffusers_attention`, the VAE) for the CLI and for scripts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from PIL import Image

from ..images import mask_to_pil, pil_to_tensor, tensor_to_pil
from ..prompt.clip_binding import TransformersCLIP
from .attention import AttentionControl
from .diffusers_attention import attention_control, unet_eps
from .inversion import StepCallback
from .run import EditResult, EditSettings, TextBinding, edit_latent, latent_mask_to_image, pad_to_latent_multiple

OFFICIAL_SIZE = 512  # cli-sd15-editing.py: centre crop to a square, then resize to 512x512


def official_crop(image: Image.Image, size: int = OFFICIAL_SIZE) -> Image.Image:
    """cli-sd15-editing.py `crop_image`: the centred square of the short side (offset (long - short) // 2), resized to
    size x size (bicubic, PIL's default filter there)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


def text_binding(pipe) -> TextBinding:
    """The pipeline's CLIP tokenizer and text encoder as the long-prompt encoder's interfaces."""
    clip = TransformersCLIP(pipe.text_encoder, pipe.tokenizer)
    return TextBinding(clip.tokenize, clip.encode, clip.bos, clip.eos, clip.pad)


def controlled_eps_for(unet):
    """`controlled_eps(control)` for `edit_latent`: the UNet's eps with its attention routed through `control`."""

    @contextmanager
    def controlled_eps(control: AttentionControl | None) -> Iterator:
        if control is None:
            yield unet_eps(unet)
            return
        with attention_control(unet, control):
            yield unet_eps(unet)

    return controlled_eps


def encode_image(vae, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """image [1,H,W,3] float in [0,1] (H, W multiples of 8) -> the VAE posterior's (mean, std), each [1,4,H/8,W/8]
    float32 × the scaling factor; the mean is the latent that is edited (the official `mode()`)."""
    pixels = image.movedim(-1, 1).to(vae.device, vae.dtype) * 2.0 - 1.0
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
    scale = vae.config.scaling_factor
    return posterior.mean.float() * scale, posterior.std.float() * scale


def decode_latent(vae, latent: torch.Tensor) -> torch.Tensor:
    """latent [1,4,h,w] -> image [1,8h,8w,3] float32 in [0,1]."""
    with torch.no_grad():
        pixels = vae.decode(latent.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
    return ((pixels.float() + 1.0) / 2.0).clamp(0, 1).movedim(1, -1).cpu()


def edit_image(pipe, image: Image.Image, source_prompt: str, target_prompt: str, settings: EditSettings,
               on_step: StepCallback | None = None) -> tuple[Image.Image, Image.Image, EditResult]:
    """Edit `image` (any size: padded to multiples of 8 and cropped back) -> (edited image, mask image, result)."""
    padded, size = pad_to_latent_multiple(pil_to_tensor(image))
    device = pipe.unet.device
    x0, x0_std = (latent.to(device) for latent in encode_image(pipe.vae, padded))
    result = edit_latent(x0, source_prompt, target_prompt, text=text_binding(pipe),
                         controlled_eps=controlled_eps_for(pipe.unet), settings=settings, on_step=on_step,
                         x0_std=x0_std)
    mask = mask_to_pil(latent_mask_to_image(result.mask.cpu(), size)[0])
    if result.unchanged:
        return image.convert("RGB"), mask, result
    edited = decode_latent(pipe.vae, result.latent)[:, : size[0], : size[1]]
    return tensor_to_pil(edited), mask, result
