"""MagicBrush's image-editing metrics (OSU-NLP-Group/MagicBrush `evaluation/image_eval.py`) for a list of pairs.

Per pair (generated image vs its ground-truth target):
    l1      mean absolute error of RGB in [0,1] (nn.L1Loss), the generated image resized to the target's size
    l2      mean squared error under the same setup (nn.MSELoss; MSE, not RMSE)
    clip-i  cosine of the CLIP ViT-B/32 image embeddings of generated and target
    clip-t  cosine of the generated image's CLIP embedding and the target caption's (77 tokens at most);
            `clip-t_oracle`, the same for the target image, comes with it as in the official script
    dino    cosine of the DINO ViT-S/16 CLS embeddings of generated and target
Each mean is the arithmetic mean over the pairs. Models run in float32 (the official CLIP runs in float16 on GPUs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .pairs import EditPair, EvalInputError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .encoders import ClipEncoder, DinoEncoder

METRICS = ("l1", "l2", "clip-i", "clip-t", "dino")  # image_eval.py's --metric names
CLIP_METRICS = ("clip-i", "clip-t")
ORACLE = "clip-t_oracle"  # image_eval.py's key for the target image vs its caption


@dataclass
class EditScores:
    """Per-pair rows ({"id", "turn", "output", "target", <metric>: float, ...}) and the mean of each metric."""

    rows: list[dict] = field(default_factory=list)
    means: dict[str, float] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.rows)


def pixel_distances(output: Image.Image, target: Image.Image) -> tuple[float, float]:
    """(L1, L2) of `output` against `target`: mean absolute and mean squared error over all pixels and channels of
    RGB in [0, 1], after resizing `output` to the target's size with PIL bicubic (Image.resize's default for RGB,
    which the official script relies on)."""
    from PIL import Image

    from .encoders import rgb_tensor

    resized = output.convert("RGB").resize(target.size, Image.Resampling.BICUBIC)
    difference = rgb_tensor(resized) - rgb_tensor(target)
    return difference.abs().mean().item(), difference.square().mean().item()


def cosine(first: torch.Tensor, second: torch.Tensor) -> float:
    """Cosine similarity of two [D] (or [1, D]) embeddings, in float64 like scipy's distance.cosine."""
    import torch

    first, second = first.reshape(-1).double(), second.reshape(-1).double()
    return (first @ second / (torch.linalg.vector_norm(first) * torch.linalg.vector_norm(second))).item()


def check_pairs(pairs: Sequence[EditPair], metrics: Sequence[str]) -> None:
    """Fail before any model loads when there is nothing to score or clip-t lacks a caption."""
    if not pairs:
        raise EvalInputError("there are no image pairs to score")
    if "clip-t" in metrics:
        uncaptioned = [_name(pair) for pair in pairs if not pair.caption]
        if uncaptioned:
            raise EvalInputError(
                f"clip-t needs the target caption of every pair; {len(uncaptioned)} have none (e.g. "
                f"{', '.join(uncaptioned[:3])}): add a 'caption' column to the manifest or pass MagicBrush's "
                "local_captions.json, or leave clip-t out of the metrics")


def score_pairs(pairs: Sequence[EditPair], metrics: Sequence[str], *, clip: ClipEncoder | None = None,
                dino: DinoEncoder | None = None, progress: Callable[[int, int], None] | None = None) -> EditScores:
    """Score every pair with `metrics` (names from METRICS) and average them.

    `clip` is needed for clip-i / clip-t (with its tokenizer for clip-t), `dino` for dino; `progress(done, total)`
    is called after each pair.
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise EvalInputError(f"unknown metrics {unknown}: choose from {','.join(METRICS)}")
    if clip is None and any(name in metrics for name in CLIP_METRICS):
        raise EvalInputError("clip-i and clip-t need a CLIP encoder (load_clip)")
    if dino is None and "dino" in metrics:
        raise EvalInputError("dino needs a DINO encoder (load_dino)")
    check_pairs(pairs, metrics)
    scores = EditScores()
    for done, pair in enumerate(pairs, 1):
        scores.rows.append(_score_pair(pair, metrics, clip, dino))
        if progress is not None:
            progress(done, len(pairs))
    names = [name for name in METRICS if name in metrics]
    if "clip-t" in metrics:
        names.insert(names.index("clip-t") + 1, ORACLE)
    scores.means = {name: sum(row[name] for row in scores.rows) / scores.count for name in names}
    return scores


def _score_pair(pair: EditPair, metrics: Sequence[str], clip: ClipEncoder | None, dino: DinoEncoder | None) -> dict:
    from ..images import open_image

    output, target = open_image(pair.output), open_image(pair.target)  # RGB, what the official script scores
    row: dict = {"id": pair.id, "turn": pair.turn, "output": str(pair.output), "target": str(pair.target)}
    if "l1" in metrics or "l2" in metrics:
        l1, l2 = pixel_distances(output, target)
        row.update({name: value for name, value in (("l1", l1), ("l2", l2)) if name in metrics})
    if clip is not None and any(name in metrics for name in CLIP_METRICS):
        generated, truth = clip.embed_images([output, target])
        if "clip-i" in metrics:
            row["clip-i"] = cosine(generated, truth)
        if "clip-t" in metrics:
            text = clip.embed_text(pair.caption)
            row["clip-t"], row[ORACLE] = cosine(generated, text), cosine(truth, text)
    if dino is not None and "dino" in metrics:
        generated, truth = dino.embed_images([output, target])
        row["dino"] = cosine(generated, truth)
    return row


def _name(pair: EditPair) -> str:
    return pair.id if pair.turn is None else f"{pair.id} turn {pair.turn}"
