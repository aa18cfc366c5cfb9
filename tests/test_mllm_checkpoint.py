"""llmga.mllm.checkpoint writes the official LLMGA folder that it reads: write -> read back equals what was written.

The starting models are the tiny released-layout checkpoints of every family (tests/fixtures/mllm.py), loaded with
`load_llmga`; the written folders are read with `read_checkpoint` and loaded again with `load_llmga`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures.families import FAMILIES, FAMILY_SPECS
from fixtures.mllm import MLLMFixture
from safetensors.torch import save_file

from llmga.mllm.checkpoint import (
    PROJECTOR_FILE,
    PROJECTOR_PREFIX,
    VISION_PREFIX,
    CheckpointError,
    LLMGACheckpoint,
    llava_config,
    read_checkpoint,
    released_state_dict,
    write_llmga_folder,
)
from llmga.mllm.loader import LoadedAssistant, load_llmga


def as_written(config: dict) -> dict:
    """config.json as it reads back: with `torch_dtype`, and integer keys (id2label) turned into strings by JSON."""
    return json.loads(json.dumps({**config, "torch_dtype": "bfloat16"}))


TEXT = "A lighthouse on a cliff at dusk, <gen_image> waves below </gen_image>."


def written_inputs(loaded: LoadedAssistant) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, released weights) of a loaded assistant, as the stage-1 trainer builds them. The LLM's own config
    is the base config: the loader trims padded embedding rows (Qwen2, Phi-3) to the tokenizer's length."""
    checkpoint, model = loaded.checkpoint, loaded.model
    base = model.language_model.config
    config = llava_config(base, vision_tower=checkpoint.config["mm_vision_tower"],
                          vision_hidden_size=model.vision_tower.config.hidden_size,
                          select_layer=model.select_layer, model_max_length=2048)
    return config, released_state_dict(model.state_dict(), base.tie_word_embeddings)


def write_folder(loaded: LoadedAssistant, folder: Path, **options) -> tuple[dict, dict[str, torch.Tensor]]:
    config, weights = written_inputs(loaded)
    write_llmga_folder(folder, config, weights, tokenizer=loaded.tokenizer,
                       generation_config=loaded.model.language_model.generation_config, **options)
    return config, weights


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, mllm_checkpoints) -> tuple[MLLMFixture, LoadedAssistant]:
    fixture = mllm_checkpoints[request.param]
    return fixture, load_llmga(fixture.path, dtype="fp32", device="cpu")


def test_written_folder_reads_back_as_what_was_written(family_model, tmp_path):
    fixture, loaded = family_model
    config, weights = write_folder(loaded, tmp_path / "out")
    checkpoint = read_checkpoint(tmp_path / "out")
    assert checkpoint.family == fixture.base_model_type
    assert checkpoint.config == as_written(config)
    assert (checkpoint.config["model_type"], checkpoint.config["architectures"]) == (
        fixture.model_type, [fixture.architecture])
    tensors = dict(checkpoint.tensors())
    assert tensors.keys() == weights.keys()
    assert all(tensors[key].dtype == torch.bfloat16 and torch.equal(tensors[key], value.to(torch.bfloat16))
               for key, value in weights.items())
    assert ("lm_head.weight" in tensors) is not FAMILY_SPECS[fixture.family].tie_word_embeddings
    assert any(key.startswith(VISION_PREFIX + "vision_model.") for key in tensors)
    assert {PROJECTOR_PREFIX + "0.weight", PROJECTOR_PREFIX + "2.bias"} <= tensors.keys()


def test_written_folder_loads_as_the_same_model_with_the_same_tokenizer(family_model, tmp_path):
    fixture, loaded = family_model
    write_folder(loaded, tmp_path / "out")
    again = load_llmga(tmp_path / "out", dtype="fp32", device="cpu")
    before, after = loaded.model.state_dict(), again.model.state_dict()
    assert before.keys() == after.keys()
    # The fixture's weights are bfloat16, so the fp32 model survives the bfloat16 round trip exactly.
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert again.tokenizer(TEXT).input_ids == loaded.tokenizer(TEXT).input_ids
    fields = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "tie_word_embeddings")
    read_back, written = again.checkpoint.base_config(), loaded.model.language_model.config
    assert [getattr(read_back, name) for name in fields] == [getattr(written, name) for name in fields]
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == loaded.model.language_model.generation_config.eos_token_id


