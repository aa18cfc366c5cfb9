"""Session fixtures: the ComfyUI host folder, tiny SD1.5 and SDXL models in real formats, and a running ComfyUI
server."""

from __future__ import annotations

from pathlib import Path

import pytest
from comfy_server import ComfyServer
from comfyui_host import resolve_comfyui
from fixtures.mllm import FAMILIES, MLLMFixture, build_clip_vision_tower, build_llmga_checkpoint
from fixtures.sd15 import SD15Fixtures, build_sd15_fixtures
from fixtures.sdxl import SDXLFixtures, build_sdxl_fixtures

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def comfy_path() -> Path:
    """The ComfyUI host folder (COMFYUI_PATH or the pinned 0.3.75); only its files are read in unit tests."""
    return resolve_comfyui()


@pytest.fixture(scope="session")
def clip_tokenizer_dir(comfy_path: Path) -> Path:
    """The real SD1.5 CLIP tokenizer files (vocab.json, merges.txt) that ship with ComfyUI."""
    return comfy_path / "comfy" / "sd1_tokenizer"


@pytest.fixture(scope="session")
def comfy_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("comfy")


@pytest.fixture(scope="session")
def sd15_models(comfy_base_dir: Path, clip_tokenizer_dir: Path) -> SD15Fixtures:
    """Tiny random-weight SD1.5 models (single file, diffusers folder, inpainting, ControlNet), written
    straight into the test server's models folder so host graphs can name them."""
    return build_sd15_fixtures(comfy_base_dir / "models", tokenizer_dir=clip_tokenizer_dir)


@pytest.fixture(scope="session")
def sdxl_models(comfy_base_dir: Path, clip_tokenizer_dir: Path) -> SDXLFixtures:
    """Tiny random-weight SDXL models (diffusers folders t2i and 9-channel inpainting, single file) and files shaped
    like an SDXL refiner, SD2, SD3 and Flux, written into the test server's models folder (where a running server
    finds them) the first time a test asks: ~30 s and ~4.5 GB (full-size text encoders), so sessions that never use
    SDXL pay nothing."""
    return build_sdxl_fixtures(comfy_base_dir / "models", tokenizer_dir=clip_tokenizer_dir)


@pytest.fixture(scope="session")
def mllm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mllm")


@pytest.fixture(scope="session")
def mllm_checkpoints(mllm_root: Path) -> dict[str, MLLMFixture]:
    """A tiny random-weight LLMGA checkpoint of every family, in the official folder format (vision tower included)."""
    tower = build_clip_vision_tower(mllm_root / "clip_vision")
    return {family: build_llmga_checkpoint(mllm_root / "LLM", family, tower) for family in FAMILIES}


@pytest.fixture(scope="session")
def mllm_checkpoints_without_vision(mllm_root: Path) -> MLLMFixture:
    """A Qwen2 checkpoint without vision weights; its CLIP folder (config names it) holds them."""
    tower = build_clip_vision_tower(mllm_root / "clip_vision_weights", seed=1)
    return build_llmga_checkpoint(mllm_root / "LLM_no_vision", "qwen2", tower, vision_weights_in_checkpoint=False)


@pytest.fixture(scope="session")
def host_assistant(comfy_base_dir: Path) -> MLLMFixture:
    """A tiny Qwen2 LLMGA checkpoint in the test server's models/LLM, its CLIP tower in models/clip_vision."""
    models = comfy_base_dir / "models"
    tower = build_clip_vision_tower(models / "clip_vision")
    return build_llmga_checkpoint(models / "LLM", "qwen2", tower)


@pytest.fixture(scope="session")
def host_diffrir(comfy_base_dir: Path) -> Path:
    """A tiny DiffRIR x1 network in the test server's models/diffrir (the released .pth layout)."""
    from fixtures.diffrir import build_diffrir_fixture

    return build_diffrir_fixture(comfy_base_dir / "models" / "diffrir")


@pytest.fixture(scope="session")
def comfy(comfy_path: Path, comfy_base_dir: Path, sd15_models: SD15Fixtures, host_assistant: MLLMFixture,
          host_diffrir: Path):
    """A running ComfyUI server with this pack installed; stopped at the end of the session."""
    server = ComfyServer(comfy_path, comfy_base_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def example_picture(comfy) -> Path:
    """input/example.png, the picture the shipped workflows load: 64x48 with a transparent hole (its mask)."""
    from PIL import Image

    picture = Image.new("RGBA", (64, 48), (40, 120, 200, 255))
    picture.paste((0, 0, 0, 0), (16, 12, 48, 36))
    path = comfy.input_dir / "example.png"
    picture.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(host_assistant: MLLMFixture, sd15_models: SD15Fixtures, host_diffrir: Path):
    """Swaps a shipped workflow's released models for the test fixtures (see workflow_api.with_tiny_models)."""
    from workflow_api import with_tiny_models

    def swap(graph: dict) -> dict:
        return with_tiny_models(graph, assistant=f"binxia/{host_assistant.path.name}", sd=sd15_models.diffusers.name,
                                sd_inpainting=sd15_models.diffusers_inpainting.name,
                                controlnet=sd15_models.controlnet.name, diffrir=host_diffrir.name)

    return swap


@pytest.fixture(scope="session")
def sdxl_controlnet(sdxl_models: SDXLFixtures) -> Path:
    """A tiny SDXL ControlNet (a copy of the tiny SDXL UNet's encoder) in the test server's models/controlnet."""
    from fixtures.sdxl_controlnet import build_sdxl_controlnet

    return build_sdxl_controlnet(sdxl_models)


@pytest.fixture(scope="session")
def tiny_sdxl_models(sdxl_models: SDXLFixtures, sdxl_controlnet: Path):
    """Swaps a shipped SDXL workflow's released SDXL models and ControlNet for the test fixtures, after tiny_models
    (see workflow_api.with_tiny_sdxl_models)."""
    from workflow_api import with_tiny_sdxl_models

    def swap(graph: dict) -> dict:
        return with_tiny_sdxl_models(graph, sdxl=sdxl_models.diffusers.name,
                                     sdxl_inpainting=sdxl_models.diffusers_inpainting.name,
                                     controlnet=sdxl_controlnet.name)

    return swap


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed host test shows the tail of the server log, where ComfyUI writes its tracebacks."""
    report = yield
    server = item.funcargs.get("comfy") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(server, ComfyServer):
        report.sections.append(("ComfyUI log (last 4000 characters)", server.log()[-4000:]))
    return report
