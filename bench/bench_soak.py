"""Soak: many queued graphs that chain every pack node on one real ComfyUI server, then Cancel on each long node.

Each graph (tiny fixtures: the Qwen2 assistant with its CLIP tower, the SD1.5 inpainting diffusers folder, DiffRIR):

    LoadImage (64x48) -> LLMGA Outpaint Canvas (+16 px right) -> LLMGA Chat (outpaint task, image + canvas mask)
    -> LLMGA Extract Generation Prompt -> LLMGA Long Prompt Encode -> InpaintModelConditioning -> KSampler (2 steps)
    -> VAEDecode -> LLMGA Paste Back (onto the canvas) -> LLMGA DiffRIR Restore -> PreviewImage

Every graph has its own chat seed and message, so everything but the loaders runs again. The graphs are queued
in three batches (a fifth, a half, all of --graphs; 10, 25 and 50 by default) and the server's resident memory
(/proc/<pid>/status VmRSS) is read once each batch has finished. Reported: failed graphs (target 0), the RSS after
each batch (target: within 5 % of each other), and how long each long node takes to stop once Cancel (/interrupt) is
pressed while it runs (LLMGA Chat generating 4096 tokens, LLMGA Inversion Edit with 1000 steps, LLMGA DiffRIR
Restore of the released x1 size (random weights) on a --restore-size² picture in tiles of 512: pressed
--cancel-after seconds after the node began, target < 1 s).

    python bench/bench_soak.py [--graphs 50] [--restore-size 4096] [--cancel-after 0.3 1 3] [--threads 0]
                               [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts"), str(ROOT / "bench")]

import numpy as np  # noqa: E402
from bench_long_prompt_encode import machine_line, start_server, versions_line  # noqa: E402
from comfy_server import ComfyError, ComfyServer  # noqa: E402
from PIL import Image  # noqa: E402

# The loaders: editing takes the text-to-image SD; Cancel is measured on a DiffRIR of the released size.
ASSISTANT, SD, DIFFRIR, SD_T2I, DIFFRIR_RELEASED_SIZE = "1", "2", "3", "4", "5"
RELEASED_SIZE_FILE = "released-size-diffrir-x1.safetensors"
PICTURE = "soak.png"


def build_models(base: Path) -> tuple[str, str]:
    """The tiny assistant (models/LLM, its tower in models/clip_vision), the tiny DiffRIR and a random-weight DiffRIR
    of the released x1 size (models/diffrir) beside the SD1.5 fixtures start_server writes; returns the assistant's
    released name and the tiny DiffRIR's file name."""
    import torch
    from fixtures.diffrir import build_diffrir_fixture
    from fixtures.mllm import build_clip_vision_tower, build_llmga_checkpoint

    from llmga.restore.checkpoint import save_diffrir
    from llmga.restore.network import DiffRIR

    models = base / "models"
    assistant = models / "LLM" / "llmga-Qwen2-0.5B-full-finetune"
    if not (assistant / "config.json").is_file():
        print(f"writing the tiny assistant and DiffRIR fixtures to {models} ...", flush=True)
        build_llmga_checkpoint(models / "LLM", "qwen2", build_clip_vision_tower(models / "clip_vision"))
        build_diffrir_fixture(models / "diffrir")
    if not (models / "diffrir" / RELEASED_SIZE_FILE).is_file():
        torch.manual_seed(0)
        save_diffrir(DiffRIR(1), models / "diffrir" / RELEASED_SIZE_FILE)
    return f"binxia/{assistant.name}", "tiny-diffrir-x1.pth"


def loaders(assistant: str, diffrir: str) -> dict:
    return {
        ASSISTANT: {"class_type": "LLMGALoadAssistant", "inputs": {
            "model": assistant, "dtype": "fp32", "device": "cpu", "quantization": "none", "attention": "sdpa",
            "template": "auto", "allow_download": False}},
        SD: {"class_type": "LLMGALoadSD15", "inputs": {"model": "tiny-sd15-inpainting", "allow_download": False}},
        DIFFRIR: {"class_type": "LLMGALoadDiffRIR", "inputs": {"model": diffrir, "dtype": "auto"}},
        SD_T2I: {"class_type": "LLMGALoadSD15", "inputs": {"model": "tiny-sd15", "allow_download": False}},
        DIFFRIR_RELEASED_SIZE: {"class_type": "LLMGALoadDiffRIR", "inputs": {"model": RELEASED_SIZE_FILE,
                                                                             "dtype": "auto"}},
    }


