"""One edit end to end on the tiny diffusers SD1.5 (llmga.edit.run / pipeline), the edit CLI, and bad inputs."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_long_prompt import ref_weighted_embeddings

from llmga.cli import main
from llmga.edit.ddpm import ddpm_inversion_edit
from llmga.edit.official import official_ddpm_contexts
from llmga.edit.pipeline import controlled_eps_for, edit_image, encode_image, official_crop, text_binding
from llmga.edit.run import EditSettings, edit_latent, latent_mask_to_image, pad_to_latent_multiple
from llmga.sd.convert import vae_diffusers_to_ldm
from llmga.sd.pipelines import SDPipelineError, load_sd15_pipeline, load_vae

SOURCE = "a photo of a cat sitting on a wooden bench in a park, " * 6  # > 77 tokens: two chunks
TARGET = "a photo of a dog sitting on a wooden bench in a park, " * 6


@pytest.fixture(scope="module")
def pipe(sd15_models):
    return load_sd15_pipeline(sd15_models.diffusers, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (44, 61, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def counting(pipe):
    """controlled_eps for the pipeline's UNet, counting UNet calls and their batch sizes."""
    calls: list[int] = []
    inner = controlled_eps_for(pipe.unet)

    @contextmanager
    def controlled_eps(control):
        with inner(control) as eps:
            def counted(latents, t, context):
                calls.append(latents.shape[0])
                return eps(latents, t, context)

            yield counted

    return controlled_eps, calls


@pytest.mark.parametrize("blend", [None, (("cat",), ("dog",)), "auto"])
def test_direct_inversion_p2p_edits_with_one_batched_unet_call_per_step(pipe, blend) -> None:
    x0 = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    controlled_eps, calls = counting(pipe)
    settings = EditSettings(steps=4, blend_words=blend, blend_start=0.0)
    result = edit_latent(x0, SOURCE, TARGET, text=text_binding(pipe), controlled_eps=controlled_eps,
                         settings=settings)
    assert calls == [1] * 4 + [3] * 4  # inversion (source only), then [uncond, source, target] per step
    assert result.latent.shape == x0.shape and not result.unchanged
    assert (result.latent - x0).abs().max() > 1e-3
    assert result.mask.shape == (1, 1, 6, 8)
    assert set(result.mask.unique().tolist()) <= {0.0, 1.0}
    if blend is None:
        assert torch.equal(result.mask, torch.ones(1, 1, 6, 8))


def test_ddpm_inversion_edits_and_returns_the_diffedit_mask(pipe) -> None:
    x0 = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    controlled_eps, calls = counting(pipe)
    settings = EditSettings(method="ddpm_inversion", steps=4, seed=5)
    result = edit_latent(x0, SOURCE, TARGET, text=text_binding(pipe), controlled_eps=controlled_eps,
                         settings=settings)
    again = edit_latent(x0, SOURCE, TARGET, text=text_binding(pipe), controlled_eps=controlled_eps_for(pipe.unet),
                        settings=settings)
    assert calls[1:] == [2] * 8  # after the mask call: inversion and sampling, [uncond, cond] per step
    assert torch.equal(result.latent, again.latent)  # seeded
    assert result.mask.shape == (1, 1, 6, 8) and set(result.mask.unique().tolist()) <= {0.0, 1.0}


# --- official mode ----------------------------------------------------------------------------------------------


