"""`python -m llmga export-hf`: write an LLMGA assistant as a transformers-native LLaVA folder for serving engines."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..mllm.templates import TEMPLATE_NAMES
from . import common

ENGINES = ("transformers", "vllm", "sglang")  # llmga.mllm.export.ENGINES, kept here so --help imports no torch
EXPORT_DTYPES = ("auto", "bf16", "fp16", "fp32")


def add_export_command(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export-hf", help="export an LLMGA assistant as a transformers LlavaForConditionalGeneration folder",
        description="Write the assistant as a LlavaForConditionalGeneration folder (config, safetensors, tokenizer, "
        "processor with the LLMGA chat template, generation_config.json) that stock transformers, vLLM and SGLang "
        "load. Clients stretch each picture to a square before the processor, as LLMGA does.")
    export.add_argument("--mllm", required=True, help="assistant checkpoint folder or released name (e.g. "
                        "binxia/llmga-Qwen2-0.5B-full-finetune)")
    export.add_argument("--out", type=Path, required=True, help="folder to write (new or empty)")
    export.add_argument("--overwrite", action="store_true", help="replace --out when it already holds files")
    export.add_argument("--dtype", choices=EXPORT_DTYPES, default="auto",
                        help="weights' precision (auto: the checkpoint's own, bf16 for the released ones)")
    export.add_argument("--engine", choices=ENGINES, default="transformers",
                        help="what will serve the export; only Gemma's differs: vLLM and SGLang scale Gemma's image "
                        "features themselves, transformers 5 does not (default: transformers)")
    export.add_argument("--template", choices=("auto", *TEMPLATE_NAMES), default="auto",
                        help="the chat template written into the export (auto: the checkpoint's, as chat picks it)")
    common.add_models_arguments(export, "the assistant is looked up in it and its LLM/, the CLIP vision tower in its "
                                "clip_vision/")
    export.add_argument("--clip-vision-dir", type=Path, action="append", default=[],
                        help="folder searched for the CLIP vision tower (default: the models folders' clip_vision/)")
    export.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    return common.run_command(lambda: _export(args), "the export runs on the CPU; free memory or use --dtype bf16")


def _export(args: argparse.Namespace) -> int:
    from ..mllm.export import check_out_folder, export_llava_hf

    common.check_writable(args.out, "--out", folder=True)
    check_out_folder(args.out, args.overwrite)  # before a download or a load
    path = common.model_path(args.mllm, args.models_dir, "LLM", args.allow_download)
    roots = args.models_dir or [common.DEFAULT_MODELS_DIR]
    vision_dirs = args.clip_vision_dir or [root / "clip_vision" for root in roots]
    out = export_llava_hf(path, args.out, dtype=args.dtype, engine=args.engine,
                          template=None if args.template == "auto" else args.template, clip_vision_dirs=vision_dirs,
                          allow_download=args.allow_download, overwrite=args.overwrite)
    print(f"wrote {out}: load it with LlavaForConditionalGeneration.from_pretrained and AutoProcessor.from_pretrained; "
          "stretch each picture to a square before the processor")
    return 0
