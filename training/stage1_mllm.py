r"""Stage 1 of LLMGA: train the MLLM (CLIP ViT-L/14-336 -> mlp2x_gelu projector -> base LLM) to write generation
prompts, and write the official LLMGA checkpoint folder that `LLMGA Load Assistant` and `load_llmga` read.

    accelerate launch --config_file training/configs/accelerate/deepspeed_zero3.yaml \
        -m training.stage1_mllm --config training/configs/stage1_pretrain.yaml     # 0: projector pretraining
    accelerate launch --config_file training/configs/accelerate/deepspeed_zero3.yaml \
        -m training.stage1_mllm --config training/configs/stage1_finetune.yaml     # 1: full fine-tuning
    python -m training.stage1_mllm --config F --set max_train_steps=10              # one process

What it reproduces (llmga/llava/train/train.py and pretrain.py, run by scripts/pretrain_<llm>.sh and
scripts/train_llmga_s1_<llm>.sh; ../shared/reference/llmga_official.md §5-§6):
- `mode: pretrain`: only the projector trains (LLM and vision tower frozen), on LLaVA-Pretrain
  (blip_laion_cc_sbu_558k.json) rendered with the *target LLM's* chat template; images go through the plain CLIP
  processor (short side to 336, centre crop), as `pretrain.py` fell back to; lr 1e-3. Writes `config.json` +
  `mm_projector.bin` (`model.mm_projector.*`, bfloat16), which `pretrain_mm_adapter` of the next run and
  `load_llmga(folder, base=<base LLM>)` read.
- `mode: finetune`: LLM + projector train, the vision tower stays frozen; the data is the official
  ConcatDataset([LLaVA mix665k, inpainting, similar image, edit, text (LIMA, OASST2, T2I)]) built by
  training/data/conversations.py (the official draws, templates and loss masks); images 512 (stretched, LAION
  centre-cropped) then CLIP; lr 2e-5. Writes the full LLMGA folder: the base config + LLaVA's `mm_*` keys
  (`model_type` llava_*), bfloat16 safetensors shards keyed as the release (LLM keys, `model.mm_projector.*`,
  `model.vision_tower.vision_tower.vision_model.*`), the tokenizer (pad token set per template as train.py does)
  and the generation config.
- Loss masks as the official preprocess, its "tokenization mismatch" drop included (`keep_mismatched_samples`).
- AdamW (no weight decay), cosine schedule with 3% warm-up, global batch = processes x batch x accumulation
  (8 x 4 x 4 = 128 officially), gradient clipping 1.0, bf16, sequences cut at 2048 tokens (before and after the
  image is spliced in), gradient checkpointing, one epoch.

Deviations: the official collator masks every token equal to the pad id (pad = unk or an EOS-like token) as
padding; here padding is known by length, so a pad-id token inside the text stays in. A text-only sample gets no
dummy image run through CLIP; when a batch has no image at all, one blank image keeps the projector in the graph
(what the official zero images are for, under DeepSpeed/DDP). A batch whose labels are all masked (every reply cut
away by the 2048 limit) contributes a zero loss instead of NaN. `model_name_or_path` may also be an LLMGA folder,
to continue fine-tuning a released checkpoint on one's own data.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel, PretrainedConfig
from transformers import get_scheduler as hf_get_scheduler

from llmga.devices import TORCH_DTYPES, mixed_precision_dtype
from llmga.mllm.checkpoint import (
    LLAVA_MODEL_TYPE,
    PROJECTOR_PREFIX,
    CheckpointError,
    LLMGACheckpoint,
    family_of,
    llava_config,
    read_checkpoint,
    read_weight_file,
    released_state_dict,
    write_llmga_folder,
)
from llmga.mllm.loader import (
    CLIP_L_336,
    load_strict,
    quiet_transformers,
    split_weights,
    vision_config,
    vision_weights_from_folder,
)
from llmga.mllm.model import IGNORE_INDEX, LLMGAModel, build_projector
from llmga.mllm.preprocess import ImageProcessing
from llmga.mllm.templates import TEMPLATE_NAMES, template_for

from .common import ConfigError, EpochShuffleSampler, run_cli
from .data.stage1 import Stage1Dataset, collate, read_stage1_records
from .loop import MicroStep, TrainingRun, TrainResult

# train.py: templates whose tokenizer gets pad = unk (the `else` branch); llama_3 gets the first reserved token.
PAD_IS_UNK_TEMPLATES = ("v1", "llava_v1", "llava_llama_2", "mistral_instruct")
LLAMA_3_PAD = "<|reserved_special_token_0|>"
DATA_KEYS = ("pretrain_data", "llava_data", "inpainting_data", "similar_image_data", "edit_data", "t2i_data")


@dataclass
class Stage1Config:
    """Stage-1 settings; defaults are scripts/train_llmga_s1_*.sh (fine-tuning) and HF TrainingArguments' defaults
    they rely on. configs/stage1_pretrain.yaml holds the projector-pretraining values."""

    model_name_or_path: str  # the base LLM folder (e.g. Qwen2-0.5B-Instruct), or an LLMGA folder to continue from
    output_dir: str  # checkpoints, logs, and the trained LLMGA folder
    mode: Literal["pretrain", "finetune"] = "finetune"
    vision_tower: str | None = CLIP_L_336  # a local CLIP ViT-L/14-336 folder (config.json + weights)
    pretrain_mm_mlp_adapter: str | None = None  # --pretrain_mm_mlp_adapter: the pretraining's mm_projector.bin
    version: str = "auto"  # --version: the chat template (v1, llama_3, mistral_instruct, qwen_2, phi_3, gemma)
    mm_projector_type: str = "mlp2x_gelu"
    mm_vision_select_layer: int = -2
    # Data. Relative paths resolve against data_root (the released layout: jsons/..., llava-imgs, llmga-imgs).
    data_root: str | None = None
    image_folder: str | None = None  # --image_folder: LLaVA (mix665k, LLaVA-Pretrain) images
    image_folder2: str | None = None  # --image_folder2: LLMGA images (COCO, LAION, JourneyDB)
    pretrain_data: str | None = None  # LLaVA-Pretrain blip_laion_cc_sbu_558k.json (mode pretrain)
    llava_data: str | None = None  # llava_v1_5_mix665k.json (VQADataset)
    inpainting_data: str | None = None  # inpainting/train.json, or a folder / .jsonl of your captioned images
    similar_image_data: str | None = None  # SG/train.json, or a folder / .jsonl of your captioned images
    edit_data: str | None = None  # Edit/train.json
    t2i_data: str | None = None  # T2I/train.json (text-only prompt refinement)
    text_data: list[str] = field(default_factory=list)  # lima.json, oasst2.json (ShareGPT text chats)
    model_max_length: int = 2048
    keep_mismatched_samples: bool = False  # true: train on what the official drops (training/data/official_count.py)
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    num_train_epochs: int = 1
    max_train_steps: int | None = None  # overrides num_train_epochs
    learning_rate: float = 2e-5  # pretraining: 1e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] | None = "bf16"  # None: what `accelerate launch` says
    allow_tf32: bool = True
    gradient_checkpointing: bool = True
    attention: str = "sdpa"  # transformers attn_implementation; the official runs used flash_attention_2
    dataloader_num_workers: int = 4
    checkpointing_steps: int = 50000
    checkpoints_total_limit: int | None = 1
    resume_from_checkpoint: str | None = "latest"  # "latest", a checkpoint-<step> folder, or null
    save_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"  # the released weights are bfloat16
    max_shard_size: str = "5GB"
    seed: int = 42  # TrainingArguments' default

    def __post_init__(self) -> None:
        for name in ("model_max_length", "per_device_train_batch_size", "gradient_accumulation_steps",
                     "num_train_epochs", "checkpointing_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise ValueError(f"max_train_steps must be at least 1 (or null: num_train_epochs), got "
                             f"{self.max_train_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio is a fraction in [0, 1), got {self.warmup_ratio}")
        if self.version != "auto" and self.version not in TEMPLATE_NAMES:
            raise ValueError(f"version {self.version!r} is not 'auto' or one of {', '.join(TEMPLATE_NAMES)}")
        if self.mode == "pretrain" and not self.pretrain_data and not self.llava_data:
            raise ValueError("mode pretrain trains on image-caption chats: set pretrain_data (LLaVA-Pretrain's "
                             "blip_laion_cc_sbu_558k.json) or llava_data")
        if self.mode == "finetune" and not any(getattr(self, key) for key in DATA_KEYS[1:]) and not self.text_data:
            raise ValueError(f"no training data: set at least one of {', '.join(DATA_KEYS[1:])}, text_data")
        if self.mode == "pretrain" and self.pretrain_mm_mlp_adapter:
            raise ValueError("pretrain_mm_mlp_adapter starts fine-tuning from a pretrained projector; projector "
                             "pretraining (mode pretrain) starts from a fresh one: remove it or use mode finetune")
        if Path(self.output_dir).resolve() == Path(self.model_name_or_path).resolve():
            raise ValueError("output_dir must not be the model_name_or_path folder: the trained model is written there")

    def data_path(self, value: str | None) -> Path | None:
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() or self.data_root is None else Path(self.data_root) / path


# --- the model -----------------------------------------------------------------------------------------------------


class Stage1Model(nn.Module):
    """The trained network behind one `forward(batch) -> loss`, so that DDP / DeepSpeed / FSDP wrap one module."""

    def __init__(self, llmga: LLMGAModel, max_length: int, image_size: int) -> None:
        super().__init__()
        self.llmga = llmga
        self.max_length = max_length
        self.image_size = image_size

    def forward(self, input_ids: list[list[int]], labels: list[list[int]], pixel_values: torch.Tensor | None,
                image_owners: list[int]) -> torch.Tensor:
        llmga = self.llmga
        device = llmga.input_device()
        if pixel_values is None:  # keep the projector in the graph: every process must use every trained parameter
            pixel_values = torch.zeros(1, 3, self.image_size, self.image_size, device=device)
        features = llmga.image_features(pixel_values.to(device))
        per_sample: list[torch.Tensor | None] = [None] * len(input_ids)
        for row, owner in enumerate(image_owners):
            per_sample[owner] = features[row:row + 1]
        if not image_owners:
            per_sample[0] = features[:1]  # consumed as a zero-length slice
        embeds, attention_mask, targets = llmga.training_inputs(input_ids, labels, per_sample, self.max_length)
        supervised = bool((targets[:, 1:] != IGNORE_INDEX).any())
        outputs = llmga.language_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                       labels=targets if supervised else None, use_cache=False)
        return outputs.loss if supervised else outputs.logits.sum() * 0.0


@dataclass
class Stage1Parts:
    model: LLMGAModel
    tokenizer: Any
    template: str
    processing: ImageProcessing
    base_config: PretrainedConfig
    family: str
    vision_tower_name: str


def _base_llm_config(folder: Path) -> tuple[PretrainedConfig, LLMGACheckpoint | None]:
    """(base LLM config, the LLMGA checkpoint or None) of model_name_or_path."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model_name_or_path {folder} has no config.json: give a base LLM folder (e.g. "
                          "Qwen2-0.5B-Instruct, downloaded) or an LLMGA checkpoint folder")
    raw = json.loads(config_file.read_text())
    if family_of(raw) is not None and "mm_hidden_size" in raw:
        try:
            checkpoint = read_checkpoint(folder)
        except CheckpointError as error:
            raise ConfigError(f"model_name_or_path: {error}") from error
        return checkpoint.base_config(), checkpoint
    if raw.get("model_type") not in LLAVA_MODEL_TYPE:
        raise ConfigError(f"model_name_or_path {folder} is a {raw.get('model_type')!r} model; LLMGA is built on "
                          f"{', '.join(sorted(LLAVA_MODEL_TYPE))} base LLMs")
    return AutoConfig.from_pretrained(folder), None


