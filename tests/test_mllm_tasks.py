"""Task presets: the official instruction lists, seeded choice, placement, `<image>` prefix, errors."""

from __future__ import annotations

import random

import pytest

from llmga.mllm import tasks
from llmga.mllm.tasks import TASKS, build_user_message

# (list, length, spot-checked entries) from the official llmga/llava/prompt_temp.py / prompt_zh_temp.py.
OFFICIAL = [
    (tasks.QUES_PROMPT, 12, {0: "What do you see happening in this image?", 4: "What's happening in the scene?"}),
    (tasks.REGEN_PROMPT, 10, {3: "Generate a similar image.", 9: "Could you give me an image that looks similar?"}),
    (tasks.INPAINT_PROMPT, 10, {0: "I want to perform inpainting on this image.", 7: "inpaint it"}),
    (tasks.OUTPAINT_PROMPT, 10, {1: "Expend this image", 9: "outpaint it"}),
    (tasks.TEXTEXTEND_PROMPT, 14, {0: "generate", 5: "Can you paint a picture that"}),
    (tasks.TEXTEXTEND_PROMPT_BEHIND, 12, {10: "Can I see like this.", 11: "Can you design this image?"}),
    (tasks.TEXTEXTEND_PROMPT2, 9, {3: "Describe this setence in detail.", 8: "Enrich it."}),
    (tasks.QUES_PROMPT_ZH, 11, {0: "你看到这张图片中发生了什么？"}),
    (tasks.REGEN_PROMPT_ZH, 10, {3: "生成类似的图片。"}),
    (tasks.INPAINT_PROMPT_ZH, 10, {1: "修复这张图片。"}),
    (tasks.OUTPAINT_PROMPT_ZH, 10, {0: "扩展这张图片。", 1: "扩展这张图片。"}),
    (tasks.TEXTEXTEND_PROMPT_ZH, 13, {0: "生成", 12: "根据给定关键词生成一张图片。"}),
    (tasks.TEXTEXTEND_PROMPT_BEHIND_ZH, 12, {9: "它长什么样？"}),
    (tasks.TEXTEXTEND_PROMPT2_ZH, 9, {8: "充实它。"}),
]


@pytest.mark.parametrize(("phrases", "length", "entries"), OFFICIAL)
def test_official_lists(phrases: tuple[str, ...], length: int, entries: dict[int, str]) -> None:
    assert isinstance(phrases, tuple) and len(phrases) == length
    for index, text in entries.items():
        assert phrases[index] == text


def test_without_rng_the_first_phrase_goes_before_the_text() -> None:
    assert build_user_message("text_to_image", "a cat", has_image=False) == "generate a cat"
    refine = build_user_message("refine_prompt", "a cat", has_image=False)
    assert refine == "Please provide a detailed description. a cat"
    assert build_user_message("describe", has_image=True) == "<image>\nWhat do you see happening in this image?"
    assert build_user_message("similar_image", has_image=True) == (
        "<image>\nGenerate an image with the same meaning as the given image."
    )
    assert build_user_message("inpaint", has_image=True) == "<image>\nI want to perform inpainting on this image."
    assert build_user_message("outpaint", has_image=True) == "<image>\nExtend this image."


def test_seeded_choice_is_reproducible_and_varies() -> None:
    def draw(seed: int) -> str:
        return build_user_message("text_to_image", "a cat", has_image=False, rng=random.Random(seed))

    assert draw(7) == draw(7)
    assert len({draw(seed) for seed in range(40)}) > 5


def test_auto_placement_uses_both_sides_with_the_matching_list() -> None:
    seen = {"before": 0, "after": 0}
    for seed in range(60):
        message = build_user_message("text_to_image", "a red fox", has_image=False, rng=random.Random(seed))
        if message.startswith("a red fox "):
            assert message.removeprefix("a red fox ") in tasks.TEXTEXTEND_PROMPT_BEHIND
            seen["after"] += 1
        else:
            assert message.removesuffix(" a red fox") in tasks.TEXTEXTEND_PROMPT
            seen["before"] += 1
    assert seen["before"] > 10 and seen["after"] > 10


def test_explicit_placement() -> None:
    rng = random.Random(1)
    after = build_user_message("text_to_image", "a cat", has_image=False, placement="after", rng=rng)
    assert after.startswith("a cat ") and after.removeprefix("a cat ") in tasks.TEXTEXTEND_PROMPT_BEHIND
    assert build_user_message("text_to_image", "a cat", has_image=False, placement="after") == (
        "a cat Generate this image based on given keywords."
    )
    # Description puts the same list on either side (training's TextDataset).
    refine = build_user_message("refine_prompt", "a cat", has_image=False, placement="after")
    assert refine == "a cat Please provide a detailed description."
    assert build_user_message("text_to_image", "a cat", has_image=False, placement="before") == "generate a cat"


