"""llmga.sd.loading for SDXL: diffusers SDXL folders (text-to-image and the 9-channel inpainting UNet) read as the
SDXL single-file state dict, SDXL single files checked from their headers, one clear line for every model of another
kind (SD1.5 where SDXL is asked and the reverse, an SDXL refiner, SD2, SD3, Flux), and the released SDXL names in
llmga.hub (no network: the hub client is replaced)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fixtures.sd15 import SD15Fixtures
from fixtures.sdxl import SDXLFixtures
from safetensors.torch import load_file

from llmga.hub import (
    HUB_OWNER,
    RELEASED_SD,
    RELEASED_SD15,
    RELEASED_SDXL,
    REVISIONS,
    ModelNotFoundError,
    released_name,
    resolve_model,
)
from llmga.sd.convert import text_encoder_diffusers_to_open_clip, unet_diffusers_to_ldm
from llmga.sd.loading import (
    SDLoadError,
    check_sd15_single_file,
    check_sdxl_single_file,
    check_sdxl_weights,
    read_sd15_folder,
    read_sdxl_folder,
)

SD15_LOADER = "the LLMGA SD1.5 loader takes SD1.5 folders such as llmga-sd15-t2i-v2 and SD1.5 single-file checkpoints"
SDXL_LOADER = "the LLMGA SDXL loader takes SDXL folders such as llmga-sdxl-t2i and SDXL single-file checkpoints"
SDXL_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def linked_copy(source: Path, target: Path) -> Path:
    """A copy of the folder `source` whose files are symlinks; replace a file (unlink, write) before changing it."""
    for file in source.rglob("*"):
        if file.is_file():
            link = target / file.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(file)
    return target


def edit_json(path: Path, **changes) -> None:
    data = {**json.loads(path.read_text()), **changes}
    path.unlink()
    path.write_text(json.dumps(data))


def assert_same_state_dict(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype and torch.equal(actual[key], value), key


def refused(call, *args) -> str:
    """The message of the SDLoadError that `call(*args)` raises, checked to be one line."""
    with pytest.raises(SDLoadError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture
def sdxl_copy(sdxl_models: SDXLFixtures, tmp_path: Path) -> Path:
    return linked_copy(sdxl_models.diffusers, tmp_path / "tiny-sdxl")


# --- reading SDXL models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t2i_state(sdxl_models: SDXLFixtures) -> dict[str, torch.Tensor]:
    return read_sdxl_folder(sdxl_models.diffusers)


def test_folder_gives_its_single_file_twin(sdxl_models: SDXLFixtures, t2i_state: dict[str, torch.Tensor]) -> None:
    assert_same_state_dict(t2i_state, load_file(sdxl_models.checkpoint))
    check_sdxl_single_file(sdxl_models.checkpoint)


def test_inpainting_folder_gives_a_9_channel_unet_and_the_same_other_parts(
        sdxl_models: SDXLFixtures, t2i_state: dict[str, torch.Tensor]) -> None:
    inpainting = read_sdxl_folder(sdxl_models.diffusers_inpainting)
    assert inpainting.keys() == t2i_state.keys()
    assert inpainting["model.diffusion_model.input_blocks.0.0.weight"].shape == (320, 9, 3, 3)
    assert t2i_state["model.diffusion_model.input_blocks.0.0.weight"].shape == (320, 4, 3, 3)
    for key, value in t2i_state.items():
        if not key.startswith("model.diffusion_model."):
            assert torch.equal(inpainting[key], value), key


def test_inpainting_unet_saved_as_a_text_to_image_pipeline_is_read(sdxl_models: SDXLFixtures,
                                                                  tmp_path: Path) -> None:
    """LLMGA's SDXL inpainting training saves its 9-channel UNet with StableDiffusionXLPipeline.save_pretrained."""
    folder = linked_copy(sdxl_models.diffusers_inpainting, tmp_path / "saved-by-training")
    edit_json(folder / "model_index.json", _class_name="StableDiffusionXLPipeline")
    assert read_sdxl_folder(folder)["model.diffusion_model.input_blocks.0.0.weight"].shape == (320, 9, 3, 3)


