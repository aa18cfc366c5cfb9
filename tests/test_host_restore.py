"""Host tests of the DiffRIR nodes in a real ComfyUI with the tiny DiffRIR fixture."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from llmga.hub import DIFFRIR_FILE

pytestmark = pytest.mark.host


def saved(comfy, outputs: dict, node: str) -> np.ndarray:
    (entry,) = outputs[node]["images"]
    return np.asarray(Image.open(io.BytesIO(comfy.view(entry))))


@pytest.fixture(scope="module")
def pictures(comfy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """reference.png (exact 8-bit noise), generated.png (other noise) and mask.png (white box), 72x40."""
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (40, 72, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, (40, 72, 3), dtype=np.uint8)
    mask = np.zeros((40, 72), dtype=np.uint8)
    mask[8:30, 20:60] = 255
    for name, array in (("reference", reference), ("generated", generated), ("mask", mask)):
        Image.fromarray(array).save(comfy.input_dir / f"llmga_restore_{name}.png")
    return reference, generated, mask


def restore_graph(model: str, dtype: str = "fp32", **settings) -> dict:
    inputs = {"diffrir": ["1", 0], "generated": ["3", 0], "reference": ["2", 0], "mask": ["5", 0], "seed": 7,
              "tile_size": 0, "dilate": 0, "feather": 0}
    inputs.update(settings)
    return {
        "1": {"class_type": "LLMGALoadDiffRIR", "inputs": {"model": model, "dtype": dtype}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "llmga_restore_reference.png"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "llmga_restore_generated.png"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "llmga_restore_mask.png"}},
        "5": {"class_type": "ImageToMask", "inputs": {"image": ["4", 0], "channel": "red"}},
        "6": {"class_type": "LLMGADiffRIRRestore", "inputs": inputs},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "llmga_restore"}},
    }


def test_restore_nodes_schema(comfy, host_diffrir):
    info = comfy.object_info()
    loader, restore = info["LLMGALoadDiffRIR"], info["LLMGADiffRIRRestore"]
    options = loader["input"]["required"]["model"][1]["options"]
    assert options[0] == DIFFRIR_FILE and host_diffrir.name in options
    assert "Google Drive" in loader["input"]["required"]["model"][1]["tooltip"]
    assert restore["output"] == ["IMAGE"]
    assert list(restore["input"]["required"]) == ["diffrir", "generated", "reference", "mask", "seed", "tile_size",
                                                  "dilate", "feather"]


def test_restore_changes_only_the_masked_region(comfy, host_diffrir, pictures):
    reference, generated, mask = pictures
    out = saved(comfy, comfy.run(restore_graph(host_diffrir.name)), "7")
    assert out.shape == reference.shape
    outside = mask == 0
    assert np.array_equal(out[outside], reference[outside])
    assert not np.array_equal(out[~outside], reference[~outside])
    again = saved(comfy, comfy.run(restore_graph(host_diffrir.name, seed=7, feather=0, dilate=0)), "7")
    assert np.array_equal(out, again)  # seeded


def test_auto_precision_is_fp32(comfy, host_diffrir, pictures):
    """dtype auto is fp32 on every device (llmga.devices' rule for DiffRIR, the official inference precision): its
    result equals fp32's bit for bit, while another precision changes pixels. (On a GPU host the old rule, fp16 on
    CUDA, fails the first assertion; on the CPU both rules give fp32.)"""
    fp32 = saved(comfy, comfy.run(restore_graph(host_diffrir.name)), "7")
    auto = saved(comfy, comfy.run(restore_graph(host_diffrir.name, dtype="auto")), "7")
    bf16 = saved(comfy, comfy.run(restore_graph(host_diffrir.name, dtype="bf16")), "7")
    assert np.array_equal(auto, fp32)
    assert not np.array_equal(bf16, fp32)


def test_tiled_restore_keeps_the_unmasked_pixels_too(comfy, host_diffrir, pictures):
    reference, _, mask = pictures
    out = saved(comfy, comfy.run(restore_graph(host_diffrir.name, tile_size=32)), "7")
    assert np.array_equal(out[mask == 0], reference[mask == 0])


def test_missing_weights_explain_where_to_get_them(comfy):
    message = comfy.expect_error(restore_graph(DIFFRIR_FILE))["exception_message"]
    assert message.startswith("LLMGA Load DiffRIR: ")
    assert "https://github.com/Zj-BinXia/DiffRIR" in message and "diffrir" in message


def test_mask_of_another_size_is_refused(comfy, host_diffrir, pictures):
    graph = restore_graph(host_diffrir.name)
    graph["5"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    message = comfy.expect_error(graph)["exception_message"]
    assert message.startswith("LLMGA DiffRIR Restore: ") and "64" in message and "72" in message


def test_cancel_stops_a_large_tiled_restore(comfy, host_diffrir, pictures):
    graph = restore_graph(host_diffrir.name, tile_size=64)
    for node, image in (("8", ["2", 0]), ("9", ["3", 0]), ("10", ["4", 0])):
        graph[node] = {"class_type": "ImageScale", "inputs": {"image": image, "upscale_method": "nearest-exact",
                                                              "width": 2048, "height": 2048, "crop": "disabled"}}
    graph["6"]["inputs"].update(reference=["8", 0], generated=["9", 0])
    graph["5"]["inputs"]["image"] = ["10", 0]
    assert "execution_interrupted" in comfy.cancel(comfy.queue(graph), after=1.0, what="the restore")
