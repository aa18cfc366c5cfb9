"""DiffRIR S2 network and weight files: the official layout, the official numbers, strict and safe loading.

The two fixtures are facts taken once from the official code (Zj-BinXia/DiffRIR @51ecb5c, DiffRIR/archs/S2_arch.py
and ldm/ddpm.py, built on CPU outside this repo, never vendored):
- `diffrir_official_keys.json`: `DiffRIRS2(...).state_dict()` keys in order with their shapes for x1, and the shapes
  that differ at x2 and x4 (the key lists are identical);
- `diffrir_official_output.safetensors`: for each scale, the official prior z (`model.diffusion(x)`) and output
  (`model(x)`) with the weights of `seeded_state_dict` on the input of `parity_input`, each call run right after
  `torch.manual_seed(0)` so the official noise draw is `initial_noise(1, 0)`.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from training_support import torch_threads

from llmga.restore.checkpoint import (
    DiffRIRLoadError,
    hyper_from_state_dict,
    load_diffrir,
    save_basicsr_weights,
    save_diffrir,
)
from llmga.restore.dirformer import ChannelLayerNorm
from llmga.restore.network import DiffRIR, initial_noise

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL_KEYS = FIXTURES / "diffrir_official_keys.json"
OFFICIAL_OUTPUT = FIXTURES / "diffrir_official_output.safetensors"
SHARED = {"diffusion.model.": "denoise.", "diffusion.condition.": "condition."}
# A small network for the file-format tests: the CPEN and the prior width stay official (fixed in S2_arch.py).
TINY = {"n_encoder_res": 1, "dim": 8, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1}


def seeded_state_dict(layout: Mapping[str, Tensor], seed: int = 0) -> dict[str, Tensor]:
    """Deterministic weights for a network with this state-dict layout (ours or the official one): in key order,
    each G.*/condition.*/denoise.* tensor drawn from one seeded CPU generator (N(0,1)/sqrt(fan_in) for weights with
    two or more axes, 1 + 0.1·N(0,1) for 1-D weights, 0.1·N(0,1) for biases), the diffusion.* repeats copied from
    their originals, the schedule buffers kept."""
    generator = torch.Generator("cpu").manual_seed(seed)
    weights: dict[str, Tensor] = {}
    for key, value in layout.items():
        repeat = next((prefix for prefix in SHARED if key.startswith(prefix)), None)
        if repeat is not None:
            weights[key] = weights[SHARED[repeat] + key[len(repeat):]].clone()
        elif key.startswith("diffusion."):
            weights[key] = value.clone()
        else:
            noise = torch.randn(value.shape, generator=generator)
            if value.dim() > 1:
                weights[key] = noise / value[0].numel() ** 0.5
            else:
                weights[key] = 0.1 * noise + (1.0 if key.endswith("weight") else 0.0)
    return weights


def parity_input(scale: int) -> Tensor:
    """x [1,C_in,32/scale,32/scale] in [0,1), so the output is 1×3×32×32 at every scale."""
    channels = {1: 6, 2: 15, 4: 51}[scale]
    size = 32 // scale
    return torch.rand((1, channels, size, size), generator=torch.Generator("cpu").manual_seed(1))


def tiny_model(scale: int = 1, seed: int = 0) -> DiffRIR:
    model = DiffRIR(scale, **TINY)
    model.load_state_dict(seeded_state_dict(model.state_dict(), seed), strict=True)
    return model.eval()


one_thread = torch_threads(1)  # tiny forwards: one thread avoids oversubscription stalls on busy machines


@pytest.fixture(scope="module")
def official_keys() -> dict:
    return json.loads(OFFICIAL_KEYS.read_text())


@pytest.fixture(scope="module")
def official_output() -> dict[str, Tensor]:
    return load_file(str(OFFICIAL_OUTPUT))


@pytest.fixture(scope="module")
def full_size_x1() -> DiffRIR:
    """The released x1 configuration with seeded weights."""
    model = DiffRIR(1)
    model.load_state_dict(seeded_state_dict(model.state_dict()), strict=True)
    return model.eval()


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_state_dict_matches_official_layout(scale: int, official_keys: dict) -> None:
    shapes = {key: shape for key, shape in official_keys["keys"]}
    shapes.update(official_keys["shapes_by_scale"].get(str(scale), {}))
    ours = DiffRIR(scale).state_dict()
    assert list(ours) == [key for key, _ in official_keys["keys"]]
    assert {key: list(value.shape) for key, value in ours.items()} == shapes


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_output_matches_official(scale: int, official_output: dict[str, Tensor]) -> None:
    model = DiffRIR(scale)
    model.load_state_dict(seeded_state_dict(model.state_dict()), strict=True)
    x = parity_input(scale)
    with torch.no_grad():
        z = model.eval().prior(x, initial_noise(1, 0))
        out = model.restore(x, z)
    torch.testing.assert_close(z, official_output[f"x{scale}.z"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, official_output[f"x{scale}.output"], rtol=1e-5, atol=1e-5)


def test_forward_is_restore_of_prior() -> None:
    model, x, noise = tiny_model(), parity_input(1), initial_noise(1, 3)
    with torch.no_grad():
        assert torch.equal(model(x, noise), model.restore(x, model.prior(x, noise)))


def test_initial_noise_is_the_seeded_cpu_draw() -> None:
    expected = torch.randn((2, 256), generator=torch.Generator("cpu").manual_seed(7))
    assert torch.equal(initial_noise(2, 7), expected)
    assert torch.equal(DiffRIR.initial_noise(2, 7), expected)


def test_prior_is_deterministic_given_the_seed() -> None:
    model, x = tiny_model(), parity_input(1)
    with torch.no_grad():
        assert torch.equal(model.prior(x, initial_noise(1, 0)), model.prior(x, initial_noise(1, 0)))


def test_prior_differs_between_seeds() -> None:
    model, x = tiny_model(), parity_input(1)
    with torch.no_grad():
        assert not torch.allclose(model.prior(x, initial_noise(1, 0)), model.prior(x, initial_noise(1, 1)))


@pytest.mark.parametrize(("scale", "channels", "multiple"), [(1, 6, 32), (2, 15, 16), (4, 51, 8)])
def test_scale_sets_channels_padding_and_output_size(scale: int, channels: int, multiple: int) -> None:
    model = tiny_model(scale)
    assert (model.scale, model.in_channels, model.pad_multiple) == (scale, channels, multiple)
    x = torch.rand(2, channels, multiple, 2 * multiple)
    with torch.no_grad():
        assert model(x, initial_noise(2, 0)).shape == (2, 3, multiple * scale, 2 * multiple * scale)


def test_layer_norm_is_the_official_to_3d_then_to_4d() -> None:
    """Tokens in (h w) order normalised over channels, returned as a channels-last view: the layout the next conv
    reads in the official code (a copy in NCHW would round that conv differently)."""
    norm = ChannelLayerNorm(8)
    norm.body.weight.data = torch.rand(8, generator=torch.Generator().manual_seed(2)) + 0.5
    x = torch.rand(2, 8, 5, 7, generator=torch.Generator().manual_seed(3))
    tokens = x.permute(0, 2, 3, 1).reshape(2, 35, 8)
    scaled = tokens / torch.sqrt(tokens.var(-1, keepdim=True, unbiased=False) + 1e-5) * norm.body.weight
    expected = scaled.reshape(2, 5, 7, 8).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = norm(x)
    assert torch.equal(out, expected) and out.stride() == expected.stride()


def test_unsupported_scale_is_refused() -> None:
    with pytest.raises(ValueError, match="scale 3"):
        DiffRIR(3)


def assert_same_weights(model: DiffRIR, expected: Mapping[str, Tensor]) -> None:
    loaded = model.state_dict()
    assert list(loaded) == list(expected)
    assert all(torch.equal(loaded[key], value) for key, value in expected.items())


@pytest.mark.parametrize("layout", ["params_ema", "params", "bare"])
def test_load_pth_layouts(layout: str, tmp_path: Path) -> None:
    ema, raw = tiny_model(seed=1).state_dict(), tiny_model(seed=2).state_dict()
    stored = {"params_ema": {"params": raw, "params_ema": ema}, "params": {"params": ema}, "bare": ema}[layout]
    torch.save(stored, tmp_path / "net_g.pth")
    model = load_diffrir(tmp_path / "net_g.pth", **TINY)
    assert_same_weights(model, ema)
    assert not model.training


def test_load_released_size_strictly(full_size_x1: DiffRIR, tmp_path: Path) -> None:
    """BasicSR's layout for net_g_*.pth, at the released size, loads with the default hyper-parameters."""
    weights = full_size_x1.state_dict()
    torch.save({"params": weights, "params_ema": weights}, tmp_path / "net_g_latest.pth")
    model = load_diffrir(tmp_path / "net_g_latest.pth", expected_scale=1)
    assert_same_weights(model, weights)
    assert model.condition is model.diffusion.condition and model.denoise is model.diffusion.model


