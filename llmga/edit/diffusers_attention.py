"""diffusers binding of the attention hook: P2P attention processors on a `UNet2DConditionModel`, and its eps.

`attention_control(unet, control)` swaps every attention processor (32 in SD1.5: 16 transformer blocks × self and
cross) for a `ControlledAttnProcessor` while the block runs and puts the original processors back afterwards. The
processor computes q, k, v exactly as diffusers' `AttnProcessor2_0` and hands the attention itself to
`llmga.edit.attention.controlled_attention`; layers the controller does not touch keep using SDPA.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .attention import AttentionControl, controlled_attention, sdpa_attention
from .inversion import EpsFn


def place_of(processor_name: str) -> str:
    """'down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor' -> 'down' (also 'mid', 'up')."""
    for prefix, place in (("down_blocks", "down"), ("mid_block", "mid"), ("up_blocks", "up")):
        if processor_name.startswith(prefix):
            return place
    raise ValueError(f"attention processor {processor_name!r} is not in a down, mid or up block of the UNet")


class ControlledAttnProcessor:
    """`AttnProcessor2_0` with the attention itself routed through a controller."""

    def __init__(self, control: AttentionControl, place: str, fallback) -> None:
        self.control = control
        self.place = place
        self.fallback = fallback

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        if attention_mask is not None or attn.norm_q is not None or attn.norm_k is not None:
            # SD1.5 uses none of these; anything that does is not a model P2P was written for.
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        is_cross = encoder_hidden_states is not None
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        hidden_states = controlled_attention(
            query, key, value, attn.heads, is_cross=is_cross, place=self.place, control=self.control,
            fast=sdpa_attention,
        ).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def attention_control(unet, control: AttentionControl) -> Iterator[None]:
    """Route every attention layer of `unet` through `control` inside the block; restore the processors after."""
    original = unet.attn_processors
    unet.set_attn_processor(
        {name: ControlledAttnProcessor(control, place_of(name), processor) for name, processor in original.items()}
    )
    try:
        yield
    finally:
        unet.set_attn_processor(original)


def unet_eps(unet) -> EpsFn:
    """eps(latents [B,4,h,w], t, context [B,T,768]) -> [B,4,h,w] from a diffusers UNet, in the UNet's dtype."""

    def eps(latents: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = unet(latents.to(unet.dtype), t, encoder_hidden_states=context.to(unet.dtype)).sample
        return out.to(latents.dtype)

    return eps
