"""How a failure reaches the user: one line that says what was wrong and what to do, never a stack trace.

Every error the library raises for bad input, a missing or damaged model, or a request it cannot serve is a
`ValueError` or an `OSError` (ChatError, CheckpointError, SDPipelineError, ImageInputError, ModelNotFoundError,
DiffRIRLoadError, EvalInputError, ...), so adapters catch `USER_ERRORS`. The command lines report through
`run_reporting` (`error: ...`, exit 2); the nodes prefix the node's name (`LLMGA <node>: ...`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
# Exit statuses of the command lines: 2 a request that cannot be served, 130 interrupted (128 + SIGINT).
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(error: BaseException | str) -> str:
    """The message of `error` on one line: terminal colour codes removed, lines joined, never empty."""
    text = _ANSI.sub("", str(error))
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text or type(error).__name__


def run_reporting(body: Callable[[], int], out_of_memory_hint: str,
                  errors: tuple[type[BaseException], ...] = USER_ERRORS) -> int:
    """Run a command's body and return its exit status: an error of `errors` prints `error: <one line>` on stderr
    and returns 2; CUDA out-of-memory prints one line ending in `out_of_memory_hint` and returns 2; Ctrl-C
    returns 130."""
    import torch

    try:
        return body()
    except torch.cuda.OutOfMemoryError as error:
        print(f"error: out of GPU memory ({one_line(str(error).splitlines()[0])}): {out_of_memory_hint}",
              file=sys.stderr)
        return EXIT_ERROR
    except errors as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
