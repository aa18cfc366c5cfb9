"""`python -m llmga edit --mllm … --sd … --image F "make it winter"`: the official two-turn editing flow.

Turn 0 sends the picture with "Generate a similar image" (its prompt is the source prompt), turn 1 the instruction
(its prompt is the target prompt), as serve/cli-sd15-editing.py does; then LLMGA's SD1.5 edits the picture by
inversion. --source-prompt/--target-prompt skip the assistant for that turn (both given: no --mllm needed).
--official edits as the reference code does (`llmga.edit.official`; the sd-vae-ft-mse VAE for ddpm_inversion).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from . import common
from .common import InputError

DEFAULT_SD = "binxia/llmga-sd15-t2i-v2"  # README: the SD15-T2I model also serves instruction editing
# cli-sd15-editing.py decodes with stabilityai/sd-vae-ft-mse: its diffusers folder, or the same weights as the
# single file ComfyUI users keep in models/vae (stabilityai/sd-vae-ft-mse-original).
OFFICIAL_VAES = ("sd-vae-ft-mse", "stabilityai/sd-vae-ft-mse", "vae-ft-mse-840000-ema-pruned.safetensors",
                 "vae-ft-mse-840000-ema-pruned.ckpt")


def add_edit_command(commands: argparse._SubParsersAction) -> None:
    from ..edit.options import CONTROLLERS, METHODS

    parser = commands.add_parser(
        "edit", help="edit a picture by an instruction: the assistant writes source and target prompts, SD1.5 "
        "edits by inversion",
        description="Edit --image by an instruction. The assistant describes the picture (source prompt) and "
        "answers the instruction (target prompt); the picture is then inverted with the source prompt and "
        "regenerated towards the target (Direct Inversion + Prompt-to-Prompt, or the official DDPM inversion). "
        "Writes the edited PNG (prompts and settings in its metadata) and the edit mask beside it.")
    parser.add_argument("instruction", nargs="?", default="", help='the edit, e.g. "make it winter"')
    parser.add_argument("--image", type=Path, required=True, help="the picture to edit")
    common.add_assistant_arguments(parser, required=False, other_kinds="a VAE in its vae/")
    parser.add_argument("--sd", default=DEFAULT_SD, help=f"SD1.5 diffusers folder or released name ({DEFAULT_SD})")
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
    parser.add_argument("--encoding", choices=("llmga", "lpw"), help="long-prompt encoding (default llmga)")
    parser.add_argument("--no-crop", action="store_true", help=(
        "edit the picture at its own size (padded to multiples of 8) instead of the official centre crop to "
        "512x512"))
    parser.add_argument("--official", action="store_true", help=(
        "edit as the reference code: ddpm_inversion as cli-sd15-editing.py (each phase's prompt encoding: the "
        "inversion's source cut to 77 tokens, lpw at 3 chunks for the mask and 4 for sampling; the mask from VAE "
        "posterior samples; its last-step solver orders below 15 steps; the sd-vae-ft-mse VAE when found), "
        "direct_inversion_p2p as PnPInversion (prompts cut to 77 tokens); both at the centre crop to 512x512. "
        "Takes no --encoding or --no-crop"))
    parser.add_argument("--vae", help=(
        "VAE to encode and decode with: a diffusers VAE folder or a single-file VAE, as a path or a name in the "
        f"models folders' vae/ (default: the model's own; with --official ddpm_inversion the first of "
        f"{', '.join(OFFICIAL_VAES)} found there)"))
    parser.add_argument("--seed", type=int, help="seed (assistant sampling and DDPM noise; default random)")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="folder or .png file (default outputs)")
    common.add_device_arguments(parser, "auto: SD in fp16 and the assistant in bf16 on GPUs, fp32 on the CPU")
    parser.set_defaults(run=run_edit_command)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.replace(",", " ").split())


def _settings(args: argparse.Namespace, seed: int):
    from ..edit.run import EditSettings

    blend = (_words(args.blend[0]), _words(args.blend[1])) if args.blend else None
    if args.blend and "auto" in (args.blend[0].lower(), args.blend[1].lower()):
        blend = "auto"
    if args.official and (args.encoding or args.no_crop):
        given = " and ".join(flag for flag, value in (("--encoding", args.encoding), ("--no-crop", args.no_crop))
                             if value)
        raise InputError(f"--official edits as the reference code, which fixes what {given} sets: leave "
                         f"{'them' if ' and ' in given else 'it'} out, or leave out --official")
    settings = EditSettings(method=args.method, steps=args.steps, guidance=args.cfg, source_guidance=args.source_cfg,
                            skip=args.skip, controller=args.controller, cross_replace=args.cross_replace,
                            self_replace=args.self_replace, blend_words=blend, prompt_mode=args.encoding or "llmga",
                            seed=seed, official=args.official)
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
    from ..devices import free_memory
    from ..mllm.tasks import EDIT_SOURCE_INSTRUCTION

    assistant = common.load_assistant(args)
    history = assistant.new_history()
    settings = common.assistant_settings(args, seed)
    turns = (("similar_image", EDIT_SOURCE_INSTRUCTION, args.source_prompt), ("chat", args.instruction,
                                                                             args.target_prompt))
    prompts, replies = [], []
    for task, text, given in turns:
        result = common.ask_streamed(assistant, history, task, text, image=image, settings=settings)
        history = result.history
        replies.append(result.text)
        # The official CLI keeps the whole reply when it has no tags (its str.find parser).
        prompts.append(given if given is not None else result.parsed.prompt(no_tag_fallback="whole reply"))
    del assistant
    free_memory()
    if not prompts[1].strip():
        raise InputError("the assistant's reply to the instruction is empty, so there is no target prompt: rephrase "
                         "the instruction, raise --temperature, or give --target-prompt")
    return prompts[0], prompts[1], replies


def _vae_path(args: argparse.Namespace) -> Path | None:
    """The VAE to swap in: --vae (a path, or a name in the models folders' vae/), else with --official
    ddpm_inversion the first of OFFICIAL_VAES found there (a note when none is), else None (the model's own)."""
    folders = common.model_folders(args.models_dir, "vae")
    names = [args.vae] if args.vae else OFFICIAL_VAES if args.official and args.method == "ddpm_inversion" else ()
    candidates = [Path(args.vae).expanduser()] if args.vae else []
    candidates += [folder / name for name in names for folder in folders]
    found = next((path for path in candidates if path.exists()), None)
    if found is None and args.vae:
        raise InputError(f"--vae {args.vae} is neither a file or folder nor in {[str(f) for f in folders]}: give a "
                         "diffusers VAE folder (as stabilityai/sd-vae-ft-mse) or a single-file VAE (as "
                         "vae-ft-mse-840000-ema-pruned.safetensors)")
    if found is None and names:
        print(f"note: the official editing decodes with stabilityai/sd-vae-ft-mse, which is not in "
              f"{[str(f) for f in folders]} (a sd-vae-ft-mse folder or vae-ft-mse-840000-ema-pruned.safetensors): "
              "using the model's own VAE", file=sys.stderr)
    return found


def run_edit_command(args: argparse.Namespace) -> int:
    return common.run_command(lambda: _edit(args), "use --dtype fp16, a smaller picture, or --device cpu")


def _edit(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    common.check_at_least(args.cfg, 0, "--cfg", " (both references: 7.5)")
    common.check_at_least(args.source_cfg, 0, "--source-cfg", " (official: 3.5)")
    settings = _settings(args, seed)
    common.check_assistant_numbers(args)
    common.check_png_out(args.out)
    from ..edit.pipeline import edit_image, official_crop
    from ..images import open_image
    from ..sd.pipelines import INPAINT_CHANNELS, unet_channels

    image = open_image(args.image, "RGB")
    image = image if args.no_crop else official_crop(image)
    vae_path = _vae_path(args)
    sd_path = common.model_path(args.sd, args.models_dir, "diffusers", args.allow_download)
    if unet_channels(sd_path) == INPAINT_CHANNELS:
        raise InputError(f"--sd {args.sd} is an inpainting model ({INPAINT_CHANNELS} input channels): editing runs on "
                         f"a text-to-image model such as {DEFAULT_SD}")
    source, target, replies = _prompts(args, image, seed)
    print(f"Source prompt: {source}\nTarget prompt: {target}", flush=True)
    from ..sd.pipelines import load_sd15_pipeline, load_vae

    pipe = load_sd15_pipeline(sd_path, device=args.device, dtype=args.dtype)
    if vae_path is not None:
        pipe.vae = load_vae(vae_path, sd_path, pipe)

    def on_step(done: int, steps: int) -> None:
        if done == steps or done % 10 == 0:
            print(f"editing: {done}/{steps} UNet calls", file=sys.stderr, flush=True)

    edited, mask, result = edit_image(pipe, image, source, target, settings, on_step=on_step)
    if result.unchanged:
        print("note: the target prompt equals the source prompt; the picture is unchanged", file=sys.stderr)
    (path,) = common.output_paths(args.out, [f"edit-{seed}"])
    mask_path = path.with_name(path.stem + "-mask.png")
    common.save_png(edited, path, _settings_record(args, sd_path, vae_path, replies, seed),
                    llmga_source_prompt=source, llmga_prompt=target)
    common.save_png(mask, mask_path)
    print(f"Saved {path} and {mask_path.name}")
    return 0


def _settings_record(args: argparse.Namespace, sd_path: Path, vae_path: Path | None, replies: list[str],
                     seed: int) -> dict:
    """What the edited PNG records under llmga_settings."""
    return {"command": "edit", "method": args.method, "official": args.official, "seed": seed, "steps": args.steps,
            "cfg": args.cfg, "source_cfg": args.source_cfg, "skip": args.skip, "controller": args.controller,
            "encoding": "official" if args.official else args.encoding or "llmga", "sd_model": Path(sd_path).name,
            "vae": vae_path and vae_path.name, "mllm": args.mllm and Path(args.mllm).name,
            "instruction": args.instruction, "replies": replies}