def ref_encode_text(pipe, prompt: str) -> torch.Tensor:
    """The official pipeline's `encode_text`: padded to 77 without truncation, then cut to the first 77 ids."""
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids[:, :77]
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def test_official_ddpm_encodes_each_phase_as_the_official_pipeline(pipe) -> None:
    contexts, warnings = official_ddpm_contexts(SOURCE, TARGET, text_binding(pipe))
    source_ids = pipe.tokenizer(SOURCE).input_ids
    assert len(source_ids) - 2 > 76  # the inversion keeps BOS + 76 tokens: no end token
    torch.testing.assert_close(contexts.inversion_source, ref_encode_text(pipe, SOURCE), rtol=0, atol=1e-5)
    torch.testing.assert_close(contexts.inversion_uncond, ref_encode_text(pipe, ""), rtol=0, atol=1e-5)
    mask_source, mask_target = ref_weighted_embeddings(pipe.tokenizer, pipe.text_encoder, SOURCE, TARGET, 3)
    target, target_uncond = ref_weighted_embeddings(pipe.tokenizer, pipe.text_encoder, TARGET, "", 4)
    for ours, expected in ((contexts.mask_source, mask_source), (contexts.mask_target, mask_target),
                           (contexts.target, target), (contexts.target_uncond, target_uncond)):
        assert ours.shape == expected.shape == (1, 154, 768)  # lpw: 77 per chunk, BOS/EOS kept
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert warnings == [f"inversion: source prompt: dropped {len(source_ids) - 2 - 76} tokens past the 76-token "
                        "limit"]


def test_official_ddpm_edit_is_the_official_composition(pipe) -> None:
    """edit_latent(official): the per-phase contexts, the posterior std for the mask, the official last step."""
    x0 = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    std = 0.1 * torch.rand(1, 4, 6, 8, generator=torch.Generator().manual_seed(1))
    settings = EditSettings(method="ddpm_inversion", steps=3, seed=2, official=True)
    result = edit_latent(x0, SOURCE, TARGET, text=text_binding(pipe), controlled_eps=controlled_eps_for(pipe.unet),
                         settings=settings, x0_std=std)
    contexts, warnings = official_ddpm_contexts(SOURCE, TARGET, text_binding(pipe))
    with controlled_eps_for(pipe.unet)(None) as eps:
        expected, mask = ddpm_inversion_edit(x0, contexts, eps, steps=3, generator=torch.Generator().manual_seed(2),
                                             x0_std=std, official_last_step=True)
    assert torch.equal(result.latent, expected) and torch.equal(result.mask, mask) and result.warnings == warnings
    default = EditSettings(method="ddpm_inversion", steps=3, seed=2)
    ignored = edit_latent(x0, SOURCE, TARGET, text=text_binding(pipe), controlled_eps=controlled_eps_for(pipe.unet),
                          settings=default, x0_std=std)
    plain = edit_latent(x0, SOURCE, TARGET, text=text_binding(pipe), controlled_eps=controlled_eps_for(pipe.unet),
                        settings=default)
    assert torch.equal(ignored.latent, plain.latent)  # the default path edits from the posterior mean alone
    assert not torch.equal(plain.latent, result.latent)


def test_official_p2p_cuts_the_prompts_to_77_tokens(pipe) -> None:
    """PnPInversion tokenizes with truncation to 77 ids: T = 77, and what is cut is said."""
    x0 = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    lengths: list[int] = []
    inner = controlled_eps_for(pipe.unet)

    @contextmanager
    def recording(control):
        with inner(control) as eps:
            yield lambda latents, t, context: lengths.append(context.shape[1]) or eps(latents, t, context)

    result = edit_latent(x0, SOURCE, TARGET, text=text_binding(pipe), controlled_eps=recording,
                         settings=EditSettings(steps=2, official=True))
    dropped = len(pipe.tokenizer(SOURCE).input_ids) - 2 - 75
    assert set(lengths) == {77}
    assert result.warnings == [f"{role} prompt: dropped {dropped} tokens past the 75-token limit"
                               for role in ("source", "target")]


def test_encode_image_gives_the_posterior_mean_and_std(pipe, picture) -> None:
    padded, _ = pad_to_latent_multiple(torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255)[None])
    mean, std = encode_image(pipe.vae, padded)
    with torch.no_grad():
        posterior = pipe.vae.encode(padded.movedim(-1, 1) * 2 - 1).latent_dist
    torch.testing.assert_close(mean, posterior.mean * 0.18215)
    torch.testing.assert_close(std, posterior.std * 0.18215)


