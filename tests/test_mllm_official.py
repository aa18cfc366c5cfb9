"""The assistant as the official CLIs run it: the checkpoint's own sampling settings (generation_config.json), the
official precision (fp16 LLM, the CLIP tower's own fp32 weights), the template of a Llama-3 whose vocabulary was
resized, and the Chinese phrasings of the llmga-cn checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fixtures.edited import copy_checkpoint
from fixtures.mllm import build_llmga_checkpoint
from fixtures.tokenizers import small_llama3_tokenizer_files
from PIL import Image
from safetensors.torch import load_file
from transformers import GenerationConfig

from llmga import devices
from llmga.hub import CLIP_VISION_REPO
from llmga.mllm.batch import reply_batch
from llmga.mllm.chat import Assistant, ChatError, tokenize_with_image
from llmga.mllm.checkpoint import CheckpointError
from llmga.mllm.generation import GenerationSettings, cut_at_stop, resolve_settings
from llmga.mllm.loader import load_llmga
from llmga.mllm.tasks import (
    TEXTEXTEND_PROMPT,
    TEXTEXTEND_PROMPT_BEHIND,
    TEXTEXTEND_PROMPT_BEHIND_ZH,
    TEXTEXTEND_PROMPT_ZH,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def qwen(mllm_checkpoints) -> Assistant:
    return Assistant(load_llmga(mllm_checkpoints["qwen2"].path, dtype="fp32", device="cpu"))


def official_reply(assistant: Assistant, text: str, temperature: float, seed: int = 0, max_new_tokens: int = 16):
    """The reply the official CLI's call gives: generate() told only do_sample, temperature, max_new_tokens and the
    pad id, every other setting from the checkpoint's generation_config; cut at the template's stop strings."""
    prompt = assistant.template.render([(assistant.user_message("chat", text, assistant.new_history(), False), None)])
    embeds = assistant.loaded.model.embed(tokenize_with_image(prompt, assistant.tokenizer), None)
    sampling = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        output = assistant.loaded.model.language_model.generate(
            inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=max_new_tokens, pad_token_id=assistant.tokenizer.eos_token_id, **sampling)
    text, _ = cut_at_stop(assistant.tokenizer.decode(output[0], skip_special_tokens=False), assistant.reply_ends())
    return text.strip()


def ask(assistant: Assistant, text: str, **settings):
    return assistant.ask(assistant.new_history(), "chat", text, settings=GenerationSettings(**settings))


# --- sampling ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "expected"), [
    ("vicuna", (0.6, 50, 1.0)), ("llama3", (0.9, 50, 1.0)), ("qwen2", (0.8, 20, 1.1)), ("mistral", (1.0, 50, 1.0)),
])
def test_unset_sampling_settings_are_the_checkpoints_generation_config(mllm_checkpoints, family, expected):
    """Vicuna, Llama-3 and Qwen2 set top_p (Qwen2 also top_k and repetition_penalty); what a checkpoint leaves out
    is transformers' default, as in the official generate()."""
    config = GenerationConfig.from_pretrained(mllm_checkpoints[family].path)
    used = resolve_settings(GenerationSettings(), config)
    assert (used.top_p, used.top_k, used.repetition_penalty) == expected
    assert (used.temperature, used.max_new_tokens) == (0.2, 512)  # the official CLI's own two


def test_explicit_sampling_settings_override_the_checkpoint(qwen):
    asked = GenerationSettings(top_p=0.5, top_k=0, repetition_penalty=1.0)
    assert qwen.settings_used(asked) == asked
    assert qwen.settings_used(GenerationSettings(top_k=7)).top_p == 0.8  # each setting on its own


@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_default_sampling_is_the_official_generate_call(qwen, temperature):
    reply = ask(qwen, "Tell me about cats.", temperature=temperature, seed=7, max_new_tokens=16)
    assert reply.text == official_reply(qwen, "Tell me about cats.", temperature, seed=7)
    assert reply.settings == GenerationSettings(max_new_tokens=16, temperature=temperature, top_p=0.8, seed=7,
                                                top_k=20, repetition_penalty=1.1)


def test_forcing_top_p_1_is_no_longer_the_default(qwen):
    default = ask(qwen, "Tell me about cats.", temperature=1.0, seed=7, max_new_tokens=16)
    forced = ask(qwen, "Tell me about cats.", temperature=1.0, seed=7, max_new_tokens=16, top_p=1.0, top_k=0)
    assert default.text != forced.text


