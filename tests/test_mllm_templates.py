"""Chat templates: byte-exact prompts of the official Conversation.get_prompt(), stop strings, template choice."""

from __future__ import annotations

import pytest

from llmga.mllm.templates import TEMPLATE_NAMES, get_template, template_for

ONE_OPEN = [("<image>\nUSER_MSG_1", None)]
TWO_TURNS = [("<image>\nUSER_MSG_1", "<gen_image> CAPTION </gen_image>"), ("USER_MSG_2", None)]

VICUNA_USER = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_HUMAN = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLMGA_SYS = (
    "You are LLMGA, a useful language and vision generation assistant. You can generate images according to the "
    "user's requirements. If the user wants you to inpaint or outpaint images, please imagine what is in the black "
    "mask parts of the image. If image generation is required, please provide a detailed description of the "
    "generated images in the form of <gen_image> DETAILED DESCRIPTION </gen_image>."
)
LLAMA3_SYS = (
    "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision assistant. You are able to "
    "understand the visual content that the user provides, and assist the user with a variety of tasks using "
    "natural language.<|eot_id|>"
)
QWEN_SYS = (
    "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
    "The assistant gives helpful and honest answers.<|im_end|>"
)

# Golden prompts: reference doc §2, checked against the official conversation.py (rendered with its own
# Conversation class): (one open turn, one finished turn + one open turn).
GOLDEN: dict[str, tuple[str, str]] = {
    "llava_v1": (
        VICUNA_HUMAN + " USER: <image>\nUSER_MSG_1 ASSISTANT:",
        VICUNA_HUMAN + " USER: <image>\nUSER_MSG_1 ASSISTANT: <gen_image> CAPTION </gen_image></s>"
        "USER: USER_MSG_2 ASSISTANT:",
    ),
    "v1": (
        VICUNA_USER + " USER: <image>\nUSER_MSG_1 ASSISTANT:",
        VICUNA_USER + " USER: <image>\nUSER_MSG_1 ASSISTANT: <gen_image> CAPTION </gen_image></s>"
        "USER: USER_MSG_2 ASSISTANT:",
    ),
    "llava_llama_2": (
        "[INST] <<SYS>>\n" + LLMGA_SYS + "\n<</SYS>>\n\n<image>\nUSER_MSG_1 [/INST]",
        "[INST] <<SYS>>\n" + LLMGA_SYS + "\n<</SYS>>\n\n<image>\nUSER_MSG_1 [/INST] <gen_image> CAPTION </gen_image> "
        "</s><s>[INST] USER_MSG_2 [/INST]",
    ),
    "mistral_instruct": (
        "[INST] <<SYS>>\n\n<</SYS>>\n\n<image>\nUSER_MSG_1 [/INST]",
        "[INST] <<SYS>>\n\n<</SYS>>\n\n<image>\nUSER_MSG_1 [/INST] <gen_image> CAPTION </gen_image> "
        "</s><s>[INST] USER_MSG_2 [/INST]",
    ),
    "llama_3": (
        LLAMA3_SYS + "<|start_header_id|>user<|end_header_id|>\n\n<image>\nUSER_MSG_1<|eot_id|>"
        "<|start_header_id|>system<|end_header_id|>\n\n",
        LLAMA3_SYS + "<|start_header_id|>user<|end_header_id|>\n\n<image>\nUSER_MSG_1<|eot_id|>"
        "<|start_header_id|>system<|end_header_id|>\n\n<gen_image> CAPTION </gen_image><|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nUSER_MSG_2<|eot_id|><|start_header_id|>system<|end_header_id|>\n\n",
    ),
    "qwen_2": (
        QWEN_SYS + "<|im_start|>user\n<image>\nUSER_MSG_1<|im_end|><|im_start|>assistant\n",
        QWEN_SYS + "<|im_start|>user\n<image>\nUSER_MSG_1<|im_end|><|im_start|>assistant\n"
        "<gen_image> CAPTION </gen_image><|im_end|><|im_start|>user\nUSER_MSG_2<|im_end|><|im_start|>assistant\n",
    ),
    "gemma": (
        "<start_of_turn>user\n<image>\nUSER_MSG_1<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_turn>user\n<image>\nUSER_MSG_1<end_of_turn>\n<start_of_turn>model\n"
        "<gen_image> CAPTION </gen_image><end_of_turn>\n<eos><start_of_turn>user\nUSER_MSG_2<end_of_turn>\n"
        "<start_of_turn>model\n",
    ),
    "phi_3": (
        "<|user|>\n<image>\nUSER_MSG_1<|end|>\n<|assistant|>\n",
        "<|user|>\n<image>\nUSER_MSG_1<|end|>\n<|assistant|>\n<gen_image> CAPTION </gen_image><|end|>\n"
        "<|user|>\nUSER_MSG_2<|end|>\n<|assistant|>\n",
    ),
}


def test_every_template_has_golden_strings() -> None:
    assert set(GOLDEN) == set(TEMPLATE_NAMES)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_one_open_turn(name: str) -> None:
    assert get_template(name).render(ONE_OPEN) == GOLDEN[name][0]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_finished_then_open_turn(name: str) -> None:
    assert get_template(name).render(TWO_TURNS) == GOLDEN[name][1]


def test_three_turns_without_image_vicuna() -> None:
    turns = [("hi", "hello"), ("a cat generate it.", "<gen_image> a cat </gen_image>"), ("more", None)]
    assert get_template("v1").render(turns) == (
        VICUNA_USER + " USER: hi ASSISTANT: hello</s>USER: a cat generate it. ASSISTANT: "
        "<gen_image> a cat </gen_image></s>USER: more ASSISTANT:"
    )


