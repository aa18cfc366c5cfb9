"""The SDXL text-to-image graph with the pack's nodes against the all-native graph, in one real ComfyUI server run.

pack:   LLMGA Load SDXL (diffusers folder tiny-sdxl) -> LLMGA Long Prompt Encode (SDXL) (llmga mode) -> KSampler
        -> VAEDecode                                          (what workflows/llmga_sdxl_text_to_image.json runs)
native: CheckpointLoaderSimple (tiny-sdxl.safetensors, the same weights in one file) -> 2 x CLIPTextEncodeSDXL
        -> KSampler -> VAEDecode
Both end in PreviewImage and share seed, sampler (the workflow's euler on ddim_uniform, CFG 5.0), steps, size and size
conditioning (1024). The prompt is 300 CLIP tokens (see bench_long_prompt_encode.py) and each run swaps two of its
words, so everything but the loaders re-executes. The negative prompt is the workflow's empty one by default: the pack
gives zeros (the official SDXL pipeline's) and the native negative encoder, whose text never changes, stays cached
(each run checks what ran and what came from the cache against the history's `execution_cached` list); with
`--negative short` both negatives change on every run. Both loaders (and the native empty negative) sit in both graphs,
unconnected in the other one, so ComfyUI's default cache keeps them after the warm-up. Time: ComfyUI's
`execution_start` to `execution_success`; variants interleaved; medians, minima and the ratios pack / native
(target <= 1.05).

The fixture's UNet is tiny while both text encoders are full size (CLIP-L and CLIP-G, fp32), so the encoders are a far
larger share of the graph than with a real SDXL UNet at 1024x1024, and any encoder overhead shows at its largest.

    python bench/bench_sdxl_graph.py [--repeats 5] [--steps 20] [--size 256] [--negative empty|short] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_long_prompt_encode import (  # noqa: E402
    PROMPT_TOKENS,
    clip_tokenizer,
    interleaved,
    machine_line,
    prompt_variants,
    summary,
    versions_line,
)
from bench_long_prompt_xl import CHECKPOINT, SIZES, start_server  # noqa: E402

PACK_LOADER, NATIVE_LOADER = "1", "11"
# workflows/llmga_sdxl_text_to_image.json: cli-sdxl.py's Euler at CFG 5.0 (steps and size are arguments here).
SAMPLING = {"seed": 42, "cfg": 5.0, "sampler_name": "euler", "scheduler": "ddim_uniform", "denoise": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256, help="image width and height")
    parser.add_argument("--negative", choices=("empty", "short"), default="empty",
                        help="empty: the workflow's (zeros in the pack, a cached encoding in native); short: a short "
                        "negative that changes on every run")
    parser.add_argument("--threads", type=int, default=1,
                        help="server torch threads (1 keeps timings steady on shared CPUs; 0 = torch default)")
    parser.add_argument("--workdir", type=Path, help="keep the server folder and fixtures here (default: a temp dir)")
    args = parser.parse_args()
    empty = args.negative == "empty"

    with ExitStack() as stack:
        server, comfy_path = start_server(args.workdir, args.threads, stack)
        pairs = [(positive, "" if empty else negative)
                 for positive, negative in prompt_variants(clip_tokenizer(comfy_path), 2 * (args.repeats + 1))]
        loaders = {
            PACK_LOADER: {"class_type": "LLMGALoadSDXL", "inputs": {"model": "tiny-sdxl", "allow_download": False}},
            NATIVE_LOADER: {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        }

        def native_encoder(text: str) -> dict:
            return {"class_type": "CLIPTextEncodeSDXL", "inputs": {"clip": [NATIVE_LOADER, 1], "text_g": text,
                                                                   "text_l": text, **SIZES}}

        if empty:  # the native empty negative sits in both graphs too, so the cache keeps it as a user's would
            loaders["13"] = native_encoder("")

        def sample(load: str, positive: list, negative: list) -> dict:
            return {
                "4": {"class_type": "EmptyLatentImage", "inputs": {"width": args.size, "height": args.size,
                                                                   "batch_size": 1}},
                "5": {"class_type": "KSampler", "inputs": {
                    "model": [load, 0], "positive": positive, "negative": negative, "latent_image": ["4", 0],
                    "steps": args.steps, **SAMPLING}},
                "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": [load, 2]}},
                "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
            }

        def pack(i: int):
            positive, negative = pairs[i]
            return {
                **loaders,
                "2": {"class_type": "LLMGALongPromptEncodeSDXL", "inputs": {
                    "clip": [PACK_LOADER, 1], "prompt": positive, "negative_prompt": negative, "mode": "llmga",
                    "max_chunks": 0, **SIZES}},
                **sample(PACK_LOADER, ["2", 0], ["2", 1]),
            }, {"2", "5", "6", "7"}, set(loaders)

        def native(i: int):
            positive, negative = pairs[i]
            graph = {**loaders, "12": native_encoder(positive), "13": native_encoder(negative),
                     **sample(NATIVE_LOADER, ["12", 0], ["13", 0])}
            return graph, {"12", "5", "6", "7"} | (set() if empty else {"13"}), set(loaders)

        variants = {"pack graph": pack, "native graph": native}
        rows = interleaved(variants, server, args.repeats, "loads both models, first CLIP / UNet / VAE calls")

        print()
        print(f"machine: {machine_line()}")
        print(f"software: {versions_line(server, args.threads)}")
        print(f"model: tiny SDXL fixture, diffusers folder tiny-sdxl (pack) and its single-file twin {CHECKPOINT} "
              "(native); full-size CLIP-L, CLIP-G and VAE, tiny UNet")
        negative = ("empty (pack: zeros; native: CLIPTextEncodeSDXL of '', cached)" if empty
                    else "short, changed every run")
        print(f"graph: {args.size}x{args.size}, {args.steps} steps euler/ddim_uniform, cfg 5.0, seed 42, size "
              f"conditioning 1024; prompt {PROMPT_TOKENS} CLIP tokens; negative {negative}; pack mode llmga "
              "(max_chunks 0 = 4)")
        print(f"{args.repeats} interleaved repetitions; time = ComfyUI execution_start -> execution_success "
              "(loaders cached)")
        print(summary(rows, "native graph", unit=1, label="s", digits=2))
        medians = {name: statistics.median(r[0] for r in runs) for name, runs in rows.items()}
        print(f"ratio: median / median of the native graph (target <= 1.05 for the pack graph): "
              f"{medians['pack graph'] / medians['native graph']:.3f}")


if __name__ == "__main__":
    main()
