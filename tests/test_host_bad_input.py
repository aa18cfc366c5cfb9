"""Bad input through `/prompt` on a real ComfyUI server: hostile model names, damaged or wrong weight files and
folders, images and masks that do not fit, odd text and settings. Each refusal is one line that starts with the
node's name (no ANSI codes, no traceback), a weight file's pickled payload never runs, and the same server then runs
a good graph of the same nodes.

The good loaders sit (unconnected where unused) in every graph under fixed node ids, so ComfyUI keeps them cached:
a good graph after a bad one runs only the node it checks (a tiny chat, restore or paste, or one CLIP encode).
"""

from __future__ import annotations

import io
import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fixtures.edited import copy_checkpoint
from PIL import Image
from test_cli_bad_input import (
    damaged,
    first_shard,
    linked_copy,
    random_bytes,
    write_payload_pickle,
    write_payload_torch_file,
)

pytestmark = pytest.mark.host

ASSISTANT, SD, DIFFRIR = "901", "902", "903"
FRESH = itertools.count()  # makes each good graph's inputs new, so its nodes really run
PREFIX = "bad-input-"  # every file this module adds to the server's folders
RELEASED = "binxia/llmga-Qwen2-0.5B-full-finetune"  # the host_assistant fixture sits in models/LLM under this name


def refused(comfy, graph: dict, node: str) -> str:
    """Run `graph`, which must fail in `node`; returns its one-line message without the node prefix."""
    error = comfy.expect_error(graph)
    assert error["exception_type"] == "RuntimeError"
    message = error["exception_message"].removesuffix("\n")  # ComfyUI ends every exception message with a newline
    assert message.startswith(f"{node}: "), message
    assert "\n" not in message and "\r" not in message and "\x1b" not in message
    assert "Traceback" not in message
    return message.removeprefix(f"{node}: ")


def preview(link: list) -> dict:
    return {"class_type": "PreviewAny", "inputs": {"source": link}}


def preview_image(link: list) -> dict:
    return {"class_type": "PreviewImage", "inputs": {"images": link}}


def load_image(name: str) -> dict:
    return {"class_type": "LoadImage", "inputs": {"image": f"{PREFIX}{name}.png"}}


def solid_mask(width: int, height: int, value: float = 1.0) -> dict:
    return {"class_type": "SolidMask", "inputs": {"value": value, "width": width, "height": height}}


def chat(message: str, task: str = "chat", **inputs) -> dict:
    return {"class_type": "LLMGAChat", "inputs": {
        "assistant": [ASSISTANT, 0], "message": message, "task": task, "seed": next(FRESH), "temperature": 0.0,
        "top_p": 1.0, "max_new_tokens": 2, "keep_loaded": True, **inputs}}


def restore(**inputs) -> dict:
    return {"class_type": "LLMGADiffRIRRestore", "inputs": {
        "diffrir": [DIFFRIR, 0], "generated": ["11", 0], "reference": ["12", 0], "mask": ["13", 0], "seed": next(FRESH),
        "tile_size": 0, "dilate": 0, "feather": 0, **inputs}}


def paste_back(**inputs) -> dict:
    return {"class_type": "LLMGAPasteBack", "inputs": {
        "original": ["11", 0], "generated": ["12", 0], "mask": ["13", 0], "feathering": next(FRESH) % 4, **inputs}}


def long_prompt(prompt: str, mode: str = "llmga") -> dict:
    return {"class_type": "LLMGALongPromptEncode", "inputs": {
        "clip": [SD, 1], "prompt": prompt, "negative_prompt": "", "mode": mode, "max_chunks": 0}}


def inversion_edit(**inputs) -> dict:
    return {"class_type": "LLMGAInversionEdit", "inputs": {
        "model": [SD, 0], "clip": [SD, 1], "vae": [SD, 2], "image": ["11", 0], "source_prompt": "a cat",
        "target_prompt": "a dog", "method": "direct_inversion_p2p", "steps": 2, "cfg": 7.5, "source_cfg": 3.5,
        "skip": 25, "controller": "refine", "cross_replace": 0.4, "self_replace": 0.6, "blend_source_words": "",
        "blend_target_words": "", "blend_threshold": 0.3, "prompt_mode": "llmga", "seed": 3, **inputs}}


