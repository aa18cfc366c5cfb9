"""Released LLMGA checkpoints by name: found locally first, downloaded (with progress) only when allowed.

A released model may sit in a model folder as `<name>` (e.g. `models/LLM/llmga-Qwen2-0.5B-full-finetune`),
`binxia--<name>` or `binxia/<name>`. Downloads go into the first model folder, under `<name>`, at the commit
`REVISIONS` pins. A name given by someone else (a ComfyUI graph) must stay inside the model folders: `model_entry`
is the rule, `resolve_model(..., allow_paths=False)` its use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import one_line

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
RELEASED_SD15 = ("llmga-sd15-t2i-v2", "llmga-sd15-inpainting-v2")
RELEASED_SDXL = ("llmga-sdxl-t2i", "llmga-sdxl-inpainting-v2")  # the latter a 9-channel inpainting UNet
RELEASED_SD = RELEASED_SD15 + RELEASED_SDXL
# The vision tower of every released LLMGA checkpoint (the official scripts' --vision_tower).
CLIP_VISION_REPO = "openai/clip-vit-large-patch14-336"

# The commit every download of a repo is pinned to (huggingface.co/<repo>/commits/main). None: no full commit hash of
# the repo could be confirmed (only the short id of its upload, noted), so it is fetched from main until one is.
REVISIONS: dict[str, str | None] = {
    CLIP_VISION_REPO: "ce19dc912ca5cd21c8a653c79e251e808ccabcd1",
    "binxia/llmga-Qwen2-0.5B-full-finetune": "97b9972a6d52a7561683a3e2c7e8aca997f7ef4a",
    "binxia/llmga-vicuna-7b-v1.5-full-finetune": None,  # unpinned: full hash of upload a55810e not found
    "binxia/llmga-mistral_instruct-full-finetune": None,  # unpinned: full hash of upload 8e55297 not found
    "binxia/llmga-llama3-8b-it-full-finetune": None,  # unpinned: no commit hash found
    "binxia/llmga-Qwen2-1.5B-full-finetune": None,  # unpinned: full hash of upload 7f7224b not found
    "binxia/llmga-Qwen2-7B-full-finetune": None,  # unpinned: full hash of upload ab21359 not found
    "binxia/llmga-Phi-3-mini-128k-full-finetune": None,  # unpinned: full hash of upload faf1e87 not found
    "binxia/llmga-gemma-2b-it-full-finetune": None,  # unpinned: full hash of upload 0164e1e not found
    "binxia/llmga-cn-vicuna-7b-v1.5-full-finetune": None,  # unpinned: full hash of upload 1a64170 not found
    "binxia/llmga-cn-llama3-8b-it-full-finetune": None,  # unpinned: no commit hash found
    "binxia/llmga-cn-gemma-2b-it-full-finetune": None,  # unpinned: full hash of upload fe7ffa4 not found
    "binxia/llmga-cn-Qwen2-0.5B-full-finetune": None,  # unpinned: full hash of upload 1ae8603 not found
    "binxia/llmga-llama-2-7b-chat-full-finetune": None,  # unpinned: no commit hash found
    "binxia/llmga-sd15-t2i-v2": None,  # unpinned: full hash of upload 5456962 not found
    "binxia/llmga-sd15-inpainting-v2": None,  # unpinned: full hash of upload 9cd1e8a not found
    "binxia/llmga-sdxl-t2i": None,  # unpinned: full hash of upload dd9d49e not found
    "binxia/llmga-sdxl-inpainting-v2": "ca4fe1734170820f99f5e13c94b5dee72872a3dd",
}

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
SDXL_FILES = "model_index.json, unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/"
SDXL_PATTERNS = [*SD_PATTERNS, "text_encoder_2/*", "tokenizer_2/*"]
CLIP_VISION_PATTERNS = ["*.json", "*.safetensors"]


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


def _plain_folder_name(part: str) -> bool:
    """A folder name that means the same on every system: not empty, not only dots or blanks ('..', '. ' is '.' on
    Windows), no separator, drive colon or NUL."""
    return bool(part.strip(" .")) and part == part.strip() and not any(char in part for char in "\\:\x00")


def model_entry(name: str, folders: Iterable[Path], holding: str | None = None) -> Path | None:
    """The folder `name` names inside one of `folders` (the first that holds the file `holding`, when given), or None.

    name: one or two plain folder names joined by '/' ('my-finetune', 'binxia/llmga-…'), as the model lists offer
    them; an absolute path, '..', a drive, a backslash or NUL never names an entry, so the answer is the same whether
    or not such a path exists. Symlinks inside the folders are followed: a linked model folder is an entry.
    """
    parts = name.split("/")
    if not 1 <= len(parts) <= 2 or not all(_plain_folder_name(part) for part in parts):
        return None
    for folder in folders:
        candidate = Path(folder).joinpath(*parts)
        if candidate.is_dir() and (holding is None or (candidate / holding).is_file()):
            return candidate
    return None


def resolve_model(name_or_path: str | Path, folders: Sequence[Path], *, allow_download: bool = False,
                  allow_paths: bool = True) -> Path:
    """The folder of a model given as a folder name inside `folders`, a released name, or (allow_paths) a path.

    allow_paths: also take `name_or_path` as a path of its own and folder names at any depth, as a local user's
    command line does; off (the nodes, whose names come from any client), only `model_entry(name, folders)` and
    released names are taken, and anything else gets the same error naming `folders`. A released checkpoint missing
    locally is downloaded into `folders[0]/<name>` when `allow_download` is set and the hub is not switched off
    (HF_HUB_OFFLINE); otherwise the error names every folder searched.
    """
    text = str(name_or_path).strip()
    if not text:
        raise ModelNotFoundError("no model given: choose a checkpoint folder or a released LLMGA name")
    local = _local_model(text, folders, allow_paths)
    if local is not None:
        return local
    known = released_name(text)
    searched = [str(f) for f in folders]
    if known is None:
        what = "a folder" if allow_paths else "a model folder inside the model folders"
        raise ModelNotFoundError(
            f"model {text!r} is neither {what} nor a released LLMGA checkpoint. Searched: {searched}. Choose a model "
            f"in those folders or a released name: {', '.join(RELEASED_MLLMS + RELEASED_SD)}")
    local = find_local(known, folders)
    if local is not None:
        return local
    files, patterns = released_files(known)
    if not allow_download or offline() or not folders:
        why = "downloads are off" if not allow_download else "HF_HUB_OFFLINE is set" if offline() else "no folder"
        kind = "diffusers" if known in RELEASED_SD else "LLM"
        raise ModelNotFoundError(
            f"{HUB_OWNER}/{known} is not downloaded ({why}). Searched {searched} for a folder named "
            f"{known!r} holding {files}. Download it "
            f"({download_command(f'{HUB_OWNER}/{known}', f'<models>/{kind}/{known}')}) or allow downloads.")
    return download(known, Path(folders[0]), patterns)


def released_files(known: str) -> tuple[str, list[str] | None]:
    """What a complete folder of the released checkpoint `known` holds (for messages) and the file patterns to
    download (None: all; an SD pipeline needs no safety checker or feature extractor)."""
    if known in RELEASED_SDXL:
        return SDXL_FILES, SDXL_PATTERNS
    if known in RELEASED_SD15:
        return SD_FILES, SD_PATTERNS
    return MLLM_FILES, None


def _local_model(text: str, folders: Sequence[Path], allow_paths: bool) -> Path | None:
    if not allow_paths:
        return model_entry(text, folders)
    direct = Path(text).expanduser()
    if direct.is_dir():
        return direct
    for folder in folders:
        candidate = Path(folder) / text
        if candidate.is_dir():
            return candidate
    return None


def download_command(repo: str, local_dir: str) -> str:
    """The command that fetches `repo` by hand, at its pinned revision."""
    revision = REVISIONS.get(repo)
    pin = f" --revision {revision}" if revision else ""
    return f"huggingface-cli download {repo}{pin} --local-dir {local_dir}"


def download(name: str, folder: Path, patterns: list[str] | None = None) -> Path:
    """Download the released checkpoint `name` (only files matching `patterns`, when given: an SD pipeline needs no
    safety checker) into `folder/<name>` with a progress bar; returns that folder."""
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    return fetch(f"{HUB_OWNER}/{name}", target, patterns)


def download_vision_tower() -> Path:
    """CLIP ViT-L/14-336 (config, weights, preprocessing) at its pinned revision, from the Hugging Face cache or the
    hub; returns its snapshot folder."""
    return fetch(CLIP_VISION_REPO, None, CLIP_VISION_PATTERNS)


def fetch(repo: str, target: Path | None, patterns: list[str] | None) -> Path:
    """The one download of the pack: `repo` at `REVISIONS[repo]` into `target` (None: the Hugging Face cache), only
    files matching `patterns` when given. Any failure, offline included, is one ModelNotFoundError that says how to
    get the files by hand."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if repo not in REVISIONS:
        raise ModelNotFoundError(f"{repo} is not a released model this pack downloads: choose one of "
                                 f"{sorted(REVISIONS)}")
    by_hand = download_command(repo, str(target) if target is not None else f"<models>/clip_vision/{repo}")
    try:
        return Path(snapshot_download(repo, revision=REVISIONS[repo], local_dir=target, allow_patterns=patterns))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        raise ModelNotFoundError(f"{repo} cannot be downloaded: the Hugging Face hub is not reachable (offline, or "
                                 f"HF_HUB_OFFLINE is set) and no local copy was found ({one_line(error)}). Connect "
                                 f"and try again, or download it by hand: {by_hand}") from error
    except HfHubHTTPError as error:
        raise ModelNotFoundError(f"downloading {repo} failed: the Hugging Face hub answered {one_line(error)}. Check "
                                 f"the connection and try again, or download it by hand: {by_hand}") from error
    except Exception as error:  # the hub client raises many other kinds (transport, disk); all mean the same here
        raise ModelNotFoundError(f"downloading {repo} failed ({one_line(error)}): check the connection and the free "
                                 f"disk space, or download it by hand: {by_hand}") from error
