"""The report of an evaluation run: its tables as JSON, markdown and a PNG plot.

    table = Table("Table 1", rows=["SD1.5 + short caption"], columns=[("", "FID"), ("", "IS")])
    table.set("SD1.5 + short caption", "", "FID", 21.3)
    files = write_report(out_dir, {"task": "t2i", ...}, [table])   # report.json, report.md, report.png

The PNG plot needs matplotlib (optional): without it the JSON and markdown are written and `ReportFiles.plot_note`
says how to get the plot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..files import atomic_path, write_text_atomic

# Which way is better, for the arrows of the table headers and the plot titles.
LOWER_IS_BETTER = {"FID": True, "LPIPS": True, "IS": False, "CLIP score": False, "SSIM": False, "PSNR": False}
MATPLOTLIB_MISSING = "matplotlib is not installed, so no PNG plot was drawn: pip install matplotlib to get it"


@dataclass
class Table:
    """A results table laid out like the paper's: one row per setting, columns (group, metric), where the group is
    a mask type (Table 3) or "" (Table 1). values[(row, group, metric)]: the number, absent when not computed."""

    title: str
    rows: list[str]
    columns: list[tuple[str, str]]
    values: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def set(self, row: str, group: str, metric: str, value: float) -> None:
        self.values[(row, group, metric)] = float(value)

    def get(self, row: str, group: str, metric: str) -> float | None:
        return self.values.get((row, group, metric))

    def as_json(self) -> dict:
        """{"title", "columns": ["narrow FID", ...], "rows": {row: {"narrow FID": value, ...}}}."""
        return {"title": self.title, "columns": [column_label(*column) for column in self.columns],
                "rows": {row: {column_label(*column): self.get(row, *column) for column in self.columns}
                         for row in self.rows}}


def column_label(group: str, metric: str) -> str:
    return f"{group} {metric}".strip()


def _arrow(metric: str) -> str:
    better_low = LOWER_IS_BETTER.get(metric)
    return "" if better_low is None else " ↓" if better_low else " ↑"


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def markdown_table(table: Table) -> str:
    """The table in GitHub markdown, metric columns marked ↓ (lower is better) or ↑, missing values as "–"."""
    header = ["Setting"] + [column_label(group, metric) + _arrow(metric) for group, metric in table.columns]
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for row in table.rows:
        cells = [row] + [_number(table.get(row, *column)) for column in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_tables(tables: list[Table], path: Path) -> bool:
    """One bar chart per (table, metric): bars per setting, grouped by the column group (mask type). Writes `path`
    (PNG) and returns True, or returns False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return False
    panels = [(table, metric) for table in tables for metric in dict.fromkeys(m for _, m in table.columns)]
    if not panels:
        return False
    figure, axes = pyplot.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for axis, (table, metric) in zip(axes[0], panels, strict=True):
        groups = [group for group, m in table.columns if m == metric]
        width = 0.8 / max(len(table.rows), 1)
        for index, row in enumerate(table.rows):
            heights = [table.get(row, group, metric) for group in groups]
            positions = [g + (index - (len(table.rows) - 1) / 2) * width for g in range(len(groups))]
            axis.bar(positions, [h if h is not None else 0.0 for h in heights], width, label=row)
        axis.set_xticks(range(len(groups)), [group or metric for group in groups])
        axis.set_title(f"{table.title}: {metric}{_arrow(metric)}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    try:
        with atomic_path(path) as temp:
            figure.savefig(temp, dpi=120, format="png")
    finally:
        pyplot.close(figure)
    return True


@dataclass(frozen=True)
class ReportFiles:
    """What write_report wrote; plot is None (and plot_note says why) when matplotlib is missing."""

    json: Path
    markdown: Path
    plot: Path | None
    plot_note: str | None = None


@dataclass(frozen=True)
class RunResult:
    """What an evaluation run returns: its report (as written to report.json, without the tables) and the files."""

    report: dict
    files: ReportFiles


def write_report(out_dir: Path, report: dict, tables: list[Table], stem: str = "report", notes: Iterable[str] = (),
                 plotted: list[Table] | None = None) -> ReportFiles:
    """`<out_dir>/<stem>.json` (report plus the tables), `<stem>.md` (the tables and the notes, e.g. the protocol)
    and `<stem>.png` (the plot of `plotted`, default every table, when matplotlib is installed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path, plot_path = (out_dir / f"{stem}{suffix}" for suffix in (".json", ".md", ".png"))
    write_text_atomic(json_path, json.dumps({**report, "tables": [table.as_json() for table in tables]}, indent=2,
                                            ensure_ascii=False) + "\n")
    text = "\n".join(markdown_table(table) for table in tables)
    notes = list(notes)
    if notes:
        text += "\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    write_text_atomic(markdown_path, text)
    if plot_tables(tables if plotted is None else plotted, plot_path):
        return ReportFiles(json_path, markdown_path, plot_path)
    return ReportFiles(json_path, markdown_path, None, MATPLOTLIB_MISSING)
