"""Nodes of the LLMGA assistant: load a checkpoint, chat with it (text, image, masked image, multi-turn)."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io, ui
from server import PromptServer

from ..llmga.devices import (
    ASSISTANT_ATTENTIONS,
    ASSISTANT_DTYPES,
    DEVICES,
    check_assistant_attention,
    check_assistant_dtype,
    pick_device,
)
from ..llmga.hub import RELEASED_MLLMS, resolve_model
from ..llmga.images import tensor_to_pil
from ..llmga.mllm.chat import Assistant, ChatHistory, GenerationSettings
from ..llmga.mllm.loader import load_llmga
from ..llmga.mllm.tasks import LANGUAGE_CHOICES, PLACEMENTS, TASKS
from ..llmga.mllm.templates import TEMPLATE_NAMES
from .errors import reported_as
from .managed_model import ManagedModel
from .model_folders import llmga_checkpoint_names, model_folders
from .schema import pack_schema

AssistantType = io.Custom("LLMGA_ASSISTANT")
HistoryType = io.Custom("LLMGA_HISTORY")


def _model_choices() -> list[str]:
    """Released names first (always listed, so a saved workflow stays valid once its model is downloaded; a local
    copy is found under the name), then local checkpoints that are not released ones."""
    released = [f"binxia/{name}" for name in RELEASED_MLLMS]
    known = {name.lower() for name in RELEASED_MLLMS}
    local = [name for name in llmga_checkpoint_names()
             if name.rsplit("/", 1)[-1].removeprefix("binxia--").lower() not in known]
    return released + local


class LoadAssistant(io.ComfyNode):
    """Load an LLMGA multimodal assistant from an official checkpoint folder in models/LLM, or a released checkpoint
    by name (downloaded on first use when allowed)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return pack_schema(cls, "LLMGALoadAssistant", "LLMGA Load Assistant", "assistant", inputs=[
            io.Combo.Input("model", options=_model_choices(),
                           tooltip="An LLMGA checkpoint folder in models/LLM, or a released name (binxia/…) "
                           "that is downloaded into models/LLM when missing."),
            io.Combo.Input("dtype", options=list(ASSISTANT_DTYPES), default="auto",
                           tooltip="official: as the official code, the LLM in fp16 and the CLIP vision tower in "
                           "fp32 from models/clip_vision (openai/clip-vit-large-patch14-336), not the checkpoint's "
                           "bf16 copy. auto: official on GPUs when that tower is in models/clip_vision, else bf16 "
                           "on GPUs that support it (the released weights are bf16) and fp16 on others; fp32 on "
                           "the CPU."),
            io.Combo.Input("device", options=list(DEVICES), default="auto",
                           tooltip="auto follows ComfyUI's device; cpu is slow but needs no GPU memory."),
            io.Combo.Input("quantization", options=["none", "8bit", "4bit"], default="none",
                           tooltip="8/4-bit weights through bitsandbytes (CUDA only) to save GPU memory."),
            io.Combo.Input("attention", options=list(ASSISTANT_ATTENTIONS), default="auto",
                           tooltip="auto: flash-attention 2 on a CUDA GPU when the flash-attn package is installed "
                           "in ComfyUI's Python (fp16/bf16), else PyTorch's SDPA; eager: the reference "
                           "implementation. The node shows the one used."),
            io.Combo.Input("template", options=["auto", *TEMPLATE_NAMES], default="auto",
                           tooltip="The chat template; auto picks the one the checkpoint's family was trained "
                           "with."),
            io.Boolean.Input("allow_download", default=True,
                             tooltip="Download a released checkpoint (and the CLIP vision tower) when it is not "
                             "found locally. Off, or HF_HUB_OFFLINE=1: only local files are used."),
        ], outputs=[AssistantType.Output("assistant", display_name="assistant")])

    @classmethod
    def execute(cls, model: str, dtype: str, device: str, quantization: str, attention: str, template: str,
                allow_download: bool) -> io.NodeOutput:
        with reported_as("LLMGA Load Assistant"):
            load_device = pick_device(device, default=mm.get_torch_device())
            check_assistant_dtype(dtype)
            check_assistant_attention(attention)
            # Any client may send any string: only names inside the LLM folders, or released names, are taken, and
            # the checkpoint's config.json may name no vision tower outside the clip_vision folders.
            path = resolve_model(model, model_folders("LLM"), allow_download=allow_download, allow_paths=False)
            # Unquantised weights load on the CPU; ComfyUI moves them to load_device when a Chat needs them.
            loaded = load_llmga(path, dtype=dtype, device="cpu" if quantization == "none" else load_device.type,
                                compute_device=load_device, attention=attention, quantization=quantization,
                                clip_vision_dirs=model_folders("clip_vision"), allow_download=allow_download,
                                allow_paths=False)
            assistant = Assistant(loaded, template=None if template == "auto" else template)
        # Quantised weights were placed by bitsandbytes and cannot move: no ModelPatcher for them.
        network = loaded.model if quantization == "none" else None
        return io.NodeOutput(ManagedModel(assistant, network, load_device),
                             ui=ui.PreviewText(f"{loaded.describe()}, on {load_device.type}"))


