"""The library's models bound to the evaluation loops' injected functions: the SD1.5 / SDXL pipelines as `generate_fn` /
`inpaint_fn`, the assistant as `refine_fn` / `prompt_fn` (loaded on first use: `LazyAssistant`), DiffRIR as a
`Restorer`, CLIP as the text embedder.

Everything here loads torch, diffusers and transformers only when called, so `llmga.eval` imports light.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..devices import free_memory
from ..files import save_npz_atomic
from .inpaint import InpaintGeneration, Restorer
from .runs import Setting
from .t2i import T2IGeneration, TextEmbedFn

if TYPE_CHECKING:
    from PIL import Image


def text_to_image_batch(pipe, prompts: Sequence[str], seeds: Sequence[int], *, negative: str = "", steps: int,
                        cfg: float, width: int, height: int, mode: str = "llmga") -> list[Image.Image]:
    """One image per (prompt, seed) in as few pipeline calls as possible: prompts whose long-prompt encodings have the
    same length run together, each with its own seeded CPU generator, so every image is the one `text_to_image`
    makes alone from that seed (up to floating-point rounding of the batched UNet). SD1.5 and SDXL pipelines alike."""
    from ..sd.pipelines import (
        encode_prompts,
        is_inpainting_pipeline,
        pipeline_embeddings,
        seeded_generator,
        text_to_image,
    )

    if is_inpainting_pipeline(pipe):  # paints a blank canvas, one image at a time
        return [text_to_image(pipe, prompt, negative, steps=steps, cfg=cfg, seed=seed, width=width, height=height,
                              mode=mode)[0] for prompt, seed in zip(prompts, seeds, strict=True)]
    encoded = [encode_prompts(pipe, prompt, negative, mode=mode) for prompt in prompts]
    groups: dict[int, list[int]] = {}
    for index, result in enumerate(encoded):
        groups.setdefault(result.length, []).append(index)
    images: list = [None] * len(prompts)
    for indices in groups.values():
        embeddings = pipeline_embeddings(pipe, *(encoded[i] for i in indices))
        out = pipe(**embeddings, num_inference_steps=steps, guidance_scale=cfg, width=width, height=height,
                   generator=[seeded_generator(seeds[i]) for i in indices]).images
        for i, image in zip(indices, out, strict=True):
            images[i] = image
    return images


class _PipelineHolder:
    """One SD pipeline in memory at a time: `load(model) -> pipeline` runs when the model changes, after the previous
    pipeline is dropped; the pipeline's own progress bar is off (the loops show theirs)."""

    def __init__(self, load: Callable[[str], object]) -> None:
        self.load = load
        self.model: str | None = None
        self.pipe = None

    def pipeline(self, model: str):
        if model != self.model:
            self.pipe = None
            free_memory()
            self.pipe = self.load(model)
            self.pipe.set_progress_bar_config(disable=True)
            self.model = model
        return self.pipe

    def close(self) -> None:
        self.pipe, self.model = None, None
        free_memory()


