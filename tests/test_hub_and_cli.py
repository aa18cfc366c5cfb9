"""Finding models by name (local first, downloads only when allowed) and the `python -m llmga chat` CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.edited import copy_checkpoint

from llmga.hub import (
    CLIP_VISION_REPO,
    HUB_OWNER,
    RELEASED_MLLMS,
    RELEASED_SD,
    REVISIONS,
    ModelNotFoundError,
    download,
    fetch,
    model_entry,
    released_name,
    resolve_model,
)

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


def run_cli(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmga", *args], cwd=REPO, input=stdin, capture_output=True,
                          text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", **env})


def test_cli_chat_prints_reply_and_generation_prompt(mllm_checkpoints):
    result = run_cli("chat", "--mllm", str(mllm_checkpoints["qwen2"].path), "--device", "cpu", "--dtype", "fp32",
                     "--greedy", "--max-new-tokens", "8", "a red fox in the snow")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("LLMGA: ")
    assert "Generation prompt: " in result.stdout
    assert "assistant: qwen2, LLM float32, vision tower float32, attention sdpa" in result.stderr


def test_cli_chat_takes_an_attention_and_refuses_flash_attention_on_the_cpu(mllm_checkpoints):
    chat = ["chat", "--mllm", str(mllm_checkpoints["qwen2"].path), "--device", "cpu", "--dtype", "fp32", "--greedy",
            "--max-new-tokens", "2", "a red fox"]
    eager = run_cli(*chat, "--attention", "eager")
    assert eager.returncode == 0, eager.stderr
    assert "assistant: qwen2, LLM float32, vision tower float32, attention eager" in eager.stderr
    flash = run_cli(*chat, "--attention", "flash_attention_2")
    assert flash.returncode == 2
    assert flash.stderr.strip().splitlines()[-1] == (
        "error: attention flash_attention_2 cannot run: it runs on CUDA GPUs only and the assistant runs on cpu; "
        "choose auto or sdpa")


def test_cli_chat_samples_with_the_checkpoints_settings_unless_told(mllm_checkpoints):
    qwen = ["chat", "--mllm", str(mllm_checkpoints["qwen2"].path), "--device", "cpu", "--dtype", "fp32",
            "--max-new-tokens", "4", "a red fox"]
    default = run_cli(*qwen)
    assert default.returncode == 0, default.stderr
    assert ("settings: temperature 0.2, top_p 0.8 (checkpoint), top_k 20 (checkpoint), repetition_penalty 1.1 "
            "(checkpoint), seed 0, max_new_tokens 4") in default.stderr
    told = run_cli(*qwen, "--top-p", "0.5", "--top-k", "3", "--repetition-penalty", "1", "--greedy")
    assert told.returncode == 0, told.stderr
    assert "settings: greedy (temperature 0), repetition_penalty 1, max_new_tokens 4" in told.stderr
    wrong = run_cli(*qwen, "--top-p", "0")
    assert wrong.returncode == 2 and "--top-p is 0.0 but must be in (0, 1]" in wrong.stderr


def test_cli_chat_phrases_a_chinese_request_to_an_llmga_cn_checkpoint_in_chinese(mllm_checkpoints, tmp_path):
    from llmga.mllm.tasks import TEXTEXTEND_PROMPT_ZH

    chinese = copy_checkpoint(mllm_checkpoints["qwen2"].path, tmp_path / "llmga-cn-Qwen2-0.5B-full-finetune")
    asked = ["chat", "--mllm", str(chinese), "--device", "cpu", "--dtype", "fp32", "--greedy", "--max-new-tokens",
             "2", "--placement", "before", "--show-prompt", "一只猫"]
    result = run_cli(*asked)
    assert result.returncode == 0, result.stderr
    (sent,) = [line for line in result.stdout.splitlines() if line.startswith("Prompt sent: ")]
    assert any(f"{phrase} 一只猫" in sent for phrase in TEXTEXTEND_PROMPT_ZH)
    english = run_cli(*asked, "--language", "en")
    assert "Prompt sent: " in english.stdout and not any(phrase in english.stdout for phrase in TEXTEXTEND_PROMPT_ZH)


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


# --- names from a ComfyUI graph: the strict form (allow_paths=False) ---------------------------------------------


@pytest.fixture
def model_folders(tmp_path) -> list[Path]:
    """Two model folders: first/my-finetune, first/binxia/llmga-gemma-2b-it-full-finetune, second/linked (a symlink to a
    model folder outside both), each holding a config.json; and outside/secret, a model folder outside both."""
    for folder in ("first/my-finetune", "first/binxia/llmga-gemma-2b-it-full-finetune", "outside/secret"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "config.json").write_text("{}")
    (tmp_path / "second").mkdir()
    (tmp_path / "second" / "linked").symlink_to(tmp_path / "outside" / "secret", target_is_directory=True)
    return [tmp_path / "first", tmp_path / "second"]


def test_the_strict_form_takes_entries_of_the_model_folders_and_released_names(model_folders):
    first, second = model_folders
    for name, expected in [("my-finetune", first / "my-finetune"), ("linked", second / "linked"),
                           ("binxia/llmga-gemma-2b-it-full-finetune", first / "binxia/llmga-gemma-2b-it-full-finetune"),
                           ("llmga-gemma-2b-it-full-finetune", first / "binxia/llmga-gemma-2b-it-full-finetune")]:
        assert resolve_model(name, model_folders, allow_paths=False) == expected
    assert model_entry("my-finetune", model_folders, holding="model_index.json") is None
    assert model_entry("linked", model_folders, holding="config.json") == second / "linked"


@pytest.mark.parametrize("hostile", ["../outside/secret", "{outside}", "{outside}/../outside/secret",
                                     "..\\outside\\secret", "C:\\outside", "first/../../outside/secret",
                                     "my-finetune\x00", "binxia/../../outside/secret", "./my-finetune", "..",
                                     "binxia/llmga-gemma-2b-it-full-finetune/..", " .. ", "a/b/c"])
def test_the_strict_form_refuses_every_other_name_with_one_error(model_folders, tmp_path, hostile):
    name = hostile.format(outside=tmp_path / "outside" / "secret")
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model(name, model_folders, allow_paths=False)
    assert str(error.value) == (
        f"model {name.strip()!r} is neither a model folder inside the model folders nor a released LLMGA checkpoint. "
        f"Searched: {[str(f) for f in model_folders]}. Choose a model in those folders or a released name: "
        f"{', '.join(RELEASED_MLLMS + RELEASED_SD)}")


def test_the_strict_form_says_the_same_whether_or_not_a_path_exists(model_folders, tmp_path):
    def message(name: str) -> str:
        with pytest.raises(ModelNotFoundError) as error:
            resolve_model(name, model_folders, allow_paths=False)
        return str(error.value).replace(repr(name), "NAME")

    assert message(str(tmp_path / "outside" / "secret")) == message(str(tmp_path / "outside" / "nothing"))
    assert message("../outside/secret") == message("../outside/nothing")


# --- downloads: one table of pinned revisions ----------------------------------------------------------------------


def test_every_released_download_has_a_row_and_pinned_rows_are_commits():
    assert set(REVISIONS) == {CLIP_VISION_REPO} | {f"{HUB_OWNER}/{name}" for name in RELEASED_MLLMS + RELEASED_SD}
    assert all(re.fullmatch("[0-9a-f]{40}", revision) for revision in REVISIONS.values() if revision is not None)
    assert REVISIONS["binxia/llmga-Qwen2-0.5B-full-finetune"] == "97b9972a6d52a7561683a3e2c7e8aca997f7ef4a"


def test_a_released_checkpoint_is_downloaded_at_its_revision(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def snapshot_download(repo, **options):
        calls.append((repo, options))
        return str(options["local_dir"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    found = resolve_model("binxia/llmga-Qwen2-0.5B-full-finetune", [tmp_path / "LLM"], allow_download=True,
                          allow_paths=False)
    download("llmga-sd15-t2i-v2", tmp_path / "diffusers", ["model_index.json"])
    assert found == tmp_path / "LLM" / "llmga-Qwen2-0.5B-full-finetune"
    assert calls == [
        ("binxia/llmga-Qwen2-0.5B-full-finetune", {"revision": "97b9972a6d52a7561683a3e2c7e8aca997f7ef4a",
                                                   "local_dir": found, "allow_patterns": None}),
        ("binxia/llmga-sd15-t2i-v2", {"revision": None, "local_dir": tmp_path / "diffusers" / "llmga-sd15-t2i-v2",
                                      "allow_patterns": ["model_index.json"]})]


def test_only_the_table_s_repos_are_fetched(tmp_path):
    with pytest.raises(ModelNotFoundError, match="is not a released model this pack downloads"):
        fetch("evil/repo", tmp_path, None)


def test_an_http_error_of_the_hub_is_one_error_that_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import HfHubHTTPError

    class Unavailable(HfHubHTTPError):
        def __init__(self, message: str):  # no HTTP response object: its constructor differs between versions
            Exception.__init__(self, message)

    def refused(repo, **options):
        raise Unavailable("503 Server Error: Service Unavailable\nfor url https://huggingface.co/api")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refused)
    with pytest.raises(ModelNotFoundError) as error:
        download("llmga-Qwen2-0.5B-full-finetune", tmp_path)
    assert str(error.value) == (
        "downloading binxia/llmga-Qwen2-0.5B-full-finetune failed: the Hugging Face hub answered 503 Server Error: "
        "Service Unavailable for url https://huggingface.co/api. Check the connection and try again, or download it "
        "by hand: huggingface-cli download binxia/llmga-Qwen2-0.5B-full-finetune --revision "
        f"97b9972a6d52a7561683a3e2c7e8aca997f7ef4a --local-dir {tmp_path / 'llmga-Qwen2-0.5B-full-finetune'}")


# --- loading errors on the command line: `error: ...`, exit 2 ------------------------------------------------------


def expect_cli_error(result: subprocess.CompletedProcess, start: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: {start}")
    return line


def test_cli_reports_a_tokenizer_that_does_not_load(mllm_checkpoints, tmp_path):
    broken = copy_checkpoint(mllm_checkpoints["qwen2"].path, tmp_path / "broken")
    (broken / "vocab.json").write_text("garbage")
    expect_cli_error(run_cli("chat", "--mllm", str(broken), "--device", "cpu", "hi"),
                     f"the tokenizer in {broken} does not load (")


def test_cli_reports_weights_of_another_llm(mllm_checkpoints, tmp_path):
    relabelled = copy_checkpoint(mllm_checkpoints["qwen2"].path, tmp_path / "relabelled", model_type="llava_llama",
                                 architectures=["LlavaLlamaForCausalLM"])
    line = expect_cli_error(run_cli("chat", "--mllm", str(relabelled), "--device", "cpu", "hi"),
                            f"{relabelled} holds the weights of another model")
    assert "look like a qwen2 checkpoint" in line


def test_cli_reports_an_offline_hub(mllm_checkpoints_without_vision, tmp_path):
    released_layout = copy_checkpoint(mllm_checkpoints_without_vision.path, tmp_path / "released",
                                      mm_vision_tower=CLIP_VISION_REPO)
    result = run_cli("chat", "--mllm", str(released_layout), "--models-dir", str(tmp_path / "models"), "--device",
                     "cpu", "--allow-download", "hi", HF_HOME=str(tmp_path / "hf"))
    expect_cli_error(result, "openai/clip-vit-large-patch14-336 cannot be downloaded: the Hugging Face hub is not "
                     "reachable (offline, or HF_HUB_OFFLINE is set) and no local copy was found")
