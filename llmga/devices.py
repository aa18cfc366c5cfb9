"""Where a model runs and in what precision, one rule per model kind, and how memory is handed back.

Every adapter (nodes, `python -m llmga`, evaluation, training tools) asks here; none decides on its own.

Automatic precision per model kind (`auto_dtype`):

| kind        | CUDA                       | MPS  | CPU  | why                                                  |
|-------------|----------------------------|------|------|------------------------------------------------------|
| `assistant` | bf16 where supported, fp16 | fp16 | fp32 | the released LLMGA weights are bf16                  |
| `sd`        | fp16                       | fp16 | fp32 | the official scripts load SD1.5 in fp16              |
| `diffrir`   | fp32                       | fp32 | fp32 | the official inference runs fp32 (a small network)   |
| `metrics`   | fp32                       | fp32 | fp32 | metric networks are compared with their references   |

An explicit `fp16` / `bf16` / `fp32` is always taken as given. Device `auto` is the host's device when the adapter
has one (ComfyUI's), else CUDA, then Apple's MPS, then the CPU.

The assistant has one more precision, `official` (`assistant_precision`): what the official builder
(llava/model/builder.py, clip_encoder.py) runs, the LLM and projector in fp16 and the CLIP tower in fp32, read from
its own folder (`mm_vision_tower`) rather than the checkpoint's bf16 copy, pixels rounded to fp16 before the tower
and its features cast to fp16 after it. Its `auto`:

| device     | CLIP tower's own folder at hand (clip_vision) | otherwise                         |
|------------|-----------------------------------------------|-----------------------------------|
| CUDA, MPS  | `official`                                    | `auto_dtype("assistant")` for all |
| CPU        | fp32 for all                                  | fp32 for all                      |

The assistant's attention (`assistant_attention`, transformers' `attn_implementation`): `auto` is flash-attention 2
where it can run (a CUDA GPU, fp16/bf16 weights, the `flash-attn` package installed, a model class that has it), else
PyTorch's SDPA; `eager` is the reference implementation. The same weights give the same tokens with each up to
rounding; the official code ran SDPA at inference (transformers' default) and flash-attention 2 in training.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch is imported by the functions, not here: the command line builds its parser from these names without torch.
DEVICES = ("auto", "cuda", "cpu", "mps")
DTYPES = ("auto", "bf16", "fp16", "fp32")
ASSISTANT_DTYPES = ("auto", "official", "bf16", "fp16", "fp32")
MODEL_KINDS = ("assistant", "sd", "diffrir", "metrics")
ASSISTANT_ATTENTIONS = ("auto", "sdpa", "flash_attention_2", "eager")


def __getattr__(name: str) -> Any:
    """`TORCH_DTYPES`: {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}, built on first use."""
    if name == "TORCH_DTYPES":
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pick_device(device: str | torch.device = "auto", *, default: torch.device | None = None) -> torch.device:
    """The torch device for `device` (auto/cuda/cpu/mps, cuda:N, or a torch.device).

    default: what `auto` means for the caller's host (ComfyUI's device); None picks CUDA, then MPS, then the CPU.
    Raises ValueError when CUDA is asked for and torch sees no CUDA GPU, or the name is unknown.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if default is not None:
            return default
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.split(":")[0] not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but torch sees no CUDA GPU: choose 'auto' or 'cpu'")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but torch sees no Apple GPU: choose 'auto' or 'cpu'")
    return torch.device(device)