def test_finished_last_turn_ends_with_separator() -> None:
    assert get_template("qwen_2").render([("q", "a")]).endswith("<|im_start|>assistant\na<|im_end|>")
    assert get_template("mistral_instruct").render([("q", "a")]).endswith("[/INST] a </s>")


def test_image_token_is_left_where_the_caller_put_it() -> None:
    turns = [("look: <image> here", None)]
    for name in TEMPLATE_NAMES:
        prompt = get_template(name).render(turns)
        assert prompt.count("<image>") == 1 and "look: <image> here" in prompt


def test_phi_3_ignores_system_and_llama_3_answers_under_system_header() -> None:
    assert get_template("phi_3").render(ONE_OPEN).startswith("<|user|>")
    assert get_template("llama_3").render(ONE_OPEN).endswith("<|start_header_id|>system<|end_header_id|>\n\n")


@pytest.mark.parametrize(
    ("name", "stops"),
    [
        ("llava_v1", ("</s>",)),
        ("v1", ("</s>",)),
        ("llava_llama_2", ("</s>",)),
        ("mistral_instruct", ("</s>",)),
        ("llama_3", ("<|eot_id|>",)),
        ("qwen_2", ("<|im_end|>",)),
        ("gemma", ("<end_of_turn>", "<eos>")),
        ("phi_3", ("<|end|>",)),
    ],
)
def test_stop_strings(name: str, stops: tuple[str, ...]) -> None:
    template = get_template(name)
    assert template.stop_strings == stops
    # A finished reply is followed by the first stop string.
    assert stops[0] in template.render([("q", "REPLY")]).split("REPLY", 1)[1]


def test_unknown_template_lists_known_names() -> None:
    with pytest.raises(ValueError, match="llava_v1.*phi_3"):
        get_template("vicuna")


@pytest.mark.parametrize(
    "turns",
    [[], [("", None)], [("q", None), ("q2", None)]],
    ids=["empty", "empty-user", "open-turn-not-last"],
)
def test_render_rejects_malformed_conversations(turns: list[tuple[str, str | None]]) -> None:
    with pytest.raises(ValueError):
        get_template("v1").render(turns)


LLAMA2_CHAT_TEMPLATE = "{% if messages[0]['role'] == 'system' %}...{{ bos_token + '[INST] ' + content }}"


@pytest.mark.parametrize(
    ("model_type", "vocab", "chat_template", "expected"),
    [
        ("llava_mistral", 32000, "[INST]", "mistral_instruct"),
        ("llava_Qwen2", 151936, None, "qwen_2"),
        ("llava_qwen2", 151936, None, "qwen_2"),
        ("LLAVA_QWEN2", 151936, None, "qwen_2"),
        ("llava_Phi3", 32064, None, "phi_3"),
        ("llava_gemma", 256000, None, "gemma"),
        ("llava_llama", 128256, None, "llama_3"),
        ("llava_llama", 128256, LLAMA2_CHAT_TEMPLATE, "llama_3"),
        ("llava_llama", 32000, LLAMA2_CHAT_TEMPLATE, "llava_llama_2"),
        ("llava_llama", 32000, None, "llava_v1"),
        ("llava_llama", 32000, "{{ 'USER: ' + message }}", "llava_v1"),
    ],
)
def test_template_for(model_type: str, vocab: int, chat_template: str | None, expected: str) -> None:
    assert template_for(model_type, vocab, chat_template) == expected


def test_template_for_unknown_model_type_names_it() -> None:
    with pytest.raises(ValueError, match="'llama'"):
        template_for("llama", 32000, None)


LLAMA3_VOCABULARY = {"<|begin_of_text|>": 600, "<|start_header_id|>": 606, "<|end_header_id|>": 607, "<|eot_id|>": 609}


@pytest.mark.parametrize(
    ("tokens", "chat_template", "name", "expected"),
    [
        (LLAMA3_VOCABULARY, None, "my-assistant", "llama_3"),  # a resized Llama-3: its special tokens tell
        (LLAMA3_VOCABULARY, LLAMA2_CHAT_TEMPLATE, "llmga-llama-2-7b-chat", "llama_3"),  # tokens come first
        ({"<|eot_id|>": 5}, None, "my-assistant", "llava_v1"),  # both tokens are needed
        ({}, LLAMA2_CHAT_TEMPLATE, "llmga-llama3-8b", "llava_llama_2"),  # the chat template before the name
        ({}, None, "llmga-llama3-8b-it-full-finetune", "llama_3"),  # the official folder-name rule, last
        ({}, None, "LLMGA-Llama-2-7b-chat-full-finetune", "llava_llama_2"),
        ({}, None, "llmga-vicuna-7b-v1.5-full-finetune", "llava_v1"),
        ({}, None, "my-assistant", "llava_v1"),  # the official llava_v0 is no LLMGA template: Vicuna's stands in
    ],
)
def test_llama_family_from_tokens_then_chat_template_then_folder_name(tokens, chat_template, name, expected) -> None:
    assert template_for("llava_llama", 32000, chat_template, tokens=tokens, name=name) == expected


def test_the_folder_name_never_overrides_the_model_type() -> None:
    assert template_for("llava_Qwen2", 151936, None, tokens={}, name="llmga-llama3-8b") == "qwen_2"
