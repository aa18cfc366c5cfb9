"""Runs shared among processes (`llmga.shards`): `accelerate launch` of 2 CPU processes (gloo) of `python -m llmga eval
t2i|inpaint|restore` and `python -m training.tools.record_prompts` make exactly the images, prompts and metrics of one
process on the tiny fixtures; a rerun with one process resumes what a run of two left; a process that fails ends the
run with its one-line error. The sharing policy itself (blocks, part files, merging) without processes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from sharded_commands import ENTRIES
from test_eval_editing import clip_dir  # noqa: F401  (the tiny CLIP folder fixture)
from test_eval_runs import CountingGenerator, FakeFeatures, models_dir, save_picture  # noqa: F401  (models_dir: random-weight Inception / LPIPS files)
from test_training_tools import lively_qwen, read_lines, write_images  # noqa: F401  (the tiny assistant with replies)
from training_support import launch_two_processes, torch_threads

from llmga.cli import main
from llmga.eval.t2i import Caption, T2IGeneration, T2IMetrics, T2ISetting, run_t2i_eval
from llmga.shards import Shards, merge_parts, part_files, process_shards
from training.tools import record_prompts

# One torch thread here and in each launched process: both runs compute alike (and tiny models run fastest so).
threads = torch_threads(1)
FAST_SD = ["--steps", "2", "--device", "cpu", "--dtype", "fp32"]
IGNORED = ("feature_cache/", "report.png")  # the cache's chunk names carry a time and a pid; the plot shows the report


@dataclass
class Runs:
    """One command (`entry`: "llmga" or "record_prompts", see sharded_commands.py) run by one process here (into
    `one`) and by two launched processes (into `two`); "{out}" in `argv` stands for the folder."""

    entry: str
    argv: list[str]
    one: Path
    two: Path

    def command(self, out: Path) -> list[str]:
        return [arg.replace("{out}", str(out)) for arg in self.argv]


def run_one_and_two(root: Path, runs: list[Runs]) -> subprocess.CompletedProcess:
    """Each of `runs` by one process here, then all of them by two processes in one `accelerate launch`."""
    for run in runs:
        assert ENTRIES[run.entry](run.command(run.one)) == 0
    commands = root / "commands.json"
    commands.write_text(json.dumps([[run.entry, run.command(run.two)] for run in runs]))
    launched = launch_two_processes([str(Path(__file__).with_name("sharded_commands.py")), str(commands)], root)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    return launched


def run_files(folder: Path) -> dict[str, bytes]:
    """Every file a run wrote ({path in the folder: bytes}), with the folder's own path written as <out>."""
    files = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and not name.startswith(IGNORED):
            files[name] = path.read_bytes().replace(str(folder).encode(), b"<out>")
    return files


def assert_same_files(one: Path, two: Path, must_hold: tuple[str, ...]) -> None:
    """Both folders hold the same files (so no part file is left) with the same bytes: images, JSONL, run records and
    reports, among them `must_hold`."""
    files, other = run_files(one), run_files(two)
    assert set(must_hold) <= set(files)
    assert sorted(files) == sorted(other)
    assert [name for name in files if files[name] != other[name]] == []


# --- the commands under accelerate launch -------------------------------------------------------------------------


@dataclass
class Launched:
    """The runs of every command, and the output of their launch."""

    t2i: Runs
    inpaint: Runs
    restore: Runs
    record: Runs
    stdout: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sd15_models, host_assistant, host_diffrir, models_dir, clip_dir,  # noqa: F811
         lively_qwen) -> Launched:  # noqa: F811
    root = tmp_path_factory.mktemp("sharded")
    captions = root / "captions.txt"
    captions.write_text("a red fox in the snow\na lighthouse at night\na bowl of ramen\n")
    for index in range(3):
        save_picture(root / "places" / f"{index}.png", 64 + 16 * index, 64, seed=index)
        save_picture(root / "held_out" / f"{index}.png", 96, 112, seed=index)
    write_images(root / "images", 5)
    # In batches of 2, process 0 takes the batches 0, 2, ... and process 1 the batches 1, 3, ...: process 0 refines
    # and draws captions 0 and 1, process 1 caption 2; process 0 asks about images 0, 1 and 4, process 1 about 2, 3.
    commands = {
        "t2i": ["eval", "t2i", captions, "--setting", f"LLMGA={sd15_models.diffusers}:refined", "--mllm",
                host_assistant.path, "--max-new-tokens", "6", "--metrics", "clip", "--clip", clip_dir, "--width", "64",
                "--height", "64", "--batch-size", "2", "--out", "{out}", *FAST_SD],
        "inpaint": ["eval", "inpaint", root / "places", "--masks", "outpaint", "--size", "64", "--setting",
                    f"LLMGA={sd15_models.diffusers_inpainting}:assistant", "--mllm", host_assistant.path,
                    "--max-new-tokens", "4", "--diffrir", f"DiffRIR={host_diffrir}", "--metrics", "ssim",
                    "--batch-size", "2", "--out", "{out}", *FAST_SD],
        "restore": ["eval", "restore", root / "held_out", "--size", "96", "--diffrir", host_diffrir, "--models-dir",
                    models_dir, "--out", "{out}", "--device", "cpu"],
        "record": ["--model", lively_qwen, "--images", root / "images", "--output", "{out}/prompts.jsonl",
                   "--batch-size", "2", "--device", "cpu", "--dtype", "fp32", "--max-new-tokens", "8"]}
    made = {name: Runs("record_prompts" if name == "record" else "llmga", [str(arg) for arg in argv],
                       root / name / "one", root / name / "two") for name, argv in commands.items()}
    launched = run_one_and_two(root, list(made.values()))
    return Launched(**made, stdout=launched.stdout)


