"""A test-only ComfyUI node pack, linked into the test server beside comfyui-llmga: it writes what a graph
produced (CONDITIONING tensors) to the output folder, where host tests read it to compare numbers."""

from __future__ import annotations

import os
import sys

import folder_paths
import torch
from safetensors.torch import save_file

PACK_FOLDER = "comfyui-llmga"  # the name the host tests link the pack under (scripts/comfyui_host.py PACK_NAME)


def pack_module(submodule: str):
    """A module of the loaded pack; ComfyUI registers a custom-node folder under its path (dots escaped)."""
    for name in list(sys.modules):
        if name.endswith(os.sep + PACK_FOLDER) and f"{name}.{submodule}" in sys.modules:
            return sys.modules[f"{name}.{submodule}"]
    raise RuntimeError(f"the {PACK_FOLDER} pack is not loaded")


class SaveConditioningForTest:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",), "name": ("STRING", {"default": "cond"})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def save(self, conditioning, name):
        cond, extra = conditioning[0]
        tensors = {"cond": cond.float().contiguous()}
        if extra.get("pooled_output") is not None:
            tensors["pooled"] = extra["pooled_output"].float().contiguous()
        save_file(tensors, os.path.join(folder_paths.get_output_directory(), f"{name}.safetensors"))
        return {"ui": {"text": (name,)}}


class EditAttentionParityForTest:
    """Runs the pack's ComfyUI attention binding (nodes/edit.py) on a MODEL: the stock UNet output, the output with a
    pass-through controller that takes every layer through explicit probabilities, and with a controller that makes
    the target's conditional cross-attention uniform; saves all three."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "name": ("STRING", {"default": "parity"})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, model, name):
        import comfy.model_management

        edit = pack_module("nodes.edit")
        attention = pack_module("llmga.edit.attention")

        class PassThrough(attention.AttentionControl):
            layers = 0

            def needs_probs(self, is_cross, num_queries, place):
                return True

            def edit_probs(self, probs, is_cross, place, heads):
                PassThrough.layers += 1
                return probs

        class UniformTargetCross(attention.AttentionControl):
            def needs_probs(self, is_cross, num_queries, place):
                return is_cross

            def edit_probs(self, probs, is_cross, place, heads):
                probs = probs.clone()
                probs[-heads:] = 1.0 / probs.shape[-1]
                return probs

        comfy.model_management.load_models_gpu([model])
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn(3, 4, 8, 12, generator=generator)
        context = torch.randn(3, 154, 768, generator=generator)
        outputs = {}
        for label, control in (("stock", None), ("pass", PassThrough()), ("uniform", UniformTargetCross())):
            if control is not None:
                control.begin_edit(1, (8, 12))
            with edit.comfy_controlled_eps(model, control) as eps:
                outputs[label] = eps(latents, 500, context).float().contiguous()
        save_file(outputs, os.path.join(folder_paths.get_output_directory(), f"{name}.safetensors"))
        return {"ui": {"text": (str(PassThrough.layers),)}}


class EditPosteriorForTest:
    """Runs the pack's `encode_with_std` (nodes/edit.py) on an image and, independently, the VAE's encoder and
    quant_conv by hand; saves the pack's (x0, std) and the hand-made (mean, logvar), all at the latent scale."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("VAE",), "model": ("MODEL",), "image": ("IMAGE",),
                             "name": ("STRING", {"default": "posterior"})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, vae, model, image, name):
        import comfy.model_management

        edit = pack_module("nodes.edit")
        latent_format = model.model.latent_format
        x0, std = edit.encode_with_std(vae, image[:1, :, :, :3], latent_format)
        comfy.model_management.load_models_gpu([vae.patcher])
        pixels = (image[:1, :, :, :3].movedim(-1, 1) * 2 - 1).to(vae.device, vae.vae_dtype)
        first_stage = vae.first_stage_model
        with torch.no_grad():
            moments = first_stage.quant_conv(first_stage.encoder(pixels)).float().cpu()
        mean, logvar = moments.chunk(2, dim=1)
        mean = (mean * latent_format.scale_factor).contiguous()
        tensors = {"x0": x0.contiguous(), "std": std.contiguous(), "mean": mean, "logvar": logvar.contiguous()}
        save_file(tensors, os.path.join(folder_paths.get_output_directory(), f"{name}.safetensors"))
        return {"ui": {"text": (name,)}}


NODE_CLASS_MAPPINGS = {"LLMGATestSaveConditioning": SaveConditioningForTest,
                       "LLMGATestEditAttentionParity": EditAttentionParityForTest,
                       "LLMGATestEditPosterior": EditPosteriorForTest}
