"""DiffRIR GAN-stage training throughput (training/diffrir_gan.py) against the S2 stage (training/diffrir.py, phase b)
on this machine: iterations/s of each, from the trainer's own step log.

Every variant is a fresh run of the real trainer (`python -m training.diffrir`) in its own process on the same images,
with the same generator: DiffRIR at the released size (dim 64, [13,1,1,1] blocks, 13 refinement blocks) unless
--tiny, starting from random S1 / S2 weight files in the released layouts. The GAN stage adds the real-size U-Net
discriminator (64 channels) and the real-layout VGG19 (torchvision's vgg19 widths; random weights written as
vgg19-dcbb9e9d.pth is, so the timing is that of the real network). Variants:

    S2 (phase b)    stage s2 with encoder_iters 0: L1(composited output) + prior L1, one optimizer
    GAN V1          stage s2_gan: + VGG19 perceptual + discriminator step
    GAN V2          stage s2_gan with usm_gt: + the USM sharpening of the 400² gt and of the crop

it/s = steps / seconds over the steps after --warmup (checkpoint writes are not timed). --repeat 2 runs the list
again in reverse order and keeps each variant's faster run, which evens out a machine whose load changes. With --gpu
the runs use CUDA in fp32 (the official precision); on the CPU they use --threads threads.

    python bench/bench_train_diffrir_gan.py [--steps 6] [--warmup 2] [--batch 2] [--gt-size 64] [--tiny]
        [--repeat 1] [--threads N] [--gpu] [--workdir DIR] [--json OUT]
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
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_train_stage2 import run_variant  # noqa: E402

from llmga.restore.checkpoint import save_basicsr_weights  # noqa: E402
from llmga.restore.network import DiffRIR  # noqa: E402
from llmga.restore.perceptual import VGG19_FILE, VGG19Features  # noqa: E402
from llmga.restore.s1 import DiffRIRS1  # noqa: E402

TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 1, 1], "n_encoder_res": 1}
CROP_SIZE = 96  # the smallest the degradation takes (80) rounded up; the official 400 only adds data-side work


def write_inputs(workdir: Path, sizes: dict, count: int) -> dict[str, Path]:
    """Images (smooth patterns, 128²), random S1 / S2 weights of `sizes`, a random real-layout VGG19 file."""
    images = workdir / "images"
    images.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:128, 0:128]
    rng = np.random.default_rng(0)
    for index in range(count):
        c = rng.uniform(0, 1, (3, 2))
        pixels = np.stack([0.5 + 0.4 * np.sin(xx / (3 + 4 * c[k, 0])) * np.cos(yy / (3 + 4 * c[k, 1]))
                           for k in range(3)], -1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(images / f"{index}.png")
    torch.manual_seed(0)
    network_sizes = {key: tuple(value) if isinstance(value, list) else value for key, value in sizes.items()}
    save_basicsr_weights({"params": DiffRIRS1(1, **network_sizes).state_dict()}, workdir / "s1.pth")
    s2 = DiffRIR(1, **network_sizes).state_dict()
    save_basicsr_weights({"params": s2, "params_ema": s2}, workdir / "s2.pth")
    torch.save(VGG19Features().state_dict(), workdir / VGG19_FILE)
    return {"images": images, "s1": workdir / "s1.pth", "s2": workdir / "s2.pth", "vgg": workdir / VGG19_FILE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="per process")
    parser.add_argument("--gt-size", type=int, default=64, help="the training patch (official 256)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test generator instead of the released size")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each variant, alternating the order")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--gpu", action="store_true", help="train on CUDA instead of the CPU (both fp32)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_diffrir_gan_"))
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = TINY if args.tiny else {"dim": 64, "num_blocks": [13, 1, 1, 1], "num_refinement_blocks": 13,
                                    "heads": [1, 2, 4, 8], "n_encoder_res": 9}
    inputs = write_inputs(workdir, sizes, 2 * args.batch)
    crop = max(CROP_SIZE, args.gt_size)
    base = {"train_data": str(inputs["images"]), **sizes, "crop_size": crop, "gt_size": args.gt_size,
            "queue_size": 2 * args.batch, "train_batch_size": args.batch, "max_train_steps": args.steps,
            "s1_checkpoint": str(inputs["s1"]), "mixed_precision": "no", "dataloader_num_workers": 0,
            "checkpointing_steps": 10**9, "resume_from_checkpoint": None}
    gan = {**base, "stage": "s2_gan", "s2_checkpoint": str(inputs["s2"]), "vgg19_weights": str(inputs["vgg"])}
    variants = [("S2 phase b", {**base, "stage": "s2", "encoder_iters": 0}), ("GAN V1", gan),
                ("GAN V2", {**gan, "usm_gt": True})]
    best: dict[str, dict] = {}
    for round_ in range(args.repeat):
        for name, config in variants if round_ % 2 == 0 else variants[::-1]:
            result = run_variant(f"{name} {round_}", config, 1, args.threads, args.gpu, workdir, args.warmup,
                                 module="training.diffrir")
            if name not in best or result["samples_per_s"] > best[name]["samples_per_s"]:
                best[name] = {**result, "variant": name}
    results = [best[name] for name, _ in variants]
    for result in results:
        result["it_per_s"] = result["samples_per_s"] / args.batch
        result["ratio"] = result["it_per_s"] / results[0]["it_per_s"]

    device = "GPU" if args.gpu else f"CPU ({args.threads} threads)"
    print(f"\nDiffRIR x1 training, {'tiny' if args.tiny else 'released-size'} generator, {args.gt_size}² patches, "
          f"batch {args.batch}, {args.steps - args.warmup} timed steps, {device}, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(f"{'variant':<14}{'it/s':>10}{'median step ms':>17}{'ratio':>8}")
    for r in results:
        print(f"{r['variant']:<14}{r['it_per_s']:>10.3f}{r['step_ms_median']:>17.0f}{r['ratio']:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
