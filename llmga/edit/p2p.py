"""Prompt-to-Prompt attention controllers for Direct Inversion editing, on long prompts.

The semantics are those of google/prompt-to-prompt and PnPInversion (`models/p2p/attention_control.py`), with
every 77 replaced by the encoding length T (`llmga.prompt.long_prompt`):

- cross-attention, inside the cross-replace window: the target's maps are rebuilt from the source's (Refine:
  aligned tokens take the source token's map, new tokens keep their own; Replace: swapped words take the source
  word's map); AttentionReweight then scales chosen target tokens' columns;
- self-attention, inside the self-replace window and only in layers at 1/2 latent resolution or coarser: the
  target's maps become the source's;
- LocalBlend, after each sampling step from `start` on: a mask from the blend words' cross-attention (summed
  over the steps so far) confines the edit: x_t = x_src + mask·(x_t − x_src).

Controllers plug into the hook of `llmga.edit.attention` (a batch ending with the conditional rows [source,
target], probabilities [B·heads, Nq, Nk] batch-major); they only ever write the target's conditional rows, so
the source branch of Direct Inversion is reproduced exactly. Layers they do not touch report `needs_probs` False
and keep the UNet's fast kernel (the full-resolution self-attention is never materialised).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..prompt.long_prompt import PromptGroup, Tokenize
from .alignment import changed_token_positions, refinement_mapper, replacement_mapper, word_positions
from .attention import AttentionControl

Window = float | tuple[float, float]
"""A step window as fractions of the sampling steps: `e` means [0, e), `(s, e)` means [s, e)."""

# PnPInversion run_editing_p2p.py: cross_replace_steps=0.4, self_replace_steps=0.6, AttentionReweight ×2.
DEFAULT_CROSS_REPLACE = 0.4
DEFAULT_SELF_REPLACE = 0.6
DEFAULT_REWEIGHT = 2.0
# attention_control.py LocalBlend: th=(.3, .3), start_blend=0.2, a 3×3 max-pool (k=1).
DEFAULT_BLEND_THRESHOLD = 0.3
DEFAULT_BLEND_START = 0.2
BLEND_POOL = 3
# LocalBlend reads `down_cross[2:4] + up_cross[:3]`: at 512² exactly the down/up cross layers at 1/4 latent size.
BLEND_MAP_FACTOR = 4
# replace_self_attention replaces only maps with Nq <= 32² (at 512²): layers at 1/2 latent size or coarser.
SELF_REPLACE_MIN_FACTOR = 2

METHODS = ("refine", "replace")
# The controllers edit one target: the conditional rows are [source, target].
PROMPTS = 2


def step_window(window: Window, count: int, name: str = "window") -> range:
    """The steps [int(s·count), int(e·count)) of a window given as `e` or `(s, e)`, with 0 <= s <= e <= 1."""
    start, end = (0.0, window) if isinstance(window, int | float) else window
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"{name} is {window!r}, expected a fraction e or a pair (s, e) with 0 <= s <= e <= 1")
    return range(int(start * count), int(end * count))


class _DeviceConstant:
    """A constant tensor, converted once to the device and dtype it is used with."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self._cached = tensor

    def like(self, ref: torch.Tensor) -> torch.Tensor:
        dtype = ref.dtype if self.tensor.is_floating_point() else self.tensor.dtype
        if self._cached.device != ref.device or self._cached.dtype != dtype:
            self._cached = self.tensor.to(ref.device, dtype)
        return self._cached


