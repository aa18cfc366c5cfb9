"""The assistant against an independent reference: transformers' `LlavaForConditionalGeneration` built from the
same official-format weights (keys mapped as HF's LLaVA conversion does), fed the official image placement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

from llmga.mllm.chat import Assistant, GenerationSettings, tokenize_with_image
from llmga.mllm.checkpoint import read_checkpoint
from llmga.mllm.loader import load_llmga
from llmga.mllm.model import IMAGE_TOKEN_INDEX
from llmga.mllm.preprocess import black_out_mask, pixel_values

FAMILIES = ("vicuna", "llama2", "llama3", "mistral", "qwen2", "phi3", "gemma")
EXPECTED_TEMPLATE = {"vicuna": "llava_v1", "llama2": "llava_llama_2", "llama3": "llama_3",
                     "mistral": "mistral_instruct", "qwen2": "qwen_2", "phi3": "phi_3", "gemma": "gemma"}


def sample_picture():
    """A non-square picture with structure, so stretching and resampling matter."""
    x = torch.linspace(0, 1, 200)
    y = torch.linspace(0, 1, 120)
    red = (x[None, :] * 255).expand(120, 200)
    green = (y[:, None] * 255).expand(120, 200)
    blue = ((x[None, :] * 7).sin().abs() * (y[:, None] * 5).cos().abs() * 255)
    array = torch.stack([red, green, blue], dim=-1).round().to(torch.uint8).numpy()
    return Image.fromarray(array)


def reference_pixels(image: Image.Image, vision_tower) -> torch.Tensor:
    """The official CLI's preprocessing: PIL ANTIALIAS stretch to the longer side, then CLIPImageProcessor."""
    side = max(image.size)
    square = image.resize((side, side), Image.Resampling.LANCZOS)
    processor = CLIPImageProcessorPil.from_pretrained(vision_tower)
    return processor(images=square, return_tensors="pt")["pixel_values"][0]


def reference_llava(checkpoint_path, vision_tower_path, image_token_id: int) -> LlavaForConditionalGeneration:
    """HF LLaVA from the official weights: LLaVA config rebuilt, keys renamed as convert_llava_weights_to_hf."""
    checkpoint = read_checkpoint(checkpoint_path)
    text_config = checkpoint.base_config()
    config = LlavaConfig(text_config=text_config.to_dict(),
                         vision_config=CLIPVisionConfig.from_pretrained(vision_tower_path).to_dict(),
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", image_token_index=image_token_id, image_seq_length=576,
                         tie_word_embeddings=text_config.tie_word_embeddings)
    model = LlavaForConditionalGeneration(config).float().eval()
    renamed = {}
    # transformers >= 5 keeps no `vision_model.` level inside LLaVA's vision tower; older versions do.
    nested = any(k.startswith("model.vision_tower.vision_model.") for k in model.state_dict())
    for key, tensor in checkpoint.tensors():
        if key.startswith("model.vision_tower.vision_tower."):
            rest = key.removeprefix("model.vision_tower.vision_tower.")
            renamed["model.vision_tower." + (rest if nested else rest.removeprefix("vision_model."))] = tensor
        elif key.startswith("model.mm_projector."):
            layer = {"0": "linear_1", "2": "linear_2"}[key.split(".")[2]]
            renamed[f"model.multi_modal_projector.{layer}.{key.split('.')[-1]}"] = tensor
        elif key.startswith("model."):
            renamed["model.language_model." + key.removeprefix("model.")] = tensor
        else:
            renamed[key] = tensor
    result = model.load_state_dict({k: v.float() for k, v in renamed.items()}, strict=False)
    allowed = {"lm_head.weight"} if text_config.tie_word_embeddings else set()
    assert set(result.missing_keys) <= allowed, result.missing_keys
    assert not [k for k in result.unexpected_keys if not k.endswith("position_ids")], result.unexpected_keys
    if text_config.tie_word_embeddings:
        model.tie_weights()
    scale = getattr(model.get_input_embeddings(), "embed_scale", None)
    if scale is not None:
        # Gemma scales inputs_embeds by sqrt(hidden). The official code (transformers 4) scaled the image features
        # too; transformers 5's LLaVA splices them after the scaling. Scaling the projector output restores the
        # official behaviour in the reference.
        with torch.no_grad():
            model.model.multi_modal_projector.linear_2.weight.mul_(scale)
            model.model.multi_modal_projector.linear_2.bias.mul_(scale)
    return model


