"""DiffRIR nodes: load the reference-based restoration network and restore SD's inpainted/outpainted region.

The network and its inference are `llmga.restore`; these nodes pick the file from the `diffrir` model folder, hand
the network to ComfyUI's model management (so it is offloaded when SD needs the memory), and convert types.
"""

from __future__ import annotations

import logging
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..llmga.devices import device_and_dtype
from ..llmga.hub import DIFFRIR_DOWNLOAD, DIFFRIR_FILE
from ..llmga.restore.checkpoint import load_diffrir
from ..llmga.restore.inference import restore_image
from ..llmga.restore.region import mask_notes
from .errors import reported_as
from .managed_model import ManagedModel
from .model_folders import model_folders
from .schema import pack_schema

logger = logging.getLogger("comfyui-llmga")
DiffRIRType = io.Custom("LLMGA_DIFFRIR")
WEIGHT_SUFFIXES = (".pth", ".safetensors")


def diffrir_choices() -> list[str]:
    """The expected file name first (always listed, so the shipped workflows stay valid before it is downloaded),
    then every weight file in the `diffrir` folders, as names relative to their folder."""
    files = [name for name in folder_paths.get_filename_list("diffrir") if name.lower().endswith(WEIGHT_SUFFIXES)]
    return [DIFFRIR_FILE] + [name for name in files if name != DIFFRIR_FILE]


class LoadDiffRIR(io.ComfyNode):
    """Load DiffRIR, the reference-based restoration network that removes the texture, brightness and contrast seams
    SD leaves after inpainting and outpainting."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return pack_schema(cls, "LLMGALoadDiffRIR", "LLMGA Load DiffRIR", "loaders", inputs=[
            io.Combo.Input("model", options=diffrir_choices(),
                           tooltip="A DiffRIR S2 weight file (.pth with params_ema, or .safetensors) in "
                           "models/diffrir. " + DIFFRIR_DOWNLOAD.format(folders="models/diffrir/.")),
            io.Combo.Input("dtype", options=["auto", "fp32", "fp16", "bf16"], default="auto",
                           tooltip="auto: fp32, as the official inference runs (a small network)."),
        ], outputs=[DiffRIRType.Output("diffrir", display_name="diffrir")])

    @classmethod
    def execute(cls, model: str, dtype: str) -> io.NodeOutput:
        with reported_as("LLMGA Load DiffRIR"):
            path = folder_paths.get_full_path("diffrir", model)
            if path is None:
                folders = ", ".join(str(folder) for folder in model_folders("diffrir"))
                raise FileNotFoundError(f"{model!r} is not in {folders}. " + DIFFRIR_DOWNLOAD.format(folders=folders))
            load_device, precision = device_and_dtype("diffrir", "auto", dtype, default_device=mm.get_torch_device())
            network = load_diffrir(Path(path), device="cpu", dtype=precision)
        return io.NodeOutput(ManagedModel(network, network, load_device))


class DiffRIRRestore(io.ComfyNode):
    """Restore the generated region of an inpainted/outpainted image so its texture, brightness and contrast match
    the kept pixels of the original (the reference). Pixels outside the mask stay exactly the reference's. The node
    text says how many network passes ran, and warns when the mask marks no pixel or every pixel."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return pack_schema(cls, "LLMGADiffRIRRestore", "LLMGA DiffRIR Restore", "image", inputs=[
            DiffRIRType.Input("diffrir", tooltip="From LLMGA Load DiffRIR."),
            io.Image.Input("generated", tooltip="SD's result (e.g. VAE Decode after inpainting/outpainting)."),
            io.Image.Input("reference", tooltip="The original picture (the outpaint canvas for outpainting); only "
                           "its pixels outside the mask are used."),
            io.Mask.Input("mask", tooltip="1 (white) where SD generated new content, same size as the images."),
            io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                         tooltip="Seed of the prior's starting noise (the official code draws it at random)."),
            io.Int.Input("tile_size", default=0, min=0, max=8192, step=32,
                         tooltip="0: automatic (the whole image when it fits in memory, else tiles). Otherwise "
                         "the tile side in pixels (a multiple of 32); the prior is shared by all tiles."),
            io.Int.Input("dilate", default=0, min=0, max=256,
                         tooltip="Grow the region handed to the network by this many pixels (0 = official)."),
            io.Int.Input("feather", default=0, min=0, max=256,
                         tooltip="Blend the restored region into the reference over this many pixels (0 = "
                         "official hard edge)."),
        ], outputs=[io.Image.Output("image", display_name="image")])

    @classmethod
    def execute(cls, diffrir: ManagedModel[torch.nn.Module], generated: torch.Tensor, reference: torch.Tensor,
                mask: torch.Tensor, seed: int, tile_size: int, dilate: int, feather: int) -> io.NodeOutput:
        progress = comfy.utils.ProgressBar(1)
        passes = [0]

        def on_tile(done: int, total: int) -> None:
            passes[0] = total
            progress.update_absolute(done, total)

        with reported_as("LLMGA DiffRIR Restore"):
            diffrir.load()
            # Polled between short steps of the prior and of every tile, so Cancel stops the run within a second.
            restored = restore_image(diffrir.model, generated, reference, mask, seed=seed, tile=tile_size or None,
                                     dilate=dilate, feather=feather, on_tile=on_tile,
                                     check=mm.throw_exception_if_processing_interrupted)
            notes = mask_notes(mask)
        for note in notes:
            logger.warning("LLMGA DiffRIR Restore: %s", note)
        summary = f"{passes[0]} network pass{'es' * (passes[0] != 1)}"
        return io.NodeOutput(restored.to(generated.dtype).cpu(), ui=ui.PreviewText("\n".join([summary, *notes])))
