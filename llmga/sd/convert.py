"""Rename Stable Diffusion 1.x weights from the diffusers layout to the original single-file (LDM) layout.

Every converter takes a diffusers state dict (name -> tensor) and returns a new dict keyed as in the
original CompVis / lllyasviel files, without their outer prefix (`model.diffusion_model.`,
`first_stage_model.`, `cond_stage_model.`, `control_model.`). Tensors are passed through unchanged except
the VAE attention projections, which the original layout stores as 1x1 convolutions. A key that no rule
covers raises `KeyError` rather than being dropped, so a layout this module does not know (SDXL
embeddings, class labels, …) fails loudly.

The renaming is driven by a table from diffusers module prefixes (`down_blocks.0.resnets.1`) to LDM
module prefixes (`input_blocks.2.0`), built from the model config, plus per-module tables that rename the
first part of what follows the prefix (`norm1` -> `in_layers.0`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
    `input_blocks.1.1.proj_in.weight`, `middle_block.2.…`, `output_blocks.…`, `out.2.weight`)."""
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


# --- text encoder and whole checkpoint -------------------------------------------------------------------


def text_encoder_diffusers_to_ldm(sd: Mapping[str, Tensor]) -> StateDict:
    """transformers `CLIPTextModel` state dict (keys with or without the `text_model.` prefix) -> original
    keys without `cond_stage_model.` (`transformer.text_model.encoder.layers.0.…`)."""
    return {"transformer.text_model." + key.removeprefix("text_model."): value for key, value in sd.items()}


def sd15_single_file_state_dict(
    unet_sd: Mapping[str, Tensor],
    unet_config: Mapping[str, Any],
    vae_sd: Mapping[str, Tensor],
    text_encoder_sd: Mapping[str, Tensor],
) -> StateDict:
    """Assemble an SD1.5 single-file checkpoint (`model.diffusion_model.*`, `first_stage_model.*`,
    `cond_stage_model.*`) from the diffusers UNet (+ config), VAE and CLIP text encoder state dicts."""
    parts = (
        ("model.diffusion_model.", unet_diffusers_to_ldm(unet_sd, unet_config)),
        ("first_stage_model.", vae_diffusers_to_ldm(vae_sd)),
        ("cond_stage_model.", text_encoder_diffusers_to_ldm(text_encoder_sd)),
    )
    return {prefix + key: value for prefix, sd in parts for key, value in sd.items()}
