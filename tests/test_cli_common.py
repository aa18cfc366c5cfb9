"""What every `python -m llmga` command shares: where models are looked up, number checks, the output-naming rule,
atomic PNG writes with their text chunks, and the library's warnings on stderr."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from llmga.cli import common


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
