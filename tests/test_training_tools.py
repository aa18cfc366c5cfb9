"""The data tools: batched assistant replies, the prompt recorder (record_prompts) and the refinement-pair builder."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from fixtures.families import FAMILIES
from PIL import Image
from safetensors.torch import load_file, save_file

from llmga.mllm.batch import BatchReply, _RowStopStrings, reply_batch
from llmga.mllm.chat import Assistant, ChatError, GenerationSettings, UserTurn
from llmga.mllm.loader import load_llmga
from llmga.mllm.tasks import REGEN_PROMPT
from llmga.prompt import parse_reply
from training.data.datasets import read_caption_jsonl, read_t2i, read_user_captions
from training.tools import record_prompts, refinement_pairs
from training.tools.refinement_pairs import FirstSentence, FirstWords

GREEDY = GenerationSettings(max_new_tokens=12, temperature=0.0)
COLORS = ("red", "green", "blue", "yellow", "purple")


def lively_copy(source: Path, root: Path) -> Path:
    """A copy of a tiny checkpoint with larger random LLM weights. The fixtures' own greedy replies are mostly one
    repeated token; these differ from input to input, so comparing batched with single replies says something."""
    folder = root / source.name
    shutil.copytree(source, folder)
    generator = torch.Generator().manual_seed(0)
    for shard in sorted(folder.glob("*.safetensors")):
        tensors = load_file(shard)
        for key, tensor in tensors.items():
            if tensor.dim() == 2 and not key.startswith(("model.mm_projector", "model.vision_tower")):
                tensors[key] = (torch.randn(tensor.shape, generator=generator) * 0.3).to(tensor.dtype)
        save_file(tensors, shard, metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def lively_qwen(mllm_checkpoints, tmp_path_factory) -> Path:
    return lively_copy(mllm_checkpoints["qwen2"].path, tmp_path_factory.mktemp("lively"))


@pytest.fixture(scope="module")
def assistant(lively_qwen) -> Assistant:
    return Assistant(load_llmga(lively_qwen, dtype="fp32", device="cpu"))


def write_images(folder: Path, count: int = 5) -> list[Path]:
    """`count` small images of different sizes and colours (each gets its own reply)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{index:02d}_{COLORS[index % len(COLORS)]}.png"
        Image.new("RGB", (24 + 8 * index, 32), COLORS[index % len(COLORS)]).save(path)
        paths.append(path)
    return paths


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def record(model: Path, images: Path, output: Path, *extra: str) -> int:
    return record_prompts.main(["--model", str(model), "--images", str(images), "--output", str(output),
                                "--device", "cpu", "--dtype", "fp32", "--max-new-tokens", "8", *extra])


# --- batched generation ------------------------------------------------------------------------------------------


def mixed_requests(assistant: Assistant) -> list[UserTurn]:
    """Two pictures of different sizes and two text-only turns of different lengths: rows padded very differently."""
    requests = []
    for index, color in enumerate(("red", "blue")):
        image = Image.new("RGB", (40 + 30 * index, 30), color)
        requests.append(assistant.turn(assistant.new_history(), "similar_image", image=image))
    for text in ("a cat", "a lighthouse on a cliff at dusk, waves below"):
        requests.append(assistant.turn(assistant.new_history(), "text_to_image", text, placement="before"))
    return requests


def test_greedy_batched_replies_equal_single_replies_and_the_assistant(assistant):
    requests = mixed_requests(assistant)
    batched = reply_batch(assistant, requests, GREEDY)
    singles = [reply_batch(assistant, [request], GREEDY)[0] for request in requests]
    chats = [assistant.reply(assistant.new_history(), r.message, image=r.picture, settings=GREEDY) for r in requests]
    assert [r.text for r in batched] == [r.text for r in singles] == [r.text for r in chats]
    assert [r.new_tokens for r in batched] == [r.new_tokens for r in singles] == [r.new_tokens for r in chats]
    assert [r.prompt for r in batched] == [r.prompt for r in chats]
    assert len({r.text for r in batched}) == len(requests)  # distinct replies: rows did not leak into each other


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_batched_replies_equal_the_assistant_for_every_family(mllm_checkpoints, tmp_path, family):
    chat = Assistant(load_llmga(lively_copy(mllm_checkpoints[family].path, tmp_path), dtype="fp32", device="cpu"))
    requests = mixed_requests(chat)[2:]  # two texts of different lengths (pictures: the Qwen2 test above)
    batched = reply_batch(chat, requests, GREEDY)
    chats = [chat.reply(chat.new_history(), r.message, image=r.picture, settings=GREEDY) for r in requests]
    assert [(r.text, r.new_tokens) for r in batched] == [(r.text, r.new_tokens) for r in chats]


