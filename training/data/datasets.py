"""Readers for the stage-1/stage-2 training data: the released LLMGA layout and a user's own captioned images.

Released layout (README of dvlab-research/LLMGA; Hugging Face dataset `binxia/LLMGA-datasetv2`), relative to the
data root, with the fields the official dataset classes (llmga/llava/datasets/*.py) read:

    jsons/llmga-data/T2I/train.json         [{"ori_caption", "caption", "image"?}]   TextDataset (T2I part); stage 2
    jsons/llmga-data/SG/train.json          [{"image", "caption"}]                   SGDataset
    jsons/llmga-data/inpainting/train.json  [{"image", "caption"}]                   InpaintingDataset
    jsons/llmga-data/Edit/train.json        [{"image", "instruction", "new_caption"}] EditDataset
    jsons/text-data/{lima,oasst2}.json      [{"conversations": [{"from", "value"}...]}] TextDataset (text chat)
    jsons/llava_v1_5_mix665k.json           [{"image"?, "conversations": [...]}]     VQADataset

Image paths in the jsons are relative to an image folder (`--image_folder2` for the LLMGA sets, `--image_folder`
for LLaVA). `alpaca_gpt4_sharegpt_en_clean2.json` is loaded but never indexed by the official TextDataset, so it is
not listed. A user's own data: a folder of images with same-stem `.txt` captions, or a JSONL file of
{"image", "caption"} lines. Readers check every record up front and raise DataError naming the file, the record and
the field; images are opened only when a sample is made (`load_training_image`; stage 2 crops with
`crop_training_image`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from llmga.images import ImageInputError, open_image, pil_to_tensor

Turn = tuple[str, str]  # (user message, assistant reply)

# Paths of the released files, relative to the data root (README "Data preparation").
RELEASED_FILES = {
    "t2i": Path("jsons/llmga-data/T2I/train.json"),
    "similar_image": Path("jsons/llmga-data/SG/train.json"),
    "inpainting": Path("jsons/llmga-data/inpainting/train.json"),
    "edit": Path("jsons/llmga-data/Edit/train.json"),
    "lima": Path("jsons/text-data/lima.json"),
    "oasst2": Path("jsons/text-data/oasst2.json"),
    "llava_mix665k": Path("jsons/llava_v1_5_mix665k.json"),
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# llava/datasets/*.py: every stage-1 image is resized to 512 before CLIP preprocessing.
TRAINING_IMAGE_SIZE = 512
_HUMAN_ROLES = ("human", "user")
_ASSISTANT_ROLES = ("gpt", "assistant")


class DataError(ValueError):
    """Training data that cannot be read; the message names the file, the record and what to fix."""


@dataclass(frozen=True)
class CaptionedImage:
    """An image and its detailed caption (SG, inpainting, a user's folder or JSONL). crop: see load_training_image."""

    image: Path
    caption: str
    crop: bool = False


@dataclass(frozen=True)
class T2IPrompt:
    """A short prompt, its detailed caption, and the image (used by stage 2; stage 1 is text-only)."""

    short: str
    caption: str
    image: Path | None


@dataclass(frozen=True)
class EditExample:
    """An image, the edit instruction as stored (its last character is dropped by the stage-1 builder) and the
    caption of the edited image."""

    image: Path
    instruction: str
    new_caption: str
    crop: bool = False


@dataclass(frozen=True)
class ChatExample:
    """A multi-turn chat: (user, assistant) pairs, and the image of a LLaVA sample (None for text-only)."""

    turns: tuple[Turn, ...]
    image: Path | None


def read_json_list(path: str | Path) -> list[dict]:
    """The list of objects in a JSON file; DataError if it is missing, not JSON, or not a list of objects."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the data root and the released layout (see RELEASED_FILES)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(f"{path}: record {index} is {type(item).__name__}, expected an object")
    return data


def _text_field(path: Path, index: int, item: dict, field: str) -> str:
    """item[field] as a non-empty string, or DataError naming the file, the record and the field (records of a
    JSON list count from 0, JSONL records by their line number)."""
    if field not in item:
        raise DataError(f"{path}: record {index} has no {field!r} field (it has {sorted(item)})")
    value = item[field]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}: record {index} field {field!r} must be a non-empty string, got {value!r}")
    return value


def _image_path(root: Path | None, name: str) -> Path:
    return Path(name) if root is None else Path(root) / name


def crops_to_square(name: str) -> bool:
    """The official rule (llava/datasets/*.py `if "laion" in tp['image']`), on the json's image name: LAION images
    are centre-cropped to a square, all others stretched."""
    return "laion" in name


def read_t2i(path: str | Path, image_root: str | Path | None = None) -> list[T2IPrompt]:
    """T2I/train.json: `ori_caption` (short prompt), `caption` (detailed), optional `image`."""
    path = Path(path)
    records = []
    for index, item in enumerate(read_json_list(path)):
        image = _text_field(path, index, item, "image") if "image" in item else None
        short, caption = _text_field(path, index, item, "ori_caption"), _text_field(path, index, item, "caption")
        records.append(T2IPrompt(short, caption, None if image is None else _image_path(image_root, image)))
    return records


def _image_records(path: str | Path, image_root: str | Path | None, record_type: type, fields: tuple[str, ...]):
    """`record_type(image, *texts, crop=...)` for each record of a released json list: its `image` (under
    `image_root`, `crop` by `crops_to_square`) and the non-empty text `fields`, checked in that order."""
    path = Path(path)
    records = []
    for index, item in enumerate(read_json_list(path)):
        name = _text_field(path, index, item, "image")
        texts = [_text_field(path, index, item, field) for field in fields]
        records.append(record_type(_image_path(image_root, name), *texts, crop=crops_to_square(name)))
    return records


def read_captioned_images(path: str | Path, image_root: str | Path | None = None) -> list[CaptionedImage]:
    """SG/train.json or inpainting/train.json: `image`, `caption`."""
    return _image_records(path, image_root, CaptionedImage, ("caption",))


def read_edit(path: str | Path, image_root: str | Path | None = None) -> list[EditExample]:
    """Edit/train.json: `image`, `instruction`, `new_caption`."""
    return _image_records(path, image_root, EditExample, ("instruction", "new_caption"))


def _turns(path: Path, index: int, messages: object) -> tuple[Turn, ...]:
    """ShareGPT messages -> (user, assistant) pairs, as the official `preprocess_*` read them: a leading
    non-human message is skipped, roles must alternate, and a trailing unanswered user message (never supervised)
    is dropped."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{path}: record {index} field 'conversations' must be a non-empty list of messages")
    roles, values = [], []
    for position, message in enumerate(messages):
        where = f"{path}: record {index} message {position}"
        if not isinstance(message, dict) or "from" not in message or "value" not in message:
            raise DataError(f"{where} must be an object with 'from' and 'value'")
        role = str(message["from"]).lower()
        if role not in _HUMAN_ROLES + _ASSISTANT_ROLES:
            known = _HUMAN_ROLES + _ASSISTANT_ROLES
            raise DataError(f"{where} has 'from' {message['from']!r}; expected one of {known}")
        if not isinstance(message["value"], str):
            raise DataError(f"{where} field 'value' must be a string, got {type(message['value']).__name__}")
        roles.append("user" if role in _HUMAN_ROLES else "assistant")
        values.append(message["value"])
    if roles[0] != "user":
        roles, values = roles[1:], values[1:]
    for position, role in enumerate(roles):
        if role != ("user", "assistant")[position % 2]:
            raise DataError(f"{path}: record {index} roles do not alternate user/assistant at message {position}")
    turns = tuple((values[i], values[i + 1]) for i in range(0, len(values) - 1, 2))
    if not turns:
        raise DataError(f"{path}: record {index} has no answered user message")
    return turns


def read_sharegpt(path: str | Path, image_root: str | Path | None = None) -> list[ChatExample]:
    """LIMA / OASST2 text chats and LLaVA-1.5 mix665k: `conversations` [{"from", "value"}...], optional `image`."""
    path = Path(path)
    records = []
    for index, item in enumerate(read_json_list(path)):
        if "conversations" not in item:
            raise DataError(f"{path}: record {index} has no 'conversations' field (it has {sorted(item)})")
        image = _text_field(path, index, item, "image") if "image" in item else None
        records.append(ChatExample(_turns(path, index, item["conversations"]),
                                   None if image is None else _image_path(image_root, image)))
    return records


def read_image_folder(folder: str | Path) -> list[CaptionedImage]:
    """A user's folder: every image (IMAGE_EXTENSIONS, any case) with a same-stem `.txt` caption beside it,
    sorted by file name. DataError for an image without caption, an empty caption, or no images at all."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; give a folder of images with same-stem .txt captions")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    records = []
    for image in images:
        caption_file = image.with_suffix(".txt")
        if not caption_file.is_file():
            raise DataError(f"{image}: no caption file {caption_file.name}; write the caption there")
        caption = caption_file.read_text(encoding="utf-8").strip()
        if not caption:
            raise DataError(f"{caption_file}: caption is empty")
        records.append(CaptionedImage(image, caption))
    return records


def read_caption_jsonl(path: str | Path, image_root: str | Path | None = None) -> list[CaptionedImage]:
    """A JSONL file, one {"image", "caption"} object a line (blank lines skipped); relative image paths resolve
    against image_root, by default the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    root = path.parent if image_root is None else Path(image_root)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {number} is not valid JSON ({error.msg})") from None
        if not isinstance(item, dict):
            raise DataError(f"{path}: line {number} is {type(item).__name__}, expected an object")
        records.append(CaptionedImage(root / _text_field(path, number, item, "image"),
                                      _text_field(path, number, item, "caption")))
    if not records:
        raise DataError(f"{path}: no records")
    return records


def read_user_captions(source: str | Path) -> list[CaptionedImage]:
    """A user's captioned images: a folder (images + .txt) or a .jsonl file."""
    source = Path(source)
    return read_image_folder(source) if source.is_dir() else read_caption_jsonl(source)


def open_training_image(path: str | Path, what_to_do: str = "check the image folder") -> Image.Image:
    """The RGB image at `path` (`llmga.images.open_image`); DataError saying `what_to_do` when it cannot be read."""
    try:
        return open_image(path)
    except ImageInputError as error:
        raise DataError(f"cannot open image: {error}; {what_to_do}") from None


def load_training_image(path: str | Path, *, crop: bool = False, size: int = TRAINING_IMAGE_SIZE) -> Image.Image:
    """The RGB image as the official stage-1 datasets prepare it before CLIP preprocessing (a size x size PIL image).

    crop (the record's `crop`, from `crops_to_square`): resize so the short side is `size` (long side
    `int(long / short * size)`), then centre-crop with torchvision CenterCrop's rounding; otherwise stretch to
    size x size. LANCZOS (PIL ANTIALIAS) both ways. A user's images are stretched, as the official CLIs stretch."""
    image = open_training_image(path)
    if not crop:
        return image.resize((size, size), Image.Resampling.LANCZOS)
    width, height = image.size
    if width > height:
        image = image.resize((int(width / height * size), size), Image.Resampling.LANCZOS)
    else:
        image = image.resize((size, int(height / width * size)), Image.Resampling.LANCZOS)
    left = int(round((image.width - size) / 2.0))
    top = int(round((image.height - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


@dataclass(frozen=True)
class CroppedImage:
    """A stage-2 training image and what SDXL's size micro-conditioning reads of it.

    pixels: [3, R, R] float in [-1, 1]; original_size: (height, width) before the resize; crop_top_left: (top, left)
    of the crop, as the conditioning takes it (see `crop_training_image`); flipped: whether it was mirrored."""

    pixels: torch.Tensor
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    flipped: bool


def crop_training_image(image: Image.Image, resolution: int, *, center_crop: bool, flip: bool,
                        rng: np.random.Generator, crop_coords: Literal["llmga", "diffusers"] = "llmga") -> CroppedImage:
    """The official stage-2 transform: shorter side to `resolution` (bilinear, torchvision's `Resize(int)` rounding),
    a square crop (centre, torchvision's rounding, or random), a horizontal flip with p 0.5 when `flip`, to [-1, 1].

    Random draws, in this order whatever `crop_coords` says: the crop's left then top offset (random crop only), then
    the flip. crop_coords, how a flipped sample is cropped and its `crop_top_left` taken:
    - "llmga": crop, then flip, and the left offset becomes `resolution - left` (LLMGA's dataset_*_sdxl.py and the
      train_text_to_image_sdxl.py of diffusers 0.2x it copies; SD1.5's datasets crop then flip too);
    - "diffusers": flip, then crop the mirrored image at the drawn offsets, which are the conditioning (diffusers'
      train_text_to_image_sdxl.py today).
    """
    image = image.convert("RGB")
    original_size = (image.height, image.width)
    if image.width <= image.height:
        size = (resolution, int(resolution * image.height / image.width))
    else:
        size = (int(resolution * image.width / image.height), resolution)
    image = image.resize(size, Image.Resampling.BILINEAR)
    spare_x, spare_y = size[0] - resolution, size[1] - resolution
    if center_crop:
        left, top = int(round(spare_x / 2.0)), int(round(spare_y / 2.0))
    else:
        left, top = int(rng.integers(0, spare_x + 1)), int(rng.integers(0, spare_y + 1))
    flipped = flip and rng.random() < 0.5
    if flipped and crop_coords == "diffusers":
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.crop((left, top, left + resolution, top + resolution))
    if flipped and crop_coords == "llmga":
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left = resolution - left  # the official `x1 = image.width - x1`, taken after the crop
    pixels = pil_to_tensor(image)[0].permute(2, 0, 1) * 2.0 - 1.0
    return CroppedImage(pixels, original_size, (top, left), flipped)
