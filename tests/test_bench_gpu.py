"""bench/gpu.py runs on a machine without a GPU: `--cpu --tiny` gives every row of its table with numbers (the same
code as the GPU run, with the tests' tiny models), and without --cpu it skips in one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "gpu.py"
# The rows of a whole run, in order, as the tiny run names them.
ROWS = (
    "assistant Vicuna (tiny) bf16, batch 1",
    "assistant Vicuna (tiny) fp16, batch 1",
    "assistant Qwen2 (tiny) bf16, batch 1",
    "assistant Qwen2 (tiny) fp16, batch 1",
    "T2I graph 64², 2 steps, pack vs native",
    "SD1.5 edit 64², 2 steps, DI + P2P vs T2I",
    "DiffRIR 64² (tiny), restore_image vs network",
    "DiffRIR 128² (tiny), restore_image vs network",
)
NUMBER = r"(\d+(?:\.\d+)?(?:e[+-]\d+)?)"
MEMORY = rf"{NUMBER} (?:MiB|GiB)"


def table_rows(report: str) -> list[list[str]]:
    """The cells of the markdown table's body rows."""
    lines = [line for line in report.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| case | ours | baseline | ratio | target | met |"), lines[0]
    assert set(lines[1]) <= {"|", "-"}
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.mark.host
def test_cpu_tiny_run_reports_every_row_with_numbers(tmp_path: Path):
    out = tmp_path / "table.md"
    result = subprocess.run([sys.executable, str(BENCH), "--cpu", "--tiny", "--out", str(out), "--workdir",
                             str(tmp_path / "work")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert out.read_text() == result.stdout  # the report alone on stdout, the same in the file
    rows = table_rows(result.stdout)
    assert [row[0] for row in rows] == list(ROWS)
    for case, ours, baseline, ratio, target, met, memory in rows:
        unit = "tok/s" if case.startswith("assistant") else "s"
        ours_value = float(re.fullmatch(rf"{NUMBER} {unit}", ours).group(1))
        baseline_value = float(re.fullmatch(rf"{NUMBER} {unit}", baseline).group(1))
        assert ours_value > 0 and baseline_value > 0, case
        assert float(ratio) == pytest.approx(ours_value / baseline_value, rel=2e-3, abs=1e-3), case
        assert met in ("yes", "**no**", "—"), case
        assert (met == "—") == (target == "—"), case
        assert re.fullmatch(rf"{MEMORY} / {MEMORY}", memory), case
    assert "FAILED" not in result.stdout


def test_without_cuda_it_skips_in_one_line(tmp_path: Path):
    out = tmp_path / "table.md"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, str(BENCH), "--out", str(out)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and "skipped" in lines[0] and "no CUDA GPU" in lines[0], result.stdout
    assert not out.exists()
