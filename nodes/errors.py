"""How a library error reaches the ComfyUI user: one line, prefixed with the node's name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..llmga.errors import USER_ERRORS, one_line


@contextmanager
def reported_as(node: str) -> Iterator[None]:
    """Turn a library error (`USER_ERRORS`) or a torch device error (a RuntimeError: CUDA, MPS, a tensor on the wrong
    device) raised inside into `RuntimeError("<node>: <one line>")`, the form every pack node reports in (node: its
    display name, "LLMGA Chat"). CUDA out-of-memory (ComfyUI explains it itself), Cancel and other exceptions pass
    through."""
    try:
        yield
    except USER_ERRORS as error:
        raise RuntimeError(f"{node}: {one_line(error)}") from error
    except RuntimeError as error:
        if isinstance(error, torch.cuda.OutOfMemoryError) or str(error).startswith(f"{node}: "):
            raise
        raise RuntimeError(f"{node}: {one_line(error)}") from error
