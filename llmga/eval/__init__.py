"""Evaluation of edited images with MagicBrush's metrics (L1, L2, CLIP-I, CLIP-T, DINO), free of ComfyUI.

    pairs = read_manifest("edits.jsonl")                      # or read_magicbrush(generated, gt, "single-turn", ...)
    scores = score_pairs(pairs, ("l1", "l2", "clip-i"), clip=load_clip("models/clip-vit-base-patch32"))
    scores.means  # {"l1": ..., "l2": ..., "clip-i": ...}
"""

from .editing import METRICS, EditScores, check_pairs, cosine, parse_metrics, pixel_distances, score_pairs
from .encoders import ClipEncoder, DinoEncoder, clip_pixel_values, dino_pixel_values, load_clip, load_dino
from .pairs import SETTINGS, EditPair, EvalInputError, read_captions, read_magicbrush, read_manifest

__all__ = [
    "METRICS",
    "SETTINGS",
    "ClipEncoder",
    "DinoEncoder",
    "EditPair",
    "EditScores",
    "EvalInputError",
    "check_pairs",
    "clip_pixel_values",
    "cosine",
    "dino_pixel_values",
    "load_clip",
    "load_dino",
    "parse_metrics",
    "pixel_distances",
    "read_captions",
    "read_magicbrush",
    "read_manifest",
    "score_pairs",
]
