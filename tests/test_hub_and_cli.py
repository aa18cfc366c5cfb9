"""Finding models by name (local first, downloads only when allowed) and the `python -m llmga chat` CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmga.hub import ModelNotFoundError, released_name, resolve_model

REPO = Path(__file__).resolve().parent.parent


def test_released_names_are_matched_with_or_without_owner_and_case():
    assert released_name("binxia/llmga-Qwen2-0.5B-full-finetune") == "llmga-Qwen2-0.5B-full-finetune"
    assert released_name("LLMGA-QWEN2-0.5B-FULL-FINETUNE") == "llmga-Qwen2-0.5B-full-finetune"
    assert released_name("llmga-sd15-t2i-v2") == "llmga-sd15-t2i-v2"
    assert released_name("some-other-model") is None


@pytest.mark.parametrize("layout", ["llmga-gemma-2b-it-full-finetune", "binxia--llmga-gemma-2b-it-full-finetune",
                                    "binxia/llmga-gemma-2b-it-full-finetune"])
def test_a_released_checkpoint_is_found_locally_first(tmp_path, layout):
    folder = tmp_path / "second" / layout
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    found = resolve_model("binxia/llmga-gemma-2b-it-full-finetune", [tmp_path / "first", tmp_path / "second"])
    assert found == folder


def test_a_path_or_a_folder_name_is_used_as_is(tmp_path):
    (tmp_path / "models" / "my-finetune").mkdir(parents=True)
    assert resolve_model(str(tmp_path / "models" / "my-finetune"), []) == tmp_path / "models" / "my-finetune"
    assert resolve_model("my-finetune", [tmp_path / "models"]) == tmp_path / "models" / "my-finetune"


def test_missing_released_checkpoint_without_downloads_names_the_folders(tmp_path):
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model("binxia/llmga-Qwen2-7B-full-finetune", [tmp_path / "LLM", tmp_path / "extra"])
    message = str(error.value)
    assert str(tmp_path / "LLM") in message and str(tmp_path / "extra") in message
    assert "llmga-Qwen2-7B-full-finetune" in message and "config.json" in message


def test_offline_mode_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        resolve_model("binxia/llmga-Qwen2-7B-full-finetune", [tmp_path], allow_download=True)


def test_unknown_name_lists_the_released_ones(tmp_path):
    with pytest.raises(ModelNotFoundError, match="llmga-vicuna-7b-v1.5-full-finetune"):
        resolve_model("not-a-model", [tmp_path])


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmga", *args], cwd=REPO, input=stdin, capture_output=True,
                          text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_cli_chat_prints_reply_and_generation_prompt(mllm_checkpoints):
    result = run_cli("chat", "--mllm", str(mllm_checkpoints["qwen2"].path), "--device", "cpu", "--dtype", "fp32",
                     "--greedy", "--max-new-tokens", "8", "a red fox in the snow")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("LLMGA: ")
    assert "Generation prompt: " in result.stdout


def test_cli_chat_with_image_and_mask_and_interactive_turns(mllm_checkpoints, tmp_path):
    from PIL import Image

    Image.new("RGB", (80, 60), "green").save(tmp_path / "picture.png")
    Image.new("L", (80, 60), 255).save(tmp_path / "mask.png")
    result = run_cli("chat", "--mllm", str(mllm_checkpoints["vicuna"].path), "--device", "cpu", "--dtype", "fp32",
                     "--image", str(tmp_path / "picture.png"), "--mask", str(tmp_path / "mask.png"),
                     "--task", "inpaint", "--interactive", "--max-new-tokens", "6",
                     stdin="Make it sunny.\n\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("LLMGA: ") == 2  # the first answer and the follow-up


def test_cli_chat_reports_bad_input_without_a_traceback(mllm_checkpoints, tmp_path):
    from PIL import Image

    Image.new("RGB", (80, 60)).save(tmp_path / "picture.png")
    Image.new("L", (40, 30)).save(tmp_path / "mask.png")
    result = run_cli("chat", "--mllm", str(mllm_checkpoints["qwen2"].path), "--device", "cpu", "--task", "inpaint",
                     "--image", str(tmp_path / "picture.png"), "--mask", str(tmp_path / "mask.png"))
    assert result.returncode == 2
    assert "mask" in result.stderr and "Traceback" not in result.stderr
    missing = run_cli("chat", "--mllm", "binxia/llmga-Qwen2-7B-full-finetune", "--models-dir", str(tmp_path), "hi")
    assert missing.returncode == 2 and str(tmp_path) in missing.stderr and "Traceback" not in missing.stderr


def test_missing_released_sd_model_names_the_diffusers_layout(tmp_path):
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model("binxia/llmga-sd15-t2i-v2", [tmp_path / "diffusers"])
    message = str(error.value)
    assert "model_index.json" in message and "<models>/diffusers/llmga-sd15-t2i-v2" in message
