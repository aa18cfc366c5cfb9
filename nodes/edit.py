"""LLMGA Inversion Edit: edit an image from a source prompt (what it shows) to a target prompt on a native SD1.5 MODEL.

The algorithms are `llmga.edit` (Direct Inversion + Prompt-to-Prompt, DDPM-inversion + DiffEdit mask). This file
binds them to ComfyUI: the long-prompt encoder runs on the CLIP object, the VAE encodes and decodes, and the UNet is
the MODEL's own diffusion model, called with ComfyUI attention-replace patches that route every attention layer
through the P2P controller (so LoRA and other weight patches on the MODEL apply).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import comfy.latent_formats
import comfy.model_management
import comfy.utils
import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy_api.latest import io, ui

from ..llmga.edit.attention import AttentionControl, controlled_attention
from ..llmga.edit.official import posterior_std
from ..llmga.edit.options import CONTROLLERS, METHODS
from ..llmga.edit.run import (
    EditSettings,
    TextBinding,
    edit_latent,
    latent_mask_to_image,
    pad_to_latent_multiple,
)
from ..llmga.prompt.long_prompt import LLMGA_MAX_CHUNKS, MODES
from .errors import reported_as
from .long_prompt import ComfyCLIPBinding
from .schema import pack_schema

logger = logging.getLogger("comfyui-llmga")
PLACES = {"input": "down", "middle": "mid", "output": "up"}


def check_sd15_model(model) -> None:
    """Raise ValueError unless `model` is an SD1.5-style text-to-image MODEL (4 latent channels, 768-d context)."""
    base = model.model
    unet_config = getattr(base.model_config, "unet_config", {})
    if not isinstance(base.latent_format, comfy.latent_formats.SD15) or unet_config.get("context_dim") != 768:
        raise ValueError("this MODEL is not SD1.5: inversion editing runs on SD1.5 text-to-image models (e.g. "
                         "llmga-sd15-t2i-v2 from LLMGA Load SD1.5)")
    if unet_config.get("in_channels", 4) != 4:
        raise ValueError("this MODEL is an inpainting model (9 input channels): load the text-to-image model "
                         "(llmga-sd15-t2i-v2) for editing")


def transformer_blocks(diffusion_model) -> list[tuple[str, int, int]]:
    """The (block, id, index) keys of every transformer block, as ComfyUI's attention-replace patches name them."""
    keys = []
    parts = (("input", diffusion_model.input_blocks), ("middle", [diffusion_model.middle_block]),
             ("output", diffusion_model.output_blocks))
    for name, blocks in parts:
        for block_id, block in enumerate(blocks):
            for module in block.modules() if block is not None else ():
                if hasattr(module, "transformer_blocks"):
                    keys += [(name, block_id, index) for index in range(len(module.transformer_blocks))]
    return keys


def attention_patch(control: AttentionControl, is_cross: bool):
    """A ComfyUI attn1/attn2 replace patch: q, k, v [B,N,heads·d] in, attention output [B,N,heads·d] out."""

    def patch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        precision = extra_options.get("attn_precision")

        def fast(q_, k_, v_, heads_):
            return optimized_attention(q_, k_, v_, heads_, attn_precision=precision)

        place = PLACES[extra_options["block"][0]]
        return controlled_attention(q, k, v, heads, is_cross=is_cross, place=place, control=control, fast=fast)

    return patch


@contextmanager
def comfy_controlled_eps(model, control: AttentionControl | None) -> Iterator:
    """eps(latents, t, context) from the MODEL's diffusion model, its attention routed through `control`."""
    base = model.model
    diffusion_model = base.diffusion_model
    device = model.load_device
    dtype = base.manual_cast_dtype or base.get_dtype()
    options = dict(model.model_options.get("transformer_options", {}))
    if control is not None:
        replace = {kind: dict(patches) for kind, patches in options.get("patches_replace", {}).items()}
        for kind, is_cross in (("attn1", False), ("attn2", True)):
            table = replace.setdefault(kind, {})
            for key in transformer_blocks(diffusion_model):
                table[key] = attention_patch(control, is_cross)
        options["patches_replace"] = replace

    def eps(latents: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
        x = latents.to(device, dtype)
        timesteps = torch.full((x.shape[0],), float(t), device=device)
        with torch.no_grad():
            out = diffusion_model(x, timesteps=timesteps, context=context.to(device, dtype),
                                  transformer_options=dict(options))
        return out.to(latents.device, latents.dtype)

    yield eps


@contextmanager
def recorded_posterior(vae) -> Iterator[list[torch.Tensor]]:
    """While `vae.encode` runs, the VAE posterior's moments of each encoder call (ComfyUI's encode returns only the
    mean): a forward hook on the layer that outputs them (quant_conv, or the encoder where there is none)."""
    model = vae.first_stage_model
    layer = getattr(model, "quant_conv", None) or model.encoder
    moments: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, output: moments.append(output.detach().float().cpu()))
    try:
        yield moments
    finally:
        handle.remove()


