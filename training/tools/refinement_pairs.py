"""Build prompt-refinement pairs (short prompt -> detailed prompt), the T2I part of the stage-1 data, from any
captioned set, in the released `T2I/train.json` format: a JSON list of {"ori_caption": short, "caption": detailed,
"image": path} that `read_t2i` reads (and stage 2 trains on, with `image_root`).

The input is a folder of images with same-stem .txt captions, a .jsonl of {"image", "caption"}, an SG/inpainting-style
.json list of {"image", "caption"}, or a T2I .json list. A captioner writes the missing side of each pair:

- `--mode shorten`: the set's captions are detailed (a T2I json gives its "caption"); the captioner writes the short
  prompt. Built-in: `first-sentence` (the first sentence, without its final period), `truncate:N` (the first N words).
- `--mode expand`: the set's captions are short (a T2I json gives its "ori_caption"); the captioner writes the detailed
  one. Built-in: `assistant:<LLMGA folder>`, the assistant's `refine_prompt` task (default; "Please provide a detailed
  description." before the short prompt, as TextDataset), `text_to_image` (its <gen_image> prompt) or `describe` (it
  looks at the image and ignores the caption), answered in batches (`llmga.mllm.batch`) with greedy decoding.
- Your own: `some.module:function`, any callable(image: Path | None, caption: str) -> str (see `Captioner`), imported
  from sys.path (the current folder included). This RUNS YOUR CODE: the spec is taken from the command line only.

Image paths in the output are relative to the image root: the input folder, or for a file input --image-root (default:
the file's folder). Pairs whose new side is empty or equal to the caption are skipped (nothing to learn from them).
The output is written at once, through a temporary file and a rename, and never over the input.

    python -m training.tools.refinement_pairs --input data/laion_detailed.jsonl --output data/t2i_pairs.json \\
        --mode shorten --captioner first-sentence
    python -m training.tools.refinement_pairs --input data/short_prompts/ --output data/t2i_pairs.json \\
        --mode expand --captioner assistant:models/LLM/llmga-Qwen2-0.5B-full-finetune --batch-size 16
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from llmga.files import write_json_atomic
from llmga.images import ImageInputError, open_image

from ..data.datasets import read_caption_jsonl, read_captioned_images, read_image_folder, read_json_list, read_t2i
from . import add_assistant_options, load_assistant, run_tool

MODES = ("shorten", "expand")
ASSISTANT_TASKS = ("refine_prompt", "text_to_image", "describe")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


class RefineError(ValueError):
    """A request that cannot be served; the message says what to change."""


class Captioner(Protocol):
    """Writes the missing side of a pair: the short prompt (--mode shorten) or the detailed one (--mode expand).

    image: the record's image, or None for a T2I record without one. caption: the set's caption (detailed when
    shortening, short when expanding). Returns the new text; "" skips the record. A captioner may also have
    `mode` ("shorten" or "expand", checked against --mode) and `caption_batch(items: list[(image, caption)]) ->
    list[str]`, used instead of one call per record when present.
    """

    def __call__(self, image: Path | None, caption: str) -> str: ...


@dataclass(frozen=True)
class FirstSentence:
    """The caption's first sentence (up to the first . ! or ? followed by a space or the end), without a final '.'."""

    mode: ClassVar[str] = "shorten"

    def __call__(self, image: Path | None, caption: str) -> str:
        text = " ".join(caption.split())
        end = _SENTENCE_END.search(text)
        sentence = text if end is None else text[:end.end()]
        return sentence.removesuffix(".").strip()


@dataclass(frozen=True)
class FirstWords:
    """The caption's first `count` words, without trailing punctuation."""

    count: int
    mode: ClassVar[str] = "shorten"

    def __call__(self, image: Path | None, caption: str) -> str:
        return " ".join(caption.split()[:self.count]).rstrip(" ,;:.")