def test_batched_reply_is_parsed(assistant):
    reply = reply_batch(assistant, mixed_requests(assistant)[:1], GREEDY)[0]
    assert reply.parsed == parse_reply(reply.text)


def test_rows_end_on_their_own_at_a_stop_string_made_of_several_tokens(assistant):
    tokenizer = assistant.tokenizer
    watcher = _RowStopStrings(tokenizer, ("THE END",), rows=2)
    stopped = tokenizer("a cat THE END").input_ids
    running = tokenizer("a cat on the mat, a dog in the sun, a bird").input_ids[:len(stopped)]
    assert len(stopped) == len(running) and len(tokenizer("THE END").input_ids) > 1
    assert watcher(torch.tensor([stopped, running]), None).tolist() == [True, False]
    assert watcher.ended_at == [len(stopped), None]


def test_batch_refuses_an_image_placeholder_without_a_picture(assistant):
    with pytest.raises(ChatError, match="request 1.*no picture"):
        reply_batch(assistant, [UserTurn("hello"), UserTurn("<image>\nDescribe the image.")], GREEDY)


def test_empty_batch_gives_no_replies(assistant):
    assert reply_batch(assistant, [], GREEDY) == []


# --- record_prompts ----------------------------------------------------------------------------------------------


def test_records_carry_the_documented_fields_and_read_back_as_stage2_data(lively_qwen, tmp_path, capsys):
    images = write_images(tmp_path / "images", 3)
    output = tmp_path / "out" / "prompts.jsonl"  # outside the images folder: paths must still resolve
    assert record(lively_qwen, tmp_path / "images", output, "--batch-size", "2") == 0
    records = read_lines(output)
    assert [r["image"] for r in records] == [f"../images/{p.name}" for p in images]
    for item in records:
        assert set(item) == {"image", "caption", "tagged", "reply", "task", "instruction", "model"}
        assert item["task"] == "similar_image" and item["model"] == lively_qwen.name
        assert item["instruction"] == "<image>\nGenerate a similar image."
        assert item["caption"] == parse_reply(item["reply"]).prompt() and item["caption"]
        assert item["tagged"] is parse_reply(item["reply"]).has_prompt
    for rows in (read_caption_jsonl(output), read_user_captions(output)):  # stage 2 reads .jsonl without image_root
        assert [r.image.resolve() for r in rows] == [p.resolve() for p in images]
        assert [r.caption for r in rows] == [item["caption"] for item in records]
    assert "recorded 3 prompts" in capsys.readouterr().out


def test_tagged_prompt_is_the_text_between_the_tags_and_untagged_replies_are_flagged_or_skipped(
        lively_qwen, tmp_path, monkeypatch):
    images = write_images(tmp_path / "images", 3)
    canned = ["Sure. <gen_image> a red square on white </gen_image>", "just words", "  "]  # one per image, in order

    def fake_reply_batch(assistant, requests, settings):
        assert len(requests) == len(canned)
        return [BatchReply(text, parse_reply(text), "", 1) for text in canned]

    monkeypatch.setattr("llmga.mllm.batch.reply_batch", fake_reply_batch)
    output = tmp_path / "images" / "prompts.jsonl"
    assert record(lively_qwen, tmp_path / "images", output, "--batch-size", "3") == 1  # the empty reply failed
    records = read_lines(output)
    assert [(r["image"], r["caption"], r["tagged"]) for r in records] == [
        (images[0].name, "a red square on white", True), (images[1].name, "just words", False)]
    errors = read_lines(output.with_suffix(".errors.jsonl"))
    assert [(e["image"], e["error"]) for e in errors] == [(images[2].name, "the reply is empty")]

    skipping = tmp_path / "images" / "tagged_only.jsonl"
    assert record(lively_qwen, tmp_path / "images", skipping, "--batch-size", "3", "--skip-untagged") == 1
    assert [r["image"] for r in read_lines(skipping)] == [images[0].name]
    assert {e["image"] for e in read_lines(skipping.with_suffix(".errors.jsonl"))} == {images[1].name, images[2].name}


