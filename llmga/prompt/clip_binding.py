"""Bind the long-prompt encoder (`llmga.prompt.long_prompt`) to a transformers CLIP text model and tokenizer.

    clip = TransformersCLIP(pipe.text_encoder, pipe.tokenizer)
    result = encode_long_prompts(prompt, negative, clip.tokenize, clip.encode, bos=clip.bos, eos=clip.eos,
                                 pad=clip.pad)

The tokenizer's `model_max_length` is not used (ComfyUI's copy of the SD1.5 tokenizer says 8192): chunks
are always 77 ids, the text model's context.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextModel, CLIPTokenizer


class TransformersCLIP:
    """`tokenize` and `encode` callables for `encode_long_prompts`, backed by transformers.

    bos / eos / pad: the tokenizer's ids; pad is its `pad_token_id` as the official code picks it (EOS, 49407,
    for SD1.5's tokenizer), falling back to EOS when the tokenizer has no pad token.
    """

    def __init__(self, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer) -> None:
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the CLIP tokenizer has no BOS/EOS token; load it from the model's tokenizer folder")
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.bos: int = tokenizer.bos_token_id
        self.eos: int = tokenizer.eos_token_id
        self.pad: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def tokenize(self, text: str) -> list[int]:
        """Content ids of `text`: no BOS/EOS, no truncation (the long-prompt encoder truncates and counts)."""
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the text model without gradients on ids [n, 77] (moved to its device).

        Output: last_hidden_state [n, 77, C] (after the final layer norm) and pooler_output [n, C'].
        `torch.no_grad`, not `inference_mode`: stage-2 training feeds these into a UNet that needs gradients.
        """
        with torch.no_grad():
            output = self.text_encoder(input_ids=ids.to(self.text_encoder.device))
        return output.last_hidden_state, output.pooler_output
