"""`python -m llmga generate|inpaint|outpaint`: an (optional) assistant turn, then LLMGA's SD1.5 renders the prompt.

Without --mllm the message is the SD prompt. With --mllm the assistant gets the task's instruction (and, for
inpaint/outpaint, the picture with the area to paint blacked out), its reply is printed, and the prompt between its
<gen_image> tags drives SD; a reply without tags falls back to the message, with a note.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..cli_support import is_png_file, run_reporting, unique_png

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# torch/diffusers load only when a command runs, so `python -m llmga extract-prompt` stays instant.

# cli-sd15.py and cli-sd15-inpainting.py: 50 steps, guidance 7.5, negative "", 512x512 for text-to-image.
OFFICIAL_STEPS = 50
OFFICIAL_CFG = 7.5
OFFICIAL_SIZE = 512
DEFAULT_SD = {"generate": "binxia/llmga-sd15-t2i-v2", "inpaint": "binxia/llmga-sd15-inpainting-v2",
              "outpaint": "binxia/llmga-sd15-inpainting-v2"}
ASSISTANT_TASK = {"generate": "text_to_image", "inpaint": "inpaint", "outpaint": "outpaint"}
ENCODINGS = ("llmga", "lpw")
DTYPES = ("auto", "fp16", "bf16", "fp32")


class InputError(ValueError):
    """Bad command-line input; the message says what to change."""


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
    parser.add_argument("--mllm", help="assistant checkpoint folder or released name (e.g. "
                        "binxia/llmga-Qwen2-0.5B-full-finetune); without it the message is used as the SD prompt")
    parser.add_argument("--sd", default=DEFAULT_SD[command],
                        help=f"SD1.5 diffusers folder or released name (default {DEFAULT_SD[command]})")
    parser.add_argument("--models-dir", type=Path, action="append", default=[],
                        help="models folder (repeatable; default: models): the assistant is looked up in it and its "
                             "LLM/, SD in it and its diffusers/, the CLIP vision tower in its clip_vision/")
    parser.add_argument("--allow-download", action="store_true", help="download missing released checkpoints")
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
    parser.add_argument("--steps", type=int, default=OFFICIAL_STEPS, help="denoising steps (official: 50)")
    parser.add_argument("--cfg", type=float, default=OFFICIAL_CFG, help="classifier-free guidance (official: 7.5)")
    parser.add_argument("--seed", type=int, help="seed of the first image (default: random, printed and saved)")
    parser.add_argument("--count", type=int, default=1, help="images to make; image i uses seed + i")
    size_default = OFFICIAL_SIZE if command == "generate" else None
    size_help = "(default 512)" if command == "generate" else "SD works at (default: the image's, rounded to 8)"
    parser.add_argument("--width", type=int, default=size_default, help=f"width {size_help}; a multiple of 8")
    parser.add_argument("--height", type=int, default=size_default, help=f"height {size_help}; a multiple of 8")
    parser.add_argument("--negative", default="", help="negative prompt (official: empty)")
    parser.add_argument("--encoding", choices=ENCODINGS, default="llmga", help=(
        "long-prompt encoding: llmga = what the LLMGA SD1.5 UNet was trained with; lpw = the official inference "
        "scripts' (per-chunk BOS/EOS, (word:1.2) weights)"))
    parser.add_argument("--out", type=Path, default=Path("outputs"),
                        help="folder (created if needed) or .png file to write (default: outputs)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu", "mps"), default="auto")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="auto: SD in fp16 and the assistant in bf16 on GPUs, fp32 on the CPU")
    parser.add_argument("--temperature", type=float, default=0.2, help="assistant sampling temperature (0: greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="longest assistant reply")


@dataclass(frozen=True)
class Picture:
    """The picture SD paints on (the canvas for outpaint) and its mask: [H, W] float in [0, 1], 1 = paint."""

    image: Image.Image
    mask: np.ndarray


def run_sd_command(args: argparse.Namespace) -> int:
    from ..hub import ModelNotFoundError
    from ..mllm.chat import ChatError
    from ..mllm.checkpoint import CheckpointError
    from .pipelines import SDPipelineError

    show_library_warnings()
    errors = (InputError, ModelNotFoundError, CheckpointError, ChatError, SDPipelineError, ValueError, OSError)
    return run_reporting(lambda: _run_sd(args), errors,
                         "use a smaller --width/--height or --count, --dtype fp16, or --device cpu")


def _run_sd(args: argparse.Namespace) -> int:
    _check_numbers(args)
    picture = _read_picture(args)
    sd_path = resolve_model(args.sd, args.models_dir, "diffusers", args.allow_download)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    reply, prompt = (None, args.message) if args.mllm is None else _ask_assistant(args, picture, seed)
    print(f"Generation prompt: {prompt}", flush=True)
    images = _render(args, sd_path, picture, prompt, seed)
    paths = _output_paths(args.out, args.sd_command, [seed + index for index in range(len(images))])
    for index, (image, path) in enumerate(zip(images, paths, strict=True)):
        info = _png_info(args, sd_path, prompt, reply, seed + index, image.size)
        image.save(path, pnginfo=info)
        print(f"Saved {path} (seed {seed + index})")
    return 0


def show_library_warnings() -> None:
    """Print the library's warnings (prompt truncation) as one line each on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    library = logging.getLogger("llmga")
    library.addHandler(handler)
    library.setLevel(logging.WARNING)


