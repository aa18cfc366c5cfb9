"""What load_llmga accepts from a checkpoint's files and what it refuses: weights of another LLM than config.json
says, a vision tower config.json chose, broken configs and tokenizers, and hub errors; every refusal is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fixtures.edited import copy_checkpoint
from fixtures.mllm import FAMILIES

from llmga.hub import CLIP_VISION_REPO, REVISIONS, ModelNotFoundError
from llmga.mllm.checkpoint import CheckpointError
from llmga.mllm.loader import load_llmga


def clip_vision_with(tmp_path: Path, tower: Path, config: dict | str | None = None) -> Path:
    """A clip_vision model folder holding a copy of `tower` as clip-vit-large-patch14-336, its config.json replaced
    by `config` (a dict, or the raw text) when given; returns the clip_vision folder."""
    folder = tmp_path / "clip_vision"
    shutil.copytree(tower, folder / "clip-vit-large-patch14-336")
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        (folder / "clip-vit-large-patch14-336" / "config.json").write_text(text)
    return folder


def refusal(path: Path, **options) -> str:
    """The CheckpointError message load_llmga gives for `path` (one line)."""
    with pytest.raises(CheckpointError) as error:
        load_llmga(path, dtype="fp32", device="cpu", **options)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("family", FAMILIES)
def test_every_released_family_loads_with_the_node_rules(mllm_checkpoints, mllm_root, family):
    """The nodes' strict form (clip_vision folders only): the tower's config comes from the clip_vision folder, the
    shards' projector and vision keys and a tied lm_head are no reason to refuse."""
    fixture = mllm_checkpoints[family]
    loaded = load_llmga(fixture.path, dtype="fp32", device="cpu", clip_vision_dirs=[mllm_root / "clip_vision"],
                        allow_paths=False)
    features = loaded.model.encode_images(torch.zeros(1, 3, 336, 336))
    assert features.shape == (1, 576, fixture.hidden_size)


@pytest.mark.parametrize("family, model_type, architecture, says", [
    ("qwen2", "llava_llama", "LlavaLlamaForCausalLM",
     ["hold 6 tensors a llama model does not have (self_attn.k_proj.bias, self_attn.q_proj.bias, "
      "self_attn.v_proj.bias)", "config.json says llava_llama", "look like a qwen2 checkpoint (attention biases)"]),
    ("vicuna", "llava_Qwen2", "LlavaQwen2ForCausalLM",
     ["lack 6 tensors a qwen2 model needs (self_attn.k_proj.bias, self_attn.q_proj.bias, self_attn.v_proj.bias)",
      "look like a llama, mistral or gemma checkpoint (no attention biases)"]),
    ("phi3", "llava_llama", "LlavaLlamaForCausalLM",
     ["tensors a llama model does not have (mlp.gate_up_proj.weight, self_attn.qkv_proj.weight)",
      "lack 10 tensors a llama model needs (mlp.gate_proj.weight, mlp.up_proj.weight, self_attn.k_proj.weight, …)",
      "look like a phi3 checkpoint (fused qkv_proj)"]),
])
def test_weights_of_another_llm_than_config_says_are_refused(mllm_checkpoints, tmp_path, family, model_type,
                                                             architecture, says):
    relabelled = copy_checkpoint(mllm_checkpoints[family].path, tmp_path / "relabelled", model_type=model_type,
                                 architectures=[architecture])
    message = refusal(relabelled)
    assert message.startswith(f"{relabelled} holds the weights of another model: they ")
    for part in says:
        assert part in message
    assert message.endswith("Use the config.json that came with these weights, or download the checkpoint again")


@pytest.mark.parametrize("tower", ["/etc", "evil/repo", "openai/clip-vit-base-patch32", "../../clip_vision/x"])
def test_config_json_cannot_choose_another_vision_tower(mllm_checkpoints, tmp_path, monkeypatch, tower):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("nothing is downloaded"))
    chosen = copy_checkpoint(mllm_checkpoints["qwen2"].path, tmp_path / "chosen", mm_vision_tower=tower)
    for allow_paths in (True, False):
        message = refusal(chosen, allow_download=True, allow_paths=allow_paths, clip_vision_dirs=[tmp_path])
        assert message == (f"config.json names the vision tower {tower!r} (mm_vision_tower), but LLMGA checkpoints use "
                           f"openai/clip-vit-large-patch14-336 only, read from a clip_vision model folder "
                           f"({[str(tmp_path)]}) or downloaded from the hub: set mm_vision_tower to "
                           "openai/clip-vit-large-patch14-336")


