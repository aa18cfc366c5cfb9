"""A bench-only ComfyUI extension (no nodes): the server's peak memory over HTTP, so a bench can read what a graph
took inside the server process. POST /llmga_bench/peak_memory resets it; GET answers
{"peak_bytes": int, "kind": str, "device": str} since the last reset (see bench/peak_memory.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import comfy.model_management
from aiohttp import web
from server import PromptServer

NODE_CLASS_MAPPINGS: dict = {}

# Loaded by path: the bench folder is not a package, and putting it on ComfyUI's sys.path could shadow its modules.
_spec = importlib.util.spec_from_file_location("llmga_bench_peak_memory",
                                               Path(__file__).resolve().parent.parent / "peak_memory.py")
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
MEMORY = _module.PeakMemory(comfy.model_management.get_torch_device())
ROUTE = _module.SERVER_ROUTE


@PromptServer.instance.routes.post(ROUTE)
async def reset_peak(request: web.Request) -> web.Response:
    MEMORY.reset()
    return web.json_response({})


@PromptServer.instance.routes.get(ROUTE)
async def read_peak(request: web.Request) -> web.Response:
    return web.json_response({"peak_bytes": MEMORY.peak_bytes(), "kind": MEMORY.kind, "device": str(MEMORY.device)})
