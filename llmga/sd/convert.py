"""Rename Stable Diffusion 1.x and SDXL weights from the diffusers layout to the original single-file (LDM / SGM)
layout.

Every converter takes a diffusers state dict (name -> tensor) and returns a new dict keyed as in the
original CompVis / Stability / lllyasviel files, without their outer prefix (`model.diffusion_model.`,
`first_stage_model.`, `cond_stage_model.`, `conditioner.embedders.N.`, `control_model.`). Tensors are passed
through unchanged except the VAE attention projections, which the original layout stores as 1x1 convolutions,
and SDXL's OpenCLIP text encoder, whose attention projections are stacked and whose text projection is
transposed. A key that no rule covers raises `KeyError` rather than being dropped, so a layout this module does
not know (class labels, other embeddings, …) fails loudly.

The renaming is driven by a table from diffusers module prefixes (`down_blocks.0.resnets.1`) to LDM
module prefixes (`input_blocks.2.0`), built from the model config, plus per-module tables that rename the
first part of what follows the prefix (`norm1` -> `in_layers.0`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

StateDict = dict[str, Tensor]
Renames = Mapping[str, str]
# diffusers module prefix -> (LDM module prefix, renames for the part after the prefix)
Table = dict[str, tuple[str, Renames]]

_SAME: Renames = {}
_UNET_RESNET: Renames = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET: Renames = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION: Renames = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_DEFAULT_HINT_CHANNELS = (16, 32, 96, 256)  # diffusers ControlNetModel.conditioning_embedding_out_channels


# --- applying a table ---------------------------------------------------------------------------------


def _rename_key(key: str, table: Table) -> str:
    """Map one diffusers key through the longest matching module prefix in `table`."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in table:
            target, renames = table[head]
            rest = ".".join(parts[cut:])
            for old, new in renames.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old) :]
                    break
            return f"{target}.{rest}"
    raise KeyError(f"no original-layout name for diffusers key {key!r}")


def _apply(sd: Mapping[str, Tensor], table: Table) -> StateDict:
    return {_rename_key(key, table): value for key, value in sd.items()}


# --- UNet and ControlNet ------------------------------------------------------------------------------


def _layers_per_block(config: Mapping[str, Any]) -> list[int]:
    """Resnets per down level (SD1.x configs give one int for all levels; diffusers also takes one per level)."""
    layers = config["layers_per_block"]
    return list(layers) if isinstance(layers, (list, tuple)) else [layers] * len(config["block_out_channels"])


def _encoder_table(config: Mapping[str, Any]) -> tuple[Table, int]:
    """Rules for the time embedding, `conv_in`, the down blocks and the mid block (shared by UNet and
    ControlNet); also returns the number of LDM `input_blocks`."""
    table: Table = {
        "time_embedding.linear_1": ("time_embed.0", _SAME),
        "time_embedding.linear_2": ("time_embed.2", _SAME),
        "conv_in": ("input_blocks.0.0", _SAME),
        "mid_block.resnets.0": ("middle_block.0", _UNET_RESNET),
        "mid_block.attentions.0": ("middle_block.1", _SAME),
        "mid_block.resnets.1": ("middle_block.2", _UNET_RESNET),
    }
    if config.get("addition_embed_type") == "text_time":  # SDXL's pooled-text-and-size embedding, LDM's label_emb
        table["add_embedding.linear_1"] = ("label_emb.0.0", _SAME)
        table["add_embedding.linear_2"] = ("label_emb.0.2", _SAME)
    layers = _layers_per_block(config)
    index = 1
    for level, count in enumerate(layers):
        for layer in range(count):
            table[f"down_blocks.{level}.resnets.{layer}"] = (f"input_blocks.{index}.0", _UNET_RESNET)
            table[f"down_blocks.{level}.attentions.{layer}"] = (f"input_blocks.{index}.1", _SAME)
            index += 1
        if level < len(layers) - 1:  # every level but the deepest ends with a downsampler
            table[f"down_blocks.{level}.downsamplers.0.conv"] = (f"input_blocks.{index}.0.op", _SAME)
            index += 1
    return table, index


def _decoder_table(config: Mapping[str, Any]) -> Table:
    """Rules for the UNet up blocks and output head. Up level `i` mirrors down level `n-1-i` with one
    extra resnet; its upsampler follows the attention in the last LDM output block when there is one."""
    table: Table = {"conv_norm_out": ("out.0", _SAME), "conv_out": ("out.2", _SAME)}
    layers = _layers_per_block(config)[::-1]
    index = 0
    for level, (count, block_type) in enumerate(zip(layers, config["up_block_types"], strict=True)):
        for layer in range(count + 1):
            table[f"up_blocks.{level}.resnets.{layer}"] = (f"output_blocks.{index}.0", _UNET_RESNET)
            table[f"up_blocks.{level}.attentions.{layer}"] = (f"output_blocks.{index}.1", _SAME)
            index += 1
        if level < len(layers) - 1:
            slot = 2 if "Attn" in block_type else 1
            table[f"up_blocks.{level}.upsamplers.0.conv"] = (f"output_blocks.{index - 1}.{slot}.conv", _SAME)
    return table