def test_fp16_variant_files_are_taken(sdxl_copy: Path) -> None:
    """What `from_pretrained(..., variant="fp16")` reads, as the official SDXL CLIs ask for (the SD1.5 tests read
    such files through; here the choice of file for every part, text_encoder_2 included)."""
    for part in SDXL_PARTS:
        for file in (sdxl_copy / part).glob("*.safetensors"):
            file.rename(file.with_name(file.name.replace(".safetensors", ".fp16.safetensors")))
    assert {part: file.name for part, file in check_sdxl_weights(sdxl_copy).items()} == {
        "unet": "diffusion_pytorch_model.fp16.safetensors", "vae": "diffusion_pytorch_model.fp16.safetensors",
        "text_encoder": "model.fp16.safetensors", "text_encoder_2": "model.fp16.safetensors"}


def test_weights_are_checked_against_every_config_text_encoder_2_included(sdxl_copy: Path) -> None:
    assert set(check_sdxl_weights(sdxl_copy)) == set(SDXL_PARTS)
    edit_json(sdxl_copy / "text_encoder_2" / "config.json", num_hidden_layers=31)
    message = refused(read_sdxl_folder, sdxl_copy)
    assert "text_encoder_2/model.safetensors does not hold the weights" in message
    assert "text_encoder_2/config.json describes" in message and "download the model again" in message


def test_truncated_text_encoder_2_is_named(sdxl_copy: Path) -> None:
    weights = sdxl_copy / "text_encoder_2" / "model.safetensors"
    data = weights.read_bytes()[:1_000_000]
    weights.unlink()
    weights.write_bytes(data)
    assert "text_encoder_2/model.safetensors is truncated or not a safetensors file" in refused(
        read_sdxl_folder, sdxl_copy)


def test_folder_without_the_second_text_encoder_is_named(sdxl_copy: Path) -> None:
    shutil.rmtree(sdxl_copy / "text_encoder_2")
    message = refused(read_sdxl_folder, sdxl_copy)
    assert message.startswith(f"{sdxl_copy} has no text_encoder_2/ folder: a diffusers SDXL folder holds unet/, vae/, "
                              "text_encoder/, text_encoder_2/")


def test_missing_folder_names_what_an_sdxl_folder_holds(tmp_path: Path) -> None:
    assert refused(read_sdxl_folder, tmp_path / "nowhere") == (
        f"{tmp_path / 'nowhere'} is not a folder: give a diffusers SDXL folder (model_index.json, unet/, vae/, "
        "text_encoder/, text_encoder_2/) such as models/diffusers/llmga-sdxl-t2i")


# --- models of another kind --------------------------------------------------------------------------------


def test_sd15_models_are_refused_by_the_sdxl_reader_and_named(sd15_models: SD15Fixtures) -> None:
    for call, model in ((read_sdxl_folder, sd15_models.diffusers), (read_sdxl_folder, sd15_models.diffusers_inpainting),
                        (check_sdxl_single_file, sd15_models.checkpoint)):
        assert refused(call, model) == f"{model} is an SD1.5 model; {SDXL_LOADER}: it loads as SD1.5 (LLMGA Load SD1.5)"


def test_sdxl_models_are_refused_by_the_sd15_reader_and_named(sdxl_models: SDXLFixtures) -> None:
    for call, model in ((read_sd15_folder, sdxl_models.diffusers), (read_sd15_folder, sdxl_models.diffusers_inpainting),
                        (check_sd15_single_file, sdxl_models.checkpoint)):
        assert refused(call, model) == f"{model} is an SDXL model; {SD15_LOADER}: it loads as SDXL (LLMGA Load SDXL)"


