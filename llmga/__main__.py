"""Command line: `python -m llmga <command> ...`."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .prompt import FALLBACK_OPTIONS, WHICH_OPTIONS, parse_reply


def _extract_prompt(args: argparse.Namespace) -> int:
    reply = sys.stdin.read() if args.reply in (None, "-") else args.reply
    parsed = parse_reply(reply)
    prompt = parsed.prompt(which=args.which, no_tag_fallback=args.no_tag_fallback)
    if args.json:
        print(json.dumps({"prompt": prompt, "display_text": parsed.display_text,
                          "has_prompt": parsed.has_prompt, "prompts": list(parsed.prompts)}, ensure_ascii=False))
    else:
        print(prompt)
    return 0 if parsed.has_prompt else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llmga", description="LLMGA generation assistant tools.")
    parser.add_argument("--version", action="version", version=f"llmga {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    extract = commands.add_parser(
        "extract-prompt",
        help="print the generation prompt between <gen_image> tags of an assistant reply",
        description="Print the generation prompt of an LLMGA reply. Exit status 1 when the reply has no prompt.",
    )
    extract.add_argument("reply", nargs="?", help="the reply text; '-' or nothing reads standard input")
    extract.add_argument("--which", choices=WHICH_OPTIONS, default="first",
                         help="first prompt (official behaviour) or all prompts, one per line")
    extract.add_argument("--no-tag-fallback", choices=FALLBACK_OPTIONS, default="whole reply",
                         help="what to print when the reply has no tags")
    extract.add_argument("--json", action="store_true", help="print prompt, display text and flags as JSON")
    extract.set_defaults(run=_extract_prompt)

    from .edit.cli import add_edit_command
    from .eval.cli import add_eval_commands
    from .mllm.cli import add_chat_command
    from .restore.cli import add_restore_command
    from .sd.cli import add_sd_commands

    add_chat_command(commands)
    add_sd_commands(commands)
    add_eval_commands(commands)
    add_edit_command(commands)
    add_restore_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