def choose_template(version: str, family: str, vocab_size: int, tokenizer) -> str:
    """The chat template of the run: `version`, or for "auto" the official training --version of the family
    (Vicuna and other Llama-2-vocabulary models: "v1", the training wording)."""
    if version != "auto":
        return version
    name = template_for(LLAVA_MODEL_TYPE[family], vocab_size, getattr(tokenizer, "chat_template", None))
    return "v1" if name == "llava_v1" else name


def prepare_tokenizer(folder: Path, version: str, family: str, vocab_size: int, max_length: int):
    """(tokenizer, template name): the tokenizer as train.py sets it up (model_max_length, right padding, and the pad
    token of the template: v1 / Mistral / Llama-2: pad = unk; Llama-3: unk = pad = <|reserved_special_token_0|>;
    the others as they come, falling back to EOS when the tokenizer has no pad token), and the template of the run
    (`choose_template`, which reads the tokenizer's own chat template)."""
    tokenizer = AutoTokenizer.from_pretrained(folder, model_max_length=max_length, padding_side="right")
    template = choose_template(version, family, vocab_size, tokenizer)
    if template in PAD_IS_UNK_TEMPLATES and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    elif template == "llama_3":
        if tokenizer.unk_token is None:
            tokenizer.unk_token = LLAMA_3_PAD
        tokenizer.pad_token = tokenizer.unk_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, template


