"""`python -m llmga generate|inpaint|outpaint`: an (optional) assistant turn, then LLMGA's SD1.5 or SDXL renders the
prompt.

Without --mllm the message is the SD prompt. With --mllm the assistant gets the task's instruction (and, for
inpaint/outpaint, the picture with the area to paint blacked out), its reply is printed, and the prompt between its
<gen_image> tags drives SD; a reply without tags falls back to the message, with a note. The --sd folder's configs
say whether it is SD1.5 or SDXL (`llmga.sd.pipelines.read_sd_model`); options left out take the official script's
values for it (`llmga.sd.official.official_sampling`). --official renders as the official cli-sd15*.py /
cli-sdxl*.py do (`llmga.sd.official`).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import common
from .common import InputError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

DEFAULT_SD = {"generate": "binxia/llmga-sd15-t2i-v2", "inpaint": "binxia/llmga-sd15-inpainting-v2",
              "outpaint": "binxia/llmga-sd15-inpainting-v2"}
SDXL_SD = {"generate": "binxia/llmga-sdxl-t2i", "inpaint": "binxia/llmga-sdxl-inpainting-v2",
           "outpaint": "binxia/llmga-sdxl-inpainting-v2"}
ASSISTANT_TASK = {"generate": "text_to_image", "inpaint": "inpaint", "outpaint": "outpaint"}
ENCODINGS = ("llmga", "lpw")
OFFICIAL_HELP = {
    "generate": "render as the official cli-sd15.py (lpw prompt encoding at 3 chunks, (word:1.2) weights, 512x512) or "
                "cli-sdxl.py (SDXL's one encoding, 1024x1024, fp32 where --dtype is auto)",
    "inpaint": "render as the official cli-sd15-inpainting.py (lpw prompt encoding at 4 chunks, the picture and mask "
               "scaled to a short side of 512 (LANCZOS), the mask binarised at 125/255, both stretched to 512x512) or "
               "cli-sdxl-inpainting.py (the picture and mask stretched to 1024x1024, strength 0.8); the result is that "
               "square picture, nothing pasted back",
    "outpaint": "render as the official cli-sd15-inpainting.py / cli-sdxl-inpainting.py on the canvas padded exactly "
                "as asked (binary border mask), stretched to 512x512 / 1024x1024; the result is that square picture, "
                "nothing pasted back",
}
# What --official fixes, so these options cannot be combined with it.
OFFICIAL_FIXES = {"width": "--width", "height": "--height", "encoding": "--encoding", "strength": "--strength"}


def add_sd_commands(commands: argparse._SubParsersAction) -> None:
    helps = {
        "generate": "text to image: the assistant (optional) writes the prompt, LLMGA's SD1.5 or SDXL renders it",
        "inpaint": "repaint the white area of --mask in --image; pixels outside the mask are kept exactly",
        "outpaint": "extend --image by --left/--top/--right/--bottom pixels (sizes grow to multiples of 8)",
    }
    for command, summary in helps.items():
        parser = commands.add_parser(command, help=summary, description=(
            f"{summary[0].upper()}{summary[1:]}. Without --mllm the message is the SD prompt. --sd takes an SD1.5 or "
            f"an SDXL model (e.g. {SDXL_SD[command]}), told apart by its configs; options left out take the official "
            "script's values for it. The safety checker and the SDXL watermark are not loaded. Images are written as "
            "PNG with the prompt and settings in their text metadata."))
        _add_common_arguments(parser, command)
        parser.set_defaults(run=run_sd_command, sd_command=command)


def _add_common_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("message", nargs="?", default="",
                        help="your request (for generate: a short prompt); the SD prompt itself without --mllm")
    common.add_assistant_arguments(parser, required=False)
    parser.add_argument("--sd", default=DEFAULT_SD[command],
                        help=f"SD1.5 or SDXL diffusers folder or released name (default {DEFAULT_SD[command]}; "
                             f"SDXL: {SDXL_SD[command]})")
    if command != "generate":
        parser.add_argument("--image", type=Path, required=True, help=f"the picture to {command}")
    if command == "inpaint":
        parser.add_argument("--mask", type=Path, required=True,
                            help="grayscale mask of the image's size: white (>= 50%%) where new content goes")
    if command == "outpaint":
        for side in ("left", "top", "right", "bottom"):
            parser.add_argument(f"--{side}", type=int, default=0, help=f"pixels to add on the {side}")
    if command != "generate":
        parser.add_argument("--feathering", type=int, default=0, help=(
            "pixels over which the result blends into the picture: inside the mask for inpaint, into the original "
            "next to the new area for outpaint"))
        parser.add_argument("--strength", type=float, help=(
            "SDXL inpainting: how far the picture under the mask is noised, in (0, 1] (default: the official 0.8, "
            "which runs 80%% of --steps); SD1.5 inpainting always repaints from pure noise (1)"))
    parser.add_argument("--official", action="store_true", help=(
        f"{OFFICIAL_HELP[command]}; negative prompt empty, seeds as here (the scripts are unseeded), no safety "
        "checker; --steps and --cfg default to the official values"))
    steps = "50; SDXL inpainting 30" if command != "generate" else "50"
    cfg = "7.5; SDXL 5.0" if command == "generate" else "7.5"
    parser.add_argument("--steps", type=int, help=f"denoising steps (default: the official {steps})")
    parser.add_argument("--cfg", type=float, help=f"classifier-free guidance (default: the official {cfg})")
    parser.add_argument("--seed", type=int, help="seed of the first image (default: random, printed and saved)")
    parser.add_argument("--count", type=int, default=1, help="images to make; image i uses seed + i")
    size_help = "(default 512; SDXL 1024)" if command == "generate" else \
        "SD works at (default: SD1.5 the image's, rounded to 8; SDXL 1024, the result resized back)"
    parser.add_argument("--width", type=int, help=f"width {size_help}; a multiple of 8")
    parser.add_argument("--height", type=int, help=f"height {size_help}; a multiple of 8")
    parser.add_argument("--negative", default="", help="negative prompt (official: none)")
    parser.add_argument("--encoding", choices=ENCODINGS, help=(
        "SD1.5's long-prompt encoding: llmga (default) = what the LLMGA SD1.5 UNet was trained with; lpw = the "
        "official inference scripts' (per-chunk BOS/EOS, (word:1.2) weights). SDXL has one encoding, llmga"))
    parser.add_argument("--out", type=Path, default=Path("outputs"),
                        help="folder (created if needed) or .png file to write (default: outputs)")
    common.add_device_arguments(parser, "auto: SD in fp16 and the assistant in bf16 on GPUs, fp32 on the CPU "
                                "(with --official, SDXL text to image in fp32 as cli-sdxl.py)")


@dataclass(frozen=True)
class Picture:
    """The picture SD paints on (the canvas for outpaint) and its mask: [H, W] float in [0, 1], 1 = paint."""

    image: Image.Image
    mask: np.ndarray


def run_sd_command(args: argparse.Namespace) -> int:
    return common.run_command(lambda: _run_sd(args),
                              "use a smaller --width/--height or --count, --dtype fp16, or --device cpu")


def _run_sd(args: argparse.Namespace) -> int:
    from ..sd.pipelines import read_sd_model

    _check_numbers(args)
    picture = _read_picture(args)
    sd_path = common.model_path(args.sd, args.models_dir, "diffusers", args.allow_download)
    model = read_sd_model(sd_path)
    _settle_for_model(args, model)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    reply, prompt = (None, args.message) if args.mllm is None else _ask_assistant(args, picture, seed)
    print(f"Generation prompt: {prompt}", flush=True)
    images = _render(args, sd_path, picture, prompt, seed)
    paths = common.output_paths(args.out, [f"{args.sd_command}-{seed + index}" for index in range(len(images))])
    for index, (image, path) in enumerate(zip(images, paths, strict=True)):
        _save(args, sd_path, prompt, reply, seed + index, image, path)
        print(f"Saved {path} (seed {seed + index})")
    return 0


def _check_official(args: argparse.Namespace) -> None:
    """Refuse the options --official fixes."""
    if args.official:
        given = [flag for name, flag in OFFICIAL_FIXES.items() if getattr(args, name, None) is not None]
        given += ["--negative"] * bool(args.negative) + ["--feathering"] * bool(getattr(args, "feathering", 0))
        if given:
            raise InputError(f"--official renders as the official script does, which fixes {', '.join(given)}: "
                             "leave them out, or leave out --official")


def _check_numbers(args: argparse.Namespace) -> None:
    """What can be checked before the model is fetched: --official's fixed options, the numbers given, the message
    and --out."""
    from ..sd.pipelines import check_size

    _check_official(args)
    if args.steps is not None:
        common.check_at_least(args.steps, 1, "--steps", _official_note(args, "steps"))
    common.check_at_least(args.count, 1, "--count")
    if args.cfg is not None:
        common.check_at_least(args.cfg, 0, "--cfg", _official_note(args, "cfg"))
    strength = getattr(args, "strength", None)
    if strength is not None and not 0 < strength <= 1:
        raise InputError(f"--strength is {strength} but must be in (0, 1] (1: pure noise; SDXL's official 0.8)")
    common.check_assistant_numbers(args)
    check_size(args.width, args.height)
    if args.sd_command == "generate" and not args.message.strip():
        raise InputError("give a message: the short prompt to generate from (e.g. \"a red fox in the snow\")")
    common.check_png_out(args.out)


def _local_official(args: argparse.Namespace):
    """The official settings (`official_sampling`) for the --sd model when it is at hand without a download, for
    messages before it is fetched; None when it is not."""
    from ..sd.official import official_sampling
    from ..sd.pipelines import read_sd_model

    try:
        model = read_sd_model(common.model_path(args.sd, args.models_dir, "diffusers", allow_download=False))
    except (ValueError, OSError):
        return None
    return official_sampling(model.family, args.sd_command != "generate")


def _official_note(args: argparse.Namespace, name: str) -> str:
    """" (official: 50)" for the --sd model when it is at hand, else ""."""
    official = _local_official(args)
    return "" if official is None else f" (official: {getattr(official, name)})"


def _settle_for_model(args: argparse.Namespace, model) -> None:
    """Check the options against the model (`read_sd_model`'s SDModel: its family and task) and fill in those left
    out with the official script's values for it: steps, CFG, strength, the encoding (llmga; SD1.5 --official lpw)
    and, for generate, the size; the SDXL inpainting size is left to the library (1024x1024)."""
    from ..sd.official import official_sampling
    from ..sd.pipelines import check_family_options, check_sd_task, check_strength

    inpainting = args.sd_command != "generate"
    check_sd_task(model, inpainting)
    check_family_options(model, encoding=args.encoding, strength=getattr(args, "strength", None))
    official = official_sampling(model.family, inpainting)
    args.steps = args.steps or official.steps
    args.cfg = official.cfg if args.cfg is None else args.cfg
    args.encoding = official.encoding if args.official else args.encoding or "llmga"
    args.strength = official.strength if getattr(args, "strength", None) is None else args.strength
    if inpainting:
        check_strength(args.strength, args.steps)
    if args.sd_command == "generate" and not args.official:
        args.width, args.height = args.width or official.size, args.height or official.size
    args.family = model.family


def _read_picture(args: argparse.Namespace) -> Picture | None:
    """Read and check the inputs before any model loads, so bad input fails fast."""
    from ..images import mask_array, open_image
    from ..sd.official import MASK_LEVEL
    from ..sd.pipelines import MASK_THRESHOLD, SD15_LATENT_SCALE, outpaint_inputs

    if args.sd_command == "generate":
        return None
    image = open_image(args.image, "RGB")
    common.check_at_least(args.feathering, 0, "--feathering", " pixels")
    if args.sd_command == "inpaint":
        threshold = MASK_LEVEL / 255 if args.official else MASK_THRESHOLD
        mask = mask_array(open_image(args.mask, "L"), image.size, threshold=threshold, action="paint")
        if (mask >= threshold).all():
            _note_whole_mask(args)
        return Picture(image, mask)
    canvas, mask = outpaint_inputs(image, args.left, args.top, args.right, args.bottom, args.feathering,
                                   multiple=1 if args.official else SD15_LATENT_SCALE)
    return Picture(canvas, mask)


def _note_whole_mask(args: argparse.Namespace) -> None:
    """The note for an inpainting mask that leaves none of the picture (said while the inputs are read)."""
    size = "of its size"
    if args.official:
        official = _local_official(args)
        size = "at the official script's size" if official is None else f"at {official.size}x{official.size}"
    print("note: the mask covers the whole picture, so none of it is kept: inpainting paints a new picture "
          f"{size} (as generate does)", file=sys.stderr)


def _ask_assistant(args: argparse.Namespace, picture: Picture | None, seed: int) -> tuple[str, str]:
    """One assistant turn for the command's task, streamed to stdout; returns (reply, generation prompt). The
    assistant is freed afterwards so SD gets its memory."""
    from ..devices import free_memory

    assistant = common.load_assistant(args)
    result = common.ask_streamed(assistant, assistant.new_history(), ASSISTANT_TASK[args.sd_command], args.message,
                                 image=None if picture is None else picture.image,
                                 mask=None if picture is None else picture.mask,
                                 settings=common.assistant_settings(args, seed))
    del assistant
    free_memory()
    if result.parsed.has_prompt:
        return result.text, result.parsed.prompt()
    print("note: the reply holds no <gen_image> prompt; generating from your message instead", file=sys.stderr)
    return result.text, args.message


def _render(args: argparse.Namespace, sd_path: Path, picture: Picture | None, prompt: str, seed: int) -> list:
    from ..sd import official, pipelines

    inpainting = picture is not None
    dtype = args.dtype
    if args.official and dtype == "auto":
        dtype = official.official_sampling(args.family, inpainting).dtype or dtype
    pipe = pipelines.load_sd_pipeline(sd_path, inpainting=inpainting, device=args.device, dtype=dtype)
    if args.official:
        steps = dict(steps=args.steps, cfg=args.cfg, seed=seed, count=args.count)
        if picture is None:
            return official.official_text_to_image(pipe, prompt, **steps)
        return official.official_inpaint(pipe, picture.image, picture.mask, prompt, **steps)
    settings = dict(steps=args.steps, cfg=args.cfg, seed=seed, mode=args.encoding, count=args.count)
    if picture is None:
        return pipelines.text_to_image(pipe, prompt, args.negative, width=args.width, height=args.height, **settings)
    size = _working_size(picture.image.size, args.width, args.height)
    return pipelines.inpaint(pipe, picture.image, picture.mask, prompt, args.negative, size=size,
                             strength=args.strength,
                             feathering=args.feathering if args.sd_command == "inpaint" else 0, **settings)


def _working_size(size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int] | None:
    """(width, height) SD works at: as given; one side given: the other from the picture's aspect ratio, rounded to
    8; none: None (the library rounds the picture's size to 8)."""
    from ..sd.pipelines import round_to_latent

    if width is None and height is None:
        return None
    if width is None:
        width = round_to_latent(height * size[0] / size[1])
    if height is None:
        height = round_to_latent(width * size[1] / size[0])
    return width, height


def _save(args: argparse.Namespace, sd_path: Path, prompt: str, reply: str | None, seed: int, image: Image.Image,
          path: Path) -> None:
    """The PNG with text chunks: `parameters` in the A1111 layout most image tools read, and llmga_* keys."""
    size = image.size
    sd_name, mllm_name = Path(sd_path).name, args.mllm and Path(args.mllm).name
    parameters = (f"{prompt}\nNegative prompt: {args.negative}\nSteps: {args.steps}, CFG scale: {args.cfg}, "
                  f"Seed: {seed}, Size: {size[0]}x{size[1]}, Model: {sd_name}")
    settings = {"command": args.sd_command, "official": args.official, "seed": seed, "steps": args.steps,
                "cfg": args.cfg, "width": size[0], "height": size[1], "encoding": args.encoding, "sd_model": sd_name,
                "sd_family": args.family, "mllm": mllm_name, "message": args.message, "reply": reply}
    if args.sd_command != "generate":
        settings["strength"] = args.strength
    common.save_png(image, path, settings, parameters=parameters, llmga_prompt=prompt, llmga_negative=args.negative)
