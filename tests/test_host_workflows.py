"""Every shipped workflow: its API twin is what its UI file means, it follows the official pipelines' settings, and
it runs in a real ComfyUI (tiny models)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from diffusers import EulerDiscreteScheduler
from fixtures.sdxl import SCHEDULER_CONFIG as SDXL_SCHEDULER_CONFIG
from fixtures.vae import build_vae_fixture
from PIL import Image
from workflow_api import TINY_RUN_IMAGE_SIZES, is_sdxl, ui_to_api

pytestmark = pytest.mark.host

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
TWINS = sorted(path.stem for path in (WORKFLOWS / "api").glob("*.json"))
SDXL = [name for name in TWINS if name.startswith("llmga_sdxl_")]
INPAINTING = ["llmga_inpaint", "llmga_inpaint_restore", "llmga_outpaint", "llmga_outpaint_restore"]
SDXL_INPAINTING = ["llmga_sdxl_inpaint", "llmga_sdxl_outpaint_restore"]
SDXL_TEXT_TO_IMAGE = ["llmga_sdxl_controlnet", "llmga_sdxl_similar_image", "llmga_sdxl_text_to_image"]
# What cli-sd15.py / cli-sd15-inpainting.py run (50 PNDM steps, CFG 7.5), on ComfyUI's closest sampler and schedule.
OFFICIAL_SAMPLING = {"steps": 50, "cfg": 7.5, "sampler_name": "ipndm", "scheduler": "ddim_uniform", "denoise": 1.0}
# The official CLIs: temperature 0.2, top_p/top_k/repetition_penalty from the checkpoint (the Chat node's 0).
OFFICIAL_CHAT = {"temperature": 0.2, "top_p": 0.0, "top_k": 0, "repetition_penalty": 0.0}
# cli-sdxl.py: 50 steps of the repo's Euler at CFG 5.0, 1024x1024. cli-sdxl-inpainting.py: 30 steps at strength 0.8 and
# CFG 7.5, i.e. the last 24 of 30 Euler steps, which KSampler runs as 24 steps at denoise 0.8.
OFFICIAL_SDXL_SAMPLING = {"steps": 50, "cfg": 5.0, "sampler_name": "euler", "scheduler": "ddim_uniform", "denoise": 1.0}
OFFICIAL_SDXL_INPAINT_SAMPLING = {"steps": 24, "cfg": 7.5, "sampler_name": "euler", "scheduler": "ddim_uniform",
                                  "denoise": 0.8}
SDXL_SIZES = {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}


def ui_note(name: str) -> str:
    return next(node for node in json.loads((WORKFLOWS / f"{name}.json").read_text())["nodes"]
                if node["type"] == "MarkdownNote")["widgets_values"][0]


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
    assert SDXL == sorted(SDXL_INPAINTING + SDXL_TEXT_TO_IMAGE)


@pytest.mark.parametrize("name", [name for name in TWINS if name not in SDXL])
def test_sampling_is_the_official_50_steps_at_cfg_7_5_on_the_closest_sampler(name):
    graph = twin(name)
    assert not is_sdxl(graph) and not nodes_of(graph, "LLMGALongPromptEncodeSDXL")
    for sampler in nodes_of(graph, "KSampler"):
        assert {key: sampler["inputs"][key] for key in OFFICIAL_SAMPLING} == OFFICIAL_SAMPLING
    if nodes_of(graph, "KSampler"):
        note = ui_note(name)
        assert "`ipndm`" in note and "`ddim_uniform`" in note and "PNDM" in note


@pytest.mark.parametrize("name", SDXL)
def test_sdxl_workflows_start_from_the_assistant_and_run_llmga_sdxl_on_its_nodes(name):
    """Every SDXL workflow: the assistant's generation prompt -> LLMGA Long Prompt Encode (SDXL) in the official
    encoding (size conditioning 1024) on the CLIP of LLMGA Load SDXL (the released model of its task), whose MODEL
    and VAE the sampler and decoder use; no SD1.5 node."""
    graph = twin(name)
    assert not nodes_of(graph, "LLMGALoadSD15") and not nodes_of(graph, "LLMGALongPromptEncode")
    [loader], [encode], [chat], [sampler] = (nodes_of(graph, kind) for kind in (
        "LLMGALoadSDXL", "LLMGALongPromptEncodeSDXL", "LLMGAChat", "KSampler"))
    released = "binxia/llmga-sdxl-inpainting-v2" if name in SDXL_INPAINTING else "binxia/llmga-sdxl-t2i"
    assert loader["inputs"]["model"] == released
    assert linked(graph, encode, "clip") is loader and linked(graph, encode, "prompt") is chat
    assert encode["inputs"]["prompt"][1] == 1  # the Chat's generation prompt
    assert encode["inputs"]["mode"] == "llmga" and encode["inputs"]["negative_prompt"] == ""
    assert {key: encode["inputs"][key] for key in SDXL_SIZES} == SDXL_SIZES
    assert linked(graph, sampler, "model") is loader
    [decode] = nodes_of(graph, "VAEDecode")
    assert linked(graph, decode, "vae") is loader and linked(graph, decode, "samples") is sampler


@pytest.mark.parametrize("name", SDXL_TEXT_TO_IMAGE)
def test_sdxl_text_to_image_samples_as_cli_sdxl(name):
    """50 Euler steps at CFG 5.0 on a 1024x1024 latent (the official SDXL defaults), the note saying why euler on
    ddim_uniform is the repo's scheduler."""
    graph = twin(name)
    [sampler] = nodes_of(graph, "KSampler")
    assert {key: sampler["inputs"][key] for key in OFFICIAL_SDXL_SAMPLING} == OFFICIAL_SDXL_SAMPLING
    latent = linked(graph, sampler, "latent_image")
    assert latent["class_type"] == "EmptyLatentImage"
    assert (latent["inputs"]["width"], latent["inputs"]["height"]) == (1024, 1024)
    note = ui_note(name)
    assert all(word in note for word in ("`euler`", "`ddim_uniform`", "CFG 5.0", "1024×1024", "EulerDiscrete"))