@pytest.fixture(scope="module")
def loaded(mllm_checkpoints):
    return {family: load_llmga(fixture.path, dtype="fp32", device="cpu")
            for family, fixture in mllm_checkpoints.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_loads_with_its_template(loaded, family):
    assistant = Assistant(loaded[family])
    assert assistant.template.name == EXPECTED_TEMPLATE[family]


def test_preprocessing_matches_the_official_pipeline(mllm_checkpoints):
    vision_tower = next(iter(mllm_checkpoints.values())).vision_tower
    image = sample_picture()
    ours = pixel_values(image)
    reference = reference_pixels(image, vision_tower)
    assert ours.shape == reference.shape == (3, 336, 336)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_masked_pixels_are_black_and_the_rest_untouched():
    image = sample_picture()
    mask = torch.zeros(120, 200)
    mask[30:90, 50:150] = 1.0
    masked = torch.from_numpy(np.array(black_out_mask(image, mask.numpy())))
    original = torch.from_numpy(np.array(image))
    assert (masked[30:90, 50:150] == 0).all()
    assert torch.equal(masked[mask == 0], original[mask == 0])


def official_tokens(prompt: str, tokenizer) -> list[int]:
    """llava/mm_utils.py tokenizer_image_token, written out again for the comparison."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    keep_bos = bool(chunks[0]) and chunks[0][0] == tokenizer.bos_token_id
    ids = [chunks[0][0]] if keep_bos else []
    for i, chunk in enumerate(chunks):
        ids += ([IMAGE_TOKEN_INDEX] if i else []) + chunk[1 if keep_bos else 0:]
    return ids


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_hf_llava_reference(loaded, mllm_checkpoints, family):
    fixture = mllm_checkpoints[family]
    assistant = Assistant(loaded[family])
    prompt = assistant.template.render([("<image>\nRecreate the given image.", None)])
    ids = tokenize_with_image(prompt, assistant.tokenizer)
    assert ids == official_tokens(prompt, assistant.tokenizer)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1

    pixels = pixel_values(sample_picture())
    model = loaded[family].model
    with torch.no_grad():
        ours = model.language_model(inputs_embeds=model.embed(ids, model.encode_images(pixels[None]))).logits

    image_token_id = next(i for i in range(5, 100) if i not in ids)  # any id the text does not use
    reference = reference_llava(fixture.path, fixture.vision_tower, image_token_id)
    expanded = []
    for token in ids:
        expanded += [image_token_id] * 576 if token == IMAGE_TOKEN_INDEX else [token]
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor([expanded]), pixel_values=pixels[None]).logits
    # The official loader shrinks padded embedding rows to len(tokenizer), as ours does; HF's LLaVA keeps them.
    vocabulary = len(assistant.tokenizer)
    assert ours.shape == (*theirs.shape[:2], vocabulary)
    torch.testing.assert_close(ours, theirs[..., :vocabulary], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_reply_matches_reference_generate(loaded, mllm_checkpoints, family):
    fixture = mllm_checkpoints[family]
    assistant = Assistant(loaded[family])
    history = assistant.new_history()
    pixels = assistant.picture(sample_picture())
    message = assistant.user_message("similar_image", "", history, True)
    reply = assistant.reply(history, message, image=pixels,
                            settings=GenerationSettings(max_new_tokens=12, temperature=0.0))

    ids = tokenize_with_image(reply.prompt, assistant.tokenizer)
    image_token_id = next(i for i in range(5, 100) if i not in ids)
    reference = reference_llava(fixture.path, fixture.vision_tower, image_token_id)
    expanded = []
    for token in ids:
        expanded += [image_token_id] * 576 if token == IMAGE_TOKEN_INDEX else [token]
    with torch.no_grad():
        output = reference.generate(input_ids=torch.tensor([expanded]), pixel_values=pixels[None],
                                    do_sample=False, max_new_tokens=reply.new_tokens)
    new = output[0, len(expanded):].tolist()
    text = assistant.tokenizer.decode(new, skip_special_tokens=False)
    for stop in (*assistant.template.stop_strings, assistant.tokenizer.eos_token or "\0"):
        text = text.split(stop)[0]
    assert reply.text == text.strip()


def test_gemma_image_features_are_scaled_like_its_text_embeddings(loaded):
    model = loaded["gemma"].model
    features = model.encode_images(torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(1)))
    embeds = model.embed([2, -200, 5], features)
    hidden = model.language_model.config.hidden_size
    torch.testing.assert_close(embeds[0, 1:-1], features[0] * hidden**0.5)
