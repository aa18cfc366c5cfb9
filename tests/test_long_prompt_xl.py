"""SDXL long-prompt encoding: parity with the official LLMGA SDXL code on the real CLIP tokenizers (tokenizer 2 padding
with "!") and tiny random CLIP-L / CLIP-bigG shaped text encoders.

The `ref_*` functions are an independent re-implementation of the official code, following its structure step by
step: llmga/diffusers/my_utils/util.py (`get_text_index`, `get_unweighted_text_embeddings_SDXL1` and `_SDXL2`, with
SDXL2's "window with the larger max id" pooled rule), the `encode_prompt` of pipeline_stable_diffusion_xl_lpw.py
(positive concatenated on channels, zeros for no negative, the negative encoded on its own) and the `encode_prompt` of
train_text_to_image_sdxl.py (one batch, lengths clipped to the shorter). Where the official pipeline fails (an
explicit negative whose k differs from the prompt's: `torch.cat` of unequal lengths) the reference is the documented
fix: the shorter group's id rows padded with pad windows to the longer k, its pooled embedding its own k's.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from llmga.prompt.clip_binding import TransformersSDXLCLIP, sdxl_caption_embeddings, sdxl_long_prompt_embeddings
from llmga.prompt.long_prompt_xl import encode_sdxl_long_prompts, encode_sdxl_prompt_batch

ATOL = 1e-6
WIDTH_1, WIDTH_2, PROJECTION = 32, 48, 40

# --- independent re-implementation of the official code ---------------------------------------------------


def ref_get_text_index(tokenizer: CLIPTokenizer, prompts: list[str], max_embeddings_multiples: int = 4):
    """get_text_index: truncate at (77-2)*4+2, strip BOS/EOS, k from the longest row, `[bos] t [pad]... [eos]`."""
    max_length = (tokenizer.model_max_length - 2) * max_embeddings_multiples + 2
    tokens = [ids[1:-1] for ids in tokenizer(prompts, max_length=max_length, truncation=True).input_ids]
    longest = max(len(t) for t in tokens)
    multiples = min(max_embeddings_multiples, (longest - 1) // (tokenizer.model_max_length - 2) + 1)
    multiples = max(1, multiples)
    max_length = (tokenizer.model_max_length - 2) * multiples + 2
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = getattr(tokenizer, "pad_token_id", eos)
    rows = [[bos] + t + [pad] * (max_length - 1 - len(t) - 1) + [eos] for t in tokens]
    return torch.tensor(rows, dtype=torch.long)


def ref_sdxl_text_embeddings(text_encoder, ids: torch.Tensor, second: bool, chunk_length: int = 77):
    """get_unweighted_text_embeddings_SDXL1 (second=False) / _SDXL2 (second=True), no_boseos_middle=True, no clip
    skip: (first output, hidden_states[-2]); SDXL2's first output is text_embeds of the window with the larger max id
    (ties go to the later window), SDXL1's the trimmed last_hidden_state."""
    multiples = (ids.shape[1] - 2) // (chunk_length - 2)
    with torch.no_grad():
        if multiples <= 1:
            out = text_encoder(ids, output_hidden_states=True)
            return out[0], out.hidden_states[-2]
        firsts, states, max_ids = [], [], None
        chosen = None
        for i in range(multiples):
            chunk = ids[:, i * (chunk_length - 2) : (i + 1) * (chunk_length - 2) + 2].clone()
            chunk[:, 0] = ids[0, 0]
            chunk[:, -1] = ids[0, -1]
            out = text_encoder(chunk, output_hidden_states=True)
            first, hidden = out[0], out.hidden_states[-2]
            if i == 0:
                cut = slice(None, -1)
            elif i == multiples - 1:
                cut = slice(1, None)
            else:
                cut = slice(1, -1)
            states.append(hidden[:, cut])
            if second:
                now = torch.max(chunk, dim=1, keepdim=True)[0].view(-1, 1)
                if chosen is None:
                    chosen, max_ids = first, now
                else:
                    chosen = torch.where(max_ids > now, chosen, first)
            else:
                firsts.append(first[:, cut])
        hidden = torch.cat(states, dim=1)
        return (chosen if second else torch.cat(firsts, dim=1)), hidden