def _check_numbers(args: argparse.Namespace) -> None:
    from .pipelines import check_size

    if args.steps < 1:
        raise InputError(f"--steps is {args.steps} but must be 1 or more (official: {OFFICIAL_STEPS})")
    if args.count < 1:
        raise InputError(f"--count is {args.count} but must be 1 or more")
    if args.cfg < 0:
        raise InputError(f"--cfg is {args.cfg} but must be 0 or more (official: {OFFICIAL_CFG})")
    check_size(args.width, args.height)
    if args.sd_command == "generate" and not args.message.strip():
        raise InputError("give a message: the short prompt to generate from (e.g. \"a red fox in the snow\")")
    if args.out.suffix.lower() not in ("", ".png") and not args.out.is_dir():
        raise InputError(f"--out {args.out} is neither a folder nor a .png file: images are written as PNG")


def open_image(path: Path, mode: str):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"{path} does not exist: give the path of an image file")
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"{path} could not be read as an image ({error}): give a PNG or JPEG file") from error


def _read_picture(args: argparse.Namespace) -> Picture | None:
    """Read and check the inputs before any model loads, so bad input fails fast."""
    from .pipelines import mask_array, outpaint_inputs

    if args.sd_command == "generate":
        return None
    image = open_image(args.image, "RGB")
    if args.feathering < 0:
        raise InputError(f"--feathering is {args.feathering} but must be 0 or more pixels")
    if args.sd_command == "inpaint":
        return Picture(image, mask_array(open_image(args.mask, "L"), image.size))
    canvas, mask = outpaint_inputs(image, args.left, args.top, args.right, args.bottom, args.feathering)
    return Picture(canvas, mask)


def resolve_model(name: str, models_dirs: list[Path], kind: str, allow_download: bool) -> Path:
    """A model folder: `name` as a path, or looked up in each models folder's `kind`/ subfolder and in the folder
    itself (downloads go to the first folder's `kind`/)."""
    from ..hub import resolve_model

    roots = models_dirs or [Path("models")]
    return resolve_model(name, [root / kind for root in roots] + roots, allow_download=allow_download)


