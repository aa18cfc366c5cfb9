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
from transformers import LogitsProcessorList, StoppingCriteriaList

from ..images import check_mask_marks, mask_array
from ..prompt import ParsedReply, parse_reply
from .generation import (
    GenerationSettings,
    OnlyTokenizerIds,
    TextWatcher,
    cut_at_stop,
    decoding_options,
    generating,
    resolve_settings,
    stop_token_ids,
)
from .loader import LoadedAssistant
from .model import IMAGE_TOKEN_INDEX
from .preprocess import MASK_THRESHOLD, black_out_mask, pixel_values
from .tasks import build_user_message, is_chinese_checkpoint, phrasing_language
from .templates import get_template, template_for

__all__ = ["Assistant", "ChatError", "ChatHistory", "ChatReply", "GenerationSettings", "UserTurn",
           "check_turn_picture", "tokenize_with_image"]

IMAGE_PLACEHOLDER = "<image>"
# Tasks whose training turn held only an instruction (no user text).
INSTRUCTION_ONLY_TASKS = ("similar_image", "inpaint", "outpaint", "describe")
# Tasks whose picture comes with a mask of the area to paint (seen black by the model).
MASKED_TASKS = ("inpaint", "outpaint")
# The official CLIs' decoding: temperature 0.2, 512 new tokens, the rest the checkpoint's.
OFFICIAL_SETTINGS = GenerationSettings()


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
class UserTurn:
    """A user turn ready to send (`Assistant.turn`). message: as the template renders it, starting with
    "<image>\\n" when a picture enters the conversation with it. picture: [3, S, S] pixel values of the picture
    (masked pixels black), or None."""

    message: str
    picture: torch.Tensor | None = None
    language: str = "en"  # of the instruction phrasings ("en" or "zh")


