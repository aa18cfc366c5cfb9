"""Host tests of the DiffRIR nodes in a real ComfyUI with the tiny DiffRIR fixture (its prior network, the CPEN, has
the released width, so the prior of a large picture takes seconds on a CPU, as the released one does), and with the
weights a short run of the GAN training stage writes."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from training_support import diffrir_gan_config, reset_accelerate, write_diffrir_gan_inputs

from llmga.hub import DIFFRIR_FILE
from training.diffrir_gan import train as train_gan_stage

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


def test_cancel_during_the_prior_stops_within_a_second(comfy, host_diffrir):
    """2048² is the smallest picture whose prior (the CPEN over the whole picture) takes several seconds on the build
    machine's CPU (2-4 s; it starts 0.5-1 s into the node, after the padded input is gathered, and the node starts
    ~0.5 s into the run, after its inputs are made); Cancel 2.5 s into the run lands in the prior, before the first
    tile, and must stop it within 1 s (it took 11.9 s on 4096² when the prior ran in one piece)."""
    side = 2048
    graph = restore_graph(host_diffrir.name)
    graph["2"] = {"class_type": "EmptyImage", "inputs": {"width": side, "height": side, "batch_size": 1,
                                                         "color": 0x4080C0}}
    graph["3"] = {"class_type": "EmptyImage", "inputs": {"width": side, "height": side, "batch_size": 1,
                                                         "color": 0xC08040}}
    graph["5"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": side, "height": side}}
    del graph["4"]
    kinds = comfy.cancel(comfy.queue(graph), after=2.5, what="the restore (in its prior)", within=1)
    assert "execution_interrupted" in kinds


def test_an_unknown_dtype_is_an_error_that_names_the_choices(comfy, host_diffrir, pictures):
    message = comfy.expect_error(restore_graph(host_diffrir.name, dtype="fp64"))["exception_message"].strip()
    assert message == "LLMGA Load DiffRIR: dtype 'fp64' is not one of auto, bf16, fp16, fp32"


@pytest.mark.parametrize(("value", "note"), [
    (0.0, "the mask marks no pixel to restore: the output is the reference unchanged (paint the generated region "
          "white)"),
    (1.0, "the mask covers the whole picture: no pixel of the reference is kept, so DiffRIR has nothing to match the "
          "generated picture to (mask only the generated region)"),
])
def test_an_empty_or_full_mask_is_said_on_the_node(comfy, host_diffrir, pictures, value, note):
    reference = pictures[0]
    graph = restore_graph(host_diffrir.name)
    graph["5"] = {"class_type": "SolidMask", "inputs": {"value": value, "width": 72, "height": 40}}
    outputs = comfy.run(graph)
    passes = 0 if value == 0.0 else 1
    assert outputs["6"]["text"][0].splitlines() == [f"{passes} network pass{'es' * (passes != 1)}", note]
    assert f"LLMGA DiffRIR Restore: {note}" in comfy.log()
    if value == 0.0:
        assert np.array_equal(saved(comfy, outputs, "7"), reference)


def test_a_partial_mask_gets_the_summary_alone(comfy, host_diffrir, pictures):
    outputs = comfy.run(restore_graph(host_diffrir.name, tile_size=32))
    assert outputs["6"]["text"][0].splitlines() == [f"{outputs['6']['text'][0].split()[0]} network passes"]
    assert int(outputs["6"]["text"][0].split()[0]) > 1


@pytest.fixture(scope="module")
def gan_stage_diffrir(comfy_base_dir: Path, host_diffrir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The net_g file of a 3-step GAN-stage run from the tiny S1 / S2 inputs of the trainer tests, copied into the
    server's models/diffrir."""
    root = tmp_path_factory.mktemp("diffrir_gan_host")
    inputs = write_diffrir_gan_inputs(root / "inputs")
    reset_accelerate()
    try:
        result = train_gan_stage(diffrir_gan_config(inputs, root / "run", max_train_steps=3))
    finally:
        reset_accelerate()
    return Path(shutil.copyfile(result.weights, host_diffrir.parent / "llmga_gan_stage_net_g.pth"))


def test_the_gan_stage_s_weights_restore_through_the_nodes(comfy, gan_stage_diffrir, pictures):
    """Issue 18: the file the GAN stage writes loads in LLMGA Load DiffRIR (strictly) and LLMGA DiffRIR Restore
    changes the masked region of the generated picture, at its size, keeping the reference outside the mask."""
    reference, generated, mask = pictures
    out = saved(comfy, comfy.run(restore_graph(gan_stage_diffrir.name)), "7")
    assert out.shape == generated.shape
    inside = mask > 0
    assert not np.array_equal(out[inside], generated[inside])
    assert np.array_equal(out[~inside], reference[~inside])