def unet_diffusers_to_ldm(sd: Mapping[str, Tensor], config: Mapping[str, Any]) -> StateDict:
    """diffusers `UNet2DConditionModel` state dict + its config (`block_out_channels`, `layers_per_block`,
    `up_block_types`) -> original UNet keys without `model.diffusion_model.` (`time_embed.0.weight`,
    `input_blocks.1.1.proj_in.weight`, `middle_block.2.…`, `output_blocks.…`, `out.2.weight`; SDXL's
    `label_emb.0.0.weight`). Transformer blocks keep their inner names, so any depth per block converts."""
    table, _ = _encoder_table(config)
    table.update(_decoder_table(config))
    return _apply(sd, table)


def controlnet_diffusers_to_ldm(sd: Mapping[str, Tensor], config: Mapping[str, Any]) -> StateDict:
    """diffusers `ControlNetModel` state dict + its config -> original ControlNet keys without
    `control_model.` (`input_blocks…`, `middle_block…`, `zero_convs.N.0.weight`,
    `input_hint_block.{0,2,…}.weight`, `middle_block_out.0.weight`)."""
    table, inputs = _encoder_table(config)
    for index in range(inputs):
        table[f"controlnet_down_blocks.{index}"] = (f"zero_convs.{index}.0", _SAME)
    table["controlnet_mid_block"] = ("middle_block_out.0", _SAME)

    # The hint encoder is a flat Sequential of convs with SiLUs between them: conv_in, then two convs
    # per channel step, then conv_out; the convs sit at the even indices.
    hint_channels = config.get("conditioning_embedding_out_channels", _DEFAULT_HINT_CHANNELS)
    hint_blocks = 2 * (len(hint_channels) - 1)
    table["controlnet_cond_embedding.conv_in"] = ("input_hint_block.0", _SAME)
    for block in range(hint_blocks):
        table[f"controlnet_cond_embedding.blocks.{block}"] = (f"input_hint_block.{2 * (block + 1)}", _SAME)
    table["controlnet_cond_embedding.conv_out"] = (f"input_hint_block.{2 * (hint_blocks + 1)}", _SAME)
    return _apply(sd, table)


# --- VAE ----------------------------------------------------------------------------------------------


def _child_indices(sd: Mapping[str, Tensor], prefix: str) -> range:
    """`range(n)` where `n - 1` is the largest integer that directly follows `prefix` in a key of `sd`."""
    found = {int(key[len(prefix) :].split(".", 1)[0]) for key in sd if key.startswith(prefix)}
    return range(max(found, default=-1) + 1)


