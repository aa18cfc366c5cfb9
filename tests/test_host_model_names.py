"""Host tests: model names sent to /prompt by any client stay inside the model folders (ComfyUI 0.3.75 does not check
V3 combo values against their options), symlinked models inside the folders keep working, and a checkpoint whose
files cannot be trusted fails with one line on the node."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fixtures.edited import copy_checkpoint
from fixtures.mllm import build_llmga_checkpoint

pytestmark = pytest.mark.host


def preview(node: dict) -> dict:
    """`node` (id 1) with an output node after it, so ComfyUI runs it."""
    return {"1": node, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def assistant_loader(name: str) -> dict:
    return {"class_type": "LLMGALoadAssistant", "inputs": {
        "model": name, "dtype": "fp32", "device": "cpu", "quantization": "none", "attention": "sdpa",
        "template": "auto", "allow_download": False}}


def sd_loader(name: str) -> dict:
    return {"class_type": "LLMGALoadSD15", "inputs": {"model": name, "allow_download": False}}


def diffrir_loader(name: str) -> dict:
    return {"class_type": "LLMGALoadDiffRIR", "inputs": {"model": name, "dtype": "auto"}}


def hostile_names(outside: Path, inside_by_traversal: str) -> list[str]:
    """Names no option list offers: traversal, absolute paths (an existing model among them), Windows forms, NUL."""
    return ["../../x", inside_by_traversal, str(outside), str(outside.parent / "nothing-here"), "..\\x", "C:\\x",
            "x\x00y"]


def test_hostile_names_get_one_error_that_names_the_folders(comfy, host_assistant, sd15_models, host_diffrir):
    models = comfy.models_dir
    sd_folders = f"['{models / 'diffusers'}', '{models / 'checkpoints'}'"  # then ComfyUI's output/checkpoints
    cases = [
        (assistant_loader, hostile_names(host_assistant.path, f"../LLM/{host_assistant.path.name}"),
         lambda name: f"LLMGA Load Assistant: model {name!r} is neither a model folder inside the model folders nor "
                      f"a released LLMGA checkpoint. Searched: {[str(models / 'LLM')]}. "),
        (sd_loader, hostile_names(sd15_models.diffusers, f"../checkpoints/{sd15_models.checkpoint.name}"),
         lambda name: f"LLMGA Load SD1.5: {name!r} is neither a diffusers folder nor a checkpoint file in "
                      f"{sd_folders}"),
        (sd_loader, [str(sd15_models.checkpoint)],
         lambda name: f"LLMGA Load SD1.5: {name!r} is neither a diffusers folder nor a checkpoint file in "),
        # ComfyUI's own folder_paths.get_full_path normalises the name into the folder ('../' and '/' dropped).
        (diffrir_loader, hostile_names(host_diffrir, f"../diffrir/{host_diffrir.name}"),
         lambda name: f"LLMGA Load DiffRIR: {name!r} is not in {models / 'diffrir'}. "),
    ]
    for loader, names, expected in cases:
        for name in names:
            error = comfy.expect_error(preview(loader(name)))
            assert error["exception_type"] == "RuntimeError"
            assert error["exception_message"].startswith(expected(name)), (name, error["exception_message"])
    existing = comfy.expect_error(preview(assistant_loader(str(host_assistant.path))))["exception_message"]
    missing = comfy.expect_error(preview(assistant_loader(str(host_assistant.path) + "-x")))["exception_message"]
    assert existing.replace(repr(str(host_assistant.path)), "NAME") == missing.replace(
        repr(str(host_assistant.path) + "-x"), "NAME")  # nothing tells whether the path exists


def test_symlinked_models_inside_the_folders_keep_working(comfy, host_assistant, sd15_models, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "my-assistant"
    shutil.copytree(host_assistant.path, outside)
    links = {comfy.models_dir / "LLM" / "linked-assistant": outside,
             comfy.models_dir / "diffusers" / "linked-sd15": sd15_models.diffusers,
             comfy.models_dir / "checkpoints" / "linked-sd15.safetensors": sd15_models.checkpoint}
    for link, target in links.items():
        link.symlink_to(target, target_is_directory=target.is_dir())
    try:
        options = comfy.object_info()["LLMGALoadAssistant"]["input"]["required"]["model"][1]["options"]
        assert "linked-assistant" in options
        for graph in (preview(assistant_loader("linked-assistant")), preview(sd_loader("linked-sd15")),
                      preview(sd_loader("linked-sd15.safetensors"))):
            assert "text" in comfy.run(graph)["2"]
    finally:
        for link in links:
            link.unlink()


@pytest.mark.parametrize("case, change, says", [
    ("tokenizer", {"vocab.json": "garbage"}, "the tokenizer in {folder} does not load ("),
    ("relabelled", {"model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"]},
     "{folder} holds the weights of another model: they hold 6 tensors a llama model does not have"),
    ("tower", {"mm_vision_tower": "/etc"}, "config.json names the vision tower '/etc' (mm_vision_tower), but"),
    ("config", {"hidden_size": "big"}, "{folder}/config.json does not describe a qwen2 model ("),
])
def test_a_checkpoint_that_cannot_be_trusted_fails_with_one_line(comfy, host_assistant, case, change, says):
    folder = comfy.models_dir / "LLM" / f"llmga-untrusted-{case}"
    try:
        if "vocab.json" in change:
            copy_checkpoint(host_assistant.path, folder)
            (folder / "vocab.json").write_text(change["vocab.json"])
        else:
            copy_checkpoint(host_assistant.path, folder, **change)
        message = comfy.expect_error(preview(assistant_loader(folder.name)))["exception_message"]
    finally:
        shutil.rmtree(folder)
    assert message.startswith("LLMGA Load Assistant: " + says.format(folder=folder))
    assert "\n" not in message.rstrip("\n") and "\x1b[" not in message  # ComfyUI ends every message with a newline


def test_vision_tower_problems_fail_with_one_line(comfy, host_assistant, tmp_path):
    """No tower in clip_vision and the hub offline (the server runs with HF_HUB_OFFLINE=1), then a clip_vision folder
    whose config.json is not a CLIP vision config. The shared tower is moved away meanwhile and put back."""
    import huggingface_hub

    if (Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--openai--clip-vit-large-patch14-336").exists():
        pytest.skip("CLIP ViT-L/14-336 is in this machine's Hugging Face cache: the offline hub would find it")
    clip_vision = comfy.models_dir / "clip_vision"
    no_vision = build_llmga_checkpoint(tmp_path / "built", "qwen2", host_assistant.vision_tower,
                                       vision_weights_in_checkpoint=False).path
    # Names no other test loads: ComfyUI would answer a loader it ran before with the same inputs from its cache.
    folders = [comfy.models_dir / "LLM" / "llmga-no-vision", comfy.models_dir / "LLM" / "llmga-tower-check",
               clip_vision / "clip-vit-large-patch14-336"]
    shutil.move(clip_vision / "openai", tmp_path / "openai")
    try:
        copy_checkpoint(no_vision, folders[0], mm_vision_tower="openai/clip-vit-large-patch14-336")
        graph = preview(assistant_loader(folders[0].name))
        graph["1"]["inputs"]["allow_download"] = True
        offline = comfy.expect_error(graph)["exception_message"]
        copy_checkpoint(host_assistant.path, folders[1])
        shutil.copytree(tmp_path / "openai" / "clip-vit-large-patch14-336", folders[2])
        (folders[2] / "config.json").write_text('{"model_type": "llama", "hidden_size": 32}')
        broken = comfy.expect_error(preview(assistant_loader(folders[1].name)))
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        shutil.move(tmp_path / "openai", clip_vision / "openai")
    assert offline.startswith("LLMGA Load Assistant: openai/clip-vit-large-patch14-336 cannot be downloaded: the "
                              "Hugging Face hub is not reachable (offline, or HF_HUB_OFFLINE is set)")
    assert broken["exception_message"].startswith(
        f"LLMGA Load Assistant: {folders[2] / 'config.json'} is not a CLIP vision config (model_type 'llama'")
    for message in (offline, broken["exception_message"]):
        assert "\n" not in message.rstrip("\n") and "\x1b[" not in message
