"""Batched single-turn replies: one `generate` call answers B independent first turns (dataset tools, benchmarks).

Each request is rendered, tokenised and embedded exactly as `Assistant.reply` does for a new chat (same template,
`<image>` splicing, stop ids, vocabulary limit); the embeddings are LEFT-padded to a common length with an
attention mask, so every row's positions and attention match those of the same request sent alone. With greedy
decoding a batched reply is therefore the reply `Assistant.reply` gives for that turn, up to floating-point
rounding (identical in fp32 on the CPU, where the tests check it; in bf16 on a GPU another batch shape can change
low bits and, rarely, a near-tied token). Sampling draws every row from one seeded generator, so a sampled reply
depends on the whole batch, not only on its own request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import RepetitionPenaltyLogitsProcessor, StoppingCriteria, StoppingCriteriaList

from ..prompt import ParsedReply, parse_reply
from .chat import Assistant, ChatError, UserTurn, tokenize_with_image
from .generation import GenerationSettings, cut_at_stop, generating
from .model import IMAGE_TOKEN_INDEX


@dataclass(frozen=True)
class BatchReply:
    """The clean reply text, its parsed parts, the prompt that was sent, and how many tokens were generated."""

    text: str
    parsed: ParsedReply
    prompt: str
    new_tokens: int


class _RowStopStrings(StoppingCriteria):
    """Ends each row on its own once its generated text holds a stop string that is not a single token (single-token
    stops are EOS ids and end rows inside `generate`). Remembers how many tokens each row had when it ended."""

    def __init__(self, tokenizer, stops: tuple[str, ...], rows: int):
        self.tokenizer, self.stops = tokenizer, stops
        # Enough trailing tokens to hold any stop string: every token decodes to at least one character or byte.
        self.window = 2 * max((len(stop.encode()) for stop in stops), default=1)
        self.ended_at: list[int | None] = [None] * rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        done = []
        for row, tokens in enumerate(input_ids.tolist()):
            if self.ended_at[row] is None:
                tail = self.tokenizer.decode(tokens[-self.window:], skip_special_tokens=False)
                if any(stop in tail for stop in self.stops):
                    self.ended_at[row] = len(tokens)
            done.append(self.ended_at[row] is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _prompt_ids(assistant: Assistant, index: int, request: UserTurn) -> tuple[str, list[int]]:
    """The rendered prompt of one request and its token ids (IMAGE_TOKEN_INDEX where the picture goes)."""
    prompt = assistant.template.render([(request.message, None)])
    ids = tokenize_with_image(prompt, assistant.tokenizer)
    places = ids.count(IMAGE_TOKEN_INDEX)
    if places and request.picture is None:
        raise ChatError(f"request {index}: the message mentions <image> but no picture was given: give its picture "
                        "or remove the <image> placeholder")
    if places > 1:
        raise ChatError(f"request {index}: the message has {places} <image> placeholders; LLMGA answers about one "
                        "picture per turn")
    return prompt, ids


def _left_padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, L_i, H] embeddings -> ([B, L, H] left-padded with zeros, [B, L] attention mask: 0 on padding)."""
    length = max(row.shape[1] for row in rows)
    embeds = rows[0].new_zeros((len(rows), length, rows[0].shape[2]))
    mask = torch.zeros((len(rows), length), dtype=torch.long, device=rows[0].device)
    for index, row in enumerate(rows):
        embeds[index, length - row.shape[1]:] = row[0]
        mask[index, length - row.shape[1]:] = 1
    return embeds, mask


def reply_batch(assistant: Assistant, requests: Sequence[UserTurn],
                settings: GenerationSettings | None = None) -> list[BatchReply]:
    """Answer each request as the first turn of a new chat, all in one `generate` call; replies in request order.

    requests: first turns, from `assistant.turn(assistant.new_history(), task, text, image=..., mask=...)`.

    settings: decoding settings, resolved as `Assistant.reply` resolves them (unset top_p / top_k /
    repetition_penalty: the checkpoint's); None = greedy (temperature 0) with the default max_new_tokens, the setting
    whose replies do not depend on the rest of the batch.

    Raises ChatError when a request names <image> without a picture (or more than one) or does not fit the model's
    context. An empty `requests` gives [].
    """
    if not requests:
        return []
    settings = settings if settings is not None else GenerationSettings(temperature=0.0)
    model = assistant.loaded.model
    prompts, id_lists = zip(*(_prompt_ids(assistant, i, request) for i, request in enumerate(requests)), strict=True)
    with_picture = [i for i, ids in enumerate(id_lists) if IMAGE_TOKEN_INDEX in ids]
    features = model.encode_images(torch.stack([requests[i].picture for i in with_picture])) if with_picture else None
    with torch.no_grad():
        rows = [model.embed(ids, features[[with_picture.index(i)]] if i in with_picture else None)
                for i, ids in enumerate(id_lists)]
    for index, row in enumerate(rows):
        if row.shape[1] >= assistant.context_length:
            raise ChatError(f"request {index} is {row.shape[1]} tokens (image included) but the model reads at most "
                            f"{assistant.context_length}: shorten its message")
    embeds, attention_mask = _left_padded(rows)
    decoded = _generate(assistant, embeds, attention_mask, settings)
    return [BatchReply(text=text, parsed=parse_reply(text), prompt=prompt, new_tokens=count)
            for prompt, (text, count) in zip(prompts, decoded, strict=True)]


def _generate(assistant: Assistant, embeds: torch.Tensor, attention_mask: torch.Tensor,
              settings: GenerationSettings) -> list[tuple[str, int]]:
    """Decode a left-padded batch as `Assistant.reply` decodes one request; (clean text, new tokens) per row."""
    tokenizer = assistant.tokenizer
    used = assistant.settings_used(settings)
    kwargs = assistant.generate_arguments(used, embeds.shape[1])
    if used.repetition_penalty != 1.0:
        # generate() takes the penalty's prompt length from the attention mask, which with inputs_embeds (no prompt
        # ids) skips a padded row's first generated tokens; this one (it takes the default's place) penalises every
        # generated token of every row, as for a request alone.
        kwargs["logits_processor"].append(RepetitionPenaltyLogitsProcessor(float(used.repetition_penalty)))
    vocab = tokenizer.get_vocab()
    text_stops = tuple(stop for stop in assistant.template.stop_strings if stop not in vocab)  # others are EOS ids
    watcher = _RowStopStrings(tokenizer, text_stops, embeds.shape[0])
    criteria = StoppingCriteriaList([watcher] if text_stops else [])
    with generating(embeds.device, used.seed):
        output = assistant.loaded.model.language_model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, stopping_criteria=criteria, **kwargs)
    eos_ids, cuts = kwargs["eos_token_id"], assistant.reply_ends()
    results = []
    for row, tokens in enumerate(output.tolist()):
        ends = [position + 1 for position, token in enumerate(tokens) if token in eos_ids][:1]
        count = min(ends + [watcher.ended_at[row] or len(tokens)])
        text, _ = cut_at_stop(tokenizer.decode(tokens[:count], skip_special_tokens=False), cuts)
        results.append((text.strip(), count))
    return results
