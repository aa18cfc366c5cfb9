"""The feature encoders of the MagicBrush metrics, read from local files only (nothing is downloaded).

CLIP (CLIP-I, CLIP-T): OpenAI CLIP ViT-B/32 in the Hugging Face layout of `openai/clip-vit-base-patch32`:
    config.json, model.safetensors (or pytorch_model.bin), and for CLIP-T the tokenizer: vocab.json + merges.txt
    (or tokenizer.json). Embeddings are the projected features, what OpenAI's encode_image / encode_text return.
DINO: ViT-S/16 as torch.hub's `dino_vits16` (the embedding is the CLS token after the final LayerNorm), from
    - the Hugging Face layout of `facebook/dino-vits16` (config.json + model.safetensors or pytorch_model.bin), or
    - the official backbone file `dino_deitsmall16_pretrain.pth` (the file, or a folder holding it), mapped onto
      the same transformers ViT.

Preprocessing reproduces the official torchvision transforms with PIL + torch (torchvision is not required):
shorter side resized with PIL bicubic (long side truncated like torchvision), centre crop (offsets rounded like
torchvision), RGB in [0,1], then per-channel normalisation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..hub import ModelNotFoundError

if TYPE_CHECKING:
    import torch
    from PIL import Image

CLIP_REPO = "openai/clip-vit-base-patch32"  # clip.load("ViT-B/32") in image_eval.py
DINO_REPO = "facebook/dino-vits16"  # torch.hub dino_vits16 in image_eval.py
DINO_FILE = "dino_deitsmall16_pretrain.pth"  # what torch.hub's dino_vits16 downloads
DINO_URL = f"https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/{DINO_FILE}"
# OpenAI CLIP clip.py `_transform`: Resize(n_px, BICUBIC), CenterCrop(n_px), ToTensor, Normalize(these).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_CONTEXT_LENGTH = 77  # clip.tokenize
# image_eval.py DINO transform: Resize(256, interpolation=3 = bicubic), CenterCrop(224), ToTensor, ImageNet Normalize.
DINO_RESIZE = 256
DINO_CROP = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DINO vision_transformer.py: partial(nn.LayerNorm, eps=1e-6); transformers' ViTConfig default is 1e-12.
DINO_LAYER_NORM_EPS = 1e-6
DINO_HEAD_DIM = 64  # every DINO ViT (ViT-S: 384 wide, 6 heads; ViT-B: 768, 12)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CLIP_FILES = "config.json, model.safetensors (or pytorch_model.bin), vocab.json + merges.txt (or tokenizer.json)"
DINO_FILES = f"config.json + model.safetensors (or pytorch_model.bin), or the official {DINO_FILE}"


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """`image` with its shorter side `size` (PIL bicubic), the longer side int(size * long / short) as torchvision."""
    from PIL import Image

    width, height = image.size
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    return image if new_size == image.size else image.resize(new_size, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The centre `size` x `size` square of an image at least that big (torchvision's rounding of the offsets)."""
    width, height = image.size
    left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def rgb_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> [3, H, W] float32 in [0, 1]: torchvision's ToTensor, the layout metric networks take
    (`llmga.images.pil_to_tensor` gives ComfyUI's [1, H, W, 3])."""
    from ..images import pil_to_tensor

    return pil_to_tensor(image)[0].permute(2, 0, 1)


def normalized_pixels(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB image -> [3, H, W] float32, (x / 255 - mean) / std per channel."""
    import torch

    return (rgb_tensor(image) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def clip_pixel_values(image: Image.Image, size: int = 224) -> torch.Tensor:
    """OpenAI CLIP's preprocess: [3, size, size] float32, CLIP-normalised."""
    return normalized_pixels(center_crop(resize_shorter_side(image, size), size), CLIP_MEAN, CLIP_STD)


def dino_pixel_values(image: Image.Image) -> torch.Tensor:
    """The official DINO transform: [3, 224, 224] float32, ImageNet-normalised."""
    return normalized_pixels(center_crop(resize_shorter_side(image, DINO_RESIZE), DINO_CROP), IMAGENET_MEAN,
                             IMAGENET_STD)


class ClipEncoder:
    """OpenAI CLIP on transformers: projected image and text embeddings, float32 on the CPU."""

    def __init__(self, model, tokenizer, device: str | torch.device) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.image_size = int(model.config.vision_config.image_size)  # 224 for ViT-B/32

    def token_ids(self, text: str) -> list[int]:
        """BOS, the caption's BPE tokens, EOS: at most 77 ids (longer captions are cut, EOS kept last)."""
        if self.tokenizer is None:
            raise ValueError("this CLIP encoder was loaded without its tokenizer: load it with with_text=True")
        return self.tokenizer(text, truncation=True, max_length=CLIP_CONTEXT_LENGTH)["input_ids"]

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, projection_dim] float32 image embeddings (not normalised)."""
        import torch

        pixels = torch.stack([clip_pixel_values(image, self.image_size) for image in images]).to(self.device)
        with torch.no_grad():
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            return self.model.visual_projection(pooled).float().cpu()

    def embed_text(self, text: str) -> torch.Tensor:
        """[1, projection_dim] float32 embedding of `text` (no padding: the causal text model pools at EOS)."""
        import torch

        ids = torch.tensor([self.token_ids(text)], device=self.device)
        with torch.no_grad():
            pooled = self.model.text_model(input_ids=ids).pooler_output
            return self.model.text_projection(pooled).float().cpu()


class DinoEncoder:
    """DINO ViT on transformers: the CLS token of the last hidden state (after the final LayerNorm)."""

    def __init__(self, model, device: str | torch.device) -> None:
        self.model, self.device = model, device

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, hidden] float32 image embeddings."""
        import torch

        pixels = torch.stack([dino_pixel_values(image) for image in images]).to(self.device)
        with torch.no_grad():
            return self.model(pixel_values=pixels).last_hidden_state[:, 0].float().cpu()


def load_clip(folder: str | Path, device: str | torch.device = "cpu", with_text: bool = True) -> ClipEncoder:
    """The CLIP encoder of a local `openai/clip-vit-base-patch32` folder (the tokenizer only when `with_text`), on
    `device` (auto/cuda/cpu/mps) in the metrics' precision (`llmga.devices`: fp32)."""
    from transformers import CLIPModel, CLIPTokenizer

    from ..devices import device_and_dtype

    folder = Path(folder)
    problem = _folder_problem(folder, text=with_text)
    if problem:
        raise ModelNotFoundError(_missing_message("CLIP", folder, problem, CLIP_FILES, CLIP_REPO))
    _check_model_type(folder, "clip", CLIP_REPO)
    model, info = _loaded(lambda: CLIPModel.from_pretrained(folder, local_files_only=True, output_loading_info=True),
                          folder, CLIP_REPO)
    _check_loaded(folder, info["missing_keys"], CLIP_REPO)
    tokenizer = _loaded(lambda: CLIPTokenizer.from_pretrained(folder, local_files_only=True), folder,
                        CLIP_REPO) if with_text else None
    target, dtype = device_and_dtype("metrics", device)
    return ClipEncoder(model.to(target, dtype).eval(), tokenizer, target)


def load_dino(path: str | Path, device: str | torch.device = "cpu") -> DinoEncoder:
    """The DINO encoder of a `facebook/dino-vits16` folder, or of the official `.pth` (file or folder holding it), on
    `device` (auto/cuda/cpu/mps) in the metrics' precision (`llmga.devices`: fp32)."""
    from transformers import ViTModel

    from ..devices import device_and_dtype

    path = Path(path)
    target, dtype = device_and_dtype("metrics", device)
    if path.is_file() or ((path / DINO_FILE).is_file() and not (path / "config.json").is_file()):
        model = _vit_from_official(path if path.is_file() else path / DINO_FILE)
        return DinoEncoder(model.to(target, dtype).eval(), target)
    problem = _folder_problem(path, text=False)
    if problem:
        raise ModelNotFoundError(_missing_message("DINO", path, problem, DINO_FILES, DINO_REPO)
                                 + f", or the official file from {DINO_URL}")
    _check_model_type(path, "vit", DINO_REPO)
    model, info = _loaded(lambda: ViTModel.from_pretrained(path, local_files_only=True, output_loading_info=True,
                                                           add_pooling_layer=False,
                                                           layer_norm_eps=DINO_LAYER_NORM_EPS), path, DINO_REPO)
    _check_loaded(path, info["missing_keys"], DINO_REPO)
    return DinoEncoder(model.to(target, dtype).eval(), target)


def dino_to_vit(state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """An official DINO backbone state dict -> (ViTConfig keyword arguments, state dict in the layout transformers'
    released ViT checkpoints use: `embeddings.*`, `encoder.layer.<i>.*`, `layernorm.*`).

    The fused `blocks.<i>.attn.qkv` splits into query, key, value (rows in that order, as DINO's attention reads it).
    Raises ValueError for a key a backbone does not have or a width that is not a multiple of 64.
    """
    blocks = sorted({int(match[1]) for key in state if (match := re.match(r"blocks\.(\d+)\.", key))})
    hidden = state["cls_token"].shape[-1]
    if hidden % DINO_HEAD_DIM:
        raise ValueError(f"its width {hidden} is not a multiple of DINO's head size {DINO_HEAD_DIM}")
    patch = state["patch_embed.proj.weight"].shape[-1]
    patches = state["pos_embed"].shape[1] - 1
    config = dict(hidden_size=hidden, num_hidden_layers=len(blocks), num_attention_heads=hidden // DINO_HEAD_DIM,
                  intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0], patch_size=patch,
                  image_size=round(patches**0.5) * patch, layer_norm_eps=DINO_LAYER_NORM_EPS, qkv_bias=True,
                  hidden_act="gelu")
    renamed = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
               "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
               "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
               "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
    parts = {"norm1": "layernorm_before", "attn.proj": "attention.output.dense", "norm2": "layernorm_after",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    out = {}
    for key, value in state.items():
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        if key in renamed:
            out[renamed[key]] = value
        elif match and match[2] == "attn.qkv":
            for name, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                out[f"encoder.layer.{match[1]}.attention.attention.{name}.{match[3]}"] = chunk.clone()
        elif match and match[2] in parts:
            out[f"encoder.layer.{match[1]}.{parts[match[2]]}.{match[3]}"] = value
        else:
            raise ValueError(f"it holds {key!r}, which a DINO ViT backbone does not have")
    return config, out


def _vit_from_official(file: Path):
    from transformers import ViTConfig, ViTModel

    from ..model_files import load_torch_file

    state = load_torch_file(file, ModelNotFoundError, f"give {DINO_FILE} from {DINO_URL}")
    needed = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "norm.weight")
    if not isinstance(state, dict) or any(key not in state for key in needed):
        raise ModelNotFoundError(f"{file} is not a DINO backbone state dict (keys {', '.join(needed)}, ...): give "
                                 f"{DINO_FILE} from {DINO_URL} or a {DINO_REPO} folder")
    try:
        config, vit_state = dino_to_vit(state)
    except (ValueError, KeyError, IndexError, AttributeError) as error:  # tensors of shapes a ViT does not have
        raise ModelNotFoundError(f"{file} is not a DINO ViT backbone: {error}. Give {DINO_FILE} (the backbone, not a "
                                 "training checkpoint)") from error
    model, info = _loaded(lambda: ViTModel.from_pretrained(None, config=ViTConfig(**config), state_dict=vit_state,
                                                           add_pooling_layer=False, output_loading_info=True),
                          file, DINO_REPO)
    _check_loaded(file, info["missing_keys"] | info["unexpected_keys"], DINO_REPO)
    return model


def _folder_problem(folder: Path, text: bool) -> str | None:
    """What is wrong with a weight folder ("does not exist", "lacks ..."), or None when it looks complete; its weight
    file is checked whole (safetensors header and data, or a pickle of tensors only)."""
    from ..model_files import tensor_shapes

    if folder.is_file():
        return "is a file, not a folder"
    if not folder.is_dir():
        return "does not exist"
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).exists()), None)
    if weights is None:
        missing.append(" or ".join(WEIGHT_FILES))
    else:
        tensor_shapes(weights, ModelNotFoundError, "download the model's files again")
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if text and not has_bpe and not (folder / "tokenizer.json").is_file():
        missing.append("vocab.json + merges.txt (or tokenizer.json)")
    return f"lacks {', '.join(missing)}" if missing else None


