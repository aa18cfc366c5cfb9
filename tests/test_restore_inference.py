"""DiffRIR inference (`llmga.restore.inference`) and `python -m llmga restore`: the official x1 path, compositing,
x2/x4 inputs, tiling with one shared prior, mask growing, input checks, Cancel between short steps, outputs complete
or absent when the command is interrupted, on a tiny random DiffRIR and on a stand-in whose output depends only on a
3x3 neighbourhood of its input and on z."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from llmga.cli import main
from llmga.restore import dirformer, inference
from llmga.restore.checkpoint import save_diffrir
from llmga.restore.inference import (
    network_input,
    prepare_inputs,
    reflect_pad,
    restore_image,
    tile_starts,
)
from llmga.restore.network import DiffRIR, initial_noise
from llmga.restore.region import grow_mask, mask_notes

REPO = Path(__file__).resolve().parent.parent
TINY = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1], n_encoder_res=1)


class LocalStandIn(nn.Module):
    """The DiffRIR interface with a 3x3 receptive field: restore = shuffle(sigmoid(conv3x3(x) + z)). Records calls."""

    def __init__(self, scale: int = 1) -> None:
        super().__init__()
        self.scale, self.pad_multiple = scale, 32 // scale
        self.conv = nn.Conv2d({1: 6, 2: 15, 4: 51}[scale], 3 * scale * scale, 3, padding=1)
        self.prior_inputs: list[torch.Tensor] = []
        self.restore_calls: list[tuple[tuple[int, ...], torch.Tensor]] = []

    def prior(self, x: torch.Tensor, noise: torch.Tensor, check=None) -> torch.Tensor:
        self.prior_inputs.append(x)
        return noise * 0.1 + x.mean(dim=(1, 2, 3))[:, None]

    def restore(self, x: torch.Tensor, z: torch.Tensor, check=None) -> torch.Tensor:
        assert x.shape[-2] % self.pad_multiple == 0 and x.shape[-1] % self.pad_multiple == 0
        self.restore_calls.append((tuple(x.shape), z))
        channels = 3 * self.scale ** 2
        return F.pixel_shuffle(torch.sigmoid(self.conv(x) + z[:, :channels, None, None]), self.scale)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.restore(x, self.prior(x, noise))


def pictures(height: int, width: int, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """generated, reference [B,H,W,3] and a mask [B,H,W] with a box and a soft (0.3-0.7) edge."""
    generator = torch.Generator().manual_seed(seed)
    generated = torch.rand(batch, height, width, 3, generator=generator)
    reference = torch.rand(batch, height, width, 3, generator=generator)
    mask = torch.zeros(batch, height, width)
    mask[:, height // 4: 3 * height // 4, width // 5: 3 * width // 5] = 0.7
    mask[:, height // 4, :] = 0.3
    return generated, reference, mask


@pytest.fixture(scope="module")
def tiny() -> dict[int, DiffRIR]:
    torch.manual_seed(0)
    return {scale: DiffRIR(scale, **TINY).eval() for scale in (1, 2, 4)}


def official_x1(model: nn.Module, generated, reference, mask, seed: int) -> torch.Tensor:
    """inference_diffrir.py written out: threshold, cat, reflect pad to 32, model, crop, composite, clamp."""
    im, gt = generated.permute(0, 3, 1, 2), reference.permute(0, 3, 1, 2)
    mask = mask[:, None].clone()
    mask[mask < 0.5] = 0
    mask[mask >= 0.5] = 1
    x = torch.cat([im, (1 - mask) * gt], dim=1)
    h, w = x.shape[-2:]
    x = F.pad(x, (0, -w % 32, 0, -h % 32), "reflect")
    with torch.no_grad():
        sr = model(x, initial_noise(1, seed))[:, :, :h, :w]
    return (sr * mask + (1 - mask) * gt).clamp(0, 1).permute(0, 2, 3, 1)


# --- the official path --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_kind", ["stand-in", "tiny DiffRIR"])
def test_x1_equals_the_official_computation(tiny, model_kind):
    model = LocalStandIn() if model_kind == "stand-in" else tiny[1]
    generated, reference, mask = pictures(67, 45)
    restored = restore_image(model, generated, reference, mask, seed=5)
    assert torch.equal(restored, official_x1(model, generated, reference, mask, seed=5))


def test_unmasked_pixels_are_the_reference_exactly(tiny):
    generated, reference, mask = pictures(70, 90, batch=2)
    restored = restore_image(tiny[1], generated, reference, mask, seed=1)
    keep = mask < 0.5
    assert torch.equal(restored[keep], reference[keep])
    assert not torch.equal(restored[~keep], reference[~keep])


def test_seed_changes_only_the_generated_region(tiny):
    generated, reference, mask = pictures(64, 64)
    first, second = (restore_image(tiny[1], generated, reference, mask, seed=seed) for seed in (0, 1))
    assert torch.equal(first, restore_image(tiny[1], generated, reference, mask, seed=0))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("scale", [2, 4])
def test_x2_x4_get_the_training_layout(tiny, scale):
    generated, reference, mask = pictures(67, 45)
    stand_in = LocalStandIn(scale)
    restore_image(stand_in, generated, reference, mask)
    (shape, _), = stand_in.restore_calls
    assert shape == (1, {2: 15, 4: 51}[scale], 96 // scale, 64 // scale)
    hidden = torch.rand(1, 3, 8, 8)
    x = network_input(torch.ones(1, 3, 8, 8), hidden, scale)
    assert torch.equal(x[:, :3], torch.ones(1, 3, 8 // scale, 8 // scale))
    assert torch.equal(F.pixel_shuffle(x[:, 3:], scale), hidden)
    restored = restore_image(tiny[scale], generated, reference, mask)
    assert restored.shape == (1, 67, 45, 3) and torch.equal(restored[mask < 0.5], reference[mask < 0.5])


# --- inputs -------------------------------------------------------------------------------------------------------


def test_grayscale_and_rgba_inputs_become_rgb():
    generated, reference, mask = pictures(67, 45)
    gray = generated[..., :1]
    rgba = torch.cat([reference, torch.rand(1, 67, 45, 1)], dim=-1)
    model = LocalStandIn()
    restored = restore_image(model, gray, rgba, mask)
    assert restored.shape == (1, 67, 45, 3)
    assert torch.equal(restored, restore_image(model, gray.expand(-1, -1, -1, 3), reference, mask))


def test_one_reference_and_mask_serve_a_batch():
    generated, reference, mask = pictures(40, 40, batch=3)
    inputs = prepare_inputs(generated, reference[:1], mask[0])
    assert inputs.reference.shape == (3, 40, 40, 3) and inputs.mask.shape == (3, 40, 40)
    assert set(inputs.mask.unique().tolist()) == {0.0, 1.0}
    restored = restore_image(LocalStandIn(), generated, reference[:1], mask[:1])
    assert torch.equal(restored[:, :9], reference[:1, :9].expand(3, -1, -1, -1))


@pytest.mark.parametrize(("reference_size", "mask_size", "words"), [
    ((64, 48), (64, 64), ["the reference is 48x64", "generated image is 64x64", "resize"]),
    ((64, 64), (32, 64), ["the mask is 64x32", "generated image is 64x64"]),
])
def test_size_mismatch_names_both_sizes(reference_size, mask_size, words):
    with pytest.raises(ValueError) as error:
        prepare_inputs(torch.rand(1, 64, 64, 3), torch.rand(1, *reference_size, 3), torch.rand(1, *mask_size))
    assert all(word in str(error.value) for word in words)


def test_batch_mismatch_and_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="reference batch holds 2 images but the generated batch 3"):
        prepare_inputs(torch.rand(3, 8, 8, 3), torch.rand(2, 8, 8, 3), torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="mask batch holds 2"):
        prepare_inputs(torch.rand(3, 8, 8, 3), torch.rand(1, 8, 8, 3), torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="C = 1"):
        prepare_inputs(torch.rand(1, 8, 8, 2), torch.rand(1, 8, 8, 3), torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="one channel"):
        prepare_inputs(torch.rand(1, 8, 8, 3), torch.rand(1, 8, 8, 3), torch.rand(1, 1, 8, 8))


def test_reflect_pad_matches_official_and_survives_tiny_pictures():
    x = torch.rand(1, 6, 67, 45)
    assert torch.equal(reflect_pad(x, 32), F.pad(x, (0, 19, 0, 29), "reflect"))
    assert reflect_pad(torch.rand(1, 3, 5, 1), 32).shape == (1, 3, 32, 32)


# --- mask growing -------------------------------------------------------------------------------------------------


def test_grow_mask_defaults_are_the_official_mask():
    mask = (torch.rand(2, 20, 30) > 0.7).float()
    region, blend = grow_mask(mask)
    assert torch.equal(region, mask) and torch.equal(blend, mask)


def test_grow_mask_dilates_and_feathers_inside_the_region():
    mask = torch.zeros(1, 21, 21)
    mask[:, 10, 10] = 1
    region, blend = grow_mask(mask, dilate=4, feather=2)
    assert torch.equal(region[0].nonzero().amin(0), torch.tensor([6, 6]))
    assert region.sum() == 81
    assert blend[0, 10, 10] == 1 and blend[0, 10, 6] == pytest.approx(1 / 3) and blend[0, 10, 7] == pytest.approx(2 / 3)
    assert torch.equal(blend > 0, region > 0)


def test_feathering_does_not_fade_at_the_picture_border():
    mask = torch.zeros(1, 16, 16)
    mask[:, :, 10:] = 1  # an outpainted band on the right
    _, blend = grow_mask(mask, feather=3)
    assert torch.equal(blend[0, :, 15], torch.ones(16)) and blend[0, 5, 10] == pytest.approx(0.25)


def max_filter(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """[B,1,H,W] -> its (2r+1)² square max filter, outside the picture ignored (max pooling pads with -inf)."""
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


@pytest.mark.parametrize(("dilate", "feather"), [(1, 0), (6, 0), (0, 3), (5, 4), (40, 2)])
def test_grow_mask_is_a_max_filter_then_eroded_rings(dilate, feather):
    """kornia's geodesic dilation and erosion give exactly the square max filter and, per feather ring, its dual."""
    mask = (torch.rand(2, 45, 67, generator=torch.Generator().manual_seed(dilate)) > 0.99).float()
    mask[1, :, -3:] = 1  # a band at the border, which erosion must not fade
    region, blend = grow_mask(mask, dilate, feather)
    expected_region = max_filter(mask[:, None], dilate)
    inside, total = expected_region, expected_region
    for _ in range(feather):
        inside = 1 - max_filter(1 - inside, 1)
        total = total + inside
    assert torch.equal(region, expected_region[:, 0]) and torch.equal(blend, (total / (feather + 1))[:, 0])