def test_safetensors_round_trip(tmp_path: Path) -> None:
    original = tiny_model(scale=2)
    save_diffrir(original, tmp_path / "diffrir_x2.safetensors")
    stored = load_file(str(tmp_path / "diffrir_x2.safetensors"))
    assert set(stored) == set(original.state_dict())
    model = load_diffrir(tmp_path / "diffrir_x2.safetensors", **TINY)
    assert model.scale == 2
    assert_same_weights(model, original.state_dict())
    x = torch.rand(1, 15, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, initial_noise(1, 0)), original(x, initial_noise(1, 0)))


def test_basicsr_layout_round_trip(tmp_path: Path) -> None:
    """What the trainer writes ({"params", "params_ema"}) is what the released files hold and load_diffrir reads."""
    network, ema = tiny_model(), tiny_model()
    with torch.no_grad():
        for parameter in ema.parameters():
            parameter.add_(1.0)
    path = tmp_path / "net_g_latest.pth"
    save_basicsr_weights({"params": network.state_dict(), "params_ema": ema.state_dict()}, path)
    stored = torch.load(path, weights_only=True)
    assert sorted(stored) == ["params", "params_ema"]
    assert_same_weights(load_diffrir(path, **TINY), ema.state_dict())  # inference reads params_ema
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net_g_latest.pth"]  # no temporary left
    with pytest.raises(ValueError, match="keyed params_ema / params"):
        save_basicsr_weights({"model": network.state_dict()}, tmp_path / "other.pth")


