"""LLMGA Load SD1.5 and LLMGA Load SDXL: a model of the family (the released LLMGA diffusers folders, any diffusers
folder or single-file checkpoint of the family) as ComfyUI's native MODEL, CLIP and VAE."""

from __future__ import annotations

from pathlib import Path

import comfy.latent_formats
import comfy.sd
import folder_paths
from comfy_api.latest import io

from ..llmga.hub import HUB_OWNER, RELEASED_SD, RELEASED_SD15, RELEASED_SDXL, model_entry, released_name, resolve_model
from ..llmga.sd.loading import SD15, SDXL, SDFamily, SDLoadError, check_single_file, read_folder
from .errors import reported_as
from .model_folders import model_folders
from .schema import pack_schema

# Where a released model sits inside a diffusers folder (llmga.hub.find_local); such a copy is offered under its
# released name only, so a workflow that names it works before and after the download.
RELEASED_COPIES = {copy for name in RELEASED_SD for copy in (name, f"{HUB_OWNER}--{name}", f"{HUB_OWNER}/{name}")}
# What ComfyUI must have made of a model of each family (its latent format), and the diffusers pipeline to try it in.
LATENT_FORMATS = {SD15.kind: comfy.latent_formats.SD15, SDXL.kind: comfy.latent_formats.SDXL}
PIPELINES = {SD15.kind: "StableDiffusionPipeline", SDXL.kind: "StableDiffusionXLPipeline"}


def diffusers_folder_names() -> list[str]:
    """Folders under the `diffusers` model folders (one or two levels deep) that hold model_index.json, as paths
    relative to their model folder ("tiny-sd15", "binxia/llmga-sd15-t2i-v2")."""
    names = set()
    for root in model_folders("diffusers"):
        if root.is_dir():
            for index in [*root.glob("*/model_index.json"), *root.glob("*/*/model_index.json")]:
                names.add(index.parent.relative_to(root).as_posix())
    return sorted(names)


def sd_model_choices(released: tuple[str, ...]) -> list[str]:
    """The `released` LLMGA models by name, then local diffusers folders, then single-file checkpoints."""
    local = [name for name in diffusers_folder_names() if name not in RELEASED_COPIES]
    return [f"{HUB_OWNER}/{name}" for name in released] + local + folder_paths.get_filename_list("checkpoints")


def _model_folder(name: str, allow_download: bool) -> Path | None:
    """The diffusers folder `name` stands for: a folder of the diffusers model folders (`model_entry`: no name leaves
    them) or a released model (downloaded when missing and allowed); None when `name` is neither."""
    entry = model_entry(name, model_folders("diffusers"), holding="model_index.json")
    if entry is not None:
        return entry
    if released_name(name) in RELEASED_SD:
        return resolve_model(name, model_folders("diffusers"), allow_download=allow_download, allow_paths=False)
    return None


def load_sd(name: str, family: SDFamily, allow_download: bool) -> tuple:
    """(MODEL, CLIP, VAE) of the model `name` from sd_model_choices(), which must be of `family`; any other name
    (from any client) is refused with the same error, whether or not such a path exists."""
    embeddings = folder_paths.get_folder_paths("embeddings")
    folder = _model_folder(name, allow_download)
    if folder is not None:
        loaded = comfy.sd.load_state_dict_guess_config(read_folder(folder, family), output_vae=True,
                                                       output_clip=True, embedding_directory=embeddings)
        where = folder
    else:
        # Only a file ComfyUI lists in its checkpoints folders (symlinks followed), never a path made from `name`.
        listed = name in folder_paths.get_filename_list("checkpoints")
        path = folder_paths.get_full_path("checkpoints", name) if listed else None
        if path is None:
            searched = [str(p) for p in model_folders("diffusers") + model_folders("checkpoints")]
            raise SDLoadError(f"{name!r} is neither a diffusers folder nor a checkpoint file in {searched}: refresh "
                              "the node list (press r) and choose again")
        check_single_file(path, family)
        loaded = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True,
                                                       embedding_directory=embeddings)
        where = path
    recognised = loaded is not None and loaded[1] is not None
    if not recognised or not isinstance(loaded[0].model.latent_format, LATENT_FORMATS[family.kind]):
        raise SDLoadError(f"ComfyUI did not recognise the {family.name} model in {where}: check that it loads with "
                          f"diffusers' {PIPELINES[family.kind]}")
    return loaded[:3]


