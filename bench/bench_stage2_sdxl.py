"""Stage-2 SDXL training throughput (training/stage2_sd.py, family: sdxl): samples/s with and without gradient
checkpointing, and 2 processes against 1, on this machine.

The variants and the timing are bench_train_stage2.py's (a fresh run of the real trainer per variant; samples/s from
the step times it logs, after --warmup steps), on an SDXL model: the fully tiny SDXL fixture (fixtures.sdxl_small, built
under --workdir from ComfyUI's CLIP tokenizer) unless --model names an SDXL diffusers folder
(stabilityai/stable-diffusion-xl-base-1.0 for the real cost; --gpu then, at --resolution 1024 --batch 4).

    python bench/bench_stage2_sdxl.py [--steps 8] [--warmup 2] [--batch 2] [--resolution 64] [--task t2i]
        [--model SDXL_DIFFUSERS_FOLDER] [--threads N] [--gpu] [--workdir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts"), str(ROOT / "bench")]

from bench_train_stage2 import run_variant, write_images  # noqa: E402


def tiny_sdxl(workdir: Path, task: str) -> Path:
    """The tiny SDXL fixture folder for `task`, written once under workdir."""
    from comfyui_host import resolve_comfyui
    from fixtures.sdxl_small import build_small_sdxl

    root = workdir / "models"
    small = root / ("tiny-sdxl-small-inpainting" if task == "inpaint" else "tiny-sdxl-small")
    if not (small / "model_index.json").is_file():
        print(f"writing the tiny SDXL fixtures to {root} ...", flush=True)
        build_small_sdxl(root, tokenizer_dir=resolve_comfyui() / "comfy" / "sd1_tokenizer")
    return small


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="per process")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--task", choices=("t2i", "inpaint"), default="t2i")
    parser.add_argument("--model", type=Path, help="an SDXL diffusers folder (default: the tiny fixture)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--gpu", action="store_true", help="train on CUDA (bf16) instead of the CPU (fp32)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_stage2_sdxl_"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = args.model or tiny_sdxl(workdir, args.task)
    data = write_images(workdir / "images", 2 * 2 * args.batch * args.steps, args.resolution)
    base = {"pretrained_model": str(model), "train_data": str(data), "family": "sdxl", "task": args.task,
            "resolution": args.resolution, "train_batch_size": args.batch, "max_train_steps": args.steps,
            "mixed_precision": "bf16" if args.gpu else "no", "use_ema": True, "checkpointing_steps": 10**9,
            "resume_from_checkpoint": None, "gradient_checkpointing": False}
    variants = [("1 proc", base, 1), ("1 proc + grad ckpt", {**base, "gradient_checkpointing": True}, 1),
                ("2 procs", base, 2)]
    results = [run_variant(name, config, processes, args.threads, args.gpu, workdir, args.warmup)
               for name, config, processes in variants]

    print(f"\nstage-2 SDXL training, task {args.task}, {args.resolution}px, batch {args.batch}/process, "
          f"{args.steps - args.warmup} timed steps, {'GPU' if args.gpu else f'CPU ({args.threads} threads)'}, "
          f"{platform.processor() or platform.machine()}, model {model}")
    print(f"{'variant':<22}{'samples/s':>12}{'median step ms':>17}")
    for r in results:
        print(f"{r['variant']:<22}{r['samples_per_s']:>12.2f}{r['step_ms_median']:>17.0f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