class AttentionStore(AttentionControl):
    """Sums the cross-attention maps that LocalBlend reads: down and up layers at 1/4 latent resolution,
    conditional rows only, over steps, layers and heads.

    `maps`: [P, Nq, T] float32 (P = 2 prompts, Nq = ⌈h/f⌉·⌈w/f⌉ positions) or None before the first stored layer;
    `blend_factor` f: 4 (PnPInversion's 16×16 maps at 512², `down_cross[2:4] + up_cross[:3]`). A UNet without
    down/up cross-attention at 1/4 (small or unusual models) gets its coarsest such layers instead: the first step
    stores every factor, and `settle` keeps one after it.
    Summing layers and heads in place of the official per-layer store changes nothing LocalBlend computes:
    it averages over heads·layers, and its per-image max normalisation cancels the constant.
    """

    def __init__(self) -> None:
        super().__init__()
        self.maps: torch.Tensor | None = None
        self.blend_factor: int | None = None
        self._first_step: dict[int, torch.Tensor] = {}

    def reset(self) -> None:
        self.maps = None
        self.blend_factor = None
        self._first_step = {}

    def is_store_layer(self, is_cross: bool, num_queries: int, place: str) -> bool:
        if not is_cross or place not in ("down", "up"):
            return False
        return self.blend_factor is None or self.downsample_factor(num_queries) == self.blend_factor

    def needs_probs(self, is_cross: bool, num_queries: int, place: str) -> bool:
        return self.is_store_layer(is_cross, num_queries, place)

    def edit_probs(self, probs: torch.Tensor, is_cross: bool, place: str, heads: int) -> torch.Tensor:
        if self.is_store_layer(is_cross, probs.shape[1], place):
            self.store(probs, heads)
        return probs

    def store(self, probs: torch.Tensor, heads: int) -> None:
        """Add the conditional rows of probs [B·heads, Nq, T] (the last PROMPTS·heads) to `maps`."""
        conditional = probs[-PROMPTS * heads :]
        summed = conditional.reshape(PROMPTS, heads, *probs.shape[1:]).float().sum(dim=1)
        if self.blend_factor is None:
            factor = self.downsample_factor(probs.shape[1])
            previous = self._first_step.get(factor)
            self._first_step[factor] = summed if previous is None else previous + summed
            return
        self.maps = summed if self.maps is None else self.maps + summed

    def settle(self) -> None:
        """After the first step: keep the maps at factor 4, or at the coarsest factor the UNet has."""
        if self.blend_factor is None and self._first_step:
            factors = self._first_step
            self.blend_factor = BLEND_MAP_FACTOR if BLEND_MAP_FACTOR in factors else max(factors)
            self.maps = factors[self.blend_factor]
            self._first_step = {}


