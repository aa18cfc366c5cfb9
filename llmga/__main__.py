"""`python -m llmga <command> ...`: the commands live in `llmga.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