def test_greedy_decoding_applies_the_checkpoints_repetition_penalty(qwen, mllm_checkpoints, tmp_path):
    """generate() applies generation_config's repetition_penalty whether it samples or not, so the official greedy
    CLI (temperature 0) runs Qwen2 with 1.1. The tiny model's greedy choice is too sure for 1.1 to change it, so a
    copy whose generation_config asks 3.0 shows the effect."""
    greedy = qwen.settings_used(GenerationSettings(temperature=0.0))
    assert greedy.repetition_penalty == 1.1
    options = qwen.generate_arguments(greedy, 10)
    assert options["do_sample"] is False and options["repetition_penalty"] == 1.1

    strong = copy_checkpoint(mllm_checkpoints["qwen2"].path, tmp_path / "strong")
    config = json.loads((strong / "generation_config.json").read_text())
    (strong / "generation_config.json").write_text(json.dumps(config | {"repetition_penalty": 3.0}))
    assistant = Assistant(load_llmga(strong, dtype="fp32", device="cpu"))
    message = "Write a long story."
    penalised = ask(assistant, message, temperature=0.0, max_new_tokens=16)
    assert penalised.text == official_reply(assistant, message, 0.0)
    assert penalised.text != ask(assistant, message, temperature=0.0, max_new_tokens=16, repetition_penalty=1.0).text
    turn = assistant.turn(assistant.new_history(), "chat", message)
    (batched,) = reply_batch(assistant, [turn], GenerationSettings(max_new_tokens=16, temperature=0.0))
    assert batched.text == penalised.text  # reply_batch resolves the settings the same way


def test_the_settings_used_read_as_one_line(qwen):
    asked = GenerationSettings(temperature=0.2, top_k=5, seed=3)
    line = qwen.settings_used(asked).describe(asked)
    assert line == ("temperature 0.2, top_p 0.8 (checkpoint), top_k 5, repetition_penalty 1.1 (checkpoint), seed 3, "
                    "max_new_tokens 512")
    greedy = GenerationSettings(temperature=0.0)
    assert qwen.settings_used(greedy).describe(greedy) == ("greedy (temperature 0), repetition_penalty 1.1 "
                                                          "(checkpoint), max_new_tokens 512")


# --- precision ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def released_layout(mllm_checkpoints, tmp_path_factory):
    """The Qwen2 fixture as released: config.json names the tower by its hub id, the shards hold a bf16 copy of it,
    and its own fp32 files sit in a clip_vision folder. Returns (checkpoint folder, clip_vision folder)."""
    root = tmp_path_factory.mktemp("official")
    fixture = mllm_checkpoints["qwen2"]
    checkpoint = copy_checkpoint(fixture.path, root / fixture.path.name, mm_vision_tower=CLIP_VISION_REPO)
    shutil.copytree(fixture.vision_tower, root / "clip_vision" / "clip-vit-large-patch14-336")
    return checkpoint, root / "clip_vision"


def load_official(released_layout, **options):
    checkpoint, clip_vision = released_layout
    return load_llmga(checkpoint, device="cpu", clip_vision_dirs=[clip_vision], allow_paths=False, **options)


def test_official_precision_runs_the_llm_in_fp16_and_the_towers_own_weights_in_fp32(released_layout):
    model = load_official(released_layout, dtype="official").model
    assert {p.dtype for p in model.language_model.parameters()} == {torch.float16}
    assert {p.dtype for p in model.projector.parameters()} == {torch.float16}
    assert {p.dtype for p in model.vision_tower.parameters()} == {torch.float32}
    own = load_file(released_layout[1] / "clip-vit-large-patch14-336" / "model.safetensors")
    tower = {key.removeprefix("vision_model."): value for key, value in model.vision_tower.state_dict().items()}
    weight = "encoder.layers.0.self_attn.q_proj.weight"
    assert torch.equal(tower[weight], own[f"vision_model.{weight}"])  # the folder's fp32, not the bf16 copy
    assert not torch.equal(own[f"vision_model.{weight}"].bfloat16().float(), own[f"vision_model.{weight}"])


def test_official_precision_rounds_pixels_to_fp16_and_casts_features_before_the_projector(released_layout):
    model = load_official(released_layout, dtype="official").model
    seen = {}
    model.vision_tower.register_forward_pre_hook(lambda module, args, kwargs: seen.update(pixels=args[0]),
                                                 with_kwargs=True)
    model.projector.register_forward_pre_hook(lambda module, args: seen.update(features=args[0]))
    pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    projected = model.encode_images(pixels)
    assert seen["pixels"].dtype == torch.float32 and torch.equal(seen["pixels"], pixels.half().float())
    assert seen["features"].dtype == torch.float16 and projected.dtype == torch.float16


def test_official_precision_answers_on_the_cpu(released_layout):
    assistant = Assistant(load_official(released_layout, dtype="official"))
    reply = assistant.ask(assistant.new_history(), "describe", image=Image.new("RGB", (48, 32), "red"),
                          settings=GenerationSettings(max_new_tokens=4, temperature=0.0))
    assert reply.new_tokens > 0


