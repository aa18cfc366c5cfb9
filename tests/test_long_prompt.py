"""Long-prompt encoding: parity with the official LLMGA code on the real SD1.5 tokenizer and a tiny random CLIP.

The `ref_*` functions below are an independent re-implementation of the official functions, following their
structure step by step: llmga/diffusers/my_utils/util.py (`get_text_index`, `get_unweighted_text_embeddings`:
the stage-2 training encoding) and llmga/diffusers/pipeline_stable_diffusion_inpaint_lpw.py (`parse_prompt_attention`,
`get_prompts_with_weights`, `pad_tokens_and_weights`, `get_weighted_text_embeddings`: the inference encoding).
They were checked once, outside the project, against the official functions themselves (same ids, embeddings
within 1e-5 on 60 random llmga batches and 120 weighted lpw prompt pairs, same fragments on 20 000 random
bracket strings).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from llmga.prompt.clip_binding import TransformersCLIP
from llmga.prompt.long_prompt import (
    CHUNK_LENGTH,
    MODES,
    PromptTokens,
    chunk_prompt_tokens,
    encode_chunks,
    encode_long_prompts,
    encode_prompt_group,
    sequence_length,
    tokenize_prompt,
)
from llmga.prompt.weighting import parse_prompt_weights

ATOL = 1e-5

# --- independent re-implementation of the official code ---------------------------------------------------


def ref_get_text_index(tokenizer: CLIPTokenizer, prompts: list[str], max_embeddings_multiples: int = 4) -> torch.Tensor:
    """my_utils/util.py get_text_index: [B, 75k + 2] id rows for a training batch."""
    max_length = (CHUNK_LENGTH - 2) * max_embeddings_multiples + 2
    tokens = [ids[1:-1] for ids in tokenizer(prompts, max_length=max_length, truncation=True).input_ids]
    longest = max(len(t) for t in tokens)
    multiples = max(1, min(max_embeddings_multiples, (longest - 1) // (CHUNK_LENGTH - 2) + 1))
    max_length = (CHUNK_LENGTH - 2) * multiples + 2
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [[bos] + t + [pad] * (max_length - 1 - len(t) - 1) + [eos] for t in tokens]
    return torch.tensor(rows, dtype=torch.long)


def ref_unweighted_embeddings(text_encoder: CLIPTextModel, ids: torch.Tensor, no_boseos_middle: bool) -> torch.Tensor:
    """get_unweighted_text_embeddings: windows of 77 with positions 0 / -1 overwritten, trimmed or not, concatenated."""
    multiples = (ids.shape[1] - 2) // (CHUNK_LENGTH - 2)
    with torch.no_grad():
        if multiples <= 1:
            return text_encoder(ids)[0]
        pieces = []
        for i in range(multiples):
            chunk = ids[:, i * (CHUNK_LENGTH - 2) : (i + 1) * (CHUNK_LENGTH - 2) + 2].clone()
            chunk[:, 0] = ids[0, 0]
            chunk[:, -1] = ids[0, -1]
            embedding = text_encoder(chunk)[0]
            if no_boseos_middle:
                if i == 0:
                    embedding = embedding[:, :-1]
                elif i == multiples - 1:
                    embedding = embedding[:, 1:]
                else:
                    embedding = embedding[:, 1:-1]
            pieces.append(embedding)
        return torch.cat(pieces, dim=1)


_REF_ATTENTION = re.compile(
    r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()\[\]:]+|:",
)


def ref_parse_prompt_attention(text: str) -> list[list]:
    """parse_prompt_attention: bracket stacks, range multiplication, unclosed brackets, merge of equal weights."""
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in _REF_ATTENTION.finditer(text):
        piece, weight = m.group(0), m.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_brackets.append(len(res))
        elif piece == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif piece == ")" and round_brackets:
            multiply_range(round_brackets.pop(), 1.1)
        elif piece == "]" and square_brackets:
            multiply_range(square_brackets.pop(), 1 / 1.1)
        else:
            res.append([piece, 1.0])
    for pos in round_brackets:
        multiply_range(pos, 1.1)
    for pos in square_brackets:
        multiply_range(pos, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


def ref_prompts_with_weights(tokenizer: CLIPTokenizer, prompts: list[str], max_length: int):
    """get_prompts_with_weights: each fragment tokenized alone ([1:-1]), stop past max_length, truncate."""
    tokens, weights = [], []
    for text in prompts:
        text_token, text_weight = [], []
        for word, weight in ref_parse_prompt_attention(text):
            token = tokenizer(word).input_ids[1:-1]
            text_token += token
            text_weight += [weight] * len(token)
            if len(text_token) > max_length:
                break
        tokens.append(text_token[:max_length])
        weights.append(text_weight[:max_length])
    return tokens, weights


def ref_pad_tokens_and_weights(tokens, weights, max_length, bos, eos, pad, no_boseos_middle, chunk_length=77):
    """pad_tokens_and_weights: rows of max_length ids; weights per output position (77k when BOS/EOS are kept)."""
    multiples = (max_length - 2) // (chunk_length - 2)
    weights_length = max_length if no_boseos_middle else multiples * chunk_length
    for i in range(len(tokens)):
        tokens[i] = [bos] + tokens[i] + [pad] * (max_length - 1 - len(tokens[i]) - 1) + [eos]
        if no_boseos_middle:
            weights[i] = [1.0] + weights[i] + [1.0] * (max_length - 1 - len(weights[i]))
        else:
            w = []
            if len(weights[i]) == 0:
                w = [1.0] * weights_length
            else:
                for j in range(multiples):
                    w.append(1.0)
                    w += weights[i][j * (chunk_length - 2) : min(len(weights[i]), (j + 1) * (chunk_length - 2))]
                    w.append(1.0)
                w += [1.0] * (weights_length - len(w))
            weights[i] = w[:]
    return tokens, weights


def ref_weighted_embeddings(tokenizer, text_encoder, prompt: str, uncond: str, max_embeddings_multiples: int):
    """get_weighted_text_embeddings(no_boseos_middle=False) of a prompt and an uncond prompt: two [1, T, C]."""
    max_length = (CHUNK_LENGTH - 2) * max_embeddings_multiples + 2
    prompt_tokens, prompt_weights = ref_prompts_with_weights(tokenizer, [prompt], max_length - 2)
    uncond_tokens, uncond_weights = ref_prompts_with_weights(tokenizer, [uncond], max_length - 2)
    longest = max(max(len(t) for t in prompt_tokens), max(len(t) for t in uncond_tokens))
    multiples = max(1, min(max_embeddings_multiples, (longest - 1) // (CHUNK_LENGTH - 2) + 1))
    max_length = (CHUNK_LENGTH - 2) * multiples + 2
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    results = []
    for tokens, weights in ((prompt_tokens, prompt_weights), (uncond_tokens, uncond_weights)):
        tokens, weights = ref_pad_tokens_and_weights(tokens, weights, max_length, bos, eos, pad, False)
        embeddings = ref_unweighted_embeddings(text_encoder, torch.tensor(tokens, dtype=torch.long), False)
        weights = torch.tensor(weights, dtype=embeddings.dtype)
        previous_mean = embeddings.float().mean(axis=[-2, -1]).to(embeddings.dtype)
        embeddings = embeddings * weights.unsqueeze(-1)
        current_mean = embeddings.float().mean(axis=[-2, -1]).to(embeddings.dtype)
        embeddings = embeddings * (previous_mean / current_mean).unsqueeze(-1).unsqueeze(-1)
        results.append(embeddings)
    return results[0], results[1]


# --- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(clip_tokenizer_dir: Path) -> CLIPTokenizer:
    tok = CLIPTokenizer.from_pretrained(clip_tokenizer_dir)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    return tok


@pytest.fixture(scope="module")
def text_encoder() -> CLIPTextModel:
    """SD1.5's text tower shrunk (2 layers, width 64), random weights; real vocabulary and 77 positions."""
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=64,
        bos_token_id=49406,
        eos_token_id=49407,
    )
    model = CLIPTextModel(config).eval()
    # A fresh LayerNorm has bias 0, so every output vector would have mean ~0 and the lpw renormalisation
    # (a ratio of overall means) would divide noise by noise; the real CLIP's final LayerNorm has a bias.
    with torch.no_grad():
        for name, parameter in model.named_parameters():  # "text_model." prefix before transformers 5
            if name.endswith("final_layer_norm.bias"):
                parameter.normal_(0.2, 1.0)
    return model


