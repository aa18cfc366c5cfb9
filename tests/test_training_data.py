"""Training data: readers of every layout, stage-1 conversations and their loss masks, seeded mask generators."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from llmga.mllm.chat import tokenize_with_image
from llmga.mllm.model import IMAGE_TOKEN_INDEX
from llmga.mllm.preprocess import ImageProcessing
from llmga.mllm.tasks import (
    INPAINT_PROMPT,
    OUTPAINT_PROMPT,
    QUES_PROMPT,
    REGEN_PROMPT,
    TEXTEXTEND_PROMPT,
    TEXTEXTEND_PROMPT2,
    TEXTEXTEND_PROMPT_BEHIND,
)
from llmga.mllm.templates import LLAMA_3_SYSTEM, LLMGA_LLAMA_2_SYSTEM, QWEN_2_SYSTEM, V1_SYSTEM, get_template
from training.data import datasets as ds
from training.data.conversations import (
    IGNORE_INDEX,
    assistant_spans,
    chat_conversation,
    edit_conversation,
    inpainting_conversation,
    inpainting_sample,
    similar_image_conversation,
    text_to_image_conversation,
    tokenize_conversation,
)
from training.data.masks import (
    DIFFRIR_MASKS,
    MLLM_MASKS,
    SD_INPAINT_MASKS,
    MaskGenerator,
    _draw_thick_segment,
    box_mask,
)
from training.data.stage1 import clip_shortest_edge

pytestmark = pytest.mark.filterwarnings("ignore:`rope_scaling` is deprecated:FutureWarning")

# The training template of each family (the `--version` of the official stage-1 scripts; llama2: its CLI template).
FAMILY_TEMPLATES = {"vicuna": "v1", "llama2": "llava_llama_2", "llama3": "llama_3", "mistral": "mistral_instruct",
                    "qwen2": "qwen_2", "phi3": "phi_3", "gemma": "gemma"}

U1, U2 = "<image>\nGenerate a similar image.", "Make the car blue."
R1, R2 = "<gen_image> A red car on a street. </gen_image>", "<gen_image> A blue car on a street. </gen_image>"
TURNS = ((U1, R1), (U2, R2))
LLAMA3_USER = "<|start_header_id|>user<|end_header_id|>\n\n"
LLAMA3_ASSISTANT = "<|start_header_id|>system<|end_header_id|>\n\n"  # sic: the official assistant header
# Golden renderings of TURNS (reference §2 layouts, both turns finished) and the text each assistant span covers.
GOLDEN = {
    "v1": (f"{V1_SYSTEM} USER: {U1} ASSISTANT: {R1}</s>USER: {U2} ASSISTANT: {R2}</s>", " {}</s>"),
    "llava_llama_2": (f"[INST] <<SYS>>\n{LLMGA_LLAMA_2_SYSTEM}\n<</SYS>>\n\n{U1} [/INST] {R1} </s>"
                      f"<s>[INST] {U2} [/INST] {R2} </s>", " {} </s>"),
    "mistral_instruct": (f"[INST] <<SYS>>\n\n<</SYS>>\n\n{U1} [/INST] {R1} </s><s>[INST] {U2} [/INST] {R2} </s>",
                         " {} </s>"),
    "llama_3": (f"{LLAMA3_ASSISTANT}{LLAMA_3_SYSTEM}<|eot_id|>{LLAMA3_USER}{U1}<|eot_id|>"
                f"{LLAMA3_ASSISTANT}{R1}<|eot_id|>{LLAMA3_USER}{U2}<|eot_id|>{LLAMA3_ASSISTANT}{R2}<|eot_id|>",
                "{}<|eot_id|>"),
    "qwen_2": (f"<|im_start|>system\n{QWEN_2_SYSTEM}<|im_end|><|im_start|>user\n{U1}<|im_end|><|im_start|>assistant\n"
               f"{R1}<|im_end|><|im_start|>user\n{U2}<|im_end|><|im_start|>assistant\n{R2}<|im_end|>", "{}<|im_end|>"),
    "gemma": (f"<start_of_turn>user\n{U1}<end_of_turn>\n<start_of_turn>model\n{R1}<end_of_turn>\n<eos>"
              f"<start_of_turn>user\n{U2}<end_of_turn>\n<start_of_turn>model\n{R2}<end_of_turn>\n<eos>",
              "{}<end_of_turn>\n<eos>"),
    "phi_3": (f"<|user|>\n{U1}<|end|>\n<|assistant|>\n{R1}<|end|>\n<|user|>\n{U2}<|end|>\n<|assistant|>\n{R2}<|end|>\n",
              "{}<|end|>\n"),
}


@pytest.fixture(scope="module")
def tokenizers(mllm_checkpoints) -> dict:
    return {family: AutoTokenizer.from_pretrained(fixture.path) for family, fixture in mllm_checkpoints.items()}


# ---------------------------------------------------------------------------------------------------------------
# Conversations: the official datasets' draws, re-implemented from llava/datasets/*.py with the same calls in order.

def _official_t2i(short: str, caption: str, r: random.Random) -> tuple[str, str]:
    r.choice(QUES_PROMPT)
    generation = not r.random() < 0.5
    phrases = TEXTEXTEND_PROMPT if generation else TEXTEXTEND_PROMPT2
    behind = r.random() < 0.5
    if generation and behind:
        phrases = TEXTEXTEND_PROMPT_BEHIND
    user = short + " " + r.choice(phrases) if behind else r.choice(phrases) + " " + short
    return user, f"<gen_image> {caption} </gen_image>" if generation else caption


def _official_sg(caption: str, r: random.Random) -> tuple[str, str]:
    r.choice(QUES_PROMPT)
    if r.random() < 0.7:
        return "<image>\n" + r.choice(REGEN_PROMPT), f"<gen_image> {caption} </gen_image>"
    return "<image>\n" + r.choice(QUES_PROMPT), caption


def _official_inpaint(caption: str, is_outpaint: bool, r: random.Random) -> tuple[str, str]:
    r.choice(QUES_PROMPT)
    phrases = OUTPAINT_PROMPT if is_outpaint else INPAINT_PROMPT
    return "<image>\n" + r.choice(phrases), f"<gen_image> {caption} </gen_image>"


def test_text_to_image_conversations_draw_as_the_official_dataset() -> None:
    tasks = set()
    short, caption = "a red car", "A shiny red car on a wet street."
    for seed in range(300):
        conversation = text_to_image_conversation(short, caption, random.Random(seed))
        assert conversation.turns == (_official_t2i(short, caption, random.Random(seed)),)
        assert not conversation.has_image
        tasks.add(conversation.task)
    assert tasks == {"text_to_image", "refine_prompt"}


def test_similar_image_conversations_draw_as_the_official_dataset() -> None:
    generated = 0
    for seed in range(1000):
        conversation = similar_image_conversation("A cat.", random.Random(seed))
        assert conversation.turns == (_official_sg("A cat.", random.Random(seed)),) and conversation.has_image
        generated += conversation.task == "similar_image"
    assert 0.65 < generated / 1000 < 0.75


@pytest.mark.parametrize("is_outpaint", [False, True])
def test_inpainting_conversations_draw_as_the_official_dataset(is_outpaint: bool) -> None:
    for seed in range(100):
        conversation = inpainting_conversation("A dog.", is_outpaint, random.Random(seed))
        assert conversation.turns == (_official_inpaint("A dog.", is_outpaint, random.Random(seed)),)


def test_golden_conversations_per_task() -> None:
    assert text_to_image_conversation("a red car", "A red car.", random.Random(3)).turns == (
        ("a red car What does it look like?", "<gen_image> A red car. </gen_image>"),)  # generation, behind
    assert edit_conversation("make it snowy.", "A snowy street.").turns == (
        ("make it snowy", "<gen_image> A snowy street. </gen_image>"),)
    assert chat_conversation([("What is this? <image>", "A cat.")], has_image=True).turns == (
        ("<image>\nWhat is this?", "A cat."),)
    assert chat_conversation([("Say <image>", "ok")], has_image=False).turns == (("Say <image>", "ok"),)


def test_inpainting_sample_blacks_out_the_masked_pixels_and_matches_the_instruction() -> None:
    image = Image.new("RGB", (96, 96), (200, 120, 40))
    kinds = set()
    for seed in range(12):
        conversation, masked, draw = inpainting_sample(image, "A wall.", random.Random(seed),
                                                       MaskGenerator(MLLM_MASKS, seed))
        pixels = np.asarray(masked)
        assert (pixels[draw.mask == 1] == 0).all() and (pixels[draw.mask == 0] == (200, 120, 40)).all()
        phrases = OUTPAINT_PROMPT if draw.is_outpaint else INPAINT_PROMPT
        assert conversation.turns[0][0].removeprefix("<image>\n") in phrases
        kinds.add(draw.kind)
    assert "outpaint" in kinds


# ---------------------------------------------------------------------------------------------------------------
# Rendering and loss masks per template family.

@pytest.mark.parametrize("template", list(GOLDEN))
def test_renders_the_golden_text_and_assistant_spans(template: str) -> None:
    text, spans = assistant_spans(get_template(template), TURNS)
    golden, closing = GOLDEN[template]
    assert text == golden
    assert [text[start:end] for start, end in spans] == [closing.format(R1), closing.format(R2)]


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of supervised positions."""
    runs, start = [], None
    for i, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("family", list(FAMILY_TEMPLATES))