def _projector_state(path: Path) -> dict[str, torch.Tensor]:
    """`model.mm_projector.*` of a pretraining's mm_projector.bin (torch.load weights_only) or a safetensors file."""
    if not path.is_file():
        raise ConfigError(f"pretrain_mm_mlp_adapter {path} does not exist: give the mm_projector.bin that projector "
                          "pretraining (mode: pretrain) wrote")
    try:
        state = dict(read_weight_file(path, (PROJECTOR_PREFIX,)))
    except CheckpointError as error:
        raise ConfigError(f"pretrain_mm_mlp_adapter: {error}") from error
    if not state:
        raise ConfigError(f"pretrain_mm_mlp_adapter {path} holds no {PROJECTOR_PREFIX}* weights")
    return {key[len(PROJECTOR_PREFIX):]: value for key, value in state.items()}


def load_stage1_parts(config: Stage1Config) -> Stage1Parts:
    """The network to train, in float32 on the CPU (accelerate moves it), with its tokenizer and template."""
    folder = Path(config.model_name_or_path)
    base_config, checkpoint = _base_llm_config(folder)
    llmga_config = checkpoint.config if checkpoint is not None else {}
    family = base_config.model_type
    # An LLMGA folder's projector and vision keys are "unexpected" for the base LLM, by design (as load_llmga).
    with quiet_transformers() if checkpoint is not None else contextlib.nullcontext():
        tokenizer, template = prepare_tokenizer(folder, config.version, family, base_config.vocab_size,
                                                config.model_max_length)
        language_model = AutoModelForCausalLM.from_pretrained(folder, config=base_config, dtype=torch.float32,
                                                              attn_implementation=config.attention)

    tower_name = config.vision_tower or llmga_config.get("mm_vision_tower") or CLIP_L_336
    projector_state, vision_state = split_weights(checkpoint) if checkpoint is not None else ({}, {})
    local = Path(tower_name) if tower_name and Path(tower_name).is_dir() else None
    if not vision_state:
        if local is None:
            raise ConfigError(f"vision_tower {tower_name!r} is not a local folder: download "
                              f"{CLIP_L_336} (config.json, model.safetensors, preprocessor_config.json) and give its "
                              "path")
        vision_state = vision_weights_from_folder(local)
    vision_tower = CLIPVisionModel(vision_config(tower_name, local))
    load_strict(vision_tower, vision_state, "vision tower", str(local or folder))
    vision_tower.requires_grad_(False).eval()

    projector_type = llmga_config.get("mm_projector_type", config.mm_projector_type)
    projector = build_projector(projector_type, vision_tower.config.hidden_size, base_config.hidden_size)
    if config.pretrain_mm_mlp_adapter:
        projector_state = _projector_state(Path(config.pretrain_mm_mlp_adapter))
    if projector_state:
        load_strict(projector, projector_state, "projector", config.pretrain_mm_mlp_adapter or str(folder))
    elif config.mode == "finetune":
        warnings.warn("fine-tuning starts from a randomly initialised projector: set pretrain_mm_mlp_adapter to the "
                      "mm_projector.bin of projector pretraining", stacklevel=2)
    model = LLMGAModel(language_model, vision_tower, projector,
                       select_layer=llmga_config.get("mm_vision_select_layer", config.mm_vision_select_layer))
    processing = ImageProcessing.from_folder(local) if local is not None else ImageProcessing()
    return Stage1Parts(model, tokenizer, template, processing, base_config, family, str(tower_name))


