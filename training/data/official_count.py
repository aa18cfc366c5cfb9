"""The official stage-1 "tokenization mismatch" rule: the token count the official `preprocess_*`
(llava/datasets/utils.py, also run by pretrain.py) makes of a conversation, and whether it drops the sample.

The official code never reads token boundaries from the tokenizer: it splits the rendered text into rounds,
tokenises each round on its own, adds the lengths up with per-family corrections that assume how its tokenizer
splits the text, and, when the sum disagrees with the length of the whole sequence (tokens equal to the pad id not
counted) while it is under `model_max_length`, sets every label of the sample to IGNORE_INDEX ("WARNING:
tokenization mismatch ... (ignored)"). Which samples that hits depends on the tokenizer: with a vocabulary where
"USER" after "</s>" does not take one token less than " USER" at the start of a text (the pack's tiny test vocabulary,
for one), every Vicuna (v1) sample of more than one round is dropped.

Phi-3: the official count hardcodes two tokens before every round (`cur_len = 2`, `len(...) - 2`), the BOS and the
"▁" that its slow tokenizer (transformers 4.41) put after it; here that number is read from the tokenizer (1 for the
tokenizers transformers gives today), so the rule drops what the official run dropped rather than every sample.
"""

from __future__ import annotations

from collections.abc import Callable

from llmga.mllm.templates import ChatTemplate

# style -> (text that ends a round, text that splits a round into instruction and reply, tokens before round one)
_ROUNDS = {
    "two": ("</s>", " ASSISTANT: ", 1),
    "llama_2": ("</s>", "[/INST] ", 1),
    "llama_3": ("<|eot_id|>", "<|eot_id|><|start_header_id|>system<|end_header_id|>\n\n", 1),
    "qwen_2": ("<|im_end|>", "<|im_end|><|im_start|>assistant\n", 0),
    "gemma": ("<eos>", "<start_of_turn>model\n", 1),
}
PHI_3_ROUND_END = "<|end|>\n"


def _rounds(style: str, text: str) -> list[str]:
    """The official rounds: split at the round end; Llama-3 and Qwen2 regroup system + user + reply, then
    user + reply (their round end closes every message, not only replies)."""
    end = _ROUNDS[style][0]
    pieces = text.split(end)
    if style not in ("llama_3", "qwen_2"):
        return pieces
    return [end.join(pieces[:3])] + [end.join(pieces[j:j + 2]) for j in range(3, len(pieces), 2)]


def official_token_count(template: ChatTemplate, text: str, ids: Callable[[str], list[int]], tokenizer) -> int:
    """`cur_len` at the end of the official count of `text` (a conversation rendered with `template`).

    ids: how a piece of text is tokenised (`tokenizer_image_token` for image samples, the plain tokenizer
    otherwise), the same callable the sequence itself was tokenised with."""
    if template.style == "phi_3":
        lead = len(tokenizer("<|user|>").input_ids) - 1  # tokens before a round's first piece (official: 2)
        count = lead
        for piece in text.split(PHI_3_ROUND_END):
            if piece == "":
                break
            count += len(ids(piece + PHI_3_ROUND_END)) - lead
        return count
    _, split, count = _ROUNDS[template.style]
    for index, piece in enumerate(_rounds(template.style, text)):
        if piece == "" or len(piece.split(split)) != 2:
            break
        count += len(ids(piece))
        if template.style == "qwen_2":  # the <|im_end|> the split took off
            count += 1
        elif template.style == "two" and index != 0 and not getattr(tokenizer, "legacy", True):
            count -= 1  # preprocess_v1's correction for non-legacy tokenizers (tokenizers >= 0.14)
    return count


def official_drops(template: ChatTemplate, text: str, input_ids: list[int], ids: Callable[[str], list[int]],
                   tokenizer, max_length: int | None) -> bool:
    """Whether the official preprocess sets every label of this sample to IGNORE_INDEX: its count is under
    max_length (the official `tokenizer.model_max_length`; None: no limit) and differs from the number of
    `input_ids` (the sequence as the official counts it) that are not the pad id."""
    count = official_token_count(template, text, ids, tokenizer)
    if max_length is not None and count >= max_length:
        return False
    pad = getattr(tokenizer, "pad_token_id", None)
    return count != sum(1 for token in input_ids if token != pad)
