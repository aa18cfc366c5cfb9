"""Stage-1 MLLM training (training/stage1_mllm.py) on the CPU: projector pretraining and full fine-tuning.

The models are the tiny LLMGA stand-ins of fixtures/mllm.py (a real tokenizer trained offline, LLM hidden 64 with
2 layers, a 2-layer CLIP tower at 336 px) in the official folder layouts: a plain base LLM, the CLIP folder and
the pretraining's mm_projector.bin. The data is a few small images and records in the released json formats,
written by the tests.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.mllm import build_base_llm, build_clip_vision_tower, build_projector_only
from PIL import Image
from safetensors.torch import load_file
from training_support import fresh_accelerate, launch_two_processes, reset_accelerate, torch_threads  # noqa: F401
from transformers import CLIPImageProcessorPil

from llmga.mllm.chat import Assistant, GenerationSettings
from llmga.mllm.checkpoint import read_checkpoint, read_weight_file
from llmga.mllm.loader import load_llmga
from llmga.mllm.model import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from training.common import ConfigError, load_config
from training.data.datasets import DataError
from training.data.stage1 import Stage1Dataset, collate, read_stage1_records
from training.stage1_mllm import Stage1Config, load_stage1_parts, main, train

REPO_ROOT = Path(__file__).resolve().parent.parent


few_threads = torch_threads(2)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The official stage-1 inputs for Qwen2: base LLM, CLIP tower, and a pretrained projector."""
    root = tmp_path_factory.mktemp("stage1_models")
    tower = build_clip_vision_tower(root)
    adapter = build_projector_only(root, "qwen2", vision_tower=tower)
    base = next((root / "base_models").iterdir())
    return {"root": root, "base": base, "tower": tower, "adapter": adapter}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Released-layout records for every stage-1 source, over 4 small images."""
    root = tmp_path_factory.mktemp("stage1_data")
    images = root / "llmga-imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        pixels = rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / (f"laion_{i}.png" if i % 2 else f"coco_{i}.png"))
    names = sorted(p.name for p in images.iterdir())
    captions = ["a red barn under a stormy sky", "two dogs running on a beach at sunset",
                "a bowl of ramen with eggs and scallions", "a lighthouse on a cliff in fog"]
    jsons = root / "jsons"
    (jsons / "llmga-data" / "SG").mkdir(parents=True)
    (jsons / "llmga-data" / "inpainting").mkdir()
    (jsons / "llmga-data" / "Edit").mkdir()
    (jsons / "llmga-data" / "T2I").mkdir()
    (jsons / "text-data").mkdir()
    captioned = [{"image": f"llmga-imgs/{n}", "caption": c} for n, c in zip(names, captions, strict=True)]
    (jsons / "llmga-data" / "SG" / "train.json").write_text(json.dumps(captioned))
    (jsons / "llmga-data" / "inpainting" / "train.json").write_text(json.dumps(captioned[:2]))
    (jsons / "llmga-data" / "Edit" / "train.json").write_text(json.dumps(
        [{"image": f"llmga-imgs/{names[0]}", "instruction": "<image>\nmake the barn blue.",
          "new_caption": "a blue barn under a stormy sky"}]))
    (jsons / "llmga-data" / "T2I" / "train.json").write_text(json.dumps(
        [{"ori_caption": "a cat", "caption": "a fluffy ginger cat asleep on a red velvet sofa in warm light"}]))
    (jsons / "text-data" / "lima.json").write_text(json.dumps(
        [{"conversations": [{"from": "human", "value": "Name a warm colour."},
                            {"from": "gpt", "value": "Orange is a warm colour."}]}]))
    (jsons / "llava.json").write_text(json.dumps(
        [{"image": names[1], "conversations": [{"from": "human", "value": "What is shown?\n<image>"},
                                               {"from": "gpt", "value": "Two dogs on a beach."}]}]))
    return root


def finetune_config(models: dict[str, Path], data_root: Path, output: Path, **changes) -> Stage1Config:
    config = Stage1Config(
        model_name_or_path=str(models["base"]), vision_tower=str(models["tower"]), output_dir=str(output),
        pretrain_mm_mlp_adapter=str(models["adapter"]), data_root=str(data_root),
        image_folder=str(data_root / "llmga-imgs"), image_folder2=str(data_root),
        llava_data="jsons/llava.json", inpainting_data="jsons/llmga-data/inpainting/train.json",
        similar_image_data="jsons/llmga-data/SG/train.json", edit_data="jsons/llmga-data/Edit/train.json",
        t2i_data="jsons/llmga-data/T2I/train.json", text_data=["jsons/text-data/lima.json"],
        per_device_train_batch_size=10, gradient_accumulation_steps=1, max_train_steps=8, learning_rate=3e-3,
        mixed_precision="no", dataloader_num_workers=0, checkpointing_steps=100, resume_from_checkpoint=None,
        gradient_checkpointing=False, seed=0)
    return replace(config, **changes)


@pytest.fixture(scope="module")
def finetuned(models, data_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("stage1_finetune") / "out"
    reset_accelerate()
    result = train(finetune_config(models, data_root, output, gradient_checkpointing=True))
    reset_accelerate()
    return result


# --- data ----------------------------------------------------------------------------------------------------------


def test_records_follow_the_official_concat_order_and_sizes(models, data_root, tmp_path):
    config = finetune_config(models, data_root, tmp_path / "o")
    kinds = [record.kind for record in read_stage1_records(config)]
    # ConcatDataset([VQA, Inpainting, SG, Edit, Text(LIMA, OASST2, T2I)])
    assert kinds == ["chat"] + ["inpainting"] * 2 + ["similar_image"] * 4 + ["edit"] + ["chat"] + ["t2i"]


def test_samples_carry_the_image_token_and_supervise_only_the_replies(models, data_root, tmp_path):
    config = finetune_config(models, data_root, tmp_path / "o")
    parts = load_stage1_parts(config)
    dataset = Stage1Dataset(read_stage1_records(config), parts.tokenizer, parts.template, parts.processing, config)
    assert parts.template == "qwen_2"
    for index in range(len(dataset)):
        item = dataset[index]
        has_image = dataset.records[index].kind not in ("t2i",) and not (
            dataset.records[index].kind == "chat" and dataset.records[index].record.image is None)
        assert (IMAGE_TOKEN_INDEX in item["input_ids"]) == has_image
        assert (item["pixel_values"] is not None) == has_image
        if has_image:
            assert item["pixel_values"].shape == (3, 336, 336)
        supervised = [t for t, label in zip(item["input_ids"], item["labels"], strict=True) if label != IGNORE_INDEX]
        assert supervised and IMAGE_TOKEN_INDEX not in supervised
        reply = parts.tokenizer.decode(supervised)
        assert reply.endswith("<|im_end|>") and "<|im_start|>" not in reply
    batch = collate([dataset[i] for i in range(3)])
    assert batch["image_owners"] == [0, 1, 2] and batch["pixel_values"].shape == (3, 3, 336, 336)


def test_the_same_sample_is_drawn_again_in_the_same_epoch_and_differs_across_epochs(models, data_root, tmp_path):
    config = finetune_config(models, data_root, tmp_path / "o")
    parts = load_stage1_parts(config)
    dataset = Stage1Dataset(read_stage1_records(config), parts.tokenizer, parts.template, parts.processing, config)
    inpaint = [i for i, r in enumerate(dataset.records) if r.kind == "inpainting"][0]
    first = dataset[inpaint]
    assert torch.equal(dataset[inpaint]["pixel_values"], first["pixel_values"])
    seen = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        seen.add(float(dataset[inpaint]["pixel_values"].sum()))
    assert len(seen) > 1  # a new mask each epoch


def test_pretraining_images_go_through_the_plain_clip_processor(models, tmp_path):
    """pretrain.py's `processor.preprocess(image)`: a 500x333 picture resized to 504x336 (not 505), centre-cropped."""
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (333, 500, 3), dtype=np.uint8))
    picture.save(tmp_path / "wide.png")
    (tmp_path / "pretrain.json").write_text(json.dumps(
        [{"image": "wide.png", "conversations": [{"from": "human", "value": "<image>\nRender this."},
                                                 {"from": "gpt", "value": "A noisy picture."}]}]))
    config = Stage1Config(model_name_or_path=str(models["base"]), vision_tower=str(models["tower"]),
                          output_dir=str(tmp_path / "o"), mode="pretrain",
                          pretrain_data=str(tmp_path / "pretrain.json"), image_folder=str(tmp_path))
    parts = load_stage1_parts(config)
    dataset = Stage1Dataset(read_stage1_records(config), parts.tokenizer, parts.template, parts.processing, config)
    official = CLIPImageProcessorPil.from_pretrained(models["tower"])(picture, return_tensors="pt").pixel_values[0]
    assert torch.equal(dataset[0]["pixel_values"], torch.as_tensor(official))


