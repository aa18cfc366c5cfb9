"""Stage-1 data: every sample of the official ConcatDataset as a record, and the dataset that turns a record into
token ids, loss labels and the picture the vision tower sees (`training.stage1_mllm` trains on it)."""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from PIL import Image

from llmga.mllm.preprocess import ImageProcessing, pixel_values
from llmga.mllm.templates import get_template

from ..common import EpochDataset
from .conversations import (
    Conversation,
    chat_conversation,
    edit_conversation,
    inpainting_sample,
    similar_image_conversation,
    text_to_image_conversation,
    tokenize_conversation,
)
from .datasets import (
    DataError,
    load_training_image,
    open_training_image,
    read_captioned_images,
    read_edit,
    read_sharegpt,
    read_t2i,
    read_user_captions,
)

if TYPE_CHECKING:
    from ..stage1_mllm import Stage1Config

MISMATCH_WARNING = ("stage-1 samples whose token count disagrees with the official per-round count train on nothing, "
                    "as the official preprocess drops them ('tokenization mismatch'); set keep_mismatched_samples: "
                    "true to train on them with the loss mask read from the tokenizer")

@dataclass(frozen=True)
class Record:
    """One sample of the concatenated dataset: which builder makes it (`kind`) and the record it reads."""

    kind: Literal["pretrain", "chat", "inpainting", "similar_image", "edit", "t2i"]
    record: Any


def _captioned(path: Path, image_root: Path | None):
    """A released SG / inpainting json, or a user's folder of images + .txt or .jsonl of {"image", "caption"}."""
    return read_captioned_images(path, image_root) if path.suffix == ".json" else read_user_captions(path)


def read_stage1_records(config: Stage1Config) -> list[Record]:
    """Every sample, in the official ConcatDataset order: [LLaVA mix665k, inpainting, similar image, edit, text
    (LIMA, OASST2, then T2I)], or LLaVA-Pretrain for mode pretrain. Raises DataError for unreadable files, records
    without their fields, and images that do not exist."""
    image_folder, image_folder2 = config.data_path(config.image_folder), config.data_path(config.image_folder2)
    records: list[Record] = []
    if config.mode == "pretrain":
        sources = [config.pretrain_data, config.llava_data]
        for source in filter(None, sources):
            records += [Record("pretrain", r) for r in read_sharegpt(config.data_path(source), image_folder)]
    else:
        if config.llava_data:
            records += [Record("chat", r) for r in read_sharegpt(config.data_path(config.llava_data), image_folder)]
        for kind, key in (("inpainting", "inpainting_data"), ("similar_image", "similar_image_data")):
            if getattr(config, key):
                records += [Record(kind, r) for r in _captioned(config.data_path(getattr(config, key)), image_folder2)]
        if config.edit_data:
            records += [Record("edit", r) for r in read_edit(config.data_path(config.edit_data), image_folder2)]
        for source in config.text_data:
            chats = read_sharegpt(config.data_path(source))
            with_image = [i for i, chat in enumerate(chats) if chat.image is not None]
            if with_image:
                raise DataError(f"{source}: text_data holds text-only chats, but record {with_image[0]} has an "
                                "image; put LLaVA-style image chats in llava_data")
            records += [Record("chat", r) for r in chats]
        if config.t2i_data:
            records += [Record("t2i", r) for r in read_t2i(config.data_path(config.t2i_data))]
    if not records:
        raise DataError("the configured data files hold no records")
    missing = sorted({str(path) for path in map(_record_image, records) if path is not None and not path.is_file()})
    if missing:
        raise DataError(f"{len(missing)} image(s) not found ({', '.join(missing[:5])}); check image_folder "
                        "(LLaVA images), image_folder2 (LLMGA images) and data_root")
    return records


def _record_image(record: Record) -> Path | None:
    return None if record.kind == "t2i" else getattr(record.record, "image", None)


def sample_random(seed: int, epoch: int, index: int) -> random.Random:
    """The generator of one sample's random draws (task phrasing, mask): the same in every process, worker and
    resumed run, different in each epoch."""
    return random.Random(f"{seed}:{epoch}:{index}")


class Stage1Dataset(EpochDataset):
    """Items {"input_ids": [int], "labels": [int], "pixel_values": [3, S, S] or None} built from `records`."""

    def __init__(self, records: Sequence[Record], tokenizer, template: str, processing: ImageProcessing,
                 config: Stage1Config) -> None:
        self.records = list(records)
        self.tokenizer = tokenizer
        self.template = get_template(template)
        self.processing = processing
        self.config = config

    def __len__(self) -> int:
        return len(self.records)

    def conversation(self, index: int) -> tuple[Conversation, Image.Image | None]:
        """The sample's conversation and the image the vision tower sees (None for text-only samples)."""
        item = self.records[index]
        record, rng = item.record, sample_random(self.config.seed, self.epoch, index)
        if item.kind == "t2i":
            return text_to_image_conversation(record.short, record.caption, rng), None
        if item.kind == "chat":
            has_image = record.image is not None
            image = load_training_image(record.image) if has_image else None
            return chat_conversation(record.turns, has_image=has_image, task="chat"), image
        if item.kind == "pretrain":
            return chat_conversation(record.turns, has_image=True, task="pretrain"), open_training_image(record.image)
        image = load_training_image(record.image, crop=record.crop)
        if item.kind == "similar_image":
            return similar_image_conversation(record.caption, rng), image
        if item.kind == "inpainting":
            conversation, masked, _ = inpainting_sample(image, record.caption, rng)
            return conversation, masked
        return edit_conversation(record.instruction, record.new_caption), image

    def __getitem__(self, index: int) -> dict[str, Any]:
        conversation, image = self.conversation(index)
        tokens = tokenize_conversation(conversation, self.template, self.tokenizer, self.config.model_max_length,
                                       keep_mismatched=self.config.keep_mismatched_samples)
        if tokens.dropped:
            warnings.warn(MISMATCH_WARNING, stacklevel=1)
        pixels = None
        if image is not None:
            if self.records[index].kind == "pretrain":  # pretrain.py ran the plain CLIP processor (centre crop)
                pixels = pixel_values(clip_shortest_edge(image, self.processing), self.processing, stretch=False)
            else:  # the fine-tuning data is square already
                pixels = pixel_values(image, self.processing)
        return {"input_ids": tokens.input_ids, "labels": tokens.labels, "pixel_values": pixels}


def clip_shortest_edge(image: Image.Image, processing: ImageProcessing) -> Image.Image:
    """The resize of transformers' CLIPImageProcessor, which the official projector pretraining ran: the shortest
    edge to `processing.size`, the other edge truncated, not rounded (`get_resize_output_image_size`: 500x333 ->
    504x336), with `processing.resample`. `pixel_values(..., stretch=False)` then only centre-crops and normalises."""
    width, height = image.size
    long = int(processing.size * max(width, height) / min(width, height))
    size = (processing.size, long) if width <= height else (long, processing.size)
    return image.convert("RGB").resize(size, processing.resample)


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Lists of token ids and labels (padded in the model, after the image is spliced in), the images of the
    samples that have one stacked, and which sample each image belongs to."""
    owners = [i for i, item in enumerate(items) if item["pixel_values"] is not None]
    images = torch.stack([items[i]["pixel_values"] for i in owners]) if owners else None
    return {"input_ids": [item["input_ids"] for item in items], "labels": [item["labels"] for item in items],
            "pixel_values": images, "image_owners": owners}
