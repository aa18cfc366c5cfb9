"""Export an LLMGA assistant as a transformers-native `LlavaForConditionalGeneration` folder, for serving engines.

The folder (config.json, safetensors, tokenizer, processor with the family's LLMGA chat template, and
generation_config.json) loads in stock transformers with no custom code, and in LLaVA-capable engines (vLLM, SGLang).
Weights are keyed as the llava-hf hub checkpoints (`language_model.model.*`, `language_model.lm_head.weight`,
`vision_tower.vision_model.*`, `multi_modal_projector.linear_{1,2}.*`), which transformers >= 5.6 and the engines read.

Choices that keep the export's outputs those of the pack's assistant:

- `<image>`: LLaVA-HF marks image positions with a token id, and its embedding lookup runs on that id (an id past the
  embedding rows fails), so `<image>` is added to the tokenizer as a special token with the next free id V =
  len(tokenizer), and the embedding / lm_head get one row for it. The rows a checkpoint pads past its tokenizer (Qwen2,
  Phi-3) are cut first, as the official loader and the pack do. Logits over ids < V are those of the pack. The new
  lm_head row is a copy of a "twin" token's row (`twin_token_id`: <unk>, else BOS, else a special token that ends
  nothing), so its logit equals the twin's (up to the matmul's rounding) and greedy decoding, torch.argmax taking the
  first of equal maxima, picks `<image>` at most where it would pick the twin; generation_config.json also lists it in
  `suppress_tokens`, so transformers never picks or samples it. An engine that ignores suppress_tokens could sample it
  as often as the twin, a token these models are never trained to write. The embedding row is the twin's when the
  embeddings are tied (one matrix), else the mean embedding; it never reaches the model, the image features replace
  it.
- The text after a special token: the official code tokenises the prompt in pieces split at `<image>`, so each piece
  starts with SentencePiece's word-start mark; a whole-prompt tokenisation (the processor's, an engine's) of
  transformers 5's Llama tokenizers puts none after a special token (BOS, `<image>`). The chat template then writes a
  space after them, which tokenises to the same ids; `prompt_markers` checks which form matches, for every tokenizer,
  and `check_saved_tokenizer` checks it again on the tokenizer files written.
- Gemma: the pack multiplies the spliced image features by Gemma's embedding scale sqrt(hidden), as LLMGA was
  trained (transformers 4 scaled the whole inputs_embeds). transformers 5's LLaVA scatters the features into the
  already-scaled embeddings, so for `engine="transformers"` the factor is folded into `linear_2` (weight and bias);
  vLLM and SGLang still scale the whole inputs_embeds inside their Gemma, so for them the projector stays as trained.
- Images: LLMGA stretches a picture to a square before CLIP's preprocessing; the LlavaProcessor resizes the shortest
  side and centre-crops, so a client stretches first (`llmga.mllm.preprocess.stretch_to_square`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import AddedToken, CLIPImageProcessor, LlavaConfig, LlavaProcessor

from ..devices import dtype_name
from ..files import atomic_folder, write_json_atomic
from .chat import OFFICIAL_SETTINGS, Assistant, tokenize_with_image
from .checkpoint import read_checkpoint, write_shards
from .loader import LoadedAssistant, load_llmga, load_tokenizer
from .model import IMAGE_TOKEN_INDEX
from .templates import ChatTemplate

IMAGE_TOKEN = "<image>"  # LlavaProcessor's default image token
ENGINES = ("transformers", "vllm", "sglang")
EXPORT_DTYPES = ("auto", "bf16", "fp16", "fp32")
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# How each official SeparatorStyle frames a conversation (templates.py renders the same strings): text before the
# turns, around a user message, around an assistant reply, and the open assistant turn. Jinja expressions; `ns.system`
# is the system prompt, `ns.turn` the number of user turns rendered so far.
_FRAMES = {
    "two": ("ns.system + ' '", "'USER: '", "' '", "'ASSISTANT: '", "'</s>'", "'ASSISTANT:'"),
    "llama_2": ("''", "('<s>' if ns.turn > 0 else '') + '[INST] ' + ('<<SYS>>\\n' + ns.system + '\\n<</SYS>>\\n\\n' "
                "if ns.turn == 0 else '')", "' [/INST]'", "' '", "' </s>'", "''"),
    "llama_3": ("'<|start_header_id|>system<|end_header_id|>\\n\\n' + ns.system + '<|eot_id|>'",
                "'<|start_header_id|>user<|end_header_id|>\\n\\n'", "'<|eot_id|>'",
                "'<|start_header_id|>system<|end_header_id|>\\n\\n'", "'<|eot_id|>'",
                "'<|start_header_id|>system<|end_header_id|>\\n\\n'"),
    "qwen_2": ("'<|im_start|>system\\n' + ns.system + '<|im_end|>'", "'<|im_start|>user\\n'", "'<|im_end|>'",
               "'<|im_start|>assistant\\n'", "'<|im_end|>'", "'<|im_start|>assistant\\n'"),
    "gemma": ("ns.system", "'<start_of_turn>user\\n'", "'<end_of_turn>\\n'", "'<start_of_turn>model\\n'",
              "'<end_of_turn>\\n<eos>'", "'<start_of_turn>model\\n'"),
    "phi_3": ("''", "'<|user|>\\n'", "'<|end|>\\n'", "'<|assistant|>\\n'", "'<|end|>\\n'", "'<|assistant|>\\n'"),
}


class ExportError(ValueError):
    """An export that cannot be made; the message says what to change."""


def llava_chat_template(template: ChatTemplate, *, start: str = "", image_marker: str = IMAGE_TOKEN) -> str:
    """The Jinja chat template that renders a conversation as `template.render` does (the official `get_prompt`).

    Messages are {"role": "system" | "user" | "assistant", "content": str or a list of {"type": "image"} and
    {"type": "text", "text": ...} items}; an image item becomes `image_marker` + newline, the official "<image>\\n"
    (put it first in the message that carries the picture). A leading system message replaces the template's own
    system prompt (phi_3 has none). add_generation_prompt opens the assistant's turn. start: written first, the BOS
    token when the tokenizer adds one (engines tokenise a rendered chat without adding special tokens);
    `prompt_markers` picks it and `image_marker`.
    """
    head, user_open, user_close, reply_open, reply_close, generation = _FRAMES[template.style]
    literal = json.dumps  # a JSON string is a Jinja string literal
    return (
        "{%- macro content(message) -%}"
        "{%- if message['content'] is string -%}"
        f"{{{{- message['content'] | replace({literal(IMAGE_TOKEN)}, {literal(image_marker)}) -}}}}"
        "{%- else -%}{%- for item in message['content'] -%}"
        f"{{%- if item['type'] == 'image' -%}}{{{{- {literal(image_marker + chr(10))} -}}}}"
        "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}{%- endmacro -%}"
        f"{{%- set ns = namespace(system={literal(template.system)}, turn=0) -%}}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set ns.system = content(messages[0]) -%}{%- endif -%}"
        f"{{{{- {literal(start)} + {head} -}}}}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        f"{{{{- {user_open} + content(message) + {user_close} -}}}}"
        "{%- set ns.turn = ns.turn + 1 -%}"
        "{%- elif message['role'] == 'assistant' -%}"
        f"{{{{- {reply_open} + content(message) + {reply_close} -}}}}"
        "{%- endif -%}{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{- {generation} -}}}}{{%- endif -%}}"
    )


def adds_bos(tokenizer) -> bool:
    """Whether `tokenizer` puts its BOS token first when it tokenises text."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x").input_ids[:1] == [bos]