def test_labels_are_ignored_exactly_outside_the_assistant_replies(tokenizers, family: str) -> None:
    """Unmasked tokens decode to each reply plus the template's closing text; a token straddling the start of a
    reply (the tiny Gemma vocabulary merges "\\n<") stays masked, as the official count masks it. (keep_mismatched:
    the two-turn Vicuna sample is one the official drops.)"""
    tokenizer, template = tokenizers[family], FAMILY_TEMPLATES[family]
    result = tokenize_conversation(chat_conversation(TURNS, has_image=True), template, tokenizer, keep_mismatched=True)
    assert result.input_ids == tokenize_with_image(result.text, tokenizer)
    assert result.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    runs = _runs(result.labels)
    assert len(runs) == len(TURNS)
    for (start, end), (span_start, span_end) in zip(runs, result.spans, strict=True):
        assert result.labels[start:end] == result.input_ids[start:end]
        decoded = tokenizer.decode(result.input_ids[start:end], skip_special_tokens=False).strip()
        span = result.text[span_start:span_end].strip()
        if family == "phi3":  # <|end|> is rstrip: it swallows the "\\n" after it
            span = span.removesuffix("\n")
        missing = span.removesuffix(decoded)
        assert span.endswith(decoded) and len(missing) <= 1, (decoded, span)
        assert not missing or tokenizer.decode([result.input_ids[start - 1]]).endswith(missing)


