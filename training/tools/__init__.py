"""Data tools that prepare training sets with a model in the loop, run as `python -m training.tools.<name>`:

- `record_prompts`: run the LLMGA assistant once over an image folder and store its generation prompts as a JSONL
  of {"image", "caption", ...}, the stage-2 training data the paper makes without rerunning the MLLM (resumable).
- `refinement_pairs`: build short -> detailed prompt pairs in the released `T2I/train.json` format from any
  captioned set, with a pluggable captioner.

They are an application beside `python -m llmga`: they call the library (the assistant's chat turn, batched replies,
images, atomic files) and report errors as its command lines do, without importing `llmga.cli`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path


def add_assistant_options(parser: argparse.ArgumentParser, clip_help: str) -> None:
    """The options that load the LLMGA assistant: --device, --dtype, --clip-vision-dir (repeatable)."""
    from llmga.devices import ASSISTANT_DTYPES, DEVICES

    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--dtype", choices=ASSISTANT_DTYPES, default="auto",
                        help="official: the LLM in fp16 and the CLIP tower's own fp32 weights, as the official code "
                        "(auto takes it on GPUs when the tower is in a --clip-vision-dir)")
    parser.add_argument("--clip-vision-dir", type=Path, action="append", default=[], help=clip_help)


def load_assistant(folder: str | Path, args: argparse.Namespace):
    """The `llmga.mllm.chat.Assistant` of the LLMGA checkpoint `folder`, loaded with `add_assistant_options`' values."""
    from llmga.mllm.chat import Assistant
    from llmga.mllm.loader import load_llmga

    return Assistant(load_llmga(folder, dtype=args.dtype, device=args.device, clip_vision_dirs=args.clip_vision_dir))


def run_tool(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
             argv: Sequence[str] | None) -> int:
    """Parse `argv` and run the tool; its exit status, or 2 with one line `error: ...` for a request that cannot be
    served (`llmga.errors.run_reporting`, as `python -m llmga`), 130 on Ctrl-C."""
    from llmga.errors import run_reporting

    args = parser.parse_args(argv)
    return run_reporting(lambda: run(args), "lower --batch-size")
