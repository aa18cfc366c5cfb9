"""`python -m llmga extract-prompt`: the generation prompt between the <gen_image> tags of a reply."""

from __future__ import annotations

import argparse
import json
import sys

from ..prompt import FALLBACK_OPTIONS, WHICH_OPTIONS, parse_reply


def add_extract_prompt_command(commands: argparse._SubParsersAction) -> None:
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
    extract.set_defaults(run=run_extract_prompt)


def run_extract_prompt(args: argparse.Namespace) -> int:
    reply = sys.stdin.read() if args.reply in (None, "-") else args.reply
    parsed = parse_reply(reply)
    prompt = parsed.prompt(which=args.which, no_tag_fallback=args.no_tag_fallback)
    if args.json:
        print(json.dumps({"prompt": prompt, "display_text": parsed.display_text,
                          "has_prompt": parsed.has_prompt, "prompts": list(parsed.prompts)}, ensure_ascii=False))
    else:
        print(prompt)
    return 0 if parsed.has_prompt else 1
