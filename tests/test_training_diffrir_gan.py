"""DiffRIR's GAN stage (training/diffrir_gan.py, `training.diffrir` with stage s2_gan) on the CPU: the losses fall on a
tiny fixed set, the written weights restore through `load_diffrir` strictly, resume is exact, two processes keep equal
weights, the VGG19 weights come from a local file only; plus the pieces (USM sharpening, the discriminator, the VGG19
layout and its pre-ReLU features).

The generator is the official architecture at its smallest size (tests/fixtures/diffrir.py TINY_DIFFRIR) starting from
random S1 / S2 weight files in the released layouts, the discriminator has 8 base channels, and the VGG19 is the real
layer layout at narrow widths, written as torchvision's file is and read by the same loader.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.diffrir import TINY_DIFFRIR
from training_support import (
    D_FEAT,
    REPO_ROOT,
    TINY_DIFFRIR_CONFIG,
    VGG_WIDTHS,
    diffrir_gan_config,
    fresh_accelerate,  # noqa: F401
    launch_two_processes,
    read_train_log,
    reset_accelerate,
    torch_threads,
    write_diffrir_gan_inputs,
)

from llmga.hub import ModelNotFoundError
from llmga.restore.checkpoint import load_diffrir
from llmga.restore.degradations import blur
from llmga.restore.discriminator import UNetDiscriminatorSN
from llmga.restore.inference import restore_image
from llmga.restore.network import DiffRIR
from llmga.restore.perceptual import (
    VGG19_URL,
    PerceptualLoss,
    VGG19Features,
    load_vgg19,
    vgg19_layer_indices,
)
from llmga.restore.s1 import DiffRIRS1
from llmga.restore.training import (
    TrainingPairPool,
    _usm_kernel,
    discriminator_losses,
    s2_training_prior,
    usm_sharpen,
)
from training import diffrir
from training.common import ConfigError, load_config
from training.diffrir import MaskedCropDataset, find_images
from training.diffrir_gan import DiffRIRGANConfig, gan_training_pair, read_discriminator_weights, train

one_thread = torch_threads(1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return write_diffrir_gan_inputs(tmp_path_factory.mktemp("diffrir_gan_inputs"))


@pytest.fixture(scope="module")
def gan_run(inputs, tmp_path_factory):
    config = diffrir_gan_config(inputs, tmp_path_factory.mktemp("diffrir_gan"))
    reset_accelerate()
    return config, train(config)


def fixed_set(config: DiffRIRGANConfig) -> tuple[torch.Tensor, ...]:
    """(x, gt, target, mask) of the four training images with fixed degradations (a fresh pool passes them)."""
    dataset = MaskedCropDataset(find_images(config.train_data), config.crop_size, False, seed=123)
    batch = {key: torch.stack([dataset[i][key] for i in range(4)]) for key in ("gt", "mask")}
    return gan_training_pair(batch, TrainingPairPool(4), config, torch.Generator().manual_seed(7))


def generator_output(weights: dict[str, torch.Tensor], x: torch.Tensor, z_s1: torch.Tensor) -> torch.Tensor:
    network = DiffRIR(1, **TINY_DIFFRIR).eval()
    network.load_state_dict(weights)
    return network.restore(x, s2_training_prior(network, x, z_s1, torch.Generator().manual_seed(3)))


def discriminator(weights: dict[str, torch.Tensor]) -> UNetDiscriminatorSN:
    """The discriminator of `weights` with its spectral norms converged (power iterations depend on the weights
    only; a fresh network's u, v are random), then in eval mode."""
    network = UNetDiscriminatorSN(3, D_FEAT)
    network.load_state_dict(weights)
    with torch.no_grad():
        for _ in range(50):
            network(torch.zeros(1, 3, 8, 8))
    return network.eval()


# --- the stage --------------------------------------------------------------------------------------------------------


def test_the_generator_and_discriminator_losses_fall_on_a_fixed_set(inputs, gan_run):
    config, result = gan_run
    assert result.global_step == len(result.losses) == config.max_train_steps
    records = read_train_log(config.output_dir)
    assert {"l_g_pix", "l_g_percep", "l_g_gan", "l_abs_3", "l_kd_3", "l_d_real", "l_d_fake", "out_d_real",
            "out_d_fake"} <= set(records[0])
    assert all(r["train_loss"] == pytest.approx(r["l_g_pix"] + r["l_g_percep"] + r["l_g_gan"] + r["l_abs_3"])
               and r["lr"] == config.lr_sr for r in records)
    x, gt, target, _ = fixed_set(config)
    s1 = DiffRIRS1(1, **TINY_DIFFRIR).eval()
    s1.load_state_dict(torch.load(inputs["s1"], weights_only=True)["params"])
    perceptual = PerceptualLoss(load_vgg19(inputs["vgg"]))
    start = torch.load(inputs["s2"], weights_only=True)["params_ema"]
    trained = torch.load(result.weights, weights_only=True)["params"]
    with torch.no_grad():
        z_s1 = s1.prior(x, target)
        before, after = (generator_output(weights, x, z_s1) for weights in (start, trained))
        content = [float(torch.nn.functional.l1_loss(out, target) + perceptual(out, target)) for out in (before, after)]
        d_start = discriminator(torch.load(inputs["d"], weights_only=True)["params"])
        d_trained = discriminator(torch.load(result.discriminator, weights_only=True)["params"])
        # The discriminator's loss telling the gt from the starting generator's artefacts.
        d_loss = [float(sum(discriminator_losses(d(gt), d(before))[term] for term in ("l_d_real", "l_d_fake")))
                  for d in (d_start, d_trained)]
    assert content[1] < 0.8 * content[0], content
    assert d_loss[1] < 0.9 * d_loss[0], d_loss


def test_it_writes_the_released_layout_that_restores_an_image(inputs, gan_run):
    """{"params", "params_ema"} with exactly the S2 keys, read by load_diffrir (the LLMGA Load DiffRIR node's loader,
    strict) and run as the LLMGA DiffRIR Restore node runs it; the discriminator file continues the training."""
    config, result = gan_run
    weights = torch.load(result.weights, map_location="cpu", weights_only=True)
    assert set(weights) == {"params", "params_ema"}
    assert weights["params"].keys() == weights["params_ema"].keys() == DiffRIR(1, **TINY_DIFFRIR).state_dict().keys()
    start = torch.load(inputs["s2"], weights_only=True)["params_ema"]
    assert not torch.equal(weights["params"]["G.tail.1.weight"], start["G.tail.1.weight"])
    assert not torch.equal(weights["params"]["G.tail.1.weight"], weights["params_ema"]["G.tail.1.weight"])
    model = load_diffrir(result.weights)
    assert torch.equal(model.state_dict()["G.tail.1.weight"], weights["params_ema"]["G.tail.1.weight"])
    generated = torch.rand(1, 70, 90, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 70, 90)
    mask[:, 20:50, 30:70] = 1
    out = restore_image(model, generated, generated.flip(2), mask, seed=0)
    assert out.shape == (1, 70, 90, 3) and torch.isfinite(out).all()
    assert not torch.equal(out[0, 20:50, 30:70], generated[0, 20:50, 30:70])
    assert torch.equal(out[0, :20], generated.flip(2)[0, :20])  # outside the mask: the reference
    d_state = read_discriminator_weights(result.discriminator)
    assert d_state.keys() == UNetDiscriminatorSN(3, D_FEAT).state_dict().keys()


def test_resume_continues_with_identical_losses_and_weights(inputs, tmp_path):
    """An uninterrupted 5-step V2 run (a checkpoint every step) against one resumed from its step-3 checkpoint: the
    pool is full, generator, discriminator (spectral-norm vectors included), both optimizers, the EMA and the random
    streams are restored; losses and both written files are bit-identical."""
    config = diffrir_gan_config(inputs, tmp_path / "full", usm_gt=True, max_train_steps=5, checkpointing_steps=1)
    full = train(config)
    reset_accelerate()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    resumed = train(replace(config, output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest"))
    assert resumed.global_step == 5 and resumed.losses == full.losses[3:]
    for name in ("weights", "discriminator"):
        written, again = (torch.load(getattr(run, name), weights_only=True) for run in (full, resumed))
        assert written.keys() == again.keys()
        for key in written:
            assert all(torch.equal(value, again[key][param]) for param, value in written[key].items()), (name, key)


# Runs `training.diffrir` (which hands stage s2_gan on), recording every process's weights after each step.
RECORDING_LAUNCHER = """
import sys, torch
import training.diffrir as diffrir
import training.diffrir_gan as gan
after_step = gan.GANStage.after_step
def recording_after_step(self):
    after_step(self)
    networks = {"g": self.network, "d": self.bare_discriminator}
    state = {f"{name}.{key}": value.detach().clone() for name, network in networks.items()
             for key, value in network.state_dict().items()}
    torch.save(state, f"{sys.argv[-1]}/rank{self.accelerator.process_index}.pt")
gan.GANStage.after_step = recording_after_step
sys.exit(diffrir.main(sys.argv[1:-1]))
"""


@pytest.mark.timeout(240)
def test_two_processes_keep_identical_weights(inputs, tmp_path):
    """DDP over gloo on the CPU: the generator (DDP, the discriminator called outside it) and the discriminator (DDP,
    spectral norm) stay equal on both processes; started as `-m training.diffrir` with stage s2_gan."""
    config = {"train_data": str(inputs["images"]), "output_dir": str(tmp_path / "out"), "stage": "s2_gan",
              "s1_checkpoint": str(inputs["s1"]), "s2_checkpoint": str(inputs["s2"]),
              "vgg19_weights": str(inputs["vgg"]), **TINY_DIFFRIR_CONFIG, "d_num_feat": D_FEAT, "crop_size": 96,
              "gt_size": 64, "queue_size": 4, "train_batch_size": 2, "max_train_steps": 2, "lr_sr": 2e-3, "lr_d": 2e-3,
              "dataloader_num_workers": 0, "checkpointing_steps": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "launch.py").write_text(RECORDING_LAUNCHER)
    run = launch_two_processes([str(tmp_path / "launch.py"), "--config", str(tmp_path / "config.json"),
                                str(tmp_path)], tmp_path, 220)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert [r["samples"] for r in read_train_log(str(tmp_path / "out"))] == [4, 4]
    first, second = (torch.load(tmp_path / f"rank{k}.pt", weights_only=True) for k in (0, 1))
    assert any(key.startswith("d.") for key in first) and first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert (tmp_path / "out" / "checkpoint-2").is_dir() and load_diffrir(tmp_path / "out" / "net_g_latest.pth")
    assert (tmp_path / "out" / "net_d_latest.pth").is_file()


# --- the VGG19 weights -------------------------------------------------------------------------------------------


def test_a_missing_vgg19_file_stops_the_run_before_training_with_one_line(inputs, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "vgg19-dcbb9e9d.pth"
    config = diffrir_gan_config(inputs, tmp_path / "out", vgg19_weights=str(missing))
    with pytest.raises(ModelNotFoundError, match=f"{re.escape(str(missing))} does not exist.*{re.escape(VGG19_URL)}"):
        train(config)
    assert not (tmp_path / "out").exists()  # nothing started: no logs, no checkpoint
    path = tmp_path / "c.json"
    path.write_text(json.dumps(vars(config)))
    assert diffrir.main(["--config", str(path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: VGG19 (perceptual loss) weights not found") and (
        VGG19_URL in error[0])


def test_vgg19_files_of_another_network_or_with_code_are_refused(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3)}, other)
    with pytest.raises(ModelNotFoundError, match=f"does not hold the VGG19 .*missing.*{re.escape(VGG19_URL)}"):
        load_vgg19(other)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"features.0.weight": torch.zeros(1), "extra": Path("x")}, unsafe)
    with pytest.raises(ModelNotFoundError, match="unsafe.pth holds Python objects .* it is refused"):
        load_vgg19(unsafe)  # never unpickled: torch.load(weights_only=True)


def test_vgg19_has_torchvision_layout_and_gives_pre_relu_features():
    """The keys and shapes of torchvision's vgg19().features up to conv5_4 (what vgg19-dcbb9e9d.pth holds), and the
    official layers: conv outputs before their ReLU."""
    from torchvision.models import vgg19

    with torch.device("meta"):
        reference = {key: value.shape for key, value in vgg19().state_dict().items()}
    ours = VGG19Features()
    assert {key: value.shape for key, value in ours.state_dict().items()} == {
        key: shape for key, shape in reference.items() if key.startswith("features.") and int(key.split(".")[1]) <= 34}
    indices = vgg19_layer_indices()
    assert [indices[name] for name in ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4")] == [2, 7, 16, 25, 34]
    tiny = VGG19Features(widths=VGG_WIDTHS)
    features = tiny(torch.rand(1, 3, 32, 32))
    assert set(features) == {"conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"}
    assert features["conv1_2"].shape == (1, 4, 32, 32) and features["conv5_4"].shape == (1, 8, 2, 2)
    assert all((value < 0).any() for value in features.values())  # after a ReLU nothing would be negative


# --- the pieces -------------------------------------------------------------------------------------------------------


def test_usm_sharpening_is_basicsr_s_on_edges_and_leaves_flat_areas():
    kernel = _usm_kernel(torch.device("cpu"))
    # OpenCV's sigma for a 51-tap kernel is 8: the ends weigh exp(-25²/(2·8²)) of the centre.
    assert float(kernel[0] / kernel[25]) == pytest.approx(np.exp(-625 / 128), rel=1e-5)
    image = torch.full((1, 3, 64, 64), 0.5)
    assert torch.equal(usm_sharpen(image), image)
    image[..., 32:] = 0.7
    sharp = usm_sharpen(image)
    assert sharp[0, 0, 10, 31] < 0.5 < 0.7 < sharp[0, 0, 10, 32]  # overshoot on both sides of the edge
    reference = blur(image, torch.outer(kernel, kernel))  # the 2-D filter2D of BasicSR
    residual = image - reference
    soft = blur((residual.abs() > 10 / 255).float(), torch.outer(kernel, kernel))
    expected = soft * (image + 0.5 * residual).clamp(0, 1) + (1 - soft) * image
    assert torch.allclose(sharp, expected, atol=1e-5)


def test_the_discriminator_gives_one_logit_per_pixel_with_spectral_norm():
    network = UNetDiscriminatorSN(3, D_FEAT)
    assert {"conv1.weight_orig", "conv1.weight_u", "conv1.weight_v", "conv0.weight", "conv9.bias"} <= set(
        network.state_dict())
    assert network(torch.rand(2, 3, 64, 48)).shape == (2, 1, 64, 48)
    with pytest.raises(ValueError, match="multiples of 8"):
        network(torch.rand(1, 3, 60, 64))


# --- configs --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "message"), [
    ({"s1_checkpoint": "s1.pth"}, "stage s2_gan continues from stage s2: set s2_checkpoint"),
    ({"s2_checkpoint": "s2.pth"}, "stage s2_gan continues from stage s1: set s1_checkpoint"),
    ({"s1_checkpoint": "a", "s2_checkpoint": "b", "lr_encoder": 1e-3}, "lr_encoder: settings of stages s1/s2"),
    ({"s1_checkpoint": "a", "s2_checkpoint": "b", "discriminator_name": "net_g_latest"}, "files of their own"),
])
def test_a_bad_gan_config_names_the_problem(tmp_path, values, message):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train_data": "d", "output_dir": "o", "stage": "s2_gan", **values}))
    with pytest.raises(ConfigError, match=message):
        load_config(path, DiffRIRGANConfig)


def test_s2_weights_must_be_the_configured_s2_network(inputs, tmp_path):
    with pytest.raises(ConfigError, match="s2_checkpoint .* holds DiffRIR S1 weights"):
        train(diffrir_gan_config(inputs, tmp_path / "a", s2_checkpoint=str(inputs["s1"])))
    with pytest.raises(ConfigError, match="s2_checkpoint .*missing.pth does not exist: train stage s2 first"):
        train(diffrir_gan_config(inputs, tmp_path / "b", s2_checkpoint=str(tmp_path / "missing.pth")))
    reset_accelerate()
    with pytest.raises(ConfigError, match="d_checkpoint .* does not fit the configured network.*d_num_feat"):
        train(diffrir_gan_config(inputs, tmp_path / "c", d_num_feat=16))


def test_the_shipped_configs_carry_the_official_values():
    configs = [load_config(REPO_ROOT / "training" / "configs" / name, DiffRIRGANConfig)
               for name in ("diffrir_s2_gan.yaml", "diffrir_s2_gan_v2.yaml")]
    s2 = load_config(REPO_ROOT / "training" / "configs" / "diffrir_s2.yaml", diffrir.DiffRIRConfig)
    for config, usm in zip(configs, (False, True), strict=True):
        assert config.usm_gt is usm and config.stage == "s2_gan"
        assert (config.max_train_steps, config.lr_sr, config.gamma_sr, config.lr_decay_sr, config.lr_d) == (
            400_000, 1e-4, 0.5, 300_000, 1e-4)
        assert (config.y_error, config.ema_decay, config.adam_beta2, config.d_num_feat) == (0.06, 0.999, 0.99, 64)
        assert (config.pixel_weight, config.perceptual_weight, config.gan_weight) == (1.0, 1.0, 1.0)
        assert config.s2_checkpoint == str(Path(s2.output_dir) / f"{s2.model_name}.pth")
        assert config.s1_checkpoint == s2.s1_checkpoint
        assert Path(config.vgg19_weights).name == "vgg19-dcbb9e9d.pth"