def test_dilate_and_feather_keep_pixels_outside_the_region_exact(tiny):
    generated, reference, mask = pictures(64, 64)
    restored = restore_image(tiny[1], generated, reference, mask, dilate=3, feather=3)
    region, _ = grow_mask(prepare_inputs(generated, reference, mask).mask, dilate=3)
    outside = region == 0
    assert torch.equal(restored[outside], reference[outside])
    assert not torch.equal(restored[(mask < 0.5) & ~outside], reference[(mask < 0.5) & ~outside])


# --- tiling -------------------------------------------------------------------------------------------------------


def test_tile_starts_cover_the_length_on_the_grid():
    assert tile_starts(320, 128, 32) == [0, 96, 192]
    assert tile_starts(96, 128, 32) == [0]
    assert tile_starts(352, 128, 64) == [0, 64, 128, 192, 224]


def test_tiled_equals_untiled_for_a_local_network():
    """Tile edges see zero padding instead of their neighbours; the sin² window gives them a weight of at most
    sin²(pi/4/overlap) ~ 6e-4 there, so tiled and untiled outputs agree to 1e-3 and exactly away from tile edges."""
    generated, reference, mask = pictures(200, 150)
    mask[:] = 1
    model = LocalStandIn()
    untiled = restore_image(model, generated, reference, mask)
    tiled = restore_image(model, generated, reference, mask, tile=96, overlap=32)
    assert len(model.restore_calls) == 1 + 3 * 2
    assert (tiled - untiled).abs().max() < 1e-3
    assert torch.allclose(tiled[:, :60, :60], untiled[:, :60, :60], atol=1e-6)


