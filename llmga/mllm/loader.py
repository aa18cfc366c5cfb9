"""Load an official LLMGA checkpoint folder into an `LLMGAModel` plus tokenizer and image processing.

The base LLM loads through transformers' own `from_pretrained` (memory-efficient, sharded, quantisable) with the
base config rebuilt from LLaVA's config; the projector and vision tower are read from the same shards. When the
checkpoint carries no vision weights, they come from a local CLIP ViT-L/14-336 folder (the `clip_vision` model
folders) or, when allowed, from the Hugging Face hub at a pinned revision.

What a checkpoint's files say is checked, never trusted: the language-model weights must be exactly those of the
LLM config.json names (a Qwen2 checkpoint labelled llava_llama is refused, not loaded without its biases), and
`mm_vision_tower` may only name CLIP ViT-L/14-336, which is looked up in fixed places, not at the path given.
Whatever transformers raises on damaged files becomes one CheckpointError that says what to do.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, PretrainedConfig
from transformers.utils import logging as hf_logging

try:
    from huggingface_hub.errors import StrictDataclassError  # config fields of the wrong type (transformers 5)
except ImportError:  # huggingface_hub before strict dataclasses: no such check
    StrictDataclassError = ValueError

from ..devices import (
    assistant_attention,
    assistant_precision,
    check_assistant_attention,
    check_assistant_dtype,
    dtype_name,
    pick_device,
)
from ..errors import one_line
from ..hub import CLIP_VISION_REPO, download_vision_tower
from .checkpoint import (
    PROJECTOR_PREFIX,
    REFETCH,
    VISION_PREFIX,
    CheckpointError,
    LLMGACheckpoint,
    read_checkpoint,
    read_weight_file,
    weight_files,
)
from .model import LLMGAModel, build_projector
from .preprocess import ImageProcessing

# openai/clip-vit-large-patch14-336 (config.json): the vision tower of every released LLMGA checkpoint.
CLIP_L_336 = CLIP_VISION_REPO
CLIP_L_336_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                         image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5)
# Where a clip_vision model folder holds it: these names only, never a path taken from config.json.
CLIP_L_336_FOLDERS = (CLIP_L_336, "clip-vit-large-patch14-336", "openai--clip-vit-large-patch14-336",
                      "openai_clip-vit-large-patch14-336")
CLIP_L_336_FILES = "config.json, model.safetensors, preprocessor_config.json"
# Shard keys the base LLM does not have, by design: LLaVA's projector and vision tower.
LLAVA_WEIGHT_PREFIXES = (PROJECTOR_PREFIX, VISION_PREFIX)
# What transformers and torch raise when files or config fields do not make a model.
LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, ImportError, RuntimeError,
               ZeroDivisionError, StrictDataclassError)


@dataclass
class LoadedAssistant:
    """What `load_llmga` returns: the network, its tokenizer and how to prepare its images."""

    model: LLMGAModel
    tokenizer: object
    image_processing: ImageProcessing
    checkpoint: LLMGACheckpoint
    attention: str = "sdpa"  # the language model's attn_implementation (`llmga.devices.assistant_attention`)

    def describe(self) -> str:
        """"qwen2, LLM bfloat16, vision tower float32, attention sdpa": how the assistant computes."""
        model = self.model
        tower = model.vision_tower.get_input_embeddings().weight.dtype
        return (f"{self.checkpoint.family}, LLM {dtype_name(model.compute_dtype())}, vision tower "
                f"{dtype_name(tower)}, attention {self.attention}")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers reports the projector and vision keys as 'unexpected' for the base LLM; that is by design, and
    `check_language_weights` reports every other unexpected or missing key itself."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


@contextlib.contextmanager
def failing_as(what: str, remedy: str, errors: tuple[type[Exception], ...] = LOAD_ERRORS) -> Iterator[None]:
    """Raise what transformers or torch raise inside (`errors`) as one CheckpointError
    "<what> (<their message, cut to 300 characters>): <remedy>". CUDA out of memory passes through."""
    try:
        yield
    except (CheckpointError, torch.cuda.OutOfMemoryError):
        raise
    except errors as error:
        message = one_line(error)
        message = message if len(message) <= 300 else message[:300] + "…"
        raise CheckpointError(f"{what} ({message}): {remedy}") from error


# --- the vision tower ------------------------------------------------------------------------------------------------


def is_clip_l_336(name: str) -> bool:
    """Whether `mm_vision_tower` names CLIP ViT-L/14-336: its hub id, or a folder of it as a training run records it
    (a path ending in clip-vit-large-patch14-336, or a hub-cache snapshot of openai/clip-vit-large-patch14-336)."""
    parts = [part.lower() for part in re.split(r"[\\/]+", name.strip()) if part]
    return bool(parts) and (parts[-1].endswith("clip-vit-large-patch14-336")
                            or "models--openai--clip-vit-large-patch14-336" in parts)


def find_vision_tower(name: str, search_dirs: Iterable[Path], *, allow_paths: bool = False) -> Path | None:
    """A local folder of the vision tower config.json names (`name`, its `mm_vision_tower`), or None.

    Only CLIP ViT-L/14-336 is accepted (CheckpointError for any other name); it is looked up as one of
    CLIP_L_336_FOLDERS inside `search_dirs` (the clip_vision model folders). allow_paths: a local user's own
    checkpoint may name the tower's folder itself (the stage-1 trainer records the folder it was given); it is used
    when it exists and is named like the tower.
    """
    search_dirs = [Path(folder) for folder in search_dirs]
    if not is_clip_l_336(name):
        raise CheckpointError(
            f"config.json names the vision tower {name!r} (mm_vision_tower), but LLMGA checkpoints use {CLIP_L_336} "
            f"only, read from a clip_vision model folder ({[str(d) for d in search_dirs]}) or downloaded from the "
            f"hub: set mm_vision_tower to {CLIP_L_336}")
    if allow_paths and Path(name).is_dir():
        return Path(name)
    for folder in search_dirs:
        for candidate in CLIP_L_336_FOLDERS:
            path = folder / candidate
            if (path / "config.json").is_file():
                return path
    return None


def vision_config(name: str, local: Path | None) -> CLIPVisionConfig:
    """The vision tower's config: `local/config.json` (a CLIPVisionModel's, or the vision part of a CLIPModel's) when
    given, else CLIP ViT-L/14-336's when `name` names it; CheckpointError for anything that is not a CLIP vision
    config."""
    if local is None:
        if is_clip_l_336(name):
            return CLIPVisionConfig(**CLIP_L_336_CONFIG)
        raise CheckpointError(f"the vision tower {name!r} is unknown and no local folder for it was found")
    file = Path(local) / "config.json"
    restore = f"put the files of {CLIP_L_336} ({CLIP_L_336_FILES}) in {local} again"
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{file} cannot be read ({one_line(error)}): {restore}") from error
    kind = config.get("model_type") if isinstance(config, dict) else None
    fields = config.get("vision_config") if kind == "clip" else config if kind == "clip_vision_model" else None
    if not isinstance(fields, dict):
        raise CheckpointError(f"{file} is not a CLIP vision config (model_type {kind!r}, expected clip_vision_model "
                              f"or clip): {restore}")
    with failing_as(f"{file} is not a valid CLIP vision config", restore):
        return CLIPVisionConfig(**{k: v for k, v in fields.items() if k not in ("model_type", "architectures")})


def split_weights(checkpoint: LLMGACheckpoint) -> tuple[dict, dict]:
    """The projector and vision-tower tensors of the checkpoint, keys without their LLaVA prefixes."""
    projector, vision = {}, {}
    for key, tensor in checkpoint.tensors((PROJECTOR_PREFIX, VISION_PREFIX)):
        if key.startswith(PROJECTOR_PREFIX):
            projector[key[len(PROJECTOR_PREFIX):]] = tensor
        elif key.startswith(VISION_PREFIX):
            vision[key[len(VISION_PREFIX):]] = tensor
    return projector, vision


def vision_weights_from_folder(folder: Path) -> dict:
    state = {}
    for file in weight_files(folder):
        for key, tensor in read_weight_file(file):
            if key.startswith("vision_model."):
                state[key] = tensor
            elif not key.startswith(("text_model.", "visual_projection", "text_projection", "logit_scale")):
                state["vision_model." + key] = tensor  # transformers 5 saves without the prefix
    return state


def load_strict(module: torch.nn.Module, state: dict, what: str, source: str) -> None:
    """Load `state` into `module`, or raise CheckpointError naming what does not fit. Keys may carry the
    `vision_model.` prefix of released CLIP files whether or not this transformers version's module uses it."""
    own_prefix = "vision_model." if any(k.startswith("vision_model.") for k in module.state_dict()) else ""
    state = {own_prefix + k.removeprefix("vision_model."): v for k, v in state.items()}
    with failing_as(f"the {what} weights in {source} do not fit the model",
                    "the checkpoint is damaged or of another model"):
        result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
    if missing or unexpected:
        raise CheckpointError(f"the {what} weights in {source} do not fit the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}; the checkpoint is damaged or of another model")


