"""llmga.sd.loading: diffusers SD1.5 folders read as the single-file state dict, clear errors for everything that is
not a complete SD1.5 model (missing parts, truncated files, SD2, SDXL), and folders written with a new UNet that read
back as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures.sd15 import SD15Fixtures
from safetensors.torch import load_file, save_file

from llmga.sd.loading import (
    LEGACY_VAE_ATTENTION,
    SD15LoadError,
    check_sd15_single_file,
    read_sd15_folder,
    write_sd15_folder,
)
from llmga.sd.pipelines import SDPipelineError, load_sd15_pipeline, unet_channels

SDXL_MESSAGE = "is an SDXL model; the LLMGA SD1.5 loader takes SD1.5 folders such as llmga-sd15-t2i-v2"


def linked_copy(source: Path, target: Path) -> Path:
    """A copy of the folder `source` whose files are symlinks; replace a file with `replace_file` before changing it."""
    for file in source.rglob("*"):
        if file.is_file():
            link = target / file.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(file)
    return target


def replace_file(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def edit_json(path: Path, **changes) -> None:
    replace_file(path, json.dumps({**json.loads(path.read_text()), **changes}).encode())


def assert_same_state_dict(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype and torch.equal(actual[key], value), key


@pytest.fixture
def sd15_copy(sd15_models: SD15Fixtures, tmp_path: Path) -> Path:
    return linked_copy(sd15_models.diffusers, tmp_path / "tiny-sd15")


# --- reading folders -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["t2i", "inpainting"])
def test_folder_gives_the_single_file_twin(sd15_models: SD15Fixtures, kind: str) -> None:
    folder, checkpoint = {
        "t2i": (sd15_models.diffusers, sd15_models.checkpoint),
        "inpainting": (sd15_models.diffusers_inpainting, sd15_models.checkpoint_inpainting),
    }[kind]
    state_dict = read_sd15_folder(folder)
    assert_same_state_dict(state_dict, load_file(checkpoint))
    in_channels = 9 if kind == "inpainting" else 4
    assert state_dict["model.diffusion_model.input_blocks.0.0.weight"].shape == (320, in_channels, 3, 3)


def test_fp16_variants_and_pickled_weights_are_read(sd15_models: SD15Fixtures, sd15_copy: Path) -> None:
    unet, vae, text_encoder = (sd15_copy / part for part in ("unet", "vae", "text_encoder"))
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "diffusion_pytorch_model.fp16.safetensors")
    (text_encoder / "model.safetensors").rename(text_encoder / "model.fp16.safetensors")
    vae_file = vae / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(vae_file), vae / "diffusion_pytorch_model.fp16.bin")
    vae_file.unlink()
    assert_same_state_dict(read_sd15_folder(sd15_copy), load_file(sd15_models.checkpoint))


def test_full_precision_file_is_preferred_over_the_fp16_variant(sd15_copy: Path) -> None:
    unet = sd15_copy / "unet"
    weights = load_file(unet / "diffusion_pytorch_model.safetensors")
    save_file({key: value.half() for key, value in weights.items()}, unet / "diffusion_pytorch_model.fp16.safetensors")
    state_dict = read_sd15_folder(sd15_copy)
    assert state_dict["model.diffusion_model.out.2.weight"].dtype == torch.float32


def test_legacy_vae_attention_names_are_read(sd15_models: SD15Fixtures, sd15_copy: Path) -> None:
    vae_file = sd15_copy / "vae" / "diffusion_pytorch_model.safetensors"
    weights = load_file(vae_file)
    legacy = {}
    for key, value in weights.items():
        for old, new in LEGACY_VAE_ATTENTION.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        legacy[key] = value
    assert legacy.keys() != weights.keys()
    vae_file.unlink()
    save_file(legacy, vae_file)
    assert_same_state_dict(read_sd15_folder(sd15_copy), load_file(sd15_models.checkpoint))


# --- folders that are broken or incomplete ----------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SD15LoadError, match="is not a folder: give a diffusers SD1.5 folder"):
        read_sd15_folder(tmp_path / "nowhere")


def test_folder_without_unet(sd15_copy: Path) -> None:
    for file in (sd15_copy / "unet").iterdir():
        file.unlink()
    (sd15_copy / "unet").rmdir()
    with pytest.raises(SD15LoadError, match=r"has no unet/ folder.*download the model again"):
        read_sd15_folder(sd15_copy)


def test_folder_of_another_pipeline_names_it(tmp_path: Path) -> None:
    (tmp_path / "transformer").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(SD15LoadError, match="has no unet/ folder .its model_index.json names a FluxPipeline"):
        read_sd15_folder(tmp_path)


def test_unet_without_weights(sd15_copy: Path) -> None:
    (sd15_copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(SD15LoadError, match=r"unet holds no weights \(looked for diffusion_pytorch_model.safetensors"):
        read_sd15_folder(sd15_copy)


@pytest.mark.parametrize("part, name", [("vae", "diffusion_pytorch_model.safetensors"), ("unet", "config.json")])
def test_truncated_file(sd15_copy: Path, part: str, name: str) -> None:
    path = sd15_copy / part / name
    replace_file(path, path.read_bytes()[: path.stat().st_size // 2])
    expected = "is truncated or not a safetensors file" if name.endswith(".safetensors") else "is not valid JSON"
    with pytest.raises(SD15LoadError, match=f"{part}/{name} {expected}.*download the model again"):
        read_sd15_folder(sd15_copy)


def test_truncated_pickle(sd15_copy: Path, tmp_path: Path) -> None:
    text_encoder = sd15_copy / "text_encoder"
    torch.save(load_file(text_encoder / "model.safetensors"), tmp_path / "whole.bin")
    (text_encoder / "model.safetensors").unlink()
    (text_encoder / "pytorch_model.bin").write_bytes((tmp_path / "whole.bin").read_bytes()[:100_000])
    with pytest.raises(SD15LoadError, match=r"pytorch_model.bin is truncated or corrupt .*download the model again"):
        read_sd15_folder(sd15_copy)


# --- weights that do not fit their config (read for ComfyUI, and loaded by diffusers) ----------------------------


def edit_weights(path: Path, change) -> None:
    """Rewrite the safetensors file `path` (a link into the fixture) with `change(weights)` applied."""
    weights = load_file(path)
    change(weights)
    path.unlink()
    save_file(weights, path)


def load_pipeline(folder: Path) -> None:
    load_sd15_pipeline(folder, device="cpu", dtype="fp32")


READERS = {"folder": (read_sd15_folder, SD15LoadError), "pipeline": (load_pipeline, SDPipelineError)}
MISFITS = {
    "missing": ("unet", lambda w: w.pop("conv_in.bias"), r"\(missing: conv_in.bias\)"),
    "unexpected": ("unet", lambda w: w.update({"extra.weight": torch.zeros(1)}), r"\(unexpected: extra.weight\)"),
    "wrong shape": ("unet", lambda w: w.update({"conv_in.weight": torch.zeros(320, 4, 1, 1)}),
                    r"\(wrong shape: conv_in.weight \(320, 4, 1, 1\) \(expected \(320, 4, 3, 3\)\)\)"),
    "text encoder": ("text_encoder", lambda w: w.pop("text_model.final_layer_norm.weight"),
                     r"\(missing: final_layer_norm.weight\)"),
    "vae": ("vae", lambda w: w.pop("decoder.conv_out.bias"), r"\(missing: decoder.conv_out.bias\)"),
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("misfit", MISFITS)
def test_weights_that_do_not_fit_their_config_are_refused(sd15_copy: Path, reader: str, misfit: str) -> None:
    """diffusers loads these silently (random weights), or fails with a meta-tensor error: both readers name the file,
    its config and what differs before anything is loaded."""
    part, change, expected = MISFITS[misfit]
    name = "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
    edit_weights(sd15_copy / part / name, change)
    read, error = READERS[reader]
    with pytest.raises(error, match=f"{part}/{name} does not hold the weights .*{part}/config.json describes "
                                    f"{expected}: the files belong to different models") as caught:
        read(sd15_copy)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("reader", READERS)
def test_a_corrupt_component_config_is_named(sd15_copy: Path, reader: str) -> None:
    edit_json(sd15_copy / "vae" / "config.json", block_out_channels=5)
    read, error = READERS[reader]
    with pytest.raises(error, match=r"vae/config.json does not describe a model \(TypeError: .*download the model"):
        read(sd15_copy)


@pytest.mark.parametrize("path, data, expected", [
    ("scheduler/scheduler_config.json", b"[1, 2]",
     r"scheduler_config.json is not valid JSON for a config \(a JSON list"),
    ("model_index.json", b"{", r"model_index.json is not valid JSON"),
    ("unet/diffusion_pytorch_model.safetensors", None,
     r"unet holds no weights \(looked for diffusion_pytorch_model.safetensors, diffusion_pytorch_model.bin"),
    ("tokenizer/vocab.json", b"not json", r"could not be loaded as an SD1.5 pipeline \(Exception: .*download the model "
                                          r"again or choose another folder$"),
])
def test_pipeline_failures_are_one_sd_pipeline_error(sd15_copy: Path, path: str, data: bytes | None,
                                                     expected: str) -> None:
    """What diffusers' from_pretrained would report as a misleading hub error, an OSError, or tokenizers' bare
    Exception comes out as one SDPipelineError line."""
    if data is None:
        (sd15_copy / path).unlink()
    else:
        replace_file(sd15_copy / path, data)
    with pytest.raises(SDPipelineError, match=expected) as caught:
        load_pipeline(sd15_copy)
    assert "\n" not in str(caught.value)


# --- other model families ---------------------------------------------------------------------------------


@pytest.mark.parametrize("marker", ["addition_embed_type", "cross_attention_dim", "text_encoder_2", "pipeline"])
def test_sdxl_folder_is_named_sdxl(sd15_copy: Path, marker: str) -> None:
    if marker == "addition_embed_type":
        edit_json(sd15_copy / "unet" / "config.json", addition_embed_type="text_time")
    elif marker == "cross_attention_dim":
        edit_json(sd15_copy / "unet" / "config.json", cross_attention_dim=2048)
    elif marker == "text_encoder_2":
        linked_copy(sd15_copy / "text_encoder", sd15_copy / "text_encoder_2")
    else:
        edit_json(sd15_copy / "model_index.json", _class_name="StableDiffusionXLPipeline")
    with pytest.raises(SD15LoadError, match=SDXL_MESSAGE):
        read_sd15_folder(sd15_copy)


def test_sd2_folder_is_named_sd2(sd15_copy: Path) -> None:
    edit_json(sd15_copy / "unet" / "config.json", cross_attention_dim=1024)
    edit_json(sd15_copy / "text_encoder" / "config.json", hidden_size=1024)
    with pytest.raises(SD15LoadError, match="is an SD2 model .* the LLMGA SD1.5 loader takes SD1.5 folders"):
        read_sd15_folder(sd15_copy)


def test_sdxl_weights_behind_an_sd15_config_are_caught(sd15_copy: Path) -> None:
    """The family is checked on the weights too: a config that claims SD1.5 cannot hide 2048-wide cross-attention."""
    unet_file = sd15_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(unet_file)
    for key in [key for key in weights if key.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]:
        weights[key] = torch.zeros(weights[key].shape[0], 2048)
    unet_file.unlink()
    save_file(weights, unet_file)
    with pytest.raises(SD15LoadError, match=SDXL_MESSAGE):
        read_sd15_folder(sd15_copy)


# --- single files -------------------------------------------------------------------------------------------


def header_only_checkpoint(path: Path, family: str) -> Path:
    """A safetensors file with one key of each part of a `family` checkpoint, shaped as in the real ones."""
    context, text_key, text_shape = {
        "sd15": (768, "cond_stage_model.transformer.text_model.final_layer_norm.weight", (768,)),
        "sd2": (1024, "cond_stage_model.model.ln_final.weight", (1024,)),
        "sdxl": (2048, "conditioner.embedders.1.model.ln_final.weight", (1280,)),
        "unet-only": (768, None, None),
    }[family]
    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, context),
        "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3),
    }
    if text_key:
        shapes[text_key] = text_shape
    else:  # a UNet saved on its own, without the prefix
        shapes = {key.removeprefix("model.diffusion_model."): shape for key, shape in shapes.items()
                  if key.startswith("model.")}
    save_file({key: torch.zeros(shape, dtype=torch.float16) for key, shape in shapes.items()}, path)
    return path


def test_single_file_fixtures_pass(sd15_models: SD15Fixtures, tmp_path: Path) -> None:
    check_sd15_single_file(sd15_models.checkpoint)
    check_sd15_single_file(sd15_models.checkpoint_inpainting)
    check_sd15_single_file(header_only_checkpoint(tmp_path / "sd15.safetensors", "sd15"))


@pytest.mark.parametrize("family, message", [
    ("sdxl", SDXL_MESSAGE),
    ("sd2", "is an SD2 model .*; the LLMGA SD1.5 loader takes SD1.5 folders"),
    ("unet-only", r"holds no UNet \(model.diffusion_model.\*\): it is not a full SD1.5 checkpoint"),
])
def test_single_file_of_another_family_is_refused(tmp_path: Path, family: str, message: str) -> None:
    with pytest.raises(SD15LoadError, match=message):
        check_sd15_single_file(header_only_checkpoint(tmp_path / f"{family}.safetensors", family))


def test_truncated_single_file_is_refused(sd15_models: SD15Fixtures, tmp_path: Path) -> None:
    truncated = tmp_path / "tiny-sd15.safetensors"
    with open(sd15_models.checkpoint, "rb") as source:
        truncated.write_bytes(source.read(50_000_000))
    with pytest.raises(SD15LoadError, match="tiny-sd15.safetensors is truncated or not a safetensors file"):
        check_sd15_single_file(truncated)


def test_missing_single_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SD15LoadError, match="does not exist"):
        check_sd15_single_file(tmp_path / "gone.safetensors")


def test_pickled_single_file_is_read_with_weights_only(sd15_models: SD15Fixtures, tmp_path: Path) -> None:
    """A .ckpt is inspected too (mapped, weights only), in the layouts ComfyUI reads: under "state_dict" or bare."""
    state_dict = load_file(sd15_models.checkpoint)
    torch.save({"state_dict": state_dict, "global_step": 470000}, tmp_path / "model.ckpt")
    check_sd15_single_file(tmp_path / "model.ckpt")
    torch.save({key: value for key, value in state_dict.items() if key.startswith("model.")}, tmp_path / "unet.pt")
    with pytest.raises(SD15LoadError, match=r"unet.pt holds no VAE \(first_stage_model.\*\)"):
        check_sd15_single_file(tmp_path / "unet.pt")
    (tmp_path / "model.ckpt").write_bytes(b"not inspected")
    with pytest.raises(SD15LoadError, match="model.ckpt is not a readable weight file"):
        check_sd15_single_file(tmp_path / "model.ckpt")


# --- writing folders -------------------------------------------------------------------------------------


def trained_unet(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state dict) of the folder's UNet with every weight doubled: what a trainer hands the writer."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    return unet.config, {key: value * 2 for key, value in unet.state_dict().items()}


@pytest.mark.parametrize("kind", ["t2i", "inpainting"])
def test_written_folder_reads_back_as_the_base_with_the_new_unet(sd15_models: SD15Fixtures, tmp_path: Path,
                                                                  kind: str) -> None:
    base = sd15_models.diffusers if kind == "t2i" else sd15_models.diffusers_inpainting
    config, state = trained_unet(base)
    output = tmp_path / "out"
    write_sd15_folder(base, output, config, state)
    before, after = read_sd15_folder(base), read_sd15_folder(output)
    assert before.keys() == after.keys()
    for key, value in before.items():
        expected = value.float() * 2 if key.startswith("model.diffusion_model.") else value  # parts copied as stored
        assert after[key].dtype == expected.dtype and torch.equal(after[key], expected), key
    assert unet_channels(output) == unet_channels(base) == (4 if kind == "t2i" else 9)
    assert (output / "model_index.json").read_bytes() == (base / "model_index.json").read_bytes()
    assert not list(output.rglob(".*.tmp"))


def test_written_folder_loads_in_diffusers_and_keeps_what_else_the_folder_holds(sd15_models: SD15Fixtures,
                                                                               tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    config, state = trained_unet(sd15_models.diffusers)
    output = tmp_path / "out"
    (output / "checkpoint-2").mkdir(parents=True)
    (output / "unet").mkdir()
    (output / "unet" / "stale.bin").write_bytes(b"an earlier write")
    write_sd15_folder(sd15_models.diffusers, output, config, state)
    unet = UNet2DConditionModel.from_pretrained(output / "unet")
    assert all(torch.equal(unet.state_dict()[key], value) for key, value in state.items())
    assert (output / "checkpoint-2").is_dir() and not (output / "unet" / "stale.bin").exists()


def test_an_interrupted_write_leaves_no_folder_that_loads(sd15_models: SD15Fixtures, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import UNet2DConditionModel

    config, state = trained_unet(sd15_models.diffusers)
    output = tmp_path / "out"
    write_sd15_folder(sd15_models.diffusers, output, config, state)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(UNet2DConditionModel, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        write_sd15_folder(sd15_models.diffusers, output, config, state)
    with pytest.raises(SD15LoadError, match="has no unet/ folder"):
        read_sd15_folder(output)
    with pytest.raises(SDPipelineError, match="lacks model_index.json, unet"):
        unet_channels(output)
    assert not list(output.rglob(".*.tmp"))
