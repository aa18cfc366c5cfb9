"""LLMGA Long Prompt Encode against ComfyUI's own CLIPTextEncode, in one real ComfyUI server run, on the same CLIP.

Times the pack's `LLMGALongPromptEncode` (modes llmga and lpw) and the native pair of `CLIPTextEncode` nodes (positive
and negative) on a 300-token prompt (counted with the SD1.5 tokenizer that ships with ComfyUI) and a short negative
prompt. Every timed graph shares one cached `CheckpointLoaderSimple` (the tiny SD1.5 fixture: full-size CLIP-L, tiny
UNet) and re-executes its encoder node(s): each repetition swaps one single-token word in both prompts, so ComfyUI's
cache skips nothing but the loader (checked on every run against the history's `execution_cached` list). The time is
ComfyUI's own, `execution_start` to `execution_success` in the prompt's history (ms timestamps); variants are
interleaved, so drift on a shared machine hits all alike. Reports medians and the ratio pack / native (target <= 1.2).

    python bench/bench_long_prompt_encode.py [--repeats 9] [--max-chunks 4] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts")]

from comfy_server import ComfyError, ComfyServer  # noqa: E402
from comfyui_host import resolve_comfyui  # noqa: E402

PROMPT_TOKENS = 300
# Words that are one CLIP token each, so the prompt is exactly PROMPT_TOKENS long and ComfyUI's word-aware chunking
# fills every 75-token window (no word is pushed to a fifth window).
WORDS = ("a red fox curled up in deep fresh snow soft golden hour light frost on its fur shallow depth of field "
         "photograph highly detailed pine trees behind misty morning").split()
# The word swapped in per run (first word of both prompts), so each run encodes new text.
SWAPS = ("one two three four five six seven eight nine ten eleven twelve black white green blue yellow purple "
         "orange brown pink silver grey dark bright small large old young happy quiet wild calm cold warm tall "
         "long short round").split()
NEGATIVE = "blurry, low quality"


# --- shared with bench_t2i_graph.py ---------------------------------------------------------------------------


def machine_line() -> str:
    """CPU model and core count from /proc/cpuinfo (this is a CPU benchmark)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {os.cpu_count()} cores ({usable} usable), {platform.system()} {platform.machine()}"


def versions_line(server: ComfyServer, threads: int) -> str:
    system = server.get_json("/system_stats")["system"]
    python = system.get("python_version", platform.python_version()).split()[0]
    return (f"ComfyUI {system.get('comfyui_version', '?')}, torch {system.get('pytorch_version', '?')}, "
            f"Python {python}, server flags --cpu --fp32-text-enc (ComfyServer's), "
            f"{threads or 'default'} torch thread(s)")


