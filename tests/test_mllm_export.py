"""The LLaVA-HF export: stock transformers' LlavaForConditionalGeneration and LlavaProcessor, loaded from the exported
folder with no custom code, give the pack's assistant's token ids, logits and greedy replies, for every family."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_mllm_parity import FAMILIES, sample_picture
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

from llmga.cli import main
from llmga.cli.export import ENGINES as CLI_ENGINES
from llmga.mllm.chat import Assistant, GenerationSettings, tokenize_with_image
from llmga.mllm.checkpoint import CheckpointError
from llmga.mllm.export import ENGINES, ExportError, export_llava_hf, llava_chat_template
from llmga.mllm.loader import load_llmga
from llmga.mllm.model import IMAGE_TOKEN_INDEX
from llmga.mllm.preprocess import stretch_to_square
from llmga.mllm.templates import TEMPLATE_NAMES, get_template

FIRST_TURN = ("Describe the picture.", "A red square on a white table.")
SECOND_TURN = "Make it a blue circle."


@pytest.fixture(scope="module")
def loaded(mllm_checkpoints):
    return {family: load_llmga(fixture.path, dtype="fp32", device="cpu")
            for family, fixture in mllm_checkpoints.items()}


@pytest.fixture(scope="module")
def exported(mllm_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("llava_hf")
    return {family: export_llava_hf(fixture.path, root / family, dtype="fp32")
            for family, fixture in mllm_checkpoints.items()}


def messages(with_image: bool, image: Image.Image | None = None) -> list[dict]:
    """A two-turn conversation in transformers' chat format, the picture (when any) first in the first turn."""
    picture = [{"type": "image", "image": image}] if with_image else []
    return [{"role": "user", "content": [*picture, {"type": "text", "text": FIRST_TURN[0]}]},
            {"role": "assistant", "content": [{"type": "text", "text": FIRST_TURN[1]}]},
            {"role": "user", "content": [{"type": "text", "text": SECOND_TURN}]}]


def pack_prompt(assistant: Assistant, with_image: bool) -> str:
    first = ("<image>\n" if with_image else "") + FIRST_TURN[0]
    return assistant.template.render([(first, FIRST_TURN[1]), (SECOND_TURN, None)])


def pack_logits(loaded_assistant, ids: list[int], pixels: torch.Tensor | None) -> torch.Tensor:
    model = loaded_assistant.model
    features = model.encode_images(pixels[None]) if pixels is not None else None
    with torch.no_grad():
        return model.language_model(inputs_embeds=model.embed(ids, features)).logits


def processor_inputs(folder, with_image: bool) -> dict:
    """What a client sends: the picture stretched to a square (LLMGA's step), then the stock processor."""
    processor = AutoProcessor.from_pretrained(folder, backend="pil")
    image = stretch_to_square(sample_picture()) if with_image else None
    return processor.apply_chat_template(messages(with_image, image), add_generation_prompt=True, tokenize=True,
                                         return_dict=True, return_tensors="pt")


