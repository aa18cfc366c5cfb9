"""Host tests of LLMGA Inversion Edit in a real ComfyUI with the tiny SD1.5 checkpoint."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.host

SOURCE = "a photo of a cat sitting on a wooden bench in a park, " * 6  # > 77 tokens: the long-prompt layout
TARGET = "a photo of a dog sitting on a wooden bench in a park, " * 6


def picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def saved(comfy, outputs: dict, node: str) -> np.ndarray:
    (entry,) = outputs[node]["images"]
    return np.asarray(Image.open(io.BytesIO(comfy.view(entry))))


def edit_graph(image_name: str, ckpt: str, **settings) -> dict:
    inputs = {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "image": ["2", 0], "source_prompt": SOURCE,
              "target_prompt": TARGET, "method": "direct_inversion_p2p", "steps": 3, "cfg": 7.5, "source_cfg": 3.5,
              "skip": 25, "controller": "refine", "cross_replace": 0.4, "self_replace": 0.6,
              "blend_source_words": "", "blend_target_words": "", "blend_threshold": 0.3, "prompt_mode": "llmga",
              "seed": 3}
    inputs.update(settings)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "3": {"class_type": "LLMGAInversionEdit", "inputs": inputs},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "llmga_edit"}},
        "5": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 1]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "llmga_edit_mask"}},
    }


@pytest.fixture(scope="module")
def edit_input(comfy) -> tuple[str, np.ndarray]:
    pixels = picture(61, 44)  # not multiples of 8: padded for the VAE and cropped back
    Image.fromarray(pixels).save(comfy.input_dir / "llmga_edit_in.png")
    return "llmga_edit_in.png", pixels


def test_comfy_attention_patches_reproduce_stock_attention(comfy, sd15_models):
    """The ComfyUI binding: explicit probabilities through a pass-through controller equal the MODEL's own attention
    (≤ 1e-5), every attention layer is routed, and an edit of the target's rows changes only the target."""
    from safetensors.torch import load_file

    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_models.checkpoint.name}},
             "2": {"class_type": "LLMGATestEditAttentionParity", "inputs": {"model": ["1", 0], "name": "parity"}}}
    outputs = comfy.run(graph)
    layers = int(outputs["2"]["text"][0])
    out = load_file(comfy.output_dir / "parity.safetensors")
    assert layers > 0 and layers % 2 == 0  # self and cross of every transformer block
    assert (out["pass"] - out["stock"]).abs().max().item() <= 1e-5
    assert (out["uniform"][:2] - out["stock"][:2]).abs().max().item() <= 1e-5
    assert (out["uniform"][2] - out["stock"][2]).abs().max().item() > 1e-4


def test_edit_node_schema(comfy):
    info = comfy.object_info()["LLMGAInversionEdit"]
    assert info["category"] == "LLMGA/edit"
    assert info["output"] == ["IMAGE", "MASK"]
    required = info["input"]["required"]
    assert required["method"][1]["options"] == ["direct_inversion_p2p", "ddpm_inversion"]
    assert required["method"][1]["default"] == "direct_inversion_p2p"
    assert all("tooltip" in spec[1] for spec in required.values())


@pytest.mark.parametrize("method", ["direct_inversion_p2p", "ddpm_inversion"])
def test_edit_runs_and_keeps_the_input_size(comfy, sd15_models, edit_input, method):
    name, pixels = edit_input
    settings = {"method": method}
    if method == "direct_inversion_p2p":
        settings.update(blend_source_words="cat", blend_target_words="dog")
    outputs = comfy.run(edit_graph(name, sd15_models.checkpoint.name, **settings))
    edited, mask = saved(comfy, outputs, "4"), saved(comfy, outputs, "6")
    assert edited.shape == pixels.shape
    assert mask.shape[:2] == pixels.shape[:2]
    assert not np.array_equal(edited, pixels)


