"""The official LLMGA checkpoint folder, read and written here: its config, its family and its weights.

An official folder is what `LlavaXForCausalLM.save_pretrained` wrote: `config.json` (the base LLM's config plus
the LLaVA `mm_*` keys, `model_type` such as `llava_Qwen2`), one or more safetensors (or `.bin`) shards, and the
tokenizer files. Weights are keyed as the base `XForCausalLM` (`model.layers.*`, `lm_head.weight`, left out when
tied to the embeddings), plus `model.mm_projector.{0,2}.*` and, in released files, `model.vision_tower.vision_tower.
vision_model.*`. Projector pretraining writes `config.json` + `mm_projector.bin` (`model.mm_projector.*`) instead.

Reading: `read_checkpoint` (then `loader.load_llmga`). Writing: `llava_config` + `released_state_dict` +
`write_llmga_folder`, which the stage-1 trainer uses, so a model trained here loads like a released one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import CONFIG_MAPPING, PretrainedConfig

from ..devices import dtype_name
from ..errors import one_line
from ..files import save_safetensors_atomic, save_torch_atomic, write_json_atomic
from ..model_files import iter_tensors, read_config, tensor_shapes

# The transformers model_type of each base LLM -> the LLaVA model_type and architecture a released checkpoint of it
# carries (llava/model/language_model/*.py register these names).
LLAVA_MODEL_TYPE = {"llama": "llava_llama", "mistral": "llava_mistral", "qwen2": "llava_Qwen2", "phi3": "llava_Phi3",
                    "gemma": "llava_gemma"}
LLAVA_ARCHITECTURE = {"llama": "LlavaLlamaForCausalLM", "mistral": "LlavaMistralForCausalLM",
                      "qwen2": "LlavaQwen2ForCausalLM", "phi3": "LlavaPhi3ForCausalLM",
                      "gemma": "LlavaGemmaForCausalLM"}
# Read back: a config's model_type (any case) or architecture -> the base LLM's model_type.
FAMILY_BY_MODEL_TYPE = {name.lower(): family for family, name in LLAVA_MODEL_TYPE.items()}
FAMILY_BY_ARCHITECTURE = {name: family for family, name in LLAVA_ARCHITECTURE.items()}
VISION_PREFIX = "model.vision_tower.vision_tower."
# What LLaVA's projector pretraining saves (train.py safe_save_model_for_hf_trainer with tune_mm_mlp_adapter).
PROJECTOR_FILE = "mm_projector.bin"
PROJECTOR_PREFIX = "model.mm_projector."
# Keys LLaVA adds to the base config; the base LLM does not need them.
LLAVA_CONFIG_KEYS = ("mm_", "image_aspect_ratio", "tokenizer_model_max_length", "tokenizer_padding_side",
                     "use_mm_proj", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower",
                     "image_grid_pinpoints")
# Keys of a config.json that describe the file, not the model: left out of the base config either way.
FILE_CONFIG_KEYS = ("model_type", "architectures", "auto_map", "_name_or_path", "transformers_version")
# The values `initialize_vision_modules` / train.py give LLaVA's keys in every released config.json.
LLAVA_KEYS = {
    "mm_projector_type": "mlp2x_gelu",
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch",
    "mm_patch_merge_type": "flat",
    "image_aspect_ratio": "resizesquare",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False,
    "use_mm_proj": True,
    "freeze_mm_mlp_adapter": False,
    "mm_projector_lr": None,
    "tokenizer_padding_side": "right",
}


REFETCH = "download it again (an interrupted download leaves files missing or cut short)"


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

    @property
    def name(self) -> str:
        """The checkpoint's name as the official CLIs take it from its path (mm_utils.get_model_name_from_path): the
        folder's name, or "<parent>_<folder>" for a trainer's checkpoint-N folder. A Hugging Face cache snapshot
        (models--<owner>--<name>/snapshots/<commit>) is named after its repository, as the official hub id is."""
        parts = Path(os.path.abspath(self.path)).parts
        if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
            return parts[-3].split("--")[-1]
        if len(parts) >= 2 and parts[-1].startswith("checkpoint-"):
            return f"{parts[-2]}_{parts[-1]}"
        return parts[-1] if parts else ""

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the checkpoint goes by: `name`, then the last part of the path config.json records as
        `_name_or_path` (the model training started from), when it records one."""
        recorded = self.config.get("_name_or_path")
        tail = [part for part in re.split(r"[\\/]+", recorded) if part][-1:] if isinstance(recorded, str) else []
        return (self.name, *tail)

    def base_config_fields(self) -> dict:
        """The config without LLaVA's keys and without model_type/architectures, for the base LLM's config class.

        Phi-3-128k's LongRoPE is saved as `rope_scaling.type: "su"` (all transformers 4.41 accepted); current
        transformers renames "su" to "longrope" only after it gathered the longrope fields, and then fails, so the
        rename happens here first. The rope itself is the same.
        """
        fields = {k: v for k, v in self.config.items()
                  if k not in FILE_CONFIG_KEYS and not k.startswith(LLAVA_CONFIG_KEYS)}
        rope_scaling = fields.get("rope_scaling")
        if isinstance(rope_scaling, dict) and rope_scaling.get("type") == "su":
            fields["rope_scaling"] = {**rope_scaling, "type": "longrope"}
        return fields

    def base_config(self) -> PretrainedConfig:
        """The base LLM's transformers config (from_dict, so legacy fields such as Phi-3's `rope_scaling` +
        `original_max_position_embeddings` are converted as for a config.json read from disk)."""
        try:
            return CONFIG_MAPPING[self.family].from_dict(self.base_config_fields())
        except Exception as error:  # any type for values no config takes: TypeError, hub's strict validation
            raise CheckpointError(f"{self.path / 'config.json'} does not describe a {self.family} model "
                                  f"({one_line(error)}): {REFETCH}") from error

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
    architectures = config.get("architectures")
    for architecture in architectures if isinstance(architectures, list) else ():
        if isinstance(architecture, str) and architecture in FAMILY_BY_ARCHITECTURE:
            return FAMILY_BY_ARCHITECTURE[architecture]
    return None


