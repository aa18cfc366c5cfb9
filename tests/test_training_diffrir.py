"""DiffRIR training (training/diffrir.py) on the CPU: stage s1, stage s2 from its output (both phases), exact resume,
the written weights in the released layout, and the errors for bad data and configs.

The network is the official architecture at its smallest size (tests/fixtures/diffrir.py TINY_DIFFRIR), the images
are 80-140 px (padded or cropped to 96, degraded, cropped to 64), the pool holds 4 pairs and a batch 2.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fixtures.diffrir import TINY_DIFFRIR, build_diffrir_fixture
from training_support import (
    TINY_DIFFRIR_CONFIG,
    fresh_accelerate,  # noqa: F401
    launch_two_processes,
    read_train_log,
    reset_accelerate,
    torch_threads,
    write_colour_patterns,
)

from llmga.restore.checkpoint import DiffRIRLoadError, load_diffrir
from llmga.restore.inference import restore_image
from llmga.restore.network import DiffRIR
from llmga.restore.s1 import DiffRIRS1, init_s2_from_s1
from llmga.restore.training import TrainingPairPool, s1_loss, s2_losses, s2_training_prior
from training.common import ConfigError, load_config
from training.data.datasets import DataError
from training.diffrir import DiffRIRConfig, MaskedCropDataset, find_images, main, train, training_pair

REPO_ROOT = Path(__file__).resolve().parent.parent
SIZES = [(128, 112), (96, 96), (140, 100), (80, 120), (100, 90)]  # some smaller than the crop: reflect-padded


one_thread = torch_threads(1)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Five smooth colour patterns of varied sizes, PNG and JPEG, one level of subfolder."""
    folder = tmp_path_factory.mktemp("diffrir_images")
    (folder / "sub").mkdir()
    write_colour_patterns(folder, SIZES, lambda index: f"sub/{index}.jpg" if index % 2 else f"{index}.png")
    return folder


def make_config(data: Path, output: Path, **overrides) -> DiffRIRConfig:
    settings = dict(TINY_DIFFRIR_CONFIG, crop_size=96, gt_size=64, queue_size=4, train_batch_size=2, max_train_steps=30,
                    learning_rate=2e-3, lr_encoder=2e-3, lr_sr=2e-3, mixed_precision="no", allow_tf32=False,
                    dataloader_num_workers=0, checkpointing_steps=1000, checkpoints_total_limit=None,
                    resume_from_checkpoint=None)
    settings.update(overrides)
    return DiffRIRConfig(train_data=str(data), output_dir=str(output), **settings)