def test_tiled_is_close_to_untiled_for_a_tiny_diffrir(tiny):
    """The real network's channel attention pools over the whole tile, so tiles differ a little from one pass:
    on this random tiny network by < 0.02 at most and < 1e-3 on average (measured 6e-3 and 1.6e-4)."""
    generated, reference, mask = pictures(160, 130)
    untiled = restore_image(tiny[1], generated, reference, mask, seed=2)
    tiled = restore_image(tiny[1], generated, reference, mask, seed=2, tile=64, overlap=32)
    difference = (tiled - untiled).abs()
    assert difference.max() < 0.02 and difference.mean() < 1e-3


def test_prior_runs_once_per_picture_and_every_tile_shares_it():
    generated, reference, mask = pictures(200, 150, batch=2)
    mask[1] = 0
    mask[1, 150:, 100:] = 1  # picture 1: only its bottom-right tiles hold masked pixels
    model = LocalStandIn()
    restored = restore_image(model, generated, reference, mask, tile=96, overlap=32)
    assert len(model.prior_inputs) == 2
    assert all(shape[-2:] == (96, 96) for shape, _ in model.restore_calls)
    assert len(model.restore_calls) < 2 * 6
    z_of_first = [z for (_, z) in model.restore_calls[:6]]
    assert all(z is z_of_first[0] for z in z_of_first)
    assert torch.equal(restored[1, :150], reference[1, :150])