def prompt_markers(template: ChatTemplate, tokenizer, image_token_id: int) -> tuple[str, str]:
    """What the chat template writes first and for an image, so that tokenising the whole rendered conversation
    without special tokens (`tokenizer` already holding `<image>` as `image_token_id`) gives the official piece-wise
    ids (`tokenize_with_image`) of a two-turn conversation with the image in the first turn.

    The official code tokenises each piece between images on its own, so SentencePiece starts each with its word-start
    mark; tokenising the whole prompt, Llama-style tokenizers put none after a special token (BOS, <image>). A space
    after the special token gives the same ids. Returns (start: "" or BOS or BOS + " ", "<image>" or "<image> ");
    ExportError when no choice gives the official ids."""
    prompt = template.render([(f"{IMAGE_TOKEN}\nDescribe the picture.", "A red square."), ("Make it blue.", None)])
    official = tokenize_with_image(prompt, tokenizer)
    bos = tokenizer.bos_token if adds_bos(tokenizer) else ""
    for start in (bos, bos + " ") if bos else ("",):
        for marker in (IMAGE_TOKEN, IMAGE_TOKEN + " "):
            ids = tokenizer(start + prompt.replace(IMAGE_TOKEN, marker), add_special_tokens=False).input_ids
            if [IMAGE_TOKEN_INDEX if token == image_token_id else token for token in ids] == official:
                return start, marker
    raise ExportError(f"the {type(tokenizer).__name__} of this checkpoint tokenises a whole {template.name!r} prompt "
                      "in a way no chat template can make equal to the official piece-wise tokenisation: it cannot be "
                      "exported")