def _ask_assistant(args: argparse.Namespace, picture: Picture | None, seed: int) -> tuple[str, str]:
    """One assistant turn for the command's task, streamed to stdout; returns (reply, generation prompt). The
    assistant is freed afterwards so SD gets its memory."""
    from ..mllm.chat import Assistant, GenerationSettings
    from ..mllm.loader import load_llmga

    path = resolve_model(args.mllm, args.models_dir, "LLM", args.allow_download)
    roots = args.models_dir or [Path("models")]
    loaded = load_llmga(path, dtype=args.dtype, device=args.device, allow_download=args.allow_download,
                        clip_vision_dirs=[root / "clip_vision" for root in roots])
    assistant = Assistant(loaded)
    history = assistant.new_history()
    image = None if picture is None else assistant.picture(picture.image, picture.mask)
    message = assistant.user_message(ASSISTANT_TASK[args.sd_command], args.message, history, image is not None,
                                     rng=random.Random(seed))
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=seed)
    print("LLMGA: ", end="", flush=True)
    result = assistant.reply(history, message, image=image, settings=settings,
                             on_text=lambda piece: print(piece, end="", flush=True))
    print()
    del assistant, loaded, image
    free_memory()
    if result.parsed.has_prompt:
        return result.text, result.parsed.prompt()
    print("note: the reply holds no <gen_image> prompt; generating from your message instead", file=sys.stderr)
    return result.text, args.message


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _render(args: argparse.Namespace, sd_path: Path, picture: Picture | None, prompt: str, seed: int) -> list:
    from . import pipelines

    pipe = pipelines.load_sd15_pipeline(sd_path, inpainting=picture is not None, device=args.device,
                                        dtype=args.dtype)
    settings = dict(steps=args.steps, cfg=args.cfg, seed=seed, mode=args.encoding, count=args.count)
    if picture is None:
        return pipelines.text_to_image(pipe, prompt, args.negative, width=args.width, height=args.height, **settings)
    size = _working_size(picture.image.size, args.width, args.height)
    return pipelines.inpaint(pipe, picture.image, picture.mask, prompt, args.negative, size=size,
                             feathering=args.feathering if args.sd_command == "inpaint" else 0, **settings)


def _working_size(size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int] | None:
    """(width, height) SD works at: as given; one side given: the other from the picture's aspect ratio, rounded to
    8; none: None (the library rounds the picture's size to 8)."""
    from .pipelines import round_to_latent

    if width is None and height is None:
        return None
    if width is None:
        width = round_to_latent(height * size[0] / size[1])
    if height is None:
        height = round_to_latent(width * size[1] / size[0])
    return width, height


def _output_paths(out: Path, command: str, seeds: list[int]) -> list[Path]:
    """Where to write each image: `out` itself (a .png; numbered -000, -001, ... for several), or
    `<out>/<command>-<seed>.png` in a folder, never overwriting an existing file there."""
    if is_png_file(out) and len(seeds) > 1:
        out.parent.mkdir(parents=True, exist_ok=True)
        return [out.with_name(f"{out.stem}-{index:03d}.png") for index in range(len(seeds))]
    return [unique_png(out, f"{command}-{seed}") for seed in seeds]


def _png_info(args: argparse.Namespace, sd_path: Path, prompt: str, reply: str | None, seed: int,
              size: tuple[int, int]):
    """PNG text chunks: `parameters` in the A1111 layout most image tools read, and llmga_* keys."""
    from PIL.PngImagePlugin import PngInfo

    sd_name, mllm_name = Path(sd_path).name, args.mllm and Path(args.mllm).name
    parameters = (f"{prompt}\nNegative prompt: {args.negative}\nSteps: {args.steps}, CFG scale: {args.cfg}, "
                  f"Seed: {seed}, Size: {size[0]}x{size[1]}, Model: {sd_name}")
    settings = {"command": args.sd_command, "seed": seed, "steps": args.steps, "cfg": args.cfg,
                "width": size[0], "height": size[1], "encoding": args.encoding, "sd_model": sd_name,
                "mllm": mllm_name, "message": args.message, "reply": reply}
    info = PngInfo()
    info.add_itxt("parameters", parameters)
    info.add_itxt("llmga_prompt", prompt)
    info.add_itxt("llmga_negative", args.negative)
    info.add_itxt("llmga_settings", json.dumps(settings, ensure_ascii=False))
    return info