@pytest.fixture(scope="module")
def other_vae(pipe, tmp_path_factory):
    """The fixture VAE with every weight shifted, in the three layouts a user may have: a diffusers folder (as
    stabilityai/sd-vae-ft-mse), a single safetensors file and a .ckpt wrapping its state dict (as the -original
    release); returns (folder, safetensors file, ckpt file, state dict)."""
    root = tmp_path_factory.mktemp("vae")
    state = {key: value + 0.01 for key, value in pipe.vae.state_dict().items()}
    vae = type(pipe.vae).from_config(pipe.vae.config)
    vae.load_state_dict(state)
    vae.save_pretrained(root / "sd-vae-ft-mse")
    single = {key: value.contiguous() for key, value in vae_diffusers_to_ldm(state).items()}
    save_file(single, root / "vae-ft-mse-840000-ema-pruned.safetensors")
    torch.save({"state_dict": single}, root / "vae-ft-mse-840000-ema-pruned.ckpt")
    return root / "sd-vae-ft-mse", root / "vae-ft-mse-840000-ema-pruned.safetensors", \
        root / "vae-ft-mse-840000-ema-pruned.ckpt", state


@pytest.mark.parametrize("layout", [0, 1, 2])
def test_load_vae_reads_each_layout(pipe, sd15_models, other_vae, layout) -> None:
    vae = load_vae(other_vae[layout], sd15_models.diffusers, pipe)
    loaded = vae.state_dict()
    assert vae.dtype == pipe.vae.dtype and set(loaded) == set(other_vae[3])
    assert all(torch.allclose(loaded[key], value, rtol=0, atol=1e-6) for key, value in other_vae[3].items())


def test_load_vae_refuses_what_is_no_sd15_vae(pipe, sd15_models, tmp_path) -> None:
    save_file({"weight": torch.zeros(2, 2)}, tmp_path / "odd.safetensors")
    with pytest.raises(SDPipelineError, match="odd.safetensors could not be loaded as an SD1.5 VAE"):
        load_vae(tmp_path / "odd.safetensors", sd15_models.diffusers, pipe)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(SDPipelineError, match="empty.safetensors is empty"):
        load_vae(tmp_path / "empty.safetensors", sd15_models.diffusers, pipe)


def test_target_equal_to_source_returns_the_input_without_running_the_unet(pipe) -> None:
    x0 = torch.randn(1, 4, 6, 8)
    controlled_eps, calls = counting(pipe)
    result = edit_latent(x0, SOURCE, "  " + SOURCE.replace(", ", ",  "), text=text_binding(pipe),
                         controlled_eps=controlled_eps, settings=EditSettings(steps=50))
    assert result.unchanged and result.latent is x0 and calls == []
    assert result.mask.max() == 0


