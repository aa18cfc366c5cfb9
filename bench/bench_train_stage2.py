"""Stage-2 SD1.5 training throughput (training/stage2_sd.py): samples/s with and without gradient checkpointing, and
2 processes against 1, on this machine.

Every variant is a fresh run of the real trainer in its own process(es) on the same data and model: the tiny SD1.5
fixture (full-size VAE and CLIP, tiny UNet; built under --workdir from ComfyUI's SD1.5 tokenizer) unless --model
names an SD1.5 diffusers folder. The trainer logs each step's wall time and sample count to logs/train.jsonl;
samples/s = samples / seconds over the steps after --warmup. Variants:

    1 proc                 python -m training.stage2_sd (gradient checkpointing off)
    1 proc + grad ckpt     the same with gradient_checkpointing: true
    2 procs                accelerate launch --multi_gpu --num_processes 2 (DDP; nccl on GPUs; on the CPU gloo,
                           with ACCELERATE_USE_CPU=true in the environment)

On the CPU each variant gets the same cores in total (2 processes get half the threads each), so "2 procs" shows
what data parallelism costs or gains here, not a second machine's worth of compute. With --gpu the runs use CUDA
(2 processes need 2 GPUs).

    python bench/bench_train_stage2.py [--steps 8] [--warmup 2] [--batch 2] [--resolution 64] [--task t2i]
        [--model DIFFUSERS_FOLDER] [--threads N] [--gpu] [--workdir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts")]

PROMPTS = ["a red fox curled up in deep fresh snow, soft golden hour light, frost on its fur, shallow depth of field",
           "a lighthouse on a cliff at dusk, waves crashing below, dramatic clouds, long exposure photograph"]


def tiny_model(workdir: Path, task: str) -> Path:
    """The tiny SD1.5 fixture folder for `task`, written once under workdir."""
    from comfyui_host import resolve_comfyui
    from fixtures.sd15 import build_sd15_fixtures

    models = workdir / "models"
    name = "tiny-sd15-inpainting" if task == "inpaint" else "tiny-sd15"
    if not (models / "diffusers" / name / "model_index.json").is_file():
        print(f"writing the tiny SD1.5 fixtures to {models} ...", flush=True)
        build_sd15_fixtures(models, tokenizer_dir=resolve_comfyui() / "comfy" / "sd1_tokenizer")
    return models / "diffusers" / name


def write_images(folder: Path, count: int, resolution: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
        (folder / f"{index}.txt").write_text(PROMPTS[index % len(PROMPTS)])
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_variant(name: str, config: dict, processes: int, threads: int, gpu: bool, workdir: Path,
                warmup: int, module: str = "training.stage2_sd") -> dict:
    """Run the trainer `module` with `config` in `processes` processes; samples/s over the steps after `warmup`."""
    out = workdir / name.replace(" ", "_").replace("+", "")
    config = {**config, "output_dir": str(out)}
    config_path = workdir / f"{out.name}.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(max(1, threads // processes)),
           "HF_HOME": str(workdir / "hf")}
    if not gpu:  # with ACCELERATE_USE_CPU the --multi_gpu launcher gives DDP over gloo on the CPU
        env.update(CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="true")
    if processes == 1:
        command = [sys.executable, "-m", module]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", config["mixed_precision"],
                   "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", module]
    print(f"{name}: {' '.join(command[1:])} --config {config_path}", flush=True)
    run = subprocess.run([*command, "--config", str(config_path)], cwd=ROOT, env=env, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"{name} failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
    records = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step_seconds" in r][warmup:]
    if not steps:
        raise SystemExit(f"{name}: no steps after the {warmup} warm-up steps; raise --steps")
    seconds = sum(r["step_seconds"] for r in steps)
    samples = sum(r["samples"] for r in steps)
    return {"variant": name, "processes": processes, "samples_per_s": samples / seconds,
            "step_ms_median": 1000 * float(np.median([r["step_seconds"] for r in steps])), "steps": len(steps)}


def add_arguments(parser: argparse.ArgumentParser, model_help: str) -> None:
    """The options every stage-2 throughput bench takes (this one and bench_stage2_sdxl.py)."""
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="per process")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--task", choices=("t2i", "inpaint"), default="t2i")
    parser.add_argument("--model", type=Path, help=model_help)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--gpu", action="store_true", help="train on CUDA (bf16) instead of the CPU (fp32)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path, help="also write the results here")


def run_throughput(args: argparse.Namespace, model: Path, workdir: Path, title: str, **settings) -> None:
    """Time the three variants on `model` and print the table (and --json). settings: stage-2 settings every
    variant adds (e.g. family: sdxl)."""
    data = write_images(workdir / "images", 2 * 2 * args.batch * args.steps, args.resolution)
    base = {"pretrained_model": str(model), "train_data": str(data), **settings, "task": args.task,
            "resolution": args.resolution, "train_batch_size": args.batch, "max_train_steps": args.steps,
            "mixed_precision": "bf16" if args.gpu else "no", "use_ema": True, "checkpointing_steps": 10**9,
            "resume_from_checkpoint": None, "gradient_checkpointing": False}
    variants = [("1 proc", base, 1), ("1 proc + grad ckpt", {**base, "gradient_checkpointing": True}, 1),
                ("2 procs", base, 2)]
    results = [run_variant(name, config, processes, args.threads, args.gpu, workdir, args.warmup)
               for name, config, processes in variants]

    print(f"\n{title}, task {args.task}, {args.resolution}px, batch {args.batch}/process, "
          f"{args.steps - args.warmup} timed steps, {'GPU' if args.gpu else f'CPU ({args.threads} threads)'}, "
          f"{platform.processor() or platform.machine()}, model {model}")
    print(f"{'variant':<22}{'samples/s':>12}{'median step ms':>17}")
    for r in results:
        print(f"{r['variant']:<22}{r['samples_per_s']:>12.2f}{r['step_ms_median']:>17.0f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "an SD1.5 diffusers folder (default: the tiny fixture)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_stage2_"))
    workdir.mkdir(parents=True, exist_ok=True)
    run_throughput(args, args.model or tiny_model(workdir, args.task), workdir, "stage-2 training")


if __name__ == "__main__":
    main()