def _missing_message(what: str, folder: Path, problem: str, expected: str, repo: str) -> str:
    return (f"{what} weights not found: {folder} {problem}. It must hold {expected}: the files of the Hugging Face "
            f"repo {repo} (huggingface-cli download {repo} --local-dir {folder})")


def _check_model_type(folder: Path, expected: str, repo: str) -> None:
    from ..model_files import read_config

    model_type = read_config(folder / "config.json", ModelNotFoundError, f"use the config.json of {repo}").get(
        "model_type")
    if model_type != expected:
        raise ModelNotFoundError(f"{folder} holds a {model_type!r} model, not {expected!r}: give a folder of {repo}")


def _loaded(load: Callable[[], Any], where: Path, repo: str) -> Any:
    """`load()` (a transformers from_pretrained), its failures as one ModelNotFoundError naming `where`."""
    from ..errors import one_line

    try:
        return load()
    except Exception as error:  # any type for a damaged file: TypeError (a config), tokenizers' bare Exception
        raise ModelNotFoundError(f"{where} could not be loaded ({type(error).__name__}: {one_line(error)}): give the "
                                 f"files of {repo}") from error


def _check_loaded(where: Path, bad_keys: set[str], repo: str) -> None:
    if bad_keys:
        raise ModelNotFoundError(f"{where} does not match the model ({len(bad_keys)} weights missing or unexpected, "
                                 f"e.g. {sorted(bad_keys)[:3]}): give the weights of {repo}")
