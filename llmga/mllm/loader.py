"""Load an official LLMGA checkpoint folder into an `LLMGAModel` plus tokenizer and image processing.

The base LLM loads through transformers' own `from_pretrained` (memory-efficient, sharded, quantisable) with the
base config rebuilt from LLaVA's config; the projector and vision tower are read from the same shards. When the
checkpoint carries no vision weights, they come from a local CLIP ViT-L/14-336 folder (the `clip_vision` model
folders) or, when allowed, from the Hugging Face hub.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel
from transformers.utils import logging as hf_logging

from ..devices import device_and_dtype
from .checkpoint import (
    PROJECTOR_PREFIX,
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
CLIP_L_336 = "openai/clip-vit-large-patch14-336"
CLIP_L_336_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                         image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5)


@dataclass
class LoadedAssistant:
    """What `load_llmga` returns: the network, its tokenizer and how to prepare its images."""

    model: LLMGAModel
    tokenizer: object
    image_processing: ImageProcessing
    checkpoint: LLMGACheckpoint


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers reports the projector and vision keys as 'unexpected' for the base LLM; that is by design."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def find_vision_tower(name: str, search_dirs: Iterable[Path]) -> Path | None:
    """A local folder for `mm_vision_tower`: the path itself, or inside one of `search_dirs` a folder named like it
    (`openai/clip-vit-large-patch14-336`, `clip-vit-large-patch14-336`, `openai--clip-vit-large-patch14-336`)."""
    if Path(name).is_dir():
        return Path(name)
    candidates = (name, name.rsplit("/", 1)[-1], name.replace("/", "--"), name.replace("/", "_"))
    for folder in search_dirs:
        for candidate in candidates:
            path = Path(folder) / candidate
            if (path / "config.json").is_file():
                return path
    return None


def vision_config(name: str, local: Path | None) -> CLIPVisionConfig:
    if local is not None:
        config = json.loads((local / "config.json").read_text())
        fields = config.get("vision_config", config)  # a full CLIPModel folder nests it
        return CLIPVisionConfig(**{k: v for k, v in fields.items() if k not in ("model_type", "architectures")})
    if name.rstrip("/").endswith("clip-vit-large-patch14-336"):
        return CLIPVisionConfig(**CLIP_L_336_CONFIG)
    raise CheckpointError(f"the vision tower {name!r} is unknown and no local folder for it was found")


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


def _download_vision_tower(name: str) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors"]))


def load_strict(module: torch.nn.Module, state: dict, what: str, source: str) -> None:
    """Load `state` into `module`, or raise CheckpointError naming what does not fit. Keys may carry the
    `vision_model.` prefix of released CLIP files whether or not this transformers version's module uses it."""
    own_prefix = "vision_model." if any(k.startswith("vision_model.") for k in module.state_dict()) else ""
    state = {own_prefix + k.removeprefix("vision_model."): v for k, v in state.items()}
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
    if missing or unexpected:
        raise CheckpointError(f"the {what} weights in {source} do not fit the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}; the checkpoint is damaged or of another model")


def load_llmga(path: str | Path, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
               attention: str = "sdpa", quantization: str = "none", clip_vision_dirs: Iterable[Path] = (),
               allow_download: bool = False, base: str | Path | None = None) -> LoadedAssistant:
    """Load an official LLMGA checkpoint folder.

    base: a plain base-LLM folder (the official `--model-base`); `path` is then a projector-pretraining output
    (config.json + mm_projector.bin), and the language model and tokenizer come from `base`.
    dtype: auto/bf16/fp16/fp32. device: auto/cuda/cpu/mps. attention: sdpa/eager (transformers attn_implementation).
    quantization: none/8bit/4bit (bitsandbytes, CUDA only; NF4 with double quantisation and fp16 compute, as the
    official `--load-4bit`). clip_vision_dirs: folders searched for the vision tower when the checkpoint lacks its
    weights. allow_download: fetch a missing vision tower from the hub.
    """
    checkpoint = read_checkpoint(path, projector_only=base is not None)
    llm_folder = Path(base) if base is not None else checkpoint.path
    if base is not None and not (llm_folder / "config.json").is_file():
        raise CheckpointError(f"base LLM folder {llm_folder} has no config.json: give the folder of the base model "
                              "the projector was pretrained on (e.g. vicuna-7b-v1.5)")
    target, torch_dtype = device_and_dtype("assistant", device, dtype)
    base_config = checkpoint.base_config()
    load_kwargs = dict(config=base_config, dtype=torch_dtype, attn_implementation=attention,
                       output_loading_info=True)
    if quantization != "none":
        load_kwargs.update(quantization_config=_bitsandbytes_config(quantization), device_map={"": target.index or 0})
    with quiet_transformers():
        language_model, info = AutoModelForCausalLM.from_pretrained(llm_folder, **load_kwargs)
    tied = {"lm_head.weight"} if base_config.tie_word_embeddings else set()
    missing = sorted(set(info["missing_keys"]) - tied)
    if missing:
        raise CheckpointError(f"{llm_folder} lacks weights of its language model ({missing[:5]}…): the "
                              "download is incomplete or the files belong to another model")
    if quantization == "none":
        language_model.to(target)
    language_model.eval()

    projector_state, vision_state = split_weights(checkpoint)
    config = checkpoint.config
    projector = build_projector(config.get("mm_projector_type", "linear"), config["mm_hidden_size"],
                                base_config.hidden_size)
    load_strict(projector, projector_state, "projector", str(checkpoint.path))

    tower_name = config.get("mm_vision_tower") or config.get("vision_tower") or CLIP_L_336
    local = find_vision_tower(tower_name, clip_vision_dirs)
    vision_source = str(checkpoint.path)
    if not vision_state:
        if local is None and allow_download:
            local = _download_vision_tower(tower_name)
        if local is None:
            searched = [str(Path(d)) for d in clip_vision_dirs]
            raise CheckpointError(
                f"{checkpoint.path} holds no vision-tower weights and {tower_name!r} was not found locally (searched "
                f"{searched}): put {CLIP_L_336} (config.json, model.safetensors, preprocessor_config.json) in a "
                "clip_vision model folder, or allow downloads")
        vision_state, vision_source = vision_weights_from_folder(local), str(local)
    vision_tower = CLIPVisionModel(vision_config(tower_name, local))
    load_strict(vision_tower, vision_state, "vision tower", vision_source)

    model = LLMGAModel(language_model, vision_tower.to(target, torch_dtype).eval(),
                       projector.to(target, torch_dtype).eval(),
                       select_layer=config.get("mm_vision_select_layer", -2),
                       select_feature=config.get("mm_vision_select_feature", "patch"))
    with quiet_transformers():  # it reads config.json and warns that llava_* is not a transformers model type
        tokenizer = AutoTokenizer.from_pretrained(llm_folder)
    if quantization == "none" and language_model.get_input_embeddings().num_embeddings > len(tokenizer):
        # As the official builder: embeddings padded past the tokenizer (Qwen2, Phi-3) shrink to len(tokenizer),
        # so those ids can never be generated.
        language_model.resize_token_embeddings(len(tokenizer))
    processing = ImageProcessing.from_folder(local) if local is not None else ImageProcessing()
    return LoadedAssistant(model=model, tokenizer=tokenizer, image_processing=processing, checkpoint=checkpoint)


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