def vae_diffusers_to_ldm(sd: Mapping[str, Tensor]) -> StateDict:
    """diffusers `AutoencoderKL` state dict -> original VAE keys without `first_stage_model.`
    (`encoder.down.0.block.0…`, `encoder.mid.attn_1.q.weight` as `[C, C, 1, 1]`, `quant_conv…`,
    `decoder.up.N…`). Block counts are read from the keys; decoder up levels are numbered in reverse
    (diffusers `up_blocks.0` is the deepest level, LDM `up.0` the shallowest)."""
    table: Table = {"quant_conv": ("quant_conv", _SAME), "post_quant_conv": ("post_quant_conv", _SAME)}
    for part in ("encoder", "decoder"):
        table[f"{part}.conv_in"] = (f"{part}.conv_in", _SAME)
        table[f"{part}.conv_norm_out"] = (f"{part}.norm_out", _SAME)
        table[f"{part}.conv_out"] = (f"{part}.conv_out", _SAME)
        table[f"{part}.mid_block.resnets.0"] = (f"{part}.mid.block_1", _VAE_RESNET)
        table[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", _VAE_ATTENTION)
        table[f"{part}.mid_block.resnets.1"] = (f"{part}.mid.block_2", _VAE_RESNET)

    for level in _child_indices(sd, "encoder.down_blocks."):
        for layer in _child_indices(sd, f"encoder.down_blocks.{level}.resnets."):
            table[f"encoder.down_blocks.{level}.resnets.{layer}"] = (f"encoder.down.{level}.block.{layer}", _VAE_RESNET)
        table[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = (f"encoder.down.{level}.downsample.conv", _SAME)

    up_levels = _child_indices(sd, "decoder.up_blocks.")
    for level in up_levels:
        ldm_level = len(up_levels) - 1 - level
        for layer in _child_indices(sd, f"decoder.up_blocks.{level}.resnets."):
            table[f"decoder.up_blocks.{level}.resnets.{layer}"] = (f"decoder.up.{ldm_level}.block.{layer}", _VAE_RESNET)
        table[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = (f"decoder.up.{ldm_level}.upsample.conv", _SAME)

    # The only 2-D weights in the VAE are the mid-block attention projections, which LDM keeps as 1x1 convs.
    return {key: value[:, :, None, None] if value.ndim == 2 else value for key, value in _apply(sd, table).items()}


# --- text encoders and whole checkpoints ------------------------------------------------------------------

# transformers CLIP encoder layer -> OpenCLIP residual block (the attention input projections are stacked apart)
_OPEN_CLIP_LAYER: Renames = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj")  # stacked in this order into OpenCLIP's in_proj


def text_encoder_diffusers_to_ldm(sd: Mapping[str, Tensor]) -> StateDict:
    """transformers `CLIPTextModel` state dict (keys with or without the `text_model.` prefix) -> original
    keys without `cond_stage_model.` (`transformer.text_model.encoder.layers.0.…`)."""
    return {"transformer.text_model." + key.removeprefix("text_model."): value for key, value in sd.items()}


def text_encoder_diffusers_to_open_clip(sd: Mapping[str, Tensor]) -> StateDict:
    """transformers `CLIPTextModelWithProjection` state dict (SDXL's `text_encoder_2`, OpenCLIP ViT-bigG; keys with
    or without `text_model.`) -> OpenCLIP text-tower keys as SDXL single files hold them after
    `conditioner.embedders.1.model.`: `token_embedding.weight`, `positional_embedding`,
    `transformer.resblocks.N.attn.in_proj_weight` ([3*width, width], q, k, v stacked) and `in_proj_bias`,
    `…attn.out_proj`, `…ln_1`, `…ln_2`, `…mlp.c_fc`, `…mlp.c_proj`, `ln_final`, and `text_projection`
    ([width, projection], the transpose of the Linear weight). The `position_ids` buffer is dropped."""
    out: StateDict = {}
    stacked: dict[str, dict[str, Tensor]] = {}
    for key, value in sd.items():
        name = key.removeprefix("text_model.")
        if name.endswith("position_ids"):
            continue
        if name == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif name == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif name.startswith("final_layer_norm."):
            out["ln_final." + name.removeprefix("final_layer_norm.")] = value
        elif name == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif name.startswith("encoder.layers."):
            layer, _, rest = name.removeprefix("encoder.layers.").partition(".")
            block = f"transformer.resblocks.{layer}"
            module, _, parameter = rest.rpartition(".")
            if module.startswith("self_attn.") and module.removeprefix("self_attn.") in _ATTENTION_INPUTS:
                stacked.setdefault(f"{block}.attn.in_proj_{parameter}", {})[module.removeprefix("self_attn.")] = value
            else:
                out[f"{block}.{_rename_open_clip(rest)}"] = value
        else:
            raise KeyError(f"no OpenCLIP name for text encoder key {key!r}")
    for target, parts in stacked.items():
        if set(parts) != set(_ATTENTION_INPUTS):
            raise KeyError(f"{target}: the text encoder holds only {sorted(parts)} of q_proj, k_proj, v_proj")
        out[target] = torch.cat([parts[name] for name in _ATTENTION_INPUTS])
    return out


def _rename_open_clip(rest: str) -> str:
    """`self_attn.out_proj.weight` -> `attn.out_proj.weight`, `mlp.fc1.bias` -> `mlp.c_fc.bias`, …"""
    for old, new in _OPEN_CLIP_LAYER.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise KeyError(f"no OpenCLIP name for text encoder layer weight {rest!r}")


def _single_file(parts: tuple[tuple[str, StateDict], ...]) -> StateDict:
    return {prefix + key: value for prefix, sd in parts for key, value in sd.items()}


def sd15_single_file_state_dict(
    unet_sd: Mapping[str, Tensor],
    unet_config: Mapping[str, Any],
    vae_sd: Mapping[str, Tensor],
    text_encoder_sd: Mapping[str, Tensor],
) -> StateDict:
    """Assemble an SD1.5 single-file checkpoint (`model.diffusion_model.*`, `first_stage_model.*`,
    `cond_stage_model.*`) from the diffusers UNet (+ config), VAE and CLIP text encoder state dicts."""
    return _single_file((
        ("model.diffusion_model.", unet_diffusers_to_ldm(unet_sd, unet_config)),
        ("first_stage_model.", vae_diffusers_to_ldm(vae_sd)),
        ("cond_stage_model.", text_encoder_diffusers_to_ldm(text_encoder_sd)),
    ))


def sdxl_single_file_state_dict(
    unet_sd: Mapping[str, Tensor],
    unet_config: Mapping[str, Any],
    vae_sd: Mapping[str, Tensor],
    text_encoder_sd: Mapping[str, Tensor],
    text_encoder_2_sd: Mapping[str, Tensor],
) -> StateDict:
    """Assemble an SDXL single-file checkpoint in Stability's layout (`model.diffusion_model.*`,
    `first_stage_model.*`, `conditioner.embedders.0.transformer.text_model.*` for CLIP ViT-L and
    `conditioner.embedders.1.model.*` for OpenCLIP ViT-bigG) from the diffusers UNet (+ config), VAE and the two
    text encoders' state dicts."""
    return _single_file((
        ("model.diffusion_model.", unet_diffusers_to_ldm(unet_sd, unet_config)),
        ("first_stage_model.", vae_diffusers_to_ldm(vae_sd)),
        ("conditioner.embedders.0.", text_encoder_diffusers_to_ldm(text_encoder_sd)),
        ("conditioner.embedders.1.model.", text_encoder_diffusers_to_open_clip(text_encoder_2_sd)),
    ))