def test_load_converts_dtype(tmp_path: Path) -> None:
    save_diffrir(tiny_model(), tmp_path / "diffrir.safetensors")
    model = load_diffrir(tmp_path / "diffrir.safetensors", dtype=torch.bfloat16, **TINY)
    assert {value.dtype for value in model.state_dict().values()} == {torch.bfloat16}
    with torch.no_grad():
        assert model(torch.rand(1, 6, 32, 32, dtype=torch.bfloat16), initial_noise(1, 0)).dtype == torch.bfloat16


def test_save_needs_safetensors_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="safetensors"):
        save_diffrir(tiny_model(), tmp_path / "diffrir.pth")


def write_pth(tmp_path: Path, stored: object) -> Path:
    torch.save(stored, tmp_path / "weights.pth")
    return tmp_path / "weights.pth"


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DiffRIRLoadError, match="no DiffRIR weight file"):
        load_diffrir(tmp_path / "absent.pth")


class TrainingOptions:
    """Stands for the non-tensor objects a training script may pickle beside the weights."""


def test_pickle_with_objects_is_refused(tmp_path: Path) -> None:
    path = write_pth(tmp_path, {"params_ema": tiny_model().state_dict(), "options": TrainingOptions()})
    with pytest.raises(DiffRIRLoadError, match="refused") as error:
        load_diffrir(path, **TINY)
    assert "safetensors" in str(error.value) and "weights_only" in str(error.value)
    assert isinstance(error.value.__cause__, pickle.UnpicklingError)


def test_non_tensor_values_are_not_a_state_dict(tmp_path: Path) -> None:
    path = write_pth(tmp_path, {"params_ema": {"G.patch_embed.proj.weight": "not a tensor"}})
    with pytest.raises(DiffRIRLoadError, match="holds no state dict"):
        load_diffrir(path)


