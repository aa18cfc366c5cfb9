"""What the trainer tests share: a clean accelerate state per test, and `accelerate launch` of 2 CPU processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState, PartialState

REPO_ROOT = Path(__file__).resolve().parent.parent


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
