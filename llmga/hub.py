"""Released LLMGA checkpoints by name: found locally first, downloaded (with progress) only when allowed.

A released model may sit in a model folder as `<name>` (e.g. `models/LLM/llmga-Qwen2-0.5B-full-finetune`),
`binxia--<name>` or `binxia/<name>`. Downloads go into the first model folder, under `<name>`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

HUB_OWNER = "binxia"
# The released checkpoints (dvlab-research/LLMGA README).
RELEASED_MLLMS = (
    "llmga-vicuna-7b-v1.5-full-finetune",
    "llmga-mistral_instruct-full-finetune",
    "llmga-llama3-8b-it-full-finetune",
    "llmga-Qwen2-0.5B-full-finetune",
    "llmga-Qwen2-1.5B-full-finetune",
    "llmga-Qwen2-7B-full-finetune",
    "llmga-Phi-3-mini-128k-full-finetune",
    "llmga-gemma-2b-it-full-finetune",
    "llmga-cn-vicuna-7b-v1.5-full-finetune",
    "llmga-cn-llama3-8b-it-full-finetune",
    "llmga-cn-gemma-2b-it-full-finetune",
    "llmga-cn-Qwen2-0.5B-full-finetune",
    "llmga-llama-2-7b-chat-full-finetune",
)
RELEASED_SD = ("llmga-sd15-t2i-v2", "llmga-sd15-inpainting-v2")

# DiffRIR's weights are not on the hub (a Google Drive folder linked from the README, file names unpublished):
# workflows name the x1 GAN S2 model by this file name, and the loaders say where to get it.
DIFFRIR_FILE = "DiffRIRS2_GAN_x1.pth"
DIFFRIR_DOWNLOAD = ("DiffRIR's weights are not on the Hugging Face hub: download the S2 x1 weights (net_g_*.pth of "
                    "train_DiffRIRS2_GAN_x1, the model LLMGA's restoration step means) from the Google Drive folder "
                    f"linked in https://github.com/Zj-BinXia/DiffRIR and save it as {DIFFRIR_FILE} in {{folders}}")
# What a complete folder holds (for error messages), and what to fetch of it.
MLLM_FILES = "config.json, model*.safetensors (+ model.safetensors.index.json), tokenizer files"
SD_FILES = "model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/"
SD_PATTERNS = ["model_index.json", "unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*"]


class ModelNotFoundError(FileNotFoundError):
    """A model could not be found or fetched; the message lists what was searched and what to do."""


def released_name(name: str) -> str | None:
    """The released checkpoint `name` refers to ('binxia/llmga-…' or 'llmga-…', any case), or None."""
    short = name.strip().removeprefix(f"{HUB_OWNER}/")
    for known in RELEASED_MLLMS + RELEASED_SD:
        if short.lower() == known.lower():
            return known
    return None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def find_local(name: str, folders: Iterable[Path]) -> Path | None:
    """A folder holding the released checkpoint `name` (with config.json or model_index.json) in `folders`."""
    for folder in folders:
        for candidate in (name, f"{HUB_OWNER}--{name}", f"{HUB_OWNER}/{name}"):
            path = Path(folder) / candidate
            if (path / "config.json").is_file() or (path / "model_index.json").is_file():
                return path
    return None


def resolve_model(name_or_path: str | Path, folders: Sequence[Path], *, allow_download: bool = False) -> Path:
    """The folder of a model given as a path, a folder name inside `folders`, or a released name.

    A released checkpoint missing locally is downloaded into `folders[0]/<name>` when `allow_download` is set and
    the hub is not switched off (HF_HUB_OFFLINE); otherwise the error names every folder searched.
    """
    text = str(name_or_path).strip()
    if not text:
        raise ModelNotFoundError("no model given: choose a checkpoint folder or a released LLMGA name")
    direct = Path(text).expanduser()
    if direct.is_dir():
        return direct
    for folder in folders:
        candidate = Path(folder) / text
        if candidate.is_dir():
            return candidate
    known = released_name(text)
    if known is None:
        raise ModelNotFoundError(
            f"model {text!r} is neither a folder nor a released LLMGA checkpoint. Searched: "
            f"{[str(f) for f in folders]}. Released names: {', '.join(RELEASED_MLLMS + RELEASED_SD)}")
    local = find_local(known, folders)
    if local is not None:
        return local
    is_sd = known in RELEASED_SD
    if not allow_download or offline() or not folders:
        why = "downloads are off" if not allow_download else "HF_HUB_OFFLINE is set" if offline() else "no folder"
        kind = "diffusers" if is_sd else "LLM"
        raise ModelNotFoundError(
            f"{HUB_OWNER}/{known} is not downloaded ({why}). Searched {[str(f) for f in folders]} for a folder named "
            f"{known!r} holding {SD_FILES if is_sd else MLLM_FILES}. Download it (huggingface-cli download "
            f"{HUB_OWNER}/{known} --local-dir <models>/{kind}/{known}) or allow downloads.")
    return download(known, Path(folders[0]), SD_PATTERNS if is_sd else None)


def download(name: str, folder: Path, patterns: list[str] | None = None) -> Path:
    """Download the released checkpoint `name` (only files matching `patterns`, when given: an SD pipeline needs no
    safety checker) into `folder/<name>` with a progress bar; returns that folder."""
    from huggingface_hub import snapshot_download

    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(f"{HUB_OWNER}/{name}", local_dir=target, allow_patterns=patterns)
    except Exception as error:  # the hub client raises many kinds; all mean the same to the user
        raise ModelNotFoundError(f"downloading {HUB_OWNER}/{name} into {target} failed ({error}); check the "
                                 "connection or download it by hand") from error
    return target
