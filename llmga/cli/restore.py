"""`python -m llmga restore --model F --image gen.png --reference orig.png --mask mask.png`: DiffRIR after inpainting
or outpainting.

The generated region (white in --mask) of --image is restored by DiffRIR so that its texture, brightness and contrast
match the rest of the picture, which is copied unchanged from --reference (inference_diffrir.py). Images and sizes
are checked before the model loads; the PNG written carries the settings in its metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_support import run_reporting, unique_png
from ..sd.cli import InputError, open_image, show_library_warnings

DEVICES = ("auto", "cuda", "cpu", "mps")
DTYPES = ("auto", "fp16", "bf16", "fp32")
GRID = 32  # tile and overlap step in image px: pad_multiple * scale for every DiffRIR scale


def add_restore_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "restore", help="remove seams after inpainting/outpainting: DiffRIR matches the generated region to the rest",
        description="Restore the generated region (white in --mask) of --image with DiffRIR, so its texture, "
        "brightness and contrast match the original; pixels outside the mask are copied exactly from --reference. "
        "Large pictures run in overlapping tiles that share one image prior. Writes a PNG with the settings in its "
        "metadata.")
    parser.add_argument("--model", type=Path, required=True,
                        help="DiffRIR S2 weights: the released net_g_*.pth (params_ema) or a .safetensors file")
    parser.add_argument("--image", type=Path, required=True, help="the generated picture (inpainting/outpainting)")
    parser.add_argument("--reference", type=Path, required=True,
                        help="the original picture (the outpainting canvas), same size; kept outside the mask")
    parser.add_argument("--mask", type=Path, required=True,
                        help="grayscale mask, same size: white (>= 50%%) where the picture was generated")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior's initial noise (default 0)")
    parser.add_argument("--out", type=Path, default=Path("outputs"),
                        help="folder (created if needed) or .png file to write (default: outputs)")
    parser.add_argument("--tile", type=int, help=(
        f"tile side in pixels, a multiple of {GRID} (default: the whole picture when it fits in memory, else tiles)"))
    parser.add_argument("--overlap", type=int, help=f"tile overlap in pixels, a multiple of {GRID} (default: tile/4)")
    parser.add_argument("--dilate", type=int, default=0,
                        help="grow the region DiffRIR regenerates by this many pixels (default 0, official)")
    parser.add_argument("--feather", type=int, default=0,
                        help="blend the outermost pixels of that region into the original over this many pixels")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="auto: fp32, as the official inference (the network is small); fp16/bf16 on GPUs")
    parser.set_defaults(run=run_restore_command)


def _check_numbers(args: argparse.Namespace) -> None:
    if args.tile is not None and (args.tile < GRID or args.tile % GRID):
        raise InputError(f"--tile is {args.tile}; use a multiple of {GRID} pixels, e.g. 512")
    if args.overlap is not None and (args.overlap < 0 or args.overlap % GRID):
        raise InputError(f"--overlap is {args.overlap}; use a multiple of {GRID} pixels, e.g. 128")
    if args.tile is not None and args.overlap is not None and args.overlap >= args.tile:
        raise InputError(f"--overlap {args.overlap} must be smaller than --tile {args.tile}")
    for name in ("dilate", "feather"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name} is {getattr(args, name)} but must be 0 or more pixels")
    if args.out.suffix.lower() not in ("", ".png") and not args.out.is_dir():
        raise InputError(f"--out {args.out} is neither a folder nor a .png file: images are written as PNG")


def _read_inputs(args: argparse.Namespace):
    """(generated, reference, mask) as PIL images, checked to have one size and a non-empty mask."""
    import numpy as np

    generated = open_image(args.image, "RGB")
    reference = open_image(args.reference, "RGB")
    mask = open_image(args.mask, "L")
    for name, image in (("--reference", reference), ("--mask", mask)):
        if image.size != generated.size:
            raise InputError(f"{name} {image.size[0]}x{image.size[1]} and --image {generated.size[0]}x"
                             f"{generated.size[1]} differ in size: give the original and the mask at the size of the "
                             "generated picture")
    if not (np.asarray(mask) >= 128).any():
        raise InputError(f"--mask {args.mask} marks no generated pixel (all of it is below 50% gray): paint the "
                         "inpainted or outpainted area white")
    return generated, reference, mask


def _device_and_dtype(device: str, dtype: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but torch sees no CUDA GPU: use --device auto or cpu")
    types = {"auto": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    return torch.device(device), types[dtype]


def _tensor(image):
    """A PIL RGB image -> [1,H,W,3], a grayscale one -> [1,H,W]; float32 in [0,1]."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def run_restore_command(args: argparse.Namespace) -> int:
    from .checkpoint import DiffRIRLoadError

    show_library_warnings()
    errors = (InputError, DiffRIRLoadError, ValueError, OSError)
    return run_reporting(lambda: _restore(args), errors,
                         "use a smaller --tile, --dtype fp16, or --device cpu")


def _restore(args: argparse.Namespace) -> int:
    _check_numbers(args)
    generated, reference, mask = _read_inputs(args)
    device, dtype = _device_and_dtype(args.device, args.dtype)
    from .checkpoint import load_diffrir
    from .inference import restore_image

    model = load_diffrir(args.model, device=device, dtype=dtype)

    def on_tile(done: int, total: int) -> None:
        if total > 1:
            print(f"restoring: {done}/{total} tiles", file=sys.stderr, flush=True)

    restored = restore_image(model, _tensor(generated), _tensor(reference), _tensor(mask),
                             seed=args.seed, tile=args.tile, overlap=args.overlap, dilate=args.dilate,
                             feather=args.feather, on_tile=on_tile)
    path = unique_png(args.out, f"{args.image.stem}-restored")
    _save_png(restored[0], path, _png_info(args, model.scale, dtype))
    print(f"Saved {path}")
    return 0



def _save_png(image, path: Path, info) -> None:
    """image [H,W,3] float in [0,1] -> 8-bit PNG, rounded as BasicSR's tensor2img does."""
    import torch
    from PIL import Image

    array = (image.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    Image.fromarray(array, "RGB").save(path, pnginfo=info)


def _png_info(args: argparse.Namespace, scale: int, dtype) -> object:
    from PIL.PngImagePlugin import PngInfo

    settings = {"command": "restore", "model": args.model.name, "scale": scale, "seed": args.seed,
                "tile": args.tile, "overlap": args.overlap, "dilate": args.dilate, "feather": args.feather,
                "dtype": str(dtype).removeprefix("torch."), "image": args.image.name,
                "reference": args.reference.name, "mask": args.mask.name}
    info = PngInfo()
    info.add_itxt("llmga_settings", json.dumps(settings, ensure_ascii=False))
    return info