def vision_tower_name(config: dict) -> str:
    """The vision tower a checkpoint's config.json names (`mm_vision_tower`), CLIP ViT-L/14-336 when it names none."""
    return str(config.get("mm_vision_tower") or config.get("vision_tower") or CLIP_L_336)


def load_vision_tower(checkpoint: LLMGACheckpoint, vision_state: dict, local: Path | None,
                      clip_vision_dirs: Iterable[Path], *, allow_download: bool,
                      official: bool = False) -> tuple[CLIPVisionModel, ImageProcessing]:
    """The checkpoint's CLIP ViT-L/14-336 in float32 and its image preprocessing.

    vision_state: the tower's weights from the checkpoint's shards, used when not empty. local: the tower's own folder
    (`find_vision_tower`), else it is downloaded when `allow_download`. official: the official builder's way, the
    tower's own weights from `local` (or the download) even when the shards hold a (bf16) copy.
    """
    tower_name = vision_tower_name(checkpoint.config)
    source = str(checkpoint.path)
    if official or not vision_state:
        if local is None and allow_download:
            local = download_vision_tower()
        if local is None:
            why = ("precision 'official' reads the vision tower's own float32 weights, as the official builder does,"
                   if official else f"{checkpoint.path} holds no vision-tower weights and")
            alternative = " or choose another dtype than official" if official else ""
            raise CheckpointError(
                f"{why} {tower_name!r} was not found locally (searched {[str(d) for d in clip_vision_dirs]}): put "
                f"{CLIP_L_336} ({CLIP_L_336_FILES}) in a clip_vision model folder, or allow downloads{alternative}")
        vision_state, source = vision_weights_from_folder(local), str(local)
    tower_config = vision_config(tower_name, local)
    config = checkpoint.config
    if tower_config.hidden_size != config["mm_hidden_size"]:
        raise CheckpointError(f"the vision tower from {local or source} has hidden size {tower_config.hidden_size}, "
                              f"but config.json of {checkpoint.path} says mm_hidden_size {config['mm_hidden_size']}: "
                              f"use the {CLIP_L_336} the checkpoint was trained with")
    with failing_as(f"the vision tower config from {local or source} does not build a CLIP vision model",
                    f"use the files of {CLIP_L_336}"):
        tower = CLIPVisionModel(tower_config)
    load_strict(tower, vision_state, "vision tower", source)
    if local is None:
        return tower, ImageProcessing()
    with failing_as(f"{local / 'preprocessor_config.json'} cannot be read",
                    f"put the file of {CLIP_L_336} there again"):
        return tower, ImageProcessing.from_folder(local)


