"""Chat behaviour of the assistant: stop strings, streaming, seeds, multi-turn history, and clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from fixtures.mllm import FAMILY_SPECS, build_projector_only
from PIL import Image

from llmga.images import ImageInputError
from llmga.mllm.chat import Assistant, ChatError
from llmga.mllm.checkpoint import CheckpointError
from llmga.mllm.generation import GenerationSettings, OnlyTokenizerIds, _held_back, cut_at_stop, stop_token_ids
from llmga.mllm.loader import load_llmga

SAMPLING = GenerationSettings(max_new_tokens=16, temperature=1.0, seed=7)


@pytest.fixture(scope="module")
def qwen(mllm_checkpoints):
    return Assistant(load_llmga(mllm_checkpoints["qwen2"].path, dtype="fp32", device="cpu"))


@pytest.fixture(scope="module")
def vicuna(mllm_checkpoints):
    return Assistant(load_llmga(mllm_checkpoints["vicuna"].path, dtype="fp32", device="cpu"))


def ask(assistant: Assistant, text: str, settings=SAMPLING, history=None, image=None, task="chat", **kwargs):
    return assistant.ask(history or assistant.new_history(), task, text, image=image, settings=settings, **kwargs)


def test_stop_string_cuts_the_reply():
    assert cut_at_stop("a cat </gen_image></s>USER: more", ("</s>",)) == ("a cat </gen_image>", True)
    assert cut_at_stop("no stop here", ("</s>",)) == ("no stop here", False)
    assert cut_at_stop("x<|im_end|>y<|endoftext|>", ("<|endoftext|>", "<|im_end|>")) == ("x", True)


def test_text_that_may_begin_a_stop_string_is_held_back():
    assert _held_back("a cat </", ("</s>",)) == 2
    assert _held_back("a cat <", ("<|im_end|>",)) == 1
    assert _held_back("a cat", ("</s>",)) == 0


def test_streamed_pieces_add_up_to_the_reply(qwen):
    pieces = []
    reply = ask(qwen, "Describe a sunset over the sea.", on_text=pieces.append)
    assert reply.new_tokens > 0
    assert "".join(pieces).strip() == reply.text
    assert "<|im_end|>" not in reply.text


def test_same_seed_same_reply_other_seed_other_reply(qwen):
    first = ask(qwen, "Tell me about cats.")
    again = ask(qwen, "Tell me about cats.")
    other = ask(qwen, "Tell me about cats.", settings=GenerationSettings(max_new_tokens=16, temperature=1.0, seed=8))
    assert first.text == again.text
    assert first.text != other.text


def test_seeded_sampling_leaves_the_global_random_state_alone(qwen):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ask(qwen, "Hello")
    assert torch.equal(torch.rand(3), expected)


def test_stop_callback_ends_generation_early_and_keeps_the_history(qwen):
    calls = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) >= 3

    history = qwen.new_history()
    reply = ask(qwen, "Write a long story.", settings=GenerationSettings(max_new_tokens=200, temperature=1.0),
                history=history, should_stop=stop_after_three)
    assert reply.new_tokens <= 4
    assert reply.history == history  # a cancelled turn is not part of the conversation


def test_multi_turn_history_keeps_clean_turns_and_the_picture(vicuna):
    first = ask(vicuna, "", task="similar_image", image=Image.new("RGB", (64, 48), "red"))
    assert first.history.image is not None
    assert first.history.turns[0][0].startswith("<image>\n")
    second = ask(vicuna, "Make it blue.", history=first.history)
    assert len(second.history.turns) == 2
    assert not second.history.turns[1][0].startswith("<image>")
    assert second.prompt.count("<image>") == 1  # the picture stays in the first turn
    assert f"ASSISTANT: {first.text}</s>USER: Make it blue. ASSISTANT:" in second.prompt
    assert "</s></s>" not in second.prompt


def test_another_picture_in_the_same_chat_is_refused(vicuna):
    first = ask(vicuna, "", task="describe", image=Image.new("RGB", (32, 32), "red"))
    with pytest.raises(ChatError, match="already has a picture"):
        ask(vicuna, "", task="describe", history=first.history, image=Image.new("RGB", (32, 32), "blue"))


def test_a_turn_with_a_mask_shows_the_masked_pixels_black(qwen):
    picture = Image.new("RGB", (64, 48), (200, 120, 40))
    mask = np.zeros((48, 64), np.float32)
    mask[10:30, 20:50] = 1.0
    turn = qwen.turn(qwen.new_history(), "inpaint", image=picture, mask=mask)
    assert turn.message.startswith("<image>\n")
    blacked = np.asarray(picture).copy()
    blacked[10:30, 20:50] = 0
    assert torch.equal(turn.picture, qwen.picture(Image.fromarray(blacked)))
    assert not torch.equal(turn.picture, qwen.picture(picture))
    grayscale = Image.fromarray((mask * 255).astype(np.uint8), mode="L")  # a mask image reads the same
    assert torch.equal(qwen.turn(qwen.new_history(), "inpaint", image=picture, mask=grayscale).picture, turn.picture)


def test_a_mask_without_an_image_is_refused(qwen):
    with pytest.raises(ChatError, match="mask was given without an image"):
        qwen.turn(qwen.new_history(), "inpaint", mask=np.ones((8, 8), np.float32))


def test_a_mask_of_another_size_is_refused_with_the_one_mask_message(qwen):
    with pytest.raises(ImageInputError, match="the mask is 10x8 but the image is 64x48: use the mask made for"):
        qwen.turn(qwen.new_history(), "inpaint", image=Image.new("RGB", (64, 48)), mask=np.ones((8, 10), np.float32))


def test_the_picture_enters_the_message_only_in_its_first_turn(vicuna):
    picture = Image.new("RGB", (32, 32), "red")
    first = ask(vicuna, "", task="describe", image=picture)
    later = vicuna.turn(first.history, "chat", "And the colour?", image=picture)
    assert later.message == "And the colour?"
    assert vicuna.turn(vicuna.new_history(), "chat", "And the colour?", image=picture).message.startswith("<image>")


def test_ask_is_turn_then_reply(vicuna):
    greedy = GenerationSettings(max_new_tokens=12, temperature=0.0)
    picture = Image.new("RGB", (40, 30), "green")
    history = vicuna.new_history()
    turn = vicuna.turn(history, "similar_image", image=picture, phrasing_seed=3)
    by_hand = vicuna.reply(history, turn.message, image=turn.picture, settings=greedy)
    asked = vicuna.ask(history, "similar_image", image=picture, settings=greedy, phrasing_seed=3)
    assert (asked.text, asked.prompt) == (by_hand.text, by_hand.prompt)
    # One seed drives both the phrasing and the sampling when no phrasing seed is given.
    seeded = GenerationSettings(max_new_tokens=12, temperature=0.0, seed=3)
    assert vicuna.ask(history, "similar_image", image=picture, settings=seeded).prompt == by_hand.prompt


def test_image_placeholder_without_image_is_refused(qwen):
    history = qwen.new_history()
    with pytest.raises(ChatError, match="no image was given"):
        qwen.reply(history, "<image>\nWhat is this?", settings=SAMPLING)


def test_image_task_without_image_is_refused(qwen):
    with pytest.raises(ValueError, match="needs an image"):
        qwen.user_message("inpaint", "", qwen.new_history(), False)


def test_prompt_longer_than_the_context_is_refused(qwen):
    words = " ".join(["cat"] * (qwen.context_length + 10))
    with pytest.raises(ChatError, match="reads at most"):
        ask(qwen, words)


def test_history_of_another_template_is_refused(qwen, vicuna):
    with pytest.raises(ChatError, match="template"):
        ask(qwen, "Hi", history=vicuna.new_history())


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_llmga(tmp_path / "nope", device="cpu")


def test_corrupt_shard_is_a_clear_error(mllm_checkpoints, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(mllm_checkpoints["qwen2"].path, broken)
    shard = sorted(broken.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="damaged or incomplete|download"):
        load_llmga(broken, dtype="fp32", device="cpu")


def test_missing_shard_is_a_clear_error(mllm_checkpoints, tmp_path):
    broken = tmp_path / "missing"
    shutil.copytree(mllm_checkpoints["qwen2"].path, broken)
    sorted(broken.glob("*.safetensors"))[0].unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_llmga(broken, dtype="fp32", device="cpu")


def test_a_plain_llm_is_not_an_llmga_checkpoint(mllm_checkpoints, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(mllm_checkpoints["qwen2"].path, plain)
    config = json.loads((plain / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("mm_")} | {"model_type": "qwen2",
                                                                             "architectures": ["Qwen2ForCausalLM"]}
    (plain / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not an LLMGA checkpoint"):
        load_llmga(plain, device="cpu")


def test_vision_weights_come_from_the_clip_vision_folder_when_absent(mllm_checkpoints_without_vision, tmp_path):
    fixture = mllm_checkpoints_without_vision
    released = tmp_path / "released-layout"  # config names the hub id, as released checkpoints do
    shutil.copytree(fixture.path, released)
    config = json.loads((released / "config.json").read_text())
    (released / "config.json").write_text(json.dumps(config | {"mm_vision_tower": "openai/clip-vit-large-patch14-336"}))
    clip_vision = tmp_path / "clip_vision"
    shutil.copytree(fixture.vision_tower, clip_vision / "clip-vit-large-patch14-336")
    loaded = load_llmga(released, dtype="fp32", device="cpu", clip_vision_dirs=[tmp_path / "empty", clip_vision])
    pixels = torch.zeros(1, 3, 336, 336)
    assert loaded.model.encode_images(pixels).shape == (1, 576, loaded.model.language_model.config.hidden_size)


def test_absent_vision_weights_name_the_folders_searched(mllm_checkpoints_without_vision, tmp_path):
    fixture = mllm_checkpoints_without_vision
    config = json.loads((fixture.path / "config.json").read_text())
    moved = tmp_path / "elsewhere"
    shutil.copytree(fixture.path, moved)
    (moved / "config.json").write_text(json.dumps(config | {"mm_vision_tower": "openai/clip-vit-large-patch14-336"}))
    with pytest.raises(CheckpointError, match=str(tmp_path / "clip_vision")):
        load_llmga(moved, dtype="fp32", device="cpu", clip_vision_dirs=[tmp_path / "clip_vision"])


def test_projector_pretrain_loads_onto_its_base_llm(mllm_root, mllm_checkpoints):
    """The official `--model-path <pretrain> --model-base <base LLM>` case: same weights as the full fixture."""
    tower = mllm_checkpoints["vicuna"].vision_tower
    projector = build_projector_only(mllm_root / "pretrain", "vicuna", vision_tower=tower)
    base = mllm_root / "pretrain" / "base_models" / FAMILY_SPECS["vicuna"].base_name
    pretrain = load_llmga(projector.parent, base=base, dtype="fp32", device="cpu")
    full = load_llmga(mllm_checkpoints["vicuna"].path, dtype="fp32", device="cpu")
    ids = [1, 31, 45, 29, 300]
    with torch.no_grad():
        text_logits = [m.model.language_model(inputs_embeds=m.model.embed(ids, None)).logits for m in (pretrain, full)]
    torch.testing.assert_close(*text_logits)  # the same language model
    for ours, theirs in zip(pretrain.model.projector.state_dict().values(), full.model.projector.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(ours, theirs)  # the same projector
    # The vision tower comes from its own (float32) folder here, from the bf16 copy inside the full checkpoint there.
    pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    features = [m.model.encode_images(pixels) for m in (pretrain, full)]
    torch.testing.assert_close(*features, atol=2e-2, rtol=2e-2)
    assert Assistant(pretrain).template.name == "llava_v1"


def test_projector_pretrain_without_base_folder_is_a_clear_error(mllm_root, tmp_path):
    projector = build_projector_only(mllm_root / "pretrain_err", "qwen2")
    with pytest.raises(CheckpointError, match="base LLM folder"):
        load_llmga(projector.parent, base=tmp_path / "nothing", device="cpu")


def test_generation_config_eos_ids_also_end_a_reply(mllm_checkpoints):
    loaded = load_llmga(mllm_checkpoints["llama3"].path, dtype="fp32", device="cpu")
    tokenizer = loaded.tokenizer
    ids = stop_token_ids(tokenizer, ("<|eot_id|>",), loaded.model.language_model.generation_config.eos_token_id)
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") in ids
    assert tokenizer.convert_tokens_to_ids("<|end_of_text|>") in ids  # as the official generate() stops on it


def test_padded_vocabulary_rows_are_never_generated():
    scores = torch.zeros(1, 10)
    limited = OnlyTokenizerIds(7)(torch.zeros(1, 3, dtype=torch.long), scores)
    assert torch.isinf(limited[0, 7:]).all() and not torch.isinf(limited[0, :7]).any()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when no CUDA GPU is present")
def test_quantization_without_cuda_is_a_clear_error(mllm_checkpoints):
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        load_llmga(mllm_checkpoints["qwen2"].path, device="cpu", quantization="4bit")


def test_unknown_dtype_names_the_choices(mllm_checkpoints):
    with pytest.raises(ValueError, match="auto, bf16, fp16, fp32"):
        load_llmga(mllm_checkpoints["qwen2"].path, device="cpu", dtype="int3")