class Chat(io.ComfyNode):
    """Ask the LLMGA assistant; its reply holds a detailed generation prompt between <gen_image> tags. Connect the
    history output to a later Chat to continue the conversation."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return pack_schema(cls, "LLMGAChat", "LLMGA Chat", "assistant", inputs=[
            AssistantType.Input("assistant", tooltip="From LLMGA Load Assistant."),
            io.String.Input("message", multiline=True, default="a cat on a windowsill",
                            tooltip="Your words. For text_to_image a short prompt; for chat and edit the whole "
                            "message or instruction; inpaint/outpaint/similar_image/describe may leave it empty."),
            io.Combo.Input("task", options=list(TASKS), default="text_to_image",
                           tooltip="How the message is phrased for the model, as in its training: "
                           "text_to_image/refine_prompt add an instruction to a short prompt; inpaint, "
                           "outpaint, similar_image, edit and describe need an image; chat sends your words."),
            io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                         tooltip="Seeds the sampling and the choice of instruction phrasing."),
            io.Float.Input("temperature", default=0.2, min=0.0, max=2.0, step=0.05,
                           tooltip="0 decodes greedily (deterministic); the official default is 0.2."),
            io.Float.Input("top_p", default=0.0, min=0.0, max=1.0, step=0.05,
                           tooltip="Nucleus sampling: keep the smallest set of tokens with this probability. "
                           "0 = the checkpoint's own (its generation_config.json, as the official code: e.g. 0.8 "
                           "for Qwen2, 0.6 for Vicuna, 1.0 when it sets none)."),
            io.Int.Input("max_new_tokens", default=512, min=1, max=4096,
                         tooltip="Longest reply, in tokens (the official CLI uses 512)."),
            io.Boolean.Input("keep_loaded", default=True,
                             tooltip="Keep the assistant on the GPU after the reply (faster next time); off "
                             "frees the memory for Stable Diffusion right away."),
            io.Image.Input("image", optional=True,
                           tooltip="A picture to talk about, edit, inpaint or outpaint (the first of a batch)."),
            io.Mask.Input("mask", optional=True,
                          tooltip="For inpaint/outpaint: 1 where new content goes; the model sees those pixels "
                          "black, as in its training."),
            HistoryType.Input("history", optional=True,
                              tooltip="The conversation so far, from an earlier Chat; leave empty to start anew."),
            io.String.Input("instruction", optional=True, default="",
                            tooltip="Your own phrasing of the task instruction; empty picks one of the official "
                            "training phrasings (seeded)."),
            io.Combo.Input("placement", options=list(PLACEMENTS), default="auto", optional=True,
                           tooltip="text_to_image: put the instruction before or after your short prompt (auto: "
                           "seeded, as in training)."),
            io.Int.Input("top_k", default=0, min=0, max=1000, optional=True,
                         tooltip="Sample among this many most likely tokens. 0 = the checkpoint's own (its "
                         "generation_config.json, as the official code: 20 for Qwen2, else transformers' 50)."),
            io.Float.Input("repetition_penalty", default=0.0, min=0.0, max=2.0, step=0.05, optional=True,
                           tooltip="Above 1 makes repeating generated tokens less likely, greedy decoding "
                           "included; 1 = none. 0 = the checkpoint's own (its generation_config.json, as the official "
                           "code: 1.1 for Qwen2, else 1)."),
            io.Combo.Input("language", options=list(LANGUAGE_CHOICES), default="auto", optional=True,
                           tooltip="Language of the instruction phrasings: en, zh (the Chinese lists, for the "
                           "llmga-cn checkpoints), or auto: Chinese when an llmga-cn checkpoint is asked in "
                           "Chinese, else English."),
        ], outputs=[
            io.String.Output("reply", display_name="reply",
                             tooltip="The reply for the user, the prompt shown as '(The generation prompt: …)'."),
            io.String.Output("generation_prompt", display_name="generation prompt",
                             tooltip="The text between the first <gen_image> tags, for Stable Diffusion."),
            io.Boolean.Output("has_prompt", display_name="has prompt",
                              tooltip="Whether the reply holds a generation prompt."),
            HistoryType.Output("updated_history", display_name="history",
                               tooltip="The conversation including this turn."),
            io.String.Output("raw_reply", display_name="raw reply", tooltip="The reply exactly as generated."),
        ], hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, assistant: ManagedModel[Assistant], message: str, task: str, seed: int, temperature: float,
                top_p: float, max_new_tokens: int, keep_loaded: bool, image: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, history: ChatHistory | None = None, instruction: str = "",
                placement: str = "auto", top_k: int = 0, repetition_penalty: float = 0.0,
                language: str = "auto") -> io.NodeOutput:
        chat = assistant.model
        node_id = cls.hidden.unique_id
        progress = comfy.utils.ProgressBar(max_new_tokens)
        shown: list[str] = []

        def on_text(piece: str) -> None:
            shown.append(piece)
            progress.update(1)
            server = PromptServer.instance
            if node_id is not None and server is not None:
                server.send_progress_text("".join(shown), node_id, sid=server.client_id)

        # 0 is the widgets' "the checkpoint's own" (a number input cannot be empty).
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p or None,
                                      top_k=top_k or None, repetition_penalty=repetition_penalty or None, seed=seed)
        with reported_as("LLMGA Chat"):
            history = history or chat.new_history()
            # The turn is built (and bad input refused) before the model moves to the GPU; `reply` then generates.
            turn = chat.turn(history, task, message, image=None if image is None else tensor_to_pil(image[0]),
                             mask=mask, instruction=instruction or None, phrasing_seed=seed,
                             placement=placement if task in ("text_to_image", "refine_prompt") else "auto",
                             language=language)
            assistant.load()
            try:
                result = chat.reply(history, turn.message, image=turn.picture, settings=settings, on_text=on_text,
                                    should_stop=mm.processing_interrupted)
            finally:
                if not keep_loaded:
                    assistant.offload()
        mm.throw_exception_if_processing_interrupted()
        parsed = result.parsed
        used = f"{result.settings.describe(settings)}; phrasing {turn.language}; attention {chat.loaded.attention}"
        return io.NodeOutput(parsed.display_text, parsed.prompt(no_tag_fallback="empty"), parsed.has_prompt,
                             result.history, result.text, ui=ui.PreviewText(used))