def test_pictures_without_a_masked_pixel_skip_the_network():
    generated, reference, mask = pictures(40, 40, batch=2)
    mask[0] = 0
    model = LocalStandIn()
    restored = restore_image(model, generated, reference, mask)
    assert len(model.prior_inputs) == 1 and len(model.restore_calls) == 1
    assert torch.equal(restored[0], reference[0])


def test_large_pictures_feed_the_prior_a_bounded_size(monkeypatch):
    monkeypatch.setattr(inference, "PRIOR_MAX_PIXELS", 64 * 64)
    model = LocalStandIn()
    restore_image(model, *pictures(200, 150), tile=96)
    (prior_input,) = model.prior_inputs
    assert prior_input.shape[-2:] == (64, 32)


def test_automatic_mode_tiles_when_memory_is_short(monkeypatch):
    monkeypatch.setattr(inference, "available_memory", lambda device: 100 * 100 * inference.BYTES_PER_PIXEL_FP32)
    model = LocalStandIn()
    restore_image(model, *pictures(300, 200))
    assert len(model.restore_calls) > 1 and all(shape[-1] == 128 for shape, _ in model.restore_calls)


def test_out_of_memory_in_one_pass_retries_in_tiles():
    class RunsOutOnWholePictures(LocalStandIn):
        def restore(self, x, z, check=None):
            if x.shape[-2] * x.shape[-1] > 128 * 128:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
            return super().restore(x, z, check)

    model = RunsOutOnWholePictures()
    generated, reference, mask = pictures(250, 200)
    restored = restore_image(model, generated, reference, mask)
    assert len(model.restore_calls) > 1 and len(model.prior_inputs) == 1
    assert torch.equal(restored[mask < 0.5], reference[mask < 0.5])
    with pytest.raises(torch.cuda.OutOfMemoryError):
        restore_image(model, generated, reference, mask, tile=256)


def test_raising_from_on_tile_cancels():
    calls = []

    def on_tile(done, total):
        calls.append((done, total))
        if done == 2:
            raise KeyboardInterrupt

    model = LocalStandIn()
    with pytest.raises(KeyboardInterrupt):
        restore_image(model, *pictures(200, 150), tile=96, on_tile=on_tile)
    assert calls == [(1, 6), (2, 6)] and len(model.restore_calls) == 2


def test_tile_and_overlap_must_be_on_the_grid():
    with pytest.raises(ValueError, match="multiple of 32"):
        restore_image(LocalStandIn(), *pictures(64, 64), tile=100)
    with pytest.raises(ValueError, match="smaller than the tile"):
        restore_image(LocalStandIn(), *pictures(64, 64), tile=64, overlap=64)


def test_bf16_model_runs_in_its_dtype_and_composites_in_float32(tiny):
    model = DiffRIR(1, **TINY).to(torch.bfloat16).eval()
    model.load_state_dict(tiny[1].state_dict())
    generated, reference, mask = pictures(64, 48)
    restored = restore_image(model, generated, reference, mask)
    assert restored.dtype == torch.float32 and torch.equal(restored[mask < 0.5], reference[mask < 0.5])
    assert (restored - restore_image(tiny[1], generated, reference, mask)).abs().max() < 0.1


# --- cancel: short steps that call check() ----------------------------------------------------------------------


class Stop(Exception):
    """What a test's check raises to cancel."""


def counting_check(stop_at: int | None = None):
    """A check that counts its calls (`.calls`) and raises Stop on call number `stop_at`."""
    def check() -> None:
        check.calls += 1
        if check.calls == stop_at:
            raise Stop

    check.calls = 0
    return check