@dataclass
class Server:
    """The test server, the good loaders every graph carries, and the fixture models."""

    comfy: object
    loaders: dict[str, dict]
    assistant: Path  # the checkpoint folder in models/LLM
    sd: Path  # the diffusers folder in models/diffusers
    sd_checkpoint: Path  # the single file in models/checkpoints
    diffrir: Path  # the weight file in models/diffrir

    def graph(self, nodes: dict) -> dict:
        return {**self.loaders, **nodes}

    def refuses(self, nodes: dict, node: str) -> str:
        """The one-line message (without the node prefix) of `nodes`, which must fail in `node`; then a good graph
        through the same node (or the node its loader feeds) must run."""
        message = refused(self.comfy, self.graph(nodes), node)
        self.still_serves(node)
        return message

    def run(self, nodes: dict) -> dict:
        return self.comfy.run(self.graph(nodes))

    def image(self, outputs: dict, node: str) -> np.ndarray:
        (entry,) = outputs[node]["images"]
        return np.asarray(Image.open(io.BytesIO(self.comfy.view(entry))))

    def still_serves(self, node: str) -> None:
        """Run a good graph with new inputs through `node`'s family: Chat for the assistant's nodes, Long Prompt Encode
        for the SD nodes, Restore for DiffRIR's, Paste Back for the image nodes."""
        number, family = next(FRESH), GOOD_GRAPH[node]
        if family == "assistant":
            outputs = self.run({"1": chat(f"a boat number {number}"), "2": preview(["1", 4])})
            assert isinstance(outputs["2"]["text"][0], str)
        elif family == "sd":
            outputs = self.run({"1": long_prompt(f"a red fox number {number}"), "2": {
                "class_type": "LLMGATestSaveConditioning", "inputs": {"conditioning": ["1", 0], "name": "bad-input"}}})
            assert outputs["1"]["text"][0] == "llmga: 1 chunk, 77 positions"
        else:
            box = {"class_type": "LoadImageMask", "inputs": {"image": f"{PREFIX}box.png", "channel": "red"}}
            outputs = self.run({"11": load_image("noise"), "12": load_image("other"), "13": box,
                                "1": restore() if family == "diffrir" else paste_back(), "2": preview_image(["1", 0])})
            assert self.image(outputs, "2").shape == (40, 72, 3)


GOOD_GRAPH = {"LLMGA Load Assistant": "assistant", "LLMGA Chat": "assistant", "LLMGA Load SD1.5": "sd",
              "LLMGA Long Prompt Encode": "sd", "LLMGA Inversion Edit": "sd", "LLMGA Load DiffRIR": "diffrir",
              "LLMGA DiffRIR Restore": "diffrir", "LLMGA Paste Back": "image"}