def read_checkpoint(path: str | Path, *, projector_only: bool = False) -> LLMGACheckpoint:
    """Check and describe the LLMGA checkpoint in `path`; raises CheckpointError with what to do.

    Every weight file is checked whole (safetensors headers against their data, `.bin` pickles read with
    weights_only=True), so a damaged or unsafe file is refused before any model is built from the folder.
    projector_only: `path` is a projector-pretraining output (config.json + mm_projector.bin), whose language
    model weights come from a separate base LLM folder.
    """
    folder = Path(path)
    if folder.is_file():
        raise CheckpointError(f"{folder} is a file, not a checkpoint folder: give the folder that holds config.json, "
                              "the *.safetensors shards and the tokenizer files")
    if not folder.is_dir():
        raise CheckpointError(f"LLMGA checkpoint folder {folder} does not exist: download a released checkpoint "
                              "(e.g. binxia/llmga-Qwen2-0.5B-full-finetune) into models/LLM/ or give its path")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder} has no config.json: it is not a model folder (an LLMGA checkpoint holds "
                              "config.json, *.safetensors shards and tokenizer files)")
    config = read_config(config_file, CheckpointError, REFETCH)
    family = family_of(config)
    if family is None or "mm_hidden_size" not in config:
        raise CheckpointError(
            f"{folder} is not an LLMGA checkpoint: config.json has model_type {config.get('model_type')!r} and "
            f"architectures {config.get('architectures')}; expected one of {sorted(FAMILY_BY_ARCHITECTURE)} with "
            "LLaVA's mm_* keys. Plain LLMs and other multimodal models cannot be used as the LLMGA assistant."
        )
    if projector_only:
        projector = folder / PROJECTOR_FILE
        if not projector.exists():  # a folder in its place is named by check_weight_file
            raise CheckpointError(f"{folder} has no {PROJECTOR_FILE}: a projector-pretraining folder holds "
                                  f"config.json and {PROJECTOR_FILE}")
        files: tuple[Path, ...] = (projector,)
    else:
        files = weight_files(folder)
    for file in files:
        check_weight_file(file)
    return LLMGACheckpoint(path=folder, config=config, family=family, weight_files=files)


def check_weight_file(file: Path) -> None:
    """Raise CheckpointError unless `file` is a whole, safe weight file (a safetensors header and its data, or a
    `.bin` pickle of tensors only, mapped rather than read)."""
    tensor_shapes(file, CheckpointError, REFETCH)


def weight_files(folder: Path) -> tuple[Path, ...]:
    """The weight shards of a folder: from the safetensors/bin index if present, else every file of one kind."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = read_config(index, CheckpointError, REFETCH).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
                raise CheckpointError(f"{index} has no weight_map (tensor name -> shard file): {REFETCH}")
            names = sorted(set(weight_map.values()))
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
    lazily, `.bin` files only with `torch.load(weights_only=True)`. CheckpointError for a damaged or unsafe file."""
    return iter_tensors(file, CheckpointError, REFETCH, prefixes)


# --- writing ---------------------------------------------------------------------------------------------------------