def test_multi_turn_samples_the_official_drops_train_on_nothing_unless_kept(models, data_root, tmp_path):
    """Vicuna (v1) on the test vocabulary: the official count misses a token per later round, so the official
    preprocess ignores every label of a two-turn chat; keep_mismatched_samples trains on both replies."""
    (tmp_path / "chat.json").write_text(json.dumps([{"conversations": [
        {"from": "human", "value": "Name a warm colour."}, {"from": "gpt", "value": "Orange."},
        {"from": "human", "value": "And a cold one?"}, {"from": "gpt", "value": "Blue."}]}]))
    base = build_base_llm(tmp_path / "models", "vicuna")
    config = finetune_config(models, data_root, tmp_path / "o", model_name_or_path=str(base), llava_data=None,
                             inpainting_data=None, similar_image_data=None, edit_data=None, t2i_data=None,
                             text_data=[str(tmp_path / "chat.json")], pretrain_mm_mlp_adapter=None)
    with pytest.warns(UserWarning, match="randomly initialised projector"):
        parts = load_stage1_parts(config)
    items = {}
    for keep in (False, True):
        kept = replace(config, keep_mismatched_samples=keep)
        dataset = Stage1Dataset(read_stage1_records(kept), parts.tokenizer, parts.template, parts.processing, kept)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            items[keep] = dataset[0]
        assert any("tokenization mismatch" in str(w.message) for w in caught) != keep
    assert set(items[False]["labels"]) == {IGNORE_INDEX}
    assert items[True]["input_ids"] == items[False]["input_ids"]
    replies = parts.tokenizer.decode([t for t, label in zip(items[True]["input_ids"], items[True]["labels"],
                                                             strict=True) if label != IGNORE_INDEX])
    assert "Orange." in replies and "Blue." in replies and "cold" not in replies