def test_a_sharded_write_has_an_index_and_replaces_the_shards_of_an_earlier_write(mllm_checkpoints, tmp_path):
    loaded = load_llmga(mllm_checkpoints["qwen2"].path, dtype="fp32", device="cpu")
    folder = tmp_path / "out"
    _, weights = write_folder(loaded, folder, max_shard_size="100KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == [shard.name for shard in shards]
    assert index["weight_map"].keys() == weights.keys()
    assert {key: value.shape for key, value in read_checkpoint(folder).tensors()} == {
        key: value.shape for key, value in weights.items()}
    write_folder(loaded, folder)  # one file now
    assert [path.name for path in folder.glob("model*.safetensors*")] == ["model.safetensors"]
    assert read_checkpoint(folder).weight_files == (folder / "model.safetensors",)


def test_projector_only_folder_reads_back_and_loads_with_its_base(mllm_checkpoints, tmp_path):
    fixture = mllm_checkpoints["vicuna"]  # its embeddings are not trimmed when loaded, so the folder is its own base
    loaded = load_llmga(fixture.path, dtype="fp32", device="cpu")
    config, weights = written_inputs(loaded)
    config = {**config, "tune_mm_mlp_adapter": True}
    write_llmga_folder(tmp_path / "pre", config, weights, projector_only=True)
    assert sorted(path.name for path in (tmp_path / "pre").iterdir()) == ["config.json", PROJECTOR_FILE]
    checkpoint = read_checkpoint(tmp_path / "pre", projector_only=True)
    assert checkpoint.config == as_written(config)
    projector = dict(checkpoint.tensors())
    assert projector.keys() == {key for key in weights if key.startswith(PROJECTOR_PREFIX)}
    assert all(torch.equal(projector[key], weights[key].to(torch.bfloat16)) for key in projector)
    again = load_llmga(tmp_path / "pre", base=fixture.path, dtype="fp32", device="cpu")
    assert torch.equal(again.model.projector[0].weight, loaded.model.projector[0].weight)


def test_an_interrupted_write_leaves_no_folder_that_reads_as_a_checkpoint(mllm_checkpoints, tmp_path,
                                                                          monkeypatch):
    loaded = load_llmga(mllm_checkpoints["qwen2"].path, dtype="fp32", device="cpu")
    folder = tmp_path / "out"
    write_folder(loaded, folder)
    (folder / "logs").mkdir()
    (folder / "logs" / "train.jsonl").write_text("{}\n")
    read_checkpoint(folder)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(loaded.tokenizer), "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        write_folder(loaded, folder)
    with pytest.raises(CheckpointError, match="has no config.json"):
        read_checkpoint(folder)
    assert (folder / "logs" / "train.jsonl").read_text() == "{}\n"  # what else the folder holds stays
    assert not list(folder.glob(".*.tmp"))


def test_llava_config_refuses_a_base_llm_llmga_was_not_built_on(mllm_checkpoints):
    base = read_checkpoint(mllm_checkpoints["qwen2"].path).base_config()
    base.model_type = "gpt2"  # a config the pack cannot load as an LLMGA base
    with pytest.raises(CheckpointError, match="not 'gpt2'"):
        llava_config(base, vision_tower="clip", vision_hidden_size=32)


LLMGA_CONFIG = {"model_type": "llava_qwen2", "architectures": ["LlavaQwen2ForCausalLM"], "mm_hidden_size": 32}


@pytest.mark.parametrize("file, text, expected", [
    ("config.json", "[1, 2]", r"config.json is not valid JSON for a config \(a JSON list, not an object\)"),
    ("config.json", "\udcff", r"config.json is not valid JSON \("),
    ("model.safetensors.index.json", '{"weight_map": [1]}', r"index.json has no weight_map \(tensor name -> shard"),
    ("config.json", json.dumps({**LLMGA_CONFIG, "architectures": "LlavaQwen2ForCausalLM", "model_type": 7}),
     r"is not an LLMGA checkpoint: config.json has model_type 7"),
])
def test_a_config_or_index_of_the_wrong_shape_is_one_checkpoint_error(tmp_path, file, text, expected):
    (tmp_path / "config.json").write_text(json.dumps(LLMGA_CONFIG))
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, tmp_path / "pytorch_model.bin")
    (tmp_path / file).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match=expected):
        read_checkpoint(tmp_path)


def test_config_values_no_model_takes_are_one_checkpoint_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**LLMGA_CONFIG, "hidden_size": "wide"}))
    save_file({"model.embed_tokens.weight": torch.zeros(2, 2)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"config.json does not describe a qwen2 model \(.*download it again"):
        read_checkpoint(tmp_path).base_config()


@pytest.mark.parametrize(("path", "recorded", "names"), [
    ("models/LLM/llmga-cn-Qwen2-0.5B-full-finetune", "./base_models/Qwen2-0.5B-Instruct",
     ("llmga-cn-Qwen2-0.5B-full-finetune", "Qwen2-0.5B-Instruct")),
    ("runs/llmga-cn-gemma/checkpoint-500", None, ("llmga-cn-gemma_checkpoint-500",)),  # the official rule
    ("hub/models--binxia--llmga-cn-vicuna-7b-v1.5-full-finetune/snapshots/1a64170", "C:\\runs\\llmga-cn-x\\",
     ("llmga-cn-vicuna-7b-v1.5-full-finetune", "llmga-cn-x")),
])
def test_a_checkpoint_goes_by_its_folder_name_and_the_name_it_records(path, recorded, names):
    config = {} if recorded is None else {"_name_or_path": recorded}
    checkpoint = LLMGACheckpoint(path=Path(path), config=config, family="qwen2", weight_files=())
    assert checkpoint.names == names
