"""A whole text-to-image graph with the pack's nodes against the all-native graph, in one real ComfyUI server run.

pack:   LLMGA Load SD1.5 (diffusers folder tiny-sd15) -> LLMGA Long Prompt Encode (llmga mode) -> KSampler -> VAEDecode
native: CheckpointLoaderSimple (tiny-sd15.safetensors, the same weights in one file) -> 2 x CLIPTextEncode -> KSampler
        -> VAEDecode
Both end in PreviewImage and share seed, sampler, steps and size; the prompt is 300 CLIP tokens (see
bench_long_prompt_encode.py), and each run swaps two words of both prompts, so everything but the loaders re-executes.
Both loaders sit in both graphs (the other one unconnected), so ComfyUI's default cache keeps both after the warm-up
(checked on every run against the history's `execution_cached` list). Time: ComfyUI's `execution_start` to
`execution_success`; variants interleaved; medians and the ratio pack / native (target <= 1.05).

A third variant, the native graph's two CLIPTextEncode nodes alone, gives the encoder's share of the native graph.
The fixture's UNet is tiny (two levels, one resnet each) while its CLIP and VAE are full size, so the encoder is a
far larger share of the graph here than with a real SD1.5 UNet, and any encoder overhead shows at its largest.

    python bench/bench_t2i_graph.py [--repeats 9] [--steps 20] [--size 192] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_long_prompt_encode import (  # noqa: E402
    PROMPT_TOKENS,
    clip_tokenizer,
    interleaved,
    machine_line,
    prompt_variants,
    start_server,
    summary,
    versions_line,
)

PACK_LOADER, NATIVE_LOADER = "1", "11"
Variant = Callable[[int], tuple[dict, set[str], set[str]]]


def t2i_variants(pairs: list[tuple[str, str]], size: int, steps: int, pack_model: str,
                 native_checkpoint: str) -> dict[str, Variant]:
    """The graphs of this benchmark by name ("pack graph", "native graph", "native encoders only"): each takes a run
    number (which prompt pair of `pairs` it encodes) and gives (API graph, nodes that must run, nodes that must come
    from the cache). pack_model: a diffusers folder in models/diffusers; native_checkpoint: the same weights as one file
    in models/checkpoints."""
    loaders = {
        PACK_LOADER: {"class_type": "LLMGALoadSD15", "inputs": {"model": pack_model, "allow_download": False}},
        NATIVE_LOADER: {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": native_checkpoint}},
    }

    def sample(load: str, positive: list, negative: list) -> dict:
        return {
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
            "5": {"class_type": "KSampler", "inputs": {
                "model": [load, 0], "positive": positive, "negative": negative, "latent_image": ["4", 0],
                "seed": 42, "steps": steps, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
                "denoise": 1.0}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": [load, 2]}},
            "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
        }

    def pack(i: int):
        positive, negative = pairs[i]
        return {
            **loaders,
            "2": {"class_type": "LLMGALongPromptEncode", "inputs": {
                "clip": [PACK_LOADER, 1], "prompt": positive, "negative_prompt": negative, "mode": "llmga",
                "max_chunks": 0}},
            **sample(PACK_LOADER, ["2", 0], ["2", 1]),
        }, {"2", "5", "6", "7"}, set(loaders)

    def native_encoders(i: int) -> dict:
        positive, negative = pairs[i]
        return {
            **loaders,
            "12": {"class_type": "CLIPTextEncode", "inputs": {"clip": [NATIVE_LOADER, 1], "text": positive}},
            "13": {"class_type": "CLIPTextEncode", "inputs": {"clip": [NATIVE_LOADER, 1], "text": negative}},
        }

    def native(i: int):
        return {**native_encoders(i), **sample(NATIVE_LOADER, ["12", 0], ["13", 0])}, {"12", "13", "5", "6", "7"}, \
            set(loaders)

    def native_encode_only(i: int):
        graph = native_encoders(i)
        for node, source in (("14", "12"), ("15", "13")):
            graph[node] = {"class_type": "LLMGATestSaveConditioning",
                           "inputs": {"conditioning": [source, 0], "name": f"bench-t2i-{source}"}}
        return graph, {"12", "13"}, set(loaders)

    return {"pack graph": pack, "native graph": native, "native encoders only": native_encode_only}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=192, help="image width and height")
    parser.add_argument("--threads", type=int, default=1,
                        help="server torch threads (1 keeps timings steady on shared CPUs; 0 = torch default)")
    parser.add_argument("--workdir", type=Path, help="keep the server folder and fixtures here (default: a temp dir)")
    args = parser.parse_args()

    with ExitStack() as stack:
        server, comfy_path = start_server(args.workdir, args.threads, stack)
        pairs = prompt_variants(clip_tokenizer(comfy_path), 3 * (args.repeats + 1))
        variants = t2i_variants(pairs, args.size, args.steps, "tiny-sd15", "tiny-sd15.safetensors")
        rows = interleaved(variants, server, args.repeats, "loads both models, first CLIP / UNet / VAE calls")

        print()
        print(f"machine: {machine_line()}")
        print(f"software: {versions_line(server, args.threads)}")
        print("model: tiny SD1.5 fixture, diffusers folder (pack) and its single-file twin (native); full-size CLIP-L "
              "and VAE, tiny UNet")
        print(f"graph: {args.size}x{args.size}, {args.steps} steps euler/normal, cfg 7.5, seed 42; prompt "
              f"{PROMPT_TOKENS} CLIP tokens, short negative; pack mode llmga (max_chunks 0 = 4)")
        print(f"{args.repeats} interleaved repetitions; time = ComfyUI execution_start -> execution_success "
              "(loaders cached)")
        print(summary(rows, "native graph", unit=1, label="s", digits=2))
        medians = {name: statistics.median(r[0] for r in runs) for name, runs in rows.items()}
        print(f"ratio: median / median of the native graph (target <= 1.05 for the pack graph). The encoders are "
              f"{medians['native encoders only'] / medians['native graph']:.0%} of the native graph here; the tiny "
              "UNet makes that share far larger than with a real SD1.5 UNet, so the encoder's overhead weighs more "
              "in this ratio than it would in real use.")


if __name__ == "__main__":
    main()