class AssistantCaptioner:
    """Detailed prompts from an LLMGA assistant (`llmga.mllm.chat.Assistant`), batched, greedy.

    task: refine_prompt / text_to_image (the caption is the short prompt; no image) or describe (the image only).
    """

    mode: ClassVar[str] = "expand"

    def __init__(self, assistant, task: str, max_new_tokens: int):
        from llmga.mllm.chat import GenerationSettings

        if task not in ASSISTANT_TASKS:
            raise RefineError(f"assistant task {task!r} is not one of {', '.join(ASSISTANT_TASKS)}")
        self.assistant, self.task = assistant, task
        self.settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0)

    def _request(self, image: Path | None, caption: str):
        """The first turn for one record (`Assistant.turn`): the caption after the task's instruction, or for
        describe the image alone."""
        history = self.assistant.new_history()
        if self.task != "describe":
            return self.assistant.turn(history, self.task, caption, placement="before")
        if image is None:
            raise RefineError("assistant task describe needs images, but a record has none: use refine_prompt")
        try:
            picture = open_image(image)
        except ImageInputError as error:
            raise RefineError(f"cannot read the image: {error}") from None
        return self.assistant.turn(history, "describe", image=picture)

    def caption_batch(self, items: Sequence[tuple[Path | None, str]]) -> list[str]:
        from llmga.mllm.batch import reply_batch

        replies = reply_batch(self.assistant, [self._request(image, caption) for image, caption in items],
                              self.settings)
        return [reply.parsed.prompt(no_tag_fallback="whole reply") for reply in replies]

    def __call__(self, image: Path | None, caption: str) -> str:
        return self.caption_batch([(image, caption)])[0]