# --- writing the official folder -----------------------------------------------------------------------------------


def write_trained_folder(parts: Stage1Parts, config: Stage1Config, state: dict[str, torch.Tensor]) -> str:
    """Write the trained model (`Stage1Model` state dict) into output_dir in the official layout
    (`llmga.mllm.checkpoint.write_llmga_folder`): the full LLMGA folder, or for pretraining config.json +
    mm_projector.bin. Returns what was written."""
    pretrain = config.mode == "pretrain"
    folder_config = llava_config(parts.base_config, vision_tower=parts.vision_tower_name,
                                 vision_hidden_size=parts.model.vision_tower.config.hidden_size,
                                 projector_type=config.mm_projector_type, select_layer=parts.model.select_layer,
                                 model_max_length=config.model_max_length, tune_mm_mlp_adapter=pretrain)
    model_state = {key.removeprefix("llmga."): value for key, value in state.items()}
    write_llmga_folder(config.output_dir, folder_config,
                       released_state_dict(model_state, parts.base_config.tie_word_embeddings),
                       tokenizer=parts.tokenizer, generation_config=parts.model.language_model.generation_config,
                       dtype=TORCH_DTYPES[config.save_dtype], max_shard_size=config.max_shard_size,
                       projector_only=pretrain)
    what = "mm_projector.bin" if pretrain else "the trained LLMGA folder"
    return f"wrote {what} to {config.output_dir}"


