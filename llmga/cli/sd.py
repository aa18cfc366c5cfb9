"""`python -m llmga generate|inpaint|outpaint`: an (optional) assistant turn, then LLMGA's SD1.5 renders the prompt.

Without --mllm the message is the SD prompt. With --mllm the assistant gets the task's instruction (and, for
inpaint/outpaint, the picture with the area to paint blacked out), its reply is printed, and the prompt between its
<gen_image> tags drives SD; a reply without tags falls back to the message, with a note. --official renders as the
official cli-sd15.py / cli-sd15-inpainting.py do (`llmga.sd.official`).
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

# cli-sd15.py and cli-sd15-inpainting.py: 50 steps, guidance 7.5, negative "", 512x512 for text-to-image.
OFFICIAL_STEPS = 50
OFFICIAL_CFG = 7.5
OFFICIAL_SIZE = 512
DEFAULT_SD = {"generate": "binxia/llmga-sd15-t2i-v2", "inpaint": "binxia/llmga-sd15-inpainting-v2",
              "outpaint": "binxia/llmga-sd15-inpainting-v2"}
ASSISTANT_TASK = {"generate": "text_to_image", "inpaint": "inpaint", "outpaint": "outpaint"}
ENCODINGS = ("llmga", "lpw")
OFFICIAL_HELP = {
    "generate": "render as the official cli-sd15.py: lpw prompt encoding at 3 chunks ((word:1.2) weights), 512x512",
    "inpaint": "render as the official cli-sd15-inpainting.py: lpw prompt encoding at 4 chunks, the picture and mask "
               "scaled to a short side of 512 (LANCZOS), the mask binarised at 125/255, both stretched to 512x512; "
               "the result is that 512x512 picture, nothing pasted back",
    "outpaint": "render as the official cli-sd15-inpainting.py on the canvas padded exactly as asked (binary border "
                "mask): lpw prompt encoding at 4 chunks, scaled to a short side of 512, stretched to 512x512; the "
                "result is that 512x512 picture, nothing pasted back",
}
# What --official fixes, so these options cannot be combined with it.
OFFICIAL_FIXES = {"width": "--width", "height": "--height", "encoding": "--encoding"}


def add_sd_commands(commands: argparse._SubParsersAction) -> None:
    helps = {
        "generate": "text to image: the assistant (optional) writes the prompt, LLMGA's SD1.5 renders it",
        "inpaint": "repaint the white area of --mask in --image; pixels outside the mask are kept exactly",
        "outpaint": "extend --image by --left/--top/--right/--bottom pixels (sizes grow to multiples of 8)",
    }
    for command, summary in helps.items():
        parser = commands.add_parser(command, help=summary, description=(
            f"{summary[0].upper()}{summary[1:]}. Without --mllm the message is the SD prompt. The safety checker is "
            "not loaded (the official scripts ran it). Images are written as PNG with the prompt and settings in "
            "their text metadata."))
        _add_common_arguments(parser, command)
        parser.set_defaults(run=run_sd_command, sd_command=command)


def _add_common_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("message", nargs="?", default="",
                        help="your request (for generate: a short prompt); the SD prompt itself without --mllm")
    common.add_assistant_arguments(parser, required=False)
    parser.add_argument("--sd", default=DEFAULT_SD[command],
                        help=f"SD1.5 diffusers folder or released name (default {DEFAULT_SD[command]})")
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
    parser.add_argument("--official", action="store_true", help=(
        f"{OFFICIAL_HELP[command]}; negative prompt empty, seeds as here (the scripts are unseeded), no safety "
        "checker; --steps and --cfg default to the official 50 and 7.5"))
    parser.add_argument("--steps", type=int, default=OFFICIAL_STEPS, help="denoising steps (official: 50)")
    parser.add_argument("--cfg", type=float, default=OFFICIAL_CFG, help="classifier-free guidance (official: 7.5)")
    parser.add_argument("--seed", type=int, help="seed of the first image (default: random, printed and saved)")
    parser.add_argument("--count", type=int, default=1, help="images to make; image i uses seed + i")
    size_help = "(default 512)" if command == "generate" else "SD works at (default: the image's, rounded to 8)"
    parser.add_argument("--width", type=int, help=f"width {size_help}; a multiple of 8")
    parser.add_argument("--height", type=int, help=f"height {size_help}; a multiple of 8")
    parser.add_argument("--negative", default="", help="negative prompt (official: empty)")
    parser.add_argument("--encoding", choices=ENCODINGS, help=(
        "long-prompt encoding: llmga (default) = what the LLMGA SD1.5 UNet was trained with; lpw = the official "
        "inference scripts' (per-chunk BOS/EOS, (word:1.2) weights)"))
    parser.add_argument("--out", type=Path, default=Path("outputs"),
                        help="folder (created if needed) or .png file to write (default: outputs)")
    common.add_device_arguments(parser, "auto: SD in fp16 and the assistant in bf16 on GPUs, fp32 on the CPU")


@dataclass(frozen=True)
class Picture:
    """The picture SD paints on (the canvas for outpaint) and its mask: [H, W] float in [0, 1], 1 = paint."""

    image: Image.Image
    mask: np.ndarray


def run_sd_command(args: argparse.Namespace) -> int:
    return common.run_command(lambda: _run_sd(args),
                              "use a smaller --width/--height or --count, --dtype fp16, or --device cpu")


def _run_sd(args: argparse.Namespace) -> int:
    _check_numbers(args)
    picture = _read_picture(args)
    sd_path = common.model_path(args.sd, args.models_dir, "diffusers", args.allow_download)
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
    """Refuse the options --official fixes, then settle the defaults: the encoding (llmga; lpw when official) and,
    for generate, the size (512)."""
    if args.official:
        given = [flag for name, flag in OFFICIAL_FIXES.items() if getattr(args, name) is not None]
        given += ["--negative"] * bool(args.negative) + ["--feathering"] * bool(getattr(args, "feathering", 0))
        if given:
            raise InputError(f"--official renders as the official script does, which fixes {', '.join(given)}: "
                             "leave them out, or leave out --official")
    args.encoding = "lpw" if args.official else args.encoding or "llmga"
    if args.sd_command == "generate" and not args.official:
        args.width, args.height = args.width or OFFICIAL_SIZE, args.height or OFFICIAL_SIZE


def _check_numbers(args: argparse.Namespace) -> None:
    from ..sd.pipelines import check_size

    _check_official(args)
    common.check_at_least(args.steps, 1, "--steps", f" (official: {OFFICIAL_STEPS})")
    common.check_at_least(args.count, 1, "--count")
    common.check_at_least(args.cfg, 0, "--cfg", f" (official: {OFFICIAL_CFG})")
    common.check_assistant_numbers(args)
    check_size(args.width, args.height)
    if args.sd_command == "generate" and not args.message.strip():
        raise InputError("give a message: the short prompt to generate from (e.g. \"a red fox in the snow\")")
    common.check_png_out(args.out)


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
            size = "at 512x512" if args.official else "of its size"
            print("note: the mask covers the whole picture, so none of it is kept: inpainting paints a new picture "
                  f"{size} (as generate does)", file=sys.stderr)
        return Picture(image, mask)
    canvas, mask = outpaint_inputs(image, args.left, args.top, args.right, args.bottom, args.feathering,
                                   multiple=1 if args.official else SD15_LATENT_SCALE)
    return Picture(canvas, mask)


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

    pipe = pipelines.load_sd15_pipeline(sd_path, inpainting=picture is not None, device=args.device,
                                        dtype=args.dtype)
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
                "mllm": mllm_name, "message": args.message, "reply": reply}
    common.save_png(image, path, settings, parameters=parameters, llmga_prompt=prompt, llmga_negative=args.negative)
