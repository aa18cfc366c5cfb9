"""Token alignment between a source and a target prompt for Prompt-to-Prompt, on prompts of any length.

Prompt-to-Prompt (google/prompt-to-prompt `seq_aligner.py`, copied unchanged by PnPInversion) maps each target
token to the source token whose cross-attention it should reuse:

- Refine (words added or removed): a Needleman–Wunsch global alignment of the two token sequences
  `[BOS] + content + [EOS]` (gap 0, match +1, mismatch −1). A target token aligned to a source token takes that
  token's attention (alpha 1); an inserted target token keeps its own (alpha 0).
- Replace (words swapped, same word count): an identity map in which each swapped word's source tokens spread
  their attention uniformly over the target word's tokens.

The official code works on 77 fixed positions. Here every map covers the T positions of a long-prompt encoding
(`llmga.prompt.long_prompt`, "llmga" layout T = 75k + 2 or "lpw" layout T = 77k): content token i sits at
`content_position(i, mode)`, BOS at 0, the EOS of the alignment right after the last content token, and every
position outside the aligned tokens (padding, the interior BOS/EOS of lpw windows) maps to itself. On a 77-token
encoding the result equals the official one.

Token ids follow the `tokenize(text) -> content ids` interface of the long-prompt encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..prompt.long_prompt import SD15_BOS, SD15_EOS, Tokenize, content_position, tokenize_prompt

# seq_aligner.py get_mapper: ScoreParams(gap=0, match=1, mismatch=-1).
GAP_SCORE = 0
MATCH_SCORE = 1
MISMATCH_SCORE = -1

# seq_aligner.py global_align traceback codes: 1 = left (target token inserted), 2 = up (source token dropped),
# 3 = diagonal (aligned pair).
_LEFT, _UP, _DIAG = 1, 2, 3


def global_alignment(source: Sequence[int], target: Sequence[int]) -> list[int]:
    """Needleman–Wunsch alignment of two token sequences: for each target index j, the source index aligned to
    it, or −1 where the target token is inserted.

    Ties are broken as seq_aligner.py `global_align` does (left, then up, then diagonal), and the traceback
    starts at the end, so the result equals the official mapper. With gap 0 a mismatch (−1) never beats two gaps,
    so every aligned pair holds the same token. O(len(source)·len(target)) time.
    """
    n, m = len(source), len(target)
    score = [[j * GAP_SCORE for j in range(m + 1)]] + [[i * GAP_SCORE] + [0] * m for i in range(1, n + 1)]
    trace = [[_LEFT] * (m + 1)] + [[_UP] + [0] * m for _ in range(n)]  # first row: left, first column: up
    for i in range(1, n + 1):
        row, above, x = score[i], score[i - 1], source[i - 1]
        for j in range(1, m + 1):
            left = row[j - 1] + GAP_SCORE
            up = above[j] + GAP_SCORE
            diag = above[j - 1] + (MATCH_SCORE if x == target[j - 1] else MISMATCH_SCORE)
            best = max(left, up, diag)
            row[j] = best
            trace[i][j] = _LEFT if best == left else _UP if best == up else _DIAG
    mapping = [-1] * m
    i, j = n, m
    while i > 0 or j > 0:
        move = trace[i][j]
        if move == _DIAG:
            i, j = i - 1, j - 1
            mapping[j] = i
        elif move == _LEFT:
            j -= 1
        else:
            i -= 1
    return mapping


def sequence_positions(num_content: int, mode: str) -> list[int]:
    """Positions of `[BOS] + content + [EOS]` (num_content + 2 entries) in an encoding of layout `mode`.

    The EOS is the position right after the last content token (a padding or window EOS, both the EOS id).
    """
    eos = content_position(num_content - 1, mode) + 1 if num_content else 1
    return [0, *(content_position(i, mode) for i in range(num_content)), eos]


def _check_length(num_content: int, length: int, mode: str, role: str) -> None:
    if sequence_positions(num_content, mode)[-1] >= length:
        raise ValueError(
            f"the {role} prompt has {num_content} tokens, more than an encoding of length {length} ({mode} layout)"
            " holds: encode the prompts together in one group and pass its length"
        )


def refinement_mapper(
    source_ids: Sequence[int],
    target_ids: Sequence[int],
    length: int,
    mode: str = "llmga",
    *,
    bos: int = SD15_BOS,
    eos: int = SD15_EOS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AttentionRefine's map (seq_aligner.py `get_mapper`) over the T = `length` positions of an encoding.

    Inputs: content ids of both prompts (no BOS/EOS, as `PromptTokens.ids`), T, the layout. Outputs: mapper
    [T] int64, the source position whose attention target position p takes (−1 for inserted target tokens, as
    the official code), and alphas [T] float32 (0 where mapper is −1, else 1). Positions outside the aligned
    `[BOS] + target + [EOS]` map to themselves.
    """
    _check_length(len(source_ids), length, mode, "source")
    _check_length(len(target_ids), length, mode, "target")
    aligned = global_alignment([bos, *source_ids, eos], [bos, *target_ids, eos])
    source_pos = sequence_positions(len(source_ids), mode)
    target_pos = sequence_positions(len(target_ids), mode)
    mapper = torch.arange(length, dtype=torch.int64)
    alphas = torch.ones(length, dtype=torch.float32)
    for j, i in enumerate(aligned):
        mapper[target_pos[j]] = source_pos[i] if i >= 0 else -1
        alphas[target_pos[j]] = float(i >= 0)
    return mapper, alphas