def ref_pipeline_prompt(models, prompts: list[str], max_embeddings_multiples: int = 4):
    """The lpw SDXL pipeline's prompt branch: (prompt_embeds [B, L, C1+C2], pooled [B, P])."""
    ids_1 = ref_get_text_index(models.tokenizer, prompts, max_embeddings_multiples)
    ids_2 = ref_get_text_index(models.tokenizer_2, prompts, max_embeddings_multiples)
    _, hidden_1 = ref_sdxl_text_embeddings(models.text_encoder, ids_1, second=False)
    pooled, hidden_2 = ref_sdxl_text_embeddings(models.text_encoder_2, ids_2, second=True)
    return torch.cat([hidden_1, hidden_2], dim=-1), pooled


def ref_pipeline_negative(models, negative: str):
    """The lpw SDXL pipeline's explicit-negative branch at batch 1: both encoders through the SDXL2 helper (its `fg=1`
    routing), the pooled embedding of the last call; the negative's own k."""
    hidden = []
    for tokenizer, encoder in ((models.tokenizer, models.text_encoder), (models.tokenizer_2, models.text_encoder_2)):
        pooled, states = ref_sdxl_text_embeddings(encoder, ref_get_text_index(tokenizer, [negative]), second=True)
        hidden.append(states)
    return torch.cat(hidden, dim=-1), pooled


def ref_padded_to(models, prompts: list[str], windows: int):
    """The fix where the official pipeline fails: the group's id rows padded with pad windows to `windows` chunks
    (row[:-1] + pad * 75 * extra + EOS), hidden states of those; the pooled embedding of the group's own k."""
    hidden = []
    for tokenizer, encoder, second in ((models.tokenizer, models.text_encoder, False),
                                       (models.tokenizer_2, models.text_encoder_2, True)):
        ids = ref_get_text_index(tokenizer, prompts)
        extra = windows * 75 + 2 - ids.shape[1]
        padded = torch.cat([ids[:, :-1], torch.full((ids.shape[0], extra), tokenizer.pad_token_id), ids[:, -1:]], 1)
        hidden.append(ref_sdxl_text_embeddings(encoder, padded, second)[1])
    return torch.cat(hidden, dim=-1), ref_pipeline_prompt(models, prompts)[1]


def ref_training_encode_prompt(models, captions: list[str]):
    """train_text_to_image_sdxl.py encode_prompt (no caption dropout): clip to the shorter sequence, concatenate."""
    ids_1 = ref_get_text_index(models.tokenizer, captions)
    ids_2 = ref_get_text_index(models.tokenizer_2, captions)
    _, hidden_1 = ref_sdxl_text_embeddings(models.text_encoder, ids_1, second=False)
    pooled, hidden_2 = ref_sdxl_text_embeddings(models.text_encoder_2, ids_2, second=True)
    length = min(hidden_1.shape[1], hidden_2.shape[1])
    return torch.cat([hidden_1[:, :length], hidden_2[:, :length]], dim=-1), pooled.view(len(captions), -1)


# --- fixtures -----------------------------------------------------------------------------------------------


def _config(width: int, layers: int, act: str) -> CLIPTextConfig:
    # Real vocabulary and 77 positions; eos_token_id 2 as SDXL's released text encoder configs say (transformers then
    # pools at the largest id: the EOS that ends every window).
    return CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                          num_attention_heads=4, max_position_embeddings=77, hidden_act=act, projection_dim=PROJECTION,
                          bos_token_id=0, eos_token_id=2, pad_token_id=1)


@pytest.fixture(scope="module")
def models(clip_tokenizer_dir: Path) -> SimpleNamespace:
    """SDXL's text side shrunk: CLIP-L (quick_gelu) and CLIP-bigG with projection (gelu), 3 layers each, random."""
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_dir, model_max_length=77)
    tokenizer_2 = CLIPTokenizer.from_pretrained(clip_tokenizer_dir, model_max_length=77, pad_token="!")
    assert (tokenizer.pad_token_id, tokenizer_2.pad_token_id) == (49407, 0)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_config(WIDTH_1, 3, "quick_gelu")).eval()
    text_encoder_2 = CLIPTextModelWithProjection(_config(WIDTH_2, 3, "gelu")).eval()
    return SimpleNamespace(tokenizer=tokenizer, tokenizer_2=tokenizer_2, text_encoder=text_encoder,
                           text_encoder_2=text_encoder_2)


