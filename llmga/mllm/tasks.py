"""Task presets: build the user turn the way LLMGA's stage-1 training built it.

The instruction lists are verbatim from the official llmga/llava/prompt_temp.py (English, used by the
training datasets) and llmga/llava/prompt_zh_temp.py (Chinese translations, `*_ZH`). How each task puts
its instruction and the user's text together follows the official datasets (llmga/llava/datasets/):

- text_to_image / refine_prompt (TextDataset): `instruction + " " + text`, or `text + " " + instruction`
  when the instruction goes behind (p=0.5 in training). Generation uses TEXTEXTEND_PROMPT in front and
  TEXTEXTEND_PROMPT_BEHIND behind; description (refine) uses TEXTEXTEND_PROMPT2 in both places.
  No image: the user turn has no `<image>`.
- similar_image / describe (SGDataset), inpaint / outpaint (InpaintingDataset): `"<image>\\n" + instruction`.
  For inpaint/outpaint the caller blacks out the masked pixels of the image given to the model.
- edit (EditDataset): the user's instruction as is. The dataset adds no `<image>` itself (whether the
  data's instructions carry one is not visible in the code). The official editing CLI
  (serve/cli-sd15-editing.py) runs two turns: turn 0 is `"<image>\\nGenerate a similar image"` (its reply
  is the source caption), turn 1 is the bare instruction (its reply is the target caption). Here "edit"
  is the one-turn form, `"<image>\\n" + instruction`, so the model sees the image it is asked to edit; to
  reproduce the CLI's two turns, send `build_user_message("similar_image", has_image=True,
  instruction=EDIT_SOURCE_INSTRUCTION)` and then `build_user_message("chat", instruction, has_image=False)`.
- chat: the user's text as is (LLaVA VQA data puts `"<image>\\n"` first when an image comes with it).

`has_image` means: the image is attached to *this* message, so `"<image>\\n"` is put in front of it. In a
conversation only the message that introduces the image should have it (the official CLIs add it to the
first user message only).

The Chinese lists are imported nowhere in the official code: how the `llmga-cn-*` checkpoints were
trained is not published, so `language="zh"` uses the same layout (joined by one space) with the
translated phrasings. They are not one-to-one translations: QUES_PROMPT_ZH lacks "Describe the image.",
TEXTEXTEND_PROMPT_ZH lacks "Give me an image about", and OUTPAINT_PROMPT_ZH repeats its first entry.
`phrasing_language` picks them for "auto": a Chinese + English checkpoint asked in Chinese.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

IMAGE_TOKEN = "<image>"  # llava/constants.py DEFAULT_IMAGE_TOKEN

# Turn 0 of the official editing CLI (serve/cli-sd15-editing.py), sent as "<image>\n" + this text.
EDIT_SOURCE_INSTRUCTION = "Generate a similar image"

TASKS = ("chat", "text_to_image", "refine_prompt", "similar_image", "inpaint", "outpaint", "edit", "describe")
PLACEMENTS = ("auto", "before", "after")
LANGUAGES = ("en", "zh")
LANGUAGE_CHOICES = ("auto", *LANGUAGES)  # what adapters offer: auto = `phrasing_language`'s rule
# The released Chinese + English checkpoints are binxia/llmga-cn-* (README).
CHINESE_CHECKPOINT_MARK = "llmga-cn-"
# Han ideographs: CJK Unified Ideographs, Extension A, Extensions B-F and the compatibility ideographs.
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")

# --- llmga/llava/prompt_temp.py (English; the lists the training datasets draw from) ---
QUES_PROMPT: tuple[str, ...] = (
    "What do you see happening in this image?",
    "What do you think is going on in this snapshot?",
    "Can you elaborate on the elements of the picture provided?",
    "Describe the following image.",
    "What's happening in the scene?",
    "Analyze the image in a comprehensive and detailed manner.",
    "Write a detailed description of the given image.",
    "What is this photo about?",
    "Explain the visual content of the image in great detail.",
    "What are the key elements in this picture?",
    "Can you describe the main features of this image for me?",
    "Describe the image.",
)
REGEN_PROMPT: tuple[str, ...] = (
    "Generate an image with the same meaning as the given image.",
    "Generate an image similar to the given image.",
    "Recreate the given image.",
    "Generate a similar image.",
    "Can you produce a similar image, please?",
    "Produce an image that conveys the same message as the provided image.",
    "Create an image resembling the given one.",
    "Replicate the provided image.",
    "Generate an image that shares similarities with the given one.",
    "Could you give me an image that looks similar?",
)
INPAINT_PROMPT: tuple[str, ...] = (
    "I want to perform inpainting on this image.",
    "Inpaint this image.",
    "Please fill in the blanks in the picture.",
    "Fill in the blanks for this photo.",
    "Perform image completion for the given image.",
    "Perform image inpainting.",
    "Paint the missing sections of this image.",
    "inpaint it",
    "Complete this image.",
    "Please inpaint this image.",
)
OUTPAINT_PROMPT: tuple[str, ...] = (
    "Extend this image.",
    "Expend this image",
    "Outpaint this image.",
    "Perform image outpainting for the image.",
    "Create a seamless continuation of this scene beyond its current boundaries.",
    "Please give me the outpainting result of this image.",
    "Can you outpaint this image?",
    "Complete this image.",
    "Outpaint the missing sections of this image.",
    "outpaint it",
)
TEXTEXTEND_PROMPT: tuple[str, ...] = (
    "generate",
    "Produce",
    "Show me",
    "Give me an image about",
    "Produce a visual representation that reflects the given concepts.",
    "Can you paint a picture that",
    "Please design an image that",
    "Visualize a scene that",
    "Can you show me the image about",
    "Can you design the image that",
    "Create the image that",
    "Please help me generate an image.",
    "generate an image.",
    "Generate an image based on given keywords.",
)
TEXTEXTEND_PROMPT_BEHIND: tuple[str, ...] = (
    "Generate this image based on given keywords.",
    "generate the image.",
    "produce an image.",
    "generate it.",
    "Produce a visual representation that reflects the given concepts.",
    "Can you paint a picture that conveys the chosen keywords?",
    "Please design an image.",
    "Visualize a scene inspired by the given keywords.",
    "Can you show me this image?",
    "What does it look like?",
    "Can I see like this.",
    "Can you design this image?",
)
TEXTEXTEND_PROMPT2: tuple[str, ...] = (
    "Please provide a detailed description.",
    "expand on this statement further",
    "Could you expand on this statement further?",
    "Describe this setence in detail.",
    "Expand it.",
    "Could you elaborate on this sentence?",
    "elaborate on this sentence.",
    "Enrich this statement.",
    "Enrich it.",
)

# --- llmga/llava/prompt_zh_temp.py (Chinese translations; imported nowhere in the official code) ---
QUES_PROMPT_ZH: tuple[str, ...] = (
    "你看到这张图片中发生了什么？",
    "你认为这张快照中发生了什么？",
    "你能详细说明所提供图片的元素吗？",
    "描述以下图片。",
    "这个场景中发生了什么？",
    "以全面和详细的方式分析这张图片。",
    "写下给定图片的详细描述。",
    "这张照片是关于什么的？",
    "非常详细地解释图片的视觉内容。",
    "这张图片中的关键元素是什么？",
    "你能为我描述这张图片的主要特征吗？",
)
REGEN_PROMPT_ZH: tuple[str, ...] = (
    "生成一张与给定图片含义相同的图片。",
    "生成一张与给定图片类似的图片。",
    "重新创建给定的图片。",
    "生成类似的图片。",
    "你能生成一张类似的图片吗？",
    "制作一张传达与所提供图片相同信息的图片。",
    "创建一张类似于给定的图片。",
    "复制所提供的图片。",
    "生成一张与给定图片有相似之处的图片。",
    "你能给我一张看起来类似的图片吗？",
)
INPAINT_PROMPT_ZH: tuple[str, ...] = (
    "我想对这张图片进行修复。",
    "修复这张图片。",
    "请在图片中填补空白。",
    "为这张照片填补空白。",
    "为给定的图片进行图像补全。",
    "进行图像修复。",
    "绘制这张图片的缺失部分。",
    "对其进行修复。",
    "完成这张图片。",
    "请修复这张图片。",
)
OUTPAINT_PROMPT_ZH: tuple[str, ...] = (
    "扩展这张图片。",
    "扩展这张图片。",
    "对这张图片进行外延。",
    "为这张图片进行图像外延。",
    "创建这个场景的无缝延续，超出其当前边界。",
    "请给我这张图片的外延结果。",
    "你能对这张图片进行外延吗？",
    "完成这张图片。",
    "对这张图片的缺失部分进行外延。",
    "对其进行外延。",
)
TEXTEXTEND_PROMPT_ZH: tuple[str, ...] = (
    "生成",
    "生产",
    "给我看",
    "制作一个反映给定概念的视觉表现。",
    "你能画出一个",
    "请设计",
    "将一个场景可视化",
    "你给我展示",
    "你设计一张",
    "创建一张",
    "请帮我生成一张图片。",
    "生成一张图片。",
    "根据给定关键词生成一张图片。",
)
TEXTEXTEND_PROMPT_BEHIND_ZH: tuple[str, ...] = (
    "根据给定关键词生成这张图片。",
    "生成这张图片。",
    "生产一张图片。",
    "生成它。",
    "制作一个反映给定概念的视觉表现。",
    "你能画出一幅传达所选关键词的画吗？",
    "请设计一张图片。",
    "根据给定关键词描绘一个场景。",
    "你能给我看这张图片吗？",
    "它长什么样？",
    "我能看看这样的吗？",
    "你能设计这张图片吗？",
)
TEXTEXTEND_PROMPT2_ZH: tuple[str, ...] = (
    "请提供详细描述。",
    "进一步扩展这个陈述。",
    "你能进一步扩展这个陈述吗？",
    "详细描述这个句子。",
    "扩展它。",
    "你能详细说明这个句子吗？",
    "详细说明这个句子。",
    "充实这个陈述。",
    "充实它。",
)

_LISTS: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "describe": QUES_PROMPT,
        "similar_image": REGEN_PROMPT,
        "inpaint": INPAINT_PROMPT,
        "outpaint": OUTPAINT_PROMPT,
        "text_to_image": TEXTEXTEND_PROMPT,
        "text_to_image_behind": TEXTEXTEND_PROMPT_BEHIND,
        "refine_prompt": TEXTEXTEND_PROMPT2,
        "refine_prompt_behind": TEXTEXTEND_PROMPT2,
    },
    "zh": {
        "describe": QUES_PROMPT_ZH,
        "similar_image": REGEN_PROMPT_ZH,
        "inpaint": INPAINT_PROMPT_ZH,
        "outpaint": OUTPAINT_PROMPT_ZH,
        "text_to_image": TEXTEXTEND_PROMPT_ZH,
        "text_to_image_behind": TEXTEXTEND_PROMPT_BEHIND_ZH,
        "refine_prompt": TEXTEXTEND_PROMPT2_ZH,
        "refine_prompt_behind": TEXTEXTEND_PROMPT2_ZH,
    },
}
_TEXT_TASKS = ("text_to_image", "refine_prompt")  # instruction + the user's short prompt, no image
_IMAGE_TASKS = ("similar_image", "inpaint", "outpaint", "edit", "describe")  # need an image
_FREE_TEXT_TASKS = ("chat", "edit")  # the user's text is the whole message


def build_user_message(
    task: str,
    text: str = "",
    *,
    has_image: bool,
    rng: random.Random | None = None,
    instruction: str | None = None,
    placement: str = "auto",
    language: str = "en",
) -> str:
    """Build one user message for `task` (one of TASKS) as training built it.

    text: the user's words: the message for chat/edit, the short prompt for text_to_image/refine_prompt;
        must be empty for similar_image/inpaint/outpaint/describe (training sent only the instruction).
    has_image: the image is attached to this message; `"<image>\\n"` is then put in front.
    rng: draws the phrasing (and, with placement "auto", the side) as training did; None = deterministic:
        the first entry of the list, placed before the text.
    instruction: the user's own phrasing instead of a drawn one (blank = not given); not for chat/edit.
    placement: text_to_image/refine_prompt only: "before" (`instruction text`), "after" (`text instruction`),
        or "auto" (a fair coin from rng, like training's is_behind).
    language: "en" (prompt_temp.py) or "zh" (prompt_zh_temp.py, for the llmga-cn checkpoints).
    Returns the message text. Raises ValueError on an unknown task/placement/language, a missing image,
    missing or unexpected text, or an instruction given to chat/edit.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of: {', '.join(TASKS)}.")
    if language not in LANGUAGES:
        raise ValueError(f"Unknown language {language!r}; choose one of: {', '.join(LANGUAGES)}.")
    if placement not in PLACEMENTS:
        raise ValueError(f"Unknown placement {placement!r}; choose one of: {', '.join(PLACEMENTS)}.")
    if placement != "auto" and task not in _TEXT_TASKS:
        raise ValueError(
            f"placement={placement!r} only applies to {' and '.join(_TEXT_TASKS)}; leave it 'auto' for {task!r}."
        )
    if task in _IMAGE_TASKS and not has_image:
        raise ValueError(f"Task {task!r} needs an image: connect an input image (and pass has_image=True).")
    own = instruction.strip() if instruction is not None and instruction.strip() else None
    text = text.strip()
    prefix = IMAGE_TOKEN + "\n" if has_image else ""

    if task in _FREE_TEXT_TASKS:
        if own is not None:
            raise ValueError(f"Task {task!r} takes no instruction: put the whole message in text.")
        if not text:
            what = "an edit instruction (e.g. 'make it snowy')" if task == "edit" else "a message"
            raise ValueError(f"Task {task!r} got empty text: type {what}.")
        return prefix + text

    if task in _TEXT_TASKS:
        if not text:
            raise ValueError(f"Task {task!r} got empty text: type a short prompt (e.g. 'a cat on a sofa').")
        behind = placement == "after" or (placement == "auto" and rng is not None and rng.random() < 0.5)
        key = task + "_behind" if behind else task
        phrase = own if own is not None else _pick(_LISTS[language][key], rng)
        return prefix + (f"{text} {phrase}" if behind else f"{phrase} {text}")

    if text:
        raise ValueError(
            f"Task {task!r} takes no text (training sent only the instruction): clear the text, "
            "or pass your own phrasing as instruction."
        )
    return prefix + (own if own is not None else _pick(_LISTS[language][task], rng))


def is_chinese_checkpoint(names: Iterable[str]) -> bool:
    """Whether a checkpoint going by `names` (`LLMGACheckpoint.names`) is a Chinese + English one (llmga-cn-*)."""
    return any(CHINESE_CHECKPOINT_MARK in name.lower() for name in names)


def has_chinese(text: str) -> bool:
    """Whether `text` holds a Han ideograph (Chinese characters)."""
    return _HAN.search(text) is not None


def phrasing_language(language: str, text: str, chinese_checkpoint: bool) -> str:
    """The language of a turn's instruction phrasings: `language` when it is "en" or "zh"; for "auto", "zh" when
    the checkpoint is a Chinese + English one and the user's `text` is Chinese, else "en". Raises ValueError for
    another language."""
    if language not in LANGUAGE_CHOICES:
        raise ValueError(f"Unknown language {language!r}; choose one of: {', '.join(LANGUAGE_CHOICES)}.")
    if language != "auto":
        return language
    return "zh" if chinese_checkpoint and has_chinese(text) else "en"


def _pick(phrases: tuple[str, ...], rng: random.Random | None) -> str:
    """A phrase drawn with rng (as training's random.choice), or the first one when rng is None."""
    return phrases[0] if rng is None else rng.choice(phrases)