@pytest.fixture(scope="module")
def server(comfy, host_assistant, sd15_models, host_diffrir) -> Server:
    """The server, its input pictures (noise 72x40 twice, 64x40, 1x1, a box mask) and bad model files; the files are
    removed afterwards, so other modules see the folders as they were."""
    rng = np.random.default_rng(0)
    for name, (width, height) in {"noise": (72, 40), "other": (72, 40), "narrower": (64, 40), "tiny": (1, 1)}.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            comfy.input_dir / f"{PREFIX}{name}.png")
    box = np.zeros((40, 72), dtype=np.uint8)
    box[8:30, 20:60] = 255
    Image.fromarray(box).save(comfy.input_dir / f"{PREFIX}box.png")
    made = write_bad_models(comfy.models_dir, comfy.base_dir, host_assistant.path, sd15_models.checkpoint,
                            host_diffrir)
    loaders = {
        ASSISTANT: {"class_type": "LLMGALoadAssistant", "inputs": {
            "model": f"binxia/{host_assistant.path.name}", "dtype": "fp32", "device": "cpu", "quantization": "none",
            "attention": "sdpa", "template": "auto", "allow_download": False}},
        SD: {"class_type": "LLMGALoadSD15", "inputs": {"model": sd15_models.diffusers.name, "allow_download": False}},
        DIFFRIR: {"class_type": "LLMGALoadDiffRIR", "inputs": {"model": host_diffrir.name, "dtype": "fp32"}},
    }
    yield Server(comfy, loaders, host_assistant.path, sd15_models.diffusers, sd15_models.checkpoint, host_diffrir)
    for path in made:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def write_bad_models(models: Path, base: Path, assistant: Path, sd_checkpoint: Path, diffrir: Path) -> list[Path]:
    """Damaged, hostile and misplaced model files in the server's folders (names start with PREFIX), and a valid
    DiffRIR file outside them (base/outside); returns everything written."""
    shard, weights = first_shard(assistant), [path.name for path in assistant.glob("model*")]
    shard_bytes = (assistant / shard).read_bytes()
    llm, checkpoints, folders, networks = (models / kind for kind in ("LLM", "checkpoints", "diffusers", "diffrir"))
    made = [linked_copy(assistant, llm / f"{PREFIX}{how}-shard", {shard: damaged(shard_bytes, how)})
            for how in ("zero", "truncated", "random")]
    made += [linked_copy(assistant, llm / f"{PREFIX}no-weights", dict.fromkeys(weights)),
             linked_copy(assistant, llm / f"{PREFIX}bad-config", {"config.json": b"{not json"}),
             copy_checkpoint(assistant, llm / f"{PREFIX}llama-config", model_type="llava_llama",
                             architectures=["LlavaLlamaForCausalLM"]),
             copy_checkpoint(assistant, llm / f"{PREFIX}hub-tower", mm_vision_tower="evil-user/evil-repo"),
             copy_checkpoint(assistant, llm / f"{PREFIX}etc-tower", mm_vision_tower="/etc"),
             # named like the released tower but outside the clip_vision folders, with a config that does not load
             copy_checkpoint(assistant, llm / f"{PREFIX}outside-tower",
                             mm_vision_tower=str(base / "outside" / "clip-vit-large-patch14-336"))]
    payload = base / "payload-ran"
    made.append(write_payload_torch_file(checkpoints / f"{PREFIX}payload.ckpt", payload))
    made.append(linked_copy(assistant, llm / f"{PREFIX}payload-bin", dict.fromkeys(weights)))
    write_payload_torch_file(made[-1] / "pytorch_model.bin", payload)
    for folder, files in {llm / f"{PREFIX}not-a-model": {"README.md": b"notes"},
                          folders / f"{PREFIX}empty-index": {"model_index.json": b"{}"},
                          folders / f"{PREFIX}not-json": {"model_index.json": b"not json"},
                          base / "outside" / "clip-vit-large-patch14-336": {"config.json": b"{not json"}}.items():
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        made.append(folder)
    made.append(base / "outside")
    shutil.copy(diffrir, base / "outside" / "net_g.pth")
    for path, data in {checkpoints / f"{PREFIX}zero.safetensors": b"",
                       checkpoints / f"{PREFIX}random.safetensors": random_bytes(4096),
                       networks / f"{PREFIX}zero.safetensors": b"",
                       networks / f"{PREFIX}random.safetensors": random_bytes(4096),
                       networks / f"{PREFIX}zero.pth": b"",
                       networks / f"{PREFIX}truncated.pth": damaged(diffrir.read_bytes(), "truncated")}.items():
        path.write_bytes(data)
        made.append(path)
    (networks / f"{PREFIX}sd15.safetensors").symlink_to(sd_checkpoint)
    made += [networks / f"{PREFIX}sd15.safetensors",
             write_payload_pickle(networks / f"{PREFIX}payload.pth", payload),
             write_payload_torch_file(networks / f"{PREFIX}payload-zip.pth", payload)]
    return made


