"""Reading an official LLMGA checkpoint folder: its config, its family and its weights.

An official folder is what `LlavaXForCausalLM.save_pretrained` wrote: `config.json` (the base LLM's config plus
the LLaVA `mm_*` keys, `model_type` such as `llava_Qwen2`), one or more safetensors (or `.bin`) shards, and the
tokenizer files. Weights are keyed as the base `XForCausalLM` (`model.layers.*`, `lm_head.weight`), plus
`model.mm_projector.{0,2}.*` and, in released files, `model.vision_tower.vision_tower.vision_model.*`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import CONFIG_MAPPING, PretrainedConfig

# LLaVA model_type / architectures of each family -> the transformers model_type of its base LLM
# (llava/model/language_model/*.py register these names).
FAMILY_BY_MODEL_TYPE = {
    "llava_llama": "llama",
    "llava_mistral": "mistral",
    "llava_qwen2": "qwen2",
    "llava_phi3": "phi3",
    "llava_gemma": "gemma",
}
FAMILY_BY_ARCHITECTURE = {
    "LlavaLlamaForCausalLM": "llama",
    "LlavaMistralForCausalLM": "mistral",
    "LlavaQwen2ForCausalLM": "qwen2",
    "LlavaPhi3ForCausalLM": "phi3",
    "LlavaGemmaForCausalLM": "gemma",
}
VISION_PREFIX = "model.vision_tower.vision_tower."
# What LLaVA's projector pretraining saves (train.py safe_save_model_for_hf_trainer with tune_mm_mlp_adapter).
PROJECTOR_FILE = "mm_projector.bin"
PROJECTOR_PREFIX = "model.mm_projector."
# Keys LLaVA adds to the base config; the base LLM does not need them.
LLAVA_CONFIG_KEYS = ("mm_", "image_aspect_ratio", "tokenizer_model_max_length", "tokenizer_padding_side",
                     "use_mm_proj", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower",
                     "image_grid_pinpoints")


class CheckpointError(ValueError):
    """The folder is not a usable LLMGA checkpoint; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class LLMGACheckpoint:
    """An official LLMGA checkpoint folder, read but not loaded.

    config: config.json as a dict. family: base LLM model_type ("llama", "mistral", "qwen2", "phi3", "gemma").
    weight_files: the shards, in order.
    """

    path: Path
    config: dict
    family: str
    weight_files: tuple[Path, ...]

    @property
    def model_type(self) -> str:
        return self.config.get("model_type", "")

    def base_config_fields(self) -> dict:
        """The config without LLaVA's keys and without model_type/architectures, for the base LLM's config class.

        Phi-3-128k's LongRoPE is saved as `rope_scaling.type: "su"` (all transformers 4.41 accepted); current
        transformers renames "su" to "longrope" only after it gathered the longrope fields, and then fails, so the
        rename happens here first. The rope itself is the same.
        """
        drop = ("model_type", "architectures", "auto_map", "_name_or_path", "transformers_version")
        fields = {k: v for k, v in self.config.items() if k not in drop and not k.startswith(LLAVA_CONFIG_KEYS)}
        rope_scaling = fields.get("rope_scaling")
        if isinstance(rope_scaling, dict) and rope_scaling.get("type") == "su":
            fields["rope_scaling"] = {**rope_scaling, "type": "longrope"}
        return fields

    def base_config(self) -> PretrainedConfig:
        """The base LLM's transformers config (from_dict, so legacy fields such as Phi-3's `rope_scaling` +
        `original_max_position_embeddings` are converted as for a config.json read from disk)."""
        return CONFIG_MAPPING[self.family].from_dict(self.base_config_fields())

    def tensors(self, prefixes: tuple[str, ...] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, tensor) of every shard whose key starts with one of `prefixes` (all keys when None); safetensors
        shards are read lazily, so picking the small projector out of a 7B checkpoint reads only the projector."""
        for file in self.weight_files:
            yield from read_weight_file(file, prefixes)


def family_of(config: dict) -> str | None:
    """Base LLM model_type for an LLMGA config, chosen from model_type then architectures; None if neither is known."""
    family = FAMILY_BY_MODEL_TYPE.get(str(config.get("model_type", "")).lower())
    if family:
        return family
    for architecture in config.get("architectures") or ():
        if architecture in FAMILY_BY_ARCHITECTURE:
            return FAMILY_BY_ARCHITECTURE[architecture]
    return None


def read_checkpoint(path: str | Path, *, projector_only: bool = False) -> LLMGACheckpoint:
    """Check and describe the LLMGA checkpoint in `path`; raises CheckpointError with what to do.

    projector_only: `path` is a projector-pretraining output (config.json + mm_projector.bin), whose language
    model weights come from a separate base LLM folder.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"LLMGA checkpoint folder {folder} does not exist: download a released checkpoint "
                              "(e.g. binxia/llmga-Qwen2-0.5B-full-finetune) into models/LLM/ or give its path")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder} has no config.json: it is not a model folder (an LLMGA checkpoint holds "
                              "config.json, *.safetensors shards and tokenizer files)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_file} is not valid JSON ({error}): download the checkpoint again") from error
    family = family_of(config)
    if family is None or "mm_hidden_size" not in config:
        raise CheckpointError(
            f"{folder} is not an LLMGA checkpoint: config.json has model_type {config.get('model_type')!r} and "
            f"architectures {config.get('architectures')}; expected one of {sorted(FAMILY_BY_ARCHITECTURE)} with "
            "LLaVA's mm_* keys. Plain LLMs and other multimodal models cannot be used as the LLMGA assistant."
        )
    if projector_only:
        projector = folder / PROJECTOR_FILE
        if not projector.is_file():
            raise CheckpointError(f"{folder} has no {PROJECTOR_FILE}: a projector-pretraining folder holds "
                                  f"config.json and {PROJECTOR_FILE}")
        files: tuple[Path, ...] = (projector,)
    else:
        files = weight_files(folder)
    for file in files:
        check_weight_file(file)
    return LLMGACheckpoint(path=folder, config=config, family=family, weight_files=files)


def check_weight_file(file: Path) -> None:
    """Raise CheckpointError when a safetensors shard is truncated or not safetensors (reads only its header)."""
    if file.suffix != ".safetensors":
        return
    try:
        with safe_open(str(file), framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"cannot read weight file {file} ({error}): it is damaged or incomplete; "
                              "download it again") from error


def weight_files(folder: Path) -> tuple[Path, ...]:
    """The weight shards of a folder: from the safetensors/bin index if present, else every file of one kind."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [name for name in names if not (folder / name).is_file()]
            if missing:
                raise CheckpointError(f"{folder} is incomplete: {index_name} lists {missing}, which are missing; "
                                      "finish or repeat the download")
            return tuple(folder / name for name in names)
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = tuple(sorted(folder.glob(pattern)))
        if files:
            return files
    raise CheckpointError(f"{folder} has no weights (*.safetensors or pytorch_model*.bin): finish the download")


def read_weight_file(file: Path, prefixes: tuple[str, ...] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) pairs of one shard, optionally only keys starting with `prefixes`; safetensors are read
    lazily, `.bin` files only with `torch.load(weights_only=True)`."""
    try:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as shard:
                for key in shard.keys():
                    if prefixes is None or key.startswith(prefixes):
                        yield key, shard.get_tensor(key)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            yield from ((k, v) for k, v in state.items() if prefixes is None or k.startswith(prefixes))
    except (SafetensorError, OSError, RuntimeError, EOFError) as error:
        raise CheckpointError(f"cannot read weight file {file} ({error}): it is damaged or incomplete; "
                              "download it again") from error
