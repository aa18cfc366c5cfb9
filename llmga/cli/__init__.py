"""`python -m llmga <command> ...`: the command-line adapter of the library.

Every command lives in this package and nothing outside it imports from here. A command parses its arguments,
reads and checks its inputs before any model loads, calls the library, and writes its files atomically
(`llmga.files`); errors reach the user as one line (`llmga.errors.run_reporting`: `error: ...`, exit 2).
torch/transformers/diffusers load only when a command runs, so `--help` and `extract-prompt` stay instant.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__


def build_parser() -> argparse.ArgumentParser:
    from .chat import add_chat_command
    from .edit import add_edit_command
    from .eval import add_eval_commands
    from .export import add_export_command
    from .prompt import add_extract_prompt_command
    from .restore import add_restore_command
    from .sd import add_sd_commands

    parser = argparse.ArgumentParser(prog="python -m llmga", description="LLMGA generation assistant tools.")
    parser.add_argument("--version", action="version", version=f"llmga {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    add_extract_prompt_command(commands)
    add_chat_command(commands)
    add_sd_commands(commands)
    add_eval_commands(commands)
    add_edit_command(commands)
    add_restore_command(commands)
    add_export_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
