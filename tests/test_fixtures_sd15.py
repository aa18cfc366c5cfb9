"""The tiny SD1.5 fixtures load with the stock diffusers / transformers loaders and have SD1.5's shapes.

Uses the session's `sd15_models` build (conftest.py) rather than a second ~3 GB build into tmp_path.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline
from fixtures.sd15 import SD15Fixtures
from safetensors import safe_open
from transformers import CLIPTokenizer


def _keys(path) -> list[str]:
    with safe_open(str(path), "pt") as file:
        return list(file.keys())


def _tensor(path, key: str) -> torch.Tensor:
    with safe_open(str(path), "pt") as file:
        return file.get_tensor(key)


def test_layout_follows_released_sd15_repos(sd15_models: SD15Fixtures) -> None:
    root = sd15_models.root
    assert sd15_models.diffusers == root / "diffusers" / "tiny-sd15"
    assert sd15_models.checkpoint == root / "checkpoints" / "tiny-sd15.safetensors"
    assert sd15_models.controlnet == root / "controlnet" / "tiny-sd15-controlnet.safetensors"
    index = json.loads((sd15_models.diffusers / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == index["feature_extractor"] == [None, None]
    inpaint_index = json.loads((sd15_models.diffusers_inpainting / "model_index.json").read_text())
    assert inpaint_index["_class_name"] == "StableDiffusionInpaintPipeline"

    text_encoder = sd15_models.diffusers / "text_encoder"
    assert json.loads((text_encoder / "config.json").read_text())["architectures"] == ["CLIPTextModel"]
    assert all(key.startswith("text_model.") for key in _keys(text_encoder / "model.safetensors"))
    tokenizer_config = json.loads((sd15_models.diffusers / "tokenizer" / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "CLIPTokenizer"


def test_tokenizer_is_the_real_clip_tokenizer(sd15_models: SD15Fixtures) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(sd15_models.diffusers / "tokenizer", local_files_only=True)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.model_max_length == 77


def test_diffusers_pipeline_loads_with_sd15_shapes(sd15_models: SD15Fixtures) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(sd15_models.diffusers, local_files_only=True)
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}

    unet = pipe.unet.config
    assert (unet.in_channels, unet.out_channels, unet.cross_attention_dim) == (4, 4, 768)
    assert tuple(unet.block_out_channels) == (320, 640) and unet.attention_head_dim == 8
    assert not unet.use_linear_projection
    assert tuple(pipe.vae.config.block_out_channels) == (128, 256, 512, 512)
    assert pipe.vae.config.latent_channels == 4
    clip = pipe.text_encoder.config
    assert (clip.hidden_size, clip.num_hidden_layers, clip.vocab_size) == (768, 12, 49408)

    scheduler = pipe.scheduler
    assert isinstance(scheduler, PNDMScheduler)
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.steps_offset == 1
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)

    with torch.no_grad():
        tokens = pipe.tokenizer("a photo of a cat", padding="max_length", return_tensors="pt").input_ids
        context = pipe.text_encoder(tokens).last_hidden_state
        noise = pipe.unet(torch.randn(2, 4, 8, 8), 500, context.expand(2, -1, -1)).sample
    assert context.shape == (1, 77, 768) and torch.isfinite(context).all()
    assert noise.shape == (2, 4, 8, 8) and torch.isfinite(noise).all() and noise.abs().max() < 1


def test_inpainting_pipeline_has_a_9_channel_unet(sd15_models: SD15Fixtures) -> None:
    pipe = StableDiffusionInpaintPipeline.from_pretrained(sd15_models.diffusers_inpainting, local_files_only=True)
    assert pipe.unet.config.in_channels == 9
    weight = _tensor(sd15_models.checkpoint_inpainting, "model.diffusion_model.input_blocks.0.0.weight")
    assert torch.equal(weight, pipe.unet.conv_in.weight)


@pytest.mark.parametrize(
    ("name", "prefixes", "marker"),
    [
        (
            "checkpoint",
            ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."),
            "model.diffusion_model.middle_block.1.proj_in.weight",
        ),
        ("controlnet", ("control_model.",), "control_model.zero_convs.0.0.weight"),  # what ComfyUI looks for
    ],
)
def test_single_files_are_in_the_original_layout(
    sd15_models: SD15Fixtures, name: str, prefixes: tuple[str, ...], marker: str
) -> None:
    keys = _keys(getattr(sd15_models, name))
    assert marker in keys
    assert {prefix for prefix in prefixes for key in keys if key.startswith(prefix)} == set(prefixes)
    assert all(key.startswith(prefixes) for key in keys)