def test_t2i_two_processes_make_the_images_prompts_and_metrics_of_one(runs):
    assert_same_files(runs.t2i.one, runs.t2i.two, ("images/LLMGA/000000.png", "images/LLMGA/000002.png",
                                                   "refined.jsonl", "report.json", "report.md"))
    row = json.loads((runs.t2i.two / "report.json").read_text())["settings"][0]
    assert row["made_this_run"] == 3 and isinstance(row["clip_score"], float)
    assert runs.stdout.count("Table 1") == 1  # only the main process prints the report


def test_a_rerun_with_one_process_resumes_what_a_run_of_two_left(runs, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(runs.t2i.two, resumed)
    # As a run of two processes interrupted before its last merge leaves it: caption 1's reply still in process 1's
    # part file, caption 2's reply and image not made yet.
    lines = (resumed / "refined.jsonl").read_text().splitlines(keepends=True)
    (resumed / "refined.jsonl").write_text(lines[0])
    (resumed / "refined.part-1.jsonl").write_text(lines[1])
    (resumed / "images" / "LLMGA" / "000002.png").unlink()
    (resumed / "report.json").unlink()
    assert main(runs.t2i.command(resumed)) == 0
    files, again = run_files(runs.t2i.one), run_files(resumed)
    assert sorted(files) == sorted(again)  # the part file is folded in
    assert [name for name in files if files[name] != again[name]] == ["report.json"]
    reports = [json.loads(found["report.json"]) for found in (files, again)]
    assert [report["settings"][0].pop("made_this_run") for report in reports] == [3, 1]  # only caption 2's image
    assert reports[0] == reports[1]


def test_inpaint_two_processes_make_the_crops_prompts_results_and_metrics_of_one(runs):
    assert_same_files(runs.inpaint.one, runs.inpaint.two, (
        "data/outpaint/2_crop000_mask000.png", "prompts.jsonl", "results/LLMGA/outpaint/1_crop000_mask000.png",
        "results/LLMGA_DiffRIR/outpaint/2_crop000_mask000.png", "report.json"))
    assert len(read_lines(runs.inpaint.two / "prompts.jsonl")) == 3
    assert runs.stdout.count("Table 4") == 1


def test_restore_two_processes_make_the_degradations_restorations_and_metrics_of_one(runs):
    assert_same_files(runs.restore.one, runs.restore.two, (
        "data/degraded/1.png", "data/2_mask000.png", "results/plain_composite/0.png", "report.json"))
    rows = json.loads((runs.restore.two / "report.json").read_text())["rows"]
    assert [set(row["scores"]) for row in rows] == [{"psnr", "ssim", "lpips"}] * 2


def test_record_prompts_of_two_processes_are_those_of_one(runs):
    assert_same_files(runs.record.one, runs.record.two, ("prompts.jsonl",))
    records = read_lines(runs.record.two / "prompts.jsonl")
    images = sorted((runs.record.one.parent.parent / "images").iterdir())
    assert [record["image"] for record in records] == [f"../../images/{path.name}" for path in images]
    assert len({record["reply"] for record in records}) > 1
    assert runs.stdout.count("recorded 5 prompts") == 1


def test_record_prompts_resumes_the_part_files_of_an_interrupted_run(runs, capsys):
    lines = (runs.record.one / "prompts.jsonl").read_text().splitlines(keepends=True)
    folder = runs.record.one.parent / "resumed"  # beside the others: the images have the same relative paths
    folder.mkdir()
    (folder / "prompts.jsonl").write_text(lines[0])
    (folder / "prompts.part-0.jsonl").write_text(lines[1] + '{"image": "../../images/04_pu')  # killed mid-line
    (folder / "prompts.part-1.jsonl").write_text(lines[2])
    assert record_prompts.main(runs.record.command(folder)) == 0
    assert "recorded 2 prompts" in capsys.readouterr().out  # images 3 and 4
    assert sorted(path.name for path in folder.iterdir()) == ["prompts.jsonl"]
    assert (folder / "prompts.jsonl").read_text() == "".join(lines)


def test_a_process_that_fails_ends_the_run_with_its_one_line_error(tmp_path, sd15_models):
    folder = tmp_path / "places"
    for index in (0, 2):
        save_picture(folder / f"{index}.png", 64, 64, seed=index)
    (folder / "1.png").write_bytes(b"not a png")  # process 1's image: process 0 waits for it at the next barrier
    launched = launch_two_processes(["-m", "llmga", "eval", "inpaint", str(folder), "--masks", "outpaint", "--size",
                                     "64", "--setting", f"{sd15_models.diffusers_inpainting}:plain", "--metrics",
                                     "ssim", "--out", str(tmp_path / "run"), *FAST_SD], tmp_path, timeout=120)
    assert launched.returncode != 0
    errors = re.findall(r"error: [^\r\n]*", launched.stderr)  # after the main process's progress bar, maybe
    assert any("1.png could not be read" in error for error in errors)
    assert all("1.png could not be read" in error or "another process of this run stopped" in error
               for error in errors) and "[rank" not in launched.stderr  # no traceback of the processes
    assert not (tmp_path / "run" / "results").exists()


# --- the sharing policy --------------------------------------------------------------------------------------------


class ThreadState:
    """Stands for accelerate's PartialState of processes run as threads: a shared barrier, the CPU."""

    device = "cpu"

    def __init__(self, barrier: threading.Barrier) -> None:
        self.wait_for_everyone = barrier.wait


def run_as_processes(count: int, run) -> list:
    """run(shards) of `count` processes, as threads with a shared barrier; their results by rank."""
    barrier = threading.Barrier(count, timeout=60)
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(run, Shards(rank, count, ThreadState(barrier))) for rank in range(count)]
        return [future.result() for future in futures]


