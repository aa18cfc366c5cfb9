"""`python -m llmga eval-edit`: MagicBrush's editing metrics for a manifest of our outputs or a MagicBrush folder.

    python -m llmga eval-edit edits.jsonl --clip models/clip-vit-base-patch32 --dino models/dino-vits16
    python -m llmga eval-edit generated/ --gt test/images --captions test/local_captions.json --clip ... --dino ...
    python -m llmga eval-edit edits.csv --metrics l1,l2 --json scores.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .editing import CLIP_METRICS, METRICS
from .pairs import SETTINGS

# torch/transformers load only when the command runs.


def add_eval_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval-edit", help="MagicBrush editing metrics (L1, L2, CLIP-I, CLIP-T, DINO) of edited images",
        description=(
            "Score edited images against their ground truth with MagicBrush's metrics (evaluation/image_eval.py). "
            "SOURCE is a manifest (.jsonl, .json or .csv; columns output, target, caption, input; paths relative to "
            "the manifest) or, with --gt, a folder of MagicBrush sessions (<id>/<id>_1.png, <id>_inde_<k>.png, "
            "<id>_iter_<k>.png). Nothing is downloaded: CLIP and DINO come from local folders."))
    parser.add_argument("source", type=Path, help="manifest file, or the folder of generated MagicBrush sessions")
    parser.add_argument("--gt", type=Path, help="MagicBrush ground-truth folder (<id>/<id>-output<k>.png); "
                        "makes SOURCE a MagicBrush folder")
    parser.add_argument("--captions", type=Path, help="MagicBrush local_captions.json (for clip-t)")
    parser.add_argument("--setting", choices=(*SETTINGS, "both"), default="both",
                        help="MagicBrush setting: single-turn (all turns), multi-turn (final turn) or both (default)")
    parser.add_argument("--metrics", default=",".join(METRICS),
                        help=f"comma-separated metrics (default: all, {','.join(METRICS)}); clip-i and clip-t need "
                             "--clip, dino needs --dino")
    parser.add_argument("--clip", type=Path, help="folder of openai/clip-vit-base-patch32 (Hugging Face layout)")
    parser.add_argument("--dino", type=Path, help="folder of facebook/dino-vits16 (Hugging Face layout), or the "
                        "official dino_deitsmall16_pretrain.pth")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu", "mps"), default="auto")
    parser.add_argument("--json", type=Path, help="write the means and per-image scores to this JSON file")
    parser.set_defaults(run=run_eval_edit)


def run_eval_edit(args: argparse.Namespace) -> int:
    from ..hub import ModelNotFoundError
    from .editing import check_pairs, parse_metrics
    from .pairs import EvalInputError

    try:
        metrics = parse_metrics(args.metrics)
        _check_weights_given(args, metrics)
        settings = _read_pairs(args)
        for pairs in settings.values():
            check_pairs(pairs, metrics)
        results = _score(args, metrics, settings)
    except (EvalInputError, ModelNotFoundError, OSError, ValueError) as error:
        print("error: " + " ".join(str(error).splitlines()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    for name, scores in results.items():
        means = "  ".join(f"{key} {value:.4f}" for key, value in scores.means.items())
        print(f"{name} ({scores.count} pairs): {means}")
    if args.json is not None:
        report = {"metrics": list(metrics), "source": str(args.source),
                  "settings": {name: {"count": scores.count, "means": scores.means, "rows": scores.rows}
                               for name, scores in results.items()}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"Saved {args.json}")
    return 0


def _check_weights_given(args: argparse.Namespace, metrics: tuple[str, ...]) -> None:
    from .pairs import EvalInputError

    needs = [("--clip", "openai/clip-vit-base-patch32", [m for m in metrics if m in CLIP_METRICS], args.clip),
             ("--dino", "facebook/dino-vits16", [m for m in metrics if m == "dino"], args.dino)]
    for flag, repo, wanted, given in needs:
        if wanted and given is None:
            rest = ",".join(m for m in metrics if m not in wanted) or "l1,l2"
            raise EvalInputError(f"{' and '.join(wanted)} need {flag}: give {flag} <local folder of {repo}>, or "
                                 f"leave {' and '.join(wanted)} out (e.g. --metrics {rest})")


def _read_pairs(args: argparse.Namespace) -> dict:
    """{setting name: [EditPair]}: one 'manifest' setting, or the asked MagicBrush settings."""
    from .pairs import EvalInputError, read_captions, read_magicbrush, read_manifest

    if args.gt is None:
        if args.source.is_dir():
            raise EvalInputError(f"{args.source} is a folder: give --gt <ground-truth folder> to score it as "
                                 "MagicBrush sessions, or give a manifest file")
        return {"manifest": read_manifest(args.source)}
    if args.source.is_file():
        raise EvalInputError(f"{args.source} is a file but --gt was given: --gt goes with a folder of generated "
                             "MagicBrush sessions; drop --gt to read a manifest")
    captions = read_captions(args.captions) if args.captions is not None else None
    settings = SETTINGS if args.setting == "both" else (args.setting,)
    return {name: read_magicbrush(args.source, args.gt, name, captions) for name in settings}


def _score(args: argparse.Namespace, metrics: tuple[str, ...], settings: dict) -> dict:
    from .editing import score_pairs
    from .encoders import load_clip, load_dino

    clip = dino = None
    if any(name in metrics for name in CLIP_METRICS) or "dino" in metrics:
        from ..mllm.loader import pick_device

        device = str(pick_device(args.device))
        if any(name in metrics for name in CLIP_METRICS):
            clip = load_clip(args.clip, device, with_text="clip-t" in metrics)
        if "dino" in metrics:
            dino = load_dino(args.dino, device)
    return {name: score_pairs(pairs, metrics, clip=clip, dino=dino, progress=_progress(name))
            for name, pairs in settings.items()}


def _progress(name: str):
    def report(done: int, total: int) -> None:
        print(f"\r{name}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    return report