def changed_token_positions(
    source_ids: Sequence[int], target_ids: Sequence[int], mode: str = "llmga"
) -> tuple[list[int], list[int]]:
    """What the Refine alignment marks as changed: (source positions of source tokens no target token aligns
    to, target positions of inserted target tokens), each ascending, in the encoding of layout `mode`.

    A default for LocalBlend's words when none are named (a suggestion of the reference notes, not in P2P).
    """
    aligned = global_alignment(list(source_ids), list(target_ids))
    kept = set(aligned)
    dropped = [content_position(i, mode) for i in range(len(source_ids)) if i not in kept]
    inserted = [content_position(j, mode) for j, i in enumerate(aligned) if i < 0]
    return dropped, inserted


def _prompt_name(role: str, text: str, limit: int = 80) -> str:
    """'the target prompt \'a cat…\'' for error messages (the text cut to `limit` characters)."""
    name = f"the {role} prompt" if role else "the prompt"
    return f"{name} {text if len(text) <= limit else text[:limit] + '…'!r}" if text else name


def _word_ids(word: str, tokenize: Tokenize, mode: str) -> list[int]:
    """A word's content ids, tokenized the way a prompt of layout `mode` is (lpw: weight syntax stripped)."""
    return list(tokenize_prompt(word, tokenize, mode=mode).ids)


def _find(ids: Sequence[int], pattern: Sequence[int], start: int = 0) -> int:
    """The first index >= start where `pattern` occurs contiguously in `ids`, or −1."""
    width = len(pattern)
    for i in range(start, len(ids) - width + 1):
        if list(ids[i : i + width]) == list(pattern):
            return i
    return -1


def word_positions(
    word: str, ids: Sequence[int], tokenize: Tokenize, mode: str = "llmga", *, role: str = "", prompt: str = ""
) -> list[int]:
    """Positions (in the encoding of layout `mode`) of every occurrence of `word`'s tokens in a prompt's content
    ids, ascending. `word` may be several words ("red car"); it matches wherever its token ids occur contiguously
    (the CLIP tokenizer lower-cases and splits punctuation off, so "Cat" matches "a cat, sleeping").

    role ("source", "target") and prompt (its text) only name the prompt in the error raised when the word is
    absent.
    """
    pattern = _word_ids(word, tokenize, mode)
    if not pattern:
        raise ValueError(f"the word {word!r} has no tokens: name a word of {_prompt_name(role, prompt)}")
    out, start = [], _find(ids, pattern)
    while start >= 0:
        out += [content_position(i, mode) for i in range(start, start + len(pattern))]
        start = _find(ids, pattern, start + len(pattern))
    if not out:
        raise ValueError(
            f"{word!r} is not in {_prompt_name(role, prompt)} (or lies past its token limit):"
            " name a word that appears in it"
        )
    return out


