"""`python -m llmga chat`: talk to an LLMGA assistant from the terminal (text, an image, a masked image)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..devices import ASSISTANT_DTYPES
from ..mllm.tasks import PLACEMENTS, TASKS
from ..mllm.templates import TEMPLATE_NAMES
from . import common
from .common import InputError


def add_chat_command(commands: argparse._SubParsersAction) -> None:
    chat = commands.add_parser(
        "chat", help="chat with an LLMGA assistant (text, image, masked image)",
        description="Ask an LLMGA assistant; prints its reply and the generation prompt between <gen_image> tags.")
    chat.add_argument("message", nargs="?", default="", help="your message (for text_to_image: a short prompt)")
    common.add_assistant_arguments(chat, required=True)
    chat.add_argument("--clip-vision-dir", type=Path, action="append", default=[],
                      help="folder searched for the CLIP vision tower (default: the models folders' clip_vision/)")
    chat.add_argument("--image", type=Path, help="a picture to talk about, edit, inpaint or outpaint")
    chat.add_argument("--mask", type=Path, help="inpaint/outpaint mask of the image's size: white (>= 125) where new "
                      "content goes; the assistant sees those pixels black")
    chat.add_argument("--task", choices=TASKS, default="text_to_image")
    chat.add_argument("--placement", choices=PLACEMENTS, default="auto", help="text_to_image instruction side")
    chat.add_argument("--template", choices=("auto", *TEMPLATE_NAMES), default="auto")
    common.add_device_arguments(chat, "official: the LLM in fp16 and the CLIP tower's own weights in fp32, as the "
                                "official CLIs; auto: official on GPUs when the tower is in a clip_vision folder, else "
                                "bf16 on GPUs that support it, fp16 on other GPUs; fp32 on the CPU", ASSISTANT_DTYPES)
    chat.add_argument("--quantization", choices=("none", "8bit", "4bit"), default="none")
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--greedy", action="store_true", help="decode deterministically (temperature 0)")
    chat.add_argument("--interactive", action="store_true", help="keep asking; an empty line ends the chat")
    chat.add_argument("--show-prompt", action="store_true",
                      help="also print the prompt sent to the model (template, instruction phrasing, <image>)")
    chat.set_defaults(run=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    return common.run_command(lambda: _chat(args), "use --quantization 4bit, --dtype fp16, or --device cpu")


def _chat(args: argparse.Namespace) -> int:
    from ..images import open_image
    from ..mllm.chat import check_turn_picture

    common.check_assistant_numbers(args)
    if args.mask is not None and args.image is None:
        raise InputError("--mask needs --image: give the picture the mask belongs to")
    # Inputs are read and checked before the model loads, so bad input fails in a second.
    image = open_image(args.image) if args.image is not None else None
    mask = check_turn_picture(args.task, image, open_image(args.mask, "L") if args.mask is not None else None)
    assistant = common.load_assistant(args, template=None if args.template == "auto" else args.template,
                                      quantization=args.quantization)
    settings = common.assistant_settings(args, args.seed, temperature=0.0 if args.greedy else args.temperature)
    history = assistant.new_history()
    message, task, turn = args.message, args.task, 0
    while True:
        result = common.ask_streamed(assistant, history, task, message, image=image, mask=mask, settings=settings,
                                     phrasing_seed=args.seed + turn, placement=args.placement)
        prompt = result.parsed.prompt(no_tag_fallback="empty")
        print(f"Generation prompt: {prompt}" if result.parsed.has_prompt else "Generation prompt: (none)")
        if args.show_prompt:
            print(f"Prompt sent: {result.prompt!r}")
        history = result.history
        if not args.interactive:
            return 0
        try:
            message = input("\nYou: ").strip()
        except EOFError:  # standard input closed (Ctrl-D): the chat ends
            return 0
        if not message:
            return 0
        task, turn = "chat", turn + 1
