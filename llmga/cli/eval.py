"""`python -m llmga eval t2i|inpaint|edit|restore`: the paper's tables, one command each (`eval-edit` = `eval edit`).

    python -m llmga eval t2i captions_val2014.json --num 30000 --reference coco_val2014/ --mllm <assistant> \\
        --setting "SD1.5 + short caption=models/diffusers/stable-diffusion-v1-5:caption" ...
    python -m llmga eval inpaint places_val/ --num 2000 --setting "LLMGA=binxia/llmga-sd15-inpainting-v2:assistant" \\
        --mllm <assistant> --diffrir DiffRIR=models/diffrir/DiffRIRS2_GAN_x1.pth
    python -m llmga eval t2i captions_val2014.json --num 5000 --reference coco_val2014/ --mllm <assistant> \\
        --setting "LLMGA SDXL + refined prompt=binxia/llmga-sdxl-t2i:refined"     # 1024x1024, 50 steps, CFG 5.0
    python -m llmga eval edit edits.jsonl --clip models/eval/clip-vit-base-patch32 --dino models/dino-vits16
    python -m llmga eval restore held_out/ --diffrir models/diffrir/DiffRIRS2_GAN_x1.pth

See docs/evaluation.md for the protocols and where the metric weights go.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..devices import DEVICES
from ..eval.editing import METRICS
from ..eval.pairs import SETTINGS
from .common import add_assistant_arguments, add_device_arguments, add_models_arguments
from .eval_runs import run_eval_command

# torch/transformers load only when a command runs.

EDIT_DESCRIPTION = (
    "Score edited images against their ground truth with MagicBrush's metrics (evaluation/image_eval.py). "
    "SOURCE is a manifest (.jsonl, .json or .csv; columns output, target, caption, input; paths relative to "
    "the manifest) or, with --gt, a folder of MagicBrush sessions (<id>/<id>_1.png, <id>_inde_<k>.png, "
    "<id>_iter_<k>.png). Nothing is downloaded: CLIP and DINO come from local folders.")
MODELS_KINDS = "DiffRIR names are looked up in its diffrir/, metric weights in its eval/ (never downloaded)"
DTYPE_HELP = "auto: SD in fp16 and the assistant in bf16 on GPUs, fp32 on the CPU; DiffRIR and metric networks: fp32"


def add_eval_commands(commands: argparse._SubParsersAction) -> None:
    edit_help = "MagicBrush editing metrics (L1, L2, CLIP-I, CLIP-T, DINO) of edited images"
    _add_edit_arguments(commands.add_parser("eval-edit", help=edit_help + " (= eval edit)",
                                            description=EDIT_DESCRIPTION))
    evaluate = commands.add_parser(
        "eval", help="reproduce the paper's tables: t2i (Table 1), inpaint (Tables 3, 4), edit, restore",
        description="Evaluation runs that reproduce the paper's tables. Each writes report.json, report.md and "
        "report.png (with matplotlib) in --out and resumes where it stopped. See docs/evaluation.md.")
    tasks = evaluate.add_subparsers(dest="eval_task", required=True)
    _add_t2i_arguments(tasks.add_parser(
        "t2i", help="Table 1: FID, IS and CLIP score of SD1.5 / SDXL images from COCO captions (optionally refined)",
        description="Generate one image per caption for every --setting (resumable), then score FID against "
        "--reference, Inception Score (10 splits) and CLIP score (ViT-B/32, against the short caption)."))
    _add_inpaint_arguments(tasks.add_parser(
        "inpaint", help="Tables 3 and 4: FID, LPIPS and SSIM of inpainting/outpainting on LaMa-style masks",
        description="Crop every image to 512 (LaMa's protocol), draw narrow/medium/wide/outpaint masks "
        "(deterministic, saved in LaMa's naming), inpaint for every --setting, restore with every --diffrir, "
        "score FID, LPIPS and SSIM per mask type (resumable)."))
    _add_edit_arguments(tasks.add_parser("edit", help=edit_help, description=EDIT_DESCRIPTION))
    _add_restore_arguments(tasks.add_parser(
        "restore", help="PSNR, SSIM, LPIPS of DiffRIR on held-out images with its training degradations",
        description="Degrade held-out images with DiffRIR's training degradations (D1 second-order + D2 "
        "luminance) under DiffRIR's training masks, restore with every --diffrir, and compare with the plain "
        "composite (resumable)."))


def _add_edit_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where CLIP and DINO run (in fp32)")
    parser.add_argument("--json", type=Path, help="write the means and per-image scores to this JSON file")
    parser.set_defaults(run=run_eval_command, eval_task="edit")


def _add_run_arguments(parser: argparse.ArgumentParser, task: str, metric_flags: tuple[str, ...]) -> None:
    """What every generating evaluation takes: output, metric weights, devices, seeds, batches."""
    parser.add_argument("--out", type=Path, default=Path("outputs") / f"eval-{task}",
                        help=f"run folder (created; a second run resumes in it; default outputs/eval-{task})")
    weights = {"inception": "FID Inception pt_inception-2015-12-05-6726825d.pth (default: looked up in "
                            "$LLMGA_EVAL_MODELS and <models dir>/eval/)",
               "lpips-vgg": "LPIPS VGG16 vgg16-397923af.pth (default: looked up as --inception)",
               "lpips-lin": "LPIPS v0.1 linear heads vgg.pth (default: looked up as --inception)",
               "clip": "folder of openai/clip-vit-base-patch32 (default: <eval folder>/clip-vit-base-patch32)"}
    for flag in metric_flags:
        parser.add_argument(f"--{flag}", type=Path, help=weights[flag])
    parser.add_argument("--cache", type=Path, help="feature cache folder (default <out>/feature_cache); share one "
                        "between runs to reuse the reference set's features")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling, crops, masks and generation")
    parser.add_argument("--metric-batch-size", type=int, default=16, help="images per metric-network batch")
    add_device_arguments(parser, DTYPE_HELP)
    parser.set_defaults(run=run_eval_command, eval_task=task)


def _add_generation_arguments(parser: argparse.ArgumentParser, setting_help: str) -> None:
    """The settings, SD's sampling and the assistant (--mllm, --models-dir, --allow-download, --temperature,
    --max-new-tokens: greedy by default, reproducible)."""
    parser.add_argument("--setting", action="append", default=[], help=setting_help)
    add_assistant_arguments(parser, required=False, temperature=0.0, other_kinds=MODELS_KINDS)
    official = "default: the official value for each setting's model"
    parser.add_argument("--steps", type=int, help=f"denoising steps ({official}: 50; SDXL inpainting 30)")
    parser.add_argument("--cfg", type=float, help=f"classifier-free guidance ({official}: 7.5; SDXL text to image "
                        "5.0)")
    parser.add_argument("--negative", default="", help="negative prompt (official: none)")
    parser.add_argument("--encoding", choices=("llmga", "lpw"), default="llmga",
                        help="SD1.5's long-prompt encoding (SDXL has one, llmga)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per SD call and assistant replies per batch")
def _add_t2i_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("captions", type=Path, help="COCO captions JSON (captions_val2014.json) or a text file, one "
                        "caption a line")
    parser.add_argument("--num", type=int, help="random images (one random caption each) to use; default: all, "
                        "first caption of each (the usual protocol: 30000)")
    parser.add_argument("--reference", type=Path, help="real images for FID: a folder, or an .npz of Inception "
                        "statistics (pytorch-fid --save-stats or a previous run's) computed at --fid-size")
    parser.add_argument("--metrics", default="fid,is,clip", help="comma-separated: fid, is, clip (default all)")
    parser.add_argument("--fid-size", type=int, default=256,
                        help="square size images are resized to for FID and IS (default 256; 0: as generated)")
    parser.add_argument("--width", type=int, help="image width (default: the official 512; SDXL 1024)")
    parser.add_argument("--height", type=int, help="image height (default: the official 512; SDXL 1024)")
    _add_generation_arguments(parser, "LABEL=MODEL:PROMPT, repeatable, one row of Table 1: MODEL an SD1.5 or SDXL "
                              "text-to-image folder or released name, PROMPT caption (the short caption) or "
                              "refined (the assistant's prompt; needs --mllm), e.g. \"SD1.5 + short caption="
                              "models/sd15:caption\"")
    _add_run_arguments(parser, "t2i", ("inception", "clip"))


def _add_inpaint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", type=Path, help="folder of evaluation images (Places365 val_large for the paper)")
    parser.add_argument("--num", type=int, help="random images to use (default: all)")
    parser.add_argument("--masks", default="narrow,medium,wide,outpaint",
                        help="comma-separated mask types: narrow (LaMa thin), medium, wide (LaMa thick), outpaint "
                             "(15-40%% border bands); default all")
    parser.add_argument("--size", type=int, default=512, help="crop size (LaMa: 512)")
    parser.add_argument("--prompt", default="", help="the prompt of 'plain' settings (default: empty)")
    parser.add_argument("--diffrir", action="append", default=[],
                        help="[LABEL=]PATH of DiffRIR weights, repeatable: every setting is also scored restored by "
                             "each (Table 4 compares them); PATH a file or a name in <models dir>/diffrir/")
    parser.add_argument("--metrics", default="fid,lpips,ssim", help="comma-separated: fid, lpips, ssim (default all)")
    parser.add_argument("--strength", type=float, help="SDXL inpainting: how far the picture under the mask is "
                        "noised, in (0, 1] (default: the official 0.8); SD1.5 repaints from pure noise")
    _add_generation_arguments(parser, "LABEL=MODEL:PROMPT, repeatable, one row of Table 3: MODEL an SD1.5 or SDXL "
                              "inpainting folder or released name (SDXL works at 1024x1024, resized back), PROMPT "
                              "plain (--prompt) or assistant (the assistant's inpaint/outpaint prompt; needs --mllm)")
    _add_run_arguments(parser, "inpaint", ("inception", "lpips-vgg", "lpips-lin"))


def _add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", type=Path, help="folder of held-out images (not in DiffRIR's training data)")
    parser.add_argument("--num", type=int, help="random images to use (default: all)")
    parser.add_argument("--size", type=int, default=512, help="crop size (default 512; at least 80)")
    parser.add_argument("--diffrir", action="append", default=[],
                        help="[LABEL=]PATH of DiffRIR weights, repeatable (a file or a name in <models dir>/diffrir/)")
    parser.add_argument("--y-error", type=float, default=0.06,
                        help="D2 contrast error: c1 in [1-y, 1+y] (0.06: the x1 GAN model's training; S2: 0.08)")
    add_models_arguments(parser, MODELS_KINDS)
    _add_run_arguments(parser, "restore", ("lpips-vgg", "lpips-lin"))