# --- fine-tuning ---------------------------------------------------------------------------------------------------


def test_finetuning_lowers_the_loss(finetuned):
    losses = finetuned.losses
    assert finetuned.global_step == 8 and len(losses) == 8
    assert all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses


def test_the_written_folder_is_an_official_llmga_checkpoint(finetuned, models):
    folder = finetuned.output_dir
    checkpoint = read_checkpoint(folder)
    config = checkpoint.config
    assert (config["model_type"], config["architectures"]) == ("llava_Qwen2", ["LlavaQwen2ForCausalLM"])
    assert (config["mm_projector_type"], config["mm_vision_select_layer"], config["tune_mm_mlp_adapter"]) == (
        "mlp2x_gelu", -2, False)
    assert config["tokenizer_model_max_length"] == 2048 and config["torch_dtype"] == "bfloat16"
    tensors = dict(checkpoint.tensors())
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert "lm_head.weight" not in tensors  # tied, as the release
    assert any(k.startswith("model.vision_tower.vision_tower.vision_model.") for k in tensors)
    assert {"model.mm_projector.0.weight", "model.mm_projector.2.bias"} <= tensors.keys()
    # The vision tower is frozen: its weights are the CLIP folder's; the projector and the LLM moved.
    clip = load_file(models["tower"] / "model.safetensors")
    for key, value in clip.items():
        assert torch.equal(tensors["model.vision_tower.vision_tower." + key], value.to(torch.bfloat16))
    adapter = dict(read_weight_file(models["adapter"]))
    assert not torch.equal(tensors["model.mm_projector.0.weight"], adapter["model.mm_projector.0.weight"])
    base = load_file(models["base"] / "model.safetensors")
    assert not torch.equal(tensors["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])


def test_the_written_folder_loads_and_chats_about_an_image(finetuned, data_root):
    loaded = load_llmga(finetuned.output_dir, dtype="fp32", device="cpu")
    assistant = Assistant(loaded)
    assert assistant.template.name == "qwen_2"
    history = assistant.new_history()
    image = Image.open(next((data_root / "llmga-imgs").iterdir()))
    message = assistant.user_message("similar_image", "", history, image_is_new=True)
    reply = assistant.reply(history, message, image=assistant.picture(image),
                            settings=GenerationSettings(max_new_tokens=6, temperature=0.0))
    assert reply.new_tokens >= 1


def test_training_logs_loss_and_learning_rate(finetuned):
    records = [json.loads(line) for line in (finetuned.output_dir / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    lrs = [r["lr"] for r in steps]
    assert lrs[0] > lrs[-1] == 0.0  # cosine decay to zero after the 3% warm-up (one step here)


def test_resume_continues_at_the_same_step_with_identical_state(models, data_root, tmp_path):
    config = finetune_config(models, data_root, tmp_path / "full", per_device_train_batch_size=3, max_train_steps=4,
                             checkpointing_steps=2, checkpoints_total_limit=None)
    full = train(config)
    reset_accelerate()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = train(replace(config, output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest"))
    assert resumed.global_step == 4 and resumed.losses == full.losses[2:]
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("full", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- projector pretraining -----------------------------------------------------------------------------------------


def test_pretraining_trains_only_the_projector_and_feeds_finetuning(models, data_root, tmp_path):
    pretrain = Stage1Config(
        model_name_or_path=str(models["base"]), vision_tower=str(models["tower"]), output_dir=str(tmp_path / "pre"),
        mode="pretrain", pretrain_data=str(data_root / "jsons" / "llava.json"),
        image_folder=str(data_root / "llmga-imgs"), per_device_train_batch_size=1, gradient_accumulation_steps=2,
        max_train_steps=3, learning_rate=1e-2, mixed_precision="no", dataloader_num_workers=0,
        resume_from_checkpoint=None, gradient_checkpointing=False)
    result = train(pretrain)
    assert result.global_step == 3
    folder = tmp_path / "pre"
    config = json.loads((folder / "config.json").read_text())
    assert config["tune_mm_mlp_adapter"] is True and config["model_type"] == "llava_Qwen2"
    projector = torch.load(folder / "mm_projector.bin", weights_only=True)
    assert sorted(projector) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                                 "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    assert all(t.dtype == torch.bfloat16 for t in projector.values())
    # The official --model-base loading reads it with the base LLM, whose weights did not change.
    loaded = load_llmga(folder, base=models["base"], dtype="fp32", device="cpu")
    base = load_file(models["base"] / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(loaded.model.language_model.state_dict()[key], base[key].float())
    reset_accelerate()
    finetuned = train(finetune_config(models, data_root, tmp_path / "ft", max_train_steps=1,
                                      pretrain_mm_mlp_adapter=str(folder / "mm_projector.bin")))
    assert finetuned.global_step == 1 and read_checkpoint(tmp_path / "ft").family == "qwen2"


# --- other families ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "template", "model_type"), [
    ("vicuna", "v1", "llava_llama"), ("llama3", "llama_3", "llava_llama"), ("gemma", "gemma", "llava_gemma")])
def test_other_base_llms_train_with_their_template_and_pad_token(family, template, model_type, models, data_root,
                                                                  tmp_path):
    base = build_base_llm(tmp_path / "models", family)
    config = finetune_config(models, data_root, tmp_path / "out", model_name_or_path=str(base),
                             pretrain_mm_mlp_adapter=None, max_train_steps=1, per_device_train_batch_size=4)
    with pytest.warns(UserWarning, match="randomly initialised projector"):
        parts = load_stage1_parts(config)
    assert parts.template == template
    if template == "v1":
        assert parts.tokenizer.pad_token == parts.tokenizer.unk_token  # train.py: pad = unk
    if template == "llama_3":
        assert parts.tokenizer.pad_token == "<|reserved_special_token_0|>"
    reset_accelerate()
    with pytest.warns(UserWarning, match="randomly initialised projector"):
        result = train(config)
    assert result.global_step == 1 and np.isfinite(result.losses).all()
    loaded = load_llmga(tmp_path / "out", dtype="fp32", device="cpu")
    assert loaded.checkpoint.config["model_type"] == model_type
    assert Assistant(loaded).template.name == ("llava_v1" if template == "v1" else template)


# --- two processes -------------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_accelerate_launch_runs_two_processes_on_the_cpu(models, data_root, tmp_path):
    config = {key: value for key, value in vars(finetune_config(models, data_root, tmp_path / "out")).items()}
    config.update(per_device_train_batch_size=2, max_train_steps=2, checkpointing_steps=2)
    (tmp_path / "config.json").write_text(json.dumps(config))
    run = launch_two_processes(["-m", "training.stage1_mllm", "--config", str(tmp_path / "config.json")], tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["samples"] == 4 for r in steps)
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    assert load_llmga(tmp_path / "out", dtype="fp32", device="cpu").checkpoint.family == "qwen2"


# --- bad configs and data ------------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ('{"model_name_or_path": "m", "output_dir": "o"}', "no training data"),
    ('{"model_name_or_path": "m", "output_dir": "o", "t2i_data": "t", "version": "chatml"}',
     "version 'chatml' is not 'auto' or one of"),
    ('{"model_name_or_path": "m", "output_dir": "o", "mode": "pretrain"}', "set pretrain_data"),
    ('{"model_name_or_path": "m", "output_dir": "o", "t2i_data": "t", "text_data": "lima.json"}',
     "text_data must be a list of str"),
    ('{"model_name_or_path": "m", "output_dir": "o", "t2i_data": "t", "warmup_ratio": 1.5}', "warmup_ratio"),
])
def test_a_bad_config_file_names_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path / "c.json", text), Stage1Config)


def test_the_shipped_configs_load():
    pretrain = load_config(REPO_ROOT / "training" / "configs" / "stage1_pretrain.yaml", Stage1Config)
    assert (pretrain.mode, pretrain.learning_rate, pretrain.per_device_train_batch_size,
            pretrain.gradient_accumulation_steps) == ("pretrain", 1e-3, 8, 4)
    finetune = load_config(REPO_ROOT / "training" / "configs" / "stage1_finetune.yaml", Stage1Config)
    assert (finetune.mode, finetune.learning_rate, finetune.warmup_ratio, finetune.lr_scheduler,
            finetune.model_max_length) == ("finetune", 2e-5, 0.03, "cosine", 2048)


def test_missing_images_and_models_are_reported(models, data_root, tmp_path, capsys):
    config = finetune_config(models, data_root, tmp_path / "o", image_folder2=str(tmp_path))
    with pytest.raises(DataError, match="image\\(s\\) not found"):
        read_stage1_records(config)
    with pytest.raises(ConfigError, match="has no config.json"):
        load_stage1_parts(finetune_config(models, data_root, tmp_path / "o", model_name_or_path=str(tmp_path)))
    with pytest.raises(ConfigError, match="is not a local folder"):
        load_stage1_parts(finetune_config(models, data_root, tmp_path / "o", vision_tower="nowhere/clip"))
    config_file = write(tmp_path / "c.json", json.dumps({"model_name_or_path": str(models["base"]),
                                                          "output_dir": str(tmp_path / "o"),
                                                          "t2i_data": str(tmp_path / "none.json")}))
    assert main(["--config", str(config_file)]) == 2
    assert re.search("^error: .*none.json: file not found", capsys.readouterr().err, re.MULTILINE)


@pytest.mark.parametrize("name", ["single_gpu", "multi_gpu", "deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_the_shipped_accelerate_configs_parse_and_leave_accumulation_to_the_trainer(name):
    """A gradient_accumulation_steps in a DeepSpeed config would override the trainer config's (stage 1: 4)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO_ROOT / "training" / "configs" / "accelerate" / f"{name}.yaml"))
    assert config.mixed_precision == "bf16"
    assert "gradient_accumulation_steps" not in (config.deepspeed_config or {})
    if name == "deepspeed_zero3":
        assert config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_save_16bit_model"]


def test_yaml_no_reads_as_the_mixed_precision_choice(tmp_path):
    """YAML 1.1 reads an unquoted `no` as false; the config takes it as the "no" it means."""
    config = load_config(write(tmp_path / "c.yaml", "model_name_or_path: m\noutput_dir: o\nt2i_data: t\n"
                               "mixed_precision: no\n"), Stage1Config)
    assert config.mixed_precision == "no"


def test_tensorboard_gets_loss_and_learning_rate(finetuned):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = list((finetuned.output_dir / "logs" / "stage1_mllm").glob("events.out.tfevents.*"))
    assert runs, "no tensorboard event file"
    events = EventAccumulator(str(runs[0].parent))
    events.Reload()
    assert {"train_loss", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train_loss")] == list(range(1, 9))
    assert [e.value for e in events.Scalars("train_loss")] == pytest.approx(finetuned.losses)


def test_training_continues_from_an_llmga_folder(finetuned, models, data_root, tmp_path):
    """model_name_or_path may be an LLMGA folder: its projector and CLIP weights are the starting point."""
    config = finetune_config(models, data_root, tmp_path / "more", model_name_or_path=str(finetuned.output_dir),
                             vision_tower=None, pretrain_mm_mlp_adapter=None, max_train_steps=1,
                             per_device_train_batch_size=2)
    parts = load_stage1_parts(config)
    start = dict(read_checkpoint(finetuned.output_dir).tensors(("model.mm_projector.",)))
    assert parts.template == "qwen_2"
    assert torch.equal(parts.model.projector[0].weight, start["model.mm_projector.0.weight"].float())
    reset_accelerate()
    assert train(config).global_step == 1
    assert read_checkpoint(tmp_path / "more").config["mm_vision_tower"] == str(models["tower"])
