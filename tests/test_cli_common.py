"""What every `python -m llmga` command shares: where models are looked up, number checks, outputs checked before
anything runs, the output-naming rule, atomic PNG writes with their text chunks, the library's warnings on stderr,
and SIGTERM ending a command as Ctrl-C does."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest
from PIL import Image

from llmga.cli import common, main


def test_models_are_looked_up_in_each_models_folders_kind_then_in_the_folder_itself(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert common.model_folders([first, second], "LLM") == [first / "LLM", second / "LLM", first, second]
    assert common.model_folders([], "diffusers") == [Path("models/diffusers"), Path("models")]


def test_a_model_folder_is_found_by_name_or_path(tmp_path):
    (tmp_path / "diffusers" / "tiny").mkdir(parents=True)
    (tmp_path / "plain").mkdir()
    assert common.model_path("tiny", [tmp_path], "diffusers", False) == tmp_path / "diffusers" / "tiny"
    assert common.model_path("plain", [tmp_path], "diffusers", False) == tmp_path / "plain"
    assert common.model_path(str(tmp_path / "plain"), [], "LLM", False) == tmp_path / "plain"


@pytest.mark.parametrize(("value", "ok"), [(1, True), (0, False), (float("nan"), False), (float("inf"), False)])
def test_numbers_must_be_finite_and_large_enough(value, ok):
    if ok:
        common.check_at_least(value, 1, "--steps")
    else:
        with pytest.raises(common.InputError, match=r"--steps is .* but must be 1 or more \(official: 50\)"):
            common.check_at_least(value, 1, "--steps", " (official: 50)")


@pytest.mark.parametrize(("temperature", "tokens", "message"), [
    (-1.0, 8, "--temperature is -1.0 but must be 0"), (float("nan"), 8, "--temperature is nan"),
    (0.2, 0, "--max-new-tokens is 0 but must be 1 or more"),
])
def test_assistant_numbers_are_checked(temperature, tokens, message):
    with pytest.raises(common.InputError, match=message):
        common.check_assistant_numbers(argparse.Namespace(temperature=temperature, max_new_tokens=tokens))


def test_out_must_be_a_folder_or_a_png(tmp_path):
    common.check_png_out(tmp_path / "folder")
    common.check_png_out(tmp_path / "picture.PNG")
    with pytest.raises(common.InputError, match="neither a folder nor a .png file"):
        common.check_png_out(tmp_path / "picture.jpg")


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder that takes no new file: read-only for a normal user; /proc for root, whom permissions do not stop."""
    if os.geteuid() == 0:
        return Path("/proc")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize("case", ["read-only folder", "under a file", "folder named .png", "file named as a folder"])
def test_an_out_that_cannot_be_written_is_refused_with_what_to_do(tmp_path, case):
    (tmp_path / "notes.txt").write_text("a file")
    (tmp_path / "picture.png").mkdir()
    (tmp_path / "outputs").write_text("a file")
    out, message = {
        "read-only folder": (unwritable_folder(tmp_path) / "new" / "x.png", "does not take new files"),
        "under a file": (tmp_path / "notes.txt" / "x.png", f"{tmp_path / 'notes.txt'} is a file, not a folder"),
        "folder named .png": (tmp_path / "picture.png", "is a folder but its name ends in .png"),
        "file named as a folder": (tmp_path / "outputs", "is a file, not a folder: give a folder"),
    }[case]
    with pytest.raises(common.InputError, match=message) as error:
        common.check_png_out(out)
    assert str(error.value).startswith(f"--out {out} ")
    assert not list(tmp_path.glob("**/*.tmp"))


def test_files_and_folders_to_be_created_pass(tmp_path):
    common.check_png_out(tmp_path / "new" / "deeper" / "x.png")
    common.check_writable(tmp_path / "runs" / "t2i", "--out", folder=True)
    common.check_writable(tmp_path / "scores.json", "--json", folder=False)
    with pytest.raises(common.InputError, match=f"--json {tmp_path} is a folder: give a file name"):
        common.check_writable(tmp_path, "--json", folder=False)
    assert list(tmp_path.iterdir()) == []  # nothing is created by the check


