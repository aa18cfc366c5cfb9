"""Host tests of LLMGA Load SDXL in a real ComfyUI: the tiny SDXL diffusers folder and single file load as ComfyUI's
SDXL model and render alike through KSampler -> VAEDecode, the 9-channel folder inpaints through
InpaintModelConditioning, released names are offered, and every model of another kind (SD1.5 in the SDXL loader and
the reverse, an SDXL refiner, SD2, SD3, Flux) fails in one line that says what it is and what to load instead."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import workflow_api
from comfy_server import load_warnings
from PIL import Image

pytestmark = pytest.mark.host

RELEASED = ["binxia/llmga-sdxl-t2i", "binxia/llmga-sdxl-inpainting-v2"]
SDXL_LOADER = "the LLMGA SDXL loader takes SDXL folders such as llmga-sdxl-t2i and SDXL single-file checkpoints"
SD15_LOADER = "the LLMGA SD1.5 loader takes SD1.5 folders such as llmga-sd15-t2i-v2 and SD1.5 single-file checkpoints"
OTHER_SD = "LLMGA's SD models are SD1.5 and SDXL, so load this one with ComfyUI's own Load Checkpoint"


def loader(name: str, node: str = "LLMGALoadSDXL", allow_download: bool = False) -> dict:
    return {"class_type": node, "inputs": {"model": name, "allow_download": allow_download}}


def txt2img_graph(load: dict, width: int = 64, height: int = 48) -> dict:
    """`load` (node 1: MODEL, CLIP, VAE) -> CLIPTextEncode -> KSampler -> VAEDecode -> SaveImage (node 7)."""
    # SDXL's empty negative (force_zeros_for_empty_prompt), as LLMGA's SDXL CLIs run it: one encode per picture
    negative = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}}
    return workflow_api.txt2img_graph(load, negative, cfg=5.0, prefix="llmga_sdxl_loader", width=width,
                                      height=height)


def inpaint_graph(load: dict, picture: str) -> dict:
    """txt2img_graph with InpaintModelConditioning (node 12) on LoadImage `picture` and its alpha mask."""
    return workflow_api.with_inpaint_conditioning(txt2img_graph(load), picture)


def render(comfy, graph: dict) -> tuple[np.ndarray, str]:
    """The picture the graph saves, and what the server logged while it ran."""
    start = len(comfy.log())
    (entry,) = comfy.run(graph)["7"]["images"]
    return np.asarray(Image.open(io.BytesIO(comfy.view(entry))), dtype=np.int16), comfy.log()[start:]


def assert_same_picture(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to one 8-bit step: the same weights through the same ComfyUI code."""
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1
    assert expected.std() > 0  # a real picture, not a blank


def assert_loaded_as_sdxl(log: str) -> None:
    """ComfyUI built its SDXL model class and SDXL's two-encoder CLIP, with every weight in place."""
    assert "model_type EPS" in log
    assert "Requested to load SDXL\n" in log and "Requested to load SDXLClipModel" in log
    assert load_warnings(log) == []


@pytest.fixture
def linked_folder(comfy, sdxl_models):
    """Makes copies of a fixture folder (files linked) in the server's models/diffusers under a given name; removed
    afterwards."""
    made = []

    def make(source: Path, name: str) -> Path:
        folder = comfy.models_dir / "diffusers" / name
        made.append(folder)
        for file in source.rglob("*"):
            if file.is_file():
                link = folder / file.relative_to(source)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(file)
        return folder

    yield make
    for folder in made:
        shutil.rmtree(folder)


def test_schema_offers_released_sdxl_names_folders_and_checkpoints(comfy, sdxl_models):
    info = comfy.object_info()
    node = info["LLMGALoadSDXL"]
    assert node["category"] == "LLMGA/loaders" and node["display_name"] == "LLMGA Load SDXL"
    assert node["output"] == ["MODEL", "CLIP", "VAE"]
    assert list(node["input"]["required"]) == ["model", "allow_download"]
    options = node["input"]["required"]["model"][1]["options"]
    assert options[:2] == RELEASED
    for name in (sdxl_models.diffusers.name, sdxl_models.diffusers_inpainting.name, sdxl_models.checkpoint.name):
        assert name in options
    sd15_options = info["LLMGALoadSD15"]["input"]["required"]["model"][1]["options"]
    assert not set(RELEASED) & set(sd15_options) and not {"binxia/llmga-sd15-t2i-v2"} & set(options)