def test_auto_is_official_on_gpus_when_the_tower_is_in_clip_vision(released_layout, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    on_gpu = load_official(released_layout, dtype="auto", compute_device=CUDA).model  # loads on the CPU, as the node
    assert on_gpu.pixel_dtype == torch.float16
    assert on_gpu.vision_tower.get_input_embeddings().weight.dtype == torch.float32
    assert on_gpu.language_model.dtype == torch.float16
    assert load_official(released_layout, dtype="auto").model.language_model.dtype == torch.float32  # the CPU's


def test_the_precision_rule(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    official = devices.AssistantPrecision(torch.float16, torch.float32, official=True)
    assert devices.assistant_precision("auto", CUDA, tower_at_hand=True) == official
    assert devices.assistant_precision("auto", torch.device("mps"), tower_at_hand=True) == official
    assert devices.assistant_precision("auto", CUDA, tower_at_hand=False) == devices.AssistantPrecision(
        torch.bfloat16, torch.bfloat16)  # no download for a default: the released bf16 weights, tower included
    assert devices.assistant_precision("auto", CPU, tower_at_hand=True) == devices.AssistantPrecision(
        torch.float32, torch.float32)
    assert devices.assistant_precision("official", CPU, tower_at_hand=False) == official
    assert devices.assistant_precision("fp16", CUDA, tower_at_hand=True) == devices.AssistantPrecision(
        torch.float16, torch.float16)
    with pytest.raises(ValueError, match="dtype 'fp8' is not one of auto, bf16, fp16, fp32 or official"):
        devices.assistant_precision("fp8", CUDA, tower_at_hand=True)


def test_official_precision_without_the_tower_says_what_to_do(released_layout, tmp_path):
    with pytest.raises(CheckpointError, match="precision 'official' reads the vision tower's own float32 weights.*"
                                              "or choose another dtype than official"):
        load_llmga(released_layout[0], dtype="official", device="cpu", clip_vision_dirs=[tmp_path],
                   allow_paths=False)


# --- template ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_llama3(mllm_checkpoints, tmp_path_factory) -> Assistant:
    """A Llama-3 LLMGA checkpoint with a resized (856-token) vocabulary, in a folder whose name says nothing."""
    fixture = build_llmga_checkpoint(tmp_path_factory.mktemp("small_llama3"), "llama3",
                                     mllm_checkpoints["llama3"].vision_tower, name="my-assistant",
                                     tokenizer=small_llama3_tokenizer_files())
    assert fixture.vocab_size < 1000
    return Assistant(load_llmga(fixture.path, dtype="fp32", device="cpu"))


def test_a_small_vocabulary_llama3_is_told_by_its_special_tokens(small_llama3):
    assert small_llama3.template.name == "llama_3"
    reply = ask(small_llama3, "a red fox", temperature=0.0, max_new_tokens=8)
    assert reply.prompt.endswith("<|start_header_id|>system<|end_header_id|>\n\n")
    assert small_llama3.tokenizer.convert_tokens_to_ids("<|eot_id|>") in small_llama3.eos_ids()


# --- language ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chinese_qwen(mllm_checkpoints, tmp_path_factory) -> Assistant:
    """The Qwen2 fixture under the name of its Chinese + English release."""
    folder = tmp_path_factory.mktemp("cn") / "llmga-cn-Qwen2-0.5B-full-finetune"
    shutil.copytree(mllm_checkpoints["qwen2"].path, folder)
    return Assistant(load_llmga(folder, dtype="fp32", device="cpu"))


@pytest.mark.parametrize(("text", "language", "expected"), [
    ("一只猫坐在窗台上", "auto", "zh"), ("a cat on a windowsill", "auto", "en"), ("一只猫", "en", "en"),
    ("a cat", "zh", "zh"),
])
def test_a_chinese_checkpoint_asked_in_chinese_gets_the_chinese_phrasings(chinese_qwen, text, language, expected):
    turn = chinese_qwen.turn(chinese_qwen.new_history(), "text_to_image", text, language=language, phrasing_seed=5)
    assert turn.language == expected
    phrasings = {"zh": (*TEXTEXTEND_PROMPT_ZH, *TEXTEXTEND_PROMPT_BEHIND_ZH),
                 "en": (*TEXTEXTEND_PROMPT, *TEXTEXTEND_PROMPT_BEHIND)}[expected]
    assert turn.message.replace(text, "").strip() in phrasings
    reply = chinese_qwen.reply(chinese_qwen.new_history(), turn.message,
                               settings=GenerationSettings(max_new_tokens=4, temperature=0.0))
    assert turn.message in reply.prompt  # the phrasing reaches the model


def test_an_english_checkpoint_keeps_english_phrasings_for_chinese_text(qwen):
    assert qwen.turn(qwen.new_history(), "text_to_image", "一只猫").language == "en"
    assert qwen.turn(qwen.new_history(), "text_to_image", "一只猫", language="zh").language == "zh"


def test_the_assistants_language_is_the_default_of_its_turns(qwen):
    chinese = Assistant(qwen.loaded, language="zh")
    turn = chinese.turn(chinese.new_history(), "text_to_image", "a cat")
    assert turn.message == f"{TEXTEXTEND_PROMPT_ZH[0]} a cat"
    with pytest.raises(ChatError, match="Unknown language 'fr'"):
        qwen.turn(qwen.new_history(), "text_to_image", "a cat", language="fr")
    with pytest.raises(ValueError, match="Unknown language 'fr'"):
        Assistant(qwen.loaded, language="fr")
