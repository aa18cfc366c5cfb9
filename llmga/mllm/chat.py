"""Chatting with a loaded LLMGA assistant: prompt building, image splicing, generation, multi-turn history.

Faithful where the weights care (templates, `<image>` placement and tokenisation, image preprocessing); better
than the official CLI where they do not: generation ends at the template's stop string or EOS instead of cutting
a fixed number of characters, the history keeps clean turns, sampling is seeded, text streams as it is
generated, and a stop callback ends generation early.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..images import check_mask_marks, mask_array
from ..prompt import ParsedReply, parse_reply
from .loader import LoadedAssistant
from .model import IMAGE_TOKEN_INDEX
from .preprocess import MASK_THRESHOLD, black_out_mask, pixel_values
from .tasks import build_user_message
from .templates import get_template, template_for

IMAGE_PLACEHOLDER = "<image>"
# Tasks whose training turn held only an instruction (no user text).
INSTRUCTION_ONLY_TASKS = ("similar_image", "inpaint", "outpaint", "describe")
# Tasks whose picture comes with a mask of the area to paint (seen black by the model).
MASKED_TASKS = ("inpaint", "outpaint")


class ChatError(ValueError):
    """A chat request that cannot be served; the message says what to change."""


@dataclass(frozen=True)
class ChatHistory:
    """A conversation so far. Immutable: each reply returns a new history, so earlier ones stay valid.

    template: the chat template's name. turns: (user message as sent, clean assistant reply) pairs; the user
    message of the turn that introduced the picture starts with "<image>\\n". image: [3, S, S] pixel values of the
    conversation's picture (what the vision tower sees), or None.
    """

    template: str
    turns: tuple[tuple[str, str], ...] = ()
    image: torch.Tensor | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings. temperature 0 means greedy decoding. The defaults are the official CLI's
    (temperature 0.2, max_new_tokens 512); seed makes sampling reproducible."""

    max_new_tokens: int = 512
    temperature: float = 0.2
    top_p: float = 1.0
    seed: int | None = 0


@dataclass(frozen=True)
class UserTurn:
    """A user turn ready to send (`Assistant.turn`). message: as the template renders it, starting with
    "<image>\\n" when a picture enters the conversation with it. picture: [3, S, S] pixel values of the picture
    (masked pixels black), or None."""

    message: str
    picture: torch.Tensor | None = None


@dataclass(frozen=True)
class ChatReply:
    """The reply text (clean), its parsed parts, the history including this turn, and the prompt that was sent."""

    text: str
    parsed: ParsedReply
    history: ChatHistory
    prompt: str
    new_tokens: int


def tokenize_with_image(prompt: str, tokenizer) -> list[int]:
    """Token ids of `prompt` with IMAGE_TOKEN_INDEX at each "<image>", as the official `tokenizer_image_token`:
    each text piece between images is tokenised on its own; a leading BOS is kept once, and the first token of
    every piece is dropped when the tokenizer adds a BOS (so later pieces carry no BOS)."""
    pieces = [tokenizer(piece).input_ids for piece in prompt.split(IMAGE_PLACEHOLDER)]
    ids: list[int] = []
    offset = 0
    if pieces and pieces[0] and pieces[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(pieces[0][0])
    for index, piece in enumerate(pieces):
        if index > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(piece[offset:])
    return ids


def stop_token_ids(tokenizer, stop_strings: tuple[str, ...], generation_eos: int | list[int] | None) -> list[int]:
    """The ids that end a reply: the tokenizer's EOS, the checkpoint's generation_config EOS ids (what the official
    `generate` stops on, e.g. Llama-3's <|end_of_text|> and <|eot_id|>), and each stop string held as one token."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if generation_eos is not None:
        ids.update([generation_eos] if isinstance(generation_eos, int) else generation_eos)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[s] for s in stop_strings if s in vocab)
    return sorted(ids)


class OnlyTokenizerIds(LogitsProcessor):
    """Never pick ids past the tokenizer's vocabulary. Released checkpoints pad their embedding rows (Qwen2, Phi-3);
    the official loader shrinks the embeddings to len(tokenizer), so those rows can never be generated there. The
    loader does the same; this covers quantised models, whose embeddings cannot be resized."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.size:] = -float("inf")
        return scores


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    positions = [text.find(stop) for stop in stops if stop and stop in text]
    return (text[:min(positions)], True) if positions else (text, False)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could be the start of a stop string (not yet safe to show)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-size:]):
                longest = size
                break
    return longest