def test_folder_by_released_name_and_single_file_load_as_sdxl_and_render_alike(comfy, sdxl_models, linked_folder):
    """The t2i folder sits in models/diffusers as llmga-sdxl-t2i (a downloaded release): offered and loaded by its
    released name, it draws what its single-file twin draws. (The pack loads a single file with the call ComfyUI's
    CheckpointLoaderSimple makes, so a third render through that node would add time, not evidence.)"""
    linked_folder(sdxl_models.diffusers, "llmga-sdxl-t2i")
    options = comfy.object_info()["LLMGALoadSDXL"]["input"]["required"]["model"][1]["options"]
    assert RELEASED[0] in options and "llmga-sdxl-t2i" not in options
    folder, folder_log = render(comfy, txt2img_graph(loader(RELEASED[0])))
    single_file, file_log = render(comfy, txt2img_graph(loader(sdxl_models.checkpoint.name)))
    assert folder.shape == (48, 64, 3)
    assert_same_picture(folder, single_file)
    assert_loaded_as_sdxl(folder_log)
    assert_loaded_as_sdxl(file_log)


def test_inpainting_folder_works_with_inpaint_model_conditioning(comfy, sdxl_models):
    """The 9-channel folder by its folder name: ComfyUI builds its inpainting SDXL (a 4-channel build would leave
    the conv_in weights unloaded) and samples with InpaintModelConditioning's mask and masked picture."""
    picture = Image.new("RGBA", (64, 48), (200, 120, 40, 255))
    picture.paste((0, 0, 0, 0), (16, 12, 48, 36))  # transparent hole: LoadImage's mask is 1 there
    picture.save(comfy.input_dir / "llmga_sdxl_loader_inpaint.png")
    graph = inpaint_graph(loader(sdxl_models.diffusers_inpainting.name), "llmga_sdxl_loader_inpaint.png")
    inpainted, log = render(comfy, graph)
    assert inpainted.shape == (48, 64, 3) and inpainted.std() > 0
    assert_loaded_as_sdxl(log)


def test_released_name_offline_lists_the_folders_searched_and_the_files(comfy):
    message = comfy.expect_error(txt2img_graph(loader(RELEASED[1])))["exception_message"]
    assert message.startswith("LLMGA Load SDXL: binxia/llmga-sdxl-inpainting-v2 is not downloaded (downloads are off)")
    assert str(comfy.models_dir / "diffusers") in message and "text_encoder_2/, tokenizer/, tokenizer_2/" in message


WRONG_KINDS = [  # node, fixture set, attribute, what the model is, what to do
    ("LLMGALoadSDXL", "sd15_models", "diffusers", "an SD1.5 model", SDXL_LOADER,
     "it loads as SD1.5 (LLMGA Load SD1.5)"),
    ("LLMGALoadSDXL", "sd15_models", "checkpoint", "an SD1.5 model", SDXL_LOADER,
     "it loads as SD1.5 (LLMGA Load SD1.5)"),
    ("LLMGALoadSD15", "sdxl_models", "diffusers_inpainting", "an SDXL model", SD15_LOADER,
     "it loads as SDXL (LLMGA Load SDXL)"),
    ("LLMGALoadSD15", "sdxl_models", "checkpoint", "an SDXL model", SD15_LOADER, "it loads as SDXL (LLMGA Load SDXL)"),
    ("LLMGALoadSDXL", "sdxl_models", "refiner",
     "an SDXL refiner (it refines the latents of an SDXL base model; it does not draw from a prompt)", SDXL_LOADER,
     "load it with ComfyUI's Load Checkpoint to refine an SDXL base model's latents, and choose an SDXL base model "
     "such as llmga-sdxl-t2i here"),
    ("LLMGALoadSDXL", "sdxl_models", "sd2", "an SD2 model (OpenCLIP ViT-H text encoder)", SDXL_LOADER, OTHER_SD),
    ("LLMGALoadSDXL", "sdxl_models", "sd3", "an SD3 model (MMDiT)", SDXL_LOADER, OTHER_SD),
    ("LLMGALoadSDXL", "sdxl_models", "flux", "a Flux model", SDXL_LOADER, OTHER_SD),
]


@pytest.mark.parametrize("node, fixtures, model, what, takes, advice", WRONG_KINDS,
                         ids=[f"{node}-{model}" for node, _, model, *_ in WRONG_KINDS])
def test_a_model_of_another_kind_fails_in_one_line_saying_what_to_load(comfy, request, node, fixtures, model, what,
                                                                        takes, advice):
    path = getattr(request.getfixturevalue(fixtures), model)
    display = "LLMGA Load SDXL" if node == "LLMGALoadSDXL" else "LLMGA Load SD1.5"
    start = len(comfy.log())
    message = comfy.expect_error(txt2img_graph(loader(path.name, node)))["exception_message"]
    where = str(comfy.models_dir / ("diffusers" if path.is_dir() else "checkpoints") / path.name)
    assert message.rstrip("\n") == f"{display}: {where} is {what}; {takes}: {advice}"  # ComfyUI adds the newline
    assert "model weight dtype" not in comfy.log()[start:]  # refused before ComfyUI built anything