class PipelineGenerator(_PipelineHolder):
    """`generate_fn` of run_t2i_eval on the library's SD pipelines, batched (`text_to_image_batch`), each model with
    the generation of the settings that name it (`Setting.generation`), else `generation`."""

    def __init__(self, load: Callable[[str], object], generation: T2IGeneration,
                 settings: Sequence[Setting] = ()) -> None:
        super().__init__(load)
        self.generation = generation
        self.generations = {setting.model: setting.generation for setting in settings if setting.generation}

    def __call__(self, model: str, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        g = self.generations.get(model, self.generation)
        return text_to_image_batch(self.pipeline(model), prompts, seeds, negative=g.negative, steps=g.steps,
                                   cfg=g.cfg, width=g.width, height=g.height, mode=g.encoding)


class PipelineInpainter(_PipelineHolder):
    """`inpaint_fn` of run_inpaint_eval on the library's SD inpainting pipelines (`sd.pipelines.inpaint`: SD1.5 at the
    crop's size, SDXL at 1024x1024 resized back; pasted onto the input), each model with the generation of
    the settings that name it, else `generation`."""

    def __init__(self, load: Callable[[str], object], generation: InpaintGeneration,
                 settings: Sequence[Setting] = ()) -> None:
        super().__init__(load)
        self.generation = generation
        self.generations = {setting.model: setting.generation for setting in settings if setting.generation}

    def __call__(self, model: str, image: Image.Image, mask: np.ndarray, prompt: str, seed: int) -> Image.Image:
        from ..sd.pipelines import inpaint

        g = self.generations.get(model, self.generation)
        return inpaint(self.pipeline(model), image, mask, prompt, g.negative, steps=g.steps, cfg=g.cfg, seed=seed,
                       mode=g.encoding, strength=g.strength)[0]


class _AssistantReplies:
    """The assistant answering first turns in batches (`mllm.batch.reply_batch`) with `settings` (greedy by
    default)."""

    def __init__(self, assistant, settings=None) -> None:
        from ..mllm.chat import GenerationSettings

        self.assistant = assistant
        self.settings = settings or GenerationSettings(temperature=0.0)

    def replies(self, turns: list) -> list[str]:
        """The reply texts to `turns` (`Assistant.turn`), in order."""
        from ..mllm.batch import reply_batch

        return [reply.text for reply in reply_batch(self.assistant, turns, self.settings)]


class AssistantRefiner(_AssistantReplies):
    """`refine_fn` of run_t2i_eval: the text_to_image task's first phrasing with each caption (deterministic)."""

    def __call__(self, captions: list[str]) -> list[str]:
        history = self.assistant.new_history()
        return self.replies([self.assistant.turn(history, "text_to_image", caption) for caption in captions])


class AssistantPrompter(_AssistantReplies):
    """`prompt_fn` of run_inpaint_eval: the inpaint/outpaint task's first instruction with the masked picture (masked
    pixels black, as the assistant was trained)."""

    def __call__(self, images: list[Image.Image], masks: list[np.ndarray], tasks: list[str]) -> list[str]:
        history = self.assistant.new_history()
        return self.replies([self.assistant.turn(history, task, image=image, mask=mask)
                             for image, mask, task in zip(images, masks, tasks, strict=True)])


class LazyAssistant:
    """An assistant-backed callable made on first use: `load()` gives the assistant, `wrap(assistant)` the callable
    (an AssistantRefiner, an AssistantPrompter). `close` drops it and frees its memory, so a resumed run whose
    replies are all cached never loads the assistant, and SD gets the memory back once the replies are made."""

    def __init__(self, load: Callable[[], object], wrap: Callable[[object], Callable]) -> None:
        self.load, self.wrap, self.call = load, wrap, None

    def __call__(self, *inputs):
        if self.call is None:
            self.call = self.wrap(self.load())
        return self.call(*inputs)

    def close(self) -> None:
        self.call = None
        free_memory()


def clip_text_embedder(clip, cache_file: Path | None = None, progress: bool = True) -> TextEmbedFn:
    """CLIP text embeddings [N, D] (float32) of captions with an `encoders.ClipEncoder`, one caption per pass (the
    causal text model pools at EOS, so no padding). With `cache_file` (.npz), embeddings are kept by caption text
    and computed once across runs."""

    def embed(texts: list[str]) -> np.ndarray:
        from tqdm.auto import tqdm

        known: dict[str, np.ndarray] = {}
        if cache_file is not None and cache_file.is_file():
            with np.load(cache_file) as data:
                known = dict(zip(data["texts"].tolist(), data["embeds"], strict=True))
        todo = list(dict.fromkeys(text for text in texts if text not in known))
        for text in tqdm(todo, desc="CLIP text", unit="caption", disable=not progress):
            known[text] = clip.embed_text(text)[0].numpy()
        if todo and cache_file is not None:
            save_npz_atomic(cache_file, texts=np.array(list(known)), embeds=np.stack(list(known.values())))
        return np.stack([known[text] for text in texts]) if texts else np.zeros((0, 0), np.float32)

    return embed


def diffrir_restorer(name: str, model) -> Restorer:
    """A Restorer running a loaded DiffRIR (`restore.load_diffrir`) with `restore.inference.restore_image`: the
    generated picture restored against the original (`reference`), outside the mask the original exactly."""

    def restore(generated: Image.Image, reference: Image.Image, mask: np.ndarray, seed: int) -> Image.Image:
        import torch

        from ..images import pil_to_tensor, tensor_to_pil
        from ..restore.inference import restore_image

        out = restore_image(model, pil_to_tensor(generated), pil_to_tensor(reference), torch.from_numpy(mask)[None],
                            seed=seed)
        return tensor_to_pil(out[0])

    return Restorer(name, restore)


def load_diffrir_restorer(spec: str, folders: Sequence[Path], device: str = "auto") -> Restorer:
    """`[LABEL=]PATH` -> the Restorer of those DiffRIR weights (PATH a file, or a file name in `folders`:
    `weights.find_diffrir_weights`), labelled LABEL or "DiffRIR (<file stem>)", on `device` in DiffRIR's precision
    (`llmga.devices`: fp32, as the official inference)."""
    from ..devices import device_and_dtype
    from ..restore.checkpoint import load_diffrir
    from .runs import split_label
    from .weights import find_diffrir_weights

    label, path_text = split_label(spec)
    path = find_diffrir_weights(path_text, folders)
    target, dtype = device_and_dtype("diffrir", device)
    return diffrir_restorer(label or f"DiffRIR ({path.stem})", load_diffrir(path, device=target, dtype=dtype))
