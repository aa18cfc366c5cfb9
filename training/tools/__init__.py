"""Data tools that prepare training sets with a model in the loop, run as `python -m training.tools.<name>`:

- `record_prompts`: run the LLMGA assistant once over an image folder and store its generation prompts as a JSONL
  of {"image", "caption", ...}, the stage-2 training data the paper makes without rerunning the MLLM (resumable).
- `refinement_pairs`: build short -> detailed prompt pairs in the released `T2I/train.json` format from any
  captioned set, with a pluggable captioner.
"""


def add_assistant_options(parser, clip_help: str) -> None:
    """The options that load the LLMGA assistant: --device, --dtype, --clip-vision-dir (repeatable)."""
    from pathlib import Path

    parser.add_argument("--device", choices=("auto", "cuda", "cpu", "mps"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    parser.add_argument("--clip-vision-dir", type=Path, action="append", default=[], help=clip_help)
