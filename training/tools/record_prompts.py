"""Record the LLMGA assistant's generation prompts for a folder of images: stage-2 training data made once.

The paper trains the SD UNet (stage 2) on the prompts the MLLM writes, without running the MLLM during training.
This tool asks the assistant about every image (by default "Generate a similar image.", whose reply holds the
prompt between <gen_image> tags) and appends one JSON line per image to the output:

    {"image": "cats/01.png", "caption": "<the generation prompt>", "tagged": true, "reply": "<the whole reply>",
     "task": "similar_image", "instruction": "<image>\\nGenerate a similar image.", "model": "<checkpoint folder name>"}

- image: the image's path relative to the OUTPUT file's folder (POSIX separators), so `read_caption_jsonl(output)`
  and stage 2 (`train_data: output.jsonl`) find the images without an image root. Write the output into the images
  folder and it is simply the path inside that folder.
- caption: the text between the first tag pair. A reply without tags is recorded with its whole text as caption and
  "tagged": false (every `describe` reply, as in training); `--skip-untagged` leaves those out instead (they are listed
  with the errors). An empty caption is never recorded.
- instruction: the user message as sent (`--instruction` gives your own phrasing; `--vary-instruction` draws one of
  the training phrasings per image, the same draw for an image on every run).

Resumable: images already in the output are skipped, and records are appended and flushed (fsync) after every batch,
so an interruption loses at most one batch. A torn last line (the process died mid-write) is cut off on restart.
Images that failed (unreadable, empty reply, untagged with --skip-untagged) go to the errors file
(`<output>.errors.jsonl` by default, rewritten each run) and are retried by the next run.

Decoding is greedy by default: batched replies then equal one-at-a-time replies (`llmga.mllm.batch`), so a resumed
run records what an uninterrupted one would. With --temperature > 0 a reply depends on the other images of its batch.

Several processes (`accelerate launch`, `llmga.shards`) share the images batch by batch, each on its own GPU with
--device auto, and append to their own part files (`prompts.part-<rank>.jsonl`); the main process folds them into
the output in the order one process would have written, so the output does not depend on the number of processes.
A run interrupted before that is resumed by the next one, with any number of processes.

    python -m training.tools.record_prompts --model models/LLM/llmga-Qwen2-0.5B-full-finetune \\
        --images data/my_images --output data/my_images/prompts.jsonl --batch-size 16 --max-new-tokens 256
    accelerate launch --num_processes 8 -m training.tools.record_prompts --model ... --images ... --output ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmga.files import append_jsonl, read_jsonl
from llmga.images import open_image
from llmga.mllm.tasks import QUES_PROMPT, REGEN_PROMPT
from llmga.shards import Shards, merge_parts, part_files, process_shards

from ..data.datasets import IMAGE_EXTENSIONS
from . import add_assistant_options, load_assistant, run_tool

# The tasks that ask about an image and nothing else (SGDataset), and the instruction each uses by default:
# "Generate a similar image." is an official regen_prompt entry and the official editing CLI's first turn; the
# describe default is the ques_prompt entry that asks for the most detail.
DEFAULT_INSTRUCTIONS = {"similar_image": REGEN_PROMPT[3], "describe": QUES_PROMPT[6]}
_RECORD_START = b'{"image": '  # how every line this tool writes begins (json.dumps keeps the key order)


class RecordError(ValueError):
    """A run that cannot start: a missing folder, no images, an output that is not this tool's."""


@dataclass
class RunCounts:
    """What a run did, for the summary line."""

    already: int = 0
    tagged: int = 0
    untagged: int = 0
    failed: list[str] = field(default_factory=list)


def resume_records(output: Path, errors_path: Path, task: str, model: str, shards: Shards) -> set[str]:
    """The images already recorded (`read_recorded`), after the main process has folded in the part files that an
    interrupted run of several processes left (each checked first) and removed the last run's errors file (its
    images are retried)."""
    if shards.is_main:
        parts = part_files(output)
        for part in parts:
            read_recorded(part, task, model)
        done = read_recorded(output, task, model)
        if parts:
            merge_parts(output, "image")
            done = read_recorded(output, task, model)
        for stale in (errors_path, *part_files(errors_path)):
            stale.unlink(missing_ok=True)
    shards.wait()
    return done if shards.is_main else read_recorded(output, task, model)


def run_counts(output: Path, errors_path: Path, keys: Sequence[str], already: int) -> RunCounts:
    """What the run recorded for the images `keys` it asked about, read back from the output and the errors file
    (written by every process)."""
    asked = set(keys)
    counts = RunCounts(already=already)
    for record in read_jsonl(output):
        if record.get("image") in asked:
            counts.tagged += record.get("tagged") is True
            counts.untagged += record.get("tagged") is not True
    counts.failed = [error["image"] for error in read_jsonl(errors_path) if error.get("image") in asked]
    return counts