def test_resumed_run_after_an_interruption_equals_an_uninterrupted_run(lively_qwen, tmp_path, capsys):
    write_images(tmp_path / "images", 5)
    whole = tmp_path / "images" / "whole.jsonl"
    assert record(lively_qwen, tmp_path / "images", whole, "--batch-size", "3") == 0
    resumed = tmp_path / "images" / "resumed.jsonl"
    assert record(lively_qwen, tmp_path / "images", resumed, "--batch-size", "2", "--limit", "2") == 0
    assert len(read_lines(resumed)) == 2
    with resumed.open("ab") as file:  # the process died in the middle of writing the next batch
        file.write(b'{"image": "02_blue.png", "caption": "half a capt')
    assert record(lively_qwen, tmp_path / "images", resumed, "--batch-size", "3") == 0
    assert "torn last line" in capsys.readouterr().err
    records = read_lines(resumed)
    assert len({r["image"] for r in records}) == len(records) == 5
    assert records == read_lines(whole)


def test_a_finished_output_is_left_alone(lively_qwen, tmp_path, capsys):
    write_images(tmp_path / "images", 2)
    output = tmp_path / "images" / "prompts.jsonl"
    assert record(lively_qwen, tmp_path / "images", output) == 0
    before = output.read_bytes()
    assert record(lively_qwen, tmp_path / "images", output) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert output.read_bytes() == before


def test_unreadable_image_is_listed_and_the_others_are_recorded(lively_qwen, tmp_path, capsys):
    write_images(tmp_path / "images", 2)
    (tmp_path / "images" / "01_broken.png").write_bytes(b"not a png")
    output = tmp_path / "images" / "prompts.jsonl"
    assert record(lively_qwen, tmp_path / "images", output, "--batch-size", "3") == 1
    assert [r["image"] for r in read_lines(output)] == ["00_red.png", "01_green.png"]
    errors = read_lines(output.with_suffix(".errors.jsonl"))
    assert [e["image"] for e in errors] == ["01_broken.png"] and "cannot read the image" in errors[0]["error"]
    captured = capsys.readouterr()
    assert "01_broken.png" in captured.err and "1 failed" in captured.out


def test_vary_instruction_draws_training_phrasings_stably_per_image(lively_qwen, tmp_path):
    write_images(tmp_path / "images", 4)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for output, batch in ((first, "4"), (second, "1")):
        assert record(lively_qwen, tmp_path / "images", output, "--vary-instruction", "--batch-size", batch,
                      "--max-new-tokens", "2") == 0
    instructions = [r["instruction"] for r in read_lines(first)]
    assert instructions == [r["instruction"] for r in read_lines(second)]
    assert all(text.removeprefix("<image>\n") in REGEN_PROMPT for text in instructions)


def test_describe_records_whole_replies(lively_qwen, tmp_path):
    write_images(tmp_path / "images", 1)
    output = tmp_path / "describe.jsonl"
    assert record(lively_qwen, tmp_path / "images", output, "--task", "describe") == 0
    (item,) = read_lines(output)
    assert item["task"] == "describe"
    assert item["instruction"] == "<image>\nWrite a detailed description of the given image."
    assert item["caption"] == parse_reply(item["reply"]).prompt()


