"""DiffRIR restoration time and peak memory at 512², 1024² and 2048² (tiled), against 1024² in one pass.

The network is the released x1 S2 architecture (25 M parameters, random weights: speed does not depend on them);
the mask is an outpainting-style border (everything but the central half), so every tile holds masked pixels.
Each variant runs in a fresh process: the model is built, the inputs made, the peak RSS reset, then one timed
`restore_image` call (prior + network + compositing). Reported: seconds, the peak RSS above the RSS before the call
(Linux /proc VmHWM after a reset, minus VmRSS), the longest step between two Cancel checks (`restore_image`'s
`check`: how long a Cancel can wait; target < 1 s), and the ratios the DiffRIR issue asks for — time 2048²/1024²
(linear in pixels: 4×; target 3.5–4.5) and peak memory of tiled 2048² over one-pass 1024² (target ≤ 1.2).

    python bench/bench_restore.py [--tile 1056] [--overlap 64] [--repeats 1] [--threads 0] [--full-2048]

The default tile (1056 px, overlap 64) covers 2048 px with two tiles per side (4 tiles of 1056², 6 % more pixels
than the image); --full-2048 also runs 2048² in one pass (about 8 GB on a CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402
from peak_memory import rss_mb  # noqa: E402

from llmga.restore.inference import restore_image  # noqa: E402
from llmga.restore.network import DiffRIR  # noqa: E402


def inputs(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    generated = torch.rand(1, size, size, 3, generator=generator)
    reference = torch.rand(1, size, size, 3, generator=generator)
    mask = torch.ones(1, size, size)
    mask[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 0
    return generated, reference, mask


def measure(size: int, tile: int | None, overlap: int | None) -> dict:
    torch.manual_seed(0)
    model = DiffRIR(1).eval()
    generated, reference, mask = inputs(size)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = rss_mb("VmRSS")
    checks = []
    start = time.perf_counter()
    restore_image(model, generated, reference, mask, seed=0, tile=tile, overlap=overlap,
                  check=lambda: checks.append(time.perf_counter()))
    seconds = time.perf_counter() - start
    steps = [later - earlier for earlier, later in zip([start, *checks], [*checks, start + seconds], strict=True)]
    return {"seconds": seconds, "peak_mb": rss_mb("VmHWM") - before, "longest_step": max(steps)}


def run_variant(size: int, tile: int | None, overlap: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--only", str(size), "--threads", str(threads), "--overlap", str(overlap)]
    command += ["--tile", str(tile)] if tile else ["--one-pass"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile", type=int, default=1056)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--full-2048", action="store_true", help="also run 2048² in one pass")
    parser.add_argument("--only", type=int, help="measure one size in this process and print JSON (internal)")
    parser.add_argument("--one-pass", action="store_true", help="with --only: no tiles (internal)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only:
        tile = None if args.one_pass else args.tile
        print(json.dumps(measure(args.only, tile, None if tile is None else args.overlap)))
        return
    variants = [("512² one pass", 512, None), ("1024² one pass", 1024, None),
                (f"2048² tiles of {args.tile} (overlap {args.overlap})", 2048, args.tile)]
    if args.full_2048:
        variants.append(("2048² one pass", 2048, None))
    print(f"torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}, x1 DiffRIR (25.1 M)")
    results = {}
    for label, size, tile in variants:
        runs = [run_variant(size, tile, args.overlap, args.threads) for _ in range(args.repeats)]
        results[label] = {"seconds": min(r["seconds"] for r in runs), "peak_mb": max(r["peak_mb"] for r in runs),
                          "longest_step": max(r["longest_step"] for r in runs)}
        row = results[label]
        print(f"{label:>36}: {row['seconds']:8.1f} s   peak +{row['peak_mb']:7.0f} MB   longest step between Cancel "
              f"checks {row['longest_step']:.2f} s", flush=True)
    one_pass, tiled = results["1024² one pass"], results[variants[2][0]]
    print(f"time 2048² tiled / 1024² one pass: {tiled['seconds'] / one_pass['seconds']:.2f} (target 3.5–4.5)")
    print(f"peak memory 2048² tiled / 1024² one pass: {tiled['peak_mb'] / one_pass['peak_mb']:.2f} (target <= 1.2)")
    print(f"time 1024² / 512²: {one_pass['seconds'] / results['512² one pass']['seconds']:.2f} (linear: 4)")


if __name__ == "__main__":
    main()
