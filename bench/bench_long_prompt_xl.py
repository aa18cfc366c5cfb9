"""LLMGA Long Prompt Encode (SDXL) against ComfyUI's own CLIPTextEncodeSDXL, in one real ComfyUI server run, on the same
SDXL CLIP.

Times the pack's `LLMGALongPromptEncodeSDXL` (mode llmga, with a short negative prompt and with none: the official
LLMGA SDXL pipeline's zeros) and the native pair of `CLIPTextEncodeSDXL` nodes (positive and negative, the same sizes)
on a 300-token prompt (counted with the CLIP tokenizer that ships with ComfyUI) and a short negative prompt. Every timed
graph shares one cached `CheckpointLoaderSimple` (the tiny SDXL single file of tests/fixtures/sdxl.py: full-size CLIP-L
and CLIP-G text encoders, tiny UNet) and re-executes its encoder node(s): each repetition swaps two single-token words
in both prompts, so ComfyUI's cache skips nothing but the loader (checked on every run against the history's
`execution_cached` list). Time, interleaving and the report are those of bench_long_prompt_encode.py (ComfyUI's own
`execution_start` to `execution_success`; medians and the ratio pack / native, target <= 1.2).

    python bench/bench_long_prompt_xl.py [--repeats 7] [--threads 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts"), str(ROOT / "bench")]

from bench_long_prompt_encode import (  # noqa: E402
    NEGATIVE,
    PROMPT_TOKENS,
    clip_tokenizer,
    interleaved,
    machine_line,
    prompt_variants,
    safetensors_shapes,
    save,
    summary,
    versions_line,
)
from comfy_server import ComfyServer  # noqa: E402
from comfyui_host import resolve_comfyui  # noqa: E402

CHECKPOINT = "tiny-sdxl.safetensors"
SIZES = {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}


def start_server(workdir: Path | None, threads: int, stack: ExitStack) -> tuple[ComfyServer, Path]:
    """A ComfyUI server (ComfyServer's default flags) with the tiny SDXL fixtures in its models folder; `threads`
    torch CPU threads (OMP_NUM_THREADS; 0 = torch's default, one per core)."""
    from fixtures.sdxl import build_sdxl_fixtures

    comfy_path = resolve_comfyui()
    base = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmga-bench-xl-")))
    if not (base / "models" / "checkpoints" / CHECKPOINT).is_file():
        print(f"writing the tiny SDXL fixtures to {base / 'models'} (~4.5 GB) ...", flush=True)
        build_sdxl_fixtures(base / "models", tokenizer_dir=comfy_path / "comfy" / "sd1_tokenizer")
    if threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)  # read by the server at start
    server = ComfyServer(comfy_path, base)
    server.start()
    stack.callback(server.stop)
    return server, comfy_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="server torch threads (1 keeps timings steady on shared CPUs; 0 = torch default)")
    parser.add_argument("--workdir", type=Path, help="keep the server folder and fixtures here (default: a temp dir)")
    args = parser.parse_args()

    with ExitStack() as stack:
        server, comfy_path = start_server(args.workdir, args.threads, stack)
        pairs = prompt_variants(clip_tokenizer(comfy_path), 4 * (args.repeats + 1))
        loader = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}}

        def pack(with_negative: bool):
            tag = "llmga" if with_negative else "zeros"

            def graph(i: int):
                positive, negative = pairs[i]
                return {
                    "1": loader,
                    "2": {"class_type": "LLMGALongPromptEncodeSDXL", "inputs": {
                        "clip": ["1", 1], "prompt": positive, "negative_prompt": negative if with_negative else "",
                        "mode": "llmga", "max_chunks": 0, **SIZES}},
                    "3": save(["2", 0], f"bench-xl-{tag}-pos"),
                    "4": save(["2", 1], f"bench-xl-{tag}-neg"),
                }, {"2"}, {"1"}
            return graph

        def native_node(text: str) -> dict:
            return {"class_type": "CLIPTextEncodeSDXL", "inputs": {"clip": ["1", 1], "text_g": text, "text_l": text,
                                                                   **SIZES}}

        def native(i: int):
            positive, negative = pairs[i]
            return {
                "1": loader, "5": native_node(positive), "6": native_node(negative),
                "7": save(["5", 0], "bench-xl-native-pos"), "8": save(["6", 0], "bench-xl-native-neg"),
            }, {"5", "6"}, {"1"}

        def native_positive(i: int):  # what native costs when only the positive changed: its negative stays cached
            graph, _, cached = native(i)
            del graph["6"], graph["8"]
            return graph, {"5"}, cached

        variants = {"pack llmga": pack(True), "pack llmga, no negative (zeros)": pack(False),
                    "native 2x CLIPTextEncodeSDXL": native, "native, positive only": native_positive}
        rows = interleaved(variants, server, args.repeats, "loads the checkpoint, first CLIP call")

        print()
        print(f"machine: {machine_line()}")
        print(f"software: {versions_line(server, args.threads)}")
        print(f"model: tiny SDXL fixture ({CHECKPOINT}; full-size CLIP-L and CLIP-G text encoders, fp32)")
        shapes = {tag: safetensors_shapes(server.output_dir / f"bench-xl-{tag}.safetensors")["cond"]
                  for tag in ("llmga-pos", "llmga-neg", "zeros-pos", "zeros-neg", "native-pos", "native-neg")}
        print(f"prompt: {PROMPT_TOKENS} CLIP tokens (+ BOS/EOS); negative: {NEGATIVE!r} plus two words")
        print("conditioning lengths (positive / negative): " + ", ".join(
            f"{name} {shapes[name + '-pos'][1]} / {shapes[name + '-neg'][1]}" for name in ("llmga", "zeros", "native")))
        print(f"{args.repeats} interleaved repetitions; time = ComfyUI execution_start -> execution_success "
              "(encoder node(s) + two tiny save nodes; loader cached)")
        print(summary(rows, "native 2x CLIPTextEncodeSDXL"))
        print("ratio: median / median of native 2x CLIPTextEncodeSDXL (target <= 1.2 for the pack). 'native, "
              "positive only' is one CLIPTextEncodeSDXL: what native costs when the negative is unchanged and cached.")


if __name__ == "__main__":
    main()