def import_callable(spec: str) -> Captioner:
    """`package.module:attribute` (dots after the colon walk attributes) imported and checked to be callable."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise RefineError(f"captioner {spec!r} is not module:callable (e.g. my_captions:shorten)")
    try:
        target = importlib.import_module(module_name)
    except ImportError as error:
        raise RefineError(f"captioner {spec!r}: cannot import {module_name!r} ({error}); run from the folder that "
                          "holds it or add it to PYTHONPATH") from None
    for name in attribute.split("."):
        if not hasattr(target, name):
            raise RefineError(f"captioner {spec!r}: {module_name} has no {attribute!r}")
        target = getattr(target, name)
    if not callable(target):
        raise RefineError(f"captioner {spec!r} is a {type(target).__name__}, not a callable(image, caption) -> str")
    return target


def check_direction(spec: str, direction: str | None, mode: str) -> None:
    """RefineError when a captioner made for one --mode (its `mode`; None = either) is used for the other."""
    if direction is not None and direction != mode:
        raise RefineError(f"captioner {spec!r} is made for --mode {direction}, not --mode {mode}: choose a captioner "
                          "for this mode (shorten: first-sentence, truncate:N; expand: assistant:<folder>) or your "
                          "own module:callable")


def make_captioner(spec: str, args: argparse.Namespace) -> Captioner:
    """The captioner a --captioner spec names (see the module docstring)."""
    if spec == "first-sentence":
        return FirstSentence()
    if spec.startswith("truncate:"):
        count = spec.removeprefix("truncate:")
        if not count.isdigit() or int(count) < 1:
            raise RefineError(f"captioner {spec!r}: truncate:N needs a positive word count N, e.g. truncate:12")
        return FirstWords(int(count))
    if spec.startswith("assistant:"):
        folder = spec.removeprefix("assistant:")
        check_direction(spec, AssistantCaptioner.mode, args.mode)  # before loading the model
        if not Path(folder).is_dir():
            raise RefineError(f"captioner {spec!r}: {folder} is not a folder; give an LLMGA checkpoint folder")
        return AssistantCaptioner(load_assistant(folder, args), args.assistant_task, args.max_new_tokens)
    return import_callable(spec)


def read_source(source: Path, image_root: Path | None, mode: str) -> tuple[list[tuple[Path | None, str]], Path]:
    """(image, the caption the captioner starts from) per record, and the folder image paths are relative to."""
    if source.is_dir():
        if image_root is not None:
            raise RefineError("--image-root is for .json/.jsonl inputs; a folder input's images are in the folder")
        return [(r.image, r.caption) for r in read_image_folder(source)], source
    root = image_root if image_root is not None else source.parent
    if source.suffix == ".jsonl":
        return [(r.image, r.caption) for r in read_caption_jsonl(source, root)], root
    if source.suffix != ".json":
        raise RefineError(f"--input {source}: expected a folder, a .jsonl or a .json file")
    if any("ori_caption" in record for record in read_json_list(source)):  # a T2I list: both sides present
        return [(r.image, r.caption if mode == "shorten" else r.short) for r in read_t2i(source, root)], root
    return [(r.image, r.caption) for r in read_captioned_images(source, root)], root


def check_unique_images(items: Sequence[tuple[Path | None, str]], source: Path) -> None:
    """RefineError naming both records when an image appears twice (one pair per image)."""
    first: dict[str, int] = {}
    for index, (image, _) in enumerate(items):
        if image is None:
            continue
        key = os.path.normpath(image)
        if key in first:
            raise RefineError(f"{source}: image {image} appears in records {first[key]} and {index}: each image "
                              "gets one pair; remove the duplicate record")
        first[key] = index


def relative_name(image: Path, root: Path) -> str:
    """The image path as stored: relative to `root` (POSIX) when inside it, else absolute."""
    image, root = Path(os.path.normpath(image)), Path(os.path.normpath(root))
    try:
        return image.relative_to(root).as_posix()
    except ValueError:
        return Path(os.path.abspath(image)).as_posix()


def build_pairs(items: Sequence[tuple[Path | None, str]], captioner: Captioner, mode: str, root: Path,
                batch_size: int = 8, warn=print) -> list[dict]:
    """The T2I records for `items` (image, caption) in input order; records whose new side is empty or the caption
    itself are skipped (with a warning). Raises RefineError when the captioner returns something other than text."""
    from tqdm.auto import tqdm

    many = getattr(captioner, "caption_batch", None)
    step = batch_size if many is not None else 1
    records = []
    with tqdm(total=len(items), unit="record", desc=f"{mode} captions") as bar:
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            written = many(chunk) if many is not None else [captioner(image, caption) for image, caption in chunk]
            for (image, caption), text in zip(chunk, written, strict=True):
                if not isinstance(text, str):
                    raise RefineError(f"the captioner returned {type(text).__name__} for {image or caption!r}; a "
                                      "captioner returns the caption text (str)")
                text = text.strip()
                if not text or text == caption.strip():
                    warn(f"warning: skipped {image or caption!r}: the captioner returned "
                         + ("nothing" if not text else "the caption unchanged"))
                    continue
                short, detailed = (text, caption) if mode == "shorten" else (caption, text)
                record = {"ori_caption": short, "caption": detailed}
                if image is not None:
                    record["image"] = relative_name(image, root)
                records.append(record)
            bar.update(len(chunk))
    return records


def run(args: argparse.Namespace) -> int:
    source, output = Path(args.input), Path(args.output)
    if not source.exists():
        raise RefineError(f"--input {source} does not exist: give a folder of images + .txt, a .jsonl or a .json")
    if output.resolve() == source.resolve():
        raise RefineError(f"--output {output} is the input: write the pairs to another file")
    if output.exists() and not args.overwrite:
        raise RefineError(f"--output {output} exists: choose another file or pass --overwrite")
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise RefineError("--batch-size and --max-new-tokens must be at least 1")
    items, root = read_source(source, Path(args.image_root) if args.image_root else None, args.mode)
    check_unique_images(items, source)
    captioner = make_captioner(args.captioner, args)
    check_direction(args.captioner, getattr(captioner, "mode", None), args.mode)
    records = build_pairs(items, captioner, args.mode, root, args.batch_size,
                          warn=lambda text: print(text, file=sys.stderr))
    if not records:
        raise RefineError(f"no pairs: the captioner returned nothing new for all {len(items)} records")
    write_json_atomic(output, records, indent=1)
    print(f"wrote {len(records)} pairs to {output} ({len(items) - len(records)} of {len(items)} records skipped); "
          f"image paths are relative to {root}: read it with read_t2i({str(output)!r}, image_root={str(root)!r})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.tools.refinement_pairs",
        description="Build short -> detailed prompt pairs (T2I/train.json format) from a captioned set.",
        epilog="exit status: 0 written, 2 not (the error says why), 130 Ctrl-C")
    parser.add_argument("--input", required=True, help="folder of images + .txt captions, .jsonl, or .json")
    parser.add_argument("--output", required=True, help="the .json list to write")
    parser.add_argument("--mode", choices=MODES, required=True,
                        help="shorten: captions are detailed, write short prompts; expand: the other way round")
    parser.add_argument("--captioner", required=True,
                        help="first-sentence | truncate:N | assistant:<LLMGA folder> | module:callable (runs your "
                             "code)")
    parser.add_argument("--image-root", help="where a .json/.jsonl input's image paths start (default: its folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--assistant-task", choices=ASSISTANT_TASKS, default="refine_prompt",
                        help="what the assistant: captioner is asked")
    parser.add_argument("--batch-size", type=int, default=8, help="records per generate call (assistant)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="reply length limit (assistant)")
    add_assistant_options(parser, "folder searched for the CLIP vision tower (assistant describe)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