def _official_labels(style: str, text: str, input_ids: list[int], ids, tokenizer) -> list[int]:
    """The length arithmetic of the official preprocess_* (llava/datasets/utils.py), re-implemented per family;
    all IGNORE_INDEX when its count disagrees with the sequence (the official "tokenization mismatch"). Phi-3's
    official 2 (BOS and the "▁" its slow tokenizer of transformers 4.41 put after it) is what this tokenizer puts
    before "<|user|>"."""
    labels = list(input_ids)

    def ignore(start: int, end: int | None = None) -> None:
        labels[start:end] = [IGNORE_INDEX] * len(labels[start:end])

    if style in ("llama_3", "qwen_2"):
        sep = "<|eot_id|>" if style == "llama_3" else "<|im_end|>"
        header = LLAMA3_ASSISTANT if style == "llama_3" else "<|im_start|>assistant\n"
        pieces = text.split(sep)
        rounds = [sep.join(pieces[:3])] + [sep.join(pieces[j:j + 2]) for j in range(3, len(pieces), 2)]
        split, cur, drop = sep + header, (1 if style == "llama_3" else 0), (1 if style == "llama_3" else 0)
    elif style == "gemma":
        rounds, split, cur, drop = text.split("<eos>"), "<start_of_turn>model\n", 1, 0
    elif style == "phi_3":
        lead = tokenizer("<|user|>").input_ids.index(tokenizer.convert_tokens_to_ids("<|user|>"))
        cur, role_len = lead, len(tokenizer("<|assistant|>\n").input_ids) - lead
        ignore(0, cur)
        for i, piece in enumerate(text.split("<|end|>\n")):
            if piece == "":
                break
            round_len = len(ids(piece + "<|end|>\n")) - lead
            ignore(cur, cur + (round_len if i % 2 == 0 else role_len))
            cur += round_len
        ignore(cur)
        return labels if cur == len(input_ids) else [IGNORE_INDEX] * len(labels)
    else:  # two (v1) and llama_2 styles split rounds at "</s>"
        rounds, split, cur = text.split("</s>"), " ASSISTANT: " if style == "v1" else "[/INST] ", 1
    ignore(0, cur)
    for i, piece in enumerate(rounds):
        parts = piece.split(split)
        if piece == "" or len(parts) != 2:
            break
        round_len, instruction_len = len(ids(piece)), len(ids(parts[0] + split))
        if style in ("llama_3", "qwen_2"):
            round_len, instruction_len = round_len - drop + 1, instruction_len - drop - 1 + 1
        elif style == "gemma":
            instruction_len -= 1
        else:
            instruction_len -= 2
            if style == "v1" and i != 0 and not getattr(tokenizer, "legacy", True):
                round_len, instruction_len = round_len - 1, instruction_len - 1
        ignore(cur, cur + instruction_len)
        cur += round_len
    ignore(cur)
    return labels if cur == len(input_ids) else [IGNORE_INDEX] * len(labels)