# --- the language model ----------------------------------------------------------------------------------------------


def looks_like(keys: Iterable[str]) -> str:
    """Which base LLM a checkpoint's tensor names look like: Phi-3 fuses qkv_proj, Qwen2 has attention biases, Llama,
    Mistral and Gemma share their names."""
    names = set(keys)
    if any(key.endswith("self_attn.qkv_proj.weight") for key in names):
        return "phi3 checkpoint (fused qkv_proj)"
    if any(key.endswith("self_attn.q_proj.bias") for key in names):
        return "qwen2 checkpoint (attention biases)"
    return "llama, mistral or gemma checkpoint (no attention biases)"


def tensor_kinds(keys: list[str], shown: int = 3) -> str:
    """'self_attn.k_proj.bias, self_attn.q_proj.bias, …': the distinct tensor names of `keys`, layer numbers dropped."""
    kinds = sorted({re.sub(r"^model\.layers\.\d+\.", "", key) for key in keys})
    return ", ".join(kinds[:shown]) + (", …" if len(kinds) > shown else "")


def check_language_weights(info: dict, model_keys: Iterable[str], checkpoint: LLMGACheckpoint, llm_folder: Path,
                           tie_word_embeddings: bool) -> None:
    """CheckpointError unless the shards hold exactly the weights of the LLM config.json names: nothing missing but
    a tied lm_head, nothing unexpected but LLaVA's projector and vision tower. info: from_pretrained's loading info."""
    missing = sorted(set(info["missing_keys"]) - ({"lm_head.weight"} if tie_word_embeddings else set()))
    unexpected = sorted(key for key in info["unexpected_keys"] if not key.startswith(LLAVA_WEIGHT_PREFIXES))
    if not missing and not unexpected:
        return
    family = checkpoint.family
    found = []
    if unexpected:
        found.append(f"hold {len(unexpected)} tensors a {family} model does not have ({tensor_kinds(unexpected)})")
    if missing:
        found.append(f"lack {len(missing)} tensors a {family} model needs ({tensor_kinds(missing)})")
    in_files = (set(model_keys) - set(missing)) | set(unexpected)
    raise CheckpointError(
        f"{llm_folder} holds the weights of another model: they {' and '.join(found)}; config.json says "
        f"{checkpoint.model_type or family}, but the files look like a {looks_like(in_files)}. Use the config.json "
        "that came with these weights, or download the checkpoint again")


