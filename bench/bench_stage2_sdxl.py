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
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts"), str(ROOT / "bench")]

from bench_train_stage2 import add_arguments, run_throughput  # noqa: E402


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
    add_arguments(parser, "an SDXL diffusers folder (default: the tiny fixture)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_stage2_sdxl_"))
    workdir.mkdir(parents=True, exist_ok=True)
    run_throughput(args, args.model or tiny_sdxl(workdir, args.task), workdir, "stage-2 SDXL training",
                   family="sdxl")


if __name__ == "__main__":
    main()