@pytest.mark.parametrize("family", list(FAMILY_TEMPLATES))
@pytest.mark.parametrize("turns", [TURNS[:1], TURNS], ids=["one_turn", "two_turns"])
@pytest.mark.parametrize("has_image", [True, False], ids=["image", "text"])
def test_labels_match_the_official_length_arithmetic(tokenizers, family: str, turns, has_image: bool) -> None:
    """Every family, its drops included: the official v1 count is off by one per later round for this tokenizer, so
    the official drops the two-turn Vicuna sample, and so does the default; keep_mismatched keeps its replies."""
    tokenizer, template = tokenizers[family], FAMILY_TEMPLATES[family]
    conversation = chat_conversation(turns if has_image else [(u.replace("<image>\n", ""), r) for u, r in turns],
                                     has_image=has_image)
    result = tokenize_conversation(conversation, template, tokenizer)
    style = {"llava_llama_2": "llama_2", "mistral_instruct": "llama_2"}.get(template, template)
    ids = (lambda text: tokenize_with_image(text, tokenizer)) if has_image else (lambda text: tokenizer(text).input_ids)
    official = _official_labels(style, result.text, result.input_ids, ids, tokenizer)
    assert result.labels == official
    assert result.dropped == (set(official) == {IGNORE_INDEX}) == (family == "vicuna" and len(turns) > 1)
    kept = tokenize_conversation(conversation, template, tokenizer, keep_mismatched=True)
    assert not kept.dropped and kept.input_ids == result.input_ids and len(_runs(kept.labels)) == len(turns)
    if not result.dropped:
        assert kept.labels == result.labels


def test_a_sample_counted_past_max_length_is_cut_not_dropped(tokenizers) -> None:
    """The official checks its count only below model_max_length: a sample cut there keeps its first reply."""
    result = tokenize_conversation(chat_conversation(TURNS, has_image=True), "v1", tokenizers["vicuna"],
                                   max_length=len(tokenize_conversation(chat_conversation(TURNS[:1], has_image=True),
                                                                        "v1", tokenizers["vicuna"]).input_ids) + 2)
    assert not result.dropped and len(_runs(result.labels)) == 1


@pytest.mark.parametrize("family", list(FAMILY_TEMPLATES))
def test_text_only_samples_tokenise_without_image_tokens(tokenizers, family: str) -> None:
    conversation = text_to_image_conversation("a red car", "A red car.", random.Random(0))
    result = tokenize_conversation(conversation, FAMILY_TEMPLATES[family], tokenizers[family], max_length=20)
    assert IMAGE_TOKEN_INDEX not in result.input_ids and len(result.input_ids) == len(result.labels) <= 20


# ---------------------------------------------------------------------------------------------------------------
# Readers.

def _write_json(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_reads_the_released_llmga_layout(tmp_path) -> None:
    root, images = tmp_path / "data", tmp_path / "imgs"
    files = {name: root / relative for name, relative in ds.RELEASED_FILES.items()}
    _write_json(files["t2i"], [{"ori_caption": "a cat", "caption": "A fluffy cat.", "image": "JourneyDB/1.jpg"},
                               {"ori_caption": "a dog", "caption": "A dog."}])
    _write_json(files["similar_image"], [{"image": "COCO/2.jpg", "caption": "A bus."}])
    _write_json(files["inpainting"], [{"image": "laion/3.jpg", "caption": "A tree."}])
    _write_json(files["edit"], [{"image": "COCO/4.jpg", "instruction": "add snow.", "new_caption": "Snow."}])
    chat = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                               {"from": "human", "value": "Bye?"}]}]
    _write_json(files["lima"], chat)
    _write_json(files["oasst2"], [{"conversations": [{"from": "gpt", "value": "skip"}, {"from": "user", "value": "Q"},
                                                      {"from": "assistant", "value": "A"}]}])
    _write_json(files["llava_mix665k"], [{"id": "1", "image": "coco/5.jpg", "conversations": [
        {"from": "human", "value": "What is it?\n<image>"}, {"from": "gpt", "value": "A cat."}]}])

    assert ds.read_t2i(files["t2i"], images) == [ds.T2IPrompt("a cat", "A fluffy cat.", images / "JourneyDB/1.jpg"),
                                                 ds.T2IPrompt("a dog", "A dog.", None)]
    assert ds.read_captioned_images(files["similar_image"], images) == [
        ds.CaptionedImage(images / "COCO/2.jpg", "A bus.", crop=False)]
    assert ds.read_captioned_images(files["inpainting"], images)[0].crop
    assert ds.read_edit(files["edit"], images) == [ds.EditExample(images / "COCO/4.jpg", "add snow.", "Snow.")]
    assert ds.read_sharegpt(files["lima"]) == [ds.ChatExample((("Hi", "Hello"),), None)]
    assert ds.read_sharegpt(files["oasst2"])[0].turns == (("Q", "A"),)
    vqa = ds.read_sharegpt(files["llava_mix665k"], images)[0]
    assert vqa.image == images / "coco/5.jpg"
    assert chat_conversation(vqa.turns, has_image=True).turns == (("<image>\nWhat is it?", "A cat."),)