def test_the_node_rules_never_read_the_tower_folder_config_json_names(mllm_checkpoints_without_vision, tmp_path):
    """The folder named in config.json exists and holds the tower; the nodes still look only in clip_vision."""
    fixture = mllm_checkpoints_without_vision
    assert json.loads((fixture.path / "config.json").read_text())["mm_vision_tower"] == str(fixture.vision_tower)
    message = refusal(fixture.path, clip_vision_dirs=[tmp_path / "clip_vision"], allow_paths=False)
    assert "holds no vision-tower weights" in message and str(tmp_path / "clip_vision") in message
    loaded = load_llmga(fixture.path, dtype="fp32", device="cpu", allow_paths=True)  # a local user's own checkpoint
    assert loaded.model.vision_tower.config.hidden_size == fixture.mm_hidden_size
    in_clip_vision = load_llmga(fixture.path, dtype="fp32", device="cpu", allow_paths=False,
                                clip_vision_dirs=[clip_vision_with(tmp_path, fixture.vision_tower)])
    torch.testing.assert_close(in_clip_vision.model.vision_tower.state_dict(), loaded.model.vision_tower.state_dict())


def test_a_missing_tower_is_downloaded_at_its_pinned_revision(mllm_checkpoints_without_vision, tmp_path,
                                                              monkeypatch):
    import huggingface_hub

    calls = []

    def snapshot_download(repo, **options):
        calls.append((repo, options))
        return str(mllm_checkpoints_without_vision.vision_tower)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    load_llmga(mllm_checkpoints_without_vision.path, dtype="fp32", device="cpu", allow_download=True,
               allow_paths=False, clip_vision_dirs=[tmp_path])
    assert calls == [(CLIP_VISION_REPO, {"revision": "ce19dc912ca5cd21c8a653c79e251e808ccabcd1", "local_dir": None,
                                         "allow_patterns": ["*.json", "*.safetensors"]})]
    assert REVISIONS[CLIP_VISION_REPO] == "ce19dc912ca5cd21c8a653c79e251e808ccabcd1"


@pytest.mark.parametrize("raised", ["LocalEntryNotFoundError", "OfflineModeIsEnabled"])
def test_an_offline_hub_is_one_error_that_says_what_to_do(mllm_checkpoints_without_vision, tmp_path, monkeypatch,
                                                         raised):
    import huggingface_hub
    from huggingface_hub import utils

    def offline(repo, **options):
        raise getattr(utils, raised)("Cannot find the requested files in the disk cache\nand outgoing traffic is off")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelNotFoundError) as error:
        load_llmga(mllm_checkpoints_without_vision.path, dtype="fp32", device="cpu", allow_download=True,
                   allow_paths=False, clip_vision_dirs=[tmp_path])
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("openai/clip-vit-large-patch14-336 cannot be downloaded: the Hugging Face hub is not "
                              "reachable (offline, or HF_HUB_OFFLINE is set) and no local copy was found")
    assert message.endswith("download it by hand: huggingface-cli download openai/clip-vit-large-patch14-336 "
                            "--revision ce19dc912ca5cd21c8a653c79e251e808ccabcd1 --local-dir "
                            "<models>/clip_vision/openai/clip-vit-large-patch14-336")


