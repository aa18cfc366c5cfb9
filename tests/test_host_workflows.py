"""Every shipped workflow: its API twin is what its UI file means, and it runs in a real ComfyUI (tiny models)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from workflow_api import TINY_RUN_IMAGE_SIZES, ui_to_api

pytestmark = pytest.mark.host

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
TWINS = sorted(path.stem for path in (WORKFLOWS / "api").glob("*.json"))
def test_every_workflow_has_an_api_twin_and_expected_sizes():
    ui_files = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
    assert set(ui_files) == set(TINY_RUN_IMAGE_SIZES) and set(TWINS) <= set(ui_files)


@pytest.mark.parametrize("name", TWINS)
def test_api_twin_is_what_the_ui_workflow_means(comfy, name):
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    twin = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    assert ui_to_api(ui, comfy.object_info()) == twin


@pytest.mark.parametrize("name", TWINS)
def test_workflow_runs_with_tiny_models(comfy, tiny_models, example_picture, name):
    graph = tiny_models(json.loads((WORKFLOWS / "api" / f"{name}.json").read_text()))
    outputs = comfy.run(graph)
    saves = sorted(int(node) for node in outputs if graph[node]["class_type"] == "SaveImage")
    saved = [Image.open(io.BytesIO(comfy.view(image))) for node in saves for image in outputs[str(node)]["images"]]
    assert [image.size for image in saved] == TINY_RUN_IMAGE_SIZES[name]
    replies = [out["text"][0] for node_id, out in outputs.items() if graph[node_id]["class_type"] == "PreviewAny"]
    assert replies and all("<gen_image>" not in reply for reply in replies)