class LoadSD15(io.ComfyNode):
    """Load an SD1.5 model as MODEL, CLIP and VAE: the released LLMGA SD1.5 models (downloaded on first use when
    allowed), a diffusers folder in models/diffusers or a checkpoint in models/checkpoints. The inpainting model has
    a 9-channel UNet: feed it with InpaintModelConditioning."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return pack_schema(cls, "LLMGALoadSD15", "LLMGA Load SD1.5", "loaders", inputs=[
            io.Combo.Input("model", options=sd_model_choices(RELEASED_SD15),
                           tooltip="binxia/… : a released LLMGA SD1.5 model, downloaded into models/diffusers "
                           "when missing; otherwise a diffusers folder (with model_index.json) from "
                           "models/diffusers or a single-file checkpoint from models/checkpoints."),
            io.Boolean.Input("allow_download", default=True,
                             tooltip="Download a released model that is not found locally. Off, or "
                             "HF_HUB_OFFLINE=1: only local files are used."),
        ], outputs=[
            io.Model.Output(tooltip="The SD1.5 UNet, for KSampler."),
            io.Clip.Output(tooltip="The CLIP ViT-L/14 text encoder, for LLMGA Long Prompt Encode or "
                           "CLIPTextEncode."),
            io.Vae.Output(tooltip="The VAE, for VAEDecode, VAEEncode and InpaintModelConditioning."),
        ])

    @classmethod
    def execute(cls, model: str, allow_download: bool) -> io.NodeOutput:
        with reported_as("LLMGA Load SD1.5"):
            loaded = load_sd(model, SD15, allow_download)
        return io.NodeOutput(*loaded)


class LoadSDXL(io.ComfyNode):
    """Load an SDXL base model as MODEL, CLIP and VAE: the released LLMGA SDXL models (downloaded on first use when
    allowed), a diffusers folder in models/diffusers or a checkpoint in models/checkpoints. llmga-sdxl-inpainting-v2
    has a 9-channel UNet: feed it with InpaintModelConditioning."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return pack_schema(cls, "LLMGALoadSDXL", "LLMGA Load SDXL", "loaders", inputs=[
            io.Combo.Input("model", options=sd_model_choices(RELEASED_SDXL),
                           tooltip="binxia/… : a released LLMGA SDXL model, downloaded into models/diffusers "
                           "when missing; otherwise an SDXL diffusers folder (with model_index.json) from "
                           "models/diffusers or an SDXL single-file checkpoint from models/checkpoints."),
            io.Boolean.Input("allow_download", default=True,
                             tooltip="Download a released model that is not found locally. Off, or "
                             "HF_HUB_OFFLINE=1: only local files are used."),
        ], outputs=[
            io.Model.Output(tooltip="The SDXL UNet, for KSampler."),
            io.Clip.Output(tooltip="Both SDXL text encoders (CLIP ViT-L and OpenCLIP ViT-bigG), for LLMGA Long "
                           "Prompt Encode (SDXL) or CLIPTextEncodeSDXL."),
            io.Vae.Output(tooltip="The SDXL VAE, for VAEDecode, VAEEncode and InpaintModelConditioning."),
        ])

    @classmethod
    def execute(cls, model: str, allow_download: bool) -> io.NodeOutput:
        with reported_as("LLMGA Load SDXL"):
            loaded = load_sd(model, SDXL, allow_download)
        return io.NodeOutput(*loaded)