@pytest.mark.parametrize("command", [
    ["generate", "--sd", "absent-model", "a fox"],
    ["inpaint", "--sd", "absent-model", "--image", "absent.png", "--mask", "absent.png"],
    ["outpaint", "--sd", "absent-model", "--image", "absent.png", "--left", "8"],
    ["edit", "--sd", "absent-model", "--image", "absent.png", "--source-prompt", "a", "--target-prompt", "b"],
    ["restore", "--model", "absent.pth", "--image", "absent.png", "--reference", "absent.png", "--mask", "absent.png"],
    ["eval", "restore", "absent-folder", "--diffrir", "absent.pth"],
    ["eval", "t2i", "absent.json", "--setting", "A=absent-model:caption"],
], ids=["generate", "inpaint", "outpaint", "edit", "restore", "eval restore", "eval t2i"])
def test_every_command_checks_its_out_before_reading_inputs_or_models(tmp_path, capsys, command):
    (tmp_path / "notes.txt").write_text("a file")
    out = tmp_path / "notes.txt" / ("x.png" if command[0] != "eval" else "run")
    assert main([*command, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error == f"error: --out {out} cannot be written: {tmp_path / 'notes.txt'} is a file, not a folder; " \
                    "choose another --out\n"


def test_eval_edit_checks_its_json_before_scoring(tmp_path, capsys):
    assert main(["eval-edit", str(tmp_path / "absent.jsonl"), "--metrics", "l1", "--json", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: --json {tmp_path} is a folder: give a file name\n"


def test_sigterm_ends_a_command_as_ctrl_c_does(capsys):
    """SIGTERM raises in the main thread (files being written are removed on the way out) and exits 143 without a
    message; Ctrl-C exits 130; the previous SIGTERM handler is back afterwards."""
    before = signal.getsignal(signal.SIGTERM)

    def terminated() -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        return 0

    def interrupted() -> int:
        raise KeyboardInterrupt

    start = time.monotonic()
    assert common.run_command(terminated, "hint") == 143
    assert time.monotonic() - start < 10
    assert common.run_command(interrupted, "hint") == 130
    assert capsys.readouterr().err == ""
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_output_naming_rule(tmp_path):
    folder = tmp_path / "out"
    assert common.output_paths(folder, ["generate-7"]) == [folder / "generate-7.png"]
    (folder / "generate-7.png").touch()
    assert common.output_paths(folder, ["generate-7", "generate-7"]) == [folder / "generate-7-1.png",
                                                                         folder / "generate-7-2.png"]
    file = tmp_path / "sub" / "picture.png"
    assert common.output_paths(file, ["x"]) == [file] and file.parent.is_dir()
    assert common.output_paths(file, ["x", "y"]) == [file.with_name("picture-000.png"),
                                                     file.with_name("picture-001.png")]


def test_pngs_are_written_atomically_with_their_text_chunks(tmp_path):
    path = tmp_path / "image.png"
    common.save_png(Image.new("RGB", (4, 3), (1, 2, 3)), path, {"seed": 5}, llmga_prompt="a fox")
    with Image.open(path) as image:
        assert image.getpixel((0, 0)) == (1, 2, 3)
        assert image.text["llmga_prompt"] == "a fox" and json.loads(image.text["llmga_settings"]) == {"seed": 5}
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]


def test_library_warnings_reach_the_current_stderr_once(capsys):
    common.show_library_warnings()
    common.show_library_warnings()
    logging.getLogger("llmga.sd.pipelines").warning("positive prompt: dropped 1 token past the 300-token limit")
    assert capsys.readouterr().err == "warning: positive prompt: dropped 1 token past the 300-token limit\n"