def test_sdxl_controlnet_conditions_the_prompt_with_an_sdxl_controlnet():
    graph = twin("llmga_sdxl_controlnet")
    [encode], [apply], [sampler] = (nodes_of(graph, kind) for kind in (
        "LLMGALongPromptEncodeSDXL", "ControlNetApplyAdvanced", "KSampler"))
    assert [linked(graph, apply, key) for key in ("positive", "negative")] == [encode, encode]
    assert (apply["inputs"]["positive"][1], apply["inputs"]["negative"][1]) == (0, 1)
    apply_id = next(node_id for node_id, node in graph.items() if node is apply)
    assert (sampler["inputs"]["positive"], sampler["inputs"]["negative"]) == ([apply_id, 0], [apply_id, 1])
    loader = linked(graph, apply, "control_net")
    assert loader["class_type"] == "ControlNetLoader" and "sdxl" in loader["inputs"]["control_net_name"]
    assert linked(graph, apply, "vae")["class_type"] == "LLMGALoadSDXL"
    assert linked(graph, apply, "image")["class_type"] == "LoadImage"


@pytest.mark.parametrize("name", SDXL_INPAINTING)
def test_sdxl_inpainting_starts_from_the_picture_at_strength_0_8_and_never_blends(name):
    """cli-sdxl-inpainting.py: StableDiffusionXLInpaintPipeline binarises the mask at 0.5, denoises the picture
    noised to strength 0.8 (the last 24 of 30 Euler steps, CFG 7.5) and, with the 9-channel UNet, never re-blends;
    the soft mask only for the assistant and the final compositing."""
    graph = twin(name)
    [conditioning] = nodes_of(graph, "InpaintModelConditioning")
    assert conditioning["inputs"]["noise_mask"] is False
    threshold = linked(graph, conditioning, "mask")
    assert threshold["class_type"] == "ThresholdMask" and threshold["inputs"]["value"] == 0.5
    soft_mask = threshold["inputs"]["mask"]
    [composite] = [node for node in graph.values() if node["class_type"] in ("LLMGAPasteBack", "LLMGADiffRIRRestore")]
    assert composite["class_type"] == ("LLMGADiffRIRRestore" if "restore" in name else "LLMGAPasteBack")
    [chat] = nodes_of(graph, "LLMGAChat")
    assert composite["inputs"]["mask"] == soft_mask == chat["inputs"]["mask"]
    assert graph[soft_mask[0]]["class_type"] == ("LLMGAOutpaintCanvas" if "outpaint" in name else "LoadImage")
    [sampler] = nodes_of(graph, "KSampler")
    assert {key: sampler["inputs"][key] for key in OFFICIAL_SDXL_INPAINT_SAMPLING} == OFFICIAL_SDXL_INPAINT_SAMPLING
    assert linked(graph, sampler, "latent_image") is conditioning and sampler["inputs"]["latent_image"][1] == 2
    assert not nodes_of(graph, "LatentMultiply")
    note = ui_note(name)
    assert all(word in note for word in ("strength 0.8", "24 steps at denoise 0.8", "binarised at 0.5", "CFG 7.5"))