def load_tokenizer(folder: Path):
    """The tokenizer of `folder`, or CheckpointError when its files do not make one (the tokenizers library raises
    plain Exception for a file it cannot parse)."""
    with (failing_as(f"the tokenizer in {folder} does not load", "download its tokenizer files again "
                     "(tokenizer_config.json with tokenizer.json or tokenizer.model)", (Exception,)),
          quiet_transformers()):  # it reads config.json and warns that llava_* is not a transformers model type
        return AutoTokenizer.from_pretrained(folder)


def load_language_model(llm_folder: Path, checkpoint: LLMGACheckpoint, base_config: PretrainedConfig, *,
                        dtype: torch.dtype, attention: str, quantization: str, target: torch.device):
    """The base `XForCausalLM` from `llm_folder`'s shards, checked by `check_language_weights`, in eval mode on
    `target` (quantised weights are placed by bitsandbytes)."""
    load_kwargs = dict(config=base_config, dtype=dtype, attn_implementation=attention, output_loading_info=True)
    if quantization != "none":
        load_kwargs.update(quantization_config=_bitsandbytes_config(quantization), device_map={"": target.index or 0})
    with (failing_as(f"the language model in {llm_folder} does not load", "download the checkpoint again"),
          quiet_transformers()):
        language_model, info = AutoModelForCausalLM.from_pretrained(llm_folder, **load_kwargs)
    check_language_weights(info, language_model.state_dict().keys(), checkpoint, llm_folder,
                           base_config.tie_word_embeddings)
    if quantization == "none":
        language_model.to(target)
    return language_model.eval()


def causal_lm_supports_flash(config: PretrainedConfig) -> bool:
    """Whether transformers' causal-LM class for `config` has a flash-attention path."""
    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    return bool(getattr(model_class, "_supports_flash_attn", False))