def encode_with_std(vae, pixels: torch.Tensor, latent_format) -> tuple[torch.Tensor, torch.Tensor | None]:
    """pixels [1,H,W,3] -> (the latent x0, the posterior's std at the latent's scale, for the official DiffEdit mask;
    None when the VAE encoded in tiles, which it does only when one pass does not fit the memory)."""
    with recorded_posterior(vae) as moments:
        x0 = latent_format.process_in(vae.encode(pixels)).float()
    if len(moments) != 1 or moments[0].shape[-2:] != x0.shape[-2:]:
        return x0, None
    return x0, posterior_std(moments[0]) * latent_format.scale_factor


def _words(text: str) -> tuple[str, ...]:
    return tuple(word for word in text.replace(",", " ").split() if word)


def blend_words(source: str, target: str) -> tuple[tuple[str, ...], tuple[str, ...]] | str | None:
    """The LocalBlend words of each prompt; "auto" when either field says auto; None when both are empty."""
    if "auto" in (source.strip().lower(), target.strip().lower()):
        return "auto"
    words = (_words(source), _words(target))
    return words if any(words) else None


class InversionEdit(io.ComfyNode):
    """Edit an image by inversion on SD1.5: it is inverted with the source prompt (what it shows, e.g. the
    assistant's 'similar image' reply) and regenerated towards the target prompt (the assistant's reply to your
    instruction). Prompts up to 300 tokens."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return pack_schema(cls, "LLMGAInversionEdit", "LLMGA Inversion Edit", "edit", inputs=[
            io.Model.Input("model", tooltip="An SD1.5 text-to-image MODEL (llmga-sd15-t2i-v2 is what LLMGA uses)."),
            io.Clip.Input("clip", tooltip="The SD1.5 CLIP of the same checkpoint."),
            io.Vae.Input("vae", tooltip="The SD1.5 VAE (the official code uses sd-vae-ft-mse)."),
            io.Image.Input("image", tooltip="The image(s) to edit; each image of a batch is edited on its own. "
                           "Sizes that are not multiples of 8 are padded and cropped back."),
            io.String.Input("source_prompt", multiline=True, default="",
                            tooltip="What the image shows now (LLMGA Chat with task 'similar image')."),
            io.String.Input("target_prompt", multiline=True, default="",
                            tooltip="What the edited image should show (LLMGA Chat's reply to the instruction). "
                            "Equal to the source: the image is returned unchanged."),
            io.Combo.Input("method", options=list(METHODS), default=METHODS[0],
                           tooltip="direct_inversion_p2p: the paper's Direct Inversion + Prompt-to-Prompt "
                           "(structure-preserving). ddpm_inversion: the official code's edit-friendly DDPM "
                           "inversion with a DiffEdit mask (steps 50, skip 25, CFG 3.5 / 7.5)."),
            io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Sampling steps (both methods use 50)."),
            io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1,
                           tooltip="Guidance towards the target prompt (7.5 in both references)."),
            io.Float.Input("source_cfg", default=3.5, min=0.0, max=30.0, step=0.1,
                           tooltip="ddpm_inversion: guidance of the inversion pass (official 3.5)."),
            io.Int.Input("skip", default=25, min=0, max=99,
                         tooltip="ddpm_inversion: percent of the noisiest steps skipped (official 25); higher "
                         "keeps more of the input."),
            io.Combo.Input("controller", options=list(CONTROLLERS), default="refine",
                           tooltip="direct_inversion_p2p: refine aligns the two prompts token by token (any "
                           "prompts); replace swaps words one for one (needs the same word count)."),
            io.Float.Input("cross_replace", default=0.4, min=0.0, max=1.0, step=0.05,
                           tooltip="Fraction of steps whose cross-attention comes from the source (PnP: 0.4)."),
            io.Float.Input("self_replace", default=0.6, min=0.0, max=1.0, step=0.05,
                           tooltip="Fraction of steps whose self-attention comes from the source (PnP: 0.6)."),
            io.String.Input("blend_source_words", default="", optional=True,
                            tooltip="LocalBlend: words of the source prompt whose region may change (e.g. "
                            "'cat'); 'auto': the words that differ between the prompts; both empty: no "
                            "LocalBlend (the whole image may change)."),
            io.String.Input("blend_target_words", default="", optional=True,
                            tooltip="LocalBlend: words of the target prompt whose region may change (e.g. 'dog')."),
            io.Float.Input("blend_threshold", default=0.3, min=0.0, max=1.0, step=0.01,
                           tooltip="LocalBlend: attention threshold of the edited region (PnP: 0.3)."),
            io.Combo.Input("prompt_mode", options=list(MODES), default="llmga",
                           tooltip="Long-prompt encoding: llmga (how LLMGA's SD was trained) or lpw (official "
                           "inference pipelines)."),
            io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                         tooltip="ddpm_inversion: seed of the noise maps and the mask noise."),
            io.Boolean.Input("official", default=False, optional=True,
                             tooltip="Edit as the reference code (prompt_mode is then not used). ddpm_inversion: as "
                             "cli-sd15-editing.py, each phase's own prompt encoding (the inversion's source cut to "
                             "77 tokens, lpw at 3 chunks for the mask and 4 for sampling), the DiffEdit mask from VAE "
                             "posterior samples and the official last-step orders. direct_inversion_p2p: as "
                             "PnPInversion, prompts cut to 77 tokens. For the official picture, crop it to 512x512 "
                             "and load sd-vae-ft-mse (the edit_official_ddpm workflow does both)."),
        ], outputs=[
            io.Image.Output("edited_image", display_name="image"),
            io.Mask.Output("edit_mask", display_name="mask",
                           tooltip="The region the edit could change (LocalBlend / DiffEdit mask; all white "
                           "without one, black when nothing was edited)."),
        ])

    @classmethod
    def execute(cls, model, clip, vae, image: torch.Tensor, source_prompt: str, target_prompt: str, method: str,
                steps: int, cfg: float, source_cfg: float, skip: int, controller: str, cross_replace: float,
                self_replace: float, blend_threshold: float, prompt_mode: str, seed: int,
                blend_source_words: str = "", blend_target_words: str = "", official: bool = False) -> io.NodeOutput:
        settings = EditSettings(
            method=method, steps=steps, guidance=cfg, source_guidance=source_cfg, skip=skip, controller=controller,
            cross_replace=cross_replace, self_replace=self_replace,
            blend_words=blend_words(blend_source_words, blend_target_words), blend_threshold=blend_threshold,
            prompt_mode=prompt_mode, max_chunks=LLMGA_MAX_CHUNKS, seed=seed, official=official,
        )
        sampled_mask = official and method == "ddpm_inversion"
        with reported_as("LLMGA Inversion Edit"):
            settings.check()
            if clip is None:
                raise ValueError("no CLIP connected; the checkpoint may lack a text encoder")
            check_sd15_model(model)
            binding = ComfyCLIPBinding(clip)
        text = TextBinding(binding.tokenize, binding.encode, binding.bos, binding.eos, binding.pad)
        padded, size = pad_to_latent_multiple(image[..., :3])
        latent_hw = (padded.shape[1] // 8, padded.shape[2] // 8)
        count = image.shape[0]
        progress = comfy.utils.ProgressBar(count)
        images, masks, report = [], [], []
        for index in range(count):
            def on_step(done: int, total: int, index: int = index) -> None:
                comfy.model_management.throw_exception_if_processing_interrupted()
                progress.update_absolute(index * total + done, count * total)

            with reported_as("LLMGA Inversion Edit"):
                comfy.model_management.load_models_gpu(
                    [model], memory_required=model.memory_required([4, 4, *latent_hw]))
                x0, x0_std = encode_with_std(vae, padded[index : index + 1], model.model.latent_format)
                if sampled_mask and x0_std is None:
                    logger.warning("LLMGA Inversion Edit: the VAE encoded in tiles, so the DiffEdit mask starts from "
                                   "the posterior mean instead of samples")
                result = edit_latent(x0.to(model.load_device), source_prompt, target_prompt, text=text,
                                     controlled_eps=lambda control: comfy_controlled_eps(model, control),
                                     settings=settings, on_step=on_step,
                                     x0_std=x0_std.to(model.load_device) if sampled_mask and x0_std is not None
                                     else None)
            if result.unchanged:
                images.append(image[index : index + 1])
                masks.append(torch.zeros(1, *image.shape[1:3]))
                report = ["target equals source: the image is returned unchanged"]
                continue
            decoded = vae.decode(model.model.latent_format.process_out(result.latent.cpu()))
            images.append(decoded[:, : size[0], : size[1], :3].to(image.dtype).cpu())
            masks.append(latent_mask_to_image(result.mask.cpu(), size))
            report = [f"{method}{' (official)' if official else ''}: {steps} steps"] + result.warnings
        for message in report[1:]:
            logger.warning("LLMGA Inversion Edit: %s", message)
        return io.NodeOutput(torch.cat(images), torch.cat(masks), ui=ui.PreviewText("\n".join(report)))