@pytest.mark.parametrize("case, message", [
    ("missing model", "is not a folder: give an LLMGA checkpoint folder"),
    ("missing images", "does not exist or is not a folder"),
    ("no images", "no images"),
    ("other task", "holds prompts of task 'describe'"),
    ("not ours", "line 1 is not a record of this tool"),
    ("foreign last line", "the last line is not a record of this tool"),
    ("skip untagged describe", "--skip-untagged would skip every reply"),
    ("bad batch size", "--batch-size must be at least 1"),
])
def test_record_errors_are_clear(lively_qwen, tmp_path, capsys, case, message):
    images, output, extra = tmp_path / "images", tmp_path / "prompts.jsonl", []
    write_images(images, 1)
    model = lively_qwen
    if case == "missing model":
        model = tmp_path / "nope"
    elif case == "missing images":
        images = tmp_path / "nowhere"
    elif case == "no images":
        images = tmp_path / "empty"
        (images / "sub").mkdir(parents=True)
    elif case == "other task":
        output.write_text(json.dumps({"image": "x.png", "caption": "c", "task": "describe",
                                      "model": lively_qwen.name}) + "\n")
    elif case == "not ours":
        output.write_text('["a list"]\n')
    elif case == "foreign last line":
        output.write_text("notes without a final newline")
    elif case == "skip untagged describe":
        extra = ["--task", "describe", "--skip-untagged"]
    elif case == "bad batch size":
        extra = ["--batch-size", "0"]
    before = output.read_bytes() if output.exists() else None
    assert record(model, images, output, *extra) == 2
    assert message in capsys.readouterr().err
    assert (output.read_bytes() if output.exists() else None) == before  # a refused run leaves the output alone


# --- refinement_pairs --------------------------------------------------------------------------------------------


def test_first_sentence_shortener():
    shorten = FirstSentence()
    assert shorten(None, "A red fox in snow. Soft light falls.") == "A red fox in snow"
    assert shorten(None, "What a view!  Mountains behind.") == "What a view!"
    assert shorten(None, "a lake, 3.5 m deep, at dawn") == "a lake, 3.5 m deep, at dawn"


def test_truncate_shortener():
    assert FirstWords(3)(None, "a red fox, in deep snow") == "a red fox"
    assert FirstWords(10)(None, "two words.") == "two words"


def caption_folder(folder: Path, captions: list[str]) -> list[Path]:
    images = write_images(folder, len(captions))
    for image, caption in zip(images, captions, strict=True):
        image.with_suffix(".txt").write_text(caption)
    return images


def pairs(*argv: str) -> int:
    return refinement_pairs.main(["--device", "cpu", "--dtype", "fp32", "--max-new-tokens", "8", *argv])


def test_shorten_a_captioned_folder_into_t2i_pairs(tmp_path, capsys):
    detailed = ["A red fox in deep snow. The light is soft.", "Single sentence only",
                "A tall lighthouse on a cliff. Waves crash below. Dusk."]
    images = caption_folder(tmp_path / "set", detailed)
    output = tmp_path / "t2i" / "train.json"
    assert pairs("--input", str(tmp_path / "set"), "--output", str(output), "--mode", "shorten",
                 "--captioner", "first-sentence") == 0
    rows = read_t2i(output, image_root=tmp_path / "set")
    assert [(r.short, r.caption, r.image) for r in rows] == [
        ("A red fox in deep snow", detailed[0], images[0]), ("A tall lighthouse on a cliff", detailed[2], images[2])]
    assert "skipped" in capsys.readouterr().err  # the one-sentence caption: nothing to shorten
    assert json.loads(output.read_text())[0] == {"ori_caption": "A red fox in deep snow", "caption": detailed[0],
                                                 "image": images[0].name}
    assert not list(output.parent.glob(".*.tmp"))  # written through a temporary file that is gone


def test_shorten_a_t2i_json_uses_its_detailed_captions(tmp_path):
    source = tmp_path / "t2i.json"
    source.write_text(json.dumps([{"ori_caption": "fox", "caption": "A fox in snow, soft light, wide shot",
                                   "image": "imgs/fox.png"}, {"ori_caption": "sea", "caption": "Sea waves at dusk"}]))
    output = tmp_path / "shorter.json"
    assert pairs("--input", str(source), "--output", str(output), "--mode", "shorten", "--captioner", "truncate:3") == 0
    assert json.loads(output.read_text()) == [
        {"ori_caption": "A fox in", "caption": "A fox in snow, soft light, wide shot", "image": "imgs/fox.png"},
        {"ori_caption": "Sea waves at", "caption": "Sea waves at dusk"}]


