"""Instruction editing: DDIM inversion and Direct Inversion (later: P2P attention control, DDPM noise maps)."""

from .attention import AttentionControl, EmptyControl, controlled_attention
from .inversion import (
    EpsFn,
    StepCallback,
    alpha_at,
    ddim_inversion,
    ddim_sample,
    ddim_sample_step,
    ddim_timesteps,
    direct_inversion_edit,
    previous_timestep,
    sd15_alphas_cumprod,
)

__all__ = [
    "AttentionControl",
    "EmptyControl",
    "controlled_attention",
    "EpsFn",
    "StepCallback",
    "alpha_at",
    "ddim_inversion",
    "ddim_sample",
    "ddim_sample_step",
    "ddim_timesteps",
    "direct_inversion_edit",
    "previous_timestep",
    "sd15_alphas_cumprod",
]