@pytest.mark.parametrize(("source", "target", "x0_shape", "settings", "message"), [
    (SOURCE, "   ", (1, 4, 6, 8), {}, "the target prompt is empty"),
    (SOURCE, TARGET, (2, 4, 6, 8), {}, "edit one SD1.5 latent at a time"),
    (SOURCE, TARGET, (1, 9, 6, 8), {}, "edit one SD1.5 latent at a time"),
    (SOURCE, TARGET, (1, 4, 6, 8), {"method": "magic"}, "choose one of direct_inversion_p2p, ddpm_inversion"),
    (SOURCE, TARGET, (1, 4, 6, 8), {"skip": 100}, "skip is 100"),
    (SOURCE, TARGET, (1, 4, 6, 8), {"blend_words": "everything"}, "or 'auto'"),
    ("a cat", "a small dog", (1, 4, 6, 8), {"controller": "replace"}, "refine"),
    (SOURCE, TARGET, (1, 4, 6, 8), {"blend_words": (("unicorn",), ("dog",))}, "unicorn"),
])
def test_bad_edit_inputs_raise_clear_errors(pipe, source, target, x0_shape, settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        edit_latent(torch.zeros(x0_shape), source, target, text=text_binding(pipe),
                    controlled_eps=controlled_eps_for(pipe.unet), settings=EditSettings(steps=2, **settings))


def test_edit_image_pads_sizes_that_are_not_multiples_of_8_and_crops_back(pipe, picture) -> None:
    edited, mask, result = edit_image(pipe, picture, SOURCE, TARGET, EditSettings(steps=2))
    assert edited.size == picture.size == mask.size
    assert result.latent.shape == (1, 4, 6, 8)  # 44x61 padded to 48x64
    same, _, unchanged = edit_image(pipe, picture, SOURCE, SOURCE, EditSettings(steps=2))
    assert unchanged.unchanged and np.array_equal(np.asarray(same), np.asarray(picture))


def test_padding_replicates_edges_and_masks_crop_back() -> None:
    image = torch.rand(2, 13, 17, 3)
    padded, size = pad_to_latent_multiple(image)
    assert padded.shape == (2, 16, 24, 3) and size == (13, 17)
    assert torch.equal(padded[:, :13, :17], image) and torch.equal(padded[:, 15, :17], image[:, 12])
    mask = latent_mask_to_image(torch.tensor([[[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]]]), size)
    assert mask.shape == (1, 13, 17) and mask[0, 0, 0] == 1 and mask[0, 0, 8] == 0 and mask[0, 12, 8] == 1


def test_official_crop_takes_the_centre_square_at_512() -> None:
    image = Image.new("RGB", (300, 200))
    image.paste((255, 0, 0), (0, 0, 50, 200))  # left strip outside the centre square
    cropped = official_crop(image)
    assert cropped.size == (512, 512)
    assert np.asarray(cropped)[:, :, 0].max() == 0


def test_edit_cli_with_given_prompts_writes_the_image_mask_and_metadata(sd15_models, picture, tmp_path) -> None:
    source_file = tmp_path / "in.png"
    picture.save(source_file)
    out = tmp_path / "edited.png"
    code = main(["edit", "--image", str(source_file), "--sd", str(sd15_models.diffusers), "--source-prompt", SOURCE,
                 "--target-prompt", TARGET, "--steps", "2", "--no-crop", "--device", "cpu", "--dtype", "fp32",
                 "--seed", "3", "--out", str(out), "--blend", "cat", "dog"])
    assert code == 0
    edited = Image.open(out)
    assert edited.size == picture.size
    assert edited.text["llmga_prompt"] == TARGET and edited.text["llmga_source_prompt"] == SOURCE
    assert Image.open(tmp_path / "edited-mask.png").size == picture.size


def test_edit_cli_refuses_missing_prompts_and_models(sd15_models, picture, tmp_path, capsys) -> None:
    source_file = tmp_path / "in.png"
    picture.save(source_file)
    assert main(["edit", "--image", str(source_file), "--sd", str(sd15_models.diffusers), "make it winter"]) == 2
    assert "give --mllm" in capsys.readouterr().err
    assert main(["edit", "--image", str(tmp_path / "missing.png"), "--source-prompt", "a", "--target-prompt",
                 "b"]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err


def test_edit_cli_asks_the_assistant_for_both_prompts_in_two_turns(sd15_models, mllm_checkpoints, picture, tmp_path,
                                                                   capsys) -> None:
    """The official flow: turn 0 'Generate a similar image' with the picture, turn 1 the bare instruction."""
    source_file = tmp_path / "in.png"
    picture.save(source_file)
    out = tmp_path / "edited.png"
    code = main(["edit", "--image", str(source_file), "--mllm", str(mllm_checkpoints["qwen2"].path), "--sd",
                 str(sd15_models.diffusers), "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--temperature",
                 "1", "--max-new-tokens", "6", "--seed", "1", "--out", str(out), "make it winter"])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.out + captured.err[-300:]
    assert printed.count("LLMGA: ") == 2 and "Source prompt: " in printed and "Target prompt: " in printed
    edited = Image.open(out)
    assert edited.size == (512, 512)  # the official centre crop to 512x512
    settings = json.loads(edited.text["llmga_settings"])
    assert len(settings["replies"]) == 2 and settings["instruction"] == "make it winter"


def test_edit_cli_says_so_when_the_assistant_gives_no_target_prompt(sd15_models, mllm_checkpoints, picture, tmp_path,
                                                                    capsys) -> None:
    source_file = tmp_path / "in.png"
    picture.save(source_file)
    # Greedy decoding of the random-weight assistant replies with whitespace only.
    code = main(["edit", "--image", str(source_file), "--mllm", str(mllm_checkpoints["qwen2"].path), "--sd",
                 str(sd15_models.diffusers), "--device", "cpu", "--dtype", "fp32", "--temperature", "0",
                 "--max-new-tokens", "4", "--out", str(tmp_path), "make it winter"])
    assert code == 2
    assert "the assistant's reply to the instruction is empty" in capsys.readouterr().err
    assert not list(tmp_path.glob("edit-*.png"))


@pytest.mark.parametrize("option", [["--encoding", "lpw"], ["--no-crop"]])
def test_edit_cli_official_refuses_what_it_fixes(sd15_models, picture, tmp_path, capsys, option) -> None:
    picture.save(tmp_path / "in.png")
    assert main(["edit", "--official", *option, "--image", str(tmp_path / "in.png"), "--sd",
                 str(sd15_models.diffusers), "--source-prompt", "a cat", "--target-prompt", "a dog", "--out",
                 str(tmp_path / "out.png")]) == 2
    assert f"--official edits as the reference code, which fixes what {option[0]} sets" in capsys.readouterr().err


def test_edit_cli_official_ddpm_says_when_sd_vae_ft_mse_is_missing(picture, tmp_path, capsys) -> None:
    picture.save(tmp_path / "in.png")
    (tmp_path / "models" / "vae").mkdir(parents=True)
    assert main(["edit", "--official", "--method", "ddpm_inversion", "--image", str(tmp_path / "in.png"),
                 "--models-dir", str(tmp_path / "models"), "--sd", "absent", "--source-prompt", "a cat",
                 "--target-prompt", "a dog"]) == 2
    error = capsys.readouterr().err
    assert "note: the official editing decodes with stabilityai/sd-vae-ft-mse, which is not in" in error
    assert "using the model's own VAE" in error and "error: model 'absent'" in error


def test_edit_cli_vae_names_a_missing_file(picture, tmp_path, capsys) -> None:
    picture.save(tmp_path / "in.png")
    assert main(["edit", "--vae", "nowhere.safetensors", "--image", str(tmp_path / "in.png"), "--models-dir",
                 str(tmp_path), "--source-prompt", "a cat", "--target-prompt", "a dog"]) == 2
    assert "--vae nowhere.safetensors is neither a file or folder nor in" in capsys.readouterr().err


def test_edit_cli_official_crops_to_512_and_swaps_in_the_vae(sd15_models, picture, other_vae, tmp_path,
                                                             monkeypatch) -> None:
    """The CLI's wiring, with the edit itself stood in for (edit_latent's official path is tested above)."""
    import llmga.edit.pipeline as edit_pipeline

    calls: list = []

    def recording_edit(pipe, image, source, target, settings, on_step=None):
        calls.append((pipe.vae.state_dict(), image.size, settings))
        return image, Image.new("L", image.size), type("Result", (), {"unchanged": False})()

    monkeypatch.setattr(edit_pipeline, "edit_image", recording_edit)
    (tmp_path / "models" / "vae").mkdir(parents=True)
    (tmp_path / "models" / "vae" / other_vae[1].name).symlink_to(other_vae[1])
    picture.save(tmp_path / "in.png")
    out = tmp_path / "edited.png"
    assert main(["edit", "--official", "--method", "ddpm_inversion", "--models-dir", str(tmp_path / "models"),
                 "--image", str(tmp_path / "in.png"), "--sd", str(sd15_models.diffusers), "--source-prompt", SOURCE,
                 "--target-prompt", TARGET, "--device", "cpu", "--dtype", "fp32", "--out", str(out)]) == 0
    ((vae_weights, size, settings),) = calls
    assert size == (512, 512) and settings.official and settings.method == "ddpm_inversion"
    assert all(torch.allclose(vae_weights[key], value, atol=1e-6) for key, value in other_vae[3].items())
    recorded = json.loads(Image.open(out).text["llmga_settings"])
    assert (recorded["official"], recorded["encoding"], recorded["vae"]) == (True, "official", other_vae[1].name)