def clip_tokenizer(comfy_path: Path):
    """The SD1.5 CLIP tokenizer that ships with ComfyUI (comfy/sd1_tokenizer), as transformers loads it."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(comfy_path / "comfy" / "sd1_tokenizer")


def prompt_variants(tokenizer, count: int, tokens: int = PROMPT_TOKENS) -> list[tuple[str, str]]:
    """`count` distinct (positive, negative) pairs; the positive has exactly `tokens` CLIP tokens (no BOS/EOS), the
    negative the same length every time; pairs differ in their first two words."""
    def length(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    single = [word for word in dict.fromkeys(WORDS) if length(word) == 1]
    swaps = [word for word in SWAPS if length(word) == 1]
    if count > len(swaps) ** 2:
        raise SystemExit(f"at most {len(swaps) ** 2} distinct prompts")
    body = [single[i % len(single)] for i in range(tokens - 2)]
    pairs = []
    for first, second in itertools.islice(itertools.product(swaps, repeat=2), count):
        positive, negative = " ".join([first, second, *body]), f"{first} {second} {NEGATIVE}"
        if length(positive) != tokens or length(negative) != length(f"{swaps[0]} {swaps[0]} {NEGATIVE}"):
            raise AssertionError(f"prompt variant {first} {second} has {length(positive)} tokens, expected {tokens}")
        pairs.append((positive, negative))
    return pairs


def start_server(workdir: Path | None, threads: int, stack) -> tuple[ComfyServer, Path]:
    """A ComfyUI server (ComfyServer's default flags) with the tiny SD1.5 fixtures in its models folder; `threads`
    torch CPU threads (OMP_NUM_THREADS; 0 = torch's default, one per core)."""
    from fixtures.sd15 import build_sd15_fixtures

    comfy_path = resolve_comfyui()
    base = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmga-bench-")))
    if not (base / "models" / "diffusers" / "tiny-sd15" / "model_index.json").is_file():
        print(f"writing the tiny SD1.5 fixtures to {base / 'models'} ...", flush=True)
        build_sd15_fixtures(base / "models", tokenizer_dir=comfy_path / "comfy" / "sd1_tokenizer")
    if threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)  # read by the server at start
    server = ComfyServer(comfy_path, base)
    server.start()
    stack.callback(server.stop)
    return server, comfy_path


def timed_run(server: ComfyServer, graph: dict, must_run: set[str], must_cache: set[str]) -> tuple[float, float]:
    """Run `graph`; returns (ComfyUI's execution time, client wall time incl. polling) in seconds. Checks that the
    nodes in `must_cache` came from ComfyUI's cache and those in `must_run` did not."""
    start = time.perf_counter()
    entry = server.wait(server.queue(graph))
    wall = time.perf_counter() - start
    messages = {kind: data for kind, data in entry["status"]["messages"]}
    cached = set(messages["execution_cached"]["nodes"])
    if not must_cache <= cached or must_run & cached:
        raise ComfyError(f"cache not as planned: cached {sorted(cached)}, expected {sorted(must_cache)} cached and "
                         f"{sorted(must_run)} executed")
    return (messages["execution_success"]["timestamp"] - messages["execution_start"]["timestamp"]) / 1000, wall


def interleaved(variants: dict[str, Callable[[int], tuple[dict, set[str], set[str]]]], server: ComfyServer,
                repeats: int, warm_up: str,
                wrap: Callable[[str, Callable[[], tuple[float, float]]], tuple[float, float]] | None = None,
                ) -> dict[str, list[tuple[float, float]]]:
    """Run every variant once untimed (`warm_up` says what that loads), then once per repetition in a rotating order;
    each run gets its own prompt number, so no encoder output can come from the cache. wrap(name, run): runs `run`
    (one timed run of the variant `name`) and returns its result, e.g. to read the server's peak memory around it."""
    names = list(variants)
    print(f"warm-up ({warm_up}) ...", flush=True)
    for number, name in enumerate(names):
        server.run(variants[name](number)[0])
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    number = len(names)
    for i in range(repeats):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            def run(name: str = name, number: int = number) -> tuple[float, float]:
                return timed_run(server, *variants[name](number))

            rows[name].append(run() if wrap is None else wrap(name, run))
            number += 1
        print(f"  repetition {i + 1}/{repeats}: " + "  ".join(f"{n} {rows[n][-1][0]:.3f}s" for n in names), flush=True)
    return rows


def summary(rows: dict[str, list[tuple[float, float]]], baseline: str, unit: float = 1000, label: str = "ms",
            digits: int = 1) -> str:
    """Median, min and max per variant, and the ratios of medians (and of minima) to `baseline`."""
    base = [r[0] for r in rows[baseline]]
    width = max(map(len, rows))
    lines = [f"{'':>{width}}  {'median':>9}  {'min':>9}  {'max':>9}  {'ratio':>6}  {'(of minima)':>11}   {label}"]
    for name, runs in rows.items():
        times = [r[0] for r in runs]
        med, low, high = (value * unit for value in (statistics.median(times), min(times), max(times)))
        lines.append(f"{name:>{width}}  {med:9.{digits}f}  {low:9.{digits}f}  {high:9.{digits}f}  "
                     f"{statistics.median(times) / statistics.median(base):6.3f}  {min(times) / min(base):11.3f}")
    return "\n".join(lines)


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a .safetensors header (8-byte little-endian length, then JSON)."""
    with open(path, "rb") as file:
        (size,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(size))
    return {name: info["shape"] for name, info in header.items() if name != "__metadata__"}


# --- this benchmark -------------------------------------------------------------------------------------------


def save(conditioning: list, name: str) -> dict:
    return {"class_type": "LLMGATestSaveConditioning", "inputs": {"conditioning": conditioning, "name": name}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--max-chunks", type=int, default=4,
                        help="the node's max_chunks for both modes (4 = all 300 tokens; 0 = the modes' defaults, "
                        "which cut lpw to 225 tokens)")
    parser.add_argument("--threads", type=int, default=1,
                        help="server torch threads (1 keeps timings steady on shared CPUs; 0 = torch default)")
    parser.add_argument("--workdir", type=Path, help="keep the server folder and fixtures here (default: a temp dir)")
    args = parser.parse_args()

    from contextlib import ExitStack

    with ExitStack() as stack:
        server, comfy_path = start_server(args.workdir, args.threads, stack)
        pairs = prompt_variants(clip_tokenizer(comfy_path), 4 * (args.repeats + 1))
        ckpt = "tiny-sd15.safetensors"
        loader = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}

        def pack(mode: str):
            def graph(i: int):
                positive, negative = pairs[i]
                return {
                    "1": loader,
                    "2": {"class_type": "LLMGALongPromptEncode", "inputs": {
                        "clip": ["1", 1], "prompt": positive, "negative_prompt": negative, "mode": mode,
                        "max_chunks": args.max_chunks}},
                    "3": save(["2", 0], f"bench-{mode}-pos"),
                    "4": save(["2", 1], f"bench-{mode}-neg"),
                }, {"2"}, {"1"}
            return graph

        def native(i: int):
            positive, negative = pairs[i]
            return {
                "1": loader,
                "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": positive}},
                "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": negative}},
                "7": save(["5", 0], "bench-native-pos"),
                "8": save(["6", 0], "bench-native-neg"),
            }, {"5", "6"}, {"1"}

        def native_positive(i: int):  # what native costs when only the positive changed: its negative stays cached
            graph, _, cached = native(i)
            del graph["6"], graph["8"]
            return graph, {"5"}, cached

        variants = {"pack llmga": pack("llmga"), "pack lpw": pack("lpw"), "native 2x CLIPTextEncode": native,
                    "native, positive only": native_positive}
        rows = interleaved(variants, server, args.repeats, "loads the checkpoint, first CLIP call")

        print()
        print(f"machine: {machine_line()}")
        print(f"software: {versions_line(server, args.threads)}")
        print(f"model: tiny SD1.5 fixture ({ckpt}; full-size CLIP-L text encoder, fp32)")
        shapes = {tag: safetensors_shapes(server.output_dir / f"bench-{tag}.safetensors")["cond"]
                  for tag in ("llmga-pos", "llmga-neg", "lpw-pos", "lpw-neg", "native-pos", "native-neg")}
        print(f"prompt: {PROMPT_TOKENS} CLIP tokens (+ BOS/EOS); negative: {NEGATIVE!r} plus two words; "
              f"max_chunks {args.max_chunks}")
        print("conditioning lengths (positive / negative): " + ", ".join(
            f"{name} {shapes[name + '-pos'][1]} / {shapes[name + '-neg'][1]}" for name in ("llmga", "lpw", "native")))
        print(f"{args.repeats} interleaved repetitions; time = ComfyUI execution_start -> execution_success "
              "(encoder node(s) + two tiny save nodes; loader cached)")
        print(summary(rows, "native 2x CLIPTextEncode"))
        print("ratio: median / median of native 2x CLIPTextEncode (target <= 1.2 for the pack). 'native, positive "
              "only' is one CLIPTextEncode: what native costs when the negative is unchanged and stays cached.")


if __name__ == "__main__":
    main()