def test_stage1_weights_are_named(tmp_path: Path) -> None:
    generator = {key: value for key, value in tiny_model().state_dict().items() if key.startswith("G.")}
    stage1 = {**generator, "E.E.0.weight": torch.zeros(64, 144, 3, 3), "E.mlp.0.weight": torch.zeros(256, 256)}
    with pytest.raises(DiffRIRLoadError, match="S1 .*S2 weights"):
        load_diffrir(write_pth(tmp_path, {"params": stage1}))


def test_diffir_weights_are_named(tmp_path: Path) -> None:
    weights = tiny_model().state_dict()
    weights["G.patch_embed.proj.weight"] = torch.zeros(8, 48, 3, 3)
    weights["condition.E.0.weight"] = torch.zeros(64, 48, 3, 3)
    with pytest.raises(DiffRIRLoadError, match="DiffIR x1 super-resolution model .*not DiffRIR"):
        load_diffrir(write_pth(tmp_path, weights))


def test_other_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(DiffRIRLoadError, match="not a DiffRIR S2 state dict.*conv_in.weight"):
        load_diffrir(path)


def test_wrong_scale_names_both(tmp_path: Path) -> None:
    save_diffrir(tiny_model(scale=4), tmp_path / "x4.safetensors")
    with pytest.raises(DiffRIRLoadError, match="x4 DiffRIR model but x1 was asked for"):
        load_diffrir(tmp_path / "x4.safetensors", expected_scale=1, **TINY)


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    weights = tiny_model().state_dict()
    del weights["denoise.resmlp.0.bias"]
    weights["G.extra.weight"] = torch.zeros(1)
    with pytest.raises(DiffRIRLoadError, match=r"missing: denoise.resmlp.0.bias; unexpected: G.extra.weight"):
        load_diffrir(write_pth(tmp_path, weights), **TINY)


def test_sizes_are_read_from_the_weights(tmp_path: Path) -> None:
    model = tiny_model()
    save_diffrir(model, tmp_path / "tiny.safetensors")
    loaded = load_diffrir(tmp_path / "tiny.safetensors")  # no hyper-parameters given
    assert hyper_from_state_dict(loaded.state_dict()) == hyper_from_state_dict(model.state_dict())
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in loaded.state_dict().items())
    assert hyper_from_state_dict(DiffRIR(1).state_dict()) == {
        "dim": 64, "num_blocks": (13, 1, 1, 1), "heads": (1, 2, 4, 8), "ffn_expansion_factor": 2.2,
        "num_refinement_blocks": 13, "bias": False, "n_encoder_res": 9, "n_denoise_res": 1, "timesteps": 4,
        "linear_start": 0.1, "linear_end": 0.99}


def test_other_size_is_refused_with_shapes(tmp_path: Path) -> None:
    weights = {key: value.clone() for key, value in tiny_model().state_dict().items()}
    weights["G.encoder_level1.0.attn.project_out.weight"] = torch.zeros(8, 9, 1, 1)
    weights.pop("G.refinement.0.norm1.body.weight")
    with pytest.raises(DiffRIRLoadError, match=r"missing: G.refinement.0.norm1.body.weight.*wrong shape"):
        load_diffrir(write_pth(tmp_path, weights))


def test_differing_shared_copies_are_refused(tmp_path: Path) -> None:
    weights = tiny_model().state_dict()
    weights = {key: value.clone() for key, value in weights.items()}
    weights["diffusion.model.resmlp.0.bias"] += 1
    with pytest.raises(DiffRIRLoadError, match="diffusion.model.resmlp.0.bias"):
        load_diffrir(write_pth(tmp_path, weights), **TINY)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_named(suffix: str, tmp_path: Path) -> None:
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".pth":
        torch.save({"params_ema": tiny_model().state_dict()}, whole)
    else:
        save_diffrir(tiny_model(), whole)
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DiffRIRLoadError, match="is truncated or (corrupt|not a safetensors file)"):
        load_diffrir(truncated, **TINY)
