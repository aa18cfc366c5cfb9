"""The schema of a pack node, written one way: the class docstring is the node's description (what the UI shows)
and its category sits under "LLMGA/"."""

from __future__ import annotations

import inspect

from comfy_api.latest import io


def pack_schema(node: type[io.ComfyNode], node_id: str, display_name: str, category: str, **fields) -> io.Schema:
    """io.Schema of `node`: node_id and display_name as given (ids are what saved workflows name: never change them),
    category "LLMGA/<category>", description the class docstring as one line; `fields` (inputs, outputs, hidden, ...)
    as io.Schema takes them."""
    return io.Schema(node_id=node_id, display_name=display_name, category=f"LLMGA/{category}",
                     description=" ".join(inspect.getdoc(node).split()), **fields)
