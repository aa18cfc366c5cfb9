"""`python -m llmga <command> ...`: the commands live in `llmga.cli`."""

import signal
import sys

from .cli import main

if __name__ == "__main__":
    code = main()
    # The command is over and its files are complete: a late Ctrl-C or SIGTERM must not print a traceback while the
    # interpreter shuts down (about a second with torch loaded).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)