def _word_spans(text: str, ids: Sequence[int], tokenize: Tokenize, mode: str, role: str) -> list[range]:
    """Content-index span of each whitespace-separated word of `text`, found in order within `ids`."""
    spans, cursor = [], 0
    for word in text.split():
        pattern = _word_ids(word, tokenize, mode)
        start = _find(ids, pattern, cursor) if pattern else cursor
        if start < 0:
            raise ValueError(
                f"the word {word!r} of {_prompt_name(role, text)} is not among its tokens"
                " (past the token limit?): shorten the prompt or use method='refine'"
            )
        spans.append(range(start, start + len(pattern)))
        cursor = start + len(pattern)
    return spans


def replacement_mapper(
    source_text: str,
    target_text: str,
    source_ids: Sequence[int],
    target_ids: Sequence[int],
    tokenize: Tokenize,
    length: int,
    mode: str = "llmga",
) -> torch.Tensor:
    """AttentionReplace's map (seq_aligner.py `get_replacement_mapper_`) over the T = `length` positions.

    The prompts must have the same number of whitespace-separated words. Output: mapper [T, T] float32, row =
    source position, column = target position: new_target[n] = Σ_w base[w]·mapper[w, n]. Unchanged tokens map
    one to one; a swapped word with as many tokens as its source maps one to one, otherwise each of its source
    tokens spreads weight 1/len(target word) over the target word's tokens (rows sum to 1). BOS and EOS map to
    each other and every other position (padding, lpw window BOS/EOS) to itself.
    """
    source_words, target_words = source_text.split(), target_text.split()
    if len(source_words) != len(target_words):
        raise ValueError(
            f"method 'replace' needs prompts with the same number of words, but the source has {len(source_words)}"
            f" words and the target {len(target_words)}: use method='refine' for edits that add or remove words"
        )
    _check_length(len(source_ids), length, mode, "source")
    _check_length(len(target_ids), length, mode, "target")
    source_spans = _word_spans(source_text, source_ids, tokenize, mode, "source")
    target_spans = _word_spans(target_text, target_ids, tokenize, mode, "target")
    swapped = [(s, t) for a, b, s, t in zip(source_words, target_words, source_spans, target_spans, strict=True)
               if a != b and len(s) and len(t)]
    pairs: list[tuple[int, int, float]] = []  # (source content index, target content index, weight)
    i = j = 0
    end = (range(len(source_ids), len(source_ids)), range(len(target_ids), len(target_ids)))
    for source_span, target_span in [*swapped, end]:
        while i < source_span.start and j < target_span.start:  # unchanged tokens between swapped words
            pairs.append((i, j, 1.0))
            i, j = i + 1, j + 1
        if len(source_span) == len(target_span):
            pairs += [(s, t, 1.0) for s, t in zip(source_span, target_span, strict=True)]
        else:
            pairs += [(s, t, 1.0 / len(target_span)) for s in source_span for t in target_span]
        i, j = source_span.stop, target_span.stop
    source_pos = sequence_positions(len(source_ids), mode)
    target_pos = sequence_positions(len(target_ids), mode)
    mapper = torch.zeros(length, length, dtype=torch.float32)
    covered = torch.zeros(length, dtype=torch.bool)
    for s, t, weight in [(-1, -1, 1.0), *pairs, (len(source_ids), len(target_ids), 1.0)]:
        mapper[source_pos[s + 1], target_pos[t + 1]] = weight
        covered[target_pos[t + 1]] = True
    rest = (~covered).nonzero().flatten()
    mapper[rest, rest] = 1.0
    return mapper
