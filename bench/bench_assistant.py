"""Assistant generation speed against the base LLM's own `generate`, in the same run, on the same weights.

Measures time to first token and tokens/s of `Assistant.reply` (prompt template, image splicing, stop-string
watching, streaming callback) and of `language_model.generate` given the same prompt's token ids directly;
reports the ratio (target >= 0.9) and peak memory. Without --mllm it builds a tiny random-weight checkpoint. Both
decode greedily with the checkpoint's own repetition penalty (generate() takes it from generation_config.json).

    python bench/bench_assistant.py [--mllm PATH] [--device cpu|cuda] [--dtype fp32|bf16|official] [--tokens 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from llmga.mllm.chat import Assistant, GenerationSettings, tokenize_with_image  # noqa: E402
from llmga.mllm.loader import load_llmga  # noqa: E402


class FirstToken(BaseStreamer):
    """Records when generate() hands over its first new token."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2 and self.first is None:  # the first call carries the prompt
            self.first = time.perf_counter()

    def end(self):
        pass


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_assistant(assistant: Assistant, tokens: int) -> tuple[float, float, int]:
    first: list[float] = []
    start = time.perf_counter()
    reply = assistant.ask(assistant.new_history(), "text_to_image", "a red fox in deep snow",
                          settings=GenerationSettings(max_new_tokens=tokens, temperature=0.0, seed=0),
                          on_text=lambda _: first or first.append(time.perf_counter()))
    total = time.perf_counter() - start
    return (first[0] - start) if first else total, total, reply.new_tokens


def run_base(assistant: Assistant, tokens: int) -> tuple[float, float, int]:
    turn = assistant.turn(assistant.new_history(), "text_to_image", "a red fox in deep snow", phrasing_seed=0)
    ids = tokenize_with_image(assistant.template.render([(turn.message, None)]), assistant.tokenizer)
    model = assistant.loaded.model.language_model
    streamer = FirstToken()
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(torch.tensor([ids], device=assistant.loaded.model.input_device()),
                                max_new_tokens=tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                                eos_token_id=assistant.tokenizer.eos_token_id, streamer=streamer,
                                pad_token_id=assistant.tokenizer.eos_token_id)
    total = time.perf_counter() - start
    return (streamer.first or time.perf_counter()) - start, total, output.shape[1] - len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mllm", type=Path, help="an LLMGA checkpoint folder (default: a tiny random one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", help="auto, official, bf16, fp16 or fp32 (llmga.devices)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps timings steady on shared CPUs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.mllm
        if path is None:
            from fixtures.mllm import build_clip_vision_tower, build_llmga_checkpoint

            path = build_llmga_checkpoint(Path(tmp), "qwen2", build_clip_vision_tower(Path(tmp) / "clip")).path
        assistant = Assistant(load_llmga(path, dtype=args.dtype, device=args.device))
        device = assistant.loaded.model.input_device()
        run_assistant(assistant, 8), run_base(assistant, 8)  # warm-up
        rows = {"assistant": [], "base generate": []}
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            rows["assistant"].append(run_assistant(assistant, args.tokens))
            rows["base generate"].append(run_base(assistant, args.tokens))
    print(f"model: {path.name if args.mllm else 'tiny random qwen2 (fixture)'}  device: {device}  dtype: {args.dtype}")
    rates = {}
    for name, runs in rows.items():
        ttft = statistics.median(r[0] for r in runs) * 1000
        rate = statistics.median(r[2] / r[1] for r in runs)
        rates[name] = rate
        print(f"{name:>14}: time to first token {ttft:8.1f} ms   {rate:8.1f} tokens/s   "
              f"(new tokens {statistics.median(r[2] for r in runs):.0f})")
    print(f"tokens/s ratio assistant / base generate: {rates['assistant'] / rates['base generate']:.3f}")
    print(f"peak memory: {peak_memory_mb(device):.0f} MB ({'CUDA allocated' if device.type == 'cuda' else 'RSS'})")


if __name__ == "__main__":
    main()