# --- training ------------------------------------------------------------------------------------------------------


def enable_checkpointing(language_model: nn.Module) -> None:
    """Non-reentrant activation checkpointing of every decoder layer (transformers' newer name when it has it)."""
    kwargs = {"use_reentrant": False}
    if hasattr(language_model, "activation_checkpointing_enable"):
        language_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _trainable(model: LLMGAModel, mode: str) -> list[nn.Parameter]:
    """pretrain: the projector only; finetune: LLM + projector. The vision tower never trains."""
    model.requires_grad_(False)
    trained = [model.projector] if mode == "pretrain" else [model.projector, model.language_model]
    for module in trained:
        module.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def train(config: Stage1Config) -> TrainResult:
    """Train as configured and write the LLMGA folder (or, for pretraining, mm_projector.bin) to output_dir."""
    records = read_stage1_records(config)
    run = TrainingRun(config, "stage1_mllm")
    accelerator = run.accelerator
    parts = load_stage1_parts(config)
    model = parts.model
    parameters = _trainable(model, config.mode)
    model.language_model.config.use_cache = False
    if config.gradient_checkpointing:
        enable_checkpointing(model.language_model)
    model.language_model.train(config.mode == "finetune")
    model.projector.train()
    # The frozen vision tower runs in the mixed-precision dtype (train.py).
    model.vision_tower.to(accelerator.device, mixed_precision_dtype(accelerator.mixed_precision))
    wrapper = Stage1Model(model, config.model_max_length, parts.processing.crop_size)

    dataset = Stage1Dataset(records, parts.tokenizer, parts.template, parts.processing, config)
    sampler = EpochShuffleSampler(len(dataset), config.seed)
    dataloader = DataLoader(dataset, batch_size=config.per_device_train_batch_size, sampler=sampler,
                            collate_fn=collate, num_workers=config.dataloader_num_workers)
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  eps=config.adam_epsilon, weight_decay=config.weight_decay)
    batches_per_process = math.ceil(len(dataset) / (config.per_device_train_batch_size * accelerator.num_processes))
    steps_per_epoch = math.ceil(batches_per_process / config.gradient_accumulation_steps)
    total_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
    warmup = math.ceil(total_steps * config.warmup_ratio)
    # The prepared scheduler steps once per process per step, hence the factor (as stage 2 and diffusers do).
    lr_scheduler = hf_get_scheduler(config.lr_scheduler, optimizer,
                                    num_warmup_steps=warmup * accelerator.num_processes,
                                    num_training_steps=total_steps * accelerator.num_processes)
    wrapper, optimizer, dataloader, lr_scheduler = accelerator.prepare(wrapper, optimizer, dataloader, lr_scheduler)
    run.resume()

    def micro_step(batch: dict[str, Any], generator: torch.Generator, step: int) -> MicroStep:
        loss = wrapper(**batch)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        return MicroStep({"train_loss": loss.detach()}, lr_scheduler.get_last_lr()[0], len(batch["input_ids"]),
                         {"text_tokens": sum(len(ids) for ids in batch["input_ids"])})

    run.train(wrapper, dataloader, (sampler, dataset), total_steps, micro_step)
    state = accelerator.get_state_dict(wrapper)
    model.language_model.config.use_cache = True
    return run.finish(lambda: write_trained_folder(parts, config, state))


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(__doc__, Stage1Config, train, argv)


if __name__ == "__main__":
    sys.exit(main())
