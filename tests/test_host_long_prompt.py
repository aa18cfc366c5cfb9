"""LLMGA Long Prompt Encode in a real ComfyUI equals the library encoding (transformers CLIP, same weights)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from llmga.prompt.clip_binding import TransformersCLIP
from llmga.prompt.long_prompt import encode_long_prompts

pytestmark = pytest.mark.host

WORDS = ("a red fox curled up in deep fresh snow soft golden hour light frost on its fur shallow depth of field "
         "eighty five millimetre photograph highly detailed pine trees behind misty morning").split()


@pytest.fixture(scope="module")
def library_clip(sd15_models) -> TransformersCLIP:
    folder = sd15_models.diffusers
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32).eval()
    return TransformersCLIP(encoder, CLIPTokenizer.from_pretrained(folder / "tokenizer"))


def prompt_of(tokens: int, clip: TransformersCLIP) -> str:
    """A prompt of exactly `tokens` CLIP tokens (no BOS/EOS)."""
    words: list[str] = []
    while len(clip.tokenize(" ".join(words))) < tokens:
        words.append(WORDS[len(words) % len(WORDS)])
    while len(clip.tokenize(" ".join(words))) > tokens:
        words[-1] = "a"
        if len(clip.tokenize(" ".join(words))) > tokens:
            words.pop()
    text = " ".join(words)
    assert len(clip.tokenize(text)) == tokens
    return text


def encode_in_comfy(comfy, sd15_models, positive: str, negative: str, mode: str, name: str):
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_models.checkpoint.name}},
        "2": {"class_type": "LLMGALongPromptEncode", "inputs": {
            "clip": ["1", 1], "prompt": positive, "negative_prompt": negative, "mode": mode, "max_chunks": 0}},
        "3": {"class_type": "LLMGATestSaveConditioning", "inputs": {"conditioning": ["2", 0], "name": f"{name}-pos"}},
        "4": {"class_type": "LLMGATestSaveConditioning", "inputs": {"conditioning": ["2", 1], "name": f"{name}-neg"}},
    }
    outputs = comfy.run(graph)
    saved = [load_file(comfy.output_dir / f"{name}-{part}.safetensors") for part in ("pos", "neg")]
    return saved, outputs["2"]["text"][0] if "2" in outputs else ""


@pytest.mark.parametrize("mode", ["llmga", "lpw"])
@pytest.mark.parametrize("tokens", [10, 76, 150, 299, 400])
def test_comfy_binding_equals_library_encoding(comfy, sd15_models, library_clip, mode, tokens):
    positive = prompt_of(tokens, library_clip)
    negative = "blurry, low quality"
    (pos, neg), _ = encode_in_comfy(comfy, sd15_models, positive, negative, mode, f"{mode}-{tokens}")
    expected = encode_long_prompts(positive, negative, library_clip.tokenize, library_clip.encode, mode=mode,
                                   bos=library_clip.bos, eos=library_clip.eos, pad=library_clip.pad)
    assert pos["cond"].shape == expected.positive.cond.shape == neg["cond"].shape
    torch.testing.assert_close(pos["cond"], expected.positive.cond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(neg["cond"], expected.negative.cond, atol=1e-5, rtol=1e-5)


def test_truncation_is_reported_on_the_node(comfy, sd15_models, library_clip):
    positive, negative = prompt_of(337, library_clip), prompt_of(301, library_clip)
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_models.checkpoint.name}},
        "2": {"class_type": "LLMGALongPromptEncode", "inputs": {
            "clip": ["1", 1], "prompt": positive, "negative_prompt": negative, "mode": "llmga", "max_chunks": 0}},
        "3": {"class_type": "LLMGATestSaveConditioning", "inputs": {"conditioning": ["2", 0], "name": "trunc"}},
    }
    outputs = comfy.run(graph)
    assert "dropped 37 tokens past the 300-token limit" in outputs["2"]["text"][0]
    assert "dropped 37 tokens" in comfy.log()
    assert outputs["2"]["text"][0].splitlines() == [
        "llmga: 4 chunks, 302 positions",
        "positive prompt: dropped 37 tokens past the 300-token limit",
        "negative prompt: dropped 1 token past the 300-token limit",
    ]
    assert "LLMGA Long Prompt Encode: negative prompt: dropped 1 token past" in comfy.log()


def test_report_names_one_chunk_and_no_truncation(comfy, sd15_models):
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_models.checkpoint.name}},
        "2": {"class_type": "LLMGALongPromptEncode", "inputs": {
            "clip": ["1", 1], "prompt": "a red fox", "negative_prompt": "", "mode": "lpw", "max_chunks": 0}},
        "3": {"class_type": "LLMGATestSaveConditioning", "inputs": {"conditioning": ["2", 0], "name": "short"}},
    }
    assert comfy.run(graph)["2"]["text"][0] == "lpw: 1 chunk, 77 positions"


def test_pooled_output_is_each_prompts_own(comfy, sd15_models, library_clip):
    """ComfyUI's CLIP returns one pooled output per call, so each prompt is encoded with its own call: the negative's
    pooled output is the negative's, not the positive's."""
    positive, negative = prompt_of(150, library_clip), "blurry, low quality"
    (pos, neg), _ = encode_in_comfy(comfy, sd15_models, positive, negative, "llmga", "pooled")
    expected = encode_long_prompts(positive, negative, library_clip.tokenize, library_clip.encode,
                                   bos=library_clip.bos, eos=library_clip.eos, pad=library_clip.pad)
    torch.testing.assert_close(neg["pooled"], expected.negative.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pos["pooled"], expected.positive.pooled, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(neg["pooled"], pos["pooled"])


def test_long_prompt_conditioning_drives_ksampler_and_controlnet(comfy, sd15_models):
    from PIL import Image

    Image.new("RGB", (64, 64), "white").save(comfy.input_dir / "llmga_lp_hint.png")
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_models.checkpoint.name}},
        "2": {"class_type": "LLMGALongPromptEncode", "inputs": {
            "clip": ["1", 1], "prompt": " ".join(WORDS * 6), "negative_prompt": "", "mode": "llmga", "max_chunks": 0}},
        "3": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": sd15_models.controlnet.name}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "llmga_lp_hint.png"}},
        "5": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["2", 0], "negative": ["2", 1], "control_net": ["3", 0], "image": ["4", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "vae": ["1", 2]}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["5", 0], "negative": ["5", 1], "latent_image": ["6", 0], "seed": 1,
            "steps": 2, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "llmga_long"}},
    }
    outputs = comfy.run(graph)
    assert len(outputs["9"]["images"]) == 1


def test_sdxl_style_clip_is_refused_clearly(comfy):
    info = comfy.object_info()["LLMGALongPromptEncode"]
    assert info["input"]["required"]["mode"][1]["options"] == ["llmga", "lpw", "comfy"]