OTHER_KINDS = {
    "refiner": ("is an SDXL refiner (it refines the latents of an SDXL base model; it does not draw from a prompt)",
                "load it with ComfyUI's Load Checkpoint to refine an SDXL base model's latents, and choose an SDXL "
                "base model such as llmga-sdxl-t2i here"),
    "sd2": ("is an SD2 model (OpenCLIP ViT-H text encoder)", None),
    "sd3": ("is an SD3 model (MMDiT)", None),
    "flux": ("is a Flux model", None),
}
OTHER_SD = "LLMGA's SD models are SD1.5 and SDXL, so load this one with ComfyUI's own Load Checkpoint"


@pytest.mark.parametrize("kind", OTHER_KINDS)
@pytest.mark.parametrize("check, loader", [(check_sdxl_single_file, SDXL_LOADER),
                                           (check_sd15_single_file, SD15_LOADER)])
def test_single_files_of_other_kinds_are_named_with_what_to_do(sdxl_models: SDXLFixtures, kind: str, check,
                                                               loader: str) -> None:
    path = getattr(sdxl_models, kind)
    what, advice = OTHER_KINDS[kind]
    assert refused(check, path) == f"{path} {what}; {loader}: {advice or OTHER_SD}"


def test_refiner_folder_is_named_from_its_unet_config_alone(sdxl_copy: Path) -> None:
    """stabilityai's refiner folder: OpenCLIP ViT-bigG only (no text_encoder/), 1280-wide cross-attention, size
    embedding of 2560; refused before any weights are opened (these are an SDXL base's and would not fit)."""
    shutil.rmtree(sdxl_copy / "text_encoder")
    edit_json(sdxl_copy / "model_index.json", _class_name="StableDiffusionXLImg2ImgPipeline")
    edit_json(sdxl_copy / "unet" / "config.json", cross_attention_dim=1280, projection_class_embeddings_input_dim=2560)
    assert refused(read_sdxl_folder, sdxl_copy).startswith(f"{sdxl_copy} {OTHER_KINDS['refiner'][0]}; {SDXL_LOADER}")


def test_sd15_folder_is_named_before_its_weights_are_read(sd15_models: SD15Fixtures, tmp_path: Path) -> None:
    folder = linked_copy(sd15_models.diffusers, tmp_path / "sd15-without-weights")
    for part in ("unet", "vae", "text_encoder"):
        for file in (folder / part).glob("*.safetensors"):
            file.unlink()
    assert " is an SD1.5 model; " in refused(read_sdxl_folder, folder)


def test_sd2_folder_is_named_sd2_by_the_sdxl_reader(sd15_models: SD15Fixtures, tmp_path: Path) -> None:
    folder = linked_copy(sd15_models.diffusers, tmp_path / "sd2-like")
    edit_json(folder / "unet" / "config.json", cross_attention_dim=1024)
    assert refused(read_sdxl_folder, folder).startswith(f"{folder} is an SD2 model (cross-attention width 1024")


def test_sdxl_file_without_its_text_encoders_is_not_a_full_checkpoint(sdxl_models: SDXLFixtures,
                                                                      tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(sdxl_models.checkpoint), "pt") as file:
        unet_and_vae = {key: file.get_tensor(key) for key in file.keys() if not key.startswith("conditioner.")}
    save_file(unet_and_vae, tmp_path / "no-text.safetensors")
    assert refused(check_sdxl_single_file, tmp_path / "no-text.safetensors").startswith(
        f"{tmp_path / 'no-text.safetensors'} holds no CLIP ViT-L text encoder "
        "(conditioner.embedders.0.transformer.text_model.*): it is not a full SDXL checkpoint")


# --- converters --------------------------------------------------------------------------------------------


def test_open_clip_conversion_stacks_attention_and_transposes_the_projection() -> None:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=50, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=6)
    state = CLIPTextModelWithProjection(config).state_dict()
    open_clip = text_encoder_diffusers_to_open_clip(state)
    layer = "text_model.encoder.layers.1.self_attn."
    assert torch.equal(open_clip["transformer.resblocks.1.attn.in_proj_weight"],
                       torch.cat([state[layer + "q_proj.weight"], state[layer + "k_proj.weight"],
                                  state[layer + "v_proj.weight"]]))
    assert torch.equal(open_clip["text_projection"], state["text_projection.weight"].t())
    assert open_clip["positional_embedding"].shape == (77, 8) and "ln_final.weight" in open_clip
    assert len(open_clip) == len(state) - 2 * 2 * 2  # q, k, v (weight and bias) become one stacked pair per layer
    with pytest.raises(KeyError, match="logit_scale"):
        text_encoder_diffusers_to_open_clip({**state, "logit_scale": torch.zeros(())})