class LocalBlend:
    """Confine the edit to where the blend words attend (attention_control.py `LocalBlend`).

    source_positions / target_positions: positions (of T) of the blend words in each prompt. After step i >=
    int(start·steps): m_p = Σ_words maps[p] → 3×3 max-pool → nearest upsample to the latent h×w → / its max →
    > threshold; mask = m_src ∪ m_tgt; latents[1] = x_src + mask·(x_tgt − x_src). `mask` holds the last mask,
    [1,1,h,w] float 0/1 (zeros before start).
    """

    def __init__(
        self,
        source_positions: Sequence[int],
        target_positions: Sequence[int],
        length: int,
        *,
        threshold: float = DEFAULT_BLEND_THRESHOLD,
        start: float = DEFAULT_BLEND_START,
    ) -> None:
        if not 0.0 <= start <= 1.0:
            raise ValueError(f"blend start is {start}, expected a fraction of the steps in [0, 1]")
        words = torch.zeros(2, length)
        words[0, list(source_positions)] = 1.0
        words[1, list(target_positions)] = 1.0
        self.words = _DeviceConstant(words)
        self.threshold = threshold
        self.start = start
        self.start_step = 0
        self.mask = torch.zeros(1, 1, 0, 0)

    def begin_edit(self, num_steps: int, latent_hw: tuple[int, int]) -> None:
        self.start_step = int(self.start * num_steps)
        self.mask = torch.zeros(1, 1, *latent_hw)

    def __call__(self, step_index: int, latents: torch.Tensor, maps: torch.Tensor | None,
                 factor: int | None = BLEND_MAP_FACTOR) -> torch.Tensor:
        """latents [2,4,h,w] (source, target); maps [2, Nq, T] from `AttentionStore` at downsampling `factor`
        -> blended latents."""
        if step_index < self.start_step:
            return latents
        h, w = latents.shape[-2:]
        factor = factor or BLEND_MAP_FACTOR
        grid = (-(-h // factor), -(-w // factor))
        if maps is None or maps.shape[1] != grid[0] * grid[1]:
            raise RuntimeError(
                f"LocalBlend needs cross-attention maps at {grid[0]}x{grid[1]} (1/{factor} of the latent): the UNet "
                "has no cross-attention in its down/up blocks, or the attention binding skips layers"
            )
        per_prompt = (maps * self.words.like(maps)[:, None, :]).sum(dim=-1).reshape(2, 1, *grid)
        pooled = F.max_pool2d(per_prompt, BLEND_POOL, stride=1, padding=BLEND_POOL // 2)
        upsampled = F.interpolate(pooled, size=(h, w))
        peak = upsampled.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(upsampled.dtype).tiny)
        regions = (upsampled / peak) > self.threshold
        mask = (regions[:1] | regions).to(latents.dtype)
        self.mask = mask[1:].float().cpu()
        return latents[:1] + mask * (latents - latents[:1])


class AttentionEdit(AttentionStore):
    """Base of the editing controllers: step windows, self-attention replacement, store and LocalBlend.

    length: T, the encoding length (cross-attention key count). cross_replace: window of the cross-attention edit
    (as the official alpha, over steps + 1: 0.4 of 50 steps is steps [0, 20)). self_replace: window of the
    self-attention replacement (over steps: 0.6 of 50 is [0, 30)). Subclasses define `replace_cross`.
    """

    def __init__(
        self,
        length: int,
        *,
        cross_replace: Window = DEFAULT_CROSS_REPLACE,
        self_replace: Window = DEFAULT_SELF_REPLACE,
        local_blend: LocalBlend | None = None,
    ) -> None:
        super().__init__()
        step_window(cross_replace, 1, "cross_replace")
        step_window(self_replace, 1, "self_replace")
        self.length = length
        self.cross_replace = cross_replace
        self.self_replace = self_replace
        self.local_blend = local_blend
        self.cross_steps = range(0)
        self.self_steps = range(0)

    def begin_edit(self, num_steps: int, latent_hw: tuple[int, int]) -> None:
        # attention_control.py: cross alpha has num_steps + 1 rows, the self window counts num_steps.
        self.cross_steps = step_window(self.cross_replace, num_steps + 1, "cross_replace")
        self.self_steps = step_window(self.self_replace, num_steps, "self_replace")
        if self.local_blend is not None:
            self.local_blend.begin_edit(num_steps, latent_hw)
        super().begin_edit(num_steps, latent_hw)

    def replace_cross(self, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The target's new cross-attention: base (source) and target [heads, Nq, T] -> [heads, Nq, T]."""
        raise NotImplementedError

    def _stores(self, is_cross: bool, num_queries: int, place: str) -> bool:
        return self.local_blend is not None and self.is_store_layer(is_cross, num_queries, place)

    def _replaces_self(self, num_queries: int) -> bool:
        return self.step_index in self.self_steps and self.downsample_factor(num_queries) >= SELF_REPLACE_MIN_FACTOR

    def needs_probs(self, is_cross: bool, num_queries: int, place: str) -> bool:
        if is_cross:
            return self.step_index in self.cross_steps or self._stores(is_cross, num_queries, place)
        return self._replaces_self(num_queries)

    def edit_probs(self, probs: torch.Tensor, is_cross: bool, place: str, heads: int) -> torch.Tensor:
        """Rewrite the target's conditional rows (the last `heads` rows) of probs [B·heads, Nq, Nk] in place.

        The batch ends with the conditional rows [cond_source, cond_target] (B = 3 for Direct Inversion, 4 for
        [uncond_src, uncond_tgt, cond_src, cond_tgt]); returns probs.
        """
        rows = probs.shape[0]
        if rows % heads or rows < PROMPTS * heads:
            raise ValueError(
                f"P2P control expects a batch ending with [cond_source, cond_target] ({heads} heads each), got"
                f" {rows} rows: run source and target in one UNet call"
            )
        num_queries = probs.shape[1]
        source, target = slice(rows - 2 * heads, rows - heads), slice(rows - heads, rows)
        if is_cross and self.step_index in self.cross_steps:
            if probs.shape[2] != self.length:
                raise ValueError(
                    f"cross-attention has {probs.shape[2]} keys but the prompts were encoded to {self.length}:"
                    " build the controller from the prompt group that made the contexts"
                )
            probs[target] = self.replace_cross(probs[source], probs[target])
        elif not is_cross and self._replaces_self(num_queries):
            probs[target] = probs[source]
        if self._stores(is_cross, num_queries, place):
            self.store(probs, heads)  # after the edit: the official store holds the edited maps (in-place writes)
        return probs

    @property
    def mask(self) -> torch.Tensor | None:
        """LocalBlend's last mask [1,1,h,w] float 0/1 (zeros before its start), or None without LocalBlend."""
        return None if self.local_blend is None else self.local_blend.mask

    def step_callback(self, step_index: int, t: int, latents: torch.Tensor) -> torch.Tensor:
        if self.local_blend is None:
            return latents
        self.settle()
        return self.local_blend(step_index, latents, self.maps, self.blend_factor)


class AttentionRefine(AttentionEdit):
    """Words added or removed: new = base[..., mapper]·alphas + target·(1 − alphas).

    mapper [T] int64 and alphas [T] from `llmga.edit.alignment.refinement_mapper` (−1 = inserted token).
    """

    def __init__(self, mapper: torch.Tensor, alphas: torch.Tensor, **options) -> None:
        super().__init__(mapper.shape[0], **options)
        own = torch.arange(mapper.shape[0])
        self.mapper = _DeviceConstant(torch.where(mapper < 0, own, mapper))  # alpha 0 there: any column works
        self.alphas = _DeviceConstant(alphas)

    def replace_cross(self, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        alphas = self.alphas.like(target)
        return base.index_select(-1, self.mapper.like(base)) * alphas + target * (1 - alphas)


class AttentionReplace(AttentionEdit):
    """Words swapped: new[n] = Σ_w base[w]·mapper[w, n], mapper [T, T] from `alignment.replacement_mapper`."""

    def __init__(self, mapper: torch.Tensor, **options) -> None:
        super().__init__(mapper.shape[0], **options)
        self.mapper = _DeviceConstant(mapper)

    def replace_cross(self, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return base @ self.mapper.like(base)


class AttentionReweight(AttentionEdit):
    """Scale chosen target tokens' attention: new = (prev.replace_cross(base, target) or base)·equalizer.

    equalizer [T]: 1 except the value at the chosen tokens. prev: the Refine/Replace controller whose map comes
    first (its own windows and blend are not used). Acts only inside this controller's cross-replace window.
    """

    def __init__(self, equalizer: torch.Tensor, prev: AttentionEdit | None = None, **options) -> None:
        super().__init__(equalizer.shape[0], **options)
        self.equalizer = _DeviceConstant(equalizer)
        self.prev = prev

    def replace_cross(self, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mapped = base if self.prev is None else self.prev.replace_cross(base, target)
        return mapped * self.equalizer.like(mapped)


def _as_words(words: str | Sequence[str]) -> list[str]:
    return [words] if isinstance(words, str) else list(words)


def build_p2p_controller(
    group: PromptGroup,
    tokenize: Tokenize,
    *,
    prompts: tuple[str, str] | None = None,
    method: str = "refine",
    cross_replace: Window = DEFAULT_CROSS_REPLACE,
    self_replace: Window = DEFAULT_SELF_REPLACE,
    blend_words: tuple[str | Sequence[str], str | Sequence[str]] | str | None = None,
    blend_threshold: float = DEFAULT_BLEND_THRESHOLD,
    blend_start: float = DEFAULT_BLEND_START,
    reweight_words: str | Sequence[str] | None = None,
    reweight_value: float = DEFAULT_REWEIGHT,
) -> AttentionEdit:
    """The P2P controller for editing the source prompt into the target, with PnPInversion's defaults.

    group: `encode_prompt_group([source, target, uncond], ...)` (or [source, target]), whose conds are the
    contexts of the edit; T = group.length. tokenize: the `tokenize(text) -> content ids` the group was encoded
    with (used to find words). prompts: the (source, target) texts; "replace" needs them (it compares words),
    otherwise they only name the prompt in errors. method: "refine" (alignment; any prompts) or "replace" (same
    word count).
    cross_replace / self_replace: step windows (`Window`). blend_words: None (no LocalBlend), (source words,
    target words) (each a word or a list), or "auto" (the tokens the alignment marks as removed / inserted).
    reweight_words: target words whose attention is multiplied by reweight_value inside the cross window; None
    means the target blend words (PnPInversion reweights its blend word ×2), () none.
    Returns an AttentionEdit to pass as `control` to `direct_inversion_edit`.
    """
    if method not in METHODS:
        raise ValueError(f"method is {method!r}, expected one of {METHODS}")
    if len(group.tokens) < 2:
        raise ValueError(f"the prompt group has {len(group.tokens)} prompts, expected [source, target(, uncond)]")
    source_ids, target_ids = group.tokens[0].ids, group.tokens[1].ids
    for role, ids in (("source", source_ids), ("target", target_ids)):
        if not ids:
            raise ValueError(f"the {role} prompt is empty: P2P editing needs a description of the image")
    if method == "replace" and prompts is None:
        raise ValueError("method 'replace' compares the prompts word by word: pass prompts=(source, target)")
    source, target = prompts if prompts is not None else ("", "")
    mode, length = group.mode, group.length
    windows = {"cross_replace": cross_replace, "self_replace": self_replace}

    def find(words: Sequence[str], ids: Sequence[int], text: str, role: str) -> list[int]:
        return sorted({p for word in words for p in word_positions(word, ids, tokenize, mode, role=role, prompt=text)})

    blend_positions: tuple[list[int], list[int]] | None = None
    if blend_words == "auto":
        blend_positions = changed_token_positions(source_ids, target_ids, mode)
    elif isinstance(blend_words, str):
        raise ValueError(f"blend_words is {blend_words!r}: pass (source words, target words), 'auto' or None")
    elif blend_words is not None:
        blend_positions = (
            find(_as_words(blend_words[0]), source_ids, source, "source"),
            find(_as_words(blend_words[1]), target_ids, target, "target"),
        )
    local_blend = None
    if blend_positions is not None:
        local_blend = LocalBlend(*blend_positions, length, threshold=blend_threshold, start=blend_start)
    if reweight_words is None:
        reweight_positions = blend_positions[1] if blend_positions is not None else []
    else:
        reweight_positions = find(_as_words(reweight_words), target_ids, target, "target")

    # With reweighting, the outer AttentionReweight drives the windows and LocalBlend; the mapper only maps.
    mapper_blend = None if reweight_positions else local_blend
    if method == "refine":
        mapped: AttentionEdit = AttentionRefine(
            *refinement_mapper(source_ids, target_ids, length, mode), local_blend=mapper_blend, **windows
        )
    else:
        mapper = replacement_mapper(source, target, source_ids, target_ids, tokenize, length, mode)
        mapped = AttentionReplace(mapper, local_blend=mapper_blend, **windows)
    if not reweight_positions:
        return mapped
    equalizer = torch.ones(length)
    equalizer[reweight_positions] = reweight_value
    return AttentionReweight(equalizer, prev=mapped, local_blend=local_blend, **windows)