def test_each_image_of_a_batch_is_edited(comfy, sd15_models, edit_input):
    name, pixels = edit_input
    graph = edit_graph(name, sd15_models.checkpoint.name, steps=2)
    graph["7"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 2}}
    graph["3"]["inputs"]["image"] = ["7", 0]
    outputs = comfy.run(graph)
    assert len(outputs["4"]["images"]) == 2 and len(outputs["6"]["images"]) == 2
    first, second = (np.asarray(Image.open(io.BytesIO(comfy.view(entry)))) for entry in outputs["4"]["images"])
    assert first.shape == second.shape == pixels.shape
    assert np.array_equal(first, second)  # same picture, same prompts: deterministic


def test_target_equal_to_source_returns_the_input_unchanged(comfy, sd15_models, edit_input):
    name, pixels = edit_input
    outputs = comfy.run(edit_graph(name, sd15_models.checkpoint.name, target_prompt="  " + SOURCE, steps=1000))
    assert np.array_equal(saved(comfy, outputs, "4"), pixels)
    assert saved(comfy, outputs, "6").max() == 0


@pytest.mark.parametrize(("settings", "expected"), [
    ({"target_prompt": "   "}, "the target prompt is empty"),
    ({"controller": "replace", "target_prompt": "a dog"}, "refine"),
])
def test_bad_edit_inputs_give_clear_errors(comfy, sd15_models, edit_input, settings, expected):
    error = comfy.expect_error(edit_graph(edit_input[0], sd15_models.checkpoint.name, **settings))
    assert error["exception_message"].startswith("LLMGA Inversion Edit: ")
    assert expected in error["exception_message"]


def test_inpainting_model_is_refused(comfy, sd15_models, edit_input):
    error = comfy.expect_error(edit_graph(edit_input[0], sd15_models.checkpoint_inpainting.name))
    assert error["exception_message"].startswith("LLMGA Inversion Edit: ")
    assert "inpainting model" in error["exception_message"]


def test_cancel_stops_an_edit(comfy, sd15_models, edit_input):
    prompt_id = comfy.queue(edit_graph(edit_input[0], sd15_models.checkpoint.name, steps=1000))
    assert "execution_interrupted" in comfy.cancel(prompt_id, after=1.0, what="the edit")


def test_official_ddpm_records_the_posterior_std(comfy, sd15_models, edit_input):
    """encode_with_std: x0 is ComfyUI's VAE encoding (the posterior mean) and std = exp(logvar / 2), both at the
    latent scale, from the moments the encoder and quant_conv give."""
    from safetensors.torch import load_file

    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_models.checkpoint.name}},
             "2": {"class_type": "LoadImage", "inputs": {"image": edit_input[0]}},
             "3": {"class_type": "ImageCrop", "inputs": {"image": ["2", 0], "width": 56, "height": 40, "x": 0,
                                                         "y": 0}},
             "4": {"class_type": "LLMGATestEditPosterior",
                   "inputs": {"vae": ["1", 2], "model": ["1", 0], "image": ["3", 0], "name": "posterior"}}}
    comfy.run(graph)
    out = load_file(comfy.output_dir / "posterior.safetensors")
    assert out["x0"].shape == out["std"].shape == (1, 4, 5, 7)
    torch.testing.assert_close(out["x0"], out["mean"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["std"], torch.exp(0.5 * out["logvar"]) * 0.18215, rtol=1e-5, atol=1e-7)
    assert out["std"].std() > 0  # a real per-element std, not a constant


def test_official_mode_edits_as_the_reference_code(comfy, sd15_models, edit_input):
    """official: another encoding of the long prompts (and for ddpm_inversion the sampled mask), so another picture;
    the node says so and names what the 77-token cuts dropped."""
    name, pixels = edit_input
    results = {}
    for method in ("ddpm_inversion", "direct_inversion_p2p"):
        for official in (False, True):
            outputs = comfy.run(edit_graph(name, sd15_models.checkpoint.name, method=method, steps=3,
                                           official=official))
            results.setdefault((method, official), []).append(saved(comfy, outputs, "4"))
            report = outputs["3"]["text"][0]
            assert report.startswith(f"{method} (official): 3 steps" if official else f"{method}: 3 steps")
            if official:
                assert "dropped" in report  # the prompts are over 77 tokens: what was cut is said
        assert not np.array_equal(results[(method, True)][0], results[(method, False)][0])
