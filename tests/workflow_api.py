"""Turn a workflow as the ComfyUI frontend saves it (nodes + links + widgets_values) into the API format `/prompt` runs.

The frontend stores widget values by position; their names come from the node definitions in `/object_info`,
in input order (required, then optional), with one extra value after an input that has `control_after_generate`.
"""

from __future__ import annotations

import json

FRONTEND_ONLY = {"Note", "MarkdownNote"}
# The file tests/fixtures/vae.py writes into models/vae/ (the tiny SD1.5 VAE, standing in for sd-vae-ft-mse).
TINY_VAE = "tiny-sd-vae-ft-mse.safetensors"
# The images each shipped workflow saves when run with_tiny_models (input picture 64x48, latents 64x64).
TINY_RUN_IMAGE_SIZES = {
    "llmga_text_to_image": [(64, 64)],
    "llmga_similar_image": [(64, 64)],
    "llmga_inpaint": [(64, 48)],
    "llmga_outpaint": [(80, 48)],
    "llmga_controlnet": [(64, 64)],
    "llmga_interactive": [(64, 64), (64, 64)],
    "llmga_extract_generation_prompt": [],
    "llmga_inpaint_restore": [(64, 48)],
    "llmga_outpaint_restore": [(80, 48)],
    "edit_instruction": [(64, 48)],
    "edit_official_ddpm": [(64, 64)],  # cropped to a square as the official editing CLI does
    "llmga_sdxl_text_to_image": [(64, 64)],
    "llmga_sdxl_similar_image": [(64, 64)],
    "llmga_sdxl_inpaint": [(64, 48)],
    "llmga_sdxl_outpaint_restore": [(80, 48)],
    "llmga_sdxl_controlnet": [(64, 64)],
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """API-format graph of a saved workflow. Raises ValueError naming a node whose type the server lacks."""
    links = {link[0]: (str(link[1]), link[2]) for link in workflow["links"]}
    graph = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):  # muted or bypassed nodes do not run
            continue
        if kind not in object_info:
            raise ValueError(f"workflow node {node['id']} is a {kind!r}, which this ComfyUI does not have")
        linked = {entry["name"]: links[entry["link"]] for entry in node.get("inputs", []) if entry.get("link")}
        values = iter(node.get("widgets_values") or [])
        definition = object_info[kind]["input"]
        inputs = {}
        for group in ("required", "optional"):
            for name, spec in definition.get(group, {}).items():
                if is_widget(spec):
                    value = next(values, None)
                    if len(spec) > 1 and spec[1].get("control_after_generate"):
                        next(values, None)  # "fixed" / "randomize" / ... belongs to the frontend
                    if value is not None:
                        inputs[name] = value
                if name in linked:
                    source, slot = linked[name]
                    inputs[name] = [source, slot]
        graph[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return graph


def with_tiny_models(graph: dict, *, assistant: str, sd: str, sd_inpainting: str, controlnet: str,
                     diffrir: str) -> dict:
    """A copy of an API-format graph of a shipped workflow with the released models swapped for the test fixtures
    and everything sized to run in seconds on a CPU; the wiring stays exactly as shipped."""
    tiny = json.loads(json.dumps(graph))
    for node in tiny.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "LLMGALoadAssistant":
            inputs.update(model=assistant, device="cpu", dtype="fp32", allow_download=False)
        elif kind == "LLMGAChat":
            inputs.update(max_new_tokens=12)
        elif kind == "LLMGALoadSD15":
            inputs.update(model=sd_inpainting if "inpainting" in inputs["model"] else sd, allow_download=False)
        elif kind == "ControlNetLoader":
            inputs.update(control_net_name=controlnet)
        elif kind == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        elif kind == "KSampler":
            inputs.update(steps=2)
        elif kind == "LLMGALoadDiffRIR":
            inputs.update(model=diffrir, dtype="fp32")
        elif kind == "LLMGAInversionEdit":
            inputs.update(steps=2)
        elif kind == "LLMGAOutpaintCanvas":
            inputs.update(left=0, top=0, right=16, bottom=0, feathering=4)
        elif kind == "VAELoader":
            inputs.update(vae_name=TINY_VAE)
        elif kind == "ImageScale":
            inputs.update(width=64, height=64)
    return tiny


def is_sdxl(graph: dict) -> bool:
    """Whether an API-format graph loads an SDXL model with the pack's loader."""
    return any(node["class_type"] == "LLMGALoadSDXL" for node in graph.values())


def with_tiny_sdxl_models(graph: dict, *, sdxl: str, sdxl_inpainting: str, controlnet: str) -> dict:
    """A copy of a graph from `with_tiny_models` with the released SDXL models and the SDXL ControlNet swapped for the
    test fixtures (the SDXL models by name, like the SD1.5 ones; every ControlNet of an SDXL graph is an SDXL one)."""
    tiny = json.loads(json.dumps(graph))
    for node in tiny.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "LLMGALoadSDXL":
            inputs.update(model=sdxl_inpainting if "inpainting" in inputs["model"] else sdxl, allow_download=False)
        elif kind == "ControlNetLoader":
            inputs.update(control_net_name=controlnet)
    return tiny


def txt2img_graph(load: dict, negative: dict, *, cfg: float, prefix: str, width: int = 64, height: int = 48) -> dict:
    """`load` (node 1: MODEL, CLIP, VAE) -> CLIPTextEncode (node 2) and the negative node 3 (`negative`, reading node
    2 or node 1's CLIP) -> KSampler (2 euler steps, seed 7) -> VAEDecode -> SaveImage (node 7, `prefix`)."""
    return {
        "1": load,
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red fox in deep snow"}},
        "3": negative,
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": 7, "steps": 2, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def with_inpaint_conditioning(graph: dict, picture: str) -> dict:
    """`graph` (txt2img_graph) sampling through InpaintModelConditioning (node 12) on LoadImage `picture` (node 11)
    and its alpha mask."""
    graph.update({
        "11": {"class_type": "LoadImage", "inputs": {"image": picture}},
        "12": {"class_type": "InpaintModelConditioning", "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "pixels": ["11", 0], "mask": ["11", 1],
            "noise_mask": True}},
    })
    graph["5"]["inputs"].update({"positive": ["12", 0], "negative": ["12", 1], "latent_image": ["12", 2]})
    return graph
