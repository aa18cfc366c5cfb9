"""Long-prompt encoding for SD1.5: prompts longer than 75 tokens through the 77-token CLIP text encoder.

One algorithm, written against two small interfaces so that transformers (`llmga.prompt.clip_binding`) and
ComfyUI's CLIP object can both drive it:

- `tokenize(text) -> list[int]`: the content ids of `text`, without BOS/EOS and without truncation;
- `encode(ids LongTensor [n, 77]) -> (hidden [n, 77, C], pooled [n, C'])`: the text encoder on n chunks
  (for SD1.5: the last hidden state after the final layer norm, and the pooled output).

Two modes:

`"llmga"` (default): the encoding LLMGA's SD1.5 UNet was trained with (llmga/diffusers/my_utils/util.py,
`get_text_index` + `get_unweighted_text_embeddings` with its default `no_boseos_middle=True`, as
train_text_to_image*.py call them). The text is tokenized whole; no weight syntax (brackets are plain text).
At most 300 content tokens are kept. With L the longest content length among the prompts encoded together
(positive and negative, like the prompts of one training batch), k = max(1, min(4, ceil(L / 75))). Each prompt
becomes the row `BOS + content + pad... + EOS` of 75k + 2 ids, cut into k windows of 77 ids that overlap by
two; the first and last id of every window are overwritten with BOS and EOS, so window i holds content
75i .. 75i + 74. After encoding, window 0 keeps `[:-1]`, middle windows `[1:-1]`, the last `[1:]`:
T = 75k + 2 positions (152 / 227 / 302 for k = 2 / 3 / 4). For k = 1 this is the standard
`padding="max_length"` encoding; the empty prompt is `BOS + EOS * 76`.

`"lpw"`: the official inference encoding (`get_weighted_text_embeddings` of the lpw pipelines, used by
cli-sd15.py through diffusers' community `lpw_stable_diffusion`, and by the in-repo inpainting and editing
pipelines), with its default `no_boseos_middle=False`. The prompt is split into weighted fragments
(`llmga.prompt.weighting`), each fragment tokenized on its own; at most 75 * max_chunks content tokens are
kept (3 chunks = 225 for T2I, 4 = 300 for inpainting / editing). Chunking is the same as above, but every
window keeps its BOS and EOS: T = 77k. Then every position is scaled by its weight (content tokens by their
fragment's weight; BOS, EOS and padding by 1.0) and the whole [T, C] tensor is rescaled so that its mean
equals the unweighted mean (`previous_mean / current_mean`, over all T * C values, computed in float32 and
cast back, as the official code does). The negative prompt is weighted and renormalised the same way. With
no brackets the weighting is an exact no-op.

In both modes the negative prompt is padded to the positive's k (never repeated), the pad id is the
tokenizer's `pad_token_id` (EOS for SD1.5), and the pooled output of each prompt is that of its FIRST chunk
(what ComfyUI's SD1.5 conditioning carries; SD1.5's UNet does not read it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .weighting import parse_prompt_weights

Tokenize = Callable[[str], list[int]]
EncodeChunks = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

MODES = ("llmga", "lpw")

# CLIP ViT-L/14 text context of SD1.5 (tokenizer.model_max_length in the official code); 75 content ids
# fit between BOS and EOS.
CHUNK_LENGTH = 77
CHUNK_CONTENT = CHUNK_LENGTH - 2

# SD1.5 CLIP tokenizer ids: <|startoftext|>, <|endoftext|> (also its pad token).
SD15_BOS = 49406
SD15_EOS = 49407

# my_utils/util.py get_text_index(max_embeddings_multiples=4): training kept up to 300 content tokens.
LLMGA_MAX_CHUNKS = 4
# cli-sd15.py calls the community lpw_stable_diffusion pipeline with its default max_embeddings_multiples=3.
LPW_T2I_MAX_CHUNKS = 3
# pipeline_stable_diffusion_inpaint_lpw.py and the editing pipeline's __call__ default max_embeddings_multiples=4.
LPW_INPAINT_MAX_CHUNKS = 4

_DEFAULT_MAX_CHUNKS = {"llmga": LLMGA_MAX_CHUNKS, "lpw": LPW_T2I_MAX_CHUNKS}


@dataclass(frozen=True)
class PromptTokens:
    """One prompt's content tokens after truncation.

    ids: content ids, no BOS/EOS, at most 75 * max_chunks of them.
    weights: one weight per id (lpw mode), or None (llmga mode: unweighted).
    dropped: how many content tokens past the limit were cut off.
    """

    ids: tuple[int, ...]
    weights: tuple[float, ...] | None
    dropped: int


@dataclass(frozen=True)
class ChunkedPrompt:
    """One prompt as the text encoder sees it.

    chunks: k windows of 77 ids, each `BOS + 75 ids + EOS`.
    weights: one weight per output position (77k, lpw mode), or None (llmga mode).
    """

    chunks: tuple[tuple[int, ...], ...]
    weights: tuple[float, ...] | None


@dataclass(frozen=True)
class EncodedPrompt:
    """cond: [1, T, C] cross-attention context; pooled: [1, C'] pooled output of the first chunk."""

    cond: torch.Tensor
    pooled: torch.Tensor


@dataclass(frozen=True)
class LongPromptResult:
    """Positive and negative encodings of equal length T, and what was cut off.

    chunks: k, the number of 77-id windows per prompt; token_limit: 75 * max_chunks content tokens per prompt.
    """

    positive: EncodedPrompt
    negative: EncodedPrompt
    dropped_positive: int
    dropped_negative: int
    chunks: int
    mode: str
    token_limit: int

    @property
    def length(self) -> int:
        """T, the sequence length of both conds."""
        return self.positive.cond.shape[1]

    def truncation_warnings(self) -> list[str]:
        """One message per prompt that lost tokens: "positive prompt: dropped 37 tokens past the 300-token limit"."""
        counts = (("positive", self.dropped_positive), ("negative", self.dropped_negative))
        return [truncation_warning(name, n, self.token_limit) for name, n in counts if n]

    def summary(self) -> str:
        """What was encoded, in one line: "llmga: 4 chunks, 302 positions"."""
        return encoding_summary(self.mode, self.chunks, self.length)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def truncation_warning(name: str, dropped: int, token_limit: int) -> str:
    """"positive prompt: dropped 37 tokens past the 300-token limit" ("1 token" for one)."""
    return f"{name} prompt: dropped {_count(dropped, 'token')} past the {token_limit}-token limit"


def encoding_summary(mode: str, chunks: int, length: int) -> str:
    """"llmga: 4 chunks, 302 positions": the mode, k and T of prompts encoded together."""
    return f"{mode}: {_count(chunks, 'chunk')}, {_count(length, 'position')}"


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown long-prompt mode {mode!r}; expected one of {', '.join(MODES)}")


def resolve_max_chunks(mode: str, max_chunks: int | None) -> int:
    """The chunk cap: `max_chunks`, or the mode's official default (llmga 4, lpw 3) when None."""
    _check_mode(mode)
    if max_chunks is None:
        return _DEFAULT_MAX_CHUNKS[mode]
    if isinstance(max_chunks, bool) or not isinstance(max_chunks, int) or max_chunks < 1:
        raise ValueError(f"max_chunks must be a positive integer, got {max_chunks!r}")
    return max_chunks


def tokenize_prompt(
    text: str, tokenize: Tokenize, *, mode: str = "llmga", max_chunks: int | None = None
) -> PromptTokens:
    """Tokenize one prompt and cut it to 75 * max_chunks content tokens.

    llmga: `tokenize(text)` on the whole text, no weights. lpw: `tokenize` on each weighted fragment of
    `parse_prompt_weights(text)`, every token carrying its fragment's weight.
    """
    limit = CHUNK_CONTENT * resolve_max_chunks(mode, max_chunks)
    if mode == "llmga":
        ids = list(tokenize(text))
        return PromptTokens(ids=tuple(ids[:limit]), weights=None, dropped=max(0, len(ids) - limit))
    ids, weights = [], []
    for fragment, weight in parse_prompt_weights(text):
        fragment_ids = list(tokenize(fragment))
        ids += fragment_ids
        weights += [weight] * len(fragment_ids)
    return PromptTokens(ids=tuple(ids[:limit]), weights=tuple(weights[:limit]), dropped=max(0, len(ids) - limit))


def chunk_count(prompts: Sequence[PromptTokens]) -> int:
    """k = max(1, ceil(L / 75)) for L the longest content length among `prompts` (already truncated)."""
    longest = max((len(p.ids) for p in prompts), default=0)
    return max(1, (longest - 1) // CHUNK_CONTENT + 1)


def chunk_prompt_tokens(
    prompts: Sequence[PromptTokens],
    *,
    bos: int = SD15_BOS,
    eos: int = SD15_EOS,
    pad: int | None = None,
) -> list[ChunkedPrompt]:
    """Cut prompts encoded together into the same number k of 77-id windows (see the module docstring).

    Inputs: truncated prompts; the BOS, EOS and pad ids (pad None: EOS). Output: one ChunkedPrompt per prompt,
    with k windows each; weights per output position (77k, BOS/EOS/padding at 1.0) when the prompts carry them.
    """
    pad = eos if pad is None else pad
    k = chunk_count(prompts)
    out = []
    for prompt in prompts:
        body = list(prompt.ids) + [pad] * (CHUNK_CONTENT * k - len(prompt.ids))
        chunks = tuple((bos, *body[i * CHUNK_CONTENT : (i + 1) * CHUNK_CONTENT], eos) for i in range(k))
        weights = None
        if prompt.weights is not None:
            padded = list(prompt.weights) + [1.0] * (CHUNK_CONTENT * k - len(prompt.weights))
            weights = tuple(
                w for i in range(k) for w in (1.0, *padded[i * CHUNK_CONTENT : (i + 1) * CHUNK_CONTENT], 1.0)
            )
        out.append(ChunkedPrompt(chunks=chunks, weights=weights))
    return out


def sequence_length(chunks: int, mode: str) -> int:
    """T for k chunks: 75k + 2 in llmga mode (77 for k = 1), 77k in lpw mode."""
    _check_mode(mode)
    return CHUNK_CONTENT * chunks + 2 if mode == "llmga" else CHUNK_LENGTH * chunks


def join_chunk_hidden(hidden: torch.Tensor, mode: str) -> torch.Tensor:
    """Join one prompt's encoded windows along the sequence.

    Input: hidden [k, 77, C]. Output: [T, C]; llmga drops the interior BOS/EOS (window 0 `[:-1]`, middle
    `[1:-1]`, last `[1:]`; k = 1 is kept whole), lpw keeps every window whole.
    """
    _check_mode(mode)
    k = hidden.shape[0]
    if mode == "lpw" or k == 1:
        return hidden.reshape(k * CHUNK_LENGTH, hidden.shape[-1])
    return torch.cat([hidden[0, :-1], hidden[1:-1, 1:-1].flatten(0, 1), hidden[-1, 1:]], dim=0)


def apply_prompt_weights(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each position by its weight, then restore the overall mean (official lpw weighting).

    Inputs: hidden [T, C], weights [T] (same dtype/device). Output: [T, C]
    `hidden * w * (mean(hidden) / mean(hidden * w))`, the means over all T * C values taken in float32 and
    cast to hidden's dtype before dividing, as `get_weighted_text_embeddings` does.
    """
    previous_mean = hidden.float().mean().to(hidden.dtype)
    weighted = hidden * weights.unsqueeze(-1)
    current_mean = weighted.float().mean().to(hidden.dtype)
    return weighted * (previous_mean / current_mean)


def encode_chunks(
    prompts: Sequence[ChunkedPrompt], encode: EncodeChunks, *, mode: str = "llmga", call_per_prompt: bool = False
) -> list[EncodedPrompt]:
    """Encode chunked prompts with one call of `encode` on all their windows.

    Inputs: prompts with k windows each (k may differ between calls, not within one: share it for CFG);
    `encode(ids LongTensor [n, 77]) -> (hidden [n, 77, C], pooled [n, C'])`. Output per prompt: cond
    [1, T, C] (T = sequence_length(k, mode); lpw weights applied) and pooled [1, C'] of its first window.
    call_per_prompt: one call of `encode` per prompt instead, in order, for an encoder that gives one pooled output
    per call (ComfyUI's CLIP returns the first window's for the whole call, so a shared call would hand the
    negative the positive's pooled output).
    """
    _check_mode(mode)
    if call_per_prompt:
        return [encoded for prompt in prompts for encoded in encode_chunks([prompt], encode, mode=mode)]
    if not prompts:
        return []
    counts = [len(p.chunks) for p in prompts]
    windows = [chunk for p in prompts for chunk in p.chunks]
    # Each distinct window is encoded once: a short negative padded to the positive's k windows repeats the same
    # all-padding window. dict keeps first-seen order, so the first window stays the first row (ComfyUI's pooled).
    distinct = list(dict.fromkeys(windows))
    ids = torch.tensor(distinct, dtype=torch.long)
    hidden, pooled = encode(ids)
    n = ids.shape[0]
    if hidden.ndim != 3 or tuple(hidden.shape[:2]) != (n, CHUNK_LENGTH) or pooled.ndim != 2 or pooled.shape[0] != n:
        raise ValueError(
            f"encode() must return hidden [{n}, {CHUNK_LENGTH}, C] and pooled [{n}, C'] for ids {tuple(ids.shape)}, "
            f"got {tuple(hidden.shape)} and {tuple(pooled.shape)}"
        )
    row = {window: index for index, window in enumerate(distinct)}
    order = torch.tensor([row[window] for window in windows], device=hidden.device)
    hidden, pooled = hidden[order], pooled[order.to(pooled.device)]
    out = []
    start = 0
    for prompt, k in zip(prompts, counts, strict=True):
        cond = join_chunk_hidden(hidden[start : start + k], mode)
        if mode == "lpw" and prompt.weights is not None:
            weights = torch.tensor(prompt.weights, dtype=cond.dtype, device=cond.device)
            cond = apply_prompt_weights(cond, weights)
        out.append(EncodedPrompt(cond=cond.unsqueeze(0), pooled=pooled[start : start + 1]))
        start += k
    return out


def content_position(index: int, mode: str) -> int:
    """Where content token `index` (0-based, after BOS) sits in the encoded sequence of length T.

    llmga: 1 + index (interior BOS/EOS are dropped, so positions follow the flat id row); lpw: every window keeps
    its BOS and EOS, so 77·(index // 75) + 1 + index % 75.
    """
    _check_mode(mode)
    if mode == "llmga":
        return 1 + index
    return CHUNK_LENGTH * (index // CHUNK_CONTENT) + 1 + index % CHUNK_CONTENT


def position_token_ids(prompt: ChunkedPrompt, mode: str) -> tuple[int, ...]:
    """The token id behind each of the T positions of an encoded prompt (BOS, content, padding, EOS)."""
    _check_mode(mode)
    k = len(prompt.chunks)
    if mode == "lpw" or k == 1:
        return tuple(i for chunk in prompt.chunks for i in chunk)
    return (prompt.chunks[0][0], *(i for chunk in prompt.chunks for i in chunk[1:-1]), prompt.chunks[-1][-1])


@dataclass(frozen=True)
class PromptGroup:
    """Prompts encoded together to the same length T (one batch: CFG, or source/target/uncond of an edit).

    encoded / tokens / chunked: one entry per prompt, in the order given; chunks: k; mode; token_limit.
    """

    encoded: tuple[EncodedPrompt, ...]
    tokens: tuple[PromptTokens, ...]
    chunked: tuple[ChunkedPrompt, ...]
    chunks: int
    mode: str
    token_limit: int

    @property
    def length(self) -> int:
        """T, the sequence length shared by every cond."""
        return self.encoded[0].cond.shape[1]

    def truncation_warnings(self, names: Sequence[str]) -> list[str]:
        """One message per prompt that lost tokens, `names[i]` naming prompt i ("source prompt: dropped 1 token past
        the 300-token limit"); prompts past the end of `names` are not reported."""
        return [truncation_warning(name, tokens.dropped, self.token_limit)
                for name, tokens in zip(names, self.tokens, strict=False) if tokens.dropped]


def encode_prompt_group(
    texts: Sequence[str],
    tokenize: Tokenize,
    encode: EncodeChunks,
    *,
    mode: str = "llmga",
    bos: int = SD15_BOS,
    eos: int = SD15_EOS,
    pad: int | None = None,
    max_chunks: int | None = None,
    call_per_prompt: bool = False,
) -> PromptGroup:
    """Encode any number of prompts to conds of one length T (k = the longest prompt's chunk count).

    Inputs: the prompts; `tokenize(text) -> ids` without BOS/EOS and without truncation (in lpw mode it is called
    once per weighted fragment); `encode(ids [n, 77]) -> (hidden [n, 77, C], pooled [n, C'])`; the mode ("llmga"
    training encoding, "lpw" official inference encoding); BOS/EOS/pad ids (pad None: EOS, what the SD1.5
    tokenizer's pad_token_id is); max_chunks (None: 4 for llmga, 3 for lpw as cli-sd15.py; 4 matches the official
    inpainting and editing pipelines); call_per_prompt (see `encode_chunks`: True for ComfyUI's CLIP, whose pooled
    output is one per call). Output: PromptGroup with conds [1, T, C] and pooled [1, C'] in the order given.
    """
    max_chunks = resolve_max_chunks(mode, max_chunks)
    tokens = [tokenize_prompt(text, tokenize, mode=mode, max_chunks=max_chunks) for text in texts]
    chunked = chunk_prompt_tokens(tokens, bos=bos, eos=eos, pad=pad)
    encoded = encode_chunks(chunked, encode, mode=mode, call_per_prompt=call_per_prompt)
    return PromptGroup(
        encoded=tuple(encoded),
        tokens=tuple(tokens),
        chunked=tuple(chunked),
        chunks=len(chunked[0].chunks) if chunked else 0,
        mode=mode,
        token_limit=CHUNK_CONTENT * max_chunks,
    )


def encode_long_prompts(
    positive: str, negative: str, tokenize: Tokenize, encode: EncodeChunks, **options
) -> LongPromptResult:
    """Encode a positive and a negative prompt to conds of the same length T: `encode_prompt_group` on the pair, its
    keyword options (mode, bos, eos, pad, max_chunks, call_per_prompt) as it takes them. Output: LongPromptResult
    with conds [1, T, C], pooled [1, C'], the dropped token counts and k.
    """
    group = encode_prompt_group((positive, negative), tokenize, encode, **options)
    return LongPromptResult(
        positive=group.encoded[0],
        negative=group.encoded[1],
        dropped_positive=group.tokens[0].dropped,
        dropped_negative=group.tokens[1].dropped,
        chunks=group.chunks,
        mode=group.mode,
        token_limit=group.token_limit,
    )
