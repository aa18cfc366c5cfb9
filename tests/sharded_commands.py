"""Run several commands one after the other in each process that `accelerate launch` started, so a test pays the
launch (torchrun, imports) once: `sharded_commands.py COMMANDS.json`, a list of [entry, argv] with entry "llmga"
(`python -m llmga`) or "record_prompts" (`python -m training.tools.record_prompts`). Exits with the highest status."""

from __future__ import annotations

import json
import sys

from llmga.cli import main
from training.tools import record_prompts

ENTRIES = {"llmga": main, "record_prompts": record_prompts.main}

if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as file:
        commands = json.load(file)
    sys.exit(max(ENTRIES[entry](argv) for entry, argv in commands))