@pytest.mark.parametrize("config, says", [
    ({"model_type": "llama", "hidden_size": 32}, "is not a CLIP vision config (model_type 'llama', expected "
                                                 "clip_vision_model or clip)"),
    ("{broken", "cannot be read (Expecting property name enclosed in double quotes"),
    ({"model_type": "clip_vision_model", "hidden_size": "big"}, "is not a valid CLIP vision config"),
    ({"model_type": "clip_vision_model", "hidden_size": 48, "num_attention_heads": 4},
     "has hidden size 48, but config.json of"),
])
def test_a_broken_vision_config_is_one_error(mllm_checkpoints, tmp_path, config, says):
    clip_vision = clip_vision_with(tmp_path, mllm_checkpoints["qwen2"].vision_tower, config)
    message = refusal(mllm_checkpoints["qwen2"].path, clip_vision_dirs=[clip_vision], allow_paths=False)
    assert says in message
    assert str(clip_vision / "clip-vit-large-patch14-336") in message


@pytest.mark.parametrize("changes, says", [
    ({"hidden_size": "big"}, "does not describe a qwen2 model (Validation error for field 'hidden_size'"),
    ({"num_attention_heads": 0}, "does not load (integer division or modulo by zero): download the checkpoint"),
    ({"vocab_size": -5}, "does not load (Trying to create tensor with negative dimension -5"),
    ({"mm_hidden_size": "wide"}, "does not describe a qwen2 model ("),
])
def test_corrupt_config_fields_are_one_error(mllm_checkpoints, tmp_path, changes, says):
    assert says in refusal(copy_checkpoint(mllm_checkpoints["qwen2"].path, tmp_path / "corrupt", **changes))


@pytest.mark.parametrize("file, content", [("tokenizer_config.json", "{not json"), ("vocab.json", "garbage")])
def test_a_tokenizer_that_does_not_load_is_one_error(mllm_checkpoints, tmp_path, file, content):
    broken = copy_checkpoint(mllm_checkpoints["qwen2"].path, tmp_path / "tokenizer")
    (broken / file).write_text(content)
    message = refusal(broken)
    assert message.startswith(f"the tokenizer in {broken} does not load (")
    assert message.endswith("download its tokenizer files again (tokenizer_config.json with tokenizer.json or "
                            "tokenizer.model)")


# --- attention ---------------------------------------------------------------------------------------------------


def spliced_logits(loaded, pixels: torch.Tensor) -> torch.Tensor:
    """[L, vocab] logits of BOS, the image's features and a few text tokens."""
    model = loaded.model
    ids = [loaded.tokenizer.bos_token_id or 1, -200, *loaded.tokenizer("a red fox").input_ids[-3:]]
    with torch.no_grad():
        return model.language_model(inputs_embeds=model.embed(ids, model.encode_images(pixels))).logits[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_and_eager_attention_give_the_same_logits(mllm_checkpoints, family):
    """auto on the CPU is SDPA for the LLM and the tower; eager runs both with the reference implementation."""
    pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    runs = {}
    for attention in ("auto", "eager"):
        loaded = load_llmga(mllm_checkpoints[family].path, dtype="fp32", device="cpu", attention=attention)
        chosen = "sdpa" if attention == "auto" else "eager"
        assert loaded.attention == chosen
        assert loaded.model.language_model.config._attn_implementation == chosen
        assert loaded.model.vision_tower.config._attn_implementation == chosen
        assert loaded.describe() == f"{loaded.checkpoint.family}, LLM float32, vision tower float32, attention {chosen}"
        runs[attention] = spliced_logits(loaded, pixels)
    torch.testing.assert_close(runs["auto"], runs["eager"], rtol=0, atol=1e-5)


def test_flash_attention_that_cannot_run_is_refused_before_the_weights_load(mllm_checkpoints, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("the language model was read before the attention was checked")

    monkeypatch.setattr("llmga.mllm.loader.load_language_model", no_weights)
    with pytest.raises(ValueError, match="^attention flash_attention_2 cannot run: it runs on CUDA GPUs only and the "
                       "assistant runs on cpu; choose auto or sdpa$"):
        load_llmga(mllm_checkpoints["qwen2"].path, dtype="fp32", device="cpu", attention="flash_attention_2")
    with pytest.raises(ValueError, match="attention 'xformers' is not one of auto, sdpa, flash_attention_2, eager"):
        load_llmga(mllm_checkpoints["qwen2"].path, dtype="fp32", device="cpu", attention="xformers")