def fixed_batch(config: DiffRIRConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, gt, mask) of four training images with fixed degradations (a fresh pool passes its first batch)."""
    dataset = MaskedCropDataset(find_images(config.train_data), config.crop_size, False, seed=123)
    items = [dataset[i] for i in range(4)]
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    return training_pair(batch, TrainingPairPool(4), config, torch.Generator().manual_seed(7))


def s1_network(weights: dict[str, torch.Tensor] | None = None) -> DiffRIRS1:
    torch.manual_seed(0)
    network = DiffRIRS1(1, **TINY_DIFFRIR)
    if weights is not None:
        network.load_state_dict(weights)
    return network.eval()


def s2_fixed_loss(network: DiffRIR, s1: DiffRIRS1, batch: tuple[torch.Tensor, ...]) -> float:
    """The phase-b loss (composited L1 + prior L1) on the fixed batch, with fixed prior noise."""
    x, gt, mask = batch
    with torch.no_grad():
        z_s1 = s1.prior(x, gt)
        z_s2 = s2_training_prior(network, x, z_s1, torch.Generator().manual_seed(3))
        return float(s2_losses(network.restore(x, z_s2), gt, mask, z_s2, z_s1).total)


@pytest.fixture(scope="module")
def s1_run(image_folder, tmp_path_factory):
    config = make_config(image_folder, tmp_path_factory.mktemp("diffrir_s1"))
    reset_accelerate()
    return config, train(config)


@pytest.fixture(scope="module")
def s2_run(image_folder, s1_run, tmp_path_factory):
    """S2 from the S1 run: 8 steps of phase a (prior only), then 22 of phase b."""
    config = make_config(image_folder, tmp_path_factory.mktemp("diffrir_s2"), stage="s2",
                         s1_checkpoint=str(s1_run[1].weights), encoder_iters=8)
    reset_accelerate()
    return config, train(config)


# --- stage 1 --------------------------------------------------------------------------------------------------------


def test_s1_training_lowers_the_loss_on_a_fixed_batch(s1_run):
    config, result = s1_run
    assert result.global_step == len(result.losses) == config.max_train_steps
    x, gt, _ = fixed_batch(config)
    weights = torch.load(result.weights, map_location="cpu", weights_only=True)
    assert set(weights) == {"params"}  # BasicSR's S1 net_g_*.pth (no EMA in stage 1)
    with torch.no_grad():
        before = float(s1_loss(s1_network()(x, gt), gt))
        after = float(s1_loss(s1_network(weights["params"])(x, gt), gt))
    assert after < 0.95 * before, (before, after)


def test_s1_logs_every_step(s1_run):
    config, result = s1_run
    records = read_train_log(config.output_dir)
    assert [r["step"] for r in records] == list(range(1, config.max_train_steps + 1))
    assert [r["train_loss"] for r in records] == pytest.approx(result.losses)
    assert all(r["lr"] == config.learning_rate and r["samples"] == 2 for r in records)


def test_s1_weights_are_not_taken_for_restoration_weights(s1_run):
    with pytest.raises(DiffRIRLoadError, match="S1 \\(first-stage\\) weights"):
        load_diffrir(s1_run[1].weights)


# --- stage 2 --------------------------------------------------------------------------------------------------------


def test_s2_runs_phase_a_then_phase_b_and_lowers_the_loss(s1_run, s2_run):
    config, result = s2_run
    records = read_train_log(config.output_dir)
    phase_a, phase_b = records[:config.encoder_iters], records[config.encoder_iters:]
    assert all("l_pix" not in r and r["train_loss"] == r["l_abs_3"] and r["lr"] == config.lr_encoder for r in phase_a)
    assert all("l_pix" in r and r["train_loss"] == pytest.approx(r["l_pix"] + r["l_abs_3"]) and r["lr"] == config.lr_sr
               for r in phase_b)
    assert len(phase_b) == config.max_train_steps - config.encoder_iters and "l_kd_3" in phase_b[0]
    weights = torch.load(result.weights, map_location="cpu", weights_only=True)
    s1_weights = torch.load(s1_run[1].weights, map_location="cpu", weights_only=True)["params"]
    s1 = s1_network(s1_weights)
    torch.manual_seed(0)
    start = DiffRIR(1, **TINY_DIFFRIR).eval()  # where S2 starts: the S1 DIRformer, a new prior network
    init_s2_from_s1(start, s1_weights)
    trained = DiffRIR(1, **TINY_DIFFRIR).eval()
    trained.load_state_dict(weights["params"])
    batch = fixed_batch(config)
    before, after = s2_fixed_loss(start, s1, batch), s2_fixed_loss(trained, s1, batch)
    assert after < 0.8 * before, (before, after)


def test_s2_writes_the_released_layout_with_ema_weights_that_restore(s2_run):
    config, result = s2_run
    weights = torch.load(result.weights, map_location="cpu", weights_only=True)
    assert set(weights) == {"params", "params_ema"}
    params, ema = weights["params"], weights["params_ema"]
    assert params.keys() == ema.keys() == DiffRIR(1, **TINY_DIFFRIR).state_dict().keys()
    assert not torch.equal(params["G.tail.1.weight"], ema["G.tail.1.weight"])  # EMA 0.999 lags the weights
    assert not torch.equal(params["condition.E.0.weight"], ema["condition.E.0.weight"])
    model = load_diffrir(result.weights)  # what the Load DiffRIR node and `python -m llmga restore` do
    assert torch.equal(model.state_dict()["G.tail.1.weight"], ema["G.tail.1.weight"])
    generated = torch.rand(1, 70, 90, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 70, 90)
    mask[:, 20:50, 30:70] = 1
    out = restore_image(model, generated, generated.flip(2), mask, seed=0)
    assert out.shape == (1, 70, 90, 3) and torch.isfinite(out).all()
    assert torch.equal(out[0, :20], generated.flip(2)[0, :20])  # outside the mask: the reference


def test_resume_continues_with_identical_losses_and_weights(image_folder, s1_run, tmp_path):
    """An uninterrupted 7-step S2 run (phase a for 5 steps, a checkpoint every step) against one resumed from its
    step-4 checkpoint: the pool is full, the EMA and both optimizers are restored, and the phase switches after the
    resume; losses and written weights are bit-identical."""
    config = make_config(image_folder, tmp_path / "full", stage="s2", s1_checkpoint=str(s1_run[1].weights),
                         encoder_iters=5, max_train_steps=7, checkpointing_steps=1)
    full = train(config)
    reset_accelerate()
    shutil.copytree(tmp_path / "full" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    resumed = train(replace(config, output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest"))
    assert resumed.global_step == 7 and resumed.losses == full.losses[4:]
    full_weights = torch.load(full.weights, weights_only=True)
    resumed_weights = torch.load(resumed.weights, weights_only=True)
    for key in ("params", "params_ema"):
        assert all(torch.equal(value, resumed_weights[key][name]) for name, value in full_weights[key].items())


def test_a_run_killed_while_saving_a_checkpoint_leaves_none_to_resume_from(image_folder, tmp_path, monkeypatch):
    """Every process writes into a temporary folder that becomes checkpoint-<step> only once complete, so "latest"
    never resumes from half a checkpoint."""
    from accelerate import Accelerator

    save_state = Accelerator.save_state

    def killed_after_the_first_files(self, output_dir=None, **kwargs):
        save_state(self, output_dir, **kwargs)
        (Path(output_dir) / "random_states_0.pkl").unlink()  # the process died before writing its last file
        raise KeyboardInterrupt

    config = make_config(image_folder, tmp_path / "out", max_train_steps=3, checkpointing_steps=2)
    monkeypatch.setattr(Accelerator, "save_state", killed_after_the_first_files)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    (tmp_path / "out" / ".checkpoint-4.x.tmp").mkdir()  # what a SIGKILL leaves behind
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [".checkpoint-4.x.tmp", "logs"]
    monkeypatch.undo()
    reset_accelerate()
    resumed = train(replace(config, resume_from_checkpoint="latest"))
    assert resumed.global_step == 3 and len(resumed.losses) == 3  # a fresh start: nothing was taken for step 2
    assert (tmp_path / "out" / "checkpoint-2").is_dir()


# Runs the trainer, recording every process's S2 weights after each step.
RECORDING_LAUNCHER = """
import sys, torch
import training.diffrir as diffrir
after_step = diffrir.S2Stage.after_step
def recording_after_step(self):
    after_step(self)
    state = {key: value.detach().clone() for key, value in self.network.state_dict().items()}
    torch.save(state, f"{sys.argv[-1]}/rank{self.accelerator.process_index}.pt")