@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text"])
@pytest.mark.parametrize("family", FAMILIES)
def test_exported_model_gives_the_packs_ids_and_logits(loaded, exported, family, with_image):
    assistant = Assistant(loaded[family])
    ids = tokenize_with_image(pack_prompt(assistant, with_image), assistant.tokenizer)
    pixels = assistant.picture(sample_picture()) if with_image else None
    ours = pack_logits(loaded[family], ids, pixels)

    inputs = processor_inputs(exported[family], with_image)
    model = LlavaForConditionalGeneration.from_pretrained(exported[family], dtype=torch.float32).eval()
    image_id = model.config.image_token_id
    assert image_id == len(assistant.tokenizer)
    expanded = [token for token in ids for token in ([image_id] * 576 if token == IMAGE_TOKEN_INDEX else [token])]
    assert inputs["input_ids"][0].tolist() == expanded
    if with_image:
        torch.testing.assert_close(inputs["pixel_values"][0], pixels, atol=1e-6, rtol=0)
    with torch.no_grad():
        theirs = model(**inputs).logits
    assert theirs.shape == (*ours.shape[:2], image_id + 1)
    torch.testing.assert_close(theirs[..., :image_id], ours, atol=1e-5, rtol=0)
    # The <image> row copies a twin token's row: never above every other logit, so never a greedy choice.
    assert (theirs[..., image_id] <= theirs[..., :image_id].max(-1).values).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_chat_template_gives_the_packs_ids(loaded, exported, family):
    """What an engine does with a chat request: render the template, tokenise without adding special tokens."""
    assistant = Assistant(loaded[family])
    ids = tokenize_with_image(pack_prompt(assistant, True), assistant.tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(exported[family])
    chat = messages(True)
    chat[0]["content"][0] = {"type": "image"}
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    image_id = len(assistant.tokenizer)
    assert tokenizer(text, add_special_tokens=False).input_ids == [image_id if t == IMAGE_TOKEN_INDEX else t
                                                                     for t in ids]


@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text"])
@pytest.mark.parametrize("family", FAMILIES)
def test_exported_model_gives_the_packs_greedy_reply(loaded, exported, family, with_image):
    assistant = Assistant(loaded[family])
    history = assistant.new_history()
    pixels = assistant.picture(sample_picture()) if with_image else None
    message = ("<image>\n" if with_image else "") + FIRST_TURN[0]
    # The pack's prompt enters as embeddings, so its repetition penalty sees only the reply: greedy without one.
    reply = assistant.reply(history, message, image=pixels,
                            settings=GenerationSettings(max_new_tokens=6, temperature=0.0, repetition_penalty=1.0))

    processor = AutoProcessor.from_pretrained(exported[family], backend="pil")
    picture = [{"type": "image", "image": stretch_to_square(sample_picture())}] if with_image else []
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": [*picture, {"type": "text", "text": FIRST_TURN[0]}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    model = LlavaForConditionalGeneration.from_pretrained(exported[family], dtype=torch.float32).eval()
    with torch.no_grad():
        output = model.generate(**inputs, do_sample=False, repetition_penalty=1.0, max_new_tokens=6)
    new = output[0, inputs["input_ids"].shape[1]:].tolist()
    ends = set(model.generation_config.eos_token_id)
    assert len(new) == reply.new_tokens
    text = processor.tokenizer.decode([t for t in new if t not in ends], skip_special_tokens=False)
    for stop in assistant.template.stop_strings:
        text = text.split(stop)[0]
    assert text.strip() == reply.text


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_chat_template_renders_the_official_conversation(mllm_checkpoints, name):
    tokenizer = AutoTokenizer.from_pretrained(mllm_checkpoints["qwen2"].path)
    template = get_template(name)
    jinja = llava_chat_template(template)
    chat = messages(True)
    chat[0]["content"][0] = {"type": "image"}
    for generation in (True, False):
        text = tokenizer.apply_chat_template(chat if generation else chat[:2], chat_template=jinja, tokenize=False,
                                             add_generation_prompt=generation)
        turns = [(f"<image>\n{FIRST_TURN[0]}", FIRST_TURN[1])] + ([(SECOND_TURN, None)] if generation else [])
        assert text == template.render(turns)


def test_a_system_message_replaces_the_templates_system(mllm_checkpoints):
    tokenizer = AutoTokenizer.from_pretrained(mllm_checkpoints["qwen2"].path)
    template = get_template("qwen_2")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(chat, chat_template=llava_chat_template(template), tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"


def test_export_files_name_the_image_token_and_the_packs_decoding(loaded, exported):
    folder = exported["qwen2"]
    assistant = Assistant(loaded["qwen2"])
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["model_type"] == "llava"
    image_id = config["image_token_index"]
    assert image_id == len(assistant.tokenizer) == config["text_config"]["vocab_size"] - 1
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == [image_id]
    assert sorted(generation["eos_token_id"]) == assistant.eos_ids()
    assert generation["temperature"] == 0.2 and generation["top_k"] == 20  # the official CLI's and the checkpoint's
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.encode("a <image>", add_special_tokens=False)[-1] == image_id
    assert tokenizer.added_tokens_decoder[image_id].special
    assert (folder / "preprocessor_config.json").is_file()


def test_gemma_image_scale_is_folded_for_transformers_only(mllm_checkpoints, exported, tmp_path):
    assert CLI_ENGINES == ENGINES
    for_vllm = export_llava_hf(mllm_checkpoints["gemma"].path, tmp_path / "vllm", dtype="fp32", engine="vllm")
    folded, plain = load_file(exported["gemma"] / "model.safetensors"), load_file(for_vllm / "model.safetensors")
    hidden = json.loads((for_vllm / "config.json").read_text())["text_config"]["hidden_size"]
    for name in ("weight", "bias"):
        key = f"multi_modal_projector.linear_2.{name}"
        torch.testing.assert_close(folded[key], plain[key] * math.sqrt(hidden))
    assert all(torch.equal(folded[key], plain[key]) for key in plain if not key.startswith("multi_modal_projector.l"
                                                                                             "inear_2"))


def test_export_refuses_a_projector_llava_hf_cannot_hold(mllm_checkpoints, tmp_path):
    source = mllm_checkpoints["qwen2"].path
    copy = tmp_path / "linear"
    copy.mkdir()
    for file in source.iterdir():
        (copy / file.name).symlink_to(file)
    config = json.loads((source / "config.json").read_text())
    (copy / "config.json").unlink()
    (copy / "config.json").write_text(json.dumps({**config, "mm_projector_type": "linear"}))
    with pytest.raises(ExportError, match="mm_projector_type 'linear'"):
        export_llava_hf(copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_exports_in_the_chosen_dtype(mllm_checkpoints, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export-hf", "--mllm", str(mllm_checkpoints["phi3"].path), "--out", str(out), "--dtype", "bf16"]) == 0
    assert "wrote" in capsys.readouterr().out
    model = LlavaForConditionalGeneration.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_cli_refuses_a_folder_with_files_unless_overwrite(mllm_checkpoints, tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    args = ["export-hf", "--mllm", str(mllm_checkpoints["qwen2"].path), "--out", str(out), "--dtype", "fp32"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "already holds files" in error and error.count("\n") == 1
    assert (out / "notes.txt").read_text() == "keep"
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()


@pytest.mark.parametrize("problem", ["plain folder", "out is a file"])
def test_cli_refuses_bad_folders_in_one_line(mllm_checkpoints, tmp_path, capsys, problem):
    source, out = mllm_checkpoints["qwen2"].path, tmp_path / "export"
    if problem == "plain folder":
        source = mllm_checkpoints["qwen2"].vision_tower  # a CLIP folder: a model, not an LLMGA checkpoint
    else:
        out.write_text("")
    assert main(["export-hf", "--mllm", str(source), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert ("is not an LLMGA checkpoint" if problem == "plain folder" else "is a file") in error


def test_library_refuses_a_plain_folder_with_the_loaders_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        export_llava_hf(tmp_path / "empty", tmp_path / "out")
