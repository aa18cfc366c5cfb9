"""`python -m llmga edit --mllm … --sd … --image F "make it winter"`: the official two-turn editing flow.

Turn 0 sends the picture with "Generate a similar image" (its prompt is the source prompt), turn 1 the instruction
(its prompt is the target prompt), as serve/cli-sd15-editing.py does; then LLMGA's SD1.5 edits the picture by
inversion. --source-prompt/--target-prompt skip the assistant for that turn (both given: no --mllm needed).
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sys
from pathlib import Path

from ..cli_support import run_reporting, unique_png
from ..sd.cli import InputError, free_memory, open_image, resolve_model, show_library_warnings

DEFAULT_SD = "binxia/llmga-sd15-t2i-v2"  # README: the SD15-T2I model also serves instruction editing


def add_edit_command(commands: argparse._SubParsersAction) -> None:
    from .options import CONTROLLERS, METHODS

    parser = commands.add_parser(
        "edit", help="edit a picture by an instruction: the assistant writes source and target prompts, SD1.5 "
        "edits by inversion",
        description="Edit --image by an instruction. The assistant describes the picture (source prompt) and "
        "answers the instruction (target prompt); the picture is then inverted with the source prompt and "
        "regenerated towards the target (Direct Inversion + Prompt-to-Prompt, or the official DDPM inversion). "
        "Writes the edited PNG (prompts and settings in its metadata) and the edit mask beside it.")
    parser.add_argument("instruction", nargs="?", default="", help='the edit, e.g. "make it winter"')
    parser.add_argument("--image", type=Path, required=True, help="the picture to edit")
    parser.add_argument("--mllm", help="assistant checkpoint folder or released name")
    parser.add_argument("--sd", default=DEFAULT_SD, help=f"SD1.5 diffusers folder or released name ({DEFAULT_SD})")
    parser.add_argument("--models-dir", type=Path, action="append", default=[],
                        help="models folder (repeatable; default: models), searched as for generate")
    parser.add_argument("--allow-download", action="store_true", help="download missing released checkpoints")
    parser.add_argument("--source-prompt", help="what the picture shows (skips the assistant's turn 0)")
    parser.add_argument("--target-prompt", help="what the edited picture shows (skips the assistant's turn 1)")
    parser.add_argument("--method", choices=METHODS, default=METHODS[0],
                        help="direct_inversion_p2p (the paper) or ddpm_inversion (the official code)")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps (both references: 50)")
    parser.add_argument("--cfg", type=float, default=7.5, help="guidance towards the target (7.5)")
    parser.add_argument("--source-cfg", type=float, default=3.5, help="ddpm_inversion: inversion guidance (3.5)")
    parser.add_argument("--skip", type=int, default=25, help="ddpm_inversion: percent of steps skipped (25)")
    parser.add_argument("--controller", choices=CONTROLLERS, default="refine", help="P2P controller")
    parser.add_argument("--cross-replace", type=float, default=0.4, help="P2P cross-attention window (0.4)")
    parser.add_argument("--self-replace", type=float, default=0.6, help="P2P self-attention window (0.6)")
    parser.add_argument("--blend", nargs=2, metavar=("SOURCE_WORDS", "TARGET_WORDS"),
                        help='LocalBlend words, e.g. --blend "cat" "dog" (comma or space separated; "auto" "auto": '
                        'the words that differ between the prompts)')
    parser.add_argument("--encoding", choices=("llmga", "lpw"), default="llmga", help="long-prompt encoding")
    parser.add_argument("--no-crop", action="store_true", help=(
        "edit the picture at its own size (padded to multiples of 8) instead of the official centre crop to "
        "512x512"))
    parser.add_argument("--seed", type=int, help="seed (assistant sampling and DDPM noise; default random)")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="folder or .png file (default outputs)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu", "mps"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "fp16", "bf16", "fp32"), default="auto")
    parser.add_argument("--temperature", type=float, default=0.2, help="assistant sampling temperature")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="longest assistant reply")
    parser.set_defaults(run=run_edit_command)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.replace(",", " ").split())


def _settings(args: argparse.Namespace, seed: int):
    from .run import EditSettings

    blend = (_words(args.blend[0]), _words(args.blend[1])) if args.blend else None
    if args.blend and "auto" in (args.blend[0].lower(), args.blend[1].lower()):
        blend = "auto"
    settings = EditSettings(method=args.method, steps=args.steps, guidance=args.cfg, source_guidance=args.source_cfg,
                            skip=args.skip, controller=args.controller, cross_replace=args.cross_replace,
                            self_replace=args.self_replace, blend_words=blend, prompt_mode=args.encoding, seed=seed)
    try:
        settings.check()
    except ValueError as error:
        raise InputError(str(error)) from error
    return settings


def _prompts(args: argparse.Namespace, image, seed: int) -> tuple[str, str, list[str]]:
    """(source prompt, target prompt, replies): given ones are used as they are, the rest asked of the assistant."""
    if args.source_prompt is not None and args.target_prompt is not None:
        return args.source_prompt, args.target_prompt, []
    if args.mllm is None:
        raise InputError("give --mllm (the assistant writes the prompts) or both --source-prompt and "
                         "--target-prompt")
    if args.target_prompt is None and not args.instruction.strip():
        raise InputError('give the instruction, e.g. "make it winter"')
    from ..mllm.chat import Assistant, GenerationSettings
    from ..mllm.loader import load_llmga
    from ..mllm.tasks import EDIT_SOURCE_INSTRUCTION

    path = resolve_model(args.mllm, args.models_dir, "LLM", args.allow_download)
    roots = args.models_dir or [Path("models")]
    loaded = load_llmga(path, dtype=args.dtype, device=args.device, allow_download=args.allow_download,
                        clip_vision_dirs=[root / "clip_vision" for root in roots])
    assistant = Assistant(loaded)
    history = assistant.new_history()
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=seed)
    turns = (("similar_image", EDIT_SOURCE_INSTRUCTION, args.source_prompt), ("chat", args.instruction,
                                                                             args.target_prompt))
    prompts, replies = [], []
    picture = assistant.picture(image)
    for index, (task, text, given) in enumerate(turns):
        message = assistant.user_message(task, text, history, index == 0, rng=random.Random(seed))
        print("LLMGA: ", end="", flush=True)
        result = assistant.reply(history, message, image=picture if index == 0 else None, settings=settings,
                                 on_text=lambda piece: print(piece, end="", flush=True))
        print()
        history = result.history
        replies.append(result.text)
        # The official CLI keeps the whole reply when it has no tags (its str.find parser).
        prompts.append(given if given is not None else result.parsed.prompt(no_tag_fallback="whole reply"))
    del assistant, loaded, picture
    free_memory()
    if not prompts[1].strip():
        raise InputError("the assistant's reply to the instruction is empty, so there is no target prompt: rephrase "
                         "the instruction, raise --temperature, or give --target-prompt")
    return prompts[0], prompts[1], replies


def run_edit_command(args: argparse.Namespace) -> int:
    from ..hub import ModelNotFoundError
    from ..mllm.chat import ChatError
    from ..mllm.checkpoint import CheckpointError
    from ..sd.pipelines import SDPipelineError

    show_library_warnings()
    errors = (InputError, ModelNotFoundError, CheckpointError, ChatError, SDPipelineError, ValueError, OSError)
    return run_reporting(lambda: _edit(args), errors,
                         "use --dtype fp16, a smaller picture, or --device cpu")


def _edit(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    settings = _settings(args, seed)
    if args.out.suffix.lower() not in ("", ".png") and not args.out.is_dir():
        raise InputError(f"--out {args.out} is neither a folder nor a .png file: images are written as PNG")
    from .pipeline import edit_image, official_crop

    image = open_image(args.image, "RGB")
    image = image if args.no_crop else official_crop(image)
    sd_path = resolve_model(args.sd, args.models_dir, "diffusers", args.allow_download)
    source, target, replies = _prompts(args, image, seed)
    print(f"Source prompt: {source}\nTarget prompt: {target}", flush=True)
    from ..sd.pipelines import load_sd15_pipeline

    pipe = load_sd15_pipeline(sd_path, device=args.device, dtype=args.dtype)

    def on_step(done: int, steps: int) -> None:
        if done == steps or done % 10 == 0:
            print(f"editing: {done}/{steps} UNet calls", file=sys.stderr, flush=True)

    edited, mask, result = edit_image(pipe, image, source, target, settings, on_step=on_step)
    if result.unchanged:
        print("note: the target prompt equals the source prompt; the picture is unchanged", file=sys.stderr)
    path = unique_png(args.out, f"edit-{seed}")
    edited.save(path, pnginfo=_png_info(args, sd_path, source, target, replies, seed))
    mask.save(path.with_name(path.stem + "-mask.png"))
    print(f"Saved {path} and {path.with_name(path.stem + '-mask.png').name}")
    return 0



def _png_info(args: argparse.Namespace, sd_path: Path, source: str, target: str, replies: list[str], seed: int):
    from PIL.PngImagePlugin import PngInfo

    settings = {"command": "edit", "method": args.method, "seed": seed, "steps": args.steps, "cfg": args.cfg,
                "source_cfg": args.source_cfg, "skip": args.skip, "controller": args.controller,
                "encoding": args.encoding, "sd_model": Path(sd_path).name, "mllm": args.mllm and Path(args.mllm).name,
                "instruction": args.instruction, "replies": replies}
    info = PngInfo()
    info.add_itxt("llmga_source_prompt", source)
    info.add_itxt("llmga_prompt", target)
    info.add_itxt("llmga_settings", json.dumps(settings, ensure_ascii=False))
    return info
