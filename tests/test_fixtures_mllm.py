"""The tiny LLMGA fixtures have the official checkpoint layout and load with transformers 5's stock classes.

One session-scoped build (all families into one folder) serves most tests; the variant tests build into tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from fixtures.families import FAMILIES, FAMILY_SPECS
from fixtures.mllm import (
    CLIP_PREPROCESSOR_CONFIG,
    LLAVA_CONFIG_KEYS,
    VISION_PREFIX,
    MLLMFixture,
    base_llm_config_fields,
    build_clip_vision_tower,
    build_llmga_checkpoint,
    build_projector_only,
    expected_vision_keys,
)
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
)

# AutoTokenizer reads config.json too; for an unknown `llava_*` model_type transformers 5 builds a generic config and
# warns about the legacy `rope_scaling` key of every 4.41-era config.
pytestmark = pytest.mark.filterwarnings("ignore:`rope_scaling` is deprecated:FutureWarning")

PROJECTOR_KEYS = {f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
ENGLISH = (
    "A fluffy cat sits on a red chair.\nThe sky is blue, and 42 birds fly over the lake!\n\n"
    "Second paragraph: it's a quiet, sunny morning."
)
# Special tokens each family's LLMGA template (conversation.py) relies on.
TEMPLATE_SPECIAL_TOKENS = {
    "vicuna": ("<s>", "</s>"),
    "llama2": ("<s>", "</s>"),
    "mistral": ("<s>", "</s>"),
    "llama3": (
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
    ),
    "qwen2": ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    "phi3": ("<s>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>", "<|system|>"),
    "gemma": ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"),
}
# (bos, eos, pad, unk) of the saved training tokenizer.
TOKENIZER_SPECIALS = {
    "vicuna": ("<s>", "</s>", "<unk>", "<unk>"),
    "llama2": ("<s>", "</s>", "<unk>", "<unk>"),
    "mistral": ("<s>", "</s>", "<unk>", "<unk>"),
    "phi3": ("<s>", "<|endoftext|>", "<unk>", "<unk>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>", "<|reserved_special_token_0|>", "<|reserved_special_token_0|>"),
    "qwen2": (None, "<|im_end|>", "<|endoftext|>", None),
    "gemma": ("<bos>", "<eos>", "<pad>", "<unk>"),
}


@dataclass(frozen=True)
class MLLMModels:
    root: Path
    vision_tower: Path
    checkpoints: dict[str, MLLMFixture]
    seconds: float


@pytest.fixture(scope="session")
def mllm_models(tmp_path_factory: pytest.TempPathFactory) -> MLLMModels:
    """The CLIP tower and one checkpoint per family (2 shards, vision weights included), built once."""
    root = tmp_path_factory.mktemp("mllm")
    start = time.perf_counter()
    tower = build_clip_vision_tower(root)
    checkpoints = {family: build_llmga_checkpoint(root, family, tower) for family in FAMILIES}
    return MLLMModels(root, tower, checkpoints, time.perf_counter() - start)


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _checkpoint_state(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    return state


def _base_model(config: dict, base_model_type: str):
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(base_model_type, **base_llm_config_fields(config)))


def _tokenizer(fixture: MLLMFixture):
    return AutoTokenizer.from_pretrained(fixture.path)


def test_build_is_fast(mllm_models: MLLMModels) -> None:
    assert mllm_models.seconds < 60, f"building all families took {mllm_models.seconds:.1f}s"


def test_vision_tower_is_a_clip_vit_l14_336_stand_in(mllm_models: MLLMModels) -> None:
    tower = mllm_models.vision_tower
    assert tower == mllm_models.root / "openai" / "clip-vit-large-patch14-336"
    assert json.loads((tower / "preprocessor_config.json").read_text()) == CLIP_PREPROCESSOR_CONFIG
    config = _config(tower)
    assert config["model_type"] == "clip_vision_model"
    assert (config["image_size"], config["patch_size"], config["hidden_size"]) == (336, 14, 32)

    processor = CLIPImageProcessor.from_pretrained(tower)
    assert processor.size["shortest_edge"] == 336
    assert (processor.crop_size["height"], processor.crop_size["width"]) == (336, 336)
    assert processor.resample == 3 and processor.do_center_crop and processor.do_normalize
    assert processor.rescale_factor == pytest.approx(1 / 255)

    with safe_open(str(tower / "model.safetensors"), "pt") as file:
        keys = sorted(file.keys())
    assert keys == expected_vision_keys(prefix="")  # released naming: vision_model.*
    model, info = CLIPVisionModel.from_pretrained(tower, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    out = model(torch.zeros(1, 3, 336, 336), output_hidden_states=True)
    assert out.hidden_states[-2].shape == (1, 577, 32)  # CLS + 576 patches


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_folder_and_config(mllm_models: MLLMModels, family: str) -> None:
    fixture = mllm_models.checkpoints[family]
    spec = FAMILY_SPECS[family]
    assert fixture.path == mllm_models.root / spec.checkpoint_name
    assert "llmga" in fixture.path.name.lower()  # the official loader requires it
    names = {path.name for path in fixture.path.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    } <= names
    tokenizer_files = {
        "vicuna": {"tokenizer.model"},
        "llama2": {"tokenizer.model"},
        "mistral": {"tokenizer.model"},
        "phi3": {"tokenizer.model", "added_tokens.json"},
        "gemma": {"tokenizer.model", "tokenizer.json"},
        "llama3": {"tokenizer.json"},
        "qwen2": {"vocab.json", "merges.txt", "added_tokens.json"},
    }
    assert tokenizer_files[family] <= names
    if family not in ("gemma", "llama3"):
        assert "tokenizer.json" not in names  # saved by the slow tokenizer (use_fast=False)

    config = _config(fixture.path)
    assert config["model_type"] == fixture.model_type == spec.model_type
    assert config["architectures"] == [spec.architecture]
    for key, value in LLAVA_CONFIG_KEYS.items():
        assert config[key] == value, key
    assert config["mm_vision_tower"] == str(mllm_models.vision_tower)
    assert config["torch_dtype"] == "bfloat16" and config["transformers_version"] == "4.41.2"
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (64, 2, 4)
    assert config["intermediate_size"] == 128 and config["max_position_embeddings"] == 2048
    assert config["num_key_value_heads"] == spec.num_key_value_heads
    assert config["vocab_size"] == fixture.vocab_size >= fixture.tokenizer_length
    assert config.get("tie_word_embeddings", family == "gemma") == fixture.tie_word_embeddings
    if family == "llama3":
        assert config["vocab_size"] == 128256 and config["rope_theta"] == 500000.0
        assert (config["bos_token_id"], config["eos_token_id"]) == (128000, 128009)
    if family == "phi3":
        assert config["rope_scaling"]["type"] == "su"  # what 4.41 accepted (later renamed "longrope")
        assert len(config["rope_scaling"]["long_factor"]) == 16 // 2
    if family == "gemma":
        assert config["head_dim"] == 16 and config["hidden_act"] == "gelu"


@pytest.mark.parametrize("family", FAMILIES)
def test_index_covers_every_tensor(mllm_models: MLLMModels, family: str) -> None:
    folder = mllm_models.checkpoints[family].path
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"]
    found: dict[str, str] = {}
    total = 0
    for name in sorted(set(weight_map.values())):
        with safe_open(str(folder / name), "pt") as file:
            assert file.metadata() == {"format": "pt"}
            for key in file.keys():
                tensor = file.get_tensor(key)
                assert tensor.dtype == torch.bfloat16, key
                total += tensor.numel() * tensor.element_size()
                found[key] = name
    assert found == weight_map
    assert index["metadata"]["total_size"] == total
    assert sorted(path.name for path in folder.glob("model-*.safetensors")) == sorted(set(weight_map.values()))


@pytest.mark.parametrize("family", FAMILIES)
def test_llm_keys_load_strictly_into_the_base_model(mllm_models: MLLMModels, family: str) -> None:
    fixture = mllm_models.checkpoints[family]
    config = _config(fixture.path)
    state = _checkpoint_state(fixture.path)
    assert PROJECTOR_KEYS <= state.keys()
    vision = sorted(key for key in state if key.startswith(VISION_PREFIX))
    assert vision == expected_vision_keys()
    llm = {key: value for key, value in state.items() if key not in PROJECTOR_KEYS and key not in vision}
    assert ("lm_head.weight" in llm) != fixture.tie_word_embeddings

    model = _base_model(config, fixture.base_model_type)
    assert type(model).__name__ == FAMILY_SPECS[family].base_architecture
    result = model.load_state_dict(llm, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == ({"lm_head.weight"} if fixture.tie_word_embeddings else set())
    if fixture.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    tokenizer = _tokenizer(fixture)
    ids = tokenizer(ENGLISH, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    assert logits.shape == (ids.shape[1], fixture.vocab_size) and torch.isfinite(logits).all()
    assert logits.std() > 0.05  # not degenerate
    assert len(set(logits.argmax(-1).tolist())) > 1  # positions differ


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_keys_load_strictly_into_clip(mllm_models: MLLMModels, family: str) -> None:
    fixture = mllm_models.checkpoints[family]
    state = _checkpoint_state(fixture.path)
    # The released naming is `vision_model.*`; transformers 5's CLIPVisionModel has no such level (from_pretrained
    # strips it), so a raw load_state_dict drops it too.
    prefix = VISION_PREFIX + "vision_model."
    vision = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
    model = CLIPVisionModel(CLIPVisionConfig.from_pretrained(fixture.vision_tower))
    model.load_state_dict(vision, strict=True)
    tower = load_file(str(fixture.vision_tower / "model.safetensors"))
    for key, value in vision.items():
        assert torch.equal(value, tower["vision_model." + key].to(torch.bfloat16)), key


@pytest.mark.parametrize("family", ["vicuna", "gemma"])
def test_image_features_go_through_the_projector(mllm_models: MLLMModels, family: str) -> None:
    fixture = mllm_models.checkpoints[family]
    config = _config(fixture.path)
    state = _checkpoint_state(fixture.path)
    tower = CLIPVisionModel.from_pretrained(fixture.vision_tower)
    processor = CLIPImageProcessor.from_pretrained(fixture.vision_tower)
    image = (torch.arange(3 * 400 * 500) % 251).reshape(400, 500, 3).to(torch.uint8).numpy()
    pixels = processor(images=image, return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 336, 336)
    with torch.no_grad():
        hidden = tower(pixels, output_hidden_states=True).hidden_states[config["mm_vision_select_layer"]][:, 1:]
    assert hidden.shape == (1, 576, config["mm_hidden_size"])
    projector = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
    projector.load_state_dict(
        {
            key.removeprefix("model.mm_projector."): value.float()
            for key, value in state.items()
            if key in PROJECTOR_KEYS
        }
    )
    features = projector(hidden)
    assert features.shape == (1, 576, config["hidden_size"]) and features.std() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_behaves_like_the_released_one(mllm_models: MLLMModels, family: str) -> None:
    fixture = mllm_models.checkpoints[family]
    spec = FAMILY_SPECS[family]
    saved = json.loads((fixture.path / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == spec.tokenizer_class
    assert saved["model_max_length"] == 2048 and saved["padding_side"] == "right"
    assert ("[INST]" in saved.get("chat_template", "")) == (family in ("llama2", "mistral"))

    tokenizer = _tokenizer(fixture)
    assert len(tokenizer) == fixture.tokenizer_length
    assert tokenizer.padding_side == "right" and tokenizer.model_max_length == 2048
    bos, eos, pad, unk = TOKENIZER_SPECIALS[family]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (bos, eos, pad, unk)

    for token in TEMPLATE_SPECIAL_TOKENS[family]:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids) == [token], token
    for tag in ("<gen_image>", "</gen_image>", "<image>"):  # ordinary text in LLMGA
        ids = tokenizer.encode(tag, add_special_tokens=False)
        assert len(ids) > 1 and not set(ids) & set(tokenizer.all_special_ids), tag
        assert tokenizer.decode(ids) == tag
    ids = tokenizer.encode(ENGLISH, add_special_tokens=False)
    assert tokenizer.decode(ids) == ENGLISH
    with_specials = tokenizer.encode(ENGLISH)
    assert with_specials[: len(with_specials) - len(ids)] == ([tokenizer.bos_token_id] if bos else [])

    # The model config's ids name the same tokens.
    config = _config(fixture.path)
    assert tokenizer.convert_ids_to_tokens(config["eos_token_id"]) == {
        "llama3": "<|eot_id|>",
        "qwen2": "<|im_end|>",
        "phi3": "<|endoftext|>",
        "gemma": "<eos>",
    }.get(family, "</s>")
    if bos:
        assert config["bos_token_id"] == tokenizer.bos_token_id
    generation = json.loads((fixture.path / "generation_config.json").read_text())
    eos_ids = (
        generation["eos_token_id"] if isinstance(generation["eos_token_id"], list) else [generation["eos_token_id"]]
    )
    assert {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "phi3": "<|end|>", "gemma": "<eos>"}.get(
        family, "</s>"
    ) in tokenizer.convert_ids_to_tokens(eos_ids)


@pytest.mark.parametrize("family", ["vicuna", "mistral", "phi3", "gemma"])
def test_sentencepiece_families_tokenize_like_sentencepiece(mllm_models: MLLMModels, family: str) -> None:
    """transformers 5 converts tokenizer.model to a tokenizers pipeline; on LLMGA's text chunks (including the one after
    `<image>`, which starts with "\\n") it gives sentencepiece's own ids."""
    fixture = mllm_models.checkpoints[family]
    tokenizer = _tokenizer(fixture)
    processor = spm.SentencePieceProcessor(model_file=str(fixture.path / "tokenizer.model"))
    for text in (ENGLISH, "\nDescribe the image. ASSISTANT:", "USER: <gen_image> a dog </gen_image>"):
        assert tokenizer.encode(text, add_special_tokens=False) == processor.encode(text), text


