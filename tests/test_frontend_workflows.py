"""The shipped workflows as a user meets them: the real ComfyUI frontend (headless Chromium) loads each UI file,
finds every node type, raises no page error, and its own graph-to-prompt gives the API twin, which then runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from fixtures.vae import build_vae_fixture
from workflow_api import TINY_RUN_IMAGE_SIZES, is_sdxl

pytestmark = pytest.mark.host

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
NAMES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def tiny_vae(sd15_models):
    """models/vae/ holds the stand-in for sd-vae-ft-mse that edit_official_ddpm loads (with_tiny_models names it)."""
    return build_vae_fixture(sd15_models)


@pytest.fixture(scope="module")
def page(comfy):
    """A headless Chromium tab on the test server's frontend (Debian's chromium, driven by Playwright)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        message = "Debian's chromium is not installed (apt-get install chromium); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        tab.page_errors = []
        tab.on("pageerror", lambda error: tab.page_errors.append(str(error)))
        tab.goto(comfy.url, wait_until="networkidle", timeout=180_000)
        tab.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=180_000)
        yield tab
        browser.close()


def frontend_prompt(page, workflow: dict) -> tuple[list[str], dict]:
    """Load `workflow` in the frontend; returns the node types it does not know and its graph-to-prompt output."""
    page.evaluate("async (workflow) => { await window.app.loadGraphData(workflow); }", workflow)
    page.wait_for_timeout(500)
    missing = page.evaluate(
        "() => window.app.graph._nodes.map(n => n.type).filter(t => !(t in window.LiteGraph.registered_node_types))")
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    return missing, prompt


def without_frontend_extras(prompt: dict, object_info: dict) -> dict:
    """The prompt without what only the frontend uses (titles in _meta, display-only widgets such as 'preview')."""
    clean = {}
    for node_id, node in prompt.items():
        spec = object_info[node["class_type"]]["input"]
        known = {**spec.get("required", {}), **spec.get("optional", {})}
        clean[node_id] = {"class_type": node["class_type"],
                          "inputs": {k: v for k, v in node["inputs"].items() if k in known}}
    return clean


@pytest.mark.parametrize("name", NAMES)
def test_frontend_loads_workflow_and_its_prompt_runs(request, page, comfy, tiny_models, tiny_vae, example_picture,
                                                     name):
    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
    page.page_errors.clear()
    missing, prompt = frontend_prompt(page, workflow)
    assert missing == [], f"{name}: the frontend does not know {missing}"
    assert page.page_errors == [], f"{name}: page errors {page.page_errors}"
    prompt = without_frontend_extras(prompt, comfy.object_info())
    twin = WORKFLOWS / "api" / f"{name}.json"
    if twin.exists():
        assert prompt == json.loads(twin.read_text())
    tiny = tiny_models(prompt)
    if is_sdxl(tiny):  # the tiny SDXL models are built on first use (full-size text encoders)
        tiny = request.getfixturevalue("tiny_sdxl_models")(tiny)
    outputs = comfy.run(tiny)
    images = [image for node_id, out in outputs.items() if prompt[node_id]["class_type"] == "SaveImage"
              for image in out["images"]]
    assert len(images) == len(TINY_RUN_IMAGE_SIZES[name])