def load_llmga(path: str | Path, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
               attention: str = "auto", quantization: str = "none", clip_vision_dirs: Iterable[Path] = (),
               allow_download: bool = False, base: str | Path | None = None, allow_paths: bool = True,
               compute_device: torch.device | None = None) -> LoadedAssistant:
    """Load an official LLMGA checkpoint folder.

    base: a plain base-LLM folder (the official `--model-base`); `path` is then a projector-pretraining output
    (config.json + mm_projector.bin), and the language model and tokenizer come from `base`.
    dtype: auto/official/bf16/fp16/fp32 (`llmga.devices.assistant_precision`: official is the official builder's
    fp16 LLM with the tower's own fp32 weights; auto takes it on GPUs when the tower's folder is at hand).
    device: auto/cuda/cpu/mps, where the weights load. compute_device: where the model will run when that is
    elsewhere (the nodes load on the CPU and ComfyUI moves the model): what dtype auto is decided for.
    attention: auto/sdpa/flash_attention_2/eager, the language model's attn_implementation
    (`llmga.devices.assistant_attention`: auto is flash-attention 2 where it can run, else SDPA); the vision tower runs
    SDPA, or eager when eager is chosen. The one used is `LoadedAssistant.attention`.
    quantization: none/8bit/4bit (bitsandbytes, CUDA only; NF4 with double quantisation and fp16 compute, as the
    official `--load-4bit`). clip_vision_dirs: the clip_vision model folders, where the vision tower is looked up.
    allow_download: fetch a missing vision tower from the hub (pinned revision). allow_paths: `mm_vision_tower` may
    name the tower's own folder (a local user's checkpoint); the nodes pass False, so only clip_vision_dirs are read.
    Every problem of the files is a CheckpointError (a ValueError) that says what to do.
    """
    if isinstance(dtype, str):
        check_assistant_dtype(dtype)
    check_assistant_attention(attention)
    checkpoint = read_checkpoint(path, projector_only=base is not None)
    llm_folder = Path(base) if base is not None else checkpoint.path
    if base is not None and not (llm_folder / "config.json").is_file():
        raise CheckpointError(f"base LLM folder {llm_folder} has no config.json: give the folder of the base model "
                              "the projector was pretrained on (e.g. vicuna-7b-v1.5)")
    target = pick_device(device)
    config = checkpoint.config
    with failing_as(f"{checkpoint.path / 'config.json'} does not describe a {checkpoint.family} model", REFETCH):
        base_config = checkpoint.base_config()
        projector = build_projector(config.get("mm_projector_type", "linear"), config["mm_hidden_size"],
                                    base_config.hidden_size)
    # The tokenizer and the vision tower are checked before the large language model is read.
    tokenizer = load_tokenizer(llm_folder)
    clip_vision_dirs = [Path(folder) for folder in clip_vision_dirs]
    local_tower = find_vision_tower(vision_tower_name(config), clip_vision_dirs, allow_paths=allow_paths)
    precision = assistant_precision(dtype, compute_device or target, tower_at_hand=local_tower is not None)
    attention = assistant_attention(attention, compute_device or target, precision.language,
                                    model_supports_flash=causal_lm_supports_flash(base_config))
    projector_state, vision_state = split_weights(checkpoint)
    vision_tower, processing = load_vision_tower(checkpoint, vision_state, local_tower, clip_vision_dirs,
                                                 allow_download=allow_download, official=precision.official)
    language_model = load_language_model(llm_folder, checkpoint, base_config, dtype=precision.language,
                                         attention=attention, quantization=quantization, target=target)
    load_strict(projector, projector_state, "projector", str(checkpoint.path))
    # The tower's 577 positions gain little from flash-attention, and in official precision it runs fp32.
    vision_tower.set_attn_implementation("eager" if attention == "eager" else "sdpa")
    model = LLMGAModel(language_model, vision_tower.to(target, precision.vision).eval(),
                       projector.to(target, precision.language).eval(),
                       select_layer=config.get("mm_vision_select_layer", -2),
                       select_feature=config.get("mm_vision_select_feature", "patch"),
                       pixel_dtype=torch.float16 if precision.official else None)
    if quantization == "none" and language_model.get_input_embeddings().num_embeddings > len(tokenizer):
        # As the official builder: embeddings padded past the tokenizer (Qwen2, Phi-3) shrink to len(tokenizer),
        # so those ids can never be generated.
        language_model.resize_token_embeddings(len(tokenizer))
    return LoadedAssistant(model=model, tokenizer=tokenizer, image_processing=processing, checkpoint=checkpoint,
                           attention=attention)


def _bitsandbytes_config(quantization: str):
    if quantization not in ("8bit", "4bit"):
        raise ValueError(f"quantization {quantization!r} is not one of none, 8bit, 4bit")
    if not torch.cuda.is_available():
        raise ValueError(f"{quantization} quantization needs a CUDA GPU (bitsandbytes); choose quantization 'none'")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ValueError(f"{quantization} quantization needs the bitsandbytes package in ComfyUI's Python; "
                         "add it there or choose quantization 'none'") from error
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16,
                              bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4")