def test_reads_a_folder_of_captioned_images_and_a_jsonl(tmp_path) -> None:
    for name in ("b.png", "a.JPG"):
        Image.new("RGB", (8, 8)).save(tmp_path / name, format="PNG")
    (tmp_path / "a.txt").write_text("  first caption\n")
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "notes.md").write_text("ignored")
    assert ds.read_user_captions(tmp_path) == [ds.CaptionedImage(tmp_path / "a.JPG", "first caption"),
                                               ds.CaptionedImage(tmp_path / "b.png", "second")]
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text('{"image": "a.JPG", "caption": "x"}\n\n{"image": "/abs/b.png", "caption": "y"}\n')
    assert ds.read_user_captions(jsonl) == [ds.CaptionedImage(tmp_path / "a.JPG", "x"),
                                            ds.CaptionedImage(Path("/abs/b.png"), "y")]


@pytest.mark.parametrize(("content", "message"), [
    ([{"image": "1.jpg"}], "record 0 has no 'caption' field"),
    ([{"image": "1.jpg", "caption": ""}], "record 0 field 'caption' must be a non-empty string"),
    ({"image": "1.jpg"}, "expected a JSON list"),
])
def test_bad_records_name_the_file_and_field(tmp_path, content, message: str) -> None:
    path = tmp_path / "train.json"
    _write_json(path, content)
    with pytest.raises(ds.DataError, match=message) as error:
        ds.read_captioned_images(path)
    assert str(path) in str(error.value)


def test_bad_files_and_chats_say_what_is_wrong(tmp_path) -> None:
    with pytest.raises(ds.DataError, match="file not found"):
        ds.read_edit(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ds.DataError, match="not valid JSON"):
        ds.read_t2i(tmp_path / "broken.json")
    _write_json(tmp_path / "chat.json", [{"conversations": [{"from": "human", "value": "a"},
                                                            {"from": "human", "value": "b"}]}])
    with pytest.raises(ds.DataError, match="do not alternate"):
        ds.read_sharegpt(tmp_path / "chat.json")
    Image.new("RGB", (8, 8)).save(tmp_path / "lonely.png")
    with pytest.raises(ds.DataError, match="no caption file lonely.txt"):
        ds.read_image_folder(tmp_path)
    (tmp_path / "x.jsonl").write_text('{"image": "a.png"}\n')
    with pytest.raises(ds.DataError, match="record 1 has no 'caption' field"):
        ds.read_caption_jsonl(tmp_path / "x.jsonl")


def test_training_images_are_stretched_or_cropped_like_the_official(tmp_path) -> None:
    picture = Image.new("RGB", (300, 100), (255, 0, 0))
    picture.paste((0, 0, 255), (0, 0, 100, 100))
    picture.save(tmp_path / "p.png")
    stretched = ds.load_training_image(tmp_path / "p.png", size=64)
    cropped = ds.load_training_image(tmp_path / "p.png", crop=True, size=64)
    assert stretched.size == cropped.size == (64, 64)
    assert stretched.getpixel((5, 32))[2] > 200 and cropped.getpixel((5, 32))[0] > 200  # crop drops the blue third
    with pytest.raises(ds.DataError, match="cannot open image"):
        ds.load_training_image(tmp_path / "nope.png")


@pytest.mark.parametrize(("size", "expected"), [((500, 333), (504, 336)), ((333, 500), (336, 504)),
                                                ((336, 336), (336, 336)), ((40, 1000), (336, 8400))])