def twin_token_id(tokenizer, end_ids: Iterable[int]) -> int:
    """The token whose lm_head row the `<image>` row copies: <unk>, else BOS, else the first special token that ends
    no reply (not in `end_ids`, not padding): tokens a chat model is never trained to write."""
    for token in (tokenizer.unk_token_id, tokenizer.bos_token_id):
        if token is not None:
            return token
    excluded = {*end_ids, tokenizer.pad_token_id}
    for token in sorted(tokenizer.all_special_ids):
        if token not in excluded:
            return token
    raise ExportError("the tokenizer has no <unk>, no BOS and no special token that ends nothing: nothing for the "
                      "<image> token's lm_head row to copy")


def export_dtype(dtype: str, config: dict) -> torch.dtype:
    """The weights' dtype: `dtype` (bf16/fp16/fp32), or for auto the checkpoint's own (`torch_dtype`, fp32 when it
    names no floating-point dtype)."""
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"dtype {dtype!r} is not one of {', '.join(EXPORT_DTYPES)}")
    if dtype != "auto":
        return TORCH_DTYPES[dtype]
    saved = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return {dtype_name(d): d for d in TORCH_DTYPES.values()}.get(saved, torch.float32)


def check_exportable(config: dict, path: Path) -> None:
    """ExportError unless LLaVA-HF can express the checkpoint's vision side: a two-layer GELU projector, flat patches,
    no image start/end tokens."""
    projector = config.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise ExportError(f"{path} has mm_projector_type {projector!r}; LlavaForConditionalGeneration has a two-layer "
                          "GELU projector (mlp2x_gelu, what every released LLMGA checkpoint uses): it cannot be "
                          "exported")
    if config.get("mm_patch_merge_type", "flat") != "flat" or config.get("mm_use_im_start_end", False):
        raise ExportError(f"{path} uses image start/end tokens or a patch merge other than flat, which "
                          "LlavaForConditionalGeneration does not have: it cannot be exported")


