"""`python -m llmga restore --model F --image gen.png --reference orig.png --mask mask.png`: DiffRIR after inpainting
or outpainting.

The generated region (white in --mask) of --image is restored by DiffRIR so that its texture, brightness and contrast
match the rest of the picture, which is copied unchanged from --reference (inference_diffrir.py). Images and sizes
are checked before the model loads; the PNG written carries the settings in its metadata.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import InputError, add_device_arguments, check_png_out, output_paths, run_command, save_png

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
    add_device_arguments(parser, "auto: fp32, as the official inference (the network is small); fp16/bf16 on GPUs")
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
    check_png_out(args.out)


def _read_inputs(args: argparse.Namespace):
    """(generated, reference) as [1,H,W,3] and the mask as [1,H,W], float32 in [0,1], checked to have one size and
    a non-empty mask; a mask that covers the whole picture gets a note."""
    import torch

    from ..images import mask_array, open_image, pil_to_tensor
    from ..restore.region import MASK_THRESHOLD, mask_notes

    generated = open_image(args.image, "RGB")
    reference = open_image(args.reference, "RGB")
    if reference.size != generated.size:
        raise InputError(f"the reference is {reference.width}x{reference.height} but the generated image is "
                         f"{generated.width}x{generated.height}: give the original (--reference) at the size of the "
                         "generated picture (--image)")
    mask = mask_array(open_image(args.mask, "L"), generated.size, threshold=MASK_THRESHOLD, action="restore",
                      image_name="generated image")
    mask = torch.from_numpy(mask)[None]
    for note in mask_notes(mask):
        print(f"note: {note}", file=sys.stderr)
    return pil_to_tensor(generated), pil_to_tensor(reference), mask


def run_restore_command(args: argparse.Namespace) -> int:
    return run_command(lambda: _restore(args), "use a smaller --tile, --dtype fp16, or --device cpu")


def _restore(args: argparse.Namespace) -> int:
    _check_numbers(args)
    generated, reference, mask = _read_inputs(args)
    from ..devices import device_and_dtype
    from ..images import tensor_to_pil
    from ..restore.checkpoint import load_diffrir
    from ..restore.inference import restore_image

    device, dtype = device_and_dtype("diffrir", args.device, args.dtype)

    model = load_diffrir(args.model, device=device, dtype=dtype)

    def on_tile(done: int, total: int) -> None:
        if total > 1:
            print(f"restoring: {done}/{total} tiles", file=sys.stderr, flush=True)

    restored = restore_image(model, generated, reference, mask, seed=args.seed, tile=args.tile, overlap=args.overlap,
                             dilate=args.dilate, feather=args.feather, on_tile=on_tile)
    (path,) = output_paths(args.out, [f"{args.image.stem}-restored"])
    save_png(tensor_to_pil(restored[0]), path, _settings_record(args, model.scale, dtype))
    print(f"Saved {path}")
    return 0


def _settings_record(args: argparse.Namespace, scale: int, dtype) -> dict:
    """What the restored PNG records under llmga_settings."""
    from ..devices import dtype_name

    return {"command": "restore", "model": args.model.name, "scale": scale, "seed": args.seed, "tile": args.tile,
            "overlap": args.overlap, "dilate": args.dilate, "feather": args.feather, "dtype": dtype_name(dtype),
            "image": args.image.name, "reference": args.reference.name, "mask": args.mask.name}
