"""`python -m llmga chat`: talk to an LLMGA assistant from the terminal."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from .tasks import PLACEMENTS, TASKS
from .templates import TEMPLATE_NAMES

# torch/transformers load only when a chat runs, so `python -m llmga extract-prompt` stays instant.


def add_chat_command(commands: argparse._SubParsersAction) -> None:
    chat = commands.add_parser(
        "chat", help="chat with an LLMGA assistant (text, image, masked image)",
        description="Ask an LLMGA assistant; prints its reply and the generation prompt between <gen_image> tags.")
    chat.add_argument("message", nargs="?", default="", help="your message (for text_to_image: a short prompt)")
    chat.add_argument("--mllm", required=True, help="checkpoint folder, or a released name such as "
                      "binxia/llmga-Qwen2-0.5B-full-finetune")
    chat.add_argument("--models-dir", type=Path, action="append", default=[],
                      help="folder searched for checkpoints by name (repeatable; default: models/LLM)")
    chat.add_argument("--clip-vision-dir", type=Path, action="append", default=[],
                      help="folder searched for the CLIP vision tower (default: models/clip_vision)")
    chat.add_argument("--allow-download", action="store_true", help="download a missing released checkpoint")
    chat.add_argument("--image", type=Path, help="a picture to talk about, edit, inpaint or outpaint")
    chat.add_argument("--mask", type=Path, help="inpaint/outpaint mask: white (>=125) where new content goes")
    chat.add_argument("--task", choices=TASKS, default="text_to_image")
    chat.add_argument("--placement", choices=PLACEMENTS, default="auto", help="text_to_image instruction side")
    chat.add_argument("--template", choices=("auto", *TEMPLATE_NAMES), default="auto")
    chat.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    chat.add_argument("--device", choices=("auto", "cuda", "cpu", "mps"), default="auto")
    chat.add_argument("--quantization", choices=("none", "8bit", "4bit"), default="none")
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--temperature", type=float, default=0.2)
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--max-new-tokens", type=int, default=512)
    chat.add_argument("--greedy", action="store_true", help="decode deterministically (temperature 0)")
    chat.add_argument("--interactive", action="store_true", help="keep asking; an empty line ends the chat")
    chat.set_defaults(run=run_chat)


def _read_mask(path: Path, size: tuple[int, int]):
    import numpy as np
    from PIL import Image

    from .chat import ChatError

    mask = Image.open(path).convert("L")
    if mask.size != size:
        raise ChatError(f"mask {path} is {mask.width}x{mask.height} but the image is {size[0]}x{size[1]}: "
                        "use a mask of the same size")
    return np.asarray(mask, dtype=np.float32) / 255.0


def run_chat(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..hub import ModelNotFoundError, resolve_model
    from .chat import Assistant, ChatError, GenerationSettings
    from .checkpoint import CheckpointError
    from .loader import load_llmga

    folders = args.models_dir or [Path("models/LLM")]
    try:
        path = resolve_model(args.mllm, folders, allow_download=args.allow_download)
        loaded = load_llmga(path, dtype=args.dtype, device=args.device, quantization=args.quantization,
                            clip_vision_dirs=args.clip_vision_dir or [Path("models/clip_vision")],
                            allow_download=args.allow_download)
        assistant = Assistant(loaded, template=None if args.template == "auto" else args.template)
        picture = None
        if args.image is not None:
            image = Image.open(args.image).convert("RGB")
            mask = _read_mask(args.mask, image.size) if args.mask is not None else None
            picture = assistant.picture(image, mask)
        elif args.mask is not None:
            raise ChatError("--mask needs --image")
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens, seed=args.seed, top_p=args.top_p,
                                      temperature=0.0 if args.greedy else args.temperature)
        history = assistant.new_history()
        message, task, turn = args.message, args.task, 0
        while True:
            history = _one_turn(assistant, history, message, task, picture, settings, args, turn)
            if not args.interactive:
                return 0
            message = input("\nYou: ").strip()
            if not message:
                return 0
            task, turn = "chat", turn + 1
    except (ModelNotFoundError, CheckpointError, ChatError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, EOFError):
        return 130


def _one_turn(assistant, history, message: str, task: str, picture, settings, args, turn: int):
    """Ask one question, streaming the answer to stdout; returns the history including it."""
    text = assistant.user_message(task, message, history, picture is not None and history.image is None,
                                  rng=random.Random(args.seed + turn), placement=args.placement)
    print("LLMGA: ", end="", flush=True)
    result = assistant.reply(history, text, image=picture if history.image is None else None, settings=settings,
                             on_text=lambda piece: print(piece, end="", flush=True))
    print()
    prompt = result.parsed.prompt(no_tag_fallback="empty")
    print(f"Generation prompt: {prompt}" if result.parsed.has_prompt else "Generation prompt: (none)")
    return result.history