def test_pretraining_resizes_the_shortest_edge_as_transformers_truncates(size, expected) -> None:
    """CLIPImageProcessor's int() of the long edge (500x333 -> 504, where rounding gives 505)."""
    assert clip_shortest_edge(Image.new("RGB", size), ImageProcessing()).size == expected


# ---------------------------------------------------------------------------------------------------------------
# Masks.

@pytest.mark.parametrize("mix", [MLLM_MASKS, SD_INPAINT_MASKS, DIFFRIR_MASKS], ids=lambda m: m.name)
@pytest.mark.parametrize(("height", "width"), [(512, 512), (400, 400), (96, 160), (33, 47)])
def test_masks_are_seeded_binary_and_sized(mix, height: int, width: int) -> None:
    first, again = MaskGenerator(mix, 7)(height, width), MaskGenerator(mix, 7)(height, width)
    assert np.array_equal(first.mask, again.mask) and first.kind == again.kind
    stream = MaskGenerator(mix, 1)
    draws = [stream(height, width) for _ in range(20)]
    assert len({d.mask.tobytes() for d in draws}) > 10
    for draw in draws:
        assert draw.mask.shape == (height, width) and draw.mask.dtype == np.float32
        assert set(np.unique(draw.mask)) <= {0.0, 1.0} and draw.mask.any()
    sample = MaskGenerator.for_sample(mix, 5, 42)(height, width)
    assert np.array_equal(sample.mask, MaskGenerator.for_sample(mix, 5, 42)(height, width).mask)


@pytest.mark.parametrize(("mix", "expected"), [
    (MLLM_MASKS, {"irregular": 0.25, "box": 0.25, "outpaint": 0.5}),
    (SD_INPAINT_MASKS, {"irregular": 0.1875, "box": 0.1875, "outpaint": 0.375, "full": 0.25}),
    (DIFFRIR_MASKS, {"irregular": 0.35, "box": 0.30, "outpaint": 0.35}),
], ids=lambda x: getattr(x, "name", ""))
def test_mask_kinds_follow_the_configured_probabilities(mix, expected: dict) -> None:
    stream = MaskGenerator(mix, 0)
    kinds = [stream(64, 64).kind for _ in range(2000)]
    for kind, p in expected.items():
        assert abs(kinds.count(kind) / 2000 - p) < 0.04, (kind, kinds.count(kind))
    assert set(kinds) == set(expected)


@pytest.mark.parametrize(("mix", "low", "high"), [(MLLM_MASKS, 179, 204), (SD_INPAINT_MASKS, 128, 204),
                                                  (DIFFRIR_MASKS, 76, 204)], ids=lambda x: getattr(x, "name", ""))
def test_outpainting_bands_are_within_the_configured_widths(mix, low: int, high: int) -> None:
    """Bands are int(lo*512)..int(hi*512)-1 pixels; each side is masked or not, at least one is."""
    stream, seen = MaskGenerator(mix, 3), 0
    while seen < 60:
        draw = stream(512, 512)
        if draw.kind != "outpaint":
            continue
        seen += 1
        full_cols, full_rows = draw.mask.all(axis=0), draw.mask.all(axis=1)
        widths = [int(np.argmin(full_cols)), int(np.argmin(full_rows)),
                  int(np.argmin(full_cols[::-1])), int(np.argmin(full_rows[::-1]))]
        assert any(widths)
        assert all(w == 0 or low <= w < high for w in widths), widths


def test_boxes_keep_the_margin_and_size() -> None:
    rng = np.random.RandomState(0)
    for _ in range(200):
        mask = box_mask(rng, 256, 256)
        assert not mask[:10].any() and not mask[-10:].any() and not mask[:, :10].any() and not mask[:, -10:].any()
    with pytest.raises(ValueError, match="larger than 22 pixels"):
        box_mask(rng, 20, 64)


def test_strokes_are_round_capped_thick_segments_like_opencv() -> None:
    """cv2.line((10, 20), (50, 20), thickness 9) covers rows 15-25 and columns 5-55 (half-width ceil(9/2))."""
    mask = np.zeros((40, 80), np.float32)
    _draw_thick_segment(mask, 10, 20, 50, 20, 9)
    assert mask[15:26, 10:51].all() and not mask[14, 30] and not mask[26, 30]
    assert mask[20, 5] and not mask[20, 4] and mask[20, 55] and not mask[20, 56]
    assert mask.sum() == 521  # the pixel count OpenCV 5 gives for this line
