"""Decoding a reply: the sampling settings (the checkpoint's own unless given), the ids and strings that end a reply,
the vocabulary limit, and the watcher that streams text and stops generation. `Assistant.reply` and `reply_batch`
decode through these, so both sample the same way.

The official CLIs pass `generate()` only `do_sample=temperature > 0`, `temperature` and `max_new_tokens`; every other
setting comes from the checkpoint's generation_config.json (the base LLM's: Vicuna top_p 0.6, Llama-3 0.9, Qwen2 0.8
with top_k 20 and repetition_penalty 1.1) or transformers' defaults (top_p 1.0, top_k 50, repetition_penalty 1.0).
`GenerationSettings` leaves those unset (None) to mean the same; `resolve_settings` fills them in. As in
`generate()`, the repetition penalty applies to greedy decoding too, and only to the generated tokens (the prompt
enters as embeddings).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from .loader import quiet_transformers

# GenerationConfig's defaults in transformers 4.41 (what the official code ran with), also transformers 5's global
# defaults: what generate() uses where generation_config.json sets nothing.
TRANSFORMERS_DEFAULTS = {"top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}
CHECKPOINT_SETTINGS = tuple(TRANSFORMERS_DEFAULTS)


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings. temperature 0 means greedy decoding. The defaults are the official CLI's: temperature 0.2,
    max_new_tokens 512, and top_p / top_k / repetition_penalty None, the checkpoint's generation_config.json values
    (see the module docstring). top_p in (0, 1]; top_k >= 0 (0: no top-k filter); repetition_penalty > 0 (1: none).
    seed makes sampling reproducible (None: unseeded)."""

    max_new_tokens: int = 512
    temperature: float = 0.2
    top_p: float | None = None
    seed: int | None = 0
    top_k: int | None = None
    repetition_penalty: float | None = None

    def describe(self, asked: GenerationSettings | None = None) -> str:
        """These (resolved) settings in one line, e.g. "temperature 0.2, top_p 0.8 (checkpoint), top_k 20
        (checkpoint), repetition_penalty 1.1 (checkpoint), seed 3, max_new_tokens 512". asked: the settings as given
        before `resolve_settings`, to mark the values that came from the checkpoint."""
        def shown(name: str) -> str:
            mark = " (checkpoint)" if asked is not None and getattr(asked, name) is None else ""
            return f"{name} {getattr(self, name):g}{mark}"

        if self.temperature > 0:
            parts = [f"temperature {self.temperature:g}", shown("top_p"), shown("top_k"), shown("repetition_penalty"),
                     "unseeded" if self.seed is None else f"seed {self.seed}"]
        else:  # greedy: no draw, so top_p, top_k and the seed do not matter
            parts = ["greedy (temperature 0)", shown("repetition_penalty")]
        return ", ".join([*parts, f"max_new_tokens {self.max_new_tokens}"])


def resolve_settings(settings: GenerationSettings, generation_config) -> GenerationSettings:
    """`settings` with each unset (None) top_p / top_k / repetition_penalty taken from `generation_config` (the
    checkpoint's, `language_model.generation_config`), or transformers' default where it sets none."""
    values = {}
    for name in CHECKPOINT_SETTINGS:
        if getattr(settings, name) is None:
            value = getattr(generation_config, name, None)
            values[name] = TRANSFORMERS_DEFAULTS[name] if value is None else value
    return replace(settings, **values)


def decoding_options(used: GenerationSettings) -> dict:
    """generate() keyword arguments for resolved settings: sampling (temperature, top_p, top_k) when temperature > 0,
    greedy otherwise; the repetition penalty in both, as generate() applies generation_config's whenever it is set."""
    if used.temperature > 0:
        return dict(do_sample=True, temperature=used.temperature, top_p=used.top_p, top_k=used.top_k,
                    repetition_penalty=used.repetition_penalty)
    return dict(do_sample=False, temperature=None, top_p=None, top_k=None, repetition_penalty=used.repetition_penalty)


@contextlib.contextmanager
def generating(device: torch.device, seed: int | None) -> Iterator[None]:
    """The block of a generate() call: seeded (when `seed` is given) without touching the caller's random state,
    without gradients, and without transformers' notes on what is meant (the repetition penalty covering only the
    generated tokens, since the prompt holds image features, not ids; a logits processor taking a default's place)."""
    devices = [device] if device.type == "cuda" else []
    with (torch.random.fork_rng(devices=devices), torch.inference_mode(), quiet_transformers(),
          warnings.catch_warnings()):
        warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")
        if seed is not None:
            torch.manual_seed(seed)
        yield


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


class TextWatcher(BaseStreamer, StoppingCriteria):
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