diffrir.S2Stage.after_step = recording_after_step
sys.exit(diffrir.main(sys.argv[1:-1]))
"""


@pytest.mark.timeout(240)
def test_two_processes_keep_identical_weights_through_both_phases(image_folder, s1_run, tmp_path):
    """DDP over gloo on the CPU: phase a (which bypasses DDP's gradient averaging, the DIRformer taking no part)
    and phase b leave both processes with the same weights."""
    config = {"train_data": str(image_folder), "output_dir": str(tmp_path / "out"), "stage": "s2",
              "s1_checkpoint": str(s1_run[1].weights), **TINY_DIFFRIR_CONFIG, "crop_size": 96, "gt_size": 64,
              "queue_size": 4, "train_batch_size": 2, "max_train_steps": 2, "encoder_iters": 1, "lr_encoder": 2e-3,
              "dataloader_num_workers": 0, "checkpointing_steps": 2}
    write(tmp_path / "config.json", json.dumps(config))
    write(tmp_path / "launch.py", RECORDING_LAUNCHER)
    run = launch_two_processes([str(tmp_path / "launch.py"), "--config", str(tmp_path / "config.json"),
                                str(tmp_path)], tmp_path, 220)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = read_train_log(str(tmp_path / "out"))
    assert [("l_pix" in r, r["samples"]) for r in records] == [(False, 4), (True, 4)]
    first, second = (torch.load(tmp_path / f"rank{k}.pt", weights_only=True) for k in (0, 1))
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert (tmp_path / "out" / "checkpoint-2").is_dir() and load_diffrir(tmp_path / "out" / "net_g_latest.pth")


# --- data -----------------------------------------------------------------------------------------------------------


def test_the_dataset_pads_or_crops_flips_and_draws_a_mask_per_epoch(image_folder):
    paths = find_images(image_folder)
    assert [p.suffix for p in paths].count(".jpg") == 2 and len(paths) == len(SIZES)
    dataset = MaskedCropDataset(paths, 96, True, seed=0)
    small = next(i for i, p in enumerate(paths) if p.name == "3.jpg")  # 80x120: padded to 96 wide
    item = dataset[small]
    assert item["gt"].shape == (3, 96, 96) and item["mask"].shape == (1, 96, 96)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0} and item["mask"].sum() > 0
    assert torch.equal(dataset[small]["gt"], item["gt"]) and torch.equal(dataset[small]["mask"], item["mask"])
    masks = []
    for epoch in range(4):
        dataset.set_epoch(epoch)
        masks.append(dataset[0]["mask"])
    assert not all(torch.equal(masks[0], other) for other in masks[1:])


# --- errors -----------------------------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_missing_or_empty_image_folders_are_reported(tmp_path, capsys):
    with pytest.raises(DataError, match="is not a folder"):
        find_images(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    write(tmp_path / "empty" / "sub" / "notes.txt", "not an image")
    with pytest.raises(DataError, match="holds no images"):
        find_images(tmp_path / "empty")
    config = write(tmp_path / "c.json", json.dumps({"train_data": str(tmp_path / "empty"),
                                                    "output_dir": str(tmp_path / "out")}))
    assert main(["--config", str(config)]) == 2  # exit status 2 with one line, as every command line of the pack
    assert re.search("^error: train_data .* holds no images", capsys.readouterr().err, re.MULTILINE)


def test_too_few_images_for_a_batch_are_reported(image_folder, tmp_path):
    with pytest.raises(DataError, match="fewer than one batch of 8"):
        train(make_config(image_folder, tmp_path, train_batch_size=8, queue_size=8))


@pytest.mark.parametrize(("values", "message"), [
    ({"stage": "s2"}, "stage s2 starts from the S1 network: set s1_checkpoint"),
    ({"learning_rat": 1e-4}, "unknown key learning_rat; valid keys: train_data, output_dir"),
    ({"stage": "s3"}, "stage must be 's1' or 's2'"),
    ({"queue_size": 100}, "queue_size 100 must be divisible by train_batch_size 8"),
    ({"gt_size": 100, "crop_size": 120}, "gt_size must be a multiple of 32"),
    ({"crop_size": 64, "gt_size": 64}, "crop_size 64 must be at least gt_size \\(64\\) and 80"),
    ({"heads": [1, 2, 4]}, "heads must be 4 positive integers"),
    ({"scale": 3}, "scale must be one of 1, 2, 4"),
])
def test_a_bad_config_names_the_problem(tmp_path, values, message):
    path = write(tmp_path / "c.json", json.dumps({"train_data": "d", "output_dir": "o", **values}))
    with pytest.raises(ConfigError, match=message):
        load_config(path, DiffRIRConfig)


def test_s2_needs_readable_s1_weights_of_the_configured_size(image_folder, s1_run, tmp_path):
    def s2(checkpoint: Path, **overrides) -> DiffRIRConfig:
        return make_config(image_folder, tmp_path / "out", stage="s2", s1_checkpoint=str(checkpoint), **overrides)

    with pytest.raises(ConfigError, match="s1_checkpoint .*missing.pth does not exist: train stage s1 first"):
        train(s2(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="holds DiffRIR S2 weights, not the S1 network"):
        train(s2(build_diffrir_fixture(tmp_path)))
    reset_accelerate()
    with pytest.raises(ConfigError, match="does not fit the configured network.*as in the S1 run"):
        train(s2(s1_run[1].weights, dim=16))


def test_the_shipped_configs_carry_the_official_values():
    s1 = load_config(REPO_ROOT / "training" / "configs" / "diffrir_s1.yaml", DiffRIRConfig)
    assert (s1.stage, s1.max_train_steps, s1.lr_milestones, s1.learning_rate, s1.y_error) == (
        "s1", 400_000, [200_000, 300_000], 2e-4, 0.06)
    s2 = load_config(REPO_ROOT / "training" / "configs" / "diffrir_s2.yaml", DiffRIRConfig)
    assert (s2.stage, s2.max_train_steps, s2.encoder_iters, s2.ema_decay, s2.y_error) == (
        "s2", 1_000_000, 100_000, 0.999, 0.08)
    assert s2.s1_checkpoint == str(Path(s1.output_dir) / f"{s1.model_name}.pth")
    for config in (s1, s2):
        assert (config.train_batch_size, config.crop_size, config.gt_size, config.queue_size) == (8, 400, 256, 160)
        assert (config.dim, config.num_blocks, config.heads, config.num_refinement_blocks) == (
            64, [13, 1, 1, 1], [1, 2, 4, 8], 13)
    defaults = DiffRIRConfig(train_data="d", output_dir="o", stage="s2", s1_checkpoint="s1.pth")
    assert (defaults.max_train_steps, defaults.y_error) == (1_000_000, 0.08)
