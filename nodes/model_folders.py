"""The pack's model folders in ComfyUI's `folder_paths`, keeping whatever `extra_model_paths.yaml` added."""

from __future__ import annotations

import json
from pathlib import Path

import folder_paths

# key -> default folder name under models/
PACK_FOLDERS = {"LLM": "LLM", "clip_vision": "clip_vision", "diffrir": "diffrir"}


def register_model_folders() -> None:
    """Add models/<name> for each pack key unless it is already registered; yaml entries stay first."""
    for key, name in PACK_FOLDERS.items():
        default = Path(folder_paths.models_dir) / name
        if default not in model_folders(key):
            folder_paths.add_model_folder_path(key, str(default))


def model_folders(key: str) -> list[Path]:
    """The folders registered for `key`, in ComfyUI's order."""
    return [Path(p) for p in folder_paths.get_folder_paths(key)] if key in folder_paths.folder_names_and_paths else []


def llmga_checkpoint_names() -> list[str]:
    """Folders under the `LLM` model folders (one or two levels deep) that hold an LLMGA checkpoint, as paths
    relative to their model folder ("llmga-Qwen2-0.5B-full-finetune", "binxia/llmga-…")."""
    names = []
    for root in model_folders("LLM"):
        if not root.is_dir():
            continue
        for config in sorted([*root.glob("*/config.json"), *root.glob("*/*/config.json")]):
            try:
                is_llmga = "mm_hidden_size" in json.loads(config.read_text())
            except (OSError, ValueError):
                continue
            if is_llmga:
                names.append(config.parent.relative_to(root).as_posix())
    return sorted(set(names))
