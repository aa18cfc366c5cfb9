"""Evaluation, free of ComfyUI: the paper's tables as library loops, and the metrics they use.

    captions = read_t2i_captions("captions_val2014.json", num=30000)          # Table 1 (t2i)
    run_t2i_eval(settings, captions, out, generate_fn=..., metrics=T2IMetrics(inception=...), reference=...)
    sets = prepare_inpaint_set(images, out / "data", ("narrow", "wide", "outpaint"))   # Tables 3 and 4
    run_inpaint_eval(settings, sets, out, inpaint_fn=..., metrics=InpaintMetrics(...), restorers=[...])
    run_restore_eval(prepare_restore_set(images, out / "data"), out, restorers=[...], lpips=...)
    scores = score_pairs(read_manifest("edits.jsonl"), ("l1", "l2", "clip-i"), clip=load_clip(...))   # MagicBrush

Metric arithmetic (`metrics`), networks (`networks`: FID Inception, LPIPS; `encoders`: CLIP, DINO), where their
weights are found (`weights`), the feature cache (`features`), per-pair scores (`scoring`) and the library's models
bound to the loops (`backends`) load torch only when used; so does everything here, so importing this package stays
light. An application of the library like `training/`: the command line (`python -m llmga eval ...`) only parses,
checks and prints.
"""

from .backends import LazyAssistant, diffrir_restorer, load_diffrir_restorer
from .editing import METRICS, EditScores, check_pairs, cosine, pixel_distances, score_pairs
from .encoders import ClipEncoder, DinoEncoder, clip_pixel_values, dino_pixel_values, load_clip, load_dino
from .features import (
    FeatureCache,
    clip_image_extractor,
    extract_features,
    inception_extractor,
    pick_images,
    stats_for,
)
from .inpaint import (
    InpaintGeneration,
    InpaintItem,
    InpaintMetrics,
    InpaintSetting,
    Restorer,
    eval_mask,
    prepare_inpaint_set,
    run_inpaint_eval,
)
from .metrics import FeatureStats, clip_score, feature_stats, fid, inception_score, psnr, ssim
from .networks import load_inception, load_lpips
from .pairs import SETTINGS, EditPair, EvalInputError, read_captions, read_magicbrush, read_manifest
from .report import RunResult, Table, markdown_table, write_report
from .restore_eval import RestoreItem, prepare_restore_set, run_restore_eval
from .runs import Generation, Setting, parse_metrics
from .t2i import Caption, T2IGeneration, T2IMetrics, T2ISetting, read_t2i_captions, run_t2i_eval
from .weights import EVAL_MODELS_ENV, find_diffrir_weights, find_metric_weights, metric_folders

__all__ = [
    "EVAL_MODELS_ENV",
    "METRICS",
    "SETTINGS",
    "Caption",
    "ClipEncoder",
    "DinoEncoder",
    "EditPair",
    "EditScores",
    "EvalInputError",
    "FeatureCache",
    "FeatureStats",
    "Generation",
    "InpaintGeneration",
    "InpaintItem",
    "InpaintMetrics",
    "InpaintSetting",
    "LazyAssistant",
    "Restorer",
    "RestoreItem",
    "RunResult",
    "Setting",
    "T2IGeneration",
    "T2IMetrics",
    "T2ISetting",
    "Table",
    "check_pairs",
    "clip_image_extractor",
    "clip_pixel_values",
    "clip_score",
    "cosine",
    "diffrir_restorer",
    "dino_pixel_values",
    "eval_mask",
    "extract_features",
    "feature_stats",
    "fid",
    "find_diffrir_weights",
    "find_metric_weights",
    "inception_extractor",
    "inception_score",
    "load_clip",
    "load_diffrir_restorer",
    "load_dino",
    "load_inception",
    "load_lpips",
    "markdown_table",
    "metric_folders",
    "parse_metrics",
    "pick_images",
    "pixel_distances",
    "prepare_inpaint_set",
    "prepare_restore_set",
    "psnr",
    "read_captions",
    "read_magicbrush",
    "read_manifest",
    "read_t2i_captions",
    "run_inpaint_eval",
    "run_restore_eval",
    "run_t2i_eval",
    "score_pairs",
    "ssim",
    "stats_for",
    "write_report",
]