@pytest.fixture(scope="module")
def encoders(models) -> TransformersSDXLCLIP:
    return TransformersSDXLCLIP(models.text_encoder, models.text_encoder_2, models.tokenizer, models.tokenizer_2)


_WORDS = "red fox deep snow forest light tree river stone cloud moon blue green small house cat dog field".split()


def text_of(models, n: int, offset: int = 0) -> str:
    """A prompt of exactly n content tokens (both tokenizers)."""
    text = " ".join(_WORDS[(i + offset) % len(_WORDS)] for i in range(n))
    assert len(models.tokenizer(text).input_ids) == len(models.tokenizer_2(text).input_ids) == n + 2
    return text


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


# --- inference: the lpw SDXL pipeline's encode_prompt ---------------------------------------------------------


@pytest.mark.parametrize(("tokens", "length", "dropped"), [
    (1, 77, 0), (10, 77, 0), (75, 77, 0), (76, 152, 0), (150, 152, 0), (151, 227, 0), (226, 302, 0), (300, 302, 0),
    (400, 302, 100),
])
def test_prompt_matches_official_pipeline(models, encoders, tokens, length, dropped):
    prompt = text_of(models, tokens)
    result = encode_sdxl_long_prompts(encoders, prompt)
    expected, pooled = ref_pipeline_prompt(models, [prompt])
    assert expected.shape == (1, length, WIDTH_1 + WIDTH_2)
    close(result.embeddings, expected)
    close(result.pooled, pooled)
    assert result.length == length and result.chunks == (length - 2) // 75
    assert result.dropped_positive == (dropped,) and result.dropped_negative == (0,)
    # No negative: zeros of the prompt's shape (force_zeros_for_empty_prompt).
    assert torch.equal(result.negative_embeddings, torch.zeros_like(expected))
    assert torch.equal(result.negative_pooled, torch.zeros_like(pooled))


def test_pooled_is_the_last_windows_final_eos(models, encoders):
    """The SDXL2 max-id rule picks the last window; its text_embeds pool at position 76, the window's only EOS."""
    prompt = text_of(models, 160)
    ids = ref_get_text_index(models.tokenizer_2, [prompt])
    last = torch.cat([ids[:, :1], ids[:, 151:226], ids[:, -1:]], dim=1)
    assert last[0].tolist().index(49407) == 76
    with torch.no_grad():
        expected = models.text_encoder_2(last).text_embeds
    close(encode_sdxl_long_prompts(encoders, prompt).pooled, expected)


@pytest.mark.parametrize("lengths", [(10, 160, 80), (0, 300), (76, 75), (400, 20)])
def test_batch_matches_official_pipeline(models, encoders, lengths):
    prompts = [text_of(models, n, offset=i) for i, n in enumerate(lengths)]
    result = encode_sdxl_long_prompts(encoders, prompts)
    expected, pooled = ref_pipeline_prompt(models, prompts)
    close(result.embeddings, expected)
    close(result.pooled, pooled)
    assert result.negative_embeddings.shape == expected.shape and not result.negative_embeddings.any()
    assert result.negative_pooled.shape == pooled.shape and not result.negative_pooled.any()


@pytest.mark.parametrize("negative", [None, "", "  "])
def test_no_negative_is_zeros(models, encoders, negative):
    result = encode_sdxl_long_prompts(encoders, text_of(models, 160), negative)
    assert result.negative_embeddings.shape == (1, 227, WIDTH_1 + WIDTH_2)
    assert not result.negative_embeddings.any() and not result.negative_pooled.any()
    assert result.negative_zeros == (True,)
    assert result.summary() == "llmga: 3 chunks, 227 positions, no negative prompt: zeros"


@pytest.mark.parametrize(("positive_n", "negative_n"), [(10, 5), (120, 100), (300, 226), (0, 3)])
def test_negative_with_the_prompts_k_matches_official(models, encoders, positive_n, negative_n):
    positive, negative = text_of(models, positive_n), text_of(models, negative_n, offset=3)
    result = encode_sdxl_long_prompts(encoders, positive, negative)
    expected, pooled = ref_pipeline_negative(models, negative)
    close(result.negative_embeddings, expected)
    close(result.negative_pooled, pooled)
    close(result.embeddings, ref_pipeline_prompt(models, [positive])[0])
    assert result.negative_zeros == (False,) and result.summary().endswith("positions")


