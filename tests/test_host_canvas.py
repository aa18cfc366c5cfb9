"""Host tests of the canvas nodes in a real ComfyUI: outpaint canvases and pasting SD1.5 results back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.host


def exact_picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """[H, W, 3] uint8 noise: every value survives ComfyUI's 8-bit load/save round trip exactly."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def saved(comfy, outputs: dict, node: str) -> np.ndarray:
    (entry,) = outputs[node]["images"]
    return np.asarray(Image.open(io.BytesIO(comfy.view(entry))))


def save_node(link: list, prefix: str) -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": link, "filename_prefix": prefix}}


def canvas_node(image: list, left: int, top: int, right: int, bottom: int, feathering: int) -> dict:
    return {"class_type": "LLMGAOutpaintCanvas", "inputs": {
        "image": image, "left": left, "top": top, "right": right, "bottom": bottom, "feathering": feathering}}


def paste_node(original: list, generated: list, mask: list, feathering: int) -> dict:
    return {"class_type": "LLMGAPasteBack", "inputs": {
        "original": original, "generated": generated, "mask": mask, "feathering": feathering}}


def inpaint_graph(ckpt: str, pixels: list, mask: list) -> dict:
    """Nodes 1-7: the tiny SD1.5 inpainting checkpoint, InpaintModelConditioning on `pixels`/`mask`, KSampler,
    VAEDecode (node 7)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a stone wall"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "5": {"class_type": "InpaintModelConditioning", "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "pixels": pixels, "mask": mask,
            "noise_mask": True}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["5", 0], "negative": ["5", 1], "latent_image": ["5", 2],
            "seed": 1, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
    }


def test_canvas_nodes_schema(comfy):
    info = comfy.object_info()
    canvas, paste = info["LLMGAOutpaintCanvas"], info["LLMGAPasteBack"]
    assert canvas["category"] == paste["category"] == "LLMGA/image"
    assert canvas["output"] == ["IMAGE", "MASK"] and paste["output"] == ["IMAGE"]
    assert list(canvas["input"]["required"]) == ["image", "left", "top", "right", "bottom", "feathering"]
    assert canvas["input"]["required"]["left"][1]["step"] == 8
    assert list(paste["input"]["required"]) == ["original", "generated", "mask", "feathering"]
    assert "bit for bit" in paste["input"]["required"]["mask"][1]["tooltip"]


def test_outpaint_canvas_grows_to_multiples_of_8_and_masks_the_new_area(comfy):
    picture = exact_picture(101, 77)
    Image.fromarray(picture).save(comfy.input_dir / "llmga_canvas.png")
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "llmga_canvas.png"}},
        "2": canvas_node(["1", 0], left=16, top=0, right=24, bottom=8, feathering=0),
        "3": save_node(["2", 0], "llmga_canvas"),
        "4": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 1]}},
        "5": save_node(["4", 0], "llmga_canvas_mask"),
    }
    outputs = comfy.run(graph)
    canvas, mask = saved(comfy, outputs, "3"), saved(comfy, outputs, "5")
    # 101 + 16 + 24 = 141 -> 144 (3 more on the right); 77 + 8 = 85 -> 88 (3 more at the bottom)
    assert canvas.shape == (88, 144, 3) and mask.shape[:2] == (88, 144)
    assert np.array_equal(canvas[0:77, 16:117], picture)
    new_area = np.ones((88, 144), dtype=bool)
    new_area[0:77, 16:117] = False
    assert (canvas[new_area] == 127).all()  # 0.5 gray, truncated to 8 bits by SaveImage
    assert (mask[new_area] == 255).all() and (mask[~new_area] == 0).all()


def test_inpainting_result_pasted_back_keeps_unmasked_pixels_exact(comfy, sd15_models):
    rgb = exact_picture(80, 64, seed=1)
    alpha = np.full((64, 80), 255, dtype=np.uint8)
    alpha[16:48, 20:60] = 0  # transparent hole: LoadImage's mask is 1 there
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(comfy.input_dir / "llmga_paste.png")
    graph = inpaint_graph(sd15_models.checkpoint_inpainting.name, pixels=["11", 0], mask=["11", 1])
    graph.update({
        "11": {"class_type": "LoadImage", "inputs": {"image": "llmga_paste.png"}},
        "12": paste_node(["11", 0], ["7", 0], ["11", 1], feathering=4),
        "13": save_node(["12", 0], "llmga_pasted"),
        "14": save_node(["7", 0], "llmga_decoded"),
    })
    outputs = comfy.run(graph)
    pasted, decoded = saved(comfy, outputs, "13"), saved(comfy, outputs, "14")
    assert pasted.shape == (64, 80, 3)
    keep = alpha == 255
    assert np.array_equal(pasted[keep], rgb[keep])
    assert not np.array_equal(decoded[keep], rgb[keep])  # the VAE changed them; paste back restored them
    assert np.array_equal(pasted[20:44, 24:56], decoded[20:44, 24:56])  # deeper than the 4-pixel band
    assert not np.array_equal(pasted[16:48, 20:60], rgb[16:48, 20:60])


def test_outpainting_graph_pastes_back_onto_the_canvas(comfy, sd15_models):
    picture = exact_picture(101, 77, seed=2)
    Image.fromarray(picture).save(comfy.input_dir / "llmga_outpaint.png")
    graph = inpaint_graph(sd15_models.checkpoint_inpainting.name, pixels=["12", 0], mask=["12", 1])
    graph.update({
        "11": {"class_type": "LoadImage", "inputs": {"image": "llmga_outpaint.png"}},
        "12": canvas_node(["11", 0], left=16, top=0, right=24, bottom=8, feathering=8),
        "13": paste_node(["12", 0], ["7", 0], ["12", 1], feathering=0),
        "14": save_node(["13", 0], "llmga_outpainted"),
        "15": save_node(["7", 0], "llmga_outpaint_decoded"),
    })
    outputs = comfy.run(graph)
    pasted, decoded = saved(comfy, outputs, "14"), saved(comfy, outputs, "15")
    assert pasted.shape == (88, 144, 3)
    # The original sits at rows 0:77, columns 16:117; the 8-pixel ramps run along its left, right and bottom.
    assert np.array_equal(pasted[0:69, 24:109], picture[0:69, 8:93])
    assert np.array_equal(pasted[:, 0:16], decoded[:, 0:16]) and np.array_equal(pasted[77:], decoded[77:])


def test_paste_back_reports_a_size_mismatch(comfy):
    Image.fromarray(exact_picture(40, 24)).save(comfy.input_dir / "llmga_small.png")
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "llmga_small.png"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "3": paste_node(["1", 0], ["2", 0], ["1", 1], feathering=0),
        "4": save_node(["3", 0], "llmga_mismatch"),
    }
    error = comfy.expect_error(graph)
    assert error["exception_type"] == "RuntimeError"  # as every pack node reports a library error
    assert error["exception_message"].startswith("LLMGA Paste Back: ")
    assert "the generated image is 64x64 but the original is 40x24" in error["exception_message"]


@pytest.mark.parametrize(("value", "note"), [
    (0.0, "the mask is all 0: the output is the original, the generated image is not used"),
    (1.0, "the mask is all 1: the output is the generated image, nothing of the original is kept"),
    (0.5, None),
])
def test_paste_back_says_when_its_mask_changes_nothing_or_keeps_nothing(comfy, value, note):
    """The node text (and the server log) says what an all-0 or all-1 mask does; a partial mask gets the summary
    alone."""
    original = exact_picture(40, 24, seed=3)
    Image.fromarray(original).save(comfy.input_dir / "llmga_paste_notes.png")
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "llmga_paste_notes.png"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": 1, "color": 0}},
        "3": {"class_type": "SolidMask", "inputs": {"value": value, "width": 40, "height": 24}},
        "4": paste_node(["1", 0], ["2", 0], ["3", 0], feathering=2),
        "5": save_node(["4", 0], "llmga_paste_notes"),
    }
    outputs = comfy.run(graph)
    assert outputs["4"]["text"][0].splitlines() == ["pasted 1 image", *([note] if note else [])]
    pasted = saved(comfy, outputs, "5")
    if value == 0.0:
        assert np.array_equal(pasted, original)
    if value == 1.0:
        assert (pasted == 0).all()
    if note:
        assert f"LLMGA Paste Back: {note}" in comfy.log()