def chat(message: str, seed: int, max_new_tokens: int, **inputs) -> dict:
    return {"class_type": "LLMGAChat", "inputs": {
        "assistant": [ASSISTANT, 0], "message": message, "task": "chat", "seed": seed, "temperature": 0.7, "top_p": 1.0,
        "max_new_tokens": max_new_tokens, "keep_loaded": True, **inputs}}


def soak_graph(number: int, models: dict) -> dict:
    """Graph `number` of the soak: every node of the pack, chained, on a 64x48 picture."""
    return {
        **models,
        "10": {"class_type": "LoadImage", "inputs": {"image": PICTURE}},
        "11": {"class_type": "LLMGAOutpaintCanvas", "inputs": {
            "image": ["10", 0], "left": 0, "top": 0, "right": 16, "bottom": 0, "feathering": 4}},
        "12": chat(f"continue the harbour scene, take {number}", number, 24, task="outpaint", image=["11", 0],
                   mask=["11", 1]),
        "13": {"class_type": "LLMGAExtractGenerationPrompt", "inputs": {
            "reply": ["12", 4], "which": "first", "no_tag_fallback": "whole reply"}},
        "14": {"class_type": "LLMGALongPromptEncode", "inputs": {
            "clip": [SD, 1], "prompt": ["13", 0], "negative_prompt": "blurry", "mode": "llmga", "max_chunks": 0}},
        "15": {"class_type": "InpaintModelConditioning", "inputs": {
            "positive": ["14", 0], "negative": ["14", 1], "vae": [SD, 2], "pixels": ["11", 0], "mask": ["11", 1],
            "noise_mask": True}},
        "16": {"class_type": "KSampler", "inputs": {
            "model": [SD, 0], "positive": ["15", 0], "negative": ["15", 1], "latent_image": ["15", 2], "seed": number,
            "steps": 2, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "17": {"class_type": "VAEDecode", "inputs": {"samples": ["16", 0], "vae": [SD, 2]}},
        "18": {"class_type": "LLMGAPasteBack", "inputs": {
            "original": ["11", 0], "generated": ["17", 0], "mask": ["11", 1], "feathering": 0}},
        "19": {"class_type": "LLMGADiffRIRRestore", "inputs": {
            "diffrir": [DIFFRIR, 0], "generated": ["18", 0], "reference": ["11", 0], "mask": ["11", 1],
            "seed": number, "tile_size": 0, "dilate": 0, "feather": 0}},
        "20": {"class_type": "PreviewImage", "inputs": {"images": ["19", 0]}},
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def soak(server: ComfyServer, models: dict, graphs: int) -> tuple[int, list[tuple[int, float]], list[float]]:
    """Queue the graphs in three batches; returns (failures, [(graphs done, server RSS MB)], seconds per graph)."""
    marks = sorted({max(1, graphs // 5), max(1, graphs // 2), graphs})
    failures, rss, seconds, done = 0, [], [], 0
    for mark in marks:
        queued = [server.queue(soak_graph(number, models)) for number in range(done, mark)]
        for prompt_id in queued:
            try:
                messages = dict(server.wait(prompt_id, timeout=900)["status"]["messages"])
                seconds.append((messages["execution_success"]["timestamp"]
                                - messages["execution_start"]["timestamp"]) / 1000)
            except ComfyError as error:
                failures += 1
                print(f"graph failed: {str(error)[:400]}", flush=True)
        done = mark
        rss.append((done, rss_mb(server.process.pid)))
        print(f"{done} graphs done, server RSS {rss[-1][1]:.0f} MB", flush=True)
    return failures, rss, seconds


def cancel_latency(server: ComfyServer, graph: dict, node: str, after: float) -> float:
    """Seconds from pressing Cancel, `after` seconds after `node` began to execute, to the prompt's
    execution_interrupted event (both seen by this client on ComfyUI's websocket)."""
    import websocket  # websocket-client, a test requirement

    client_id = uuid.uuid4().hex
    socket_ = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}", timeout=600)
    try:
        prompt_id = server.queue(graph, client_id)
        pressed = None
        while True:
            message = socket_.recv()
            if isinstance(message, bytes):
                continue
            event = json.loads(message)
            data = event.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            if event["type"] == "executing" and data.get("node") == node and pressed is None:
                time.sleep(after)
                pressed = time.perf_counter()
                server.interrupt()
            elif event["type"] == "execution_interrupted":
                return time.perf_counter() - pressed
            elif event["type"] in ("execution_success", "execution_error") or (
                    event["type"] == "executing" and data.get("node") is None):
                raise ComfyError(f"{node} was not interrupted: {event['type']} {json.dumps(data)[:400]}")
    finally:
        socket_.close()


def long_nodes(models: dict, size: int) -> dict[str, tuple[dict, str]]:
    """The graph and node id of each long node, sized to run far longer than a Cancel takes."""
    scale = {"class_type": "ImageScale", "inputs": {"image": ["10", 0], "upscale_method": "nearest-exact",
                                                    "width": size, "height": size, "crop": "disabled"}}
    picture = {"class_type": "LoadImage", "inputs": {"image": PICTURE}}
    return {
        "LLMGA Chat": ({**models, "30": chat("Write a very long story.", 99, 4096, temperature=0.0),
                        "31": {"class_type": "PreviewAny", "inputs": {"source": ["30", 0]}}}, "30"),
        "LLMGA Inversion Edit": ({
            **models, "10": picture,
            "30": {"class_type": "LLMGAInversionEdit", "inputs": {
                "model": [SD_T2I, 0], "clip": [SD_T2I, 1], "vae": [SD_T2I, 2], "image": ["10", 0],
                "source_prompt": "a harbour",
                "target_prompt": "a harbour at night", "method": "direct_inversion_p2p", "steps": 1000, "cfg": 7.5,
                "source_cfg": 3.5, "skip": 25, "controller": "refine", "cross_replace": 0.4, "self_replace": 0.6,
                "blend_source_words": "", "blend_target_words": "", "blend_threshold": 0.3, "prompt_mode": "llmga",
                "seed": 1}},
            "31": {"class_type": "PreviewImage", "inputs": {"images": ["30", 0]}}}, "30"),
        "LLMGA DiffRIR Restore": ({
            **models, "10": picture, "11": scale,
            "12": {"class_type": "LLMGAOutpaintCanvas", "inputs": {
                "image": ["11", 0], "left": 0, "top": 0, "right": 0, "bottom": 64, "feathering": 0}},
            "30": {"class_type": "LLMGADiffRIRRestore", "inputs": {
                "diffrir": [DIFFRIR_RELEASED_SIZE, 0], "generated": ["12", 0], "reference": ["12", 0],
                "mask": ["12", 1], "seed": 1, "tile_size": 512, "dilate": 0, "feather": 0}},
            "31": {"class_type": "PreviewImage", "inputs": {"images": ["30", 0]}}}, "30"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=int, default=50, help="graphs to queue (default 50)")
    parser.add_argument("--restore-size", type=int, default=4096, help="side of the restored picture for Cancel")
    parser.add_argument("--cancel-after", type=float, nargs="+", default=[0.3, 1.0, 3.0],
                        help="seconds after a long node began at which Cancel is pressed (one run each)")
    parser.add_argument("--threads", type=int, default=0, help="server torch threads (0 = torch default)")
    parser.add_argument("--workdir", type=Path, help="keep the server folder and fixtures here (default: a temp dir)")
    args = parser.parse_args()

    with ExitStack() as stack:
        base = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmga-soak-")))
        models = loaders(*build_models(base))
        server, _ = start_server(base, args.threads, stack)
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            server.input_dir / PICTURE)
        started = time.perf_counter()
        failures, rss, seconds = soak(server, models, args.graphs)
        wall = time.perf_counter() - started
        latencies = {name: [cancel_latency(server, graph, node, after) for after in args.cancel_after]
                     for name, (graph, node) in long_nodes(models, args.restore_size).items()}

        low, high = min(mb for _, mb in rss), max(mb for _, mb in rss)
        print()
        print(f"machine: {machine_line()}")
        print(f"software: {versions_line(server, args.threads)}")
        print(f"soak: {args.graphs} graphs in {wall:.0f} s (median {statistics.median(seconds):.2f} s per graph, "
              f"ComfyUI's execution time); Cancel pressed {', '.join(f'{a:g}' for a in args.cancel_after)} s after "
              f"the node began; DiffRIR of the released x1 size (random weights) on {args.restore_size}x"
              f"{args.restore_size + 64}, tiles of 512")
        print()
        print("| measure | value | target |")
        print("|---|---:|---:|")
        print(f"| failed graphs | {failures} of {args.graphs} | 0 |")
        for done, mb in rss:
            print(f"| server RSS after {done} graphs | {mb:,.0f} MB | |")
        print(f"| RSS spread (max / min − 1) | {high / low - 1:.1%} | ≤ 5% |")
        for name, times in latencies.items():
            print(f"| Cancel → stopped, {name} | {' / '.join(f'{t:.2f}' for t in times)} s | < 1 s |")


if __name__ == "__main__":
    sys.exit(main())
