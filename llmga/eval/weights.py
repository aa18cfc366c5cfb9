"""Where an evaluation finds its weights; nothing is downloaded.

Metric networks: the file or folder given (a flag), else the first `<folder>/<published name>` among
$LLMGA_EVAL_MODELS and the folders the caller searches (the command line: `<models dir>/eval/`, default
`models/eval/`):
    pt_inception-2015-12-05-6726825d.pth   FID Inception (pytorch-fid)                --inception
    vgg16-397923af.pth, vgg.pth             LPIPS VGG16 and its v0.1 linear heads      --lpips-vgg, --lpips-lin
    clip-vit-base-patch32/                  CLIP ViT-B/32, Hugging Face layout         --clip
DiffRIR: a file path, or a file name in the folders searched (the command line: `<models dir>/diffrir/`).
A missing one is a ModelNotFoundError naming it, the folders searched and where it is published.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..hub import DIFFRIR_DOWNLOAD, ModelNotFoundError
from .encoders import CLIP_REPO
from .networks import INCEPTION_FILE, INCEPTION_URL, LPIPS_LIN_FILE, LPIPS_LIN_URL, LPIPS_VGG_FILE, LPIPS_VGG_URL

EVAL_MODELS_ENV = "LLMGA_EVAL_MODELS"
CLIP_FOLDER = "clip-vit-base-patch32"
# kind (also the flag that names the weights: --<kind>) -> (name as published, what it is, where it is published)
METRIC_WEIGHTS = {
    "inception": (INCEPTION_FILE, "FID Inception", INCEPTION_URL),
    "lpips-vgg": (LPIPS_VGG_FILE, "LPIPS VGG16", LPIPS_VGG_URL),
    "lpips-lin": (LPIPS_LIN_FILE, "LPIPS linear heads", LPIPS_LIN_URL),
    "clip": (CLIP_FOLDER, "CLIP ViT-B/32", f"https://huggingface.co/{CLIP_REPO}"),
}


def metric_folders(folders: Sequence[Path]) -> list[Path]:
    """Where metric weights are looked for when none is given: $LLMGA_EVAL_MODELS (when set), then `folders`."""
    env = os.environ.get(EVAL_MODELS_ENV, "").strip()
    return ([Path(env).expanduser()] if env else []) + [Path(folder) for folder in folders]


def find_metric_weights(kind: str, given: Path | None, folders: Sequence[Path]) -> Path:
    """The weights of `kind` (a key of METRIC_WEIGHTS): `given`, which must exist, else the first
    `<folder>/<published name>` among `metric_folders(folders)`. ModelNotFoundError naming the file, the folders
    searched and where the weights are published."""
    name, what, url = METRIC_WEIGHTS[kind]
    flag = f"--{kind}"
    if given is not None:
        if not given.exists():
            raise ModelNotFoundError(f"{what} weights not found: {flag} {given} does not exist. Give {name}; it is "
                                     f"published at {url}")
        return given
    searched = metric_folders(folders)
    for folder in searched:
        if (folder / name).exists():
            return folder / name
    raise ModelNotFoundError(f"{what} weights not found: no {name} in {', '.join(str(f) for f in searched)}. Give "
                             f"{flag} <path of {name}> or put it in one of those folders (or in ${EVAL_MODELS_ENV}); "
                             f"it is published at {url}")


def find_diffrir_weights(path_or_name: str, folders: Sequence[Path]) -> Path:
    """A DiffRIR weight file: `path_or_name` when it is a file, else the first `<folder>/<path_or_name>` that is."""
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path
    for folder in folders:
        if (Path(folder) / path_or_name).is_file():
            return Path(folder) / path_or_name
    raise ModelNotFoundError(f"DiffRIR weights {path_or_name!r} are neither a file nor in "
                             f"{', '.join(str(folder) for folder in folders)}. "
                             + DIFFRIR_DOWNLOAD.format(folders=folders[0] if folders else "a models folder"))