class _TextWatcher(BaseStreamer, StoppingCriteria):
    """Follows the generated tokens: streams safe text to `on_text`, stops at a stop string or when `should_stop`.

    Text is detokenised incrementally over a two-step window of tokens (as vLLM does), so each step costs the same
    however long the reply grows; the window's first token gives the next one its context (SentencePiece spaces).
    """

    def __init__(self, tokenizer, stops: tuple[str, ...], on_text: Callable[[str], None] | None,
                 should_stop: Callable[[], bool] | None):
        self.tokenizer, self.stops, self.on_text, self.should_stop = tokenizer, stops, on_text, should_stop
        self.tokens: list[int] = []
        self.text = ""  # the decoded reply so far, complete characters only
        self.prefix = self.read = 0  # the window: tokens[prefix:read] are already in self.text
        self.window_text = ""
        self.single: dict[int, str] = {}
        self.shown = 0
        self.hit_stop = False
        self.cancelled = False
        self.first_put = True
        self.longest_stop = max((len(stop) for stop in stops), default=0)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    def put(self, value: torch.Tensor) -> None:
        if self.first_put:  # generate() first hands over the prompt; with inputs_embeds that is empty
            self.first_put = False
            if value.dim() > 1 or value.numel() == 0:
                return
        self.tokens.extend(value.reshape(-1).tolist())
        before = self.window_text  # decode(tokens[prefix:read]), kept from the last step
        after = self.decode(self.tokens[self.prefix:])
        # A trailing U+FFFD is an incomplete UTF-8 character (byte-fallback tokens): wait for its other bytes.
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return
        delta = after[len(before):]
        self.text += delta
        self.prefix, self.read = self.read, len(self.tokens)
        window = self.tokens[self.prefix:self.read]
        if len(window) == 1:  # the usual case: one token, decoded once per distinct id
            self.window_text = self.single.get(window[0]) or self.single.setdefault(window[0], self.decode(window))
        else:
            self.window_text = self.decode(window)
        window = self.text[max(0, len(self.text) - len(delta) - self.longest_stop):]
        self.hit_stop = any(stop in window for stop in self.stops)
        self._show()

    def _show(self) -> None:
        text, stopped = cut_at_stop(self.text, self.stops)
        safe = len(text) if stopped else len(text) - _held_back(text, self.stops)
        if self.on_text is not None and safe > self.shown:
            self.on_text(text[self.shown:safe])
            self.shown = safe

    def end(self) -> None:
        """Show what is left once generation ends (held-back text that turned out not to be a stop string)."""
        full = self.decode(self.tokens)
        if full.startswith(self.text):
            self.text = full
        self.hit_stop = True
        self._show()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.should_stop is not None and self.should_stop():
            self.cancelled = True
        done = self.hit_stop or self.cancelled
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def check_turn_picture(task: str, image: Image.Image | None,
                       mask: np.ndarray | torch.Tensor | Image.Image | None) -> np.ndarray | None:
    """The mask of a turn as [H, W] float in [0, 1] (None without one), after the checks a turn's picture needs,
    which need no model (so adapters can call this before loading one): a mask needs its image and the image's size,
    and an inpaint/outpaint mask must mark something (with nothing black the model would just describe the picture).
    Raises ChatError or ImageInputError."""
    if mask is None:
        return None
    if image is None:
        raise ChatError("a mask was given without an image: give the image the mask belongs to")
    array = mask_array(mask, image.size)
    if task in MASKED_TASKS:
        check_mask_marks(array, MASK_THRESHOLD, action=task)
    return array