@pytest.mark.parametrize("family", [family for family in FAMILIES if family != "vicuna"])
def test_chat_templates_render(mllm_models: MLLMModels, family: str) -> None:
    tokenizer = _tokenizer(mllm_models.checkpoints[family])
    messages = [{"role": "user", "content": "Draw a cat."}, {"role": "assistant", "content": "<gen_image> a cat"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert "Draw a cat." in text and "<gen_image> a cat" in text


def test_phi3_chat_tokens_swallow_the_following_newline(mllm_models: MLLMModels) -> None:
    """Phi-3's added tokens have rstrip=True (so did the slow tokenizer LLMGA trained with)."""
    tokenizer = _tokenizer(mllm_models.checkpoints["phi3"])
    text = "<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == "<|user|>Hi<|end|><|assistant|>"


def test_legacy_flag_differs_between_vicuna_and_mistral(mllm_models: MLLMModels) -> None:
    """Mistral's tokenizer is legacy (text after a special token gets a "▁" prefix); Vicuna's is not."""
    text = "</s>[INST]"
    vicuna = _tokenizer(mllm_models.checkpoints["vicuna"]).tokenize(text)
    mistral = _tokenizer(mllm_models.checkpoints["mistral"]).tokenize(text)
    assert vicuna[:2] == ["</s>", "["] and mistral[:2] == ["</s>", "▁["]


def test_llama3_ids_match_the_release(mllm_models: MLLMModels) -> None:
    tokenizer = _tokenizer(mllm_models.checkpoints["llama3"])
    assert tokenizer.convert_tokens_to_ids(
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|reserved_special_token_250|>",
        ]
    ) == [128000, 128001, 128006, 128007, 128009, 128255]
    tokens = tokenizer.convert_ids_to_tokens(list(range(128256)))
    assert None not in tokens  # every embedding row decodes


def test_phi3_config_needs_su_renamed_for_transformers5(mllm_models: MLLMModels) -> None:
    fields = base_llm_config_fields(_config(mllm_models.checkpoints["phi3"].path))
    assert fields["rope_scaling"]["type"] == "longrope"
    config = AutoConfig.for_model("phi3", **fields)
    assert config.rope_parameters["rope_type"] == "longrope"
    assert config.rope_parameters["original_max_position_embeddings"] == 1024


@pytest.mark.parametrize("family", ["vicuna", "qwen2"])
def test_projector_only_matches_the_full_checkpoint(mllm_models: MLLMModels, tmp_path: Path, family: str) -> None:
    spec = FAMILY_SPECS[family]
    path = build_projector_only(tmp_path, family, vision_tower=mllm_models.vision_tower)
    assert path == tmp_path / "checkpoints" / spec.pretrain_name / "mm_projector.bin"
    projector = torch.load(path, map_location="cpu", weights_only=True)
    assert set(projector) == PROJECTOR_KEYS and {v.dtype for v in projector.values()} == {torch.bfloat16}
    assert projector["model.mm_projector.0.weight"].shape == (64, 32)

    config = _config(path.parent)
    assert config["model_type"] == spec.model_type and config["tune_mm_mlp_adapter"] is True
    base_folder = (tmp_path / config["_name_or_path"]).resolve()
    assert base_folder == tmp_path / "base_models" / spec.base_name
    base_config = _config(base_folder)
    assert base_config["model_type"] == spec.base_model_type and "mm_vision_tower" not in base_config

    model, info = AutoModelForCausalLM.from_pretrained(base_folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    full = _checkpoint_state(mllm_models.checkpoints[family].path)
    for key, value in projector.items():
        assert torch.equal(value, full[key]), key
    base = load_file(str(base_folder / "model.safetensors"))
    assert set(base) == {key for key in full if key not in PROJECTOR_KEYS and not key.startswith(VISION_PREFIX)}
    for key, value in base.items():
        assert torch.equal(value, full[key]), key
    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    assert tokenizer.padding_side == "right" and tokenizer.model_max_length != 2048


def test_variants_without_vision_weights_and_other_shard_counts(mllm_models: MLLMModels, tmp_path: Path) -> None:
    single = build_llmga_checkpoint(
        tmp_path / "a", "mistral", mllm_models.vision_tower, vision_weights_in_checkpoint=False, shards=1
    )
    assert not single.vision_weights_in_checkpoint
    assert not (single.path / "model.safetensors.index.json").exists()
    keys = set(load_file(str(single.path / "model.safetensors")))
    assert PROJECTOR_KEYS <= keys and not any(key.startswith(VISION_PREFIX) for key in keys)

    three = build_llmga_checkpoint(tmp_path / "b", "llama3", mllm_models.vision_tower, shards=3)
    files = sorted(path.name for path in three.path.glob("model-*.safetensors"))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert set(_checkpoint_state(three.path)) == set(_checkpoint_state(mllm_models.checkpoints["llama3"].path))


def test_config_only_tower_still_gives_vision_weights(tmp_path: Path) -> None:
    tower = build_clip_vision_tower(tmp_path, with_weights=False)
    assert not (tower / "model.safetensors").exists()
    fixture = build_llmga_checkpoint(tmp_path, "gemma", tower, shards=1)
    keys = set(load_file(str(fixture.path / "model.safetensors")))
    assert sorted(key for key in keys if key.startswith(VISION_PREFIX)) == expected_vision_keys()


def _digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def test_builds_are_deterministic(tmp_path: Path) -> None:
    first = build_llmga_checkpoint(tmp_path / "1", "phi3", build_clip_vision_tower(tmp_path / "1"))
    second = build_llmga_checkpoint(tmp_path / "2", "phi3", build_clip_vision_tower(tmp_path / "2"))
    other = build_llmga_checkpoint(tmp_path / "3", "phi3", build_clip_vision_tower(tmp_path / "3"), seed=1)
    one, two, three = _digests(first.path), _digests(second.path), _digests(other.path)
    del one["config.json"], two["config.json"], three["config.json"]  # they name different tower folders
    assert one == two
    assert one["tokenizer.model"] == three["tokenizer.model"]
    assert one["model-00001-of-00002.safetensors"] != three["model-00001-of-00002.safetensors"]
    assert _digests(first.vision_tower) == _digests(second.vision_tower)
