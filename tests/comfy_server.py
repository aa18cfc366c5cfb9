"""A real ComfyUI server for host tests: started on a free loopback port with this pack linked in.

Everything the server writes (models, input, output, temp, user data, database, log) lives under one
base folder, so a test session never touches the host checkout beyond reading it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from comfyui_host import PACK_NAME, link_pack

# What ComfyUI 0.3.75 logs when a model file does not match the network it built (comfy/sd.py,
# model_base.py, controlnet.py): a fixture in a real format must load with none of these.
_LOAD_WARNING = re.compile(r"unet missing|unet unexpected|clip missing|Missing VAE keys|missing controlnet keys")


def pack_import_problems(log: str) -> list[str]:
    """Lines of a ComfyUI log that report this pack failing to import."""
    return [
        line for line in log.splitlines()
        if PACK_NAME in line and re.search(r"IMPORT FAILED|Cannot import|Traceback|Error while calling", line)
    ]


def load_warnings(log: str) -> list[str]:
    """Lines of a ComfyUI log that report missing or unexpected weights while loading a model."""
    return [line for line in log.splitlines() if _LOAD_WARNING.search(line)]


# protocol.py BinaryEventTypes.TEXT: node text sent with PromptServer.send_progress_text.
TEXT_EVENT = 3


class ComfyError(RuntimeError):
    """The server refused a graph, failed while running it, or died; the message carries the details."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    """`main.py --cpu` of the ComfyUI in `comfy_path`, with its base directory at `base_dir`. cpu=False starts it with
    ComfyUI's default flags instead (its own device and text-encoder precision: what benchmarks on a GPU measure)."""

    def __init__(self, comfy_path: Path, base_dir: Path, extra_args: tuple[str, ...] = (), cpu: bool = True):
        self.comfy_path = Path(comfy_path)
        self.cpu = cpu
        self.base_dir = Path(base_dir)
        self.extra_args = extra_args
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path = self.base_dir / "comfyui.log"
        for name in ("models", "input", "output", "temp", "user", "custom_nodes"):
            (self.base_dir / name).mkdir(parents=True, exist_ok=True)
        link_pack(self.comfy_path, self.base_dir / "custom_nodes")
        # Test-only nodes (tests/comfy_test_nodes) that hand numbers back to the tests.
        test_nodes = self.base_dir / "custom_nodes" / "llmga_test_nodes"
        if not test_nodes.exists():
            test_nodes.symlink_to(Path(__file__).resolve().parent / "comfy_test_nodes", target_is_directory=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def start(self, timeout: float = 240.0) -> None:
        self.port = free_port()
        command = [
            sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir), "--disable-auto-launch", "--disable-api-nodes",
            "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
            # ComfyUI runs text encoders in fp16 even on the CPU; numbers are compared in fp32
            *(["--cpu", "--fp32-text-enc"] if self.cpu else []),
            *self.extra_args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", DO_NOT_TRACK="1")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, cwd=self.comfy_path, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise ComfyError(f"ComfyUI exited with code {code} while starting:\n{self.log()[-6000:]}")
            try:
                self.get_json("/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        self.stop()
        raise ComfyError(f"ComfyUI did not answer within {timeout:.0f}s:\n{self.log()[-6000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- HTTP -----------------------------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read()

    def get_json(self, path: str, timeout: float = 30):
        return json.loads(self.get(path, timeout))

    def post_json(self, path: str, payload: dict, timeout: float = 30):
        request = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            raise ComfyError(f"POST {path} answered {error.code}: {error.read().decode(errors='replace')}") from error
        return json.loads(body) if body else None

    def object_info(self) -> dict:
        """Every registered node's definition, keyed by node id."""
        return self.get_json("/object_info")

    def queue(self, graph: dict, client_id: str | None = None) -> str:
        """Submit an API-format graph; returns its prompt id. Raises ComfyError when validation refuses it."""
        answer = self.post_json("/prompt", {"prompt": graph, "client_id": client_id or uuid.uuid4().hex})
        if answer.get("node_errors"):
            raise ComfyError(f"graph refused: {json.dumps(answer['node_errors'], indent=1)}")
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Wait until the prompt finished; returns its /history entry, or raises ComfyError with the error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ComfyError(f"ComfyUI died while running {prompt_id}:\n{self.log()[-6000:]}")
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") != "success":
                    errors = [msg for msg in status.get("messages", []) if msg[0] == "execution_error"]
                    raise ComfyError(f"prompt {prompt_id} failed: {json.dumps(errors or status, indent=1)}")
                return entry
            time.sleep(0.2)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f}s")

    def run(self, graph: dict, timeout: float = 600.0) -> dict:
        """Submit a graph and wait for it; returns the outputs of each output node, keyed by node id."""
        return self.wait(self.queue(graph), timeout)["outputs"]

    def expect_error(self, graph: dict, timeout: float = 600.0) -> dict:
        """Run a graph that must fail at execution; returns the execution_error message's data."""
        prompt_id = self.queue(graph)
        try:
            self.wait(prompt_id, timeout)
        except ComfyError:
            status = self.get_json(f"/history/{prompt_id}")[prompt_id]["status"]
            return next(data for kind, data in status["messages"] if kind == "execution_error")
        raise AssertionError(f"prompt {prompt_id} succeeded but was expected to fail")

    def progress_texts(self, graph: dict, timeout: float = 600.0) -> tuple[dict, list[tuple[str, str]]]:
        """Run `graph` while listening on the websocket as its client; returns the outputs and every
        (node id, text) that nodes streamed with `send_progress_text`."""
        import websocket  # websocket-client, a test requirement

        client_id = uuid.uuid4().hex
        socket_ = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        texts: list[tuple[str, str]] = []
        try:
            prompt_id = self.queue(graph, client_id)
            while True:
                message = socket_.recv()
                if isinstance(message, bytes):
                    if int.from_bytes(message[:4], "big") == TEXT_EVENT:
                        size = int.from_bytes(message[4:8], "big")
                        texts.append((message[8:8 + size].decode(), message[8 + size:].decode()))
                    continue
                event = json.loads(message)
                data = event.get("data", {})
                if data.get("prompt_id") != prompt_id:
                    continue
                if event["type"] == "executing" and data.get("node") is None:
                    break
                if event["type"] in ("execution_error", "execution_interrupted"):
                    raise ComfyError(f"prompt {prompt_id} failed: {json.dumps(data)[:4000]}")
        finally:
            socket_.close()
        return self.wait(prompt_id, timeout)["outputs"], texts

    def interrupt(self) -> None:
        self.post_json("/interrupt", {})

    def wait_until_running(self, prompt_id: str, timeout: float = 120.0) -> None:
        """Block until `prompt_id` is the prompt ComfyUI is executing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = self.get_json("/queue")["queue_running"]
            if any(entry[1] == prompt_id for entry in running):
                return
            time.sleep(0.05)
        raise ComfyError(f"prompt {prompt_id} did not start within {timeout:.0f}s")

    def cancel(self, prompt_id: str, *, after: float, what: str, within: float = 10.0) -> list[str]:
        """Let `prompt_id` run for `after` seconds once it started, press Cancel (/interrupt) and wait until it ended;
        raises AssertionError ("<what> did not stop within 10 s of Cancel") when it took longer than `within`.
        Returns the kinds of its status messages (a stopped prompt has "execution_interrupted")."""
        self.wait_until_running(prompt_id)
        time.sleep(after)
        start = time.monotonic()
        self.interrupt()
        while "completed" not in self.get_json(f"/history/{prompt_id}").get(prompt_id, {}).get("status", {}):
            if time.monotonic() - start >= within:
                raise AssertionError(f"{what} did not stop within {within:.0f} s of Cancel")
            time.sleep(0.05)
        return [kind for kind, _ in self.status(prompt_id)["messages"]]

    def status(self, prompt_id: str) -> dict:
        return self.get_json(f"/history/{prompt_id}")[prompt_id]["status"]

    def view(self, image: dict) -> bytes:
        """The bytes of one output image, given its entry from a node's `images` list."""
        query = urllib.parse.urlencode({
            "filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": image.get("type", "output"),
        })
        return self.get(f"/view?{query}")
