"""The training mask mixes and generators, which live in the library (`llmga.masks`) since the evaluation draws
masks too; re-exported here for the training code."""

from llmga.masks import (
    DIFFRIR_MASKS,
    KINDS,
    MIXES,
    MLLM_MASKS,
    SD_INPAINT_MASKS,
    BandSpec,
    BoxSpec,
    MaskDraw,
    MaskGenerator,
    MaskMix,
    StrokeSpec,
    _band_fraction,
    _draw_thick_segment,
    box_mask,
    draw_mask,
    irregular_mask,
    outpaint_mask,
)

__all__ = [
    "DIFFRIR_MASKS",
    "KINDS",
    "MIXES",
    "MLLM_MASKS",
    "SD_INPAINT_MASKS",
    "BandSpec",
    "BoxSpec",
    "MaskDraw",
    "MaskGenerator",
    "MaskMix",
    "StrokeSpec",
    "_band_fraction",
    "_draw_thick_segment",
    "box_mask",
    "draw_mask",
    "irregular_mask",
    "outpaint_mask",
]