def check_out_folder(out_dir: Path, overwrite: bool) -> None:
    """ExportError when `out_dir` is a file, or a folder with files in it and `overwrite` is False."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file: give a folder to write the export in")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} already holds files: give a new or empty folder, or overwrite it "
                          "(--overwrite)")


def export_llava_hf(checkpoint_dir: str | Path, out_dir: str | Path, *, dtype: str = "auto",
                    engine: str = "transformers", template: str | None = None, clip_vision_dirs: Iterable[Path] = (),
                    allow_download: bool = False, overwrite: bool = False, max_shard_size: str = "5GB") -> Path:
    """Write the LLMGA checkpoint in `checkpoint_dir` as a `LlavaForConditionalGeneration` folder at `out_dir`.

    dtype: auto (the checkpoint's), bf16, fp16 or fp32. engine: what will serve it, transformers, vllm or sglang;
    only Gemma's export differs (see the module docstring). template: the chat template's name (None: the one the pack
    picks for the checkpoint). clip_vision_dirs / allow_download: where the vision tower is found when the checkpoint
    holds none (`load_llmga`). overwrite: replace a folder that already holds files. The folder is built beside
    `out_dir` and moved into place when complete. Returns `out_dir`. CheckpointError for a folder that is not a
    usable LLMGA checkpoint, ExportError for one LLaVA-HF cannot express.
    """
    out_dir = Path(out_dir)
    if engine not in ENGINES:
        raise ExportError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    check_out_folder(out_dir, overwrite)
    checkpoint = read_checkpoint(checkpoint_dir)
    check_exportable(checkpoint.config, checkpoint.path)
    weights_dtype = export_dtype(dtype, checkpoint.config)
    loaded = load_llmga(checkpoint.path, dtype=weights_dtype, device="cpu", clip_vision_dirs=clip_vision_dirs,
                        allow_download=allow_download)
    assistant = Assistant(loaded, template=template)
    tokenizer = loaded.tokenizer
    image_id = len(tokenizer)
    rows = loaded.model.language_model.get_input_embeddings().num_embeddings
    if rows < image_id:
        raise ExportError(f"the tokenizer of {checkpoint.path} has {image_id} tokens but the model only {rows} "
                          "embedding rows: the tokenizer files belong to another model")
    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != image_id:
        raise ExportError(f"the tokenizer of {checkpoint.path} already has a {IMAGE_TOKEN} token: it cannot be "
                          "exported")
    start, marker = prompt_markers(assistant.template, tokenizer, image_id)
    chat_template = llava_chat_template(assistant.template, start=start, image_marker=marker)
    tokenizer.chat_template = chat_template
    twin = twin_token_id(tokenizer, assistant.eos_ids())
    config = llava_config(loaded, image_id, weights_dtype)
    processor = LlavaProcessor(image_processor=clip_image_processor(loaded), tokenizer=tokenizer,
                               patch_size=config.vision_config.patch_size,
                               vision_feature_select_strategy=config.vision_feature_select_strategy,
                               chat_template=chat_template, image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    with atomic_folder(out_dir) as folder:
        write_shards(folder, llava_state_dict(loaded, image_id, twin, fold_embed_scale=engine == "transformers"),
                      max_shard_size)
        processor.save_pretrained(folder)
        check_saved_tokenizer(folder, tokenizer, assistant.template, (start, marker))
        # Readers older than transformers 5 look for the image processor in its own file.
        (folder / "preprocessor_config.json").write_text(processor.image_processor.to_json_string())
        generation_config(assistant, image_id).save_pretrained(folder)
        config.save_pretrained(folder)
    return out_dir


def check_saved_tokenizer(folder: Path, tokenizer, template: ChatTemplate, markers: tuple[str, str]) -> None:
    """Make the tokenizer saved in `folder` tokenise as `tokenizer` does, and check it: transformers 5 leaves a Llama
    tokenizer's `legacy` flag (how SentencePiece text after a special token starts) out of tokenizer_config.json,
    and reads a missing one as False, so it is written back. ExportError when the saved tokenizer still needs other
    `prompt_markers` than the chat template was written with."""
    legacy = getattr(tokenizer, "legacy", None)
    if legacy is not None:
        settings_file = folder / "tokenizer_config.json"
        write_json_atomic(settings_file, {**json.loads(settings_file.read_text()), "legacy": legacy})
    saved = load_tokenizer(folder)
    image_id = len(tokenizer) - 1
    if len(saved) != len(tokenizer) or prompt_markers(template, saved, image_id) != markers:
        raise ExportError("the tokenizer files the installed transformers writes do not tokenise prompts as the "
                          "checkpoint's tokenizer does: export with another transformers version")


def llava_config(loaded: LoadedAssistant, image_id: int, dtype: torch.dtype) -> LlavaConfig:
    """The LlavaConfig of the export: the base LLM's config with one more row than `image_id`, the vision tower's
    config, and LLaVA's settings from the checkpoint (feature layer, CLS token kept or not)."""
    text_config = loaded.checkpoint.base_config()
    text_config.vocab_size = image_id + 1
    model = loaded.model
    vision_config = model.vision_tower.config
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    keep_cls = model.select_feature == "cls_patch"
    config = LlavaConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(),
                         image_token_index=image_id, image_seq_length=patches + keep_cls,
                         projector_hidden_act="gelu",  # the exact (erf) GELU of LLaVA's mlp2x_gelu
                         vision_feature_layer=model.select_layer,
                         vision_feature_select_strategy="full" if keep_cls else "default",
                         tie_word_embeddings=bool(text_config.tie_word_embeddings))
    config.architectures = ["LlavaForConditionalGeneration"]
    config.dtype = dtype
    return config