def test_each_process_refines_and_draws_only_its_batches_and_the_main_one_reports(tmp_path):
    captions = [Caption(f"{i:06d}", f"caption {i}") for i in range(5)]
    settings = [T2ISetting("refined", "sd", "refined")]
    metrics = T2IMetrics(inception=FakeFeatures(), fid_size=None, is_splits=2)
    asked: dict[int, list[list[str]]] = {0: [], 1: []}

    def run(shards: Shards, out: Path, generator: CountingGenerator):
        def refine(texts: list[str]) -> list[str]:
            asked[shards.rank].append(texts)
            return [f"<gen_image> {text}, detailed </gen_image>" for text in texts]

        return run_t2i_eval(settings, captions, out, generate_fn=generator, metrics=metrics, refine_fn=refine,
                            assistant="tiny", generation=T2IGeneration(seed=10, batch_size=2), progress=False,
                            shards=shards)

    generators = [CountingGenerator(), CountingGenerator()]
    results = run_as_processes(2, lambda shards: run(shards, tmp_path / "two", generators[shards.rank]))
    # Blocks of 2 in turn: process 0 the captions 0, 1 and 4, process 1 the captions 2 and 3.
    assert asked == {0: [["caption 0", "caption 1"], ["caption 4"]], 1: [["caption 2", "caption 3"]]}
    assert [[seeds for _, _, seeds in generator.calls] for generator in generators] == [[[10, 11], [14]], [[12, 13]]]
    assert results[1] is None and results[0].report["settings"][0]["made_this_run"] == 5
    asked.clear()
    asked[0] = []
    alone = run(Shards(), tmp_path / "one", CountingGenerator())
    assert asked == {0: [["caption 0", "caption 1"], ["caption 2", "caption 3"], ["caption 4"]]}
    assert alone.report["settings"][0]["made_this_run"] == 5
    assert run_files(tmp_path / "one") == run_files(tmp_path / "two")  # images, replies and report alike


def test_blocks_of_the_batch_size_go_round_the_processes_and_cover_every_item_once():
    items = list(range(11))
    shares = [Shards(rank, 3).share(items, block=2) for rank in range(3)]
    assert shares == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10]]
    assert Shards().share(items, block=4) == items


def test_one_process_without_a_launcher_writes_its_rows_in_place(monkeypatch, tmp_path):
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    shards = process_shards()
    assert (shards.rank, shards.count, shards.state, shards.is_main) == (0, 1, None, True)
    assert shards.part(tmp_path / "refined.jsonl") == tmp_path / "refined.jsonl"
    assert shards.device("auto") == "auto" and shards.claim([1, 2]) == [1, 2]
    assert Shards(1, 2).part(tmp_path / "refined.jsonl") == tmp_path / "refined.part-1.jsonl"


def test_part_files_of_any_number_of_processes_merge_in_the_run_order(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"key": "a", "n": 1}\n{"key": "b", "n": 2')  # a torn last line is ended, not lost
    for rank, rows in ((0, ['{"key": "d"}', '{"key": "a", "n": 9}']), (10, ['{"key": "c"}']), (2, ['{"key": "e"}'])):
        (tmp_path / f"prompts.part-{rank}.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "prompts.errors.part-0.jsonl").write_text('{"key": "x"}\n')  # another file's part
    assert [part.name for part in part_files(path)] == ["prompts.part-0.jsonl", "prompts.part-2.jsonl",
                                                        "prompts.part-10.jsonl"]
    assert merge_parts(path, "key", order=["c", "d"]) == 3
    assert path.read_text() == ('{"key": "a", "n": 1}\n{"key": "b", "n": 2\n{"key": "c"}\n{"key": "d"}\n'
                                '{"key": "e"}\n')
    assert part_files(path) == [] and (tmp_path / "prompts.errors.part-0.jsonl").exists()
    assert merge_parts(path, "key") == 0