def list_images(folder: Path, recursive: bool) -> list[Path]:
    """The images (IMAGE_EXTENSIONS, any case) in `folder` (and its subfolders when recursive), sorted by path."""
    if not folder.is_dir():
        raise RecordError(f"images folder {folder} does not exist or is not a folder: give the folder of images")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    images = sorted((p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                    key=lambda p: p.relative_to(folder).as_posix())
    if not images:
        hint = "" if recursive else " (add --recursive to look in its subfolders)"
        raise RecordError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}{hint}")
    return images


def image_key(image: Path, output: Path) -> str:
    """The image's path as recorded: relative to the output's folder, with POSIX separators (absolute on another
    drive)."""
    try:
        return Path(os.path.relpath(image, output.parent)).as_posix()
    except ValueError:  # Windows: no relative path between drives
        return Path(image).absolute().as_posix()


def read_recorded(output: Path, task: str, model: str) -> set[str]:
    """The images already recorded in `output` (empty when it does not exist). A torn last line (no final newline: the
    write was interrupted) is cut from the file once every complete line has been checked. Raises RecordError for a
    line this tool did not write, or for records of another task or model, which a resumed run would mix in."""
    if not output.exists():
        return set()
    if output.is_dir():
        raise RecordError(f"--output {output} is a folder: give a .jsonl file path")
    data = output.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    done = _recorded_images(output, complete, task, model)
    torn = data[len(complete):]
    if torn:
        if not (torn.startswith(_RECORD_START) or _RECORD_START.startswith(torn)):
            raise RecordError(f"{output}: the last line is not a record of this tool; give another --output")
        with output.open("r+b") as file:
            file.truncate(len(complete))
        print(f"warning: {output}: removed a torn last line ({len(torn)} bytes) left by an interrupted run; its "
              "image is recorded again", file=sys.stderr)
    return done


def _recorded_images(output: Path, complete: bytes, task: str, model: str) -> set[str]:
    """The "image" of every complete line, checked to be a record of this tool for `task` and `model`."""
    done = set()
    for number, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise RecordError(f"{output}: line {number} is not a record of this tool; give another --output "
                              "(this one is not a prompt recording, or it is damaged)")
        if (record.get("task"), record.get("model")) != (task, model):
            raise RecordError(f"{output} holds prompts of task {record.get('task')!r} by model {record.get('model')!r}"
                              f" but this run asks task {task!r} of model {model!r}: resume with the same --task and "
                              "--model, or write to another --output")
        done.add(record["image"])
    return done


def user_turn(assistant, image, task: str, key: str, instruction: str | None, vary: bool, seed: int):
    """The first turn about one image (`Assistant.turn`): `instruction`, a training phrasing drawn for this image
    (vary: seeded by "<seed>:<image key>"), or the task's default instruction."""
    if instruction is None and not vary:
        instruction = DEFAULT_INSTRUCTIONS[task]
    phrasing_seed = f"{seed}:{key}" if instruction is None else None
    return assistant.turn(assistant.new_history(), task, image=image, instruction=instruction,
                          phrasing_seed=phrasing_seed)


def record_batch(assistant, images: Sequence[Path], keys: Sequence[str], args: argparse.Namespace, model: str,
                 warn) -> tuple[list[dict], list[dict]]:
    """Ask about one batch of images; (records to append, error entries)."""
    from llmga.mllm.batch import reply_batch
    from llmga.mllm.chat import GenerationSettings

    errors, requests, asked = [], [], []
    for image, key in zip(images, keys, strict=True):
        try:  # an unreadable file (ImageInputError) or one the image processor refuses
            requests.append(user_turn(assistant, open_image(image), args.task, key, args.instruction,
                                      args.vary_instruction, args.seed))
        except ValueError as error:
            errors.append({"image": key, "error": f"cannot read the image: {error}"})
            continue
        asked.append(key)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, seed=args.seed)
    records = []
    for key, request, reply in zip(asked, requests, reply_batch(assistant, requests, settings), strict=True):
        tagged = reply.parsed.has_prompt
        caption = reply.parsed.prompt(no_tag_fallback="whole reply")
        if not caption:
            errors.append({"image": key, "error": "the reply is empty", "reply": reply.text})
        elif not tagged and args.skip_untagged:
            errors.append({"image": key, "error": "the reply has no <gen_image> tags", "reply": reply.text})
        else:
            records.append({"image": key, "caption": caption, "tagged": tagged, "reply": reply.text,
                            "task": args.task, "instruction": request.message, "model": model})
    for error in errors:
        warn(f"warning: {error['image']}: {error['error']}")
    return records, errors