def test_the_size_embedding_converts_only_for_an_sdxl_config(sdxl_models: SDXLFixtures) -> None:
    config = json.loads((sdxl_models.diffusers / "unet" / "config.json").read_text())
    weights = {"add_embedding.linear_1.weight": torch.zeros(1), "add_embedding.linear_2.bias": torch.zeros(1)}
    assert set(unet_diffusers_to_ldm(weights, config)) == {"label_emb.0.0.weight", "label_emb.0.2.bias"}
    with pytest.raises(KeyError, match="add_embedding"):
        unet_diffusers_to_ldm(weights, {**config, "addition_embed_type": None})


# --- released names ----------------------------------------------------------------------------------------


def test_released_sdxl_names_are_listed_and_matched() -> None:
    assert RELEASED_SDXL == ("llmga-sdxl-t2i", "llmga-sdxl-inpainting-v2")
    assert RELEASED_SD == RELEASED_SD15 + RELEASED_SDXL
    assert released_name("binxia/llmga-sdxl-t2i") == "llmga-sdxl-t2i"
    assert released_name("LLMGA-SDXL-INPAINTING-V2") == "llmga-sdxl-inpainting-v2"
    assert {f"{HUB_OWNER}/{name}" for name in RELEASED_SDXL} <= set(REVISIONS)


@pytest.mark.parametrize("layout", ["llmga-sdxl-t2i", "binxia--llmga-sdxl-t2i", "binxia/llmga-sdxl-t2i"])
def test_a_local_copy_of_a_released_sdxl_model_is_found_first(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "diffusers" / layout
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    assert resolve_model("binxia/llmga-sdxl-t2i", [tmp_path / "diffusers"], allow_paths=False) == folder


def test_a_missing_released_sdxl_model_offline_names_the_folders_and_its_files(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model("binxia/llmga-sdxl-inpainting-v2", [tmp_path / "diffusers"], allow_paths=False)
    assert str(caught.value) == (
        f"binxia/llmga-sdxl-inpainting-v2 is not downloaded (downloads are off). Searched "
        f"{[str(tmp_path / 'diffusers')]} for a folder named 'llmga-sdxl-inpainting-v2' holding model_index.json, "
        "unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/. Download it "
        "(huggingface-cli download binxia/llmga-sdxl-inpainting-v2 --revision "
        "ca4fe1734170820f99f5e13c94b5dee72872a3dd --local-dir <models>/diffusers/llmga-sdxl-inpainting-v2) or "
        "allow downloads.")


def test_a_released_sdxl_model_is_downloaded_with_both_text_encoders(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    calls = []

    def snapshot_download(repo, **options):
        calls.append((repo, options))
        return str(options["local_dir"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in RELEASED_SDXL:
        assert resolve_model(f"binxia/{name}", [tmp_path / "diffusers"], allow_download=True,
                             allow_paths=False) == tmp_path / "diffusers" / name
    patterns = ["model_index.json", "unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*",
                "text_encoder_2/*", "tokenizer_2/*"]
    assert calls == [
        ("binxia/llmga-sdxl-t2i", {"revision": None, "local_dir": tmp_path / "diffusers" / "llmga-sdxl-t2i",
                                   "allow_patterns": patterns}),
        ("binxia/llmga-sdxl-inpainting-v2", {"revision": "ca4fe1734170820f99f5e13c94b5dee72872a3dd",
                                             "local_dir": tmp_path / "diffusers" / "llmga-sdxl-inpainting-v2",
                                             "allow_patterns": patterns})]