def load_assistant(model: str, **settings) -> dict:
    inputs = {"model": model, "dtype": "fp32", "device": "cpu", "quantization": "none", "attention": "sdpa",
              "template": "auto", "allow_download": False}
    return {"1": {"class_type": "LLMGALoadAssistant", "inputs": {**inputs, **settings}}, "2": preview(["1", 0])}


def load_sd(model: str) -> dict:
    return {"1": {"class_type": "LLMGALoadSD15", "inputs": {"model": model, "allow_download": False}},
            "2": preview(["1", 2])}


def load_diffrir(model: str, dtype: str = "fp32") -> dict:
    return {"1": {"class_type": "LLMGALoadDiffRIR", "inputs": {"model": model, "dtype": dtype}}, "2": preview(["1", 0])}


# --- model names that leave the model folders ------------------------------------------------------------------

NAMES = {
    "assistant ../../x": (lambda s: load_assistant("../../x"), "LLM"),
    "assistant NUL": (lambda s: load_assistant("binxia/llmga\x00x"), "LLM"),
    "assistant absolute path of the checkpoint": (lambda s: load_assistant(str(s.assistant)), "LLM"),
    "assistant ../LLM/<the checkpoint>": (lambda s: load_assistant(f"../LLM/{s.assistant.name}"), "LLM"),
    "sd ../../x": (lambda s: load_sd("../../x"), "diffusers"),
    "sd NUL": (lambda s: load_sd("tiny-sd15\x00x"), "diffusers"),
    "sd absolute path of the diffusers folder": (lambda s: load_sd(str(s.sd)), "diffusers"),
    "sd absolute path of the single file": (lambda s: load_sd(str(s.sd_checkpoint)), "diffusers"),
    "sd ../diffusers/<the folder>": (lambda s: load_sd(f"../diffusers/{s.sd.name}"), "diffusers"),
    "diffrir ../../x": (lambda s: load_diffrir("../../x"), "diffrir"),
    "diffrir NUL": (lambda s: load_diffrir("tiny\x00x.pth"), "diffrir"),
    "diffrir ../../outside/net_g.pth": (lambda s: load_diffrir("../../outside/net_g.pth"), "diffrir"),
    "diffrir absolute path of the weights": (lambda s: load_diffrir(str(s.diffrir)), "diffrir"),
    "diffrir /etc/passwd": (lambda s: load_diffrir("/etc/passwd"), "diffrir"),
}
LOADERS = {"LLM": "LLMGA Load Assistant", "diffusers": "LLMGA Load SD1.5", "diffrir": "LLMGA Load DiffRIR"}


@pytest.mark.parametrize("case", NAMES)
def test_a_name_outside_the_model_folders_is_refused_naming_them(server, case):
    graph, folder = NAMES[case]
    assert str(server.comfy.models_dir / folder) in server.refuses(graph(server), LOADERS[folder])


# --- damaged weight files, folders that are not models, the wrong model ------------------------------------------

