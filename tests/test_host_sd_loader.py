"""Host tests of LLMGA Load SD1.5 in a real ComfyUI: diffusers folders render exactly like their single-file twins,
the 9-channel folder inpaints through InpaintModelConditioning, and broken models fail with a clear message."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import workflow_api
from comfy_server import load_warnings
from PIL import Image

pytestmark = pytest.mark.host

RELEASED = ["binxia/llmga-sd15-t2i-v2", "binxia/llmga-sd15-inpainting-v2"]


def loader(name: str, allow_download: bool = False) -> dict:
    return {"class_type": "LLMGALoadSD15", "inputs": {"model": name, "allow_download": allow_download}}


def checkpoint_loader(name: str) -> dict:
    return {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}}


def txt2img_graph(load: dict, width: int = 64, height: int = 48) -> dict:
    """`load` (node 1: MODEL, CLIP, VAE) -> CLIPTextEncode -> KSampler -> VAEDecode -> SaveImage (node 7)."""
    negative = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}}
    return workflow_api.txt2img_graph(load, negative, cfg=7.0, prefix="llmga_sd_loader", width=width, height=height)


def inpaint_graph(load: dict, picture: str) -> dict:
    """txt2img_graph with InpaintModelConditioning (node 12) on LoadImage `picture` and its alpha mask."""
    return workflow_api.with_inpaint_conditioning(txt2img_graph(load), picture)


def render(comfy, graph: dict) -> np.ndarray:
    (entry,) = comfy.run(graph)["7"]["images"]
    return np.asarray(Image.open(io.BytesIO(comfy.view(entry))), dtype=np.int16)


def assert_same_picture(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to one 8-bit step: the same weights through the same ComfyUI code."""
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1
    assert expected.std() > 0  # a real picture, not a blank


@pytest.fixture
def diffusers_copy(comfy, sd15_models):
    """Makes copies of tiny-sd15 (files linked) in the server's models/diffusers under a given name, for a test to
    break or rename; removed afterwards."""
    made = []

    def make(name: str) -> Path:
        folder = comfy.models_dir / "diffusers" / name
        made.append(folder)
        for file in sd15_models.diffusers.rglob("*"):
            if file.is_file():
                link = folder / file.relative_to(sd15_models.diffusers)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(file)
        return folder

    yield make
    for folder in made:
        shutil.rmtree(folder)


@pytest.fixture
def broken_folder(diffusers_copy) -> Path:
    return diffusers_copy("broken-sd15")


def replace_file(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def test_schema_offers_released_names_folders_and_checkpoints(comfy, sd15_models):
    info = comfy.object_info()["LLMGALoadSD15"]
    assert info["category"] == "LLMGA/loaders" and info["display_name"] == "LLMGA Load SD1.5"
    assert info["output"] == ["MODEL", "CLIP", "VAE"]
    assert list(info["input"]["required"]) == ["model", "allow_download"]
    options = info["input"]["required"]["model"][1]["options"]
    assert options[:2] == RELEASED
    for name in (sd15_models.diffusers.name, sd15_models.diffusers_inpainting.name, sd15_models.checkpoint.name):
        assert name in options


def test_released_name_offline_lists_the_folders_searched(comfy):
    message = comfy.expect_error(txt2img_graph(loader(RELEASED[0], allow_download=False)))["exception_message"]
    assert "binxia/llmga-sd15-t2i-v2 is not downloaded" in message
    assert str(comfy.models_dir / "diffusers") in message


def test_local_copy_of_a_released_model_is_offered_and_loaded_by_its_released_name(comfy, sd15_models,
                                                                                 diffusers_copy):
    diffusers_copy("llmga-sd15-t2i-v2")
    options = comfy.object_info()["LLMGALoadSD15"]["input"]["required"]["model"][1]["options"]
    assert RELEASED[0] in options and "llmga-sd15-t2i-v2" not in options
    released = render(comfy, txt2img_graph(loader(RELEASED[0], allow_download=False)))
    assert_same_picture(released, render(comfy, txt2img_graph(checkpoint_loader(sd15_models.checkpoint.name))))


def test_diffusers_folder_renders_like_its_single_file_twin(comfy, sd15_models):
    folder = render(comfy, txt2img_graph(loader(sd15_models.diffusers.name)))
    twin = render(comfy, txt2img_graph(checkpoint_loader(sd15_models.checkpoint.name)))
    single_file = render(comfy, txt2img_graph(loader(sd15_models.checkpoint.name)))
    assert folder.shape == (48, 64, 3)
    assert_same_picture(folder, twin)
    assert_same_picture(single_file, twin)
    log = comfy.log()
    assert "model_type EPS" in log
    assert load_warnings(log) == []


def test_inpainting_folder_works_with_inpaint_model_conditioning(comfy, sd15_models):
    picture = Image.new("RGBA", (64, 48), (200, 120, 40, 255))
    picture.paste((0, 0, 0, 0), (16, 12, 48, 36))  # transparent hole: LoadImage's mask is 1 there
    picture.save(comfy.input_dir / "llmga_sd_loader_inpaint.png")
    folder = render(comfy, inpaint_graph(loader(sd15_models.diffusers_inpainting.name), "llmga_sd_loader_inpaint.png"))
    twin = render(comfy, inpaint_graph(checkpoint_loader(sd15_models.checkpoint_inpainting.name),
                                       "llmga_sd_loader_inpaint.png"))
    assert folder.shape == (48, 64, 3)
    assert_same_picture(folder, twin)
    assert load_warnings(comfy.log()) == []


def test_truncated_weights_give_a_clear_error(comfy, broken_folder):
    weights = broken_folder / "unet" / "diffusion_pytorch_model.safetensors"
    replace_file(weights, weights.read_bytes()[:1_000_000])
    error = comfy.expect_error(txt2img_graph(loader(broken_folder.name)))
    message = error["exception_message"]
    assert message.startswith("LLMGA Load SD1.5: ")
    assert "unet/diffusion_pytorch_model.safetensors is truncated or not a safetensors file" in message
    assert "download the model again" in message


def test_sdxl_folder_is_refused_by_name(comfy, broken_folder):
    config = broken_folder / "unet" / "config.json"
    replace_file(config, json.dumps({**json.loads(config.read_text()), "addition_embed_type": "text_time",
                                     "cross_attention_dim": 2048}).encode())
    message = comfy.expect_error(txt2img_graph(loader(broken_folder.name)))["exception_message"]
    assert "is an SDXL model; the LLMGA SD1.5 loader takes SD1.5 folders such as llmga-sd15-t2i-v2" in message


def test_truncated_single_file_gives_a_clear_error(comfy, sd15_models):
    truncated = comfy.models_dir / "checkpoints" / "llmga-truncated.safetensors"
    with open(sd15_models.checkpoint, "rb") as source:
        truncated.write_bytes(source.read(10_000_000))
    try:
        message = comfy.expect_error(txt2img_graph(loader(truncated.name)))["exception_message"]
    finally:
        truncated.unlink()
    assert "llmga-truncated.safetensors is truncated or not a safetensors file" in message
