"""Every shipped workflow: its API twin is what its UI file means, and it runs in a real ComfyUI (tiny models)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from workflow_api import ui_to_api, with_tiny_models

pytestmark = pytest.mark.host

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
TWINS = sorted(path.stem for path in (WORKFLOWS / "api").glob("*.json"))
# Picture sizes each workflow's saved images must have (the input picture is 64x48; latents are 64x64).
EXPECTED_SIZES = {
    "llmga_text_to_image": [(64, 64)],
    "llmga_similar_image": [(64, 64)],
    "llmga_inpaint": [(64, 48)],
    "llmga_outpaint": [(80, 48)],
    "llmga_controlnet": [(64, 64)],
    "llmga_interactive": [(64, 64), (64, 64)],
}


@pytest.fixture(scope="module")
def example_picture(comfy) -> Path:
    """input/example.png, the picture the workflows load: 64x48 with a transparent hole (its mask)."""
    picture = Image.new("RGBA", (64, 48), (40, 120, 200, 255))
    picture.paste((0, 0, 0, 0), (16, 12, 48, 36))
    path = comfy.input_dir / "example.png"
    picture.save(path)
    return path


def tiny(graph: dict, host_assistant, sd15_models) -> dict:
    return with_tiny_models(graph, assistant=f"binxia/{host_assistant.path.name}",
                            sd=sd15_models.diffusers.name, sd_inpainting=sd15_models.diffusers_inpainting.name,
                            controlnet=sd15_models.controlnet.name)


def test_every_workflow_has_an_api_twin_and_expected_sizes():
    ui_files = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
    assert set(TWINS) == set(EXPECTED_SIZES) and set(TWINS) <= set(ui_files)


@pytest.mark.parametrize("name", TWINS)
def test_api_twin_is_what_the_ui_workflow_means(comfy, name):
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    twin = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    assert ui_to_api(ui, comfy.object_info()) == twin


@pytest.mark.parametrize("name", TWINS)
def test_workflow_runs_with_tiny_models(comfy, host_assistant, sd15_models, example_picture, name):
    graph = tiny(json.loads((WORKFLOWS / "api" / f"{name}.json").read_text()), host_assistant, sd15_models)
    outputs = comfy.run(graph)
    saves = sorted(int(node) for node in outputs if graph[node]["class_type"] == "SaveImage")
    saved = [Image.open(io.BytesIO(comfy.view(image))) for node in saves for image in outputs[str(node)]["images"]]
    assert [image.size for image in saved] == EXPECTED_SIZES[name]
    replies = [out["text"][0] for node_id, out in outputs.items() if graph[node_id]["class_type"] == "PreviewAny"]
    assert replies and all("<gen_image>" not in reply for reply in replies)