SIGMAS = """
import json, sys, types
settings = json.loads(sys.argv[1])
sys.argv = sys.argv[:1] + ["--cpu"]
sys.path.insert(0, ".")
import comfy.options
comfy.options.enable_args_parsing()
import comfy.model_sampling, comfy.samplers, comfy.supported_models
class Sampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    pass
sampling = Sampling(types.SimpleNamespace(sampling_settings=comfy.supported_models.SDXL.sampling_settings))
out = {}
for steps, denoise, scheduler in settings:
    sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, int(steps / denoise))[-(steps + 1):]
    out[f"{steps} {denoise}"] = sigmas.tolist()
print("SIGMAS " + json.dumps(out))
"""


def test_sdxl_sampler_settings_run_the_repos_euler_timesteps(comfy_path):
    """KSampler's sigmas for the SDXL workflows' settings (ComfyUI's SDXL model sampling, as KSampler computes them for
    denoise < 1) are the sigmas diffusers' EulerDiscreteScheduler (SDXL base's config, which the released repos keep)
    steps through: all 50 for text to image, the last 24 of 30 at strength 0.8 for inpainting."""
    settings = [(s["steps"], s["denoise"], s["scheduler"]) for s in (OFFICIAL_SDXL_SAMPLING,
                                                                     OFFICIAL_SDXL_INPAINT_SAMPLING)]
    result = subprocess.run([sys.executable, "-c", SIGMAS, json.dumps(settings)], cwd=comfy_path,
                            capture_output=True, text=True, timeout=300)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("SIGMAS ")]
    comfy_sigmas = json.loads(line.removeprefix("SIGMAS "))
    scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    for (steps, denoise, _), (official_steps, strength) in zip(settings, [(50, 1.0), (30, 0.8)], strict=True):
        scheduler.set_timesteps(official_steps)
        first = official_steps - int(official_steps * strength)  # diffusers' get_timesteps at this strength
        expected = scheduler.sigmas[first:].tolist()
        assert len(comfy_sigmas[f"{steps} {denoise}"]) == len(expected) == steps + 1
        assert comfy_sigmas[f"{steps} {denoise}"] == pytest.approx(expected, rel=1e-5)


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


def saved_images(comfy, graph: dict, outputs: dict) -> list[Image.Image]:
    saves = sorted(int(node) for node in outputs if graph[node]["class_type"] == "SaveImage")
    return [Image.open(io.BytesIO(comfy.view(image))) for node in saves for image in outputs[str(node)]["images"]]


@pytest.mark.parametrize("name", TWINS)
def test_workflow_runs_with_tiny_models(request, comfy, tiny_models, tiny_vae, example_picture, name):
    graph = tiny_models(twin(name))
    if is_sdxl(graph):  # the tiny SDXL models are built on first use (full-size text encoders)
        graph = request.getfixturevalue("tiny_sdxl_models")(graph)
    outputs = comfy.run(graph)
    saved = saved_images(comfy, graph, outputs)
    assert [image.size for image in saved] == TINY_RUN_IMAGE_SIZES[name]
    replies = [out["text"][0] for node_id, out in outputs.items() if graph[node_id]["class_type"] == "PreviewAny"]
    assert replies and all("<gen_image>" not in reply for reply in replies)


def test_tiny_sdxl_controlnet_loads_whole_and_steers_the_tiny_sdxl(comfy, tiny_models, tiny_sdxl_models,
                                                                   example_picture):
    """The fixture SDXL ControlNet is one ComfyUI's ControlNetLoader reads whole (no missing keys logged) and that
    ControlNetApplyAdvanced runs beside the tiny SDXL MODEL: the control image changes the picture (strength 0 is
    the plain prompt)."""
    graph = tiny_sdxl_models(tiny_models(twin("llmga_sdxl_controlnet")))
    [apply_id] = [node_id for node_id, node in graph.items() if node["class_type"] == "ControlNetApplyAdvanced"]
    plain = json.loads(json.dumps(graph))
    plain[apply_id]["inputs"]["strength"] = 0.0
    controlled, uncontrolled = (np.asarray(saved_images(comfy, g, comfy.run(g))[0], dtype=np.int16)
                                for g in (graph, plain))
    assert np.abs(controlled - uncontrolled).mean() > 1.0
    assert "missing controlnet keys" not in comfy.log()
