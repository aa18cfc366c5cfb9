"""The reference code's prompt encodings, for `EditSettings(official=True)`.

ddpm_inversion — the official cli-sd15-editing.py and its pipeline_semantic_stable_diffusion_img2img_solver_lpw_mask.py
encode each phase its own way:
- the DiffEdit mask (`generate_mask` → `encode_prompt`): target and source with lpw at 3 chunks (its default
  max_embeddings_multiples), both to one length;
- the inversion (`invert` → `encode_text`): the source and "" as the tokenizer pads them to 77 ids without
  truncating, then cut to 77 — a prompt of more than 75 tokens keeps its first 76 and loses its end token;
- the sampling (`__call__`): target and "" with lpw at 4 chunks, "" padded to the target's length.
direct_inversion_p2p — PnPInversion's run_editing_p2p.py tokenizes with truncation to 77 ids (BOS + 75 + EOS): the
"llmga" layout with one chunk.
"""

from __future__ import annotations

import torch

from ..prompt.long_prompt import CHUNK_LENGTH, LPW_INPAINT_MAX_CHUNKS, encode_prompt_group, truncation_warning
from .ddpm import DdpmContexts
from .run import TextBinding

# generate_mask's encode_prompt(max_embeddings_multiples=3); __call__(max_embeddings_multiples=4).
MASK_CHUNKS = 3
SAMPLE_CHUNKS = LPW_INPAINT_MAX_CHUNKS
# encode_text keeps the first 77 ids: BOS and 76 content tokens of a long prompt.
INVERSION_TOKEN_LIMIT = CHUNK_LENGTH - 1
# PnPInversion: tokenizer(..., max_length=77, truncation=True), the llmga layout's single chunk.
P2P_MODE = "llmga"
P2P_CHUNKS = 1


def inversion_context(prompt: str, text: TextBinding) -> tuple[torch.Tensor, int]:
    """`encode_text(prompt)`: ([1, 77, C], content tokens cut off). The ids are BOS, the content, EOS, then padding
    up to 77, cut to the first 77."""
    content = text.tokenize(prompt)
    ids = ([text.bos, *content, text.eos] + [text.pad] * CHUNK_LENGTH)[:CHUNK_LENGTH]
    hidden, _ = text.encode(torch.tensor([ids], dtype=torch.long))
    return hidden, max(0, len(content) - INVERSION_TOKEN_LIMIT)


def official_ddpm_contexts(source_prompt: str, target_prompt: str, text: TextBinding) -> tuple[DdpmContexts, list[str]]:
    """Each phase's contexts as the official editing pipeline encodes them, and one warning per prompt and phase that
    lost tokens ("inversion: source prompt: dropped 30 tokens past the 76-token limit")."""
    options = dict(mode="lpw", bos=text.bos, eos=text.eos, pad=text.pad)
    mask = encode_prompt_group((source_prompt, target_prompt), text.tokenize, text.encode, max_chunks=MASK_CHUNKS,
                               **options)
    sample = encode_prompt_group((target_prompt, ""), text.tokenize, text.encode, max_chunks=SAMPLE_CHUNKS, **options)
    inversion_source, inversion_dropped = inversion_context(source_prompt, text)
    inversion_uncond, _ = inversion_context("", text)
    warnings = mask.truncation_warnings(("mask: source", "mask: target"))
    if inversion_dropped:
        warnings.append(truncation_warning("inversion: source", inversion_dropped, INVERSION_TOKEN_LIMIT))
    warnings += sample.truncation_warnings(("sampling: target",))
    contexts = DdpmContexts(
        mask_source=mask.encoded[0].cond, mask_target=mask.encoded[1].cond, inversion_source=inversion_source,
        inversion_uncond=inversion_uncond, target=sample.encoded[0].cond, target_uncond=sample.encoded[1].cond,
    )
    return contexts, warnings


def posterior_std(moments: torch.Tensor) -> torch.Tensor:
    """The VAE posterior's std from its moments [B, 2C, h, w] (mean, then log-variance on channels): diffusers'
    diagonal Gaussian, as `encode_image` reads it from `latent_dist` (ComfyUI's is the same); float32, unscaled."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    return DiagonalGaussianDistribution(moments.float()).std
