"""Evaluation throughput (llmga/eval): feature extraction with and without the feature cache, and the eval loop's
batched generation against calling the pipeline image by image.

1. Features: N generated PNGs through the FID Inception (random weights: the same network and cost as the real
   pt_inception file) with `extract_features`, three ways in one process:
       no cache                  every image decoded and run through the network
       cache, first run          the same, plus writing the cache
       cache, second run         the same set again: served from the cache
2. Generation: the same prompts and seeds on the same SD1.5 pipeline (the tiny fixture unless --model names an SD1.5
   diffusers folder):
       image by image            one `text_to_image` call per image (what a hand-written loop does)
       eval loop, batch B        `generate_images` with the eval backend's `text_to_image_batch`, B prompts a call
   Both make the same images (the seeds are per image); the ratio is loop time / image-by-image time.

    python bench/bench_eval.py [--images 64] [--prompts 8] [--batch 4] [--steps 4] [--size 64] [--model FOLDER]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts"), str(ROOT / "bench")]

PROMPTS = ["a red fox curled up in deep fresh snow, soft golden hour light, frost on its fur",
           "a lighthouse on a cliff at dusk, waves crashing below, dramatic clouds",
           "a bowl of ramen with soft eggs and scallions on a wooden table, steam rising",
           "two dogs running along a beach at sunset, spray catching the light"]


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def bench_features(workdir: Path, count: int, batch: int) -> list[tuple[str, float]]:
    from llmga.eval.features import FeatureCache, extract_features, inception_extractor
    from llmga.eval.networks import InceptionFeatures

    folder = workdir / "feature_images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / f"{index:04d}.png")
    paths = sorted(folder.glob("*.png"))
    extractor = inception_extractor(InceptionFeatures().eval())
    cache = FeatureCache(workdir / "feature_cache")
    run = {"batch_size": batch, "progress": False}
    rows = [("no cache", timed(lambda: extract_features(paths, extractor, **run)))]
    rows.append(("cache, first run", timed(lambda: extract_features(paths, extractor, cache=cache, **run))))
    fresh = FeatureCache(workdir / "feature_cache")  # a new process would start from the files
    rows.append(("cache, second run", timed(lambda: extract_features(paths, extractor, cache=fresh, **run))))
    return rows


def bench_generation(workdir: Path, model: Path, prompts: int, batch: int, steps: int,
                     size: int) -> list[tuple[str, float]]:
    from llmga.eval.backends import text_to_image_batch
    from llmga.eval.t2i import generate_images
    from llmga.sd.pipelines import load_sd15_pipeline, text_to_image

    pipe = load_sd15_pipeline(model, device="cpu", dtype="fp32")
    pipe.set_progress_bar_config(disable=True)
    items = [(f"{i:03d}", PROMPTS[i % len(PROMPTS)], 1000 + i) for i in range(prompts)]
    options = {"steps": steps, "cfg": 7.5, "width": size, "height": size}
    text_to_image(pipe, PROMPTS[0], **options, seed=0)  # warm-up

    def one_by_one() -> None:
        for _, prompt, seed in items:
            text_to_image(pipe, prompt, **options, seed=seed)

    def loop() -> None:
        generate_images("model", items, workdir / f"loop_{time.time_ns()}",
                        lambda _model, texts, seeds: text_to_image_batch(pipe, texts, seeds, **options),
                        batch_size=batch, progress=False)

    return [("image by image", timed(one_by_one)), (f"eval loop, batch {batch}", timed(loop))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images for the feature benchmark")
    parser.add_argument("--feature-batch", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=8, help="images for the generation benchmark")
    parser.add_argument("--batch", type=int, default=4, help="prompts per pipeline call in the eval loop")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", type=Path, help="an SD1.5 diffusers folder (default: the tiny fixture)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_eval_"))
    workdir.mkdir(parents=True, exist_ok=True)

    features = bench_features(workdir, args.images, args.feature_batch)
    if args.model is None:
        from bench_train_stage2 import tiny_model

        args.model = tiny_model(workdir, "t2i")
    generation = bench_generation(workdir, args.model, args.prompts, args.batch, args.steps, args.size)

    print(f"\nCPU ({args.threads} threads), {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(f"features: {args.images} PNGs of 256², FID Inception, batch {args.feature_batch}")
    print(f"{'variant':<26}{'s':>8}{'images/s':>10}{'ratio':>8}")
    for name, seconds in features:
        print(f"{name:<26}{seconds:>8.2f}{args.images / seconds:>10.1f}{seconds / features[0][1]:>8.3f}")
    print(f"generation: {args.prompts} images of {args.size}², {args.steps} steps, model {args.model}")
    print(f"{'variant':<26}{'s':>8}{'images/s':>10}{'ratio':>8}")
    for name, seconds in generation:
        print(f"{name:<26}{seconds:>8.2f}{args.prompts / seconds:>10.2f}{seconds / generation[0][1]:>8.3f}")


if __name__ == "__main__":
    main()
