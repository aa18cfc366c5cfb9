"""Prompt-to-Prompt control (llmga.edit.alignment, llmga.edit.p2p): token maps against the official semantics,
long prompts in both layouts, step windows, LocalBlend, and a controlled Direct Inversion edit."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPTokenizer

from llmga.edit.alignment import (
    changed_token_positions,
    refinement_mapper,
    replacement_mapper,
    word_positions,
)
from llmga.edit.attention import AttentionControl, attention_probs, controlled_attention, merge_heads, split_heads
from llmga.edit.inversion import direct_inversion_edit, sd15_alphas_cumprod
from llmga.edit.p2p import AttentionReweight, build_p2p_controller
from llmga.prompt.long_prompt import content_position, encode_prompt_group, position_token_ids

HEADS = 2


@pytest.fixture(scope="module")
def tokenizer(clip_tokenizer_dir: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(clip_tokenizer_dir)


@pytest.fixture(scope="module")
def tokenize(tokenizer: CLIPTokenizer):
    return lambda text: list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def fake_encode(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in text encoder: hidden [n,77,8] from the ids, pooled [n,8] (P2P only reads the token layout)."""
    hidden = torch.stack([torch.cos(ids.double() * (k + 1) / 997) for k in range(8)], dim=-1)
    return hidden, hidden[:, 0]


def group_of(texts, tokenize, mode="llmga"):
    return encode_prompt_group(texts, tokenize, fake_encode, mode=mode, max_chunks=4)


# --- Refine: the official alignment --------------------------------------------------------------------------


