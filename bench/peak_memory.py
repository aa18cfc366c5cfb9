"""Peak memory of one piece of work, the same way in the bench process and inside a ComfyUI server.

On CUDA: `torch.cuda.max_memory_allocated` since the reset (what torch holds for tensors, weights included). On a CPU:
how far the process's peak resident memory rose above its resident memory at the reset (Linux /proc: VmHWM after
writing 5 to /proc/self/clear_refs, minus VmRSS then), so weights loaded before the reset do not count.
"""

from __future__ import annotations

from pathlib import Path

import torch

# bench/comfy_peak_memory serves a ComfyUI server's PeakMemory here: POST resets it, GET reads it.
SERVER_ROUTE = "/llmga_bench/peak_memory"


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """`reset()`, run the work, then `peak_bytes()`. device: where the work allocates (cuda or cpu)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.base_mb = 0.0

    @property
    def kind(self) -> str:
        """What `peak_bytes` counts, for a table's footnote."""
        return "CUDA max_memory_allocated" if self.device.type == "cuda" else "rise of peak RSS (VmHWM) over RSS"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.base_mb = rss_mb("VmRSS")

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        return int(max(0.0, rss_mb("VmHWM") - self.base_mb) * 2**20)
