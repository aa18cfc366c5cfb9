"""Attention-hook bindings: diffusers processors under a controller match stock attention and see every layer."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from llmga.edit.attention import AttentionControl, EmptyControl, merge_heads, split_heads
from llmga.edit.diffusers_attention import attention_control, place_of, unet_eps


def small_unet(dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """Three attention levels (factors 1, 2, 4) down and up plus the mid block, like SD1.5 at a smaller width."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
    )
    unet.set_attn_processor(AttnProcessor2_0())
    return unet.to(dtype).eval()


class PassThrough(AttentionControl):
    """Asks for every layer's probabilities and returns them unchanged; records what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, str, int, tuple[int, ...]]] = []

    def needs_probs(self, is_cross: bool, num_queries: int, place: str) -> bool:
        return True

    def edit_probs(self, probs: torch.Tensor, is_cross: bool, place: str, heads: int) -> torch.Tensor:
        self.seen.append((is_cross, place, self.downsample_factor(probs.shape[1]), tuple(probs.shape)))
        return probs


class ZeroTargetCross(AttentionControl):
    """Replaces the target's conditional cross-attention by uniform attention (an edit that must show)."""

    def needs_probs(self, is_cross: bool, num_queries: int, place: str) -> bool:
        return is_cross

    def edit_probs(self, probs: torch.Tensor, is_cross: bool, place: str, heads: int) -> torch.Tensor:
        out = probs.clone()
        out[-heads:] = 1.0 / probs.shape[-1]
        return out


def inputs(dtype: torch.dtype, h: int = 16, w: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(4, 4, h, w, generator=g).to(dtype)
    context = torch.randn(4, 7, 32, generator=g).to(dtype)
    return latents, context


def stock_and_controlled(control: AttentionControl, t: int,
                         dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The small UNet's eps on `inputs(dtype)` at t: stock, then with its attention routed through `control`."""
    unet = small_unet(dtype)
    latents, context = inputs(dtype)
    eps = unet_eps(unet)
    stock = eps(latents, t, context)
    control.begin_edit(1, (16, 16))
    with attention_control(unet, control):
        return stock, eps(latents, t, context)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_explicit_probabilities_reproduce_stock_attention(dtype: torch.dtype) -> None:
    control = PassThrough()
    stock, controlled = stock_and_controlled(control, 500, dtype)
    assert len(control.seen) == 2 * 10  # 10 transformer blocks (3 down, 1 mid, 2 per up level), self + cross each
    assert (controlled - stock).abs().max().item() <= 1e-5


def test_inactive_or_empty_control_is_bit_identical_and_processors_are_restored() -> None:
    unet = small_unet()
    latents, context = inputs(torch.float32, 16, 24)
    eps = unet_eps(unet)
    stock = eps(latents, 300, context)
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    for control in (PassThrough(), EmptyControl()):
        if isinstance(control, EmptyControl):
            control.begin_edit(1, (16, 24))
        with attention_control(unet, control):
            assert torch.equal(eps(latents, 300, context), stock)
        assert {name: type(p) for name, p in unet.attn_processors.items()} == before


def test_controller_sees_each_layer_with_its_place_factor_and_layout() -> None:
    unet = small_unet()
    latents, context = inputs(torch.float32, 16, 24)
    control = PassThrough()
    control.begin_edit(1, (16, 24))
    with attention_control(unet, control):
        unet_eps(unet)(latents, 10, context)
    heads = 32 // 4  # diffusers reads attention_head_dim as heads for the first block
    places = [(is_cross, place, factor) for is_cross, place, factor, _ in control.seen]
    assert places == [
        (False, "down", 1), (True, "down", 1), (False, "down", 2), (True, "down", 2), (False, "down", 4),
        (True, "down", 4), (False, "mid", 4), (True, "mid", 4),
        *[(is_cross, "up", factor) for factor in (4, 2, 1) for _ in range(2) for is_cross in (False, True)],
    ]
    first_self, first_cross = control.seen[0][3], control.seen[1][3]
    assert first_self[1:] == (16 * 24, 16 * 24) and first_cross[1:] == (16 * 24, 7)
    assert first_self[0] % 4 == 0 and first_self[0] // 4 in (heads, 4, 8)


def test_a_controller_edit_changes_only_the_target_row() -> None:
    stock, edited = stock_and_controlled(ZeroTargetCross(), 700)
    assert (edited[:3] - stock[:3]).abs().max().item() <= 1e-5
    assert (edited[3] - stock[3]).abs().max().item() > 1e-4


def test_head_split_is_batch_major_and_invertible() -> None:
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2, 3, 8)
    heads = split_heads(x, 4)
    assert heads.shape == (8, 3, 2)
    assert torch.equal(heads[1 * 4 + 2], x[1, :, 4:6])  # row b·heads + h holds head h of batch item b
    assert torch.equal(merge_heads(heads, 4), x)


def test_place_of_rejects_unknown_processor_names() -> None:
    assert place_of("mid_block.attentions.0.transformer_blocks.0.attn1.processor") == "mid"
    with pytest.raises(ValueError, match="not in a down, mid or up block"):
        place_of("conv_in")
