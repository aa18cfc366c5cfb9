"""What `python -m llmga eval t2i|inpaint|restore` run: inputs checked, models and metric networks found and loaded,
then the library loops of `t2i`, `inpaint` and `restore_eval`.

Metric weights come from the flags (--inception, --lpips-vgg, --lpips-lin, --clip) or, when a flag is not given,
from the first folder holding them among $LLMGA_EVAL_MODELS and `<models dir>/eval/` (default `models/eval/`):
    pt_inception-2015-12-05-6726825d.pth   FID Inception (pytorch-fid)
    vgg16-397923af.pth, vgg.pth             LPIPS VGG16 and its v0.1 linear heads
    clip-vit-base-patch32/                  CLIP ViT-B/32, Hugging Face layout
Nothing is downloaded; a missing file is an error naming it and where it is published.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

EVAL_MODELS_ENV = "LLMGA_EVAL_MODELS"
CLIP_FOLDER = "clip-vit-base-patch32"


def run_eval_command(args: argparse.Namespace) -> int:
    from .common import run_command

    body = {"t2i": _run_t2i, "inpaint": _run_inpaint, "restore": _run_restore}[args.eval_task]
    return run_command(lambda: body(args), "use a smaller --batch-size, --dtype fp16, or --device cpu")


# --- finding things ------------------------------------------------------------------------------------------------


def metric_folders(models_dirs: list[Path]) -> list[Path]:
    """Where metric weights are looked for when no flag names them: $LLMGA_EVAL_MODELS, then `<models dir>/eval`."""
    env = os.environ.get(EVAL_MODELS_ENV, "").strip()
    return ([Path(env).expanduser()] if env else []) + [root / "eval" for root in (models_dirs or [Path("models")])]


def find_metric_weights(given: Path | None, name: str, what: str, flag: str, where: str,
                        models_dirs: list[Path]) -> Path:
    """`given`, or the first `<folder>/<name>` among metric_folders; ModelNotFoundError naming the file, the folders
    searched and where the weights are published."""
    from ..hub import ModelNotFoundError

    if given is not None:
        if not given.exists():
            raise ModelNotFoundError(f"{what} weights not found: {flag} {given} does not exist. Give {name}; it is "
                                     f"published at {where}")
        return given
    folders = metric_folders(models_dirs)
    for folder in folders:
        if (folder / name).exists():
            return folder / name
    raise ModelNotFoundError(f"{what} weights not found: no {name} in {', '.join(str(f) for f in folders)}. Give "
                             f"{flag} <path of {name}> or put it in one of those folders (or in ${EVAL_MODELS_ENV}); "
                             f"it is published at {where}")


def _device(args: argparse.Namespace) -> str:
    from ..devices import pick_device

    return str(pick_device(args.device))


def _inception(args: argparse.Namespace):
    from ..eval.features import inception_extractor
    from ..eval.networks import INCEPTION_FILE, INCEPTION_URL, load_inception

    path = find_metric_weights(args.inception, INCEPTION_FILE, "FID Inception", "--inception", INCEPTION_URL,
                               args.models_dir)
    return inception_extractor(load_inception(path, _device(args)))


def _lpips(args: argparse.Namespace):
    from ..eval.networks import LPIPS_LIN_FILE, LPIPS_LIN_URL, LPIPS_VGG_FILE, LPIPS_VGG_URL, load_lpips

    vgg = find_metric_weights(args.lpips_vgg, LPIPS_VGG_FILE, "LPIPS VGG16", "--lpips-vgg", LPIPS_VGG_URL,
                              args.models_dir)
    lin = find_metric_weights(args.lpips_lin, LPIPS_LIN_FILE, "LPIPS linear heads", "--lpips-lin", LPIPS_LIN_URL,
                              args.models_dir)
    return load_lpips(vgg, lin, _device(args))


def _clip(args: argparse.Namespace):
    from ..eval.encoders import CLIP_REPO, load_clip

    path = find_metric_weights(args.clip, CLIP_FOLDER, "CLIP ViT-B/32", "--clip",
                               f"https://huggingface.co/{CLIP_REPO}", args.models_dir)
    return load_clip(path, _device(args), with_text=True)


def _feature_cache(args: argparse.Namespace):
    from ..eval.features import FeatureCache

    return FeatureCache(args.cache if args.cache is not None else args.out / "feature_cache")


def _metrics(args: argparse.Namespace, known: tuple[str, ...]) -> tuple[str, ...]:
    from ..eval.pairs import EvalInputError

    metrics = tuple(dict.fromkeys(name.strip().lower() for name in args.metrics.split(",") if name.strip()))
    unknown = [name for name in metrics if name not in known]
    if unknown or not metrics:
        raise EvalInputError(f"--metrics {args.metrics!r}: choose from {', '.join(known)} (comma-separated)")
    return metrics


def _images(folder: Path, num: int | None, seed: int) -> list[Path]:
    """The images of `folder` (sorted), or `num` of them drawn with RandomState(seed), in name order."""
    import numpy as np

    from ..eval.features import list_images
    from ..eval.pairs import EvalInputError

    if not folder.is_dir():
        raise EvalInputError(f"{folder} is not a folder: give the folder of evaluation images")
    paths = list_images(folder)
    if not paths:
        raise EvalInputError(f"{folder} holds no images (.png, .jpg, ...): give the folder of evaluation images")
    if num is None:
        return paths
    if not 1 <= num <= len(paths):
        raise EvalInputError(f"--num {num} but {folder} holds {len(paths)} images: give --num between 1 and "
                             f"{len(paths)}")
    return [paths[index] for index in sorted(np.random.RandomState(seed).choice(len(paths), num, replace=False))]


def _sd_loader(args: argparse.Namespace, inpainting: bool) -> Callable[[str], object]:
    from ..sd.pipelines import load_sd15_pipeline
    from .common import resolve_model

    def load(model: str):
        path = resolve_model(model, args.models_dir, "diffusers", args.allow_download)
        return load_sd15_pipeline(path, inpainting=inpainting, device=args.device, dtype=args.dtype)

    return load


def _check_models_exist(args: argparse.Namespace, models: list[str]) -> None:
    """Resolve every SD model before anything runs, so a typo fails in a second, not after the first setting."""
    from .common import resolve_model

    for model in dict.fromkeys(models):
        resolve_model(model, args.models_dir, "diffusers", args.allow_download)


class LazyAssistant:
    """Loads the assistant (`--mllm`) on first use, wraps it with `wrap(assistant)` and frees it on `close`, so a
    resumed run whose replies are all cached never loads it, and SD gets its memory back."""

    def __init__(self, args: argparse.Namespace, wrap: Callable[[object], Callable]) -> None:
        self.args, self.wrap, self.call = args, wrap, None

    def __call__(self, *inputs):
        if self.call is None:
            from ..mllm.chat import Assistant
            from ..mllm.loader import load_llmga
            from .common import resolve_model

            args = self.args
            path = resolve_model(args.mllm, args.models_dir, "LLM", args.allow_download)
            roots = args.models_dir or [Path("models")]
            loaded = load_llmga(path, dtype=args.dtype, device=args.device, allow_download=args.allow_download,
                                clip_vision_dirs=[root / "clip_vision" for root in roots])
            self.call = self.wrap(Assistant(loaded))
        return self.call(*inputs)

    def close(self) -> None:
        from ..devices import free_memory

        self.call = None
        free_memory()


def _assistant_settings(args: argparse.Namespace):
    from ..mllm.chat import GenerationSettings

    return GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)


def _print_done(result, table_text: str) -> None:
    print(table_text)
    print(f"Saved {result.files.json}, {result.files.markdown}" + (f", {result.files.plot}" if result.files.plot
                                                                     else ""))
    if result.files.plot_note:
        print(f"note: {result.files.plot_note}", file=sys.stderr)


# --- t2i -----------------------------------------------------------------------------------------------------------


def _run_t2i(args: argparse.Namespace) -> int:
    from ..eval.backends import AssistantRefiner, PipelineGenerator, clip_text_embedder
    from ..eval.pairs import EvalInputError
    from ..eval.t2i import (
        T2IGeneration,
        T2IMetrics,
        check_settings,
        parse_setting,
        read_t2i_captions,
        refine_captions,
        run_t2i_eval,
    )
    from ..sd.pipelines import check_size

    settings = [parse_setting(text) for text in args.setting]
    check_settings(settings)
    metrics = _metrics(args, ("fid", "is", "clip"))
    if "fid" in metrics and args.reference is None:
        raise EvalInputError("FID needs --reference: a folder of real images or an .npz of their statistics (or "
                             "leave fid out of --metrics)")
    if args.reference is not None and not args.reference.exists():
        raise EvalInputError(f"--reference {args.reference} does not exist: give a folder of real images or an .npz")
    refined = any(setting.prompt == "refined" for setting in settings)
    if refined and args.mllm is None:
        raise EvalInputError("a setting uses the refined prompt: give the assistant with --mllm")
    check_size(args.width, args.height)
    _check_numbers(args)
    captions = read_t2i_captions(args.captions, args.num, args.seed)
    _check_models_exist(args, [setting.model for setting in settings])
    cache = _feature_cache(args)
    clip = _clip(args) if "clip" in metrics else None
    scoring = T2IMetrics(inception=_inception(args) if {"fid", "is"} & set(metrics) else None,
                         with_is="is" in metrics, cache=cache, fid_size=args.fid_size or None,
                         batch_size=args.metric_batch_size, device=_device(args))
    if clip is not None:
        from ..eval.features import clip_image_extractor

        scoring.clip_image = clip_image_extractor(clip)
        scoring.clip_text = clip_text_embedder(clip, cache.folder / "clip_text" / f"{scoring.clip_image.name}.npz")
    generation = T2IGeneration(steps=args.steps, cfg=args.cfg, width=args.width, height=args.height,
                               negative=args.negative, seed=args.seed, encoding=args.encoding,
                               batch_size=args.batch_size)
    assistant_name = Path(args.mllm).name if refined else ""
    refiner = LazyAssistant(args, lambda assistant: AssistantRefiner(assistant, _assistant_settings(args)))
    if refined:
        refine_captions(captions, args.out / "refined.jsonl", refiner, assistant=assistant_name,
                        batch_size=args.batch_size)
        refiner.close()
    generator = PipelineGenerator(_sd_loader(args, inpainting=False), generation)
    result = run_t2i_eval(settings, captions, args.out, generate_fn=generator, metrics=scoring, refine_fn=refiner,
                          assistant=assistant_name, generation=generation,
                          reference=args.reference if "fid" in metrics else None)
    _print_done(result, result.files.markdown.read_text(encoding="utf-8"))
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
    from ..eval.pairs import EvalInputError

    for name in ("steps", "batch_size", "metric_batch_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise EvalInputError(f"--{name.replace('_', '-')} is {value} but must be 1 or more")
    if getattr(args, "cfg", 0) < 0:
        raise EvalInputError(f"--cfg is {args.cfg} but must be 0 or more")


# --- inpaint -------------------------------------------------------------------------------------------------------


def _diffrir_restorers(args: argparse.Namespace) -> list:
    """A Restorer per --diffrir LABEL=PATH (PATH: a file, or a file name in <models dir>/diffrir/)."""
    from ..eval.backends import diffrir_restorer
    from ..hub import DIFFRIR_DOWNLOAD, ModelNotFoundError
    from ..restore.checkpoint import load_diffrir

    restorers = []
    for text in args.diffrir:
        label, _, path_text = text.partition("=") if "=" in text else ("", "", text)
        path = Path(path_text).expanduser()
        if not path.is_file():
            folders = [root / "diffrir" for root in (args.models_dir or [Path("models")])]
            found = [folder / path_text for folder in folders if (folder / path_text).is_file()]
            if not found:
                raise ModelNotFoundError(f"DiffRIR weights {path_text!r} are neither a file nor in "
                                         f"{', '.join(str(folder) for folder in folders)}. "
                                         + DIFFRIR_DOWNLOAD.format(folders=folders[0]))
            path = found[0]
        model = load_diffrir(path, device=_device(args))
        restorers.append(diffrir_restorer(label.strip() or f"DiffRIR ({path.stem})", model))
    return restorers


def _run_inpaint(args: argparse.Namespace) -> int:
    from ..eval.backends import AssistantPrompter, PipelineInpainter
    from ..eval.inpaint import (
        InpaintGeneration,
        InpaintMetrics,
        assistant_prompts,
        parse_inpaint_setting,
        prepare_inpaint_set,
        run_inpaint_eval,
    )
    from ..eval.pairs import EvalInputError
    from ..masks import EVAL_MASKS

    settings = [parse_inpaint_setting(text) for text in args.setting]
    if not settings:
        raise EvalInputError("give at least one --setting LABEL=MODEL:PROMPT (PROMPT: plain or assistant), e.g. "
                             "\"LLMGA inpainting=binxia/llmga-sd15-inpainting-v2:plain\"")
    mask_types = tuple(dict.fromkeys(name.strip() for name in args.masks.split(",") if name.strip()))
    if not mask_types or any(name not in EVAL_MASKS for name in mask_types):
        raise EvalInputError(f"--masks {args.masks!r}: choose from {', '.join(EVAL_MASKS)} (comma-separated)")
    if args.size < 64 or args.size % 8:
        raise EvalInputError(f"--size is {args.size}: use a multiple of 8, at least 64 (LaMa's protocol: 512)")
    metrics = _metrics(args, ("fid", "lpips", "ssim"))
    with_assistant = any(setting.prompt == "assistant" for setting in settings)
    if with_assistant and args.mllm is None:
        raise EvalInputError("a setting uses the assistant's prompt: give the assistant with --mllm")
    _check_numbers(args)
    images = _images(args.images, args.num, args.seed)
    _check_models_exist(args, [setting.model for setting in settings])
    scoring = InpaintMetrics(inception=_inception(args) if "fid" in metrics else None,
                             lpips=_lpips(args) if "lpips" in metrics else None, ssim="ssim" in metrics,
                             cache=_feature_cache(args), batch_size=args.metric_batch_size, device=_device(args))
    restorers = _diffrir_restorers(args)
    sets = prepare_inpaint_set(images, args.out / "data", mask_types, size=args.size, seed=args.seed)
    generation = InpaintGeneration(steps=args.steps, cfg=args.cfg, plain_prompt=args.prompt, negative=args.negative,
                                   seed=args.seed, encoding=args.encoding)
    assistant_name = Path(args.mllm).name if with_assistant else ""
    prompter = LazyAssistant(args, lambda assistant: AssistantPrompter(assistant, _assistant_settings(args)))
    if with_assistant:
        assistant_prompts(sets, args.out / "prompts.jsonl", prompter, assistant=assistant_name,
                          batch_size=args.batch_size)
        prompter.close()
    inpainter = PipelineInpainter(_sd_loader(args, inpainting=True), generation)
    result = run_inpaint_eval(settings, sets, args.out, inpaint_fn=inpainter, metrics=scoring, prompt_fn=prompter,
                              assistant=assistant_name, restorers=restorers, generation=generation)
    _print_done(result, result.files.markdown.read_text(encoding="utf-8"))
    return 0


# --- restore -------------------------------------------------------------------------------------------------------


def _run_restore(args: argparse.Namespace) -> int:
    from ..eval.pairs import EvalInputError
    from ..eval.restore_eval import prepare_restore_set, run_restore_eval

    if not args.diffrir:
        raise EvalInputError("give the DiffRIR weights to evaluate: --diffrir [LABEL=]PATH (repeatable)")
    _check_numbers(args)
    images = _images(args.images, args.num, args.seed)
    lpips = _lpips(args)
    restorers = _diffrir_restorers(args)
    items = prepare_restore_set(images, args.out / "data", size=args.size, seed=args.seed, y_error=args.y_error)
    result = run_restore_eval(items, args.out, restorers=restorers, lpips=lpips, seed=args.seed,
                              batch_size=args.metric_batch_size, device=_device(args))
    _print_done(result, result.files.markdown.read_text(encoding="utf-8"))
    return 0