def test_custom_module_captioner_expands_a_jsonl(tmp_path, monkeypatch):
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_captions.py").write_text(textwrap.dedent("""
        def expand(image, caption):
            return f"{caption}, highly detailed, photo of {image.stem}"
    """))
    monkeypatch.syspath_prepend(str(code))
    images = write_images(tmp_path / "set", 2)
    source = tmp_path / "set" / "short.jsonl"
    source.write_text("".join(json.dumps({"image": image.name, "caption": short}) + "\n"
                              for image, short in zip(images, "ab", strict=True)))
    output = tmp_path / "pairs.json"
    assert pairs("--input", str(source), "--output", str(output), "--mode", "expand",
                 "--captioner", "my_captions:expand") == 0
    rows = read_t2i(output, image_root=tmp_path / "set")
    assert [(r.short, r.caption, r.image) for r in rows] == [
        ("a", f"a, highly detailed, photo of {images[0].stem}", images[0]),
        ("b", f"b, highly detailed, photo of {images[1].stem}", images[1])]


def test_assistant_captioner_expands_with_batched_refine_replies(lively_qwen, assistant, tmp_path):
    shorts = ["a cat", "a red boat on a lake", "mountains"]
    caption_folder(tmp_path / "set", shorts)
    output = tmp_path / "pairs.json"
    assert pairs("--input", str(tmp_path / "set"), "--output", str(output), "--mode", "expand", "--batch-size", "2",
                 "--captioner", f"assistant:{lively_qwen}") == 0
    expected = []
    for short in shorts:
        message = assistant.user_message("refine_prompt", short, assistant.new_history(), False, placement="before")
        assert message == f"Please provide a detailed description. {short}"
        reply = assistant.reply(assistant.new_history(), message, settings=GenerationSettings(8, temperature=0.0))
        expected.append((short, reply.parsed.prompt()))
    written = [(item["ori_caption"], item["caption"]) for item in json.loads(output.read_text())]
    assert written == [pair for pair in expected if pair[1] and pair[1] != pair[0]] and written


def test_assistant_captioner_describes_the_image(lively_qwen, assistant, tmp_path):
    (image,) = caption_folder(tmp_path / "set", ["a red square"])
    output = tmp_path / "pairs.json"
    assert pairs("--input", str(tmp_path / "set"), "--output", str(output), "--mode", "expand",
                 "--captioner", f"assistant:{lively_qwen}", "--assistant-task", "describe") == 0
    message = assistant.user_message("describe", "", assistant.new_history(), True)
    reply = assistant.reply(assistant.new_history(), message, image=assistant.picture(Image.open(image)),
                            settings=GenerationSettings(8, temperature=0.0))
    assert json.loads(output.read_text()) == [{"ori_caption": "a red square", "caption": reply.parsed.prompt(),
                                               "image": image.name}]


@pytest.mark.parametrize("case, message", [
    ("same file", "is the input"),
    ("exists", "exists: choose another file or pass --overwrite"),
    ("duplicate", "appears in records 0 and 1"),
    ("empty caption", "must be a non-empty string"),
    ("wrong direction", "is made for --mode shorten, not --mode expand"),
    ("assistant shortening", "is made for --mode expand, not --mode shorten"),
    ("not callable", "is a int, not a callable"),
    ("no module", "cannot import 'no_such_module_xyz'"),
    ("bad truncate", "truncate:N needs a positive word count"),
    ("missing input", "does not exist"),
])
def test_refinement_errors_are_clear(tmp_path, capsys, monkeypatch, case, message):
    source, output = tmp_path / "set.jsonl", tmp_path / "out.json"
    records = [{"image": "a.png", "caption": "A fox. In snow."}, {"image": "b.png", "caption": "A cat. On a mat."}]
    mode, captioner = "shorten", "first-sentence"
    if case == "same file":
        output = source
    elif case == "exists":
        output.write_text("[]")
    elif case == "duplicate":
        records[1]["image"] = "./a.png"
    elif case == "empty caption":
        records[1]["caption"] = " "
    elif case == "wrong direction":
        mode = "expand"
    elif case == "assistant shortening":
        captioner = f"assistant:{tmp_path / 'refused before loading'}"
    elif case == "not callable":
        (tmp_path / "numbers_mod.py").write_text("VALUE = 3\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        captioner = "numbers_mod:VALUE"
    elif case == "no module":
        captioner = "no_such_module_xyz:f"
    elif case == "bad truncate":
        captioner = "truncate:0"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    if case == "missing input":
        source = tmp_path / "absent.jsonl"
    assert pairs("--input", str(source), "--output", str(output), "--mode", mode, "--captioner", captioner) == 2
    assert message in capsys.readouterr().err
