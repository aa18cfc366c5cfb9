"""The attention-hook interface shared by Prompt-to-Prompt controllers and the UNet bindings.

A controller (`AttentionControl`) sees the attention probabilities of every attention layer of the UNet while an
edit pass runs, and may rewrite them; after each sampling step it may also rewrite the latents (LocalBlend). The
bindings — diffusers attention processors (`llmga.edit.diffusers_attention`) and ComfyUI attention patches
(`nodes/`) — only compute q, k, v the way their UNet does and call `controlled_attention`, so the attention
arithmetic and everything a controller does is written once.

Batch layout during an edit pass: the UNet batch holds unconditional rows first and the P conditional rows last,
`[uncond..., cond_0 .. cond_{P-1}]` for P prompts (P = 2: source, target). Direct Inversion runs
`[uncond_target, cond_source, cond_target]` (the source needs no unconditional row, see
`llmga.edit.inversion.direct_inversion_edit`); plain P2P generation runs `[uncond_0, uncond_1, cond_0, cond_1]`.
Probabilities are batch-major, `[B·heads, Nq, Nk]` with row `b·heads + h`, so the conditional rows are
`probs[-P·heads:]` and prompt p owns rows `(B−P+p)·heads .. (B−P+p+1)·heads − 1`. The source's conditional rows
are never changed; unconditional rows are never changed.

Place: "down", "mid" or "up", the UNet part the layer sits in (SD1.5 order per forward: down 64² ×2, 32² ×2,
16² ×2; mid 8²; up 16² ×3, 32² ×3, 64² ×3, each a self-attention then a cross-attention layer, at 512×512).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PLACES = ("down", "mid", "up")

FastAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
"""fast(q [B,Nq,heads·d], k [B,Nk,heads·d], v [B,Nk,heads·d], heads) -> [B,Nq,heads·d], the UNet's own kernel."""


class AttentionControl:
    """Base controller: inactive outside an edit pass, and a no-op inside one.

    Lifecycle, driven by the editing loop (`llmga.edit.inversion.direct_inversion_edit`):
    `begin_edit(num_steps, latent_hw)` → for each step i: `begin_step(i)`, one UNet call, `step_callback(...)` →
    `end_edit()`. Between edits (e.g. during the inversion pass, which calls the same UNet) `active` is False and
    the bindings take the UNet's fast path untouched.

    Subclasses override `needs_probs` (which layers must be computed with explicit probabilities), `edit_probs`
    and `step_callback`. `latent_hw` lets them tell a layer's resolution from its query count: a layer with Nq
    queries has downsampling factor f where Nq = (h/f)·(w/f).
    """

    def __init__(self) -> None:
        self.active = False
        self.num_steps = 0
        self.step_index = 0
        self.latent_hw: tuple[int, int] = (0, 0)

    def begin_edit(self, num_steps: int, latent_hw: tuple[int, int]) -> None:
        """Start an edit pass of `num_steps` sampling steps on latents of spatial size latent_hw = (h, w)."""
        self.active = True
        self.num_steps = num_steps
        self.step_index = 0
        self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))
        self.reset()

    def begin_step(self, step_index: int) -> None:
        """The next UNet call belongs to sampling step `step_index` (0 = the noisiest)."""
        self.step_index = step_index

    def end_edit(self) -> None:
        """The edit pass is over (also after an error or a cancel): go inactive."""
        self.active = False

    def reset(self) -> None:
        """Clear per-edit state (stored maps); called by `begin_edit`."""

    def downsample_factor(self, num_queries: int) -> int:
        """The factor f of a layer with `num_queries` = (h/f)·(w/f) queries (1 at full latent size)."""
        h, w = self.latent_hw
        for f in (1, 2, 4, 8, 16, 32, 64):
            if -(-h // f) * -(-w // f) == num_queries:
                return f
        raise ValueError(f"no downsampling of a {h}x{w} latent has {num_queries} positions")

    def needs_probs(self, is_cross: bool, num_queries: int, place: str) -> bool:
        """Whether this layer must run with explicit probabilities (so `edit_probs` sees them)."""
        return False

    def edit_probs(self, probs: torch.Tensor, is_cross: bool, place: str, heads: int) -> torch.Tensor:
        """Rewrite probabilities [B·heads, Nq, Nk] (layout in the module docstring: the conditional rows are the last
        P·heads); returns the same shape."""
        return probs

    def step_callback(self, step_index: int, t: int, latents: torch.Tensor) -> torch.Tensor:
        """After sampling step `step_index` at timestep t: latents [P,4,h,w] (row 0 the source) -> latents."""
        return latents


class EmptyControl(AttentionControl):
    """A controller that changes nothing."""


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, heads·d] -> [B·heads, N, d], batch-major (row b·heads + h), as diffusers' `head_to_batch_dim`."""
    b, n, inner = x.shape
    return x.reshape(b, n, heads, inner // heads).permute(0, 2, 1, 3).reshape(b * heads, n, inner // heads)


def merge_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B·heads, N, d] -> [B, N, heads·d], the inverse of `split_heads`."""
    bh, n, d = x.shape
    return x.reshape(bh // heads, heads, n, d).permute(0, 2, 1, 3).reshape(bh // heads, n, heads * d)


def attention_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d) for q [B·heads, Nq, d], k [B·heads, Nk, d]; the softmax runs in float32 (as diffusers'
    `upcast_softmax`) and the result is cast back to q's dtype. Returns [B·heads, Nq, Nk]."""
    scores = torch.bmm(q.float(), k.float().transpose(1, 2)) * q.shape[-1] ** -0.5
    return scores.softmax(dim=-1).to(q.dtype)


def controlled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    *,
    is_cross: bool,
    place: str,
    control: AttentionControl | None,
    fast: FastAttention,
) -> torch.Tensor:
    """Attention of one layer under a controller: q [B,Nq,heads·d], k/v [B,Nk,heads·d] -> [B,Nq,heads·d].

    When no controller is active, or it does not need this layer's probabilities, the UNet's own `fast` kernel
    runs (so 64×64 self-attention never materialises an Nq×Nk matrix). Otherwise the probabilities are computed
    explicitly, handed to `control.edit_probs`, and applied to v.
    """
    if control is None or not control.active or not control.needs_probs(is_cross, q.shape[1], place):
        return fast(q, k, v, heads)
    probs = attention_probs(split_heads(q, heads), split_heads(k, heads))
    probs = control.edit_probs(probs, is_cross, place, heads)
    return merge_heads(torch.bmm(probs.to(v.dtype), split_heads(v, heads)), heads)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """The stock fast path: `F.scaled_dot_product_attention` on [B,N,heads·d] tensors."""
    b, nq, inner = q.shape
    d = inner // heads
    qh, kh, vh = (x.reshape(b, -1, heads, d).transpose(1, 2) for x in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(b, nq, inner)