@pytest.fixture(scope="module")
def clip(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer) -> TransformersCLIP:
    return TransformersCLIP(text_encoder, tokenizer)


# Words that the SD1.5 tokenizer maps to exactly one token each.
_WORDS = "red fox deep snow forest light tree river stone cloud moon blue green small house cat dog field".split()


def text_of(tokenizer: CLIPTokenizer, n: int) -> str:
    """A prompt of exactly n content tokens."""
    text = " ".join(_WORDS[i % len(_WORDS)] for i in range(n))
    assert len(tokenizer(text).input_ids) == n + 2
    return text


def _long(clip: TransformersCLIP, positive: str, negative: str, **kwargs):
    return encode_long_prompts(
        positive, negative, clip.tokenize, clip.encode, bos=clip.bos, eos=clip.eos, pad=clip.pad, **kwargs
    )


# --- llmga mode: the training encoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("positive_n", "negative_n", "length", "dropped"),
    [
        (10, 0, 77, 0),
        (76, 0, 152, 0),
        (150, 0, 152, 0),
        (299, 0, 302, 0),
        (400, 0, 302, 100),
        (10, 200, 227, 0),
        (0, 0, 77, 0),
    ],
)
def test_llmga_matches_official_batch(tokenizer, text_encoder, clip, positive_n, negative_n, length, dropped):
    positive = text_of(tokenizer, positive_n)
    negative = text_of(tokenizer, negative_n)
    result = _long(clip, positive, negative)

    ids = ref_get_text_index(tokenizer, [positive, negative])  # one official batch: both rows share k
    expected = ref_unweighted_embeddings(text_encoder, ids, no_boseos_middle=True)
    assert ids.shape[1] == expected.shape[1] == length
    assert result.positive.cond.shape == result.negative.cond.shape == (1, length, 64)
    assert result.length == length and result.chunks == (length - 2) // 75
    torch.testing.assert_close(result.positive.cond, expected[:1], atol=ATOL, rtol=0)
    torch.testing.assert_close(result.negative.cond, expected[1:], atol=ATOL, rtol=0)
    assert (result.dropped_positive, result.dropped_negative) == (dropped, 0)

    first_window = ids[:, :CHUNK_LENGTH].clone()
    first_window[:, -1] = tokenizer.eos_token_id
    with torch.no_grad():
        pooled = text_encoder(first_window).pooler_output
    torch.testing.assert_close(result.positive.pooled, pooled[:1], atol=ATOL, rtol=0)
    torch.testing.assert_close(result.negative.pooled, pooled[1:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("text", ["", "a red fox in deep snow", None])
def test_single_chunk_equals_standard_padded_encoding(tokenizer, text_encoder, clip, text):
    text = text_of(tokenizer, 75) if text is None else text
    result = _long(clip, text, "")
    ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    if text == "":
        assert ids[0].tolist() == [49406] + [49407] * 76
    with torch.no_grad():
        standard = text_encoder(ids)
    assert result.chunks == 1
    torch.testing.assert_close(result.positive.cond, standard.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(result.positive.pooled, standard.pooler_output, atol=ATOL, rtol=0)
    empty = tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(result.negative.cond, text_encoder(empty).last_hidden_state, atol=ATOL, rtol=0)


def test_llmga_treats_brackets_as_text(tokenizer, text_encoder, clip):
    prompt = "a (red:1.3) fox in [deep] snow"
    result = _long(clip, prompt, "")
    ids = tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(result.positive.cond, text_encoder(ids).last_hidden_state, atol=ATOL, rtol=0)


# --- lpw mode: the official inference encoding --------------------------------------------------------------


def _lpw_cases(tokenizer):
    weighted_long = f"({text_of(tokenizer, 60)}:1.2) [{text_of(tokenizer, 40)}] {text_of(tokenizer, 120)}"
    return [
        ("a (red:1.3) fox in [deep] snow", "", 3),
        ("a (red:1.3) fox in [deep] snow", "[blurry], (ugly:0.8) ((low quality))", 3),
        (text_of(tokenizer, 10), "", 3),
        (text_of(tokenizer, 76), "", 3),
        (text_of(tokenizer, 150), "", 3),
        (text_of(tokenizer, 299), "", 3),
        (text_of(tokenizer, 400), "", 3),
        (text_of(tokenizer, 299), "", 4),
        (text_of(tokenizer, 400), text_of(tokenizer, 80), 4),
        ("a (red:1.3) fox", f"(({text_of(tokenizer, 160)}))", 4),
        (weighted_long, "(worst quality:1.4)", 3),
        (weighted_long, "(worst quality:1.4)", 4),
        ("", "", 3),
    ]


@pytest.mark.parametrize("case", range(13))
def test_lpw_matches_official(tokenizer, text_encoder, clip, case):
    positive, negative, multiples = _lpw_cases(tokenizer)[case]
    result = _long(clip, positive, negative, mode="lpw", max_chunks=multiples)
    expected_positive, expected_negative = ref_weighted_embeddings(
        tokenizer, text_encoder, positive, negative, multiples
    )
    assert expected_positive.shape == expected_negative.shape
    assert result.positive.cond.shape == expected_positive.shape
    assert result.length == 77 * result.chunks == expected_positive.shape[1]
    torch.testing.assert_close(result.positive.cond, expected_positive, atol=ATOL, rtol=0)
    torch.testing.assert_close(result.negative.cond, expected_negative, atol=ATOL, rtol=0)


def test_lpw_lengths_and_truncation(tokenizer, clip):
    lengths = {n: _long(clip, text_of(tokenizer, n), "", mode="lpw") for n in (10, 76, 150, 299, 400)}
    assert {n: r.length for n, r in lengths.items()} == {10: 77, 76: 154, 150: 154, 299: 231, 400: 231}
    assert {n: r.dropped_positive for n, r in lengths.items()} == {10: 0, 76: 0, 150: 0, 299: 74, 400: 175}
    four = _long(clip, text_of(tokenizer, 400), text_of(tokenizer, 310), mode="lpw", max_chunks=4)
    assert (four.length, four.dropped_positive, four.dropped_negative) == (308, 100, 10)


def test_lpw_without_brackets_equals_unweighted_keep_boseos(tokenizer, text_encoder, clip):
    prompt = text_of(tokenizer, 150)
    result = _long(clip, prompt, "", mode="lpw")
    ids = ref_get_text_index(tokenizer, [prompt], max_embeddings_multiples=3)
    expected = ref_unweighted_embeddings(text_encoder, ids, no_boseos_middle=False)
    torch.testing.assert_close(result.positive.cond, expected, atol=ATOL, rtol=0)


# --- truncation, sharing k, the pure-python chunking ---------------------------------------------------------


def test_truncation_counts_and_warnings(tokenizer, clip):
    result = _long(clip, text_of(tokenizer, 337), text_of(tokenizer, 301))
    assert (result.dropped_positive, result.dropped_negative, result.token_limit) == (37, 1, 300)
    assert result.truncation_warnings() == [
        "positive prompt: dropped 37 tokens past the 300-token limit",
        "negative prompt: dropped 1 token past the 300-token limit",
    ]
    assert _long(clip, text_of(tokenizer, 300), "").truncation_warnings() == []
    assert _long(clip, text_of(tokenizer, 226), "", mode="lpw").truncation_warnings() == [
        "positive prompt: dropped 1 token past the 225-token limit"
    ]


def test_summary_and_group_warnings_use_singular_and_plural(tokenizer, clip):
    assert _long(clip, text_of(tokenizer, 10), "").summary() == "llmga: 1 chunk, 77 positions"
    assert _long(clip, text_of(tokenizer, 337), "").summary() == "llmga: 4 chunks, 302 positions"
    assert _long(clip, text_of(tokenizer, 80), "", mode="lpw").summary() == "lpw: 2 chunks, 154 positions"
    group = encode_prompt_group((text_of(tokenizer, 301), text_of(tokenizer, 302), text_of(tokenizer, 400)),
                                clip.tokenize, clip.encode)
    assert group.truncation_warnings(("source", "target")) == [
        "source prompt: dropped 1 token past the 300-token limit",
        "target prompt: dropped 2 tokens past the 300-token limit",
    ]


@pytest.mark.parametrize("mode", MODES)
def test_call_per_prompt_gives_each_prompt_its_own_pooled_output(tokenizer, clip, mode):
    """An encoder like ComfyUI's CLIP, which returns the first window's pooled output for a whole call: with one call
    per prompt the negative keeps its own pooled output; the conds equal the shared call's bit for bit."""
    calls = []

    def first_pooled_only(ids):
        calls.append(ids.shape[0])
        hidden, pooled = clip.encode(ids)
        return hidden, pooled[:1].expand(ids.shape[0], -1)

    positive, negative = text_of(tokenizer, 160), "blurry, low quality"
    shared = _long(clip, positive, negative, mode=mode)
    per_prompt = encode_long_prompts(positive, negative, clip.tokenize, first_pooled_only, mode=mode, bos=clip.bos,
                                     eos=clip.eos, pad=clip.pad, call_per_prompt=True)
    assert calls == [3, 2]  # one call each; the negative's two all-padding windows are encoded once
    for ours, reference in ((per_prompt.positive, shared.positive), (per_prompt.negative, shared.negative)):
        assert torch.equal(ours.pooled, reference.pooled)
        torch.testing.assert_close(ours.cond, reference.cond, atol=ATOL, rtol=0)
    assert not torch.equal(per_prompt.negative.pooled, per_prompt.positive.pooled)


@pytest.mark.parametrize("mode", MODES)
def test_positive_and_negative_share_chunk_count(tokenizer, clip, mode):
    short_positive = _long(clip, text_of(tokenizer, 5), text_of(tokenizer, 160), mode=mode)
    long_positive = _long(clip, text_of(tokenizer, 160), text_of(tokenizer, 5), mode=mode)
    for result in (short_positive, long_positive):
        assert result.chunks == 3
        assert result.positive.cond.shape == result.negative.cond.shape == (1, sequence_length(3, mode), 64)


@pytest.mark.parametrize("pad", [49407, 0])
@pytest.mark.parametrize("lengths", [(0,), (3, 0), (75,), (76, 10), (150, 151), (300, 2)])
def test_chunks_equal_official_windows(lengths, pad):
    prompts = [PromptTokens(ids=tuple(range(1000, 1000 + n)), weights=None, dropped=0) for n in lengths]
    chunked = chunk_prompt_tokens(prompts, bos=49406, eos=49407, pad=pad)
    k = max(1, (max(lengths) - 1) // 75 + 1)
    for prompt, n in zip(chunked, lengths, strict=True):
        row = [49406] + list(range(1000, 1000 + n)) + [pad] * (75 * k - n) + [49407]
        windows = [row] if k == 1 else [[49406, *row[75 * i + 1 : 75 * i + 76], 49407] for i in range(k)]
        assert [list(c) for c in prompt.chunks] == windows
        assert prompt.weights is None


@pytest.mark.parametrize("lengths", [(0, 5), (10, 0), (75, 3), (76, 0), (150, 151), (225, 1)])
def test_lpw_position_weights_equal_official(lengths):
    weights = [[1.0 + 0.01 * (i % 7) for i in range(n)] for n in lengths]
    prompts = [
        PromptTokens(ids=tuple(range(n)), weights=tuple(w), dropped=0) for n, w in zip(lengths, weights, strict=True)
    ]
    k = max(1, (max(lengths) - 1) // 75 + 1)
    _, expected = ref_pad_tokens_and_weights(
        [list(p.ids) for p in prompts], [list(w) for w in weights], 75 * k + 2, 49406, 49407, 49407, False
    )
    assert [list(p.weights) for p in chunk_prompt_tokens(prompts)] == expected


def test_tokenize_prompt_lpw_tokenizes_fragments(tokenizer, clip):
    tokens = tokenize_prompt("a (red:1.3) fox in [deep] snow", clip.tokenize, mode="lpw")
    expected, expected_weights = ref_prompts_with_weights(tokenizer, ["a (red:1.3) fox in [deep] snow"], 225)
    assert list(tokens.ids) == expected[0] and list(tokens.weights) == expected_weights[0]
    assert tokens.weights == (1.0, 1.3, 1.0, 1.0, 1 / 1.1, 1.0)


def test_binding_tokenize_is_content_ids(tokenizer, clip):
    for text in ("", "a red fox", text_of(tokenizer, 120)):
        assert clip.tokenize(text) == tokenizer(text).input_ids[1:-1]


def test_encode_chunks_checks_encoder_output(clip):
    chunked = chunk_prompt_tokens([PromptTokens(ids=(320,), weights=None, dropped=0)])

    def bad_encode(ids):
        return torch.zeros(ids.shape[0], 76, 8), torch.zeros(ids.shape[0], 8)

    with pytest.raises(ValueError, match=r"hidden \[1, 77, C\]"):
        encode_chunks(chunked, bad_encode)
    with pytest.raises(ValueError, match="unknown long-prompt mode"):
        encode_long_prompts("a", "", clip.tokenize, clip.encode, mode="comfy")
    with pytest.raises(ValueError, match="max_chunks"):
        encode_long_prompts("a", "", clip.tokenize, clip.encode, max_chunks=0)


# --- the weight parser ----------------------------------------------------------------------------------------

_PARSER_CASES = [
    "normal text",
    "an (important) word",
    "(unbalanced",
    r"\(literal\]",
    "(unnecessary)(parens)",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "",
    "a (red:1.3) fox in [deep] snow",
    "[[a]] b] c) :d (e:-0.5) f:1.2) (g:+2)",
    r"x\y \\ z (a\:1.2)b [w (v:2)]",
    "a(\\:1.2)b",
    "(a:1.2)(b:1.2) ((c)",
]


@pytest.mark.parametrize("text", _PARSER_CASES)
def test_parser_matches_official(text):
    assert parse_prompt_weights(text) == [tuple(pair) for pair in ref_parse_prompt_attention(text)]


def test_parser_docstring_example():
    # The official parse_prompt_attention docstring.
    assert parse_prompt_weights("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).") == [
        ("a ", 1.0),
        ("house", pytest.approx(1.573)),
        (" ", 1.1),
        ("on", 1.0),
        (" a ", 1.1),
        ("hill", 0.55),
        (", sun, ", 1.1),
        ("sky", pytest.approx(1.4641)),
        (".", 1.1),
    ]


def test_parser_keeps_invalid_weight_as_text():
    with pytest.raises(ValueError):
        ref_parse_prompt_attention("(a:.)")  # the official parser crashes on float(".")
    assert parse_prompt_weights("(a:.) b") == [("a:.) b", 1.1)]
