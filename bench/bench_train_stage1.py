"""Stage-1 MLLM training throughput (training/stage1_mllm.py): samples/s of full fine-tuning with and without
gradient checkpointing, and 2 processes against 1, on this machine.

The model is the tiny Qwen2 LLMGA stand-in of tests/fixtures/mllm.py (real tokenizer; LLM hidden 64 x 2 layers,
CLIP tower 2 layers at 336 px, so every image sample is 576 image tokens + its text) unless --base / --tower /
--adapter name real folders. The data mixes image tasks (similar image, inpainting) with text-only prompt
refinement, in the released json layout, as the official ConcatDataset does. Each variant is a fresh run of the
real trainer (bench_train_stage2.run_variant: its own process(es), samples/s from logs/train.jsonl after
--warmup steps):

    1 proc                 python -m training.stage1_mllm (gradient checkpointing off)
    1 proc + grad ckpt     the same with gradient_checkpointing: true
    2 procs                accelerate launch --multi_gpu --num_processes 2 (DDP; gloo on the CPU)

On the CPU every variant gets the same cores in total (2 processes get half the threads each).

    python bench/bench_train_stage1.py [--steps 8] [--warmup 2] [--batch 4] [--threads N] [--gpu] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts"), str(ROOT / "bench")]

from bench_train_stage2 import run_variant  # noqa: E402

CAPTIONS = ["a red barn under a stormy sky with wheat bending in the wind",
            "two dogs running along a beach at sunset, spray catching the light",
            "a bowl of ramen with soft eggs, scallions and chili oil on a wooden table",
            "a lighthouse on a cliff in thick fog, a single beam cutting the dusk"]


def tiny_models(workdir: Path) -> dict[str, Path]:
    from fixtures.mllm import build_clip_vision_tower, build_projector_only

    root = workdir / "models"
    if not (root / "checkpoints").is_dir():
        print(f"writing the tiny Qwen2 LLMGA stand-ins to {root} ...", flush=True)
        tower = build_clip_vision_tower(root)
        build_projector_only(root, "qwen2", vision_tower=tower)
    return {"base": next((root / "base_models").iterdir()), "tower": next(root.rglob("clip-vit-large-patch14-336")),
            "adapter": next(root.rglob("mm_projector.bin"))}


def write_data(folder: Path, count: int) -> Path:
    """`count` images with SG, inpainting and T2I records in the released layout."""
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(folder / "imgs" / f"{index}.png")
        records.append({"image": f"imgs/{index}.png", "caption": CAPTIONS[index % len(CAPTIONS)]})
    (folder / "sg.json").write_text(json.dumps(records))
    (folder / "inpainting.json").write_text(json.dumps(records[: count // 2]))
    t2i = [{"ori_caption": caption.split(",")[0], "caption": caption} for caption in CAPTIONS] * (count // 4 or 1)
    (folder / "t2i.json").write_text(json.dumps(t2i))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="per process")
    parser.add_argument("--base", type=Path, help="a base LLM folder (default: the tiny Qwen2 stand-in)")
    parser.add_argument("--tower", type=Path, help="a CLIP ViT-L/14-336 folder")
    parser.add_argument("--adapter", type=Path, help="an mm_projector.bin")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--gpu", action="store_true", help="train on CUDA (bf16) instead of the CPU (fp32)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_stage1_"))
    workdir.mkdir(parents=True, exist_ok=True)
    models = tiny_models(workdir) if args.base is None else {"base": args.base, "tower": args.tower,
                                                              "adapter": args.adapter}
    data = write_data(workdir / "data", 4 * args.batch * args.steps)
    base = {"model_name_or_path": str(models["base"]), "vision_tower": str(models["tower"]),
            "pretrain_mm_mlp_adapter": str(models["adapter"]) if models["adapter"] else None,
            "data_root": str(data), "image_folder2": str(data), "similar_image_data": "sg.json",
            "inpainting_data": "inpainting.json", "t2i_data": "t2i.json",
            "per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1,
            "max_train_steps": args.steps, "mixed_precision": "bf16" if args.gpu else "no",
            "dataloader_num_workers": 0, "checkpointing_steps": 10**9, "resume_from_checkpoint": None,
            "gradient_checkpointing": False}
    variants = [("1 proc", base, 1), ("1 proc + grad ckpt", {**base, "gradient_checkpointing": True}, 1),
                ("2 procs", base, 2)]
    results = [run_variant(name, config, processes, args.threads, args.gpu, workdir, args.warmup,
                           module="training.stage1_mllm")
               for name, config, processes in variants]

    print(f"\nstage-1 fine-tuning, batch {args.batch}/process, {args.steps - args.warmup} timed steps, "
          f"{'GPU' if args.gpu else f'CPU ({args.threads} threads)'}, {platform.processor() or platform.machine()}, "
          f"model {models['base']}")
    print(f"{'variant':<22}{'samples/s':>12}{'median step ms':>17}")
    for r in results:
        print(f"{r['variant']:<22}{r['samples_per_s']:>12.2f}{r['step_ms_median']:>17.0f}")
    one = results[0]["samples_per_s"]
    print(f"grad ckpt / plain: {results[1]['samples_per_s'] / one:.2f}x   2 procs / 1 proc: "
          f"{results[2]['samples_per_s'] / one:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