def test_the_prior_polls_check_between_short_steps(tiny, monkeypatch):
    """The CPEN sees the whole picture, so its convolutions run in strips of rows, each step followed by a poll:
    a check that raises stops the prior part-way, and the stepped prior equals the plain one up to float rounding."""
    monkeypatch.setattr(dirformer, "STEP_MACS", 1 << 22)  # strips of a few rows on this 128² input
    x, noise = torch.rand(1, 6, 128, 128), initial_noise(1, 0)
    check = counting_check()
    with torch.no_grad():
        stepped, plain = tiny[1].prior(x, noise, check), tiny[1].prior(x, noise)
    layers = len(list(tiny[1].condition.E.modules()))
    assert check.calls > 2 * layers  # the big layers ran in several strips each
    torch.testing.assert_close(stepped, plain, rtol=1e-4, atol=1e-5)
    stop = counting_check(stop_at=check.calls // 2)
    with pytest.raises(Stop), torch.no_grad():
        tiny[1].prior(x, noise, stop)
    assert stop.calls == check.calls // 2


def test_a_small_picture_runs_in_one_step_per_layer_exactly(tiny):
    x, noise = torch.rand(1, 6, 64, 96), initial_noise(1, 3)
    with torch.no_grad():
        z = tiny[1].prior(x, noise)
        assert torch.equal(tiny[1].prior(x, noise, counting_check()), z)
        assert torch.equal(tiny[1].restore(x, z, counting_check()), tiny[1].restore(x, z))


def test_the_network_pass_polls_check_and_its_tail_runs_in_strips(tiny, monkeypatch):
    x, z = torch.rand(1, 6, 128, 96), torch.rand(1, 256)
    whole, strips = counting_check(), counting_check()
    with torch.no_grad():
        plain = tiny[1].restore(x, z)
        tiny[1].restore(x, z, whole)
        monkeypatch.setattr(dirformer, "STEP_MACS", 1 << 20)
        stepped = tiny[1].restore(x, z, strips)
    blocks = sum(isinstance(module, dirformer.TransformerBlock) for module in tiny[1].G.modules())
    assert whole.calls >= 2 * blocks  # before every block and between its attention and its feed-forward
    assert strips.calls > whole.calls + 10  # the tail's convolutions in strips of rows
    torch.testing.assert_close(stepped, plain, rtol=1e-4, atol=1e-5)


def test_cancel_before_the_first_tile_stops_in_the_prior():
    """restore_image polls before and inside the prior: a check that raises on its first calls stops the run before
    any tile, so a picture whose prior is slow (4096²: seconds on a CPU) stops within a poll."""
    model = LocalStandIn()
    tiles = []
    with pytest.raises(Stop):
        restore_image(model, *pictures(200, 150), tile=96, on_tile=lambda done, total: tiles.append(done),
                      check=counting_check(stop_at=1))
    assert tiles == [] and model.prior_inputs == []


def test_mask_growing_polls_check_per_pass():
    mask = torch.zeros(1, 30, 30)
    mask[:, 15, 15] = 1
    check = counting_check()
    grow_mask(mask, dilate=9, feather=2, check=check)
    assert check.calls == 3 * 2 + 2  # dilation by 9 in passes of 4, 4, 1 (a column and a row each), 2 erosions
    with pytest.raises(Stop):
        grow_mask(mask, dilate=9, check=counting_check(stop_at=2))


def test_mask_notes_say_what_an_empty_or_full_mask_does():
    masks = torch.zeros(3, 8, 8)
    masks[1] = 1
    masks[2, 2:4, 2:4] = 1
    assert mask_notes(masks[2]) == []
    assert mask_notes(masks[:1]) == ["the mask marks no pixel to restore: the output is the reference "
                                               "unchanged (paint the generated region white)"]
    full, = mask_notes(masks[1:2] * 0.6)
    assert full.startswith("the mask covers the whole picture: no pixel of the reference is kept")
    empty, full = mask_notes(masks)
    assert empty.startswith("mask 1 of 3 marks no pixel") and full.startswith("mask 2 of 3 covers the whole picture")


# --- command line -------------------------------------------------------------------------------------------------


def write_pictures(folder: Path, width: int = 45, height: int = 67) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    paths = {name: folder / f"{name}.png" for name in ("image", "reference", "mask")}
    for name in ("image", "reference"):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[name])
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[20:50, 10:30] = 255
    Image.fromarray(mask).save(paths["mask"])
    return paths


