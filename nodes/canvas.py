"""Nodes that prepare an outpainting canvas and paste an inpainting result back onto its original."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

from ..llmga.sd.canvas import outpaint_canvas, paste_back, paste_back_notes
from .errors import reported_as
from .schema import pack_schema

logger = logging.getLogger("comfyui-llmga")
MAX_PIXELS = 4096


def _padding_input(side: str) -> io.Int.Input:
    return io.Int.Input(side, default=0, min=0, max=MAX_PIXELS, step=8,
                        tooltip=f"Pixels of new area to add on the {side}.")


def _feathering_input(tooltip: str) -> io.Int.Input:
    """A width in pixels over which the seam blends (0 = a hard edge)."""
    return io.Int.Input("feathering", default=0, min=0, max=MAX_PIXELS, step=1, tooltip=tooltip)


class OutpaintCanvas(io.ComfyNode):
    """Pad an image for outpainting: new area filled with gray, a mask of 1 over it, width and height rounded up to
    multiples of 8 for SD1.5. Feed both to LLMGA Chat (outpaint task) and to InpaintModelConditioning."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return pack_schema(cls, "LLMGAOutpaintCanvas", "LLMGA Outpaint Canvas", "image", inputs=[
            io.Image.Input("image", tooltip="The picture to extend."),
            _padding_input("left"),
            _padding_input("top"),
            _padding_input("right"),
            _padding_input("bottom"),
            _feathering_input("Pixels of the original, along each padded side, that are partly repainted (the mask "
                              "fades from near 1 at the seam to 0) so the seam blends. 0: a hard edge, as in the "
                              "official LLMGA outpainting."),
        ], outputs=[
            io.Image.Output("canvas", display_name="canvas",
                            tooltip="The image on its larger canvas; the new area is 0.5 gray. Extra pixels for "
                            "the multiple of 8 go right/bottom, or left/top when only those sides are padded."),
            io.Mask.Output("mask", display_name="mask",
                           tooltip="1 on the new area, 0 on the original (ramping near the seam when feathered)."),
        ])

    @classmethod
    def execute(cls, image: torch.Tensor, left: int, top: int, right: int, bottom: int,
                feathering: int) -> io.NodeOutput:
        with reported_as("LLMGA Outpaint Canvas"):
            canvas, mask = outpaint_canvas(image, left, top, right, bottom, feathering=feathering)
        return io.NodeOutput(canvas, mask)


class PasteBack(io.ComfyNode):
    """Composite an inpainted or outpainted result onto the original: pixels outside the mask stay exactly the
    original's (undoing the VAE's small changes there), pixels inside come from the generated image. The node text
    warns when the mask is all 0 or all 1 (the paste then changes nothing, or keeps nothing of the original)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return pack_schema(cls, "LLMGAPasteBack", "LLMGA Paste Back", "image", inputs=[
            io.Image.Input("original", tooltip="The image that was inpainted (for outpainting: the canvas)."),
            io.Image.Input("generated", tooltip="The decoded result, the same size as the original; a batch of "
                           "results is pasted onto one original."),
            io.Mask.Input("mask", tooltip="The mask used for the generation: 1 takes the generated pixel, 0 keeps "
                          "the original pixel bit for bit, values between blend."),
            _feathering_input("Pixels inside the masked region, along its border, over which the generated image "
                              "fades in; unmasked pixels stay exact. Use 0 when the original holds no content under "
                              "the mask (e.g. an outpaint canvas's gray)."),
        ], outputs=[
            io.Image.Output("image", display_name="image",
                            tooltip="The original with the generated pixels pasted in."),
        ])

    @classmethod
    def execute(cls, original: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor,
                feathering: int) -> io.NodeOutput:
        with reported_as("LLMGA Paste Back"):
            image = paste_back(original, generated, mask, feathering=feathering)
            notes = paste_back_notes(mask)
        for note in notes:
            logger.warning("LLMGA Paste Back: %s", note)
        summary = f"pasted {image.shape[0]} image{'s' * (image.shape[0] != 1)}"
        return io.NodeOutput(image, ui=ui.PreviewText("\n".join([summary, *notes])))