@pytest.mark.parametrize(("positive_n", "negative_n"), [(160, 5), (300, 80), (76, 1)])
def test_short_negative_is_padded_to_the_prompts_length(models, encoders, positive_n, negative_n):
    positive, negative = text_of(models, positive_n), text_of(models, negative_n, offset=5)
    result = encode_sdxl_long_prompts(encoders, positive, negative)
    windows = (result.length - 2) // 75
    expected, pooled = ref_padded_to(models, [negative], windows)
    close(result.negative_embeddings, expected)
    close(result.negative_pooled, pooled)  # its own k's pooled embedding
    own, _ = ref_pipeline_negative(models, negative)
    close(result.negative_embeddings[:, : own.shape[1] - 1], own[:, :-1])  # official positions; EOS moved to the end
    prompt_embeddings, prompt_pooled = ref_pipeline_prompt(models, [positive])
    close(result.embeddings, prompt_embeddings)
    close(result.pooled, prompt_pooled)


def test_long_negative_pads_the_prompt(models, encoders):
    positive, negative = "a red fox in deep snow", text_of(models, 200)
    result = encode_sdxl_long_prompts(encoders, positive, negative)
    assert result.length == 227 and result.chunks == 3
    expected, pooled = ref_padded_to(models, [positive], 3)
    close(result.embeddings, expected)
    close(result.pooled, pooled)
    official, official_pooled = ref_pipeline_prompt(models, [positive])
    close(result.embeddings[:, :76], official[:, :76])
    close(result.pooled, official_pooled)
    close(result.negative_embeddings, ref_pipeline_negative(models, negative)[0])


def test_batch_negatives(models, encoders):
    """One negative per prompt, an empty one zeros; the encoded negatives share their own k, as the official pipeline
    (which routes encoder 1 through the SDXL2 helper and so fails on batch > 1 with long negatives) means them."""
    prompts = [text_of(models, 160), text_of(models, 20, offset=1), text_of(models, 5, offset=2)]
    negatives = ["blurry, low quality", "", text_of(models, 90, offset=4)]
    result = encode_sdxl_long_prompts(encoders, prompts, negatives)
    close(result.embeddings, ref_pipeline_prompt(models, prompts)[0])
    expected, pooled = ref_padded_to(models, [negatives[0], negatives[2]], 3)
    close(result.negative_embeddings[[0, 2]], expected)
    close(result.negative_pooled[[0, 2]], pooled)
    assert not result.negative_embeddings[1].any() and not result.negative_pooled[1].any()
    assert result.negative_zeros == (False, True, False)
    shared = encode_sdxl_long_prompts(encoders, prompts[:2], "blurry, low quality")
    close(shared.negative_embeddings[0], shared.negative_embeddings[1])


def test_negative_text_with_exclamation_marks(models, encoders):
    """Tokenizer 2 pads with "!" (id 0), so "a dog!" and "a dog" give the same encoder-2 windows; encoder 1 differs."""
    result = encode_sdxl_long_prompts(encoders, ["a dog!", "a dog"])
    expected, pooled = ref_pipeline_prompt(models, ["a dog!", "a dog"])
    close(result.embeddings, expected)
    close(result.pooled, pooled)
    assert torch.equal(result.pooled[0], result.pooled[1])
    assert not torch.equal(result.embeddings[0, :, :WIDTH_1], result.embeddings[1, :, :WIDTH_1])


# --- training: train_text_to_image_sdxl.py encode_prompt ------------------------------------------------------


@pytest.mark.parametrize("lengths", [(10,), (0, 120, 40, 300), (500, 76)])
def test_training_batch_matches_official_encode_prompt(models, encoders, lengths):
    captions = [text_of(models, n, offset=i) for i, n in enumerate(lengths)]
    batch = encode_sdxl_prompt_batch(encoders, captions)
    expected, pooled = ref_training_encode_prompt(models, captions)
    close(batch.embeddings, expected)
    close(batch.pooled, pooled)
    assert batch.chunks == (expected.shape[1] - 2) // 75 or expected.shape[1] == 77
    assert batch.dropped == tuple(max(0, n - 300) for n in lengths)
    via_parts = sdxl_caption_embeddings(models.text_encoder, models.text_encoder_2, models.tokenizer,
                                        models.tokenizer_2, captions)
    assert torch.equal(via_parts.embeddings, batch.embeddings) and torch.equal(via_parts.pooled, batch.pooled)


