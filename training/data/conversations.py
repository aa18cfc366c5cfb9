"""Stage-1 conversations as the official LLMGA datasets build them, tokenised with their loss masks.

Builders (llmga/llava/datasets/*.py; phrasings from `llmga.mllm.tasks`, drawn with a `random.Random` in the
official order, including the official's discarded first draw from QUES_PROMPT):

- `text_to_image_conversation` (TextDataset, T2I part): p=0.5 description (TEXTEXTEND_PROMPT2, reply = the caption)
  or generation (TEXTEXTEND_PROMPT, reply tagged); independently p=0.5 the instruction goes behind the short prompt
  (generation then draws from TEXTEXTEND_PROMPT_BEHIND). No image.
- `similar_image_conversation` (SGDataset): p=0.7 `"<image>\\n" + REGEN_PROMPT` -> tagged caption, else
  `"<image>\\n" + QUES_PROMPT` -> the caption, untagged.
- `inpainting_conversation` (InpaintingDataset): `"<image>\\n" + OUTPAINT_PROMPT or INPAINT_PROMPT` (by the mask's kind)
  -> tagged caption of the whole image; `inpainting_sample` also draws the mask and blacks out the image.
- `edit_conversation` (EditDataset): `instruction[:-1]` (the official drops the last character; no `<image>` added)
  -> tagged new caption.
- `chat_conversation` (VQADataset, TextDataset text chats): the turns unchanged.
A tagged reply is `"<gen_image> " + caption + " </gen_image>"`. For samples with an image, every message that holds
`<image>` gets it moved to its front as `"<image>\\n"` (`preprocess_multimodal`).

`tokenize_conversation` renders with `llmga.mllm.templates` and keeps labels only on the assistant spans, as the
official `preprocess_*` (datasets/utils.py) intend for each template family: the reply plus the closing text the
template writes after it (two/v1 `</s>`; llama_2/mistral ` </s>`; llama_3 `<|eot_id|>`; qwen_2 `<|im_end|>`;
gemma `<end_of_turn>\\n<eos>`; phi_3 `<|end|>\\n`). The official counts those spans with per-family length arithmetic
that assumes how each tokenizer splits the text; here each boundary is read from the tokenizer itself (where the
tokenised text before the boundary stops agreeing with the full sequence), which gives the official mask wherever
the official count holds. A token that straddles a boundary (e.g. a merged "\\n<" across Gemma's "model\\n" and a
reply starting "<gen_image>") goes where the official count puts it: to the prompt at the start of a reply, to the
reply at its end. Where the official count does not hold, the official drops the whole sample (every label
IGNORE_INDEX, its "tokenization mismatch"; `official_count.py`), and so does `tokenize_conversation` by default;
`keep_mismatched=True` keeps such a sample with the mask read from the tokenizer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from llmga.mllm.chat import tokenize_with_image
from llmga.mllm.model import IGNORE_INDEX
from llmga.mllm.preprocess import black_out_mask
from llmga.mllm.tasks import IMAGE_TOKEN, QUES_PROMPT, build_user_message
from llmga.mllm.templates import ChatTemplate, get_template
from llmga.prompt import GEN_END, GEN_START

from .datasets import Turn
from .masks import MLLM_MASKS, MaskDraw, MaskGenerator
from .official_count import official_drops

SIMILAR_IMAGE_GENERATE_P = 0.7  # sg_dataset.py: `random.random() < 0.7` generates, else describes
T2I_DESCRIBE_P = 0.5  # text_dataset.py: `random.random() < 0.5` is the description task
MLLM_MASK_THRESHOLD = 0.5  # inpainting_dataset.py: mask >= 0.5 -> 1 before `(1 - mask) * image`


@dataclass(frozen=True)
class Conversation:
    """One training sample's dialogue. turns: (user, assistant) pairs, clean text. has_image: the sample carries an
    image (`<image>` then becomes the image token). task: which builder made it."""

    turns: tuple[Turn, ...]
    has_image: bool
    task: str


@dataclass(frozen=True)
class TokenizedConversation:
    """text: the rendered prompt. input_ids / labels: [L] ints; IMAGE_TOKEN_INDEX (-200) at each `<image>` of an
    image sample; labels are IGNORE_INDEX (-100) outside the assistant spans and equal input_ids inside.
    spans: the assistant spans as (start, end) character offsets into text. dropped: the official preprocess drops
    this sample ("tokenization mismatch"), so every label is IGNORE_INDEX."""

    text: str
    input_ids: list[int]
    labels: list[int]
    spans: tuple[tuple[int, int], ...]
    dropped: bool


def tagged(caption: str) -> str:
    """The generation-prompt reply the MLLM is trained to write."""
    return f"{GEN_START} {caption} {GEN_END}"


def conversation_rng(seed: int, index: int) -> random.Random:
    """A generator that depends only on (seed, index), so a sample is the same whichever worker builds it."""
    return random.Random(f"{seed}:{index}")


def text_to_image_conversation(short: str, caption: str, rng: random.Random) -> Conversation:
    """TextDataset T2I item: short prompt (`ori_caption`) -> detailed caption, described or tagged for generation."""
    rng.choice(QUES_PROMPT)  # the official builds a placeholder turn first; keep its draw
    describe = rng.random() < T2I_DESCRIBE_P
    task = "refine_prompt" if describe else "text_to_image"
    user = build_user_message(task, short, has_image=False, rng=rng)  # draws is_behind, then the phrasing
    return Conversation(((user, caption if describe else tagged(caption)),), False, task)


def similar_image_conversation(caption: str, rng: random.Random) -> Conversation:
    """SGDataset item: 70% "generate a similar image" -> tagged caption, 30% "describe" -> caption."""
    rng.choice(QUES_PROMPT)  # the official placeholder turn's draw
    if rng.random() < SIMILAR_IMAGE_GENERATE_P:
        return Conversation(((build_user_message("similar_image", has_image=True, rng=rng), tagged(caption)),),
                            True, "similar_image")
    return Conversation(((build_user_message("describe", has_image=True, rng=rng), caption),), True, "describe")


def inpainting_conversation(caption: str, is_outpaint: bool, rng: random.Random) -> Conversation:
    """InpaintingDataset item: inpaint/outpaint instruction (by the mask's kind) -> tagged caption of the full image."""
    rng.choice(QUES_PROMPT)  # the official placeholder turn's draw
    task = "outpaint" if is_outpaint else "inpaint"
    return Conversation(((build_user_message(task, has_image=True, rng=rng), tagged(caption)),), True, task)


def inpainting_sample(image: Image.Image, caption: str, rng: random.Random,
                      masks: MaskGenerator | None = None) -> tuple[Conversation, Image.Image, MaskDraw]:
    """A full InpaintingDataset sample from the 512x512 training image (`load_training_image`).

    masks: the mask stream (default: MLLM_MASKS seeded from rng). Returns the conversation, the image with the
    masked pixels black (what the vision tower sees), and the mask ([H, W] float32 in {0, 1})."""
    if masks is None:
        masks = MaskGenerator(MLLM_MASKS, rng.getrandbits(32))
    draw = masks(image.height, image.width)
    conversation = inpainting_conversation(caption, draw.is_outpaint, rng)
    return conversation, masked_image(image, draw.mask), draw


def edit_conversation(instruction: str, new_caption: str) -> Conversation:
    """EditDataset item: `instruction[:-1]` -> tagged caption of the edited image (the sample carries the image)."""
    return chat_conversation([(instruction[:-1], tagged(new_caption))], has_image=True, task="edit")


def chat_conversation(turns: Sequence[Turn], has_image: bool, task: str = "chat") -> Conversation:
    """LLaVA / LIMA / OASST2 item: the turns as given; with an image, `<image>` is moved to its message's front."""
    if not turns:
        raise ValueError("a conversation needs at least one (user, assistant) turn")
    if has_image:
        turns = [(image_token_first(user), image_token_first(reply)) for user, reply in turns]
    return Conversation(tuple((user, reply) for user, reply in turns), has_image, task)


def image_token_first(message: str) -> str:
    """`preprocess_multimodal`: a message holding `<image>` becomes `"<image>\\n" + the rest, stripped`."""
    if IMAGE_TOKEN not in message:
        return message
    return (IMAGE_TOKEN + "\n" + message.replace(IMAGE_TOKEN, "").strip()).strip()


def assistant_spans(template: ChatTemplate, turns: Sequence[Turn]) -> tuple[str, tuple[tuple[int, int], ...]]:
    """The rendered text and, per turn, the character span of the reply plus the template's closing text.

    A span runs from the end of the open-turn rendering (`turns[:k] + [(user_k, None)]`) to the end of the
    rendering of `turns[:k+1]`; every template renders turn by turn, so both are prefixes of the full text."""
    text = template.render(list(turns))
    spans = []
    for k, (user, _) in enumerate(turns):
        opened = template.render([*turns[:k], (user, None)])
        closed = template.render(list(turns[:k + 1]))
        if not (text.startswith(opened) and text.startswith(closed)):
            raise ValueError(f"template {template.name!r} does not render turn {k} as a prefix of the conversation")
        spans.append((len(opened), len(closed)))
    return text, tuple(spans)


def _boundary(prefix_ids: Sequence[int], input_ids: Sequence[int]) -> int:
    """Token index of a character boundary: where the tokenised text before it stops agreeing with the full
    sequence, plus one when its last tokens disagree (a token of the full sequence straddles the boundary; the
    official counts, which add up the tokens of each piece, give that token to the piece before the boundary)."""
    size = min(len(prefix_ids), len(input_ids))
    common = next((i for i in range(size) if prefix_ids[i] != input_ids[i]), size)
    return common + 1 if common < len(prefix_ids) else common


def tokenize_conversation(conversation: Conversation, template: str | ChatTemplate, tokenizer,
                          max_length: int | None = None, keep_mismatched: bool = False) -> TokenizedConversation:
    """Render `conversation` with the template (a name such as "v1", "llama_3", or a ChatTemplate), tokenise it as
    the official does (`tokenizer_image_token` for image samples, the plain tokenizer otherwise; BOS as the
    tokenizer adds it) and mask every token outside the assistant spans. max_length: truncate input_ids and labels
    (the official collator cuts at model_max_length, 2048). A sample the official count drops (`official_drops`)
    gets every label IGNORE_INDEX and `dropped=True`, unless keep_mismatched."""
    template = get_template(template) if isinstance(template, str) else template

    def ids(text: str) -> list[int]:
        return tokenize_with_image(text, tokenizer) if conversation.has_image else list(tokenizer(text).input_ids)

    text, spans = assistant_spans(template, conversation.turns)
    input_ids = ids(text)
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, end in spans:
        first, last = _boundary(ids(text[:start]), input_ids), _boundary(ids(text[:end]), input_ids)
        labels[first:last] = input_ids[first:last]
    # The official cuts text-only samples at max_length before it counts, image samples after.
    counted = input_ids if conversation.has_image else input_ids[:max_length]
    dropped = not keep_mismatched and official_drops(template, text, counted, ids, tokenizer, max_length)
    if dropped:
        labels = [IGNORE_INDEX] * len(input_ids)
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return TokenizedConversation(text, input_ids, labels, spans, dropped)


def masked_image(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with mask >= 0.5 set to black, as InpaintingDataset feeds the vision tower."""
    return black_out_mask(image, mask, MLLM_MASK_THRESHOLD)
