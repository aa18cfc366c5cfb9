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
