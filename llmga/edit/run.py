"""One edit, from a clean latent and two prompts to the edited latent and its mask, for any UNet binding.

`edit_latent` is what the diffusers pipeline (`llmga.edit.pipeline`, the CLI) and the ComfyUI node both call. The
binding supplies three things:

- `text`: the long-prompt encoder's `tokenize` / `encode` and the special ids (`TextBinding`);
- `controlled_eps(control)`: a context manager giving `eps(latents, t, context)` with every attention layer routed
  through `control` (None: stock attention) — diffusers processors or ComfyUI attention patches;
- the latent `x0` [1,4,h,w] (VAE latent × 0.18215) and, for the official DDPM mask, the VAE posterior's std.

Source, target and the empty (unconditional) prompt are encoded together (`encode_prompt_group`), so all three
contexts share one length T and batch into one UNet call per step, for prompts of up to 300 tokens. With
`official`, the prompts are encoded as the reference code does instead (`llmga.edit.official`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..prompt.long_prompt import LLMGA_MAX_CHUNKS, MODES, PromptGroup, encode_prompt_group
from .attention import AttentionControl
from .inversion import EpsFn, StepCallback, direct_inversion_edit
from .options import CONTROLLERS, METHODS

LATENT_SCALE = 8  # SD1.5 latents are 1/8 of the image

ControlledEps = Callable[[AttentionControl | None], AbstractContextManager[EpsFn]]


@dataclass(frozen=True)
class TextBinding:
    """The long-prompt encoder's interfaces (see `llmga.prompt.long_prompt`) and the tokenizer's special ids."""

    tokenize: Callable[[str], list[int]]
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    bos: int
    eos: int
    pad: int


@dataclass(frozen=True)
class EditSettings:
    """Every knob of an edit. Defaults: PnPInversion's `run_editing_p2p.py` for Direct Inversion + P2P, and the
    official `cli-sd15-editing.py` for the DDPM-inversion method."""

    method: str = "direct_inversion_p2p"
    steps: int = 50
    guidance: float = 7.5  # DI+P2P CFG; the target CFG of ddpm_inversion
    source_guidance: float = 3.5  # ddpm_inversion: CFG of the inversion pass
    skip: int = 25  # ddpm_inversion: percent of the schedule skipped at the noisy end
    mask_threshold_ratio: float = 3.0  # ddpm_inversion: DiffEdit mask clamp ratio
    use_mask: bool = True  # ddpm_inversion: gate the target guidance by the DiffEdit mask
    controller: str = "refine"  # P2P: refine (any prompts, token alignment) or replace (same word count)
    cross_replace: float = 0.4
    self_replace: float = 0.6
    reweight_words: tuple[str, ...] | None = None  # None: the target blend words (PnPInversion: ×2), (): none
    reweight_value: float = 2.0
    # LocalBlend: None (off), (source words, target words), or "auto" (the words the alignment finds changed)
    blend_words: tuple[tuple[str, ...], tuple[str, ...]] | str | None = None
    blend_threshold: float = 0.3
    blend_start: float = 0.2  # PnPInversion: LocalBlend from step int(0.2·steps) on
    prompt_mode: str = "llmga"
    max_chunks: int = LLMGA_MAX_CHUNKS
    seed: int = 0
    # The reference code's behaviour (prompt_mode and max_chunks then do not apply): for ddpm_inversion the official
    # pipeline's encodings per phase, DiffEdit on posterior samples, its last-step solver orders; for
    # direct_inversion_p2p PnPInversion's 77-token prompts. See `llmga.edit.official`.
    official: bool = False

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range and what it accepts."""
        if self.method not in METHODS:
            raise ValueError(f"method is {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.controller not in CONTROLLERS:
            raise ValueError(f"controller is {self.controller!r}; choose one of {', '.join(CONTROLLERS)}")
        if self.prompt_mode not in MODES:
            raise ValueError(f"prompt mode is {self.prompt_mode!r}; choose one of {', '.join(MODES)}")
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps is {self.steps}; use 1..1000 (the papers use 50)")
        if not 0 <= self.skip < 100:
            raise ValueError(f"skip is {self.skip}; it is a percentage of the schedule, 0..99 (official: 25)")
        if isinstance(self.blend_words, str) and self.blend_words != "auto":
            raise ValueError(f"blend words is {self.blend_words!r}; give (source words, target words) or 'auto'")
        for name in ("cross_replace", "self_replace", "blend_threshold", "blend_start"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is {getattr(self, name)}; it is a fraction in 0..1")
        if not 1 <= self.max_chunks <= 8:
            raise ValueError(f"max_chunks is {self.max_chunks}; use 1..8 (LLMGA: 4 chunks of 75 tokens)")


@dataclass
class EditResult:
    """latent: edited [1,4,h,w]; mask: [1,1,h,w] in [0,1] at latent size, the region the edit may change (LocalBlend
    or DiffEdit mask; all ones when the method has none); unchanged: the prompts were equal, nothing ran."""

    latent: torch.Tensor
    mask: torch.Tensor
    unchanged: bool = False
    warnings: list[str] = field(default_factory=list)


def check_prompts(source_prompt: str, target_prompt: str) -> bool:
    """Raise ValueError for an empty target; return True when the edit is a no-op (target equals source)."""
    if not target_prompt.strip():
        raise ValueError("the target prompt is empty: give the description of the edited image (the assistant's "
                         "reply to the instruction), or the prompt to edit towards")
    return " ".join(source_prompt.split()) == " ".join(target_prompt.split())


def encode_edit_prompts(source_prompt: str, target_prompt: str, text: TextBinding,
                        settings: EditSettings) -> PromptGroup:
    """[source, target, ""] encoded together: conds [1,T,C] of one length T (official: PnPInversion's 77 ids)."""
    from .official import P2P_CHUNKS, P2P_MODE

    mode, chunks = (P2P_MODE, P2P_CHUNKS) if settings.official else (settings.prompt_mode, settings.max_chunks)
    return encode_prompt_group((source_prompt, target_prompt, ""), text.tokenize, text.encode, mode=mode,
                               bos=text.bos, eos=text.eos, pad=text.pad, max_chunks=chunks)


def build_controller(group: PromptGroup, prompts: tuple[str, str], text: TextBinding,
                     settings: EditSettings) -> AttentionControl:
    """The Prompt-to-Prompt controller the settings ask for (refine/replace, reweight, LocalBlend)."""
    from .p2p import build_p2p_controller

    return build_p2p_controller(
        group, text.tokenize, prompts=prompts, method=settings.controller, cross_replace=settings.cross_replace,
        self_replace=settings.self_replace, reweight_words=settings.reweight_words,
        reweight_value=settings.reweight_value, blend_words=settings.blend_words,
        blend_threshold=settings.blend_threshold, blend_start=settings.blend_start,
    )


def edit_latent(
    x0: torch.Tensor,
    source_prompt: str,
    target_prompt: str,
    *,
    text: TextBinding,
    controlled_eps: ControlledEps,
    settings: EditSettings,
    on_step: StepCallback | None = None,
    x0_std: torch.Tensor | None = None,
) -> EditResult:
    """Edit one clean latent x0 [1,4,h,w] from `source_prompt` (what it shows) towards `target_prompt`.

    x0_std: [1,4,h,w], the VAE posterior's std × scaling factor, which the official DDPM mask samples with (used with
    `settings.official` only; None: the mask starts from x0 itself).
    """
    settings.check()
    if x0.ndim != 4 or x0.shape[0] != 1 or x0.shape[1] != 4:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}, expected [1, 4, h, w]: edit one SD1.5 latent at a time")
    full = torch.ones(1, 1, *x0.shape[-2:], dtype=x0.dtype, device=x0.device)
    if check_prompts(source_prompt, target_prompt):
        return EditResult(latent=x0, mask=torch.zeros_like(full), unchanged=True)
    if settings.method == "ddpm_inversion":
        return _ddpm_edit(x0, source_prompt, target_prompt, text, controlled_eps, settings, on_step, x0_std)

    group = encode_edit_prompts(source_prompt, target_prompt, text, settings)
    source, target, uncond = (e.cond.to(x0.device, x0.dtype) for e in group.encoded)
    warnings = group.truncation_warnings(("source", "target"))
    control = build_controller(group, (source_prompt, target_prompt), text, settings)
    with controlled_eps(control) as eps:
        edited, _ = direct_inversion_edit(x0, source, target, uncond, eps, settings.steps, settings.guidance,
                                          control, on_step=on_step)
    mask = getattr(control, "mask", None)
    mask = full if mask is None else mask.to(x0.device, x0.dtype)
    return EditResult(latent=edited, mask=mask, warnings=warnings)


def _ddpm_edit(x0: torch.Tensor, source_prompt: str, target_prompt: str, text: TextBinding,
               controlled_eps: ControlledEps, settings: EditSettings, on_step: StepCallback | None,
               x0_std: torch.Tensor | None) -> EditResult:
    """`edit_latent` for ddpm_inversion: the prompts encoded once for every phase, or each phase as the official
    pipeline encodes it."""
    from .ddpm import DdpmContexts, ddpm_inversion_edit
    from .official import official_ddpm_contexts

    if settings.official:
        contexts, warnings = official_ddpm_contexts(source_prompt, target_prompt, text)
    else:
        group = encode_edit_prompts(source_prompt, target_prompt, text, settings)
        contexts = DdpmContexts.shared(*(e.cond for e in group.encoded))
        warnings = group.truncation_warnings(("source", "target"))
    contexts = contexts.to(x0.device, x0.dtype)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    with controlled_eps(None) as eps:
        edited, mask = ddpm_inversion_edit(
            x0, contexts, eps, steps=settings.steps, skip=settings.skip, source_guidance=settings.source_guidance,
            target_guidance=settings.guidance, mask_threshold_ratio=settings.mask_threshold_ratio,
            use_mask=settings.use_mask, generator=generator, on_step=on_step,
            x0_std=x0_std if settings.official else None, official_last_step=settings.official,
        )
    return EditResult(latent=edited, mask=mask.to(x0.device, x0.dtype), warnings=warnings)


def pad_to_latent_multiple(image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """image [B,H,W,C] -> (image padded at the bottom/right by edge replication to multiples of 8, (H, W))."""
    h, w = image.shape[1:3]
    pad_h, pad_w = -h % LATENT_SCALE, -w % LATENT_SCALE
    if pad_h or pad_w:
        image = F.pad(image.movedim(-1, 1), (0, pad_w, 0, pad_h), mode="replicate").movedim(1, -1)
    return image, (h, w)


def latent_mask_to_image(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """mask [1,1,h,w] at latent size -> [1,H,W] at image size (nearest, then cropped to size = (H, W))."""
    h, w = mask.shape[-2:]
    up = F.interpolate(mask.float(), size=(h * LATENT_SCALE, w * LATENT_SCALE), mode="nearest")
    return up[:, 0, : size[0], : size[1]]
