"""llmga.sd.convert: diffusers -> original layout, checked by converting back with diffusers' own
(independent) original -> diffusers converters on tiny random models."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_controlnet_checkpoint,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel

from llmga.sd.convert import (
    controlnet_diffusers_to_ldm,
    sd15_single_file_state_dict,
    text_encoder_diffusers_to_ldm,
    unet_diffusers_to_ldm,
    vae_diffusers_to_ldm,
)

CROSS, DOWN, UP, CROSS_UP = "CrossAttnDownBlock2D", "DownBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"

UNET_SHAPES = {
    # SD1.5's block pattern, two levels.
    "sd15-like": dict(block_out_channels=(8, 16), layers_per_block=1, down_block_types=(CROSS, DOWN)),
    # Inpainting input, three levels, two resnets per level.
    "inpaint-9ch": dict(
        in_channels=9, block_out_channels=(8, 8, 16), layers_per_block=2, down_block_types=(CROSS,) * 3
    ),
    # Four levels, attention on alternate levels; more than ten input/output blocks.
    "deep-mixed": dict(
        block_out_channels=(8, 16, 16, 32), layers_per_block=2, down_block_types=(CROSS, DOWN, CROSS, DOWN)
    ),
}


def _up_types(down_types: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(CROSS_UP if t == CROSS else UP for t in reversed(down_types))


def _tiny_unet(shape: dict) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        cross_attention_dim=12,
        attention_head_dim=2,
        norm_num_groups=4,
        up_block_types=_up_types(shape["down_block_types"]),
        **shape,
    )


def _tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=2,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=16,
    )


def _tiny_clip() -> CLIPTextModel:
    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=64
    )
    return CLIPTextModel(config)


def _prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in sd.items()}


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].shape == value.shape, key
        assert torch.equal(actual[key], value), key


@pytest.mark.parametrize("name", UNET_SHAPES)
def test_unet_round_trip(name: str) -> None:
    unet = _tiny_unet(UNET_SHAPES[name])
    sd = unet.state_dict()
    ldm = unet_diffusers_to_ldm(sd, unet.config)
    assert len(ldm) == len(sd)
    back = convert_ldm_unet_checkpoint(_prefixed("model.diffusion_model.", ldm), dict(unet.config))
    _assert_same(back, sd)


def test_layers_per_block_given_per_level_converts_as_one_number() -> None:
    """diffusers takes layers_per_block as one number or one per level; both spell the same UNet."""
    unet = _tiny_unet(UNET_SHAPES["deep-mixed"])
    per_level = {**unet.config, "layers_per_block": [2, 2, 2, 2]}
    assert unet_diffusers_to_ldm(unet.state_dict(), per_level).keys() == \
        unet_diffusers_to_ldm(unet.state_dict(), unet.config).keys()


def test_unet_original_key_names() -> None:
    unet = _tiny_unet(UNET_SHAPES["inpaint-9ch"])
    ldm = unet_diffusers_to_ldm(unet.state_dict(), unet.config)
    assert ldm["input_blocks.0.0.weight"].shape[1] == 9
    for key in (
        "time_embed.0.weight",
        "time_embed.2.bias",
        "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.1.proj_in.weight",
        "input_blocks.3.0.op.weight",  # level 0: two resnets (1, 2), then the downsampler
        "input_blocks.7.0.skip_connection.weight",  # 8 -> 16 channels at level 2
        "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        "middle_block.2.out_layers.3.weight",
        "output_blocks.2.2.conv.weight",  # upsampler after the attention of a cross-attention up level
        "output_blocks.8.1.proj_out.weight",
        "out.0.weight",
        "out.2.weight",
    ):
        assert key in ldm, key


def test_unet_upsampler_follows_resnet_without_attention() -> None:
    unet = _tiny_unet(UNET_SHAPES["sd15-like"])
    ldm = unet_diffusers_to_ldm(unet.state_dict(), unet.config)
    assert "output_blocks.1.1.conv.weight" in ldm
    assert not any(key.startswith("output_blocks.1.2.") for key in ldm)


def test_unknown_key_is_an_error() -> None:
    unet = _tiny_unet(UNET_SHAPES["sd15-like"])
    sd = {**unet.state_dict(), "add_embedding.linear_1.weight": torch.zeros(1)}
    with pytest.raises(KeyError, match="add_embedding"):
        unet_diffusers_to_ldm(sd, unet.config)


def test_controlnet_round_trip() -> None:
    unet = _tiny_unet(UNET_SHAPES["deep-mixed"])
    torch.manual_seed(1)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 16))
    sd = controlnet.state_dict()
    ldm = controlnet_diffusers_to_ldm(sd, controlnet.config)
    assert {"zero_convs.11.0.weight", "middle_block_out.0.bias", "input_hint_block.14.weight"} <= set(ldm)
    assert not any(key.startswith("zero_convs.12.") for key in ldm)
    back = convert_controlnet_checkpoint(_prefixed("control_model.", ldm), dict(controlnet.config))
    _assert_same(back, sd)


def test_vae_round_trip() -> None:
    vae = _tiny_vae()
    sd = vae.state_dict()
    ldm = vae_diffusers_to_ldm(sd)
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    assert ldm["decoder.mid.attn_1.proj_out.weight"].shape == (16, 16, 1, 1)
    # diffusers up_blocks.0 is the deepest decoder level: no upsampler on LDM up.0, 16 -> 8 shortcut on up.0.
    assert "decoder.up.0.block.0.nin_shortcut.weight" in ldm
    assert "decoder.up.2.upsample.conv.weight" in ldm and "decoder.up.0.upsample.conv.weight" not in ldm
    back = convert_ldm_vae_checkpoint(_prefixed("first_stage_model.", ldm), dict(vae.config))
    _assert_same(back, sd)


def test_text_encoder_accepts_either_prefix() -> None:
    sd = _tiny_clip().state_dict()
    bare = {key.removeprefix("text_model."): value for key, value in sd.items()}
    prefixed = {"text_model." + key: value for key, value in bare.items()}
    ldm = text_encoder_diffusers_to_ldm(bare)
    assert ldm == text_encoder_diffusers_to_ldm(prefixed)
    assert "transformer.text_model.encoder.layers.1.mlp.fc2.weight" in ldm
    back = convert_ldm_clip_checkpoint(_prefixed("cond_stage_model.", ldm))
    _assert_same(back, prefixed)


def test_single_file_round_trip() -> None:
    unet, vae, clip = _tiny_unet(UNET_SHAPES["sd15-like"]), _tiny_vae(), _tiny_clip()
    unet_sd, vae_sd, clip_sd = unet.state_dict(), vae.state_dict(), clip.state_dict()
    checkpoint = sd15_single_file_state_dict(unet_sd, unet.config, vae_sd, clip_sd)
    assert len(checkpoint) == len(unet_sd) + len(vae_sd) + len(clip_sd)
    assert {key.split(".")[0] for key in checkpoint} == {"model", "first_stage_model", "cond_stage_model"}
    _assert_same(convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)), unet_sd)
    _assert_same(convert_ldm_vae_checkpoint(checkpoint, dict(vae.config)), vae_sd)
    clip_back = convert_ldm_clip_checkpoint(checkpoint)
    _assert_same(clip_back, {"text_model." + key.removeprefix("text_model."): v for key, v in clip_sd.items()})