FILES = {
    "sd zero-byte .safetensors": (load_sd, f"{PREFIX}zero.safetensors", "is empty (0 bytes)"),
    "sd random .safetensors": (load_sd, f"{PREFIX}random.safetensors", "is truncated or not a safetensors file"),
    "diffrir zero-byte .safetensors": (load_diffrir, f"{PREFIX}zero.safetensors", "is empty (0 bytes)"),
    "diffrir random .safetensors": (load_diffrir, f"{PREFIX}random.safetensors",
                                    "is truncated or not a safetensors file"),
    "diffrir zero-byte .pth": (load_diffrir, f"{PREFIX}zero.pth", "is empty (0 bytes)"),
    "diffrir truncated .pth": (load_diffrir, f"{PREFIX}truncated.pth", "is truncated or corrupt"),
    "diffrir an SD1.5 checkpoint": (load_diffrir, f"{PREFIX}sd15.safetensors", "is not a DiffRIR S2 state dict"),
    "assistant zero-byte shard": (load_assistant, f"{PREFIX}zero-shard", "00002.safetensors is empty (0 bytes)"),
    "assistant truncated shard": (load_assistant, f"{PREFIX}truncated-shard",
                                  "00002.safetensors is truncated or not a safetensors file"),
    "assistant random shard": (load_assistant, f"{PREFIX}random-shard",
                               "00002.safetensors is truncated or not a safetensors file"),
    "assistant whose config.json names another family": (
        load_assistant, f"{PREFIX}llama-config", "holds the weights of another model: they hold 6 tensors a llama "
        "model does not have (self_attn.k_proj.bias, self_attn.q_proj.bias, self_attn.v_proj.bias); config.json says "
        "llava_llama, but the files look like a qwen2 checkpoint"),
    "assistant whose vision tower is a hub repo": (
        load_assistant, f"{PREFIX}hub-tower", "config.json names the vision tower 'evil-user/evil-repo' "
        "(mm_vision_tower), but LLMGA checkpoints use openai/clip-vit-large-patch14-336 only"),
    "assistant whose vision tower is /etc": (
        load_assistant, f"{PREFIX}etc-tower", "config.json names the vision tower '/etc' (mm_vision_tower), but LLMGA "
        "checkpoints use openai/clip-vit-large-patch14-336 only"),
    "assistant without weights": (load_assistant, f"{PREFIX}no-weights", "has no weights"),
    "assistant broken config.json": (load_assistant, f"{PREFIX}bad-config", "config.json is not valid JSON"),
    "assistant folder that is no model": (load_assistant, f"{PREFIX}not-a-model", "config.json"),
    "sd folder with an empty model_index.json": (load_sd, f"{PREFIX}empty-index", "has no unet/ folder"),
    "sd folder whose model_index.json is no JSON": (load_sd, f"{PREFIX}not-json", "model_index.json is not valid JSON"),
}
NODES = {load_assistant: "LLMGA Load Assistant", load_sd: "LLMGA Load SD1.5", load_diffrir: "LLMGA Load DiffRIR"}


@pytest.mark.parametrize("case", FILES)
def test_a_damaged_file_or_a_folder_that_is_no_model_is_refused_naming_it(server, case):
    graph, name, expected = FILES[case]
    message = server.refuses(graph(name), NODES[graph])
    assert expected in message
    # The file or folder is named; a vision tower error names the folders the tower may come from instead.
    assert str(server.comfy.models_dir / "clip_vision") in message if "vision tower" in expected else name in message


PAYLOADS = {
    "diffrir plain pickle .pth": (load_diffrir, f"{PREFIX}payload.pth", "is not a readable weight file"),
    "diffrir torch .pth": (load_diffrir, f"{PREFIX}payload-zip.pth", "holds Python objects besides tensors (io.open)"),
    "sd torch .ckpt": (load_sd, f"{PREFIX}payload.ckpt", "holds Python objects besides tensors (io.open)"),
    "assistant pytorch_model.bin": (load_assistant, f"{PREFIX}payload-bin",
                                    "pytorch_model.bin holds Python objects besides tensors (io.open)"),
}


@pytest.mark.parametrize("case", PAYLOADS)
def test_a_pickled_payload_never_runs(server, case):
    graph, name, expected = PAYLOADS[case]
    message = server.refuses(graph(name), NODES[graph])
    assert name in message and expected in message
    assert not (server.comfy.base_dir / "payload-ran").exists()


def test_a_vision_tower_path_in_config_json_is_never_read(server):
    """config.json names a folder outside clip_vision (named like the released tower, holding a config that would
    not load): the node takes the tower from the clip_vision folders, so the checkpoint loads and chats."""
    outputs = server.run({"1": load_assistant(f"{PREFIX}outside-tower")["1"], "2": chat("hi", assistant=["1", 0]),
                          "3": preview(["2", 4])})
    assert isinstance(outputs["3"]["text"][0], str)


# --- images and masks -------------------------------------------------------------------------------------------

