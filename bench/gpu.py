"""The pack on one GPU at real size, against a baseline in the same run, in one markdown table (issue 17).

    python bench/gpu.py [--only assistant t2i edit diffrir] [--out TABLE.md] [--attention sdpa] [--workdir DIR]
    python bench/gpu.py --cpu --tiny      # the same code on the CPU with tiny models (CI: it runs)

Rows (random weights everywhere: speed does not depend on them):
- assistant: a 7B LLMGA assistant (Vicuna-7B and Qwen2-7B configurations, CLIP ViT-L/14-336, mlp2x_gelu), built in
  memory (bench/real_size.py), decoding a text-to-image reply greedily at batch 1 in bf16 and fp16: the pack's
  `Assistant.ask` (template, streaming, stop watching) against transformers' `generate` on the same language model
  given the same prompt's ids; tokens/s. Targets: >= 0.95x generate and >= 120 tokens/s (7B, H100-class GPU).
- T2I graph: SD1.5 text to image at 512², 25 steps (euler, CFG 7.5, a 300-token prompt) in a real ComfyUI server, the
  pack's graph (LLMGA Load SD1.5 + LLMGA Long Prompt Encode) against the native one (CheckpointLoaderSimple + 2 x
  CLIPTextEncode) on the same weights (bench_t2i_graph.py's graphs); ComfyUI's own execution time. Target <= 1.02x.
- SD1.5 edit: Direct Inversion + Prompt-to-Prompt at 512², 50 steps (the pack's default) on SD1.5's UNet, against
  plain DDIM text to image with CFG for the same steps (bench_edit.py's runners). Target <= 2.2x (bench_edit.py's).
- DiffRIR: `restore_image` as the LLMGA DiffRIR Restore node calls it (CPU images in, the released x1 network on the
  GPU) at 1024² and 2048², against the bare network forward on an input already on the GPU. Target: 1024² <= 0.15 s.
Peak memory per row: CUDA max_memory_allocated of the bench process, and of the ComfyUI server process for the graph
(read over HTTP from bench/comfy_peak_memory); with --cpu, the rise of the peak RSS instead.

Without CUDA (and without --cpu) it says so in one line and exits 0. --tiny swaps every model for the tests' tiny
one and every size for a small one, so the whole table takes about a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts"), str(ROOT / "bench")]

import torch  # noqa: E402
from peak_memory import SERVER_ROUTE, PeakMemory  # noqa: E402

from llmga.devices import ASSISTANT_ATTENTIONS, auto_dtype, free_memory  # noqa: E402
from llmga.errors import one_line  # noqa: E402
from llmga.files import write_text_atomic  # noqa: E402

CASES = ("assistant", "t2i", "edit", "diffrir")
SKIP_MESSAGE = ("bench/gpu.py: skipped, torch sees no CUDA GPU (run `python bench/gpu.py --cpu --tiny` to check that "
                "it runs on the CPU)")


@dataclass(frozen=True)
class Sizes:
    """What the benchmark runs at: real (the issue's sizes) or tiny (the same code in about a minute on a CPU)."""

    tokens: int  # new tokens per assistant reply
    repeats: int  # timed runs per variant (after one warm-up)
    image: int  # T2I graph and edit side, px
    t2i_steps: int
    edit_steps: int
    diffrir: tuple[int, ...]  # DiffRIR sides, px


REAL = Sizes(tokens=128, repeats=3, image=512, t2i_steps=25, edit_steps=50, diffrir=(1024, 2048))
TINY = Sizes(tokens=8, repeats=1, image=64, t2i_steps=2, edit_steps=2, diffrir=(64, 128))


@dataclass(frozen=True)
class Row:
    """One line of the table. ours, baseline: in `unit`; ratio: ours / baseline. met: None when no target applies."""

    case: str
    ours: float
    baseline: float
    unit: str
    target: str
    met: bool | None
    peak: str

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline


HEADER = ("case", "ours", "baseline", "ratio", "target", "met", "peak memory (ours / baseline)")


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        met = "—" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(f"| {row.case} | {row.ours:.4g} {row.unit} | {row.baseline:.4g} {row.unit} | {row.ratio:.3f} | "
                     f"{row.target} | {met} | {row.peak} |")
    return "\n".join(lines)


def memory_text(ours: int, baseline: int) -> str:
    def one(size: int) -> str:
        if size >= 2**30:
            return f"{size / 2**30:.2f} GiB"
        return f"{size / 2**20:.{0 if size >= 10 * 2**20 else 1}f} MiB"

    return f"{one(ours)} / {one(baseline)}"


@dataclass
class Measured:
    """Seconds and results of the timed runs of one variant, and its largest peak memory (bytes)."""

    seconds: list[float]
    results: list[Any]
    peak: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def alternate(runs: dict[str, Callable[[], Any]], memory: PeakMemory, repeats: int) -> dict[str, Measured]:
    """One warm-up call of each run, then `repeats` timed calls of each, alternating (drift hits all alike); each
    timed call between `memory.reset()` and `memory.peak_bytes()`, under torch.no_grad."""
    measured = {name: Measured([], []) for name in runs}
    with torch.no_grad():
        for run in runs.values():
            run()
        for i in range(repeats):
            names = list(runs)
            for name in names[i % len(names):] + names[:i % len(names)]:
                memory.reset()
                start = time.perf_counter()
                result = runs[name]()
                if memory.device.type == "cuda":
                    torch.cuda.synchronize(memory.device)
                measured[name].seconds.append(time.perf_counter() - start)
                measured[name].results.append(result)
                measured[name].peak = max(measured[name].peak, memory.peak_bytes())
    return measured


@dataclass(frozen=True)
class Setting:
    """The run's device, sizes and options, as every case takes them."""

    device: torch.device
    tiny: bool
    sizes: Sizes
    attention: str
    workdir: Path
    notes: list[str]

    @property
    def absolute_targets(self) -> bool:
        """The issue's absolute targets (tokens/s, seconds) are for real sizes on a GPU."""
        return self.device.type == "cuda" and not self.tiny


# --- the cases ----------------------------------------------------------------------------------------------------


def assistant_rows(setting: Setting) -> list[Row]:
    from bench_assistant import run_assistant, run_base
    from real_size import SEVEN_B_NAMES, build_assistant, fixture_checkpoint

    rows = []
    sizes = setting.sizes
    memory = PeakMemory(setting.device)
    implementations = set()
    for family, name in SEVEN_B_NAMES.items():
        label = f"{name.split('-')[0]} (tiny)" if setting.tiny else name
        folder = fixture_checkpoint(setting.workdir / "mllm", family)
        assistant = None
        for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            if assistant is None:
                assistant = build_assistant(folder, family, tiny=setting.tiny, device=setting.device, dtype=dtype,
                                            attention=setting.attention)
            else:
                assistant.loaded.model.to(dtype)
            implementations.add(assistant.loaded.model.language_model.config._attn_implementation)
            measured = alternate({"ours": lambda a=assistant: run_assistant(a, sizes.tokens),
                                  "generate": lambda a=assistant: run_base(a, sizes.tokens)}, memory, sizes.repeats)
            rates = {key: statistics.median(result[2] / seconds for result, seconds in zip(m.results, m.seconds,
                                                                                        strict=True))
                     for key, m in measured.items()}
            ratio = rates["ours"] / rates["generate"]
            met = ratio >= 0.95 and (rates["ours"] >= 120 or not setting.absolute_targets)
            target = "≥ 0.95×, ≥ 120 tok/s" if setting.absolute_targets else "≥ 0.95×"
            rows.append(Row(f"assistant {label} {dtype_name}, batch 1", rates["ours"], rates["generate"], "tok/s",
                            target, met, memory_text(measured["ours"].peak, measured["generate"].peak)))
            tokens = {key: sorted({result[2] for result in m.results}) for key, m in measured.items()}
            if tokens["ours"] != [sizes.tokens] or tokens["generate"] != [sizes.tokens]:
                setting.notes.append(f"assistant {label} {dtype_name}: new tokens per run {tokens} (asked "
                                     f"{sizes.tokens}); tokens/s counts the tokens each run made")
            print(f"  {rows[-1].case}: {rates['ours']:.1f} vs {rates['generate']:.1f} tok/s", file=sys.stderr)
        del assistant
        free_memory()
    ran = ", ".join(sorted(implementations))
    setting.notes.append(f"assistant: {sizes.tokens} new tokens per reply, greedy, the checkpoint's repetition "
                         "penalty; baseline = `language_model.generate` on the same prompt's ids; attention "
                         f"{setting.attention} (ran: {ran}); the ids that end a reply are never picked (zeroed output "
                         "rows), and ours also masks the logits past the tests' small tokenizer (a cost real "
                         "checkpoints, whose embeddings the loader cuts to the tokenizer, do not pay)")
    return rows


def sd15_models(setting: Setting) -> tuple[Path, str, str]:
    """The ComfyUI base folder and the SD1.5 model's diffusers folder name and single file name in it."""
    from comfyui_host import resolve_comfyui
    from real_size import write_sd15

    base = setting.workdir / "comfy"
    tokenizer_dir = resolve_comfyui() / "comfy" / "sd1_tokenizer"
    folder, single_file = write_sd15(base / "models", tokenizer_dir, tiny=setting.tiny, device=setting.device)
    return base, folder, single_file


@contextlib.contextmanager
def bench_server(base: Path, device: torch.device) -> Iterator[Any]:
    """A ComfyUI server (tests/comfy_server.py) on `base` with bench/comfy_peak_memory beside the pack; on CUDA with
    ComfyUI's default flags (its own device and text-encoder precision)."""
    from comfy_server import ComfyServer
    from comfyui_host import resolve_comfyui

    server = ComfyServer(resolve_comfyui(), base, cpu=device.type != "cuda")
    link = server.base_dir / "custom_nodes" / "llmga_bench_peak_memory"
    if not link.exists():
        link.symlink_to(Path(__file__).resolve().parent / "comfy_peak_memory", target_is_directory=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def t2i_rows(setting: Setting) -> list[Row]:
    from bench_long_prompt_encode import clip_tokenizer, interleaved, prompt_variants
    from bench_t2i_graph import t2i_variants

    sizes = setting.sizes
    base, folder, single_file = sd15_models(setting)
    with bench_server(base, setting.device) as server:
        pairs = prompt_variants(clip_tokenizer(server.comfy_path), 2 * (sizes.repeats + 1))
        graphs = t2i_variants(pairs, sizes.image, sizes.t2i_steps, folder, single_file)
        variants = {"pack": graphs["pack graph"], "native": graphs["native graph"]}
        peaks = {name: 0 for name in variants}

        def with_peak(name: str, run: Callable[[], tuple[float, float]]) -> tuple[float, float]:
            server.post_json(SERVER_ROUTE, {})
            result = run()
            peaks[name] = max(peaks[name], server.get_json(SERVER_ROUTE)["peak_bytes"])
            return result

        runs = interleaved(variants, server, sizes.repeats, "loads both models", wrap=with_peak)
        system = server.get_json("/system_stats")["system"]
    medians = {name: statistics.median(run[0] for run in timings) for name, timings in runs.items()}
    ratio = medians["pack"] / medians["native"]
    setting.notes.append(f"T2I graph: ComfyUI {system.get('comfyui_version', '?')} server, execution_start -> "
                         "execution_success, loaders cached; 300-token prompt, euler/normal, CFG 7.5; flags "
                         + ("ComfyUI's defaults" if setting.device.type == "cuda" else "--cpu --fp32-text-enc")
                         + "; peak memory read inside the server")
    return [Row(f"T2I graph {sizes.image}², {sizes.t2i_steps} steps, pack vs native", medians["pack"],
                medians["native"], "s", "≤ 1.02×", ratio <= 1.02, memory_text(peaks["pack"], peaks["native"]))]


def edit_rows(setting: Setting) -> list[Row]:
    from bench_edit import prompt_group, runner, sd15_unet

    sizes = setting.sizes
    base, folder, _ = sd15_models(setting)
    dtype = auto_dtype("sd", setting.device)
    unet = sd15_unet(base / "models" / "diffusers" / folder / "unet", setting.device, dtype)
    group, tokenize, contexts = prompt_group(torch.float32, setting.device)
    latent = torch.randn(1, 4, sizes.image // 8, sizes.image // 8,
                         generator=torch.Generator().manual_seed(1)).to(setting.device)
    runs = {name: runner(name, unet, group, tokenize, contexts, latent, sizes.edit_steps)
            for name in ("di_p2p", "t2i")}
    measured = alternate(runs, PeakMemory(setting.device), sizes.repeats)
    ours, plain = measured["di_p2p"], measured["t2i"]
    ratio = ours.median / plain.median
    setting.notes.append(f"SD1.5 edit: UNet only ({dtype}), prompts of two 75-token chunks; Direct Inversion (batch 1) "
                         "+ the P2P edit (refine + LocalBlend); baseline: DDIM with CFG, same steps")
    return [Row(f"SD1.5 edit {sizes.image}², {sizes.edit_steps} steps, DI + P2P vs T2I", ours.median, plain.median,
                "s", "≤ 2.2×", ratio <= 2.2, memory_text(ours.peak, plain.peak))]


def diffrir_rows(setting: Setting) -> list[Row]:
    from bench_restore import inputs
    from fixtures.diffrir import TINY_DIFFRIR

    from llmga.restore.inference import restore_image
    from llmga.restore.network import DiffRIR, initial_noise

    device = setting.device
    torch.manual_seed(0)
    with torch.device(device):
        model = DiffRIR(1, **(TINY_DIFFRIR if setting.tiny else {})).to(auto_dtype("diffrir", device)).eval()
    rows = []
    for size in setting.sizes.diffrir:
        generated, reference, mask = inputs(size)  # [1,S,S,3] on the CPU, as ComfyUI hands IMAGE and MASK over
        x = torch.rand(1, model.in_channels, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        noise = initial_noise(1, 0).to(device)
        measured = alternate({"ours": lambda g=generated, r=reference, m=mask: restore_image(model, g, r, m, seed=0),
                              "network": lambda x=x, z=noise: model(x, z)}, PeakMemory(device), setting.sizes.repeats)
        ours, bare = measured["ours"], measured["network"]
        gated = size == 1024 and setting.absolute_targets
        rows.append(Row(f"DiffRIR {size}²{' (tiny)' if setting.tiny else ''}, restore_image vs network",
                        ours.median, bare.median, "s", "≤ 0.15 s" if gated else "—",
                        ours.median <= 0.15 if gated else None, memory_text(ours.peak, bare.peak)))
    setting.notes.append("DiffRIR: x1 network (released size unless tiny), fp32; ours: `restore_image` with automatic "
                         "tiling from CPU images (prior, network, compositing); baseline: `model(x, noise)` on the "
                         "device")
    return rows


CASE_ROWS = {"assistant": assistant_rows, "t2i": t2i_rows, "edit": edit_rows, "diffrir": diffrir_rows}


# --- the command --------------------------------------------------------------------------------------------------


def machine_text(device: torch.device) -> str:
    import diffusers
    import transformers

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or '?'}, " \
        f"{torch.get_num_threads()} threads)"
    return (f"{where}; torch {torch.__version__}, transformers {transformers.__version__}, diffusers "
            f"{diffusers.__version__}, Python {platform.python_version()}")


def report(rows: list[Row], setting: Setting, seconds: float) -> str:
    memory = PeakMemory(setting.device).kind
    lines = [f"bench/gpu.py{' --tiny' if setting.tiny else ''} on {machine_text(setting.device)}", "",
             markdown_table(rows), "",
             f"Peak memory: {memory} (for the T2I graph, of the ComfyUI server). Whole run: {seconds:.0f} s."]
    lines += [f"- {note}" for note in setting.notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny: what CI runs)")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny models and small sizes")
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES), help="run only these cases")
    parser.add_argument("--out", type=Path, help="also write the report (table and notes) to this file")
    parser.add_argument("--attention", choices=ASSISTANT_ATTENTIONS, default="sdpa",
                        help="the assistant's attention implementation (as load_llmga takes it)")
    parser.add_argument("--repeats", type=int, help="timed runs per variant (default: 3, tiny 1)")
    parser.add_argument("--workdir", type=Path, help="keep the models written for the run here (default: a temp dir)")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print(SKIP_MESSAGE)
        return 0
    device = torch.device("cpu" if args.cpu else "cuda")
    sizes = TINY if args.tiny else REAL
    if args.repeats:
        sizes = Sizes(**{**sizes.__dict__, "repeats": args.repeats})
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmga-bench-gpu-")))
        setting = Setting(device, args.tiny, sizes, args.attention, workdir, [])
        rows: list[Row] = []
        failed = []
        with contextlib.redirect_stdout(sys.stderr):  # progress to stderr; stdout holds the report only
            for case in (case for case in CASES if case in args.only):
                began = time.perf_counter()
                print(f"bench/gpu.py: {case} ...", flush=True)
                try:
                    rows += CASE_ROWS[case](setting)
                except Exception as error:  # the other cases still run and the table still prints
                    traceback.print_exc()
                    failed.append(case)
                    setting.notes.append(f"{case} FAILED: {one_line(error)[:300]} (traceback on stderr)")
                free_memory()  # the case's models are gone with its frame
                print(f"bench/gpu.py: {case} took {time.perf_counter() - began:.0f} s", flush=True)
    text = report(rows, setting, time.perf_counter() - start)
    print(text, end="")
    if args.out:
        write_text_atomic(args.out, text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