def check_arguments(args: argparse.Namespace) -> None:
    for name in ("batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise RecordError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 0:
        raise RecordError(f"--limit must not be negative, got {args.limit}")
    if args.temperature < 0:
        raise RecordError(f"--temperature must not be negative, got {args.temperature} (0 = greedy)")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise RecordError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.skip_untagged and args.task == "describe":
        raise RecordError("--skip-untagged would skip every reply of task describe (trained without tags): drop it")
    if args.instruction is not None and args.vary_instruction:
        raise RecordError("give --instruction (one phrasing) or --vary-instruction (training phrasings), not both")
    if not Path(args.model).is_dir():
        raise RecordError(f"--model {args.model} is not a folder: give an LLMGA checkpoint folder "
                          "(config.json, *.safetensors, tokenizer files)")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    check_arguments(args)
    output = Path(args.output)
    model = Path(args.model).resolve().name
    images = list_images(Path(args.images), args.recursive)
    keys = [image_key(image, output) for image in images]
    errors_path = Path(args.errors) if args.errors else output.with_suffix(".errors.jsonl")
    if errors_path.absolute() == output.absolute():
        raise RecordError(f"--errors {errors_path} is the output file: give another path")
    shards = process_shards()
    args.device = shards.device(args.device)
    done = resume_records(output, errors_path, args.task, model, shards)
    pending = [(image, key) for image, key in zip(images, keys, strict=True) if key not in done]
    if args.limit is not None:
        pending = pending[:args.limit]
    already = sum(key in done for key in keys)
    if not pending:
        if shards.is_main:
            print(f"nothing to do: {already} of {len(images)} images are recorded in {output}")
        return 0

    mine = shards.share(pending, args.batch_size)  # whole batches: each is one a single process would ask
    assistant = load_assistant(args.model, args) if mine else None
    bar = tqdm(total=len(mine), unit="image", desc="recording prompts", disable=not shards.is_main)
    for start in range(0, len(mine), args.batch_size):
        batch = mine[start:start + args.batch_size]
        records, errors = record_batch(assistant, [p for p, _ in batch], [k for _, k in batch], args, model,
                                       lambda text: tqdm.write(text, file=sys.stderr))
        append_jsonl(shards.part(output), records)  # flushed to disk: an interruption keeps every finished batch
        if errors:
            append_jsonl(shards.part(errors_path), errors)
        bar.update(len(batch))
    bar.close()
    shards.wait()
    if not shards.is_main:
        return 0  # the main process reports this process's images too
    order = [key for _, key in pending]
    merge_parts(output, "image", order)
    merge_parts(errors_path, "image", order)
    counts = run_counts(output, errors_path, order, already)
    recorded = counts.tagged + counts.untagged
    failed = f"; {len(counts.failed)} failed (listed in {errors_path}; a rerun retries them)" if counts.failed else ""
    print(f"recorded {recorded} prompts ({counts.tagged} tagged, {counts.untagged} untagged) in {output}; "
          f"{counts.already} of {len(images)} images were recorded before{failed}")
    return 1 if counts.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.tools.record_prompts",
        description="Record the LLMGA assistant's generation prompts for a folder of images (stage-2 training "
                    "data, read by read_caption_jsonl). Resumable: rerun the same command to continue.",
        epilog="exit status: 0 done, 1 some images failed (listed in the errors file), 2 the run could not start, "
               "130 Ctrl-C")
    parser.add_argument("--model", required=True, help="LLMGA checkpoint folder")
    add_assistant_options(parser, "folder searched for the CLIP vision tower when the checkpoint lacks it (repeatable)")
    parser.add_argument("--images", required=True, help="folder of images (.png .jpg .jpeg .webp .bmp)")
    parser.add_argument("--output", required=True, help=".jsonl file; appended to, and resumed from when it exists")
    parser.add_argument("--recursive", action="store_true", help="also take images from subfolders")
    parser.add_argument("--task", choices=tuple(DEFAULT_INSTRUCTIONS), default="similar_image",
                        help="similar_image: the reply holds a <gen_image> prompt; describe: a plain description")
    parser.add_argument("--instruction", help="your own phrasing of the request (default: "
                        + "; ".join(f"{task}: {text!r}" for task, text in DEFAULT_INSTRUCTIONS.items()) + ")")
    parser.add_argument("--vary-instruction", action="store_true",
                        help="draw the phrasing per image from the training list (seeded, stable across runs)")
    parser.add_argument("--skip-untagged", action="store_true",
                        help="leave out replies without <gen_image> tags (default: record the whole reply with "
                             '"tagged": false)')
    parser.add_argument("--batch-size", type=int, default=8, help="images answered per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="reply length limit (official CLI: 512)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 (default): greedy, reproducible and batch-independent; > 0: seeded sampling")
    parser.add_argument("--top-p", type=float,
                        help="nucleus sampling when --temperature > 0 (default: the checkpoint's "
                        "generation_config.json, as the official CLIs)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed and --vary-instruction draws")
    parser.add_argument("--limit", type=int, help="record at most this many new images in this run")
    parser.add_argument("--errors", help="where failed images are listed (default: <output>.errors.jsonl)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