def test_own_instruction_replaces_the_drawn_phrase() -> None:
    own = "Paint this, please:"
    assert build_user_message("text_to_image", "a cat", has_image=False, instruction=own) == f"{own} a cat"
    assert build_user_message("inpaint", has_image=True, instruction="Fill the hole.") == "<image>\nFill the hole."
    blank = build_user_message("outpaint", has_image=True, instruction="  ")
    assert blank == "<image>\nExtend this image."


def test_edit_source_turn_of_the_official_cli() -> None:
    message = build_user_message("similar_image", has_image=True, instruction=tasks.EDIT_SOURCE_INSTRUCTION)
    assert message == "<image>\nGenerate a similar image"


def test_image_prefix_rules() -> None:
    assert build_user_message("chat", "hello", has_image=False) == "hello"
    assert build_user_message("chat", "what is this?", has_image=True) == "<image>\nwhat is this?"
    assert build_user_message("edit", "make it snowy", has_image=True) == "<image>\nmake it snowy"
    assert build_user_message("text_to_image", "a cat", has_image=True) == "<image>\ngenerate a cat"


def test_chinese_lists() -> None:
    assert build_user_message("describe", has_image=True, language="zh") == "<image>\n你看到这张图片中发生了什么？"
    assert build_user_message("text_to_image", "一只猫", has_image=False, language="zh") == "生成 一只猫"


@pytest.mark.parametrize("task", ["similar_image", "inpaint", "outpaint", "edit", "describe"])
def test_image_tasks_need_an_image(task: str) -> None:
    with pytest.raises(ValueError, match=rf"'{task}' needs an image: connect"):
        build_user_message(task, "make it snowy" if task == "edit" else "", has_image=False)


@pytest.mark.parametrize("task", ["text_to_image", "refine_prompt"])
def test_text_tasks_need_a_prompt(task: str) -> None:
    with pytest.raises(ValueError, match="type a short prompt"):
        build_user_message(task, "   ", has_image=False)


def test_unknown_task_lists_tasks() -> None:
    with pytest.raises(ValueError, match="chat, text_to_image, refine_prompt"):
        build_user_message("paint", "x", has_image=False)
    assert TASKS[0] == "chat" and len(TASKS) == 8


@pytest.mark.parametrize(
    ("task", "kwargs", "message"),
    [
        ("chat", {"text": ""}, "empty text"),
        ("chat", {"text": "hi", "instruction": "x"}, "takes no instruction"),
        ("inpaint", {"text": "a dog"}, "takes no text"),
        ("inpaint", {"placement": "before"}, "only applies to"),
        ("text_to_image", {"text": "a cat", "placement": "left"}, "Unknown placement"),
        ("text_to_image", {"text": "a cat", "language": "fr"}, "Unknown language"),
    ],
)
def test_argument_errors(task: str, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_user_message(task, has_image=True, **kwargs)


@pytest.mark.parametrize(("language", "text", "chinese_checkpoint", "expected"), [
    ("auto", "一只猫坐在窗台上", True, "zh"),
    ("auto", "a cat 在窗台上", True, "zh"),  # any Chinese characters
    ("auto", "a cat on a windowsill", True, "en"),
    ("auto", "一只猫", False, "en"),  # an English-only checkpoint keeps the phrasings it was trained with
    ("auto", "ねこ", True, "en"),  # kana are not Chinese
    ("en", "一只猫", True, "en"),
    ("zh", "a cat", False, "zh"),
])
def test_phrasing_language(language: str, text: str, chinese_checkpoint: bool, expected: str) -> None:
    assert tasks.phrasing_language(language, text, chinese_checkpoint) == expected


def test_chinese_checkpoints_by_name() -> None:
    assert tasks.is_chinese_checkpoint(["llmga-cn-Qwen2-0.5B-full-finetune"])
    assert tasks.is_chinese_checkpoint(["my-finetune", "LLMGA-CN-gemma-2b-it-full-finetune"])
    assert not tasks.is_chinese_checkpoint(["llmga-Qwen2-0.5B-full-finetune", "Qwen2-0.5B-Instruct"])
    with pytest.raises(ValueError, match="Unknown language 'fr'; choose one of: auto, en, zh"):
        tasks.phrasing_language("fr", "", False)