def auto_dtype(kind: str, device: torch.device) -> torch.dtype:
    """The precision a model of `kind` runs in on `device` when the user leaves it to us (see the module table)."""
    import torch

    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind {kind!r} is not one of {', '.join(MODEL_KINDS)}")
    if kind in ("diffrir", "metrics") or device.type == "cpu":
        return torch.float32
    if kind == "assistant" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def pick_dtype(kind: str, dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The torch dtype for `dtype` (auto/bf16/fp16/fp32 or a torch.dtype) of a model of `kind` on `device`."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return auto_dtype(kind, device)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return __getattr__("TORCH_DTYPES")[dtype]


def device_and_dtype(kind: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto", *,
                     default_device: torch.device | None = None) -> tuple[torch.device, torch.dtype]:
    """`pick_device` then `pick_dtype` for a model of `kind`."""
    target = pick_device(device, default=default_device)
    return target, pick_dtype(kind, dtype, target)


@dataclass(frozen=True)
class AssistantPrecision:
    """The precision of each part of the assistant. language: the LLM and the projector; vision: the CLIP tower.
    official: the official builder's setting (the tower's own weights read from mm_vision_tower, pixels rounded to
    fp16 before it, as the official CLIs send `.half()` pixels to an fp32 tower)."""

    language: torch.dtype
    vision: torch.dtype
    official: bool = False


def assistant_precision(dtype: str | torch.dtype, device: torch.device, *, tower_at_hand: bool) -> AssistantPrecision:
    """The assistant's precision for `dtype` (one of ASSISTANT_DTYPES or a torch.dtype) on `device` (see the module's
    second table). tower_at_hand: whether the CLIP tower's own folder is available without a download; `auto` is
    `official` on GPUs only then. An explicit `official` is taken on any device (fp16 on the CPU is slow)."""
    import torch

    if isinstance(dtype, str):
        check_assistant_dtype(dtype)
    if dtype == "official" or (dtype == "auto" and device.type in ("cuda", "mps") and tower_at_hand):
        return AssistantPrecision(language=torch.float16, vision=torch.float32, official=True)
    chosen = pick_dtype("assistant", dtype, device)
    return AssistantPrecision(language=chosen, vision=chosen)


def check_assistant_dtype(dtype: str) -> None:
    """ValueError unless `dtype` is one of ASSISTANT_DTYPES (adapters check it before fetching a model)."""
    if dtype not in ASSISTANT_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)} or official")


def check_assistant_attention(attention: str) -> None:
    """ValueError unless `attention` is one of ASSISTANT_ATTENTIONS (adapters check it before fetching a model)."""
    if attention not in ASSISTANT_ATTENTIONS:
        raise ValueError(f"attention {attention!r} is not one of {', '.join(ASSISTANT_ATTENTIONS)}")


def flash_attention_missing(device: torch.device, dtype: torch.dtype, *, model_supports: bool = True) -> str | None:
    """Why flash-attention 2 cannot run the assistant here (one phrase), or None when it can."""
    import torch
    from transformers.utils import is_flash_attn_2_available

    if device.type != "cuda":
        return f"it runs on CUDA GPUs only and the assistant runs on {device.type}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"it needs fp16 or bf16 weights and the language model is {dtype_name(dtype)}"
    if not model_supports:
        return "this model class has no flash-attention in the installed transformers"
    if not is_flash_attn_2_available():
        return "the flash-attn package is not installed in this Python (or does not fit its torch/CUDA)"
    return None


def assistant_attention(attention: str, device: torch.device, dtype: torch.dtype, *,
                        model_supports_flash: bool = True) -> str:
    """The attn_implementation the assistant's language model runs with (see the module's last paragraph).

    attention: one of ASSISTANT_ATTENTIONS. device, dtype: where and in what precision the LLM computes.
    Raises ValueError when flash_attention_2 is asked for and cannot run, saying why (it is never fetched from the
    hub as a kernel: nothing is downloaded)."""
    check_assistant_attention(attention)
    if attention in ("sdpa", "eager"):
        return attention
    missing = flash_attention_missing(device, dtype, model_supports=model_supports_flash)
    if attention == "auto":
        return "sdpa" if missing else "flash_attention_2"
    if missing:
        raise ValueError(f"attention flash_attention_2 cannot run: {missing}; choose auto or sdpa")
    return attention


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16": the name configs (`torch_dtype`) and reports use."""
    return str(dtype).removeprefix("torch.")


def mixed_precision_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype frozen models are kept in under accelerate's `mixed_precision` (fp16 / bf16 / no)."""
    dtypes = __getattr__("TORCH_DTYPES")
    return dtypes.get(mixed_precision, dtypes["fp32"])


def free_memory() -> None:
    """Hand memory of dropped models back: collect garbage, then empty the CUDA cache when there is one."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
