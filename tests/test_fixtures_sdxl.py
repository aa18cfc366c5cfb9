"""The tiny SDXL fixtures are what they claim: folders laid out like the released LLMGA SDXL repos that diffusers loads
and runs, a single file that diffusers' own single-file loader reads as the same weights, and files that ComfyUI
0.3.75's own model detection takes for SDXL, an SDXL refiner, SD2, SD3 and Flux.

Uses the session's `sdxl_models` build (conftest.py) rather than a second ~4.5 GB build into tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline
from fixtures.sdxl import SDXLFixtures
from safetensors import safe_open
from transformers import CLIPTokenizer

PARTS = ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae")


def _keys(path: Path) -> list[str]:
    with safe_open(str(path), "pt") as file:
        return list(file.keys())


def _config(folder: Path, part: str) -> dict:
    name = "scheduler_config.json" if part == "scheduler" else "config.json"
    return json.loads((folder / part / name).read_text())


def test_layout_follows_the_released_sdxl_repos(sdxl_models: SDXLFixtures) -> None:
    root = sdxl_models.root
    assert sdxl_models.diffusers == root / "diffusers" / "tiny-sdxl"
    assert sdxl_models.checkpoint == root / "checkpoints" / "tiny-sdxl.safetensors"
    for folder, pipeline in ((sdxl_models.diffusers, "StableDiffusionXLPipeline"),
                             (sdxl_models.diffusers_inpainting, "StableDiffusionXLInpaintPipeline")):
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == pipeline and index["force_zeros_for_empty_prompt"] is True
        assert {part for part in index if not part.startswith("_") and isinstance(index[part], list)
                and index[part][0]} == set(PARTS)
        assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
        assert sorted(path.name for path in folder.iterdir() if path.is_dir()) == sorted(PARTS)

    folder = sdxl_models.diffusers
    text_encoder_2 = _config(folder, "text_encoder_2")
    assert text_encoder_2["architectures"] == ["CLIPTextModelWithProjection"]
    assert (text_encoder_2["hidden_size"], text_encoder_2["num_hidden_layers"], text_encoder_2["projection_dim"],
            text_encoder_2["hidden_act"]) == (1280, 32, 1280, "gelu")
    assert (text_encoder_2["bos_token_id"], text_encoder_2["eos_token_id"], text_encoder_2["pad_token_id"]) == (0, 2, 1)
    keys = _keys(folder / "text_encoder_2" / "model.safetensors")
    assert "text_projection.weight" in keys
    assert all(key.startswith("text_model.") for key in keys if key != "text_projection.weight")
    assert all(key.startswith("text_model.") for key in _keys(folder / "text_encoder" / "model.safetensors"))
    assert _config(folder, "scheduler")["_class_name"] == "EulerDiscreteScheduler"
    assert _config(folder, "vae")["scaling_factor"] == 0.13025


def test_inpainting_folder_differs_only_in_its_9_channel_unet(sdxl_models: SDXLFixtures) -> None:
    t2i, inpainting = sdxl_models.diffusers, sdxl_models.diffusers_inpainting
    assert (_config(t2i, "unet")["in_channels"], _config(inpainting, "unet")["in_channels"]) == (4, 9)
    for part in PARTS:
        if part != "unet":  # the same files, linked rather than copied
            for file in (t2i / part).iterdir():
                assert os.path.samefile(file, inpainting / part / file.name)


def test_tokenizers_are_the_real_clip_tokenizer_and_tokenizer_2_pads_with_exclamation_marks(
        sdxl_models: SDXLFixtures) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(sdxl_models.diffusers / "tokenizer", local_files_only=True)
    tokenizer_2 = CLIPTokenizer.from_pretrained(sdxl_models.diffusers / "tokenizer_2", local_files_only=True)
    for loaded in (tokenizer, tokenizer_2):
        assert loaded("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert loaded.model_max_length == 77
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 49407)
    assert (tokenizer_2.pad_token, tokenizer_2.pad_token_id) == ("!", 0)
    assert tokenizer_2("a cat", padding="max_length").input_ids[:6] == [49406, 320, 2368, 49407, 0, 0]


@pytest.fixture(scope="module")
def pipeline(sdxl_models: SDXLFixtures) -> StableDiffusionXLPipeline:
    return StableDiffusionXLPipeline.from_pretrained(sdxl_models.diffusers, local_files_only=True)


def test_diffusers_loads_the_folder_with_sdxl_shapes_and_runs_it(pipeline: StableDiffusionXLPipeline) -> None:
    assert isinstance(pipeline.scheduler, EulerDiscreteScheduler)
    assert {pipeline.unet.dtype, pipeline.vae.dtype, pipeline.text_encoder.dtype,
            pipeline.text_encoder_2.dtype} == {torch.float32}
    unet = pipeline.unet.config
    assert (unet.in_channels, unet.cross_attention_dim, unet.addition_embed_type) == (4, 2048, "text_time")
    assert unet.projection_class_embeddings_input_dim == 2816 and unet.use_linear_projection
    image = pipeline("a red fox in deep snow", num_inference_steps=2, height=64, width=64, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all() and image.std() > 0


def test_diffusers_loads_the_inpainting_folder_as_a_9_channel_pipeline(sdxl_models: SDXLFixtures,
                                                                      pipeline: StableDiffusionXLPipeline) -> None:
    inpainting = StableDiffusionXLInpaintPipeline.from_pretrained(
        sdxl_models.diffusers_inpainting, local_files_only=True, text_encoder=pipeline.text_encoder,
        text_encoder_2=pipeline.text_encoder_2, vae=pipeline.vae)  # shared parts: loaded once
    assert inpainting.unet.config.in_channels == 9
    assert inpainting.unet.conv_in.weight.shape[1] == 9


def test_single_file_is_in_stability_s_layout(sdxl_models: SDXLFixtures) -> None:
    keys = _keys(sdxl_models.checkpoint)
    prefixes = ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.transformer.text_model.",
                "conditioner.embedders.1.model.")
    assert all(key.startswith(prefixes) for key in keys)
    assert {prefix for prefix in prefixes for key in keys if key.startswith(prefix)} == set(prefixes)
    for marker in ("model.diffusion_model.label_emb.0.0.weight",  # SDXL's size/pooled-text embedding
                   "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight",
                   "model.diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_k.weight",
                   # what diffusers' single-file loader looks for to call a file SDXL base
                   "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
                   "conditioner.embedders.1.model.text_projection"):
        assert marker in keys


def test_diffusers_single_file_loader_reads_the_folder_s_weights(sdxl_models: SDXLFixtures,
                                                                pipeline: StableDiffusionXLPipeline) -> None:
    """diffusers' own converter (an independent implementation) takes the single file back to the folder's weights."""
    single = StableDiffusionXLPipeline.from_single_file(sdxl_models.checkpoint, config=str(sdxl_models.diffusers),
                                                        local_files_only=True)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        expected, actual = getattr(pipeline, part).state_dict(), getattr(single, part).state_dict()
        assert actual.keys() == expected.keys(), part
        for key, value in expected.items():
            assert torch.equal(actual[key], value), f"{part}: {key}"


DETECT = """
import json, sys, torch
files = sys.argv[1:]
sys.argv = sys.argv[:1] + ["--cpu"]
sys.path.insert(0, ".")
import comfy.options
comfy.options.enable_args_parsing()
import comfy.model_detection as detection
from safetensors import safe_open
found = {}
for name in files:
    with safe_open(name, "pt") as file:  # shapes only: detection reads no values
        state_dict = {key: torch.empty(file.get_slice(key).get_shape(), device="meta") for key in file.keys()}
    prefix = detection.unet_prefix_from_state_dict(state_dict)
    config = detection.model_config_from_unet(state_dict, prefix)
    found[name] = [prefix, type(config).__name__ if config else None,
                   config.unet_config.get("transformer_depth") if config else None]
print("DETECTED " + json.dumps(found))
"""


def test_comfyui_detects_each_file_as_its_family(sdxl_models: SDXLFixtures, comfy_path: Path) -> None:
    expected = {"checkpoint": "SDXL", "refiner": "SDXLRefiner", "sd2": "SD20", "sd3": "SD3", "flux": "Flux"}
    files = [str(getattr(sdxl_models, name)) for name in expected]
    result = subprocess.run([sys.executable, "-c", DETECT, *files], cwd=comfy_path, capture_output=True, text=True,
                            timeout=300)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("DETECTED ")]
    found = json.loads(line.removeprefix("DETECTED "))
    assert {name: found[file][:2] for name, file in zip(expected, files, strict=True)} == {
        name: ["model.diffusion_model.", family] for name, family in expected.items()}
    assert found[str(sdxl_models.checkpoint)][2] == [0, 0, 2, 2, 10, 10]
