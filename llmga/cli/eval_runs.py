"""What `python -m llmga eval t2i|inpaint|edit|restore` (and `eval-edit`) run: the options are checked, the models
and metric weights found (`llmga.eval.weights`: the flags, $LLMGA_EVAL_MODELS, `<models dir>/eval/`) and loaded,
then the library's loops run (`llmga.eval.t2i`, `inpaint`, `restore_eval`, `editing`) and their tables are printed.
Every error reaches the user as one line (`common.run_command`). Under `accelerate launch` with several processes,
t2i, inpaint and restore share their items among them (`llmga.shards`: each on its own GPU with --device auto) and
the main process scores and prints; edit only scores, so the main process does it all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .common import (
    InputError,
    assistant_settings,
    check_assistant_numbers,
    check_at_least,
    check_writable,
    load_assistant,
    model_folders,
    model_path,
    run_command,
)

if TYPE_CHECKING:
    from ..shards import Shards

OUT_OF_MEMORY_HINTS = {"t2i": "use a smaller --batch-size, --dtype fp16, or --device cpu",
                       "inpaint": "use a smaller --batch-size, --dtype fp16, or --device cpu",
                       "restore": "use a smaller --metric-batch-size, or --device cpu",
                       "edit": "use --device cpu"}


def run_eval_command(args: argparse.Namespace) -> int:
    body = {"t2i": _run_t2i, "inpaint": _run_inpaint, "restore": _run_restore, "edit": _run_edit}[args.eval_task]

    def run() -> int:
        from ..shards import process_shards

        shards = process_shards()
        if args.eval_task == "edit" and not shards.is_main:
            return 0
        args.device = shards.device(args.device)
        _check_outputs(args)
        return body(args, shards)

    return run_command(run, OUT_OF_MEMORY_HINTS[args.eval_task])


def _check_outputs(args: argparse.Namespace) -> None:
    """The files a run writes can be written, checked before anything loads: --json (eval edit), else the run
    folder --out and the feature cache --cache."""
    if args.eval_task == "edit":
        if args.json is not None:
            check_writable(args.json, "--json", folder=False)
        return
    check_writable(args.out, "--out", folder=True)
    if args.cache is not None:
        check_writable(args.cache, "--cache", folder=True)


# --- models and metric networks ------------------------------------------------------------------------------------


def _metric_device(args: argparse.Namespace) -> str:
    from ..devices import device_and_dtype

    return str(device_and_dtype("metrics", args.device)[0])


def _metric_weights(args: argparse.Namespace, kind: str) -> Path:
    from ..eval.weights import find_metric_weights

    return find_metric_weights(kind, getattr(args, kind.replace("-", "_")), model_folders(args.models_dir, "eval"))


def _inception(args: argparse.Namespace):
    from ..eval.features import inception_extractor
    from ..eval.networks import load_inception

    return inception_extractor(load_inception(_metric_weights(args, "inception"), _metric_device(args)))


def _lpips(args: argparse.Namespace):
    from ..eval.networks import load_lpips

    return load_lpips(_metric_weights(args, "lpips-vgg"), _metric_weights(args, "lpips-lin"), _metric_device(args))


def _feature_cache(args: argparse.Namespace):
    from ..eval.features import FeatureCache

    return FeatureCache(args.cache if args.cache is not None else args.out / "feature_cache")


def _diffrir_restorers(args: argparse.Namespace) -> list:
    from ..eval.backends import load_diffrir_restorer

    return [load_diffrir_restorer(spec, model_folders(args.models_dir, "diffrir"), args.device)
            for spec in args.diffrir]


def _sd_loader(args: argparse.Namespace, inpainting: bool) -> Callable[[str], object]:
    from ..sd.pipelines import load_sd_pipeline

    def load(model: str):
        path = model_path(model, args.models_dir, "diffusers", args.allow_download)
        return load_sd_pipeline(path, inpainting=inpainting, device=args.device, dtype=args.dtype)

    return load


def _with_generations(args: argparse.Namespace, settings: list, inpainting: bool,
                      generation_for: Callable[[object], object]) -> tuple[list, object]:
    """Resolve every setting's SD model before anything runs (a typo fails in a second, not after the first setting),
    check it (`check_sd_task`, `check_family_options`) and give it `generation_for(official)`, the run's options with
    those left out taken from its official script (`official_sampling` of its family). Returns the settings, each
    carrying its generation where it differs from the first's, and the first's (the run's)."""
    from dataclasses import replace

    from ..sd.official import official_sampling
    from ..sd.pipelines import check_family_options, check_sd_task, read_sd_model

    generations = []
    for setting in settings:
        model = read_sd_model(model_path(setting.model, args.models_dir, "diffusers", args.allow_download))
        check_sd_task(model, inpainting)
        check_family_options(model, encoding=args.encoding, strength=getattr(args, "strength", None))
        generations.append(generation_for(official_sampling(model.family, inpainting)))
    run = generations[0]
    return [replace(setting, generation=None if generation == run else generation)
            for setting, generation in zip(settings, generations, strict=True)], run


def _assistant_first(args: argparse.Namespace, used: bool, wrap: type, ask: Callable[[Callable, str], object]):
    """(the assistant's name, "" when no setting uses it; its lazily loaded `wrap` callable). When used, `ask(it,
    name)` makes (and caches) every reply first, then the assistant is freed before SD loads."""
    from ..eval.backends import LazyAssistant

    settings = assistant_settings(args, args.seed)
    assistant = LazyAssistant(lambda: load_assistant(args), lambda loaded: wrap(loaded, settings))
    name = Path(args.mllm).name if used else ""
    if used:
        ask(assistant, name)
        assistant.close()
    return name, assistant


def _check_generation(args: argparse.Namespace, uses_assistant: bool, prompt: str) -> None:
    if uses_assistant and args.mllm is None:
        raise InputError(f"a setting uses the {prompt}: give the assistant with --mllm")
    if args.steps is not None:
        check_at_least(args.steps, 1, "--steps")
    check_at_least(args.batch_size, 1, "--batch-size")
    if args.cfg is not None:
        check_at_least(args.cfg, 0, "--cfg")
    strength = getattr(args, "strength", None)
    if strength is not None and not 0 < strength <= 1:
        raise InputError(f"--strength is {strength} but must be in (0, 1] (1: pure noise; SDXL's official 0.8)")
    check_assistant_numbers(args)
    check_at_least(args.metric_batch_size, 1, "--metric-batch-size")


def _print_done(result) -> None:
    """The report of the main process (the others' result is None: they print nothing)."""
    if result is None:
        return
    print(result.files.markdown.read_text(encoding="utf-8"))
    print(f"Saved {result.files.json}, {result.files.markdown}" + (f", {result.files.plot}" if result.files.plot
                                                                     else ""))
    if result.files.plot_note:
        print(f"note: {result.files.plot_note}", file=sys.stderr)


# --- t2i (Table 1) -------------------------------------------------------------------------------------------------


def _run_t2i(args: argparse.Namespace, shards: Shards) -> int:
    from ..eval.backends import AssistantRefiner, PipelineGenerator, clip_text_embedder
    from ..eval.runs import parse_metrics
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
    metrics = parse_metrics(args.metrics, ("fid", "is", "clip"))
    if "fid" in metrics and args.reference is None:
        raise InputError("FID needs --reference: a folder of real images or an .npz of their statistics (or leave "
                         "fid out of --metrics)")
    if args.reference is not None and not args.reference.exists():
        raise InputError(f"--reference {args.reference} does not exist: give a folder of real images or an .npz")
    refined = any(setting.prompt == "refined" for setting in settings)
    _check_generation(args, refined, "refined prompt")
    check_at_least(args.fid_size, 0, "--fid-size", " (0: as generated)")
    check_size(args.width, args.height)
    captions = read_t2i_captions(args.captions, args.num, args.seed)
    settings, generation = _with_generations(args, settings, False, lambda official: T2IGeneration(
        steps=args.steps or official.steps, cfg=official.cfg if args.cfg is None else args.cfg,
        width=args.width or official.size, height=args.height or official.size, negative=args.negative,
        seed=args.seed, encoding=args.encoding, batch_size=args.batch_size))
    cache = _feature_cache(args)
    scoring = T2IMetrics(inception=_inception(args) if {"fid", "is"} & set(metrics) else None,
                         with_is="is" in metrics, cache=cache, fid_size=args.fid_size or None,
                         batch_size=args.metric_batch_size, device=_metric_device(args))
    if "clip" in metrics:
        from ..eval.encoders import load_clip
        from ..eval.features import clip_image_extractor

        clip = load_clip(_metric_weights(args, "clip"), _metric_device(args), with_text=True)
        scoring.clip_image = clip_image_extractor(clip)
        scoring.clip_text = clip_text_embedder(clip, cache.folder / "clip_text" / f"{scoring.clip_image.name}.npz")
    name, refiner = _assistant_first(args, refined, AssistantRefiner, lambda refine, assistant: refine_captions(
        captions, args.out / "refined.jsonl", refine, assistant=assistant, batch_size=args.batch_size, shards=shards))
    generator = PipelineGenerator(_sd_loader(args, inpainting=False), generation, settings)
    _print_done(run_t2i_eval(settings, captions, args.out, generate_fn=generator, metrics=scoring, refine_fn=refiner,
                             assistant=name, generation=generation,
                             reference=args.reference if "fid" in metrics else None, shards=shards))
    return 0


# --- inpaint (Tables 3 and 4) --------------------------------------------------------------------------------------


def _run_inpaint(args: argparse.Namespace, shards: Shards) -> int:
    from ..eval.backends import AssistantPrompter, PipelineInpainter
    from ..eval.features import pick_images
    from ..eval.inpaint import (
        InpaintMetrics,
        assistant_prompts,
        parse_inpaint_setting,
        prepare_inpaint_set,
        run_inpaint_eval,
    )
    from ..eval.runs import parse_metrics, parse_names
    from ..masks import EVAL_MASKS

    settings = [parse_inpaint_setting(text) for text in args.setting]
    if not settings:
        raise InputError("give at least one --setting LABEL=MODEL:PROMPT (PROMPT: plain or assistant), e.g. "
                         "\"LLMGA inpainting=binxia/llmga-sd15-inpainting-v2:plain\"")
    mask_types = parse_names(args.masks, tuple(EVAL_MASKS), "--masks", "mask types")
    if args.size < 64 or args.size % 8:
        raise InputError(f"--size is {args.size}: use a multiple of 8, at least 64 (LaMa's protocol: 512)")
    metrics = parse_metrics(args.metrics, ("fid", "lpips", "ssim"))
    with_assistant = any(setting.prompt == "assistant" for setting in settings)
    _check_generation(args, with_assistant, "assistant's prompt")
    images = pick_images(args.images, args.num, args.seed)
    settings, generation = _with_generations(args, settings, True,
                                             lambda official: _inpaint_generation(args, official))
    scoring = InpaintMetrics(inception=_inception(args) if "fid" in metrics else None,
                             lpips=_lpips(args) if "lpips" in metrics else None, ssim="ssim" in metrics,
                             cache=_feature_cache(args), batch_size=args.metric_batch_size,
                             device=_metric_device(args))
    restorers = _diffrir_restorers(args)
    sets = prepare_inpaint_set(images, args.out / "data", mask_types, size=args.size, seed=args.seed, shards=shards)
    name, prompter = _assistant_first(args, with_assistant, AssistantPrompter, lambda prompt, assistant: (
        assistant_prompts(sets, args.out / "prompts.jsonl", prompt, assistant=assistant, batch_size=args.batch_size,
                          shards=shards)))
    inpainter = PipelineInpainter(_sd_loader(args, inpainting=True), generation, settings)
    _print_done(run_inpaint_eval(settings, sets, args.out, inpaint_fn=inpainter, metrics=scoring, prompt_fn=prompter,
                                 assistant=name, restorers=restorers, generation=generation, shards=shards))
    return 0


def _inpaint_generation(args: argparse.Namespace, official):
    """The inpainting generation of a setting whose official script is `official`: the options given, else its."""
    from ..eval.inpaint import InpaintGeneration
    from ..sd.pipelines import check_strength

    steps = args.steps or official.steps
    strength = official.strength if args.strength is None else args.strength
    check_strength(strength, steps)
    return InpaintGeneration(steps=steps, cfg=official.cfg if args.cfg is None else args.cfg, strength=strength,
                            plain_prompt=args.prompt, negative=args.negative, seed=args.seed, encoding=args.encoding)


# --- restore -------------------------------------------------------------------------------------------------------


def _run_restore(args: argparse.Namespace, shards: Shards) -> int:
    from ..eval.features import pick_images
    from ..eval.restore_eval import prepare_restore_set, run_restore_eval

    if not args.diffrir:
        raise InputError("give the DiffRIR weights to evaluate: --diffrir [LABEL=]PATH (repeatable)")
    check_at_least(args.metric_batch_size, 1, "--metric-batch-size")
    images = pick_images(args.images, args.num, args.seed)
    lpips = _lpips(args)
    restorers = _diffrir_restorers(args)
    items = prepare_restore_set(images, args.out / "data", size=args.size, seed=args.seed, y_error=args.y_error,
                                shards=shards)
    _print_done(run_restore_eval(items, args.out, restorers=restorers, lpips=lpips, seed=args.seed,
                                 batch_size=args.metric_batch_size, device=_metric_device(args), shards=shards))
    return 0


# --- edit (MagicBrush) ---------------------------------------------------------------------------------------------


def _run_edit(args: argparse.Namespace, shards: Shards) -> int:
    from ..eval.editing import METRICS, check_pairs
    from ..eval.pairs import read_edit_pairs
    from ..eval.runs import parse_metrics
    from ..files import write_json_atomic

    metrics = parse_metrics(args.metrics, METRICS)
    _check_edit_weights_given(args, metrics)
    settings = read_edit_pairs(args.source, args.gt, args.setting, args.captions)
    for pairs in settings.values():
        check_pairs(pairs, metrics)
    results = _score_edits(args, metrics, settings)
    for name, scores in results.items():
        means = "  ".join(f"{key} {value:.4f}" for key, value in scores.means.items())
        print(f"{name} ({scores.count} pairs): {means}")
    if args.json is not None:
        write_json_atomic(args.json, {"metrics": list(metrics), "source": str(args.source),
                                      "settings": {name: {"count": scores.count, "means": scores.means,
                                                          "rows": scores.rows} for name, scores in results.items()}})
        print(f"Saved {args.json}")
    return 0


def _check_edit_weights_given(args: argparse.Namespace, metrics: tuple[str, ...]) -> None:
    from ..eval.editing import CLIP_METRICS

    needs = [("--clip", "openai/clip-vit-base-patch32", [m for m in metrics if m in CLIP_METRICS], args.clip),
             ("--dino", "facebook/dino-vits16", [m for m in metrics if m == "dino"], args.dino)]
    for flag, repo, wanted, given in needs:
        if wanted and given is None:
            rest = ",".join(m for m in metrics if m not in wanted) or "l1,l2"
            raise InputError(f"{' and '.join(wanted)} need {flag}: give {flag} <local folder of {repo}>, or leave "
                             f"{' and '.join(wanted)} out (e.g. --metrics {rest})")


def _score_edits(args: argparse.Namespace, metrics: tuple[str, ...], settings: dict) -> dict:
    from ..eval.editing import CLIP_METRICS, score_pairs
    from ..eval.encoders import load_clip, load_dino

    clip = dino = None
    if any(name in metrics for name in CLIP_METRICS):
        clip = load_clip(args.clip, _metric_device(args), with_text="clip-t" in metrics)
    if "dino" in metrics:
        dino = load_dino(args.dino, _metric_device(args))
    return {name: score_pairs(pairs, metrics, clip=clip, dino=dino, progress=_progress(name))
            for name, pairs in settings.items()}


def _progress(name: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        print(f"\r{name}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    return report