def test_training_batch_of_one_equals_inference(encoders, models):
    prompt = text_of(models, 230)
    batch = encode_sdxl_prompt_batch(encoders, [prompt])
    inference = encode_sdxl_long_prompts(encoders, prompt)
    assert torch.equal(batch.embeddings, inference.embeddings) and torch.equal(batch.pooled, inference.pooled)


def test_tokenizers_that_disagree_are_clipped_to_the_shorter(encoders):
    """Two tokenizers giving different lengths: each encoder chunked on its own, both clipped to the shorter."""
    longer = SimpleNamespace(tokenize_1=encoders.tokenize_1, tokenize_2=lambda text: encoders.tokenize_2(text) * 2,
                             bos=encoders.bos, eos=encoders.eos, pad_1=encoders.pad_1, pad_2=encoders.pad_2,
                             pooled_per_call=False, encode=encoders.encode)
    prompt = " ".join(_WORDS * 4)  # 72 tokens: k = 1 for tokenizer 1, 2 for the doubled tokenizer 2
    clipped = encode_sdxl_prompt_batch(longer, [prompt])
    plain = encode_sdxl_prompt_batch(encoders, [prompt])
    assert clipped.embeddings.shape == (1, 77, WIDTH_1 + WIDTH_2)
    assert torch.equal(clipped.embeddings[..., :WIDTH_1], plain.embeddings[..., :WIDTH_1])
    assert not torch.equal(clipped.embeddings[..., WIDTH_1:], plain.embeddings[..., WIDTH_1:])


# --- the encoder interface ------------------------------------------------------------------------------------


def test_windows_are_the_official_ones(models, encoders):
    seen = []

    def recording(ids_1, ids_2):
        seen.append((ids_1.tolist(), ids_2.tolist()))
        return encoders.encode(ids_1, ids_2)

    recorder = SimpleNamespace(**{k: getattr(encoders, k) for k in ("tokenize_1", "tokenize_2", "bos", "eos", "pad_1",
                                                                       "pad_2", "pooled_per_call")}, encode=recording)
    prompt = text_of(models, 160) + " wow!"
    encode_sdxl_long_prompts(recorder, prompt)
    (ids_1, ids_2), = seen
    for ids, tokenizer in ((ids_1, models.tokenizer), (ids_2, models.tokenizer_2)):
        row = ref_get_text_index(tokenizer, [prompt])[0].tolist()
        windows = [[row[0], *row[75 * i + 1 : 75 * i + 76], row[-1]] for i in range(3)]
        assert sorted(ids) == sorted(windows)
    assert ids_2[0] == [49406, *ref_get_text_index(models.tokenizer_2, [prompt])[0].tolist()[151:226], 49407]
    assert ids_2[0][-5:] == [0, 0, 0, 0, 49407]  # tokenizer 2: "!" padding, one EOS at the end
    assert ids_1[-1][-5:] == [49407] * 5


def test_one_call_per_prompt_for_encoders_with_one_pooled_output(models, encoders):
    """An encoder like ComfyUI's CLIP (one pooled output per call, the first window's): one call per prompt with
    the prompt's pooled window first gives the shared call's numbers; repeated padding windows are encoded once."""
    calls = []

    def first_pooled_only(ids_1, ids_2):
        calls.append((ids_1.shape[0], ids_2.shape[0]))
        hidden_1, hidden_2, pooled = encoders.encode(ids_1, ids_2)
        return hidden_1, hidden_2, pooled[:1].expand(ids_2.shape[0], -1)

    per_call = SimpleNamespace(tokenize_1=encoders.tokenize_1, tokenize_2=encoders.tokenize_2, bos=encoders.bos,
                               eos=encoders.eos, pad_1=encoders.pad_1, pad_2=encoders.pad_2, pooled_per_call=True,
                               encode=first_pooled_only)
    positive, negative = text_of(models, 290), "blurry, low quality"
    ours = encode_sdxl_long_prompts(per_call, positive, negative)
    shared = encode_sdxl_long_prompts(encoders, positive, negative)
    assert calls == [(4, 4), (2, 2)]  # the negative: its own window and one padding window (three times)
    for a, b in ((ours.embeddings, shared.embeddings), (ours.negative_embeddings, shared.negative_embeddings),
                 (ours.pooled, shared.pooled), (ours.negative_pooled, shared.negative_pooled)):
        close(a, b)
    assert not torch.equal(ours.pooled, ours.negative_pooled)


