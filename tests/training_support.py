"""What the trainer tests share: a clean accelerate state per test, `accelerate launch` of 2 CPU processes, the
training log, and the DiffRIR trainers' inputs (smooth colour pictures; the GAN stage's S1, S2, discriminator and
VGG19 files with a config that trains on them in seconds)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState, PartialState
from fixtures.diffrir import TINY_DIFFRIR
from PIL import Image

from llmga.restore.checkpoint import save_basicsr_weights
from llmga.restore.discriminator import UNetDiscriminatorSN
from llmga.restore.network import DiffRIR
from llmga.restore.perceptual import VGG19_FILE, VGG19Features
from llmga.restore.s1 import DiffRIRS1
from training.diffrir_gan import DiffRIRGANConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
# TINY_DIFFRIR as config values (lists, as a config file gives them)
TINY_DIFFRIR_CONFIG = {key: list(value) if isinstance(value, tuple) else value for key, value in TINY_DIFFRIR.items()}
GAN_PICTURE_SIZES = [(128, 112), (96, 96), (140, 100), (100, 90)]
VGG_WIDTHS = (4, 8, 8, 8, 8)  # a VGG19 layout at narrow widths
D_FEAT = 8  # the discriminator's base channels


def reset_accelerate() -> None:
    """Each `train` call builds its own Accelerator; accelerate keeps process-wide singletons between them."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate():
    reset_accelerate()
    yield
    reset_accelerate()


def torch_threads(count: int):
    """A module-scoped autouse fixture running the module's tests on `count` torch threads (tiny models train
    fastest on few threads; on a busy machine spinning worker threads slow them ~10x)."""

    @pytest.fixture(scope="module", autouse=True)
    def threads():
        before = torch.get_num_threads()
        torch.set_num_threads(count)
        yield
        torch.set_num_threads(before)

    return threads


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(target: Sequence[str], tmp_path: Path, timeout: int = 280) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2` of `target` (e.g. ["-m", "training.stage1_mllm", "--config",
    F]) on the CPU: with ACCELERATE_USE_CPU the launcher (torchrun) gives DDP over gloo. Returns the finished run."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), *target]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def read_train_log(output_dir: str | Path) -> list[dict]:
    """The step records of a run's logs/train.jsonl (those with a train_loss)."""
    lines = (Path(output_dir) / "logs" / "train.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "train_loss" in record]


def write_colour_patterns(folder: Path, sizes: Sequence[tuple[int, int]],
                          name: Callable[[int], str] = lambda index: f"{index}.png") -> None:
    """One smooth colour pattern per (width, height) in `folder`, saved as `name(index)` (JPEG at quality 95); the
    same pictures on every call."""
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate(sizes):
        yy, xx = np.mgrid[0:height, 0:width]
        c = rng.uniform(0, 1, (3, 3))
        pixels = np.stack([0.5 + 0.4 * np.sin(xx / (4 + 3 * c[k, 0]) + 6 * c[k, 1]) * np.cos(yy / (5 + 4 * c[k, 2]))
                           for k in range(3)], -1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / name(index), quality=95)


def write_diffrir_gan_inputs(root: Path) -> dict[str, Path]:
    """What the DiffRIR GAN stage starts from, under `root`: four colour patterns ("images"); random S1 ({"params"},
    "s1") and S2 ({"params", "params_ema"}, "s2") weight files of TINY_DIFFRIR; a seeded discriminator file (BasicSR
    net_d layout, "d"); a narrow VGG19 written as torchvision's file is, features + classifier ("vgg")."""
    images = root / "images"
    images.mkdir(parents=True)
    write_colour_patterns(images, GAN_PICTURE_SIZES)
    torch.manual_seed(0)
    save_basicsr_weights({"params": DiffRIRS1(1, **TINY_DIFFRIR).state_dict()}, root / "s1.pth")
    s2 = DiffRIR(1, **TINY_DIFFRIR).state_dict()
    s2["G.tail.1.weight"] *= 10  # a poor start: visible artefacts on the output, for both networks to learn from
    save_basicsr_weights({"params": {k: torch.zeros_like(v) for k, v in s2.items()}, "params_ema": s2}, root / "s2.pth")
    save_basicsr_weights({"params": UNetDiscriminatorSN(3, D_FEAT).state_dict()}, root / "d.pth")
    vgg = VGG19Features(widths=VGG_WIDTHS).state_dict()
    torch.save({**vgg, "classifier.0.weight": torch.zeros(2, 2)}, root / VGG19_FILE)
    return {"images": images, "s1": root / "s1.pth", "s2": root / "s2.pth", "d": root / "d.pth",
            "vgg": root / VGG19_FILE}


def diffrir_gan_config(inputs: dict[str, Path], output: Path, **overrides) -> DiffRIRGANConfig:
    """A GAN-stage config on `write_diffrir_gan_inputs`' files: 96² crops, 64² patches, batches of 2, 30 steps at high
    learning rates, fp32 on one process, no checkpoints; `overrides` replace any key."""
    settings = dict(TINY_DIFFRIR_CONFIG, crop_size=96, gt_size=64, queue_size=4, train_batch_size=2, max_train_steps=30,
                    lr_sr=2e-3, lr_d=2e-3, d_num_feat=D_FEAT, s1_checkpoint=str(inputs["s1"]),
                    s2_checkpoint=str(inputs["s2"]), d_checkpoint=str(inputs["d"]), vgg19_weights=str(inputs["vgg"]),
                    mixed_precision="no", allow_tf32=False, dataloader_num_workers=0, checkpointing_steps=1000,
                    checkpoints_total_limit=None, resume_from_checkpoint=None)
    settings.update(overrides)
    return DiffRIRGANConfig(train_data=str(inputs["images"]), output_dir=str(output), **settings)
