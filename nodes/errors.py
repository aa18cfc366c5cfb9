"""How a library error reaches the ComfyUI user: one line, prefixed with the node's name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..llmga.errors import USER_ERRORS, one_line


@contextmanager
def reported_as(node: str) -> Iterator[None]:
    """Turn a library error (`USER_ERRORS`) raised inside into
    `RuntimeError("<node>: <one line>")`, the form every pack node reports in (node: its display name, "LLMGA Chat").
    Other exceptions, Cancel included, pass through."""
    try:
        yield
    except USER_ERRORS as error:
        raise RuntimeError(f"{node}: {one_line(error)}") from error
