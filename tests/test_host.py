"""Host tests: a real ComfyUI 0.3.75 server with the pack installed runs real graphs."""

from __future__ import annotations

import io
import json

import pytest
from comfy_server import ComfyError, load_warnings, pack_import_problems
from PIL import Image
from workflow_api import ui_to_api

pytestmark = pytest.mark.host

PACK_MODULE = "custom_nodes.comfyui-llmga"


def pack_nodes(object_info: dict) -> dict:
    return {name: info for name, info in object_info.items() if info.get("python_module") == PACK_MODULE}


def test_pack_imports_without_error(comfy):
    log = comfy.log()
    assert pack_import_problems(log) == [], log[-4000:]
    assert any("comfyui-llmga" in line and "seconds:" in line for line in log.splitlines()), log[-4000:]


def test_object_info_lists_every_pack_node_under_llmga_category(comfy):
    nodes = pack_nodes(comfy.object_info())
    assert "LLMGAExtractGenerationPrompt" in nodes
    for name, info in nodes.items():
        assert name.startswith("LLMGA"), name
        assert info["category"].startswith("LLMGA/"), (name, info["category"])
        assert info["display_name"].startswith("LLMGA "), (name, info["display_name"])
        for group in ("required", "optional"):
            for input_name, spec in info["input"].get(group, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"


def test_extract_node_schema(comfy):
    info = comfy.object_info()["LLMGAExtractGenerationPrompt"]
    assert info["output"] == ["STRING", "STRING", "BOOLEAN"]
    assert info["output_name"] == ["generation prompt", "reply text", "has prompt"]
    assert info["input"]["required"]["which"][1]["options"] == ["first", "all"]


def extract_graph(reply: str, which: str = "first", fallback: str = "whole reply") -> dict:
    """Reply text from a core primitive node -> extract node -> one PreviewAny per output."""
    return {
        "1": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": reply}},
        "2": {"class_type": "LLMGAExtractGenerationPrompt",
              "inputs": {"reply": ["1", 0], "which": which, "no_tag_fallback": fallback}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}},
    }


def previews(outputs: dict) -> tuple[str, str, str]:
    return tuple(outputs[node]["text"][0] for node in ("3", "4", "5"))


def test_extract_node_runs_in_a_graph_and_reaches_preview(comfy):
    reply = "Sure! Here is my idea.\n<gen_image> a red fox in deep snow, golden hour, 85mm </gen_image>"
    prompt, shown, has_prompt = previews(comfy.run(extract_graph(reply)))
    assert prompt == "a red fox in deep snow, golden hour, 85mm"
    assert shown == "Sure! Here is my idea.\n\n(The generation prompt: a red fox in deep snow, golden hour, 85mm)"
    assert has_prompt == "True"


def test_extract_node_all_prompts_and_no_tag_reply(comfy):
    outputs = comfy.run(extract_graph("<gen_image> a </gen_image> then <gen_image> b </gen_image>", which="all"))
    assert previews(outputs)[0] == "a\nb"
    outputs = comfy.run(extract_graph("Which season do you prefer?", fallback="empty"))
    assert previews(outputs) == ("", "Which season do you prefer?", "False")


def sd15_txt2img_graph(ckpt: str, width: int, height: int, seed: int = 1) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red fox in deep snow"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "llmga_test"}},
    }


def saved_images(comfy, outputs: dict, node: str = "7") -> list[Image.Image]:
    return [Image.open(io.BytesIO(comfy.view(entry))) for entry in outputs[node]["images"]]


def test_native_sd15_text_to_image_renders_tiny_checkpoint(comfy, sd15_models):
    outputs = comfy.run(sd15_txt2img_graph(sd15_models.checkpoint.name, width=96, height=64))
    (image,) = saved_images(comfy, outputs)
    assert image.size == (96, 64)
    log = comfy.log()
    assert "model_type EPS" in log  # the SD1.5 config was detected, not a fallback
    assert load_warnings(log) == []


def test_shipped_extract_workflow_runs(comfy, repo_root):
    workflow = json.loads((repo_root / "workflows" / "llmga_extract_generation_prompt.json").read_text())
    graph = ui_to_api(workflow, comfy.object_info())
    assert graph["2"]["class_type"] == "LLMGAExtractGenerationPrompt"
    prompt, shown, has_prompt = previews(comfy.run(graph))
    assert prompt.startswith("a red fox curled up in deep fresh snow") and prompt.endswith("highly detailed")
    assert "<gen_image>" not in shown and "(The generation prompt: a red fox" in shown
    assert has_prompt == "True"


def test_workflow_templates_route_serves_pack_workflows(comfy):
    templates = comfy.get_json("/workflow_templates")
    assert "llmga_extract_generation_prompt" in templates["comfyui-llmga"]
    served = json.loads(comfy.get("/api/workflow_templates/comfyui-llmga/llmga_extract_generation_prompt.json"))
    assert served["nodes"]


def test_native_sd15_controlnet_chain_changes_the_image(comfy, sd15_models):
    hint = Image.new("RGB", (64, 64), "black")
    hint.paste((255, 255, 255), (16, 16, 48, 48))
    hint.save(comfy.input_dir / "llmga_hint.png")
    plain = sd15_txt2img_graph(sd15_models.checkpoint.name, width=64, height=64)
    controlled = json.loads(json.dumps(plain))
    controlled.update({
        "10": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": sd15_models.controlnet.name}},
        "11": {"class_type": "LoadImage", "inputs": {"image": "llmga_hint.png"}},
        "12": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "control_net": ["10", 0], "image": ["11", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "vae": ["1", 2]}},
    })
    controlled["5"]["inputs"].update({"positive": ["12", 0], "negative": ["12", 1]})
    (without,) = saved_images(comfy, comfy.run(plain))
    (with_control,) = saved_images(comfy, comfy.run(controlled))
    assert with_control.size == (64, 64)
    assert with_control.tobytes() != without.tobytes()
    assert load_warnings(comfy.log()) == []


def test_native_sd15_inpainting_checkpoint_runs_with_inpaint_conditioning(comfy, sd15_models):
    picture = Image.new("RGBA", (80, 64), (200, 120, 40, 255))
    picture.paste((0, 0, 0, 0), (20, 16, 60, 48))  # transparent hole: LoadImage's mask is 1 there
    picture.save(comfy.input_dir / "llmga_inpaint.png")
    graph = sd15_txt2img_graph(sd15_models.checkpoint_inpainting.name, width=80, height=64)
    graph.update({
        "11": {"class_type": "LoadImage", "inputs": {"image": "llmga_inpaint.png"}},
        "12": {"class_type": "InpaintModelConditioning", "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "pixels": ["11", 0], "mask": ["11", 1],
            "noise_mask": True}},
    })
    graph["5"]["inputs"].update({"positive": ["12", 0], "negative": ["12", 1], "latent_image": ["12", 2]})
    (image,) = saved_images(comfy, comfy.run(graph))
    assert image.size == (80, 64)
    assert load_warnings(comfy.log()) == []


def test_harness_reports_a_refused_graph(comfy):
    graph = sd15_txt2img_graph("no-such-model.safetensors", width=64, height=64)
    with pytest.raises(ComfyError, match="no-such-model.safetensors"):
        comfy.queue(graph)
