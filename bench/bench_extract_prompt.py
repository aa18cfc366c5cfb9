"""How much slower is the full reply parser than the official `str.find` parser, as replies grow?

The official CLI takes the first `<gen_image>` pair with two `str.find` calls; `parse_reply` also builds the
display text and every prompt. Both run in the same process on the same replies; the ratio is what matters.

    python bench/bench_extract_prompt.py
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmga.prompt import GEN_END, GEN_START, parse_reply  # noqa: E402


def official_first_prompt(text: str) -> str:
    start, end = text.find(GEN_START), text.find(GEN_END)
    return text[start + len(GEN_START) + 1:end] if start != -1 and end != -1 else text


def reply_of_length(words: int) -> str:
    body = " ".join(f"detail{i}," for i in range(words))
    return f"Sure, here is a detailed prompt for you. {GEN_START} {body} {GEN_END} Enjoy!"


def best_time(parse, reply: str, runs: int) -> float:
    """Seconds per call, best of five rounds of `runs` calls."""
    return min(timeit.repeat(lambda: parse(reply), number=runs, repeat=5)) / runs


def main() -> None:
    print(f"{'words':>8} {'official µs':>12} {'parse_reply µs':>15} {'ratio':>7}")
    for words in (50, 500, 5_000, 50_000):
        reply = reply_of_length(words)
        runs = max(3, 20_000 // words)
        official = best_time(official_first_prompt, reply, runs)
        ours = best_time(parse_reply, reply, runs)
        print(f"{words:>8} {official * 1e6:>12.1f} {ours * 1e6:>15.1f} {ours / official:>7.1f}")


if __name__ == "__main__":
    main()