class Assistant:
    """A loaded LLMGA assistant that chats. template: a template name, or None to pick it from the checkpoint."""

    def __init__(self, loaded: LoadedAssistant, template: str | None = None):
        self.loaded = loaded
        config = loaded.checkpoint.config
        self.template = get_template(template or template_for(
            config.get("model_type", ""), int(config.get("vocab_size", 0)),
            getattr(loaded.tokenizer, "chat_template", None)))
        text_config = loaded.model.language_model.config
        self.context_length = int(getattr(text_config, "max_position_embeddings", 0) or 2048)

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def new_history(self) -> ChatHistory:
        return ChatHistory(template=self.template.name)

    def user_message(self, task: str, text: str, history: ChatHistory, image_is_new: bool, *,
                     instruction: str | None = None, rng: random.Random | None = None,
                     placement: str = "auto") -> str:
        """The user turn for `task` (see `tasks.build_user_message`), with "<image>\\n" only where a new picture
        enters the conversation. For the tasks whose training turn was only an instruction (similar_image,
        inpaint, outpaint, describe), non-empty `text` is taken as the user's own phrasing of that instruction."""
        if task in INSTRUCTION_ONLY_TASKS and text.strip():
            instruction, text = text, ""
        message = build_user_message(task, text, has_image=image_is_new or history.image is not None, rng=rng,
                                     instruction=instruction, placement=placement)
        if not image_is_new:
            message = message.removeprefix(IMAGE_PLACEHOLDER + "\n")  # the picture is already in an earlier turn
        return message

    def picture(self, image: Image.Image, mask: np.ndarray | torch.Tensor | Image.Image | None = None) -> torch.Tensor:
        """[3, S, S] pixel values of a picture; with a mask ([H, W] in [0, 1] or grayscale, white = to be painted,
        the picture's size), the masked pixels are black, as the model saw inpainting and outpainting inputs."""
        if mask is not None:
            image = black_out_mask(image, mask_array(mask, image.size))
        return pixel_values(image, self.loaded.image_processing)

    def turn(self, history: ChatHistory, task: str, text: str = "", *, image: Image.Image | None = None,
             mask: np.ndarray | torch.Tensor | Image.Image | None = None, instruction: str | None = None,
             phrasing_seed: int | str | None = None, placement: str = "auto") -> UserTurn:
        """The user turn for `task` with `text` and, optionally, a picture and its mask (see `picture`).

        "<image>" goes into the message only when the picture enters the conversation now (`history` has none yet);
        giving the conversation's own picture again later is fine, another one is refused by `reply`.
        phrasing_seed: draws the training phrasing of the task's instruction (and its side for text_to_image /
        refine_prompt with placement "auto"), any seed `random.Random` takes (the data tools seed each image with
        "<seed>:<image>"); None takes the first phrasing, before the text. instruction: your own
        phrasing instead. Raises ChatError for a mask without a picture or a task that needs a picture the
        conversation lacks, and ImageInputError for a mask of another size or an inpaint/outpaint mask that marks
        nothing.
        """
        mask = check_turn_picture(task, image, mask)
        picture = None if image is None else self.picture(image.convert("RGB"), mask)
        rng = None if phrasing_seed is None else random.Random(phrasing_seed)
        try:
            message = self.user_message(task, text, history, picture is not None and history.image is None,
                                        instruction=instruction, rng=rng, placement=placement)
        except ValueError as error:
            raise ChatError(str(error)) from error
        return UserTurn(message, picture)

    def ask(self, history: ChatHistory, task: str, text: str = "", *, image: Image.Image | None = None,
            mask: np.ndarray | torch.Tensor | Image.Image | None = None, instruction: str | None = None,
            placement: str = "auto", settings: GenerationSettings = GenerationSettings(),
            phrasing_seed: int | None = None, on_text: Callable[[str], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> ChatReply:
        """One chat turn: `turn` then `reply`. phrasing_seed None takes `settings.seed` (one seed drives both the
        phrasing and the sampling, as the node and the command line use it)."""
        seed = settings.seed if phrasing_seed is None else phrasing_seed
        user = self.turn(history, task, text, image=image, mask=mask, instruction=instruction, phrasing_seed=seed,
                         placement=placement)
        return self.reply(history, user.message, image=user.picture, settings=settings, on_text=on_text,
                          should_stop=should_stop)

    def reply(self, history: ChatHistory, message: str, *, image: torch.Tensor | None = None,
              settings: GenerationSettings = GenerationSettings(), on_text: Callable[[str], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> ChatReply:
        """Generate the assistant's answer to `message` (a finished user turn, see `user_message`).

        image: [3, S, S] pixel values of a picture entering the conversation now (from `picture`), or None.
        on_text: receives the reply as it grows, in pieces. should_stop: polled every token; True ends generation.
        """
        if history.template != self.template.name:
            raise ChatError(f"this history was written with the {history.template!r} template but the assistant "
                            f"uses {self.template.name!r}: start a new chat or load the matching assistant")
        if image is not None and history.image is not None and not torch.equal(image, history.image):
            raise ChatError("this conversation already has a picture; LLMGA answers about one picture per chat: "
                            "start a new chat (no history) to talk about another one")
        picture = history.image if history.image is not None else image
        prompt = self.template.render([*history.turns, (message, None)])
        ids = tokenize_with_image(prompt, self.tokenizer)
        if IMAGE_TOKEN_INDEX in ids and picture is None:
            raise ChatError("the message mentions <image> but no image was given: connect an image or remove the "
                            "<image> placeholder")
        model = self.loaded.model
        features = model.encode_images(picture.unsqueeze(0)) if IMAGE_TOKEN_INDEX in ids else None
        embeds = model.embed(ids, features)
        length = embeds.shape[1]
        if length >= self.context_length:
            raise ChatError(f"the conversation is {length} tokens (image included) but the model reads at most "
                            f"{self.context_length}: shorten the message or start a new chat")
        text, new_tokens, stopped_early = self._generate(embeds, settings, on_text, should_stop)
        turn = (message, text)
        new_history = replace(history, turns=(*history.turns, turn), image=picture)
        if stopped_early:
            new_history = history  # a cancelled turn is not part of the conversation
        return ChatReply(text=text, parsed=parse_reply(text), history=new_history, prompt=prompt,
                         new_tokens=new_tokens)

    def _generate(self, embeds: torch.Tensor, settings: GenerationSettings, on_text, should_stop):
        stops = self.template.stop_strings
        watcher = _TextWatcher(self.tokenizer, stops, on_text, should_stop)
        language_model = self.loaded.model.language_model
        eos_ids = stop_token_ids(self.tokenizer, stops, language_model.generation_config.eos_token_id)
        budget = min(settings.max_new_tokens, self.context_length - embeds.shape[1])
        sample = settings.temperature > 0
        kwargs = dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p) if sample else dict(
            do_sample=False, temperature=None, top_p=None, top_k=None)
        vocabulary = len(self.tokenizer)
        processors = [OnlyTokenizerIds(vocabulary)] if language_model.config.vocab_size > vocabulary else []
        vocab = self.tokenizer.get_vocab()
        # Decoding each token is only needed to stream text or to spot a stop string that is not one token.
        follow_text = on_text is not None or any(stop not in vocab for stop in stops)
        devices = [embeds.device] if embeds.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            output = language_model.generate(
                inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long,
                                                                device=embeds.device),
                max_new_tokens=budget, eos_token_id=eos_ids, pad_token_id=eos_ids[0] if eos_ids else None,
                streamer=watcher if follow_text else None, stopping_criteria=StoppingCriteriaList([watcher]),
                logits_processor=LogitsProcessorList(processors), **kwargs)
        tokens = output[0].tolist()
        text = self.tokenizer.decode(tokens, skip_special_tokens=False)
        text, _ = cut_at_stop(text, stops + tuple(self.tokenizer.decode([i]) for i in eos_ids))
        return text.strip(), len(tokens), watcher.cancelled
