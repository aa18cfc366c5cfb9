"""Long-prompt encoding for SDXL: prompts up to 300 tokens through SDXL's two 77-token CLIP text encoders, the way
LLMGA's SDXL models were trained and are run.

The official code: `get_text_index` + `get_unweighted_text_embeddings_SDXL1/SDXL2` (llmga/diffusers/my_utils/util.py)
as train_text_to_image_sdxl*.py and pipeline_stable_diffusion_xl*_lpw.py call them. Per tokenizer, independently:
the text is tokenized whole (no weight syntax), cut to 300 content ids (truncation at 302 with BOS/EOS), and
k = max(1, min(4, ceil(n / 75))) for n the longest content length among the prompts encoded together. Each prompt
becomes `BOS + content + pad * (75k - n) + EOS` (tokenizer 1 pads with EOS 49407, tokenizer 2 with `!`, id 0),
cut into k windows `BOS + 75 ids + EOS`. Each encoder returns its penultimate hidden state (`hidden_states[-2]`,
no final layer norm) per window; window 0 keeps `[:-1]`, middle windows `[1:-1]`, the last `[1:]` (k = 1: the
77 ids whole), so L = 75k + 2 = 77 / 152 / 227 / 302. Both encoders' sequences are clipped to the shorter (as the
training script does; a no-op with SDXL's two tokenizers, which share one vocabulary) and concatenated on channels:
[B, L, 768 + 1280]. The pooled embedding is encoder 2's projected output (`text_embeds`) of each prompt's last
window, at its final EOS: every window ends in EOS 49407, the largest id, so the official "window with the larger
max id" rule always picks the last one.

Negatives, at inference (`encode_sdxl_long_prompts`):
- no negative (None, or an empty or blank string) gives zeros of the positive's shape, embeddings and pooled, as
  the official pipelines do with `force_zeros_for_empty_prompt` (LLMGA's CLIs call the pipeline with no negative);
- an explicit negative is encoded as a group of its own (its own k and pooled window, as the official pipeline
  encodes it). When the two groups' k differ, the official `torch.cat([negative, positive])` fails; here the shorter
  group's id rows are padded with pad windows to the longer k before encoding, which is what a training batch does
  to a shorter caption (the first 75k + 1 positions are unchanged, the extra windows are padding, EOS moves to the
  end); its pooled embedding stays its own k's. When the k agree (every case the official code runs), both groups
  equal the official encoding exactly.

Training (`encode_sdxl_prompt_batch`): the captions of one batch share k (the longest), each pooled from window
k - 1, an empty caption (caption dropout) encoded as text, not zeros.

Interfaces (one algorithm; `llmga.prompt.clip_binding.TransformersSDXLCLIP` binds it to diffusers/transformers, the
LLMGA Long Prompt Encode (SDXL) node to ComfyUI's SDXL CLIP), the `SDXLTextEncoders` protocol:
- `tokenize_1(text) -> list[int]`, `tokenize_2(text) -> list[int]`: content ids, no BOS/EOS, no truncation;
- `bos`, `eos`, `pad_1`, `pad_2`: ids (49406, 49407, 49407 and 0 for SDXL);
- `encode(ids_1 LongTensor [n1, 77], ids_2 LongTensor [n2, 77]) -> (hidden_1 [n1, 77, C1], hidden_2 [n2, 77, C2],
  pooled_2 [n2, P])`: both encoders' `hidden_states[-2]` per window and encoder 2's projected pooled output per window;
- `pooled_per_call: bool`: True for an encoder that returns one pooled output per call, that of the first window of
  `ids_2` (ComfyUI's CLIP); the encoder is then called once per prompt with that prompt's pooled window first.

Public functions and results:
- `encode_sdxl_long_prompts(encoders, prompts, negative_prompts=None, *, max_chunks=None) -> SDXLLongPromptResult`:
  prompts `str | Sequence[str]` (B of them), negative_prompts None, one `str` for all, or B strings. Result:
  `embeddings [B, L, C1 + C2]`, `pooled [B, P]`, `negative_embeddings [B, L, C1 + C2]`, `negative_pooled [B, P]`,
  `length` (L), `chunks` (k, L = 75k + 2), `dropped_positive` / `dropped_negative` (per prompt),
  `truncation_warnings() -> list[str]`, `summary() -> str` ("llmga: 2 chunks, 152 positions").
- `encode_sdxl_prompt_batch(encoders, texts, *, max_chunks=None) -> SDXLPromptBatch`: one training batch.
  Result: `embeddings [B, L, C1 + C2]`, `pooled [B, P]`, `chunks`, `dropped`, `length`, `truncation_warnings(names)`,
  `summary()`.
max_chunks: the chunk cap, None = 4 (the official `max_embeddings_multiples`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .long_prompt import (
    CHUNK_CONTENT,
    CHUNK_LENGTH,
    ChunkedPrompt,
    PromptTokens,
    chunk_count,
    chunk_prompt_tokens,
    encoding_summary,
    join_chunk_hidden,
    resolve_max_chunks,
    tokenize_prompt,
    truncation_warning,
)

Tokenize = Callable[[str], list[int]]


class SDXLTextEncoders(Protocol):
    """The two SDXL text encoders as the long-prompt encoder drives them (see the module docstring)."""

    bos: int
    eos: int
    pad_1: int
    pad_2: int
    pooled_per_call: bool

    def tokenize_1(self, text: str) -> list[int]: ...

    def tokenize_2(self, text: str) -> list[int]: ...

    def encode(self, ids_1: torch.Tensor, ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class SDXLPromptBatch:
    """Prompts encoded together (k shared, each pooled from its own group's last window).

    embeddings: [B, L, C1 + C2]; pooled: [B, P]; chunks: k of this group (tokenizer 2's; its rows may be padded to
    a longer group's k); dropped: content tokens cut per prompt; token_limit: 75 * max_chunks.
    """

    embeddings: torch.Tensor
    pooled: torch.Tensor
    chunks: int
    dropped: tuple[int, ...]
    token_limit: int

    @property
    def length(self) -> int:
        """L, the sequence length of the embeddings."""
        return self.embeddings.shape[1]

    def truncation_warnings(self, names: Sequence[str]) -> list[str]:
        """One message per prompt that lost tokens, `names[i]` naming prompt i ("second" gives "second prompt: dropped
        1 token past the 300-token limit"); prompts past the end of `names` are not reported."""
        pairs = zip(names, self.dropped, strict=False)
        return [truncation_warning(name, n, self.token_limit) for name, n in pairs if n]

    def summary(self) -> str:
        """"llmga: 4 chunks, 302 positions"."""
        return encoding_summary("llmga", self.chunks, self.length)


@dataclass(frozen=True)
class SDXLLongPromptResult:
    """Positive and negative SDXL encodings of equal length L, and what was cut off.

    embeddings / negative_embeddings: [B, L, C1 + C2]; pooled / negative_pooled: [B, P]; negative_zeros: True where
    the negative is zeros (none given); chunks: the k windows both were encoded with (L = 75k + 2, 77 for k = 1:
    the positives' k, or a longer negative's); dropped_*: content tokens cut per prompt.
    """

    embeddings: torch.Tensor
    pooled: torch.Tensor
    negative_embeddings: torch.Tensor
    negative_pooled: torch.Tensor
    negative_zeros: tuple[bool, ...]
    chunks: int
    dropped_positive: tuple[int, ...]
    dropped_negative: tuple[int, ...]
    token_limit: int

    @property
    def length(self) -> int:
        """L, the sequence length of both embeddings."""
        return self.embeddings.shape[1]

    def truncation_warnings(self) -> list[str]:
        """One message per prompt that lost tokens: "positive prompt: dropped 37 tokens past the 300-token limit"
        ("positive prompt 2: ..." when several prompts were encoded)."""
        messages = []
        for kind, dropped in (("positive", self.dropped_positive), ("negative", self.dropped_negative)):
            for index, n in enumerate(dropped):
                if n:
                    message = truncation_warning(kind, n, self.token_limit)
                    numbered = f"{kind} prompt {index + 1}"  # "positive prompt 2: dropped ..." in a batch
                    messages.append(message if len(dropped) == 1 else message.replace(f"{kind} prompt", numbered, 1))
        return messages

    def summary(self) -> str:
        """"llmga: 2 chunks, 152 positions", with ", no negative prompt: zeros" when the negative is zeros."""
        line = encoding_summary("llmga", self.chunks, self.length)
        return line + ", no negative prompt: zeros" if all(self.negative_zeros) else line


def _tokenize_group(texts: Sequence[str], tokenize: Tokenize, max_chunks: int) -> list[PromptTokens]:
    return [tokenize_prompt(text, tokenize, mode="llmga", max_chunks=max_chunks) for text in texts]


def _check_encoded(hidden_1, hidden_2, pooled, n1: int, n2: int) -> None:
    shapes_ok = (
        hidden_1.ndim == 3 and tuple(hidden_1.shape[:2]) == (n1, CHUNK_LENGTH)
        and hidden_2.ndim == 3 and tuple(hidden_2.shape[:2]) == (n2, CHUNK_LENGTH)
        and pooled.ndim == 2 and pooled.shape[0] == n2
    )
    if not shapes_ok:
        raise ValueError(
            f"encode() must return hidden_1 [{n1}, {CHUNK_LENGTH}, C1], hidden_2 [{n2}, {CHUNK_LENGTH}, C2] and pooled "
            f"[{n2}, P] for ids [{n1}, {CHUNK_LENGTH}] and [{n2}, {CHUNK_LENGTH}], got {tuple(hidden_1.shape)}, "
            f"{tuple(hidden_2.shape)} and {tuple(pooled.shape)}"
        )


def _encode_rows(
    encoders: SDXLTextEncoders,
    rows_1: Sequence[ChunkedPrompt],
    rows_2: Sequence[ChunkedPrompt],
    pooled_windows: Sequence[int],
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Encode every row's windows; per row: hidden_1 [k1, 77, C1], hidden_2 [k2, 77, C2], pooled [P] of window
    `pooled_windows[row]` of encoder 2. One call for all rows, or one per row when the encoder gives one pooled output
    per call; each distinct window is encoded once per call, the pooled windows first."""
    calls = [[row] for row in range(len(rows_1))] if encoders.pooled_per_call else [list(range(len(rows_1)))]
    hidden_1: list[torch.Tensor] = [torch.empty(0)] * len(rows_1)
    hidden_2: list[torch.Tensor] = [torch.empty(0)] * len(rows_1)
    pooled: list[torch.Tensor] = [torch.empty(0)] * len(rows_1)
    for rows in calls:
        first = [rows_2[r].chunks[pooled_windows[r]] for r in rows]
        distinct_2 = list(dict.fromkeys(first + [w for r in rows for w in rows_2[r].chunks]))
        distinct_1 = list(dict.fromkeys(w for r in rows for w in rows_1[r].chunks))
        out_1, out_2, out_pooled = encoders.encode(
            torch.tensor(distinct_1, dtype=torch.long), torch.tensor(distinct_2, dtype=torch.long)
        )
        _check_encoded(out_1, out_2, out_pooled, len(distinct_1), len(distinct_2))
        index_1 = {w: i for i, w in enumerate(distinct_1)}
        index_2 = {w: i for i, w in enumerate(distinct_2)}
        for r in rows:
            hidden_1[r] = out_1[[index_1[w] for w in rows_1[r].chunks]]
            hidden_2[r] = out_2[[index_2[w] for w in rows_2[r].chunks]]
            pooled[r] = out_pooled[index_2[rows_2[r].chunks[pooled_windows[r]]]]
    return hidden_1, hidden_2, pooled


def _encode_groups(
    encoders: SDXLTextEncoders, groups: Sequence[Sequence[str]], max_chunks: int | None
) -> list[SDXLPromptBatch]:
    """Encode groups of prompts, each group with its own k and pooled window, all padded to the longest group's k
    (per tokenizer) so that their embeddings share one length L."""
    max_chunks = resolve_max_chunks("llmga", max_chunks)
    sizes = [len(group) for group in groups]
    texts = [text for group in groups for text in group]
    tokens_1 = _tokenize_group(texts, encoders.tokenize_1, max_chunks)
    tokens_2 = _tokenize_group(texts, encoders.tokenize_2, max_chunks)
    rows_1 = chunk_prompt_tokens(tokens_1, bos=encoders.bos, eos=encoders.eos, pad=encoders.pad_1)
    rows_2 = chunk_prompt_tokens(tokens_2, bos=encoders.bos, eos=encoders.eos, pad=encoders.pad_2)
    starts = [sum(sizes[:g]) for g in range(len(groups))]
    group_chunks = [chunk_count(tokens_2[s : s + n]) for s, n in zip(starts, sizes, strict=True)]
    pooled_windows = [k - 1 for k, n in zip(group_chunks, sizes, strict=True) for _ in range(n)]
    hidden_1, hidden_2, pooled = _encode_rows(encoders, rows_1, rows_2, pooled_windows)

    joined_1 = [join_chunk_hidden(h, "llmga") for h in hidden_1]
    joined_2 = [join_chunk_hidden(h, "llmga") for h in hidden_2]
    length = min(joined_1[0].shape[0], joined_2[0].shape[0])  # train_text_to_image_sdxl.py clips to the shorter
    embeddings = torch.stack([torch.cat([a[:length], b[:length]], dim=-1) for a, b in zip(joined_1, joined_2,
                                                                                          strict=True)])
    pooled_all = torch.stack(pooled)
    dropped = [max(a.dropped, b.dropped) for a, b in zip(tokens_1, tokens_2, strict=True)]
    return [
        SDXLPromptBatch(
            embeddings=embeddings[s : s + n],
            pooled=pooled_all[s : s + n],
            chunks=k,
            dropped=tuple(dropped[s : s + n]),
            token_limit=CHUNK_CONTENT * max_chunks,
        )
        for s, n, k in zip(starts, sizes, group_chunks, strict=True)
    ]


def encode_sdxl_prompt_batch(
    encoders: SDXLTextEncoders, texts: Sequence[str], *, max_chunks: int | None = None
) -> SDXLPromptBatch:
    """Encode one training batch as train_text_to_image_sdxl*.py does: k shared by the batch, embeddings
    [B, L, C1 + C2], pooled [B, P] of window k - 1 (see the module docstring); "" is encoded, not zeroed."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no captions to encode: pass at least one")
    return _encode_groups(encoders, [texts], max_chunks)[0]


def _negatives(negative_prompts: str | Sequence[str] | None, batch: int) -> list[str]:
    if negative_prompts is None:
        return [""] * batch
    if isinstance(negative_prompts, str):
        return [negative_prompts] * batch
    negatives = list(negative_prompts)
    if len(negatives) != batch:
        raise ValueError(f"{len(negatives)} negative prompts for {batch} prompts: give one negative prompt per prompt, "
                         "a single string for all of them, or none")
    return negatives


def encode_sdxl_long_prompts(
    encoders: SDXLTextEncoders,
    prompts: str | Sequence[str],
    negative_prompts: str | Sequence[str] | None = None,
    *,
    max_chunks: int | None = None,
) -> SDXLLongPromptResult:
    """Encode prompts and their negatives for SDXL classifier-free guidance, as LLMGA's SDXL pipelines do.

    Inputs: the encoders (`SDXLTextEncoders`); B prompts (or one string); negatives: None, one string for all, or B
    strings, an empty one meaning none; max_chunks (None: 4). Output: SDXLLongPromptResult with embeddings and
    negative_embeddings [B, L, C1 + C2] and pooled / negative_pooled [B, P]; a missing negative is zeros, an explicit
    one is encoded with its own k and padded to the common length (see the module docstring).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("no prompts to encode: pass at least one")
    negatives = _negatives(negative_prompts, len(prompts))
    encoded_rows = [i for i, text in enumerate(negatives) if text.strip()]
    groups = [prompts, [negatives[i] for i in encoded_rows]] if encoded_rows else [prompts]
    batches = _encode_groups(encoders, groups, max_chunks)
    positive = batches[0]
    negative_embeddings = torch.zeros_like(positive.embeddings)
    negative_pooled = torch.zeros_like(positive.pooled)
    dropped_negative = [0] * len(prompts)
    if encoded_rows:
        negative = batches[1]
        negative_embeddings[encoded_rows] = negative.embeddings
        negative_pooled[encoded_rows] = negative.pooled
        for row, n in zip(encoded_rows, negative.dropped, strict=True):
            dropped_negative[row] = n
    return SDXLLongPromptResult(
        embeddings=positive.embeddings,
        pooled=positive.pooled,
        negative_embeddings=negative_embeddings,
        negative_pooled=negative_pooled,
        negative_zeros=tuple(not text.strip() for text in negatives),
        chunks=max(batch.chunks for batch in batches),
        dropped_positive=positive.dropped,
        dropped_negative=tuple(dropped_negative),
        token_limit=positive.token_limit,
    )