@dataclass(frozen=True)
class ChatReply:
    """The reply text (clean), its parsed parts, the history including this turn, the prompt that was sent, and the
    decoding settings used (the checkpoint's filled in: `generation.resolve_settings`)."""

    text: str
    parsed: ParsedReply
    history: ChatHistory
    prompt: str
    new_tokens: int
    settings: GenerationSettings = OFFICIAL_SETTINGS


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
    """A loaded LLMGA assistant that chats.

    template: a template name, or None to pick it from the checkpoint (`templates.template_for`). language: the
    instruction phrasings' language when a turn names none: auto/en/zh (`tasks.phrasing_language`: auto is Chinese
    for a Chinese + English llmga-cn-* checkpoint asked in Chinese)."""

    def __init__(self, loaded: LoadedAssistant, template: str | None = None, language: str = "auto"):
        self.loaded = loaded
        checkpoint = loaded.checkpoint
        config = checkpoint.config
        self.template = get_template(template or template_for(
            config.get("model_type", ""), int(config.get("vocab_size", 0)),
            getattr(loaded.tokenizer, "chat_template", None), tokens=loaded.tokenizer.get_vocab(),
            name=checkpoint.name))
        phrasing_language(language, "", False)  # refuses an unknown language now rather than at the first turn
        self.language = language
        self.chinese_checkpoint = is_chinese_checkpoint(checkpoint.names)
        text_config = loaded.model.language_model.config
        self.context_length = int(getattr(text_config, "max_position_embeddings", 0) or 2048)

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def new_history(self) -> ChatHistory:
        return ChatHistory(template=self.template.name)

    def settings_used(self, settings: GenerationSettings) -> GenerationSettings:
        """`settings` with the checkpoint's own top_p / top_k / repetition_penalty where they are unset (None)."""
        return resolve_settings(settings, self.loaded.model.language_model.generation_config)

    def user_message(self, task: str, text: str, history: ChatHistory, image_is_new: bool, *,
                     instruction: str | None = None, rng: random.Random | None = None,
                     placement: str = "auto", language: str = "en") -> str:
        """The user turn for `task` (see `tasks.build_user_message`), with "<image>\\n" only where a new picture
        enters the conversation. For the tasks whose training turn was only an instruction (similar_image,
        inpaint, outpaint, describe), non-empty `text` is taken as the user's own phrasing of that instruction."""
        if task in INSTRUCTION_ONLY_TASKS and text.strip():
            instruction, text = text, ""
        message = build_user_message(task, text, has_image=image_is_new or history.image is not None, rng=rng,
                                     instruction=instruction, placement=placement, language=language)
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
             phrasing_seed: int | str | None = None, placement: str = "auto",
             language: str | None = None) -> UserTurn:
        """The user turn for `task` with `text` and, optionally, a picture and its mask (see `picture`).

        "<image>" goes into the message only when the picture enters the conversation now (`history` has none yet);
        giving the conversation's own picture again later is fine, another one is refused by `reply`.
        phrasing_seed: draws the training phrasing of the task's instruction (and its side for text_to_image /
        refine_prompt with placement "auto"), any seed `random.Random` takes (the data tools seed each image with
        "<seed>:<image>"); None takes the first phrasing, before the text. instruction: your own
        phrasing instead. language: of the drawn phrasings, auto/en/zh (None: the assistant's). Raises ChatError for
        a mask without a picture, a task that needs a picture the conversation lacks or an unknown language, and
        ImageInputError for a mask of another size or an inpaint/outpaint mask that marks nothing.
        """
        mask = check_turn_picture(task, image, mask)
        picture = None if image is None else self.picture(image.convert("RGB"), mask)
        rng = None if phrasing_seed is None else random.Random(phrasing_seed)
        try:
            chosen = phrasing_language(language or self.language, f"{text} {instruction or ''}",
                                       self.chinese_checkpoint)
            message = self.user_message(task, text, history, picture is not None and history.image is None,
                                        instruction=instruction, rng=rng, placement=placement, language=chosen)
        except ValueError as error:
            raise ChatError(str(error)) from error
        return UserTurn(message, picture, chosen)

    def ask(self, history: ChatHistory, task: str, text: str = "", *, image: Image.Image | None = None,
            mask: np.ndarray | torch.Tensor | Image.Image | None = None, instruction: str | None = None,
            placement: str = "auto", language: str | None = None,
            settings: GenerationSettings = OFFICIAL_SETTINGS, phrasing_seed: int | None = None,
            on_text: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None) -> ChatReply:
        """One chat turn: `turn` then `reply`. phrasing_seed None takes `settings.seed` (one seed drives both the
        phrasing and the sampling, as the node and the command line use it)."""
        seed = settings.seed if phrasing_seed is None else phrasing_seed
        user = self.turn(history, task, text, image=image, mask=mask, instruction=instruction, phrasing_seed=seed,
                         placement=placement, language=language)
        return self.reply(history, user.message, image=user.picture, settings=settings, on_text=on_text,
                          should_stop=should_stop)

    def reply(self, history: ChatHistory, message: str, *, image: torch.Tensor | None = None,
              settings: GenerationSettings = OFFICIAL_SETTINGS, on_text: Callable[[str], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> ChatReply:
        """Generate the assistant's answer to `message` (a finished user turn, see `user_message`).

        image: [3, S, S] pixel values of a picture entering the conversation now (from `picture`), or None.
        settings: unset top_p / top_k / repetition_penalty are the checkpoint's (`settings_used`).
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
        used = self.settings_used(settings)
        ends = self.reply_ends()
        watcher = TextWatcher(self.tokenizer, ends, on_text, should_stop)
        kwargs = self.generate_arguments(used, length)
        vocab = self.tokenizer.get_vocab()
        # Decoding each token is only needed to stream text or to spot a stop string that is not one token.
        follow_text = on_text is not None or any(stop not in vocab for stop in ends)
        with generating(embeds.device, used.seed):
            output = model.language_model.generate(
                inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long,
                                                                device=embeds.device),
                streamer=watcher if follow_text else None, stopping_criteria=StoppingCriteriaList([watcher]),
                **kwargs)
        tokens = output[0].tolist()
        text, _ = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=False), ends)
        text = text.strip()
        new_history = replace(history, turns=(*history.turns, (message, text)), image=picture)
        if watcher.cancelled:
            new_history = history  # a cancelled turn is not part of the conversation
        return ChatReply(text=text, parsed=parse_reply(text), history=new_history, prompt=prompt,
                         new_tokens=len(tokens), settings=used)

    def eos_ids(self) -> list[int]:
        """The ids that end a reply (`generation.stop_token_ids` of the template and the checkpoint)."""
        generation_eos = self.loaded.model.language_model.generation_config.eos_token_id
        return stop_token_ids(self.tokenizer, self.template.stop_strings, generation_eos)

    def reply_ends(self) -> tuple[str, ...]:
        """The text a decoded reply is cut at (and streamed up to): the template's stop strings and the text of each
        EOS id (generation also ends on those, e.g. Qwen2's <|endoftext|> beside the template's <|im_end|>)."""
        eos_texts = (self.tokenizer.decode([i]) for i in self.eos_ids())
        return tuple(dict.fromkeys([*self.template.stop_strings, *(text for text in eos_texts if text)]))

    def generate_arguments(self, used: GenerationSettings, prompt_length: int) -> dict:
        """generate() keyword arguments for resolved settings and a prompt of `prompt_length` positions: decoding
        (`generation.decoding_options`), the token budget left in the context, the EOS ids, and the vocabulary limit
        (for quantised models, whose padded embedding rows cannot be cut)."""
        eos_ids = self.eos_ids()
        vocabulary = len(self.tokenizer)
        language_model = self.loaded.model.language_model
        processors = [OnlyTokenizerIds(vocabulary)] if language_model.config.vocab_size > vocabulary else []
        return dict(max_new_tokens=min(used.max_new_tokens, self.context_length - prompt_length),
                    eos_token_id=eos_ids, pad_token_id=eos_ids[0] if eos_ids else None,
                    logits_processor=LogitsProcessorList(processors), **decoding_options(used))
