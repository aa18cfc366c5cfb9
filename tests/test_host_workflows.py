"""Every shipped workflow: its API twin is what its UI file means, it follows the official pipelines' settings, and
it runs in a real ComfyUI (tiny models)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fixtures.vae import build_vae_fixture
from PIL import Image
from workflow_api import TINY_RUN_IMAGE_SIZES, ui_to_api

pytestmark = pytest.mark.host

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
TWINS = sorted(path.stem for path in (WORKFLOWS / "api").glob("*.json"))
INPAINTING = ["llmga_inpaint", "llmga_inpaint_restore", "llmga_outpaint", "llmga_outpaint_restore"]
# What cli-sd15.py / cli-sd15-inpainting.py run (50 PNDM steps, CFG 7.5), on ComfyUI's closest sampler and schedule.
OFFICIAL_SAMPLING = {"steps": 50, "cfg": 7.5, "sampler_name": "ipndm", "scheduler": "ddim_uniform", "denoise": 1.0}
# The official CLIs: temperature 0.2, top_p/top_k/repetition_penalty from the checkpoint (the Chat node's 0).
OFFICIAL_CHAT = {"temperature": 0.2, "top_p": 0.0, "top_k": 0, "repetition_penalty": 0.0}


def twin(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def nodes_of(graph: dict, class_type: str) -> list[dict]:
    return [node for node in graph.values() if node["class_type"] == class_type]


def linked(graph: dict, node: dict, name: str) -> dict:
    """The node that feeds input `name` of `node`."""
    source, _ = node["inputs"][name]
    return graph[source]


@pytest.fixture(scope="module")
def tiny_vae(sd15_models):
    """models/vae/ holds the stand-in for sd-vae-ft-mse that edit_official_ddpm loads (with_tiny_models names it)."""
    return build_vae_fixture(sd15_models)


def test_every_workflow_has_an_api_twin_and_expected_sizes():
    ui_files = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
    assert set(ui_files) == set(TINY_RUN_IMAGE_SIZES) and set(TWINS) <= set(ui_files)


@pytest.mark.parametrize("name", TWINS)
def test_sampling_is_the_official_50_steps_at_cfg_7_5_on_the_closest_sampler(name):
    graph = twin(name)
    for sampler in nodes_of(graph, "KSampler"):
        assert {key: sampler["inputs"][key] for key in OFFICIAL_SAMPLING} == OFFICIAL_SAMPLING
    if nodes_of(graph, "KSampler"):
        note = next(node for node in json.loads((WORKFLOWS / f"{name}.json").read_text())["nodes"]
                    if node["type"] == "MarkdownNote")["widgets_values"][0]
        assert "`ipndm`" in note and "`ddim_uniform`" in note and "PNDM" in note


@pytest.mark.parametrize("name", INPAINTING)
def test_inpainting_feeds_the_unet_a_binary_mask_and_never_blends(name):
    """The official 9-channel pipeline: mask binarised at 125/255, pure-noise start, no latent re-blend; the soft mask
    only for the assistant and the final compositing."""
    graph = twin(name)
    [conditioning] = nodes_of(graph, "InpaintModelConditioning")
    assert conditioning["inputs"]["noise_mask"] is False
    threshold = linked(graph, conditioning, "mask")
    assert threshold["class_type"] == "ThresholdMask" and threshold["inputs"]["value"] == 0.49
    soft_mask = threshold["inputs"]["mask"]
    [composite] = [node for node in graph.values() if node["class_type"] in ("LLMGAPasteBack", "LLMGADiffRIRRestore")]
    [chat] = nodes_of(graph, "LLMGAChat")
    assert composite["inputs"]["mask"] == soft_mask == chat["inputs"]["mask"]
    assert graph[soft_mask[0]]["class_type"] == ("LLMGAOutpaintCanvas" if "outpaint" in name else "LoadImage")
    [sampler] = nodes_of(graph, "KSampler")
    start = linked(graph, sampler, "latent_image")
    assert start["class_type"] == "LatentMultiply" and start["inputs"]["multiplier"] == 0.0
    assert linked(graph, start, "samples") is conditioning


def test_official_ddpm_edit_crops_to_a_512_square_and_uses_sd_vae_ft_mse():
    graph = twin("edit_official_ddpm")
    [edit] = nodes_of(graph, "LLMGAInversionEdit")
    assert edit["inputs"]["method"] == "ddpm_inversion" and edit["inputs"]["official"] is True
    vae = linked(graph, edit, "vae")
    assert vae["class_type"] == "VAELoader" and vae["inputs"]["vae_name"] == "vae-ft-mse-840000-ema-pruned.safetensors"
    square = linked(graph, edit, "image")
    assert square["class_type"] == "ImageScale"
    assert {k: square["inputs"][k] for k in ("width", "height", "crop")} == {"width": 512, "height": 512,
                                                                              "crop": "center"}
    similar = next(chat for chat in nodes_of(graph, "LLMGAChat") if chat["inputs"]["task"] == "similar_image")
    assert linked(graph, similar, "image") is square
    [plain] = nodes_of(twin("edit_instruction"), "LLMGAInversionEdit")
    assert plain["inputs"]["official"] is False  # the paper's method with the pack's long prompts
    assert twin("edit_instruction")[plain["inputs"]["vae"][0]]["class_type"] == "LLMGALoadSD15"


@pytest.mark.parametrize("name", TWINS)
def test_chat_nodes_sample_with_the_checkpoints_own_settings(comfy, name):
    """Every Chat samples as the official CLIs (the checkpoint's generation_config), which is the node's default."""
    spec = comfy.object_info()["LLMGAChat"]["input"]
    inputs = {**spec["required"], **spec.get("optional", {})}
    assert {key: inputs[key][1]["default"] for key in OFFICIAL_CHAT} == OFFICIAL_CHAT
    for chat in nodes_of(twin(name), "LLMGAChat"):
        assert {key: chat["inputs"][key] for key in OFFICIAL_CHAT} == OFFICIAL_CHAT


@pytest.mark.parametrize("name", TWINS)
def test_api_twin_is_what_the_ui_workflow_means(comfy, name):
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    assert ui_to_api(ui, comfy.object_info()) == twin(name)


@pytest.mark.parametrize("name", TWINS)
def test_workflow_runs_with_tiny_models(comfy, tiny_models, tiny_vae, example_picture, name):
    graph = tiny_models(twin(name))
    outputs = comfy.run(graph)
    saves = sorted(int(node) for node in outputs if graph[node]["class_type"] == "SaveImage")
    saved = [Image.open(io.BytesIO(comfy.view(image))) for node in saves for image in outputs[str(node)]["images"]]
    assert [image.size for image in saved] == TINY_RUN_IMAGE_SIZES[name]
    replies = [out["text"][0] for node_id, out in outputs.items() if graph[node_id]["class_type"] == "PreviewAny"]
    assert replies and all("<gen_image>" not in reply for reply in replies)
