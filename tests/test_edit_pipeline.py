"""One edit end to end on the tiny diffusers SD1.5 (llmga.edit.run / pipeline), the edit CLI, and bad inputs."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from llmga.cli import main
from llmga.edit.pipeline import controlled_eps_for, edit_image, official_crop, text_binding
from llmga.edit.run import EditSettings, edit_latent, latent_mask_to_image, pad_to_latent_multiple
from llmga.sd.pipelines import load_sd15_pipeline

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