def llava_state_dict(loaded: LoadedAssistant, image_id: int, twin: int, *,
                     fold_embed_scale: bool) -> dict[str, torch.Tensor]:
    """The assistant's weights keyed as llava-hf checkpoints, embedding and lm_head cut to `image_id` rows plus the
    `<image>` row (see the module docstring), Gemma's embedding scale folded into the projector when
    `fold_embed_scale`."""
    model = loaded.model
    language = model.language_model
    tied = bool(language.config.tie_word_embeddings)
    embeddings = language.get_input_embeddings()
    state: dict[str, torch.Tensor] = {}
    for key, tensor in language.state_dict().items():
        if key != "lm_head.weight" or not tied:
            state["language_model." + key] = tensor
    embedding_key = "language_model." + next(name for name, parameter in language.named_parameters()
                                             if parameter is embeddings.weight)
    weight = embeddings.weight.detach()[:image_id]
    image_row = weight[twin] if tied else weight.float().mean(0).to(weight.dtype)
    state[embedding_key] = torch.cat([weight, image_row[None]])
    if not tied:
        head = language.get_output_embeddings().weight.detach()[:image_id]
        state["language_model.lm_head.weight"] = torch.cat([head, head[twin][None]])
    for key, tensor in model.vision_tower.state_dict().items():
        if not key.endswith("position_ids"):
            state["vision_tower.vision_model." + key.removeprefix("vision_model.")] = tensor
    scale = getattr(embeddings, "embed_scale", None)
    for key, tensor in model.projector.state_dict().items():
        index, name = key.split(".")
        layer = {"0": "linear_1", "2": "linear_2"}[index]
        if layer == "linear_2" and fold_embed_scale and scale is not None:
            tensor = (tensor.float() * float(scale)).to(tensor.dtype)
        state[f"multi_modal_projector.{layer}.{name}"] = tensor
    return {key: tensor.detach().contiguous() for key, tensor in state.items()}


def clip_image_processor(loaded: LoadedAssistant) -> CLIPImageProcessor:
    """CLIP's preprocessing as the checkpoint's vision tower defines it (shortest side, centre crop, mean, std)."""
    processing = loaded.image_processing
    return CLIPImageProcessor(size={"shortest_edge": processing.size},
                              crop_size={"height": processing.crop_size, "width": processing.crop_size},
                              image_mean=list(processing.mean), image_std=list(processing.std),
                              resample=processing.resample, do_center_crop=True, do_convert_rgb=True)


def generation_config(assistant: Assistant, image_id: int):
    """The checkpoint's generation config with the pack's defaults: the official CLI's temperature and reply length,
    the checkpoint's top_p / top_k / repetition_penalty, every id that ends a reply as EOS, `<image>` suppressed."""
    config = assistant.loaded.model.language_model.generation_config
    config = type(config).from_dict(config.to_dict())
    end_ids = assistant.eos_ids()
    config.eos_token_id = end_ids
    if config.pad_token_id is None:
        config.pad_token_id = end_ids[0]
    config.do_sample = OFFICIAL_SETTINGS.temperature > 0
    config.temperature = OFFICIAL_SETTINGS.temperature
    config.max_new_tokens = OFFICIAL_SETTINGS.max_new_tokens
    config.suppress_tokens = [image_id]
    return config