def official_refinement_mapper(tokenizer: CLIPTokenizer, source: str, target: str, max_len: int = 77):
    """seq_aligner.py get_mapper as the official code computes it: a numpy Needleman–Wunsch table (gap 0, match 1,
    mismatch −1) with traceback codes 1 left / 2 up / 3 diagonal tried in that order, walked back from the end."""
    x, y = tokenizer.encode(source), tokenizer.encode(target)
    score = np.zeros((len(x) + 1, len(y) + 1), dtype=np.int32)
    trace = np.zeros((len(x) + 1, len(y) + 1), dtype=np.int32)
    trace[0, 1:], trace[1:, 0], trace[0, 0] = 1, 2, 4
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            left, up = score[i, j - 1], score[i - 1, j]
            diag = score[i - 1, j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            score[i, j] = max(left, up, diag)
            trace[i, j] = 1 if score[i, j] == left else 2 if score[i, j] == up else 3
    pairs, i, j = [], len(x), len(y)
    while trace[i, j] != 4:
        code = trace[i, j]
        if code == 3:
            i, j = i - 1, j - 1
            pairs.append((j, i))
        elif code == 1:
            j -= 1
            pairs.append((j, -1))
        else:
            i -= 1
    base = torch.tensor(pairs[::-1], dtype=torch.int64)
    alphas = torch.ones(max_len)
    alphas[: len(base)] = base[:, 1].ne(-1).float()
    mapper = torch.zeros(max_len, dtype=torch.int64)
    mapper[: len(base)] = base[:, 1]
    mapper[len(base) :] = len(y) + torch.arange(max_len - len(y))
    return mapper, alphas


SHORT_PAIRS = [
    ("a cat sitting on a mat", "a cat wearing a hat sitting on a mat"),
    ("a photo of a red car", "a photo of a blue car on the road"),
    ("a dog in the snow, watercolor", "a dog in the grass"),
    ("the quick brown fox", "a lazy dog jumps over the quick brown fox"),
    ("a hippopotamus eating a xylophone", "a small hippopotamus eating a big xylophone at night"),
    ("a man", "a man"),
    ("a red dog with a cat", "a cat with a red dog"),  # several optimal alignments: the tie-breaking decides
]


@pytest.mark.parametrize(("source", "target"), SHORT_PAIRS)
def test_refinement_mapper_equals_official_on_short_prompts(tokenizer, tokenize, source, target) -> None:
    mapper, alphas = refinement_mapper(tokenize(source), tokenize(target), 77)
    expected_mapper, expected_alphas = official_refinement_mapper(tokenizer, source, target)
    assert torch.equal(mapper, expected_mapper)
    assert torch.equal(alphas, expected_alphas)


_WORDS = "red fox deep snow forest light tree river stone cloud moon blue green small house cat dog field".split()


def long_pair(seed: int) -> tuple[str, str]:
    """A ~170-word source and a ~250-word target made from it by insertions, deletions and swaps."""
    rng = random.Random(seed)
    source = [rng.choice(_WORDS) for _ in range(170)]
    target = []
    for word in source:
        roll = rng.random()
        if roll < 0.08:
            continue
        target.append(word if roll > 0.16 else rng.choice(_WORDS))
        if roll > 0.6:
            target.append(rng.choice(("wooden", "golden", "misty")))
    return " ".join(source), " ".join(target)


@pytest.mark.parametrize("mode", ["llmga", "lpw"])
def test_refine_on_long_prompts_maps_target_tokens_to_the_same_source_tokens(tokenize, mode) -> None:
    source, target = long_pair(0)
    group = group_of([source, target, ""], tokenize, mode)
    source_ids, target_ids = group.tokens[0].ids, group.tokens[1].ids
    assert 150 <= len(source_ids) < len(target_ids) <= 300 and group.tokens[1].dropped == 0
    mapper, alphas = refinement_mapper(source_ids, target_ids, group.length, mode)
    assert mapper.shape == alphas.shape == (group.length,)
    source_tokens = position_token_ids(group.chunked[0], mode)
    target_tokens = position_token_ids(group.chunked[1], mode)
    content = [content_position(j, mode) for j in range(len(target_ids))]
    aligned = [p for p in content if alphas[p] == 1]
    assert len(aligned) >= 130  # most of the ~150 shared words are aligned
    assert all(source_tokens[mapper[p]] == target_tokens[p] for p in aligned)
    assert [int(mapper[p]) for p in aligned] == sorted({int(mapper[p]) for p in aligned})  # order kept, no repeats
    inserted = [p for p in content if alphas[p] == 0]
    assert all(mapper[p] == -1 for p in inserted)
    new_words = set(tokenize("wooden golden misty"))  # never in the source: always inserted
    assert all(alphas[p] == 0 for p in content if target_tokens[p] in new_words)
    assert mapper[content[-1] + 1] == content_position(len(source_ids) - 1, mode) + 1  # EOS -> EOS
    others = set(range(group.length)) - set(content) - {content[-1] + 1}  # BOS, padding, lpw window BOS/EOS
    assert all(mapper[p] == p and alphas[p] == 1 for p in others)
    if mode == "lpw":
        assert {76, 77, 153, 154} <= others and target_tokens[77] == 49406


@pytest.mark.parametrize("mode", ["llmga", "lpw"])
def test_word_positions_find_every_occurrence_past_the_first_chunk(tokenize, mode) -> None:
    source, _ = long_pair(1)
    group = group_of([source + " zebra", ""], tokenize, mode)
    tokens = position_token_ids(group.chunked[0], mode)
    zebra = word_positions("zebra", group.tokens[0].ids, tokenize, mode)
    assert len(zebra) == 1 and zebra[0] > 150 and tokens[zebra[0]] == tokenize("zebra")[0]
    moons = word_positions("moon", group.tokens[0].ids, tokenize, mode)
    assert len(moons) == source.split().count("moon") and all(tokens[p] == tokenize("moon")[0] for p in moons)
    with pytest.raises(ValueError, match=re.escape(f"'giraffe' is not in the target prompt '{source[:20]}")):
        word_positions("giraffe", group.tokens[0].ids, tokenize, mode, role="target", prompt=source)


def test_changed_token_positions_are_the_inserted_and_dropped_words(tokenize) -> None:
    source, target = "a cat sitting on a red mat", "a cat wearing a hat sitting on a mat"
    source_ids, target_ids = tokenize(source), tokenize(target)
    dropped, inserted = changed_token_positions(source_ids, target_ids)
    assert sorted(target_ids[p - 1] for p in inserted) == sorted(tokenize("wearing a hat"))
    assert [source_ids[p - 1] for p in dropped] == tokenize("red")


# --- Replace -------------------------------------------------------------------------------------------------


def test_replace_refuses_different_word_counts(tokenize) -> None:
    source, target = "a cat on a mat", "a big cat on a mat"
    with pytest.raises(ValueError, match="source has 5 words and the target 6: use method='refine'"):
        replacement_mapper(source, target, tokenize(source), tokenize(target), tokenize, 77)
    group = group_of([source, target, ""], tokenize)
    with pytest.raises(ValueError, match="same number of words"):
        build_p2p_controller(group, tokenize, prompts=(source, target), method="replace")


def test_replace_mapper_swaps_words_and_rows_sum_to_one(tokenize) -> None:
    source, target = "a cat eating a xylophone", "a dog eating a hippopotamus"
    source_ids, target_ids = tokenize(source), tokenize(target)
    mapper = replacement_mapper(source, target, source_ids, target_ids, tokenize, 77)
    torch.testing.assert_close(mapper[: len(source_ids) + 2].sum(dim=1), torch.ones(len(source_ids) + 2))
    assert mapper[2, 2] == 1  # cat -> dog
    xylophone = word_positions("xylophone", source_ids, tokenize)
    hippo = word_positions("hippopotamus", target_ids, tokenize)
    assert len(xylophone) == len(hippo) == 3 and torch.equal(mapper[xylophone][:, hippo], torch.eye(3))
    same = "a dog eating a hippopotamus"
    assert torch.equal(replacement_mapper(same, same, target_ids, target_ids, tokenize, 77), torch.eye(77))


@pytest.mark.parametrize("mode", ["llmga", "lpw"])
def test_replace_mapper_on_long_prompts_spreads_uneven_words_and_keeps_the_rest_aligned(tokenize, mode) -> None:
    words = long_pair(2)[0].split()
    source = " ".join([*words[:100], "zebra", *words[100:]])
    target = " ".join([*words[:100], "hippopotamus", *words[100:]])
    group = group_of([source, target, ""], tokenize, mode)
    mapper = replacement_mapper(source, target, group.tokens[0].ids, group.tokens[1].ids, tokenize, group.length, mode)
    n = len(group.tokens[0].ids)
    rows = [0, *(content_position(i, mode) for i in range(n))]
    torch.testing.assert_close(mapper[rows].sum(dim=1), torch.ones(len(rows)))
    zebra = word_positions("zebra", group.tokens[0].ids, tokenize, mode)
    hippo = word_positions("hippopotamus", group.tokens[1].ids, tokenize, mode)
    assert len(zebra) == 1 and torch.allclose(mapper[zebra][:, hippo], torch.full((1, 3), 1 / 3))
    source_tokens = position_token_ids(group.chunked[0], mode)
    target_tokens = position_token_ids(group.chunked[1], mode)
    for row in rows:  # every other source token feeds the target position holding the same token
        (columns,) = mapper[row].nonzero(as_tuple=True)
        if row not in zebra:
            assert len(columns) == 1 and target_tokens[columns[0]] == source_tokens[row]


# --- controllers: windows, reweight, store -------------------------------------------------------------------


def random_probs(num_queries: int, num_keys: int, seed: int, dtype=torch.float32, rows: int = 4) -> torch.Tensor:
    """probs [rows·heads, Nq, Nk]: rows 4 = [uncond_src, uncond_tgt, cond_src, cond_tgt], 3 = Direct Inversion's
    [uncond_tgt, cond_src, cond_tgt]; the target's conditional rows are the last HEADS."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows * HEADS, num_queries, num_keys, generator=g).softmax(dim=-1).to(dtype)


EDIT_PROMPTS = ("a cat sitting on a mat", "a cat wearing a hat sitting on a mat", "")


@pytest.fixture(scope="module")
def edit_group(tokenize):
    return group_of(EDIT_PROMPTS, tokenize)


@pytest.mark.parametrize("rows", [3, 4])
def test_windows_act_only_in_their_steps_and_only_on_the_target_conditional_rows(tokenize, edit_group, rows) -> None:
    control = build_p2p_controller(edit_group, tokenize, prompts=EDIT_PROMPTS[:2])
    control.begin_edit(12, (8, 8))
    cross_steps, self_steps = range(5), range(7)  # int(0.4·13): the official alpha has steps + 1 rows; int(0.6·12)
    for step in range(12):
        control.begin_step(step)
        assert control.needs_probs(True, 16, "down") == (step in cross_steps)
        assert control.needs_probs(False, 16, "down") == (step in self_steps)
        assert control.needs_probs(False, 4, "mid") == (step in self_steps)
        assert not control.needs_probs(False, 64, "down")  # full latent resolution: never
        for is_cross, num_queries, num_keys in ((True, 16, 77), (False, 16, 16), (False, 64, 64)):
            probs = random_probs(num_queries, num_keys, seed=step, rows=rows)
            edited = control.edit_probs(probs.clone(), is_cross, "up", HEADS)
            assert torch.equal(edited[:-HEADS], probs[:-HEADS])  # unconditional rows and the source untouched
            needed = control.needs_probs(is_cross, num_queries, "up")
            assert torch.equal(edited[-HEADS:], probs[-HEADS:]) != needed
            if not is_cross and needed:
                assert torch.equal(edited[-HEADS:], probs[-2 * HEADS : -HEADS])


def test_needs_probs_false_for_full_resolution_self_attention_at_512(tokenize, edit_group) -> None:
    control = build_p2p_controller(edit_group, tokenize, prompts=EDIT_PROMPTS[:2], blend_words=("cat", "hat"))
    control.begin_edit(50, (64, 64))
    control.begin_step(0)
    # The first step stores every down/up cross factor; after it only the LocalBlend factor (4) is kept.
    assert control.needs_probs(True, 64 * 64, "down") and control.needs_probs(True, 32 * 32, "up")
    for num_queries in (32 * 32, 16 * 16):
        control.edit_probs(random_probs(num_queries, edit_group.length, seed=1, rows=3), True, "down", HEADS)
    control.settle()
    assert control.blend_factor == 4 and control.maps.shape == (2, 16 * 16, edit_group.length)
    for step in (0, 29, 30, 49):
        control.begin_step(step)
        assert not control.needs_probs(False, 64 * 64, "down") and not control.needs_probs(False, 64 * 64, "up")
        assert control.needs_probs(False, 32 * 32, "down") == (step < 30)
        assert control.needs_probs(True, 64 * 64, "down") == (step < 20)
        assert control.needs_probs(True, 16 * 16, "up") and control.needs_probs(True, 16 * 16, "down")  # store
        assert control.needs_probs(True, 8 * 8, "mid") == (step < 20)


def sd15_attention_layers(latent_side: int) -> list[tuple[str, int]]:
    """(place, queries) of SD1.5's attention layers in call order at a square latent: down levels 1, 1/2, 1/4 (two
    transformers each), mid 1/8, up levels 1/4, 1/2, 1 (three each)."""
    side = [-(-latent_side // f) for f in (1, 2, 4, 8)]
    return ([("down", side[level] ** 2) for level in (0, 0, 1, 1, 2, 2)] + [("mid", side[3] ** 2)]
            + [("up", side[level] ** 2) for level in (2, 2, 2, 1, 1, 1, 0, 0, 0)])


def official_p2p_layers(layers: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
    """PnPInversion's absolute rule, by layer index: self-attention replaced where Nq <= 32²; LocalBlend reads
    `down_cross[2:4] + up_cross[:3]` of the cross maps its store keeps (Nq <= 32²)."""
    replaced = [index for index, (_, queries) in enumerate(layers) if queries <= 32**2]
    down = [index for index in replaced if layers[index][0] == "down"]
    up = [index for index in replaced if layers[index][0] == "up"]
    return replaced, down[2:4] + up[:3]


def pack_p2p_layers(control, layers: list[tuple[str, int]], latent_side: int) -> tuple[list[int], list[int]]:
    """The layers whose self-attention the controller replaces (inside its window) and whose cross maps it blends."""
    control.begin_edit(50, (latent_side, latent_side))
    control.begin_step(0)
    for place, queries in layers:
        control.edit_probs(random_probs(queries, 77, seed=queries, rows=3), True, place, HEADS)
    control.settle()
    replaced = [index for index, (_, queries) in enumerate(layers) if control.needs_probs(False, queries, "down")]
    blended = [index for index, (place, queries) in enumerate(layers) if control.is_store_layer(True, queries, place)]
    return replaced, blended


def test_resolution_rule_equals_pnpinversions_absolute_limits_at_512(tokenize, edit_group) -> None:
    """At 512² (latent 64, PnPInversion's only size: load_512 crops to it) the relative rule (self-attention at 1/2
    resolution or coarser, LocalBlend at 1/4) picks the layers of the official limits (<= 32² queries, 16×16 maps)."""
    control = build_p2p_controller(edit_group, tokenize, prompts=EDIT_PROMPTS[:2], blend_words=("cat", "hat"))
    layers = sd15_attention_layers(64)
    replaced, blended = pack_p2p_layers(control, layers, 64)
    assert (replaced, blended) == official_p2p_layers(layers)
    assert [layers[index][1] for index in blended] == [16 * 16] * 5


@pytest.mark.parametrize(("latent_side", "only_official", "only_pack"), [(32, [0, 1, 13, 14, 15], []),
                                                                         (96, [], [2, 3, 10, 11, 12])])
def test_resolution_rules_differ_away_from_512(tokenize, edit_group, latent_side, only_official, only_pack) -> None:
    """docs/fidelity.md: at 256² the absolute limit also replaces the full-resolution self-attention, at 768² it leaves
    the 48² layers the relative rule replaces (and the official LocalBlend has no 16×16 maps there, so it fails)."""
    control = build_p2p_controller(edit_group, tokenize, prompts=EDIT_PROMPTS[:2], blend_words=("cat", "hat"))
    layers = sd15_attention_layers(latent_side)
    replaced, _ = pack_p2p_layers(control, layers, latent_side)
    official, _ = official_p2p_layers(layers)
    assert sorted(set(official) - set(replaced)) == only_official
    assert sorted(set(replaced) - set(official)) == only_pack


def test_local_blend_falls_back_to_the_coarsest_cross_attention_of_a_small_unet(tokenize, edit_group) -> None:
    control = build_p2p_controller(edit_group, tokenize, prompts=EDIT_PROMPTS[:2], blend_words=("cat", "hat"))
    control.begin_edit(10, (8, 12))
    control.begin_step(0)
    for num_queries in (8 * 12, 4 * 6):  # factors 1 and 2 only: no 1/4-resolution layers
        control.edit_probs(random_probs(num_queries, edit_group.length, seed=2, rows=3), True, "up", HEADS)
    latents = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    control.step_callback(0, 981, latents)
    assert control.blend_factor == 2 and control.maps.shape == (2, 4 * 6, edit_group.length)
    control.begin_step(9)  # past the cross-replace window: only the kept factor still needs probabilities
    assert not control.needs_probs(True, 8 * 12, "up") and control.needs_probs(True, 4 * 6, "up")


def test_refine_cross_attention_takes_aligned_source_maps(tokenize, edit_group) -> None:
    control = build_p2p_controller(edit_group, tokenize, prompts=EDIT_PROMPTS[:2], reweight_words=())
    control.begin_edit(10, (8, 8))
    probs = random_probs(16, 77, seed=0)
    edited = control.edit_probs(probs.clone(), True, "down", HEADS)
    mapper, alphas = refinement_mapper(edit_group.tokens[0].ids, edit_group.tokens[1].ids, 77)
    source, target = probs[2 * HEADS : 3 * HEADS], edited[3 * HEADS :]
    for p in range(77):
        expected = source[..., mapper[p]] if alphas[p] else probs[3 * HEADS :, :, p]
        assert torch.equal(target[..., p], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("method", ["refine", "replace"])
def test_reweight_multiplies_the_chosen_word_columns(tokenize, method, dtype) -> None:
    prompts = ("a cat sitting on a mat", "a dog sitting on a mat")
    group = group_of(prompts, tokenize)
    plain = build_p2p_controller(group, tokenize, prompts=prompts, method=method, reweight_words=())
    reweighted = build_p2p_controller(group, tokenize, prompts=prompts, method=method, reweight_words="dog")
    assert isinstance(reweighted, AttentionReweight)
    dog = word_positions("dog", group.tokens[1].ids, tokenize)
    probs = random_probs(16, 77, seed=3, dtype=dtype)
    results = {}
    for name, control in (("plain", plain), ("reweighted", reweighted)):
        control.begin_edit(10, (8, 8))
        control.begin_step(0)
        results[name] = control.edit_probs(probs.clone(), True, "down", HEADS)[3 * HEADS :]
    others = [p for p in range(77) if p not in dog]
    assert results["reweighted"].dtype == dtype
    assert torch.equal(results["reweighted"][..., dog], 2 * results["plain"][..., dog])
    assert torch.equal(results["reweighted"][..., others], results["plain"][..., others])
    reweighted.begin_step(9)  # outside the cross window: nothing is rewritten
    assert torch.equal(reweighted.edit_probs(probs.clone(), True, "down", HEADS), probs)


def test_errors_name_the_problem(tokenize, edit_group) -> None:
    with pytest.raises(ValueError, match="'giraffe' is not in the target prompt 'a cat wearing"):
        build_p2p_controller(edit_group, tokenize, prompts=EDIT_PROMPTS[:2], blend_words=("cat", "giraffe"))
    with pytest.raises(ValueError, match="the source prompt is empty"):
        build_p2p_controller(group_of(["", "a dog"], tokenize), tokenize)
    with pytest.raises(ValueError, match="pass prompts=\\(source, target\\)"):
        build_p2p_controller(edit_group, tokenize, method="replace")
    with pytest.raises(ValueError, match="cross_replace is"):
        build_p2p_controller(edit_group, tokenize, cross_replace=(0.5, 0.2))
    control = build_p2p_controller(edit_group, tokenize)
    control.begin_edit(10, (8, 8))
    with pytest.raises(ValueError, match="cross-attention has 152 keys but the prompts were encoded to 77"):
        control.edit_probs(random_probs(16, 152, seed=0), True, "down", HEADS)


# --- LocalBlend ----------------------------------------------------------------------------------------------


def official_blend_mask(layer_maps: list[torch.Tensor], words: torch.Tensor, grid, latent_hw, threshold=0.3):
    """attention_control.py LocalBlend.get_mask on the stored per-layer maps [P·heads, Nq, T] (summed over steps):
    reshape (P, heads·layers, 1, gh, gw, T), Σ words, mean, 3×3 max-pool, upsample, / max, > th, ∪ source."""
    maps = torch.cat([m.reshape(2, -1, 1, *grid, m.shape[-1]) for m in layer_maps], dim=1)
    maps = (maps * words[:, None, None, None, None, :]).sum(-1).mean(1)
    maps = F.max_pool2d(maps, 3, stride=1, padding=1)
    mask = F.interpolate(maps, size=latent_hw)
    mask = mask / mask.amax(dim=(2, 3), keepdim=True)
    mask = mask.gt(threshold)
    return (mask[:1] | mask).float()


@pytest.mark.parametrize(("latent_hw", "blend_words"), [((64, 64), ("cat", "hat")), ((24, 40), ("mat", "cat")),
                                                        ((27, 37), ("mat", "hat"))])
def test_local_blend_mask_matches_official_and_keeps_the_source(tokenize, edit_group, latent_hw, blend_words) -> None:
    control = build_p2p_controller(edit_group, tokenize, prompts=EDIT_PROMPTS[:2], blend_words=blend_words)
    steps, (h, w) = 10, latent_hw
    grid = (-(-h // 4), -(-w // 4))
    control.begin_edit(steps, latent_hw)
    assert control.mask.shape == (1, 1, h, w) and not control.mask.any()
    words = torch.zeros(2, 77)
    words[0, word_positions(blend_words[0], edit_group.tokens[0].ids, tokenize)] = 1
    words[1, word_positions(blend_words[1], edit_group.tokens[1].ids, tokenize)] = 1
    stored = [torch.zeros(2 * HEADS, grid[0] * grid[1], 77) for _ in range(5)]
    g = torch.Generator().manual_seed(0)
    # every token of every prompt attends to its own region, so source and target masks differ
    region = 4 * torch.randn(4, 1, grid[0] * grid[1], 77, generator=g).expand(4, HEADS, -1, -1).flatten(0, 1)
    for step in range(steps):
        control.begin_step(step)
        for layer, place in enumerate(("down", "down", "up", "up", "up")):
            probs = (torch.randn(4 * HEADS, grid[0] * grid[1], 77, generator=g) + region).softmax(dim=-1)
            edited = control.edit_probs(probs, True, place, HEADS)
            stored[layer] += edited[2 * HEADS :]  # the official store holds the maps after the edit
        latents = torch.randn(2, 4, h, w, generator=g)
        blended = control.step_callback(step, 0, latents.clone())
        assert torch.equal(blended[0], latents[0])
        assert control.mask.shape == (1, 1, h, w)
        if step < int(0.2 * steps):
            assert torch.equal(blended, latents) and not control.mask.any()
            continue
        expected = official_blend_mask(stored, words, grid, latent_hw)[1:]
        assert torch.equal(control.mask, expected) and 0 < expected.mean() < 1
        torch.testing.assert_close(blended[1:], latents[:1] + expected * (latents[1:] - latents[:1]))


def test_auto_blend_words_use_the_alignment_changes(tokenize, edit_group) -> None:
    control = build_p2p_controller(edit_group, tokenize, prompts=EDIT_PROMPTS[:2], blend_words="auto")
    _, inserted = changed_token_positions(edit_group.tokens[0].ids, edit_group.tokens[1].ids)
    assert isinstance(control, AttentionReweight)  # None reweights the target blend tokens, as PnPInversion
    assert control.local_blend.words.tensor[1].nonzero().flatten().tolist() == inserted
    assert control.equalizer.tensor[inserted].eq(2).all()


# --- a controlled Direct Inversion edit ----------------------------------------------------------------------


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """The 'fast' kernel of the fake UNet, computed like the controlled path so both give identical rows."""
    return merge_heads(torch.bmm(attention_probs(split_heads(q, heads), split_heads(k, heads)), split_heads(v, heads)),
                       heads)


class AttentionToyEps:
    """A toy eps with self- and cross-attention layers at the UNet's resolutions (down 1,2,4; mid 8; up 4,2,1)
    routed through `controlled_attention`, like test_edit_inversion.ToyEps otherwise."""

    LAYERS = (("down", 1), ("down", 2), ("down", 4), ("mid", 8), ("up", 4), ("up", 2), ("up", 1))

    def __init__(self, control: AttentionControl | None, context_dim: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.control = control
        self.q, self.k, self.v = (0.5 * torch.randn(4, 8, generator=g) for _ in range(3))
        self.out = 0.5 * torch.randn(8, 4, generator=g)
        self.k_context, self.v_context = (0.5 * torch.randn(context_dim, 8, generator=g) for _ in range(2))
        self.alphas_cumprod = sd15_alphas_cumprod()
        self.source_rows_checked = 0

    def features(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h, w = latents.shape[-2:]
        total = torch.zeros_like(latents)
        for place, factor in self.LAYERS:
            pooled = F.avg_pool2d(latents, factor, ceil_mode=True) if factor > 1 else latents
            tokens = pooled.flatten(2).transpose(1, 2)
            q = tokens @ self.q
            kw = {"place": place, "control": self.control, "fast": explicit_attention}
            out = controlled_attention(q, tokens @ self.k, tokens @ self.v, HEADS, is_cross=False, **kw)
            out = out + controlled_attention(q, context @ self.k_context, context @ self.v_context, HEADS,
                                             is_cross=True, **kw)
            grid = (out @ self.out).transpose(1, 2).reshape(*pooled.shape)
            total = total + F.interpolate(grid, scale_factor=factor)[..., :h, :w]
        return total

    def __call__(self, latents: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
        features = self.features(latents, context)
        if self.control is not None and self.control.active:  # rows other than the target's cond: as without control
            self.control.active = False
            plain = self.features(latents, context)
            self.control.active = True
            assert torch.equal(features[:-1], plain[:-1])
            self.source_rows_checked += 1
        noise_scale = float(1.0 - self.alphas_cumprod[t]) ** 0.5
        return noise_scale * (latents + 0.1 * torch.tanh(features))


@pytest.mark.parametrize("mode", ["llmga", "lpw"])
def test_controlled_direct_inversion_keeps_the_source_branch(tokenize, mode) -> None:
    source, target = long_pair(3)
    group = group_of([source, target, ""], tokenize, mode)
    contexts = [e.cond.float() for e in group.encoded]
    control = build_p2p_controller(group, tokenize, prompts=(source, target), blend_words=("moon", "golden"))
    x0 = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    steps = 10
    eps = AttentionToyEps(control, contexts[0].shape[-1])
    edited, source_x0 = direct_inversion_edit(x0, *contexts, eps, steps, 7.5, control)
    assert eps.source_rows_checked == steps
    torch.testing.assert_close(source_x0, x0, rtol=0, atol=1e-4)
    plain, _ = direct_inversion_edit(x0, *contexts, AttentionToyEps(None, contexts[0].shape[-1]), steps, 7.5)
    assert (edited - plain).abs().max() > 1e-4  # the controller changed the target branch
    assert control.mask.shape == (1, 1, 8, 12) and control.mask.any() and not control.active
    torch.testing.assert_close(edited * (1 - control.mask), source_x0 * (1 - control.mask), rtol=0, atol=1e-6)