def cli_args(paths: dict[str, Path], model: Path, out: Path, *extra: str) -> list[str]:
    return ["restore", "--model", str(model), "--image", str(paths["image"]), "--reference",
            str(paths["reference"]), "--mask", str(paths["mask"]), "--out", str(out), "--device", "cpu", *extra]


def test_cli_restores_and_records_its_settings(tmp_path):
    torch.manual_seed(0)
    model_path = tmp_path / "diffrir_x1.safetensors"
    save_diffrir(DiffRIR(1), model_path)  # the released size: the CLI loads the released hyper-parameters
    paths = write_pictures(tmp_path)
    out = tmp_path / "restored.png"
    result = subprocess.run([sys.executable, "-m", "llmga", *cli_args(paths, model_path, out, "--seed", "3",
                                                                      "--feather", "2", "--dilate", "2")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        restored, settings = np.asarray(image), json.loads(image.info["llmga_settings"])
    reference = np.asarray(Image.open(paths["reference"]))
    assert restored.shape == (67, 45, 3)
    assert np.array_equal(restored[:17], reference[:17]) and not np.array_equal(restored[22:48], reference[22:48])
    assert settings | {"model": None} == {"command": "restore", "model": None, "scale": 1, "seed": 3, "tile": None,
                                          "overlap": None, "dilate": 2, "feather": 2, "dtype": "float32",
                                          "image": "image.png", "reference": "reference.png", "mask": "mask.png"}


def test_cli_checks_sizes_before_loading_the_model(tmp_path, capsys):
    paths = write_pictures(tmp_path)
    Image.new("L", (45, 60)).save(paths["mask"])
    assert main(cli_args(paths, tmp_path / "absent.pth", tmp_path / "out.png")) == 2
    error = capsys.readouterr().err
    assert "the mask is 45x60 but the generated image is 45x67" in error and "absent" not in error


@pytest.mark.parametrize(("change", "words"), [
    ("missing image", "does not exist"),
    ("empty mask", "the mask marks no pixel to restore"),
    ("reference size", "the reference is 40x67 but the generated image is 45x67"),
    ("missing model", "no DiffRIR weight file"),
    ("bad model", "model.pth"),
    ("bad tile", "--tile is 50"),
])
def test_cli_reports_bad_input_with_exit_status_2(tmp_path, capsys, change, words):
    paths = write_pictures(tmp_path)
    model = tmp_path / "model.pth"
    model.write_bytes(b"not a checkpoint")
    extra = ["--tile", "50"] if change == "bad tile" else []
    if change == "missing image":
        paths["image"].unlink()
    if change == "empty mask":
        Image.new("L", (45, 67)).save(paths["mask"])
    if change == "reference size":
        Image.new("RGB", (40, 67)).save(paths["reference"])
    if change == "missing model":
        model.unlink()
    assert main(cli_args(paths, model, tmp_path / "out.png", *extra)) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(("height", "width"), [(45, 67), (1, 40), (30, 1), (96, 64), (5, 3)])
def test_tile_source_reads_exactly_the_reflect_padded_input(height: int, width: int) -> None:
    from llmga.restore.inference import TileSource

    g = torch.Generator().manual_seed(0)
    generated, reference = torch.rand(2, 2, height, width, 3, generator=g)
    region = (torch.rand(2, height, width, generator=g) > 0.5).float()
    source = TileSource(generated, reference, region, 32, 1)
    whole_generated = reflect_pad(generated.permute(0, 3, 1, 2), 32)
    whole_hidden = reflect_pad((1 - region[:, None]) * reference.permute(0, 3, 1, 2), 32)
    assert source.padded == tuple(whole_generated.shape[-2:])
    for image in range(2):
        gen, hidden = source.parts(image, 0, 0, *source.padded)
        assert torch.equal(gen[0], whole_generated[image]) and torch.equal(hidden[0], whole_hidden[image])
        box = source.tile(image, 0, 32, 32, 32) if source.padded[1] >= 64 else source.tile(image, 0, 0, 32, 32)
        left = 32 if source.padded[1] >= 64 else 0
        expected = torch.cat([whole_generated[image, :, :32, left:left + 32],
                              whole_hidden[image, :, :32, left:left + 32]])
        assert torch.equal(box[0], expected)


def test_cli_notes_a_mask_that_covers_the_whole_picture(tmp_path, capsys):
    paths = write_pictures(tmp_path)
    Image.new("L", (45, 67), 255).save(paths["mask"])
    model = tmp_path / "model.pth"
    torch.save({"params_ema": DiffRIR(1, **TINY).state_dict()}, model)
    assert main(cli_args(paths, model, tmp_path / "out.png")) == 0
    assert capsys.readouterr().err == ("note: the mask covers the whole picture: no pixel of the reference is kept, "
                                       "so DiffRIR has nothing to match the generated picture to (mask only the "
                                       "generated region)\n")


# --- an interrupted command leaves its output complete or absent --------------------------------------------------


LARGE = 1024  # px: the PNG of noise takes ~0.15 s to encode on the build machine, a window to interrupt the write in


@pytest.fixture(scope="module")
def large_job(tmp_path_factory) -> tuple[dict[str, Path], Path]:
    """A large noise picture (incompressible, so slow to write), a small mask across four 256-px tiles (so progress
    lines come) and the tiny DiffRIR's weights."""
    from fixtures.diffrir import build_diffrir_fixture

    folder = tmp_path_factory.mktemp("large")
    paths = write_pictures(folder, LARGE, LARGE)
    mask = np.zeros((LARGE, LARGE), dtype=np.uint8)
    mask[150:250, 150:250] = 255
    Image.fromarray(mask).save(paths["mask"])
    return paths, build_diffrir_fixture(folder)


def start_restore(paths: dict[str, Path], model: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmga", *cli_args(paths, model, out, "--tile", "256")], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def temp_files(folder: Path) -> list[Path]:
    return list(folder.glob(".*.tmp"))


def assert_complete_or_absent(out: Path) -> None:
    """The PNG is absent, or whole: PIL verifies its chunks and decodes every pixel."""
    if out.exists():
        with Image.open(out) as image:
            image.verify()
        with Image.open(out) as image:
            image.load()
            assert image.size == (LARGE, LARGE)
    assert temp_files(out.parent) == []


def assert_ended_cleanly(process: subprocess.Popen, sig: signal.Signals, out: Path) -> None:
    """Exit 130 (SIGINT) or 143 (SIGTERM) with at most one line besides the progress lines, never a traceback. A
    signal that comes once the command is done (its file in place, the interpreter shutting down) ends the process as
    Python's defaults do (0, or killed by the signal), with the file complete."""
    code = process.wait(timeout=120)
    errors = [line for line in process.stderr.read().splitlines() if not line.startswith("restoring: ")]
    if code in (0, -sig):
        assert out.is_file(), (code, errors)
        return
    assert code == 128 + sig, (code, errors)
    assert len(errors) <= 1 and not any("Traceback" in line for line in errors), errors


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_command_interrupted_while_writing_leaves_no_half_file(large_job, tmp_path, sig):
    """The signal comes while the PNG is being written (its temporary file exists): the output is then absent (or,
    had the write just finished, complete) and no temporary file is left; a rerun writes the whole picture."""
    paths, model = large_job
    out = tmp_path / "restored.png"
    process = start_restore(paths, model, out)
    deadline = time.monotonic() + 120
    while not temp_files(tmp_path) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert process.poll() is None, "the command ended before its output was being written"
    process.send_signal(sig)
    assert_ended_cleanly(process, sig, out)
    assert_complete_or_absent(out)
    rerun = start_restore(paths, model, out)
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read()
    assert_complete_or_absent(out)
    assert out.exists() and [path.name for path in tmp_path.iterdir()] == ["restored.png"]


def test_a_command_interrupted_at_random_moments_leaves_no_half_file(large_job, tmp_path):
    """SIGINT or SIGTERM at a random moment after the first tile (restoring the other tiles, compositing, or
    writing): a clean exit, and the output complete or absent."""
    paths, model = large_job
    chance = random.Random(14)
    for attempt, sig in enumerate((signal.SIGINT, signal.SIGTERM)):
        out = tmp_path / f"restored-{attempt}.png"
        process = start_restore(paths, model, out)
        assert process.stderr.readline().startswith("restoring: 1/")
        time.sleep(chance.uniform(0, 0.3))
        process.send_signal(sig)
        assert_ended_cleanly(process, sig, out)
        assert_complete_or_absent(out)