SIZES = {
    "paste back: mask 32x32 on 72x40": (
        {"11": load_image("noise"), "12": load_image("other"), "13": solid_mask(32, 32), "1": paste_back(),
         "2": preview(["1", 0])}, "LLMGA Paste Back", "the mask is 32x32 but the original image is 72x40"),
    "paste back: 1x1 generated on 72x40": (
        {"11": load_image("noise"), "12": load_image("tiny"), "13": solid_mask(72, 40), "1": paste_back(),
         "2": preview(["1", 0])}, "LLMGA Paste Back", "the generated image is 1x1 but the original is 72x40"),
    "restore: reference 64x40 for 72x40": (
        {"11": load_image("noise"), "12": load_image("narrower"), "13": solid_mask(72, 40), "1": restore(),
         "2": preview(["1", 0])}, "LLMGA DiffRIR Restore", "the reference is 64x40 but the generated image is 72x40"),
    "chat: inpaint with an all-zero mask": (
        {"11": load_image("noise"), "13": solid_mask(72, 40, 0.0), "1": chat("", "inpaint", image=["11", 0],
                                                                             mask=["13", 0]), "2": preview(["1", 0])},
        "LLMGA Chat", "the mask marks no pixel to inpaint (all of it is below 49% gray): mark the area to inpaint in "
                      "white"),
    "chat: mask 32x32 on 72x40": (
        {"11": load_image("noise"), "13": solid_mask(32, 32), "1": chat("", "inpaint", image=["11", 0],
                                                                         mask=["13", 0]), "2": preview(["1", 0])},
        "LLMGA Chat", "the mask is 32x32 but the image is 72x40"),
}


@pytest.mark.parametrize("case", SIZES)
def test_sizes_that_do_not_match_are_refused(server, case):
    nodes, node, expected = SIZES[case]
    assert expected in server.refuses(nodes, node)


MASK_NOTES = {
    "restore: all-zero mask": (restore, 0.0, "the mask marks no pixel to restore: the output is the reference "
                               "unchanged (paint the generated region white)"),
    "restore: all-one mask": (restore, 1.0, "the mask covers the whole picture: no pixel of the reference is kept, so "
                              "DiffRIR has nothing to match the generated picture to (mask only the generated region)"),
    "paste back: all-zero mask": (paste_back, 0.0, "the mask is all 0: the output is the original, the generated "
                                  "image is not used"),
    "paste back: all-one mask": (paste_back, 1.0, "the mask is all 1: the output is the generated image, nothing of "
                                 "the original is kept"),
}


@pytest.mark.parametrize("case", MASK_NOTES)
def test_a_mask_that_marks_nothing_or_everything_is_said_on_the_node(server, case):
    node, value, note = MASK_NOTES[case]
    outputs = server.run({"11": load_image("noise"), "12": load_image("other"), "13": solid_mask(72, 40, value),
                          "1": node(), "2": preview_image(["1", 0])})
    assert note in outputs["1"]["text"][0].splitlines()
    assert server.image(outputs, "2").shape == (40, 72, 3)


# --- text and settings ------------------------------------------------------------------------------------------