def released_state_dict(model_state: Mapping[str, torch.Tensor], tie_word_embeddings: bool) -> dict[str, torch.Tensor]:
    """An `LLMGAModel` state dict (`language_model.*`, `projector.*`, `vision_tower.*`) -> the released keys: the LLM
    keyed as the base `XForCausalLM` (no `lm_head.weight` when tied), `model.mm_projector.*`, and
    `model.vision_tower.vision_tower.vision_model.*` (whether or not this transformers' CLIP module has that prefix)."""
    released = {}
    for key, value in model_state.items():
        if key.startswith("language_model."):
            name = key.removeprefix("language_model.")
            if not (tie_word_embeddings and name == "lm_head.weight"):
                released[name] = value
        elif key.startswith("projector."):
            released[PROJECTOR_PREFIX + key.removeprefix("projector.")] = value
        elif key.startswith("vision_tower."):
            name = key.removeprefix("vision_tower.")
            released[VISION_PREFIX + ("" if name.startswith("vision_model.") else "vision_model.") + name] = value
    return released


def llava_config(base_config: PretrainedConfig, *, vision_tower: str, vision_hidden_size: int,
                 projector_type: str = LLAVA_KEYS["mm_projector_type"],
                 select_layer: int = LLAVA_KEYS["mm_vision_select_layer"], model_max_length: int = 2048,
                 tune_mm_mlp_adapter: bool = False) -> dict[str, Any]:
    """config.json of an LLMGA folder as train.py leaves it: the base LLM's config (model_type / architectures made
    LLaVA's), LLaVA's keys, the vision tower's name and width. `write_llmga_folder` adds `torch_dtype`.

    vision_tower: the name config.json records (`mm_vision_tower`: a hub id or a folder). model_max_length: the
    training's --model_max_length. tune_mm_mlp_adapter: True for a projector-pretraining folder.
    """
    family = base_config.model_type
    if family not in LLAVA_MODEL_TYPE:
        raise CheckpointError(f"LLMGA is built on {', '.join(LLAVA_MODEL_TYPE)} base LLMs, not {family!r}")
    fields = {key: value for key, value in base_config.to_dict().items() if key not in (*FILE_CONFIG_KEYS, "dtype")}
    return {
        "architectures": [LLAVA_ARCHITECTURE[family]],
        "model_type": LLAVA_MODEL_TYPE[family],
        **fields,
        **LLAVA_KEYS,
        "mm_projector_type": projector_type,
        "mm_vision_select_layer": select_layer,
        "mm_vision_tower": vision_tower,
        "mm_hidden_size": vision_hidden_size,
        "tune_mm_mlp_adapter": tune_mm_mlp_adapter,
        "tokenizer_model_max_length": model_max_length,
        "use_cache": True,
    }


def write_llmga_folder(path: str | Path, config: Mapping[str, Any], weights: Mapping[str, torch.Tensor], *,
                       tokenizer=None, generation_config=None, dtype: torch.dtype = torch.bfloat16,
                       max_shard_size: str = "5GB", projector_only: bool = False) -> None:
    """Write an official LLMGA folder into `path`, which `read_checkpoint(path)` / `load_llmga(path)` read back.

    config: from `llava_config` (`torch_dtype` is set to `dtype`). weights: released keys (`released_state_dict`),
    stored in `dtype` as safetensors shards of at most `max_shard_size` (with model.safetensors.index.json when there
    are several). tokenizer / generation_config: saved beside them with their own `save_pretrained`.
    projector_only: write projector pretraining's folder instead, config.json + mm_projector.bin (only the
    `model.mm_projector.*` weights), which `read_checkpoint(path, projector_only=True)` reads.

    Other files in `path` stay (a trainer's checkpoints and logs). config.json, what makes the folder a checkpoint,
    is removed first and written last, and every weight file is written atomically, so an interrupted write never
    leaves a folder that reads as a complete checkpoint.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").unlink(missing_ok=True)
    if projector_only:
        save_torch_atomic({key: value.to(dtype).cpu() for key, value in weights.items()
                           if key.startswith(PROJECTOR_PREFIX)}, folder / PROJECTOR_FILE)
    else:
        write_shards(folder, {key: value.to(dtype).contiguous().cpu() for key, value in weights.items()},
                      max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        if generation_config is not None:
            generation_config.save_pretrained(folder)
    write_json_atomic(folder / "config.json", {**config, "torch_dtype": dtype_name(dtype)})


def write_shards(folder: Path, weights: dict[str, torch.Tensor], max_shard_size: str) -> None:
    """model.safetensors, or model-0000i-of-0000n.safetensors + the index, replacing the shards of an earlier write."""
    from huggingface_hub import split_torch_state_dict_into_shards

    for old in [*folder.glob("model*.safetensors"), *folder.glob("model.safetensors.index.json")]:
        old.unlink()
    split = split_torch_state_dict_into_shards(weights, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_size)
    for filename, keys in split.filename_to_tensors.items():
        save_safetensors_atomic({key: weights[key] for key in keys}, folder / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in weights.values())},
                 "weight_map": split.tensor_to_filename}
        write_json_atomic(folder / "model.safetensors.index.json", index)