def test_binding_ids_and_content_tokens(models, encoders):
    assert (encoders.bos, encoders.eos, encoders.pad_1, encoders.pad_2) == (49406, 49407, 49407, 0)
    for text in ("", "a red fox!", text_of(models, 120)):
        assert encoders.tokenize_1(text) == models.tokenizer(text).input_ids[1:-1]
        assert encoders.tokenize_2(text) == models.tokenizer_2(text).input_ids[1:-1]


def test_pipeline_parts_function_equals_the_protocol_call(models, encoders):
    prompt = text_of(models, 100)
    via_parts = sdxl_long_prompt_embeddings(models.text_encoder, models.text_encoder_2, models.tokenizer,
                                            models.tokenizer_2, prompt, "blurry")
    direct = encode_sdxl_long_prompts(encoders, prompt, "blurry")
    assert torch.equal(via_parts.embeddings, direct.embeddings)
    assert torch.equal(via_parts.negative_pooled, direct.negative_pooled)


def test_max_chunks_matches_official_multiples(models, encoders):
    prompt = text_of(models, 200)
    result = encode_sdxl_long_prompts(encoders, prompt, max_chunks=2)
    expected, pooled = ref_pipeline_prompt(models, [prompt], max_embeddings_multiples=2)
    close(result.embeddings, expected)
    close(result.pooled, pooled)
    assert result.dropped_positive == (50,)
    assert result.truncation_warnings() == ["positive prompt: dropped 50 tokens past the 150-token limit"]


def test_truncation_warnings_and_summary(models, encoders):
    result = encode_sdxl_long_prompts(encoders, text_of(models, 337), text_of(models, 301))
    assert result.truncation_warnings() == [
        "positive prompt: dropped 37 tokens past the 300-token limit",
        "negative prompt: dropped 1 token past the 300-token limit",
    ]
    assert result.summary() == "llmga: 4 chunks, 302 positions"
    batch = encode_sdxl_long_prompts(encoders, [text_of(models, 5), text_of(models, 302)])
    assert batch.truncation_warnings() == ["positive prompt 2: dropped 2 tokens past the 300-token limit"]
    captions = encode_sdxl_prompt_batch(encoders, ["a fox", text_of(models, 301)])
    assert captions.truncation_warnings(["first", "second"]) == [
        "second prompt: dropped 1 token past the 300-token limit"]
    assert encode_sdxl_long_prompts(encoders, "a fox", "blurry").summary() == "llmga: 1 chunk, 77 positions"


def test_bad_input_is_refused(models, encoders):
    with pytest.raises(ValueError, match="2 negative prompts for 3 prompts"):
        encode_sdxl_long_prompts(encoders, ["a", "b", "c"], ["x", "y"])
    with pytest.raises(ValueError, match="no prompts to encode"):
        encode_sdxl_long_prompts(encoders, [])
    with pytest.raises(ValueError, match="no captions to encode"):
        encode_sdxl_prompt_batch(encoders, [])
    with pytest.raises(ValueError, match="max_chunks"):
        encode_sdxl_long_prompts(encoders, "a", max_chunks=0)
    broken = SimpleNamespace(tokenize_1=encoders.tokenize_1, tokenize_2=encoders.tokenize_2, bos=49406, eos=49407,
                             pad_1=49407, pad_2=0, pooled_per_call=False,
                             encode=lambda a, b: (torch.zeros(len(a), 76, 4), torch.zeros(len(b), 77, 4),
                                                  torch.zeros(len(b), 4)))
    with pytest.raises(ValueError, match=r"hidden_1 \[1, 77, C1\]"):
        encode_sdxl_long_prompts(broken, "a fox")
    no_pad = CLIPTokenizer.from_pretrained(models.tokenizer.name_or_path, model_max_length=77)
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="tokenizer_2 has no BOS/EOS/pad token"):
        TransformersSDXLCLIP(models.text_encoder, models.text_encoder_2, models.tokenizer, no_pad)