SETTINGS = {
    "chat: empty message": (
        {"1": chat("   ", "text_to_image"), "2": preview(["1", 0])}, "LLMGA Chat", "got empty text"),
    "chat: 10,000 words": (
        {"1": chat("word " * 10_000), "2": preview(["1", 0])}, "LLMGA Chat", "but the model reads at most 2048"),
    "chat: unknown task": ({"1": chat("hi", "bogus"), "2": preview(["1", 0])}, "LLMGA Chat", "Unknown task 'bogus'"),
    "edit: empty source prompt": (
        {"11": load_image("noise"), "1": inversion_edit(source_prompt=""), "2": preview(["1", 0])},
        "LLMGA Inversion Edit", "the source prompt is empty"),
    "edit: blend word missing from the prompt": (
        {"11": load_image("noise"), "1": inversion_edit(blend_source_words="zebra", blend_target_words="dog"),
         "2": preview(["1", 0])}, "LLMGA Inversion Edit", "'zebra' is not in the source prompt"),
    "long prompt: unknown mode": (
        {"1": long_prompt("a fox", "bogus"), "2": preview(["1", 0])}, "LLMGA Long Prompt Encode",
        "unknown long-prompt mode 'bogus'"),
    "restore: tile 48": (
        {"11": load_image("noise"), "12": load_image("other"), "13": solid_mask(72, 40), "1": restore(tile_size=48),
         "2": preview(["1", 0])}, "LLMGA DiffRIR Restore", "tile is 48 px; use a multiple of 32"),
    "diffrir: dtype fp8": (load_diffrir("tiny-diffrir-x1.pth", "fp8"), "LLMGA Load DiffRIR",
                           "dtype 'fp8' is not one of auto, bf16, fp16, fp32"),
    "assistant: dtype fp8": (load_assistant(RELEASED, dtype="fp8"), "LLMGA Load Assistant",
                             "dtype 'fp8' is not one of auto, bf16, fp16, fp32"),
    "assistant: device tpu": (load_assistant(RELEASED, device="tpu"), "LLMGA Load Assistant",
                              "device 'tpu' is not one of auto, cuda, cpu, mps"),
    "assistant: unknown template": (load_assistant(RELEASED, template="bogus"),
                                    "LLMGA Load Assistant", "Unknown chat template 'bogus'"),
}


@pytest.mark.parametrize("case", SETTINGS)
def test_bad_text_or_settings_are_refused(server, case):
    nodes, node, expected = SETTINGS[case]
    assert expected in server.refuses(nodes, node)


# --- odd but valid input ----------------------------------------------------------------------------------------

RTL_NUL = "مرحبا بالعالم \u202e abc \x00 日本語 🦊"


def test_a_one_pixel_image_is_described_edited_padded_and_restored(server):
    outputs = server.run({
        "11": load_image("tiny"), "12": load_image("tiny"), "13": solid_mask(1, 1),
        "7": restore(), "8": preview_image(["7", 0]),
        "1": chat("", "describe", image=["11", 0]), "2": preview(["1", 4]),
        "3": inversion_edit(), "4": preview_image(["3", 0]),
        "5": {"class_type": "LLMGAOutpaintCanvas", "inputs": {"image": ["11", 0], "left": 0, "top": 0, "right": 8,
                                                              "bottom": 0, "feathering": 0}},
        "6": preview_image(["5", 0]),
    })
    assert isinstance(outputs["2"]["text"][0], str)
    assert server.image(outputs, "4").shape == (1, 1, 3)
    assert server.image(outputs, "6").shape == (8, 16, 3)  # 1 + 8 -> 16 wide, 1 -> 8 high
    assert server.image(outputs, "8").shape == (1, 1, 3)


@pytest.mark.parametrize(("prompt", "report"), [
    ("", "llmga: 1 chunk, 77 positions"),
    (RTL_NUL, "llmga: 1 chunk, 77 positions"),
    ("word " * 10_000, "llmga: 4 chunks, 302 positions\npositive prompt: dropped 9700 tokens past the 300-token limit"),
], ids=["empty", "right-to-left and NUL", "10,000 words"])
def test_long_prompt_encode_takes_any_text(server, prompt, report):
    outputs = server.run({"1": long_prompt(prompt), "2": {"class_type": "LLMGATestSaveConditioning", "inputs": {
        "conditioning": ["1", 0], "name": "bad-input-text"}}})
    assert outputs["1"]["text"][0] == report


def test_right_to_left_and_nul_text_reaches_chat_and_edit(server):
    outputs = server.run({
        "1": chat(RTL_NUL), "2": preview(["1", 4]),
        "11": load_image("noise"), "3": inversion_edit(target_prompt=RTL_NUL),
        "4": preview_image(["3", 0]),
    })
    assert isinstance(outputs["2"]["text"][0], str)
    assert server.image(outputs, "4").shape == (40, 72, 3)
