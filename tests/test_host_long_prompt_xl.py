"""LLMGA Long Prompt Encode (SDXL) in a real ComfyUI, on the CLIP of an SDXL single file, equals the library encoding
(`encode_sdxl_long_prompts` through transformers) on the same weights, and its conditioning drives KSampler with the
size conditioning it was given. The server runs its text encoders in fp32 (`--fp32-text-enc`)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from llmga.prompt.clip_binding import TransformersSDXLCLIP
from llmga.prompt.long_prompt_xl import encode_sdxl_long_prompts

pytestmark = pytest.mark.host

NODE = "LLMGALongPromptEncodeSDXL"
WORDS = ("a red fox curled up in deep fresh snow soft golden hour light frost on its fur shallow depth of field "
         "eighty five millimetre photograph highly detailed pine trees behind misty morning").split()
DEFAULT_SIZES = {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}
# Full-size CLIP-L and CLIP-bigG (32 layers) in two implementations (ComfyUI's and transformers'), both fp32.
ATOL = 1e-5


@pytest.fixture(scope="module")
def library_clip(sdxl_models) -> TransformersSDXLCLIP:
    folder = sdxl_models.diffusers
    return TransformersSDXLCLIP(
        CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32).eval(),
        CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", dtype=torch.float32).eval(),
        CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
    )


def prompt_of(tokens: int, clip: TransformersSDXLCLIP, offset: int = 0) -> str:
    """A prompt of exactly `tokens` CLIP tokens (no BOS/EOS)."""
    words = [WORDS[(i + offset) % len(WORDS)] for i in range(tokens)]
    while len(clip.tokenize_2(" ".join(words))) > tokens:
        words.pop()
    while len(clip.tokenize_2(" ".join(words))) < tokens:
        words.append("a")
    text = " ".join(words)
    assert len(clip.tokenize_1(text)) == len(clip.tokenize_2(text)) == tokens
    return text


def checkpoint(sdxl_models) -> dict:
    return {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sdxl_models.checkpoint.name}}


def encode_node(clip: list, positive: str, negative: str, mode: str = "llmga", **sizes) -> dict:
    return {"class_type": NODE, "inputs": {"clip": clip, "prompt": positive, "negative_prompt": negative, "mode": mode,
                                           "max_chunks": 0, **DEFAULT_SIZES, **sizes}}


def save(conditioning: list, name: str) -> dict:
    return {"class_type": "LLMGATestSaveConditioning", "inputs": {"conditioning": conditioning, "name": name}}


def encode_in_comfy(comfy, sdxl_models, positive: str, negative: str, name: str, mode: str = "llmga"):
    graph = {"1": checkpoint(sdxl_models), "2": encode_node(["1", 1], positive, negative, mode),
             "3": save(["2", 0], f"{name}-pos"), "4": save(["2", 1], f"{name}-neg")}
    outputs = comfy.run(graph)
    saved = [load_file(comfy.output_dir / f"{name}-{part}.safetensors") for part in ("pos", "neg")]
    return saved, outputs.get("2", {}).get("text", [""])[0]


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected.float(), atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize(("tokens", "negative_tokens", "length", "summary"), [
    (10, None, 77, "llmga: 1 chunk, 77 positions"),
    (160, 0, 227, "llmga: 3 chunks, 227 positions, no negative prompt: zeros"),
    (400, 80, 302, "llmga: 4 chunks, 302 positions"),
    (20, 200, 227, "llmga: 3 chunks, 227 positions"),
])
def test_node_equals_library_encoding(comfy, sdxl_models, library_clip, tokens, negative_tokens, length, summary):
    positive = prompt_of(tokens, library_clip)
    negative = "blurry, low quality" if negative_tokens is None else prompt_of(negative_tokens, library_clip, 7)
    (pos, neg), text = encode_in_comfy(comfy, sdxl_models, positive, negative, f"xl-{tokens}-{negative_tokens}")
    expected = encode_sdxl_long_prompts(library_clip, positive, negative)
    assert expected.length == length and pos["cond"].shape == neg["cond"].shape == (1, length, 2048)
    close(pos["cond"], expected.embeddings)
    close(pos["pooled"], expected.pooled)
    close(neg["cond"], expected.negative_embeddings)
    close(neg["pooled"], expected.negative_pooled)
    assert text.splitlines()[0] == summary
    if negative_tokens == 0:
        assert not neg["cond"].any() and not neg["pooled"].any()
    else:
        assert not torch.allclose(neg["pooled"], pos["pooled"])


def test_truncation_is_reported_on_the_node(comfy, sdxl_models, library_clip):
    positive, negative = prompt_of(337, library_clip), prompt_of(301, library_clip, 3)
    _, text = encode_in_comfy(comfy, sdxl_models, positive, negative, "xl-trunc")
    assert text.splitlines() == [
        "llmga: 4 chunks, 302 positions",
        "positive prompt: dropped 37 tokens past the 300-token limit",
        "negative prompt: dropped 1 token past the 300-token limit",
    ]
    assert "LLMGA Long Prompt Encode (SDXL): negative prompt: dropped 1 token past" in comfy.log()


def test_comfy_mode_equals_clip_text_encode_sdxl(comfy, sdxl_models, library_clip):
    positive, negative = prompt_of(100, library_clip), ""
    (pos, neg), text = encode_in_comfy(comfy, sdxl_models, positive, negative, "xl-comfy", mode="comfy")
    native = {"class_type": "CLIPTextEncodeSDXL", "inputs": {"clip": ["1", 1], **DEFAULT_SIZES}}
    comfy.run({"1": checkpoint(sdxl_models),
               "2": {**native, "inputs": {**native["inputs"], "text_g": positive, "text_l": positive}},
               "3": {**native, "inputs": {**native["inputs"], "text_g": negative, "text_l": negative}},
               "4": save(["2", 0], "xl-native-pos"), "5": save(["3", 0], "xl-native-neg")})
    for ours, name in ((pos, "xl-native-pos"), (neg, "xl-native-neg")):
        reference = load_file(comfy.output_dir / f"{name}.safetensors")
        assert torch.equal(ours["cond"], reference["cond"]) and torch.equal(ours["pooled"], reference["pooled"])
    assert pos["cond"].shape[1] == 154 and text == "ComfyUI's native encoding"


def sample(comfy, graph: dict, positive: list, negative: list, name: str) -> torch.Tensor:
    """KSampler (1 step, 64x64) on the SDXL fixture with this conditioning; the latent it returns."""
    graph = {**graph,
             "20": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
             "21": {"class_type": "KSampler", "inputs": {
                 "model": ["1", 0], "positive": positive, "negative": negative, "latent_image": ["20", 0], "seed": 3,
                 "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
             "22": {"class_type": "SaveLatent", "inputs": {"samples": ["21", 0], "filename_prefix": f"latents/{name}"}}}
    saved = comfy.run(graph)["22"]["latents"][0]
    return load_file(comfy.output_dir / saved["subfolder"] / saved["filename"])["latent_tensor"]


def test_size_conditioning_reaches_the_sampler(comfy, sdxl_models):
    """With the text zeroed out (ConditioningZeroOut keeps the size keys) the pack's conditioning and
    CLIPTextEncodeSDXL's give the same samples exactly when they carry the same sizes; the pack's empty negative is
    those zeros already."""
    sizes = {"width": 832, "height": 1216, "crop_w": 64, "crop_h": 32, "target_width": 896, "target_height": 1152}

    def pack(**given):
        graph = {"1": checkpoint(sdxl_models), "2": encode_node(["1", 1], "a red fox in deep snow", "", **given),
                 "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}}}
        return sample(comfy, graph, ["3", 0], ["2", 1], "xl-pack")

    native_node = {"class_type": "CLIPTextEncodeSDXL", "inputs": {
        "clip": ["1", 1], "text_g": "a red fox in deep snow", "text_l": "a red fox in deep snow", **sizes}}
    native_graph = {"1": checkpoint(sdxl_models), "2": native_node,
                    "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}}}
    native = sample(comfy, native_graph, ["3", 0], ["3", 0], "xl-native")
    assert torch.equal(pack(**sizes), native)
    swapped = {**sizes, "width": sizes["height"], "height": sizes["width"]}
    assert not torch.equal(pack(**swapped), native)


def test_wrong_clip_family_is_refused(comfy, sdxl_models, sd15_models):
    sd15 = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_models.checkpoint.name}}
    error = comfy.expect_error({"1": sd15, "2": encode_node(["1", 1], "a fox", ""), "3": save(["2", 0], "wrong")})
    assert error["exception_message"].strip() == (
        "LLMGA Long Prompt Encode (SDXL): this CLIP is SD1.5's (CLIP-L only): use LLMGA Long Prompt Encode for SD1.5 "
        "models")
    sd15_node = {"class_type": "LLMGALongPromptEncode", "inputs": {
        "clip": ["1", 1], "prompt": "a fox", "negative_prompt": "", "mode": "llmga", "max_chunks": 0}}
    error = comfy.expect_error({"1": checkpoint(sdxl_models), "2": sd15_node, "3": save(["2", 0], "wrong")})
    assert error["exception_message"].strip() == (
        "LLMGA Long Prompt Encode: this CLIP is SDXL's (CLIP-L and CLIP-G): use LLMGA Long Prompt Encode (SDXL) for "
        "SDXL models")


def test_schema(comfy):
    info = comfy.object_info()[NODE]
    assert info["display_name"] == "LLMGA Long Prompt Encode (SDXL)"
    required = info["input"]["required"]
    assert required["mode"][1]["options"] == ["llmga", "comfy"]
    assert {name: required[name][1]["default"] for name in DEFAULT_SIZES} == DEFAULT_SIZES
    assert all(spec[1].get("tooltip") for spec in required.values())
