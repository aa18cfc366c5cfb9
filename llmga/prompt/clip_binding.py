"""Bind the long-prompt encoders to transformers CLIP text models and tokenizers.

SD1.5 (`llmga.prompt.long_prompt`):

    clip = TransformersCLIP(pipe.text_encoder, pipe.tokenizer)
    result = encode_long_prompts(prompt, negative, clip.tokenize, clip.encode, bos=clip.bos, eos=clip.eos,
                                 pad=clip.pad)

SDXL (`llmga.prompt.long_prompt_xl`), with a StableDiffusionXLPipeline's parts:

    result = sdxl_long_prompt_embeddings(pipe.text_encoder, pipe.text_encoder_2, pipe.tokenizer, pipe.tokenizer_2,
                                         prompt, negative)          # inference: SDXLLongPromptResult
    pipe(prompt_embeds=result.embeddings, pooled_prompt_embeds=result.pooled,
         negative_prompt_embeds=result.negative_embeddings, negative_pooled_prompt_embeds=result.negative_pooled)
    batch = sdxl_caption_embeddings(text_encoder, text_encoder_2, tokenizer, tokenizer_2, captions)  # training
    # batch.embeddings [B, L, 2048], batch.pooled [B, 1280]

The tokenizers' `model_max_length` is not used (ComfyUI's copy of the CLIP tokenizer says 8192): chunks are always
77 ids, the text models' context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .long_prompt_xl import SDXLLongPromptResult, SDXLPromptBatch, encode_sdxl_long_prompts, encode_sdxl_prompt_batch


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
        return _content_ids(self.tokenizer, text)

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the text model without gradients on ids [n, 77] (moved to its device).

        Output: last_hidden_state [n, 77, C] (after the final layer norm) and pooler_output [n, C'].
        `torch.no_grad`, not `inference_mode`: stage-2 training feeds these into a UNet that needs gradients.
        """
        with torch.no_grad():
            output = self.text_encoder(input_ids=ids.to(self.text_encoder.device))
        return output.last_hidden_state, output.pooler_output


def _content_ids(tokenizer: CLIPTokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


class TransformersSDXLCLIP:
    """SDXL's two text encoders for `llmga.prompt.long_prompt_xl` (its `SDXLTextEncoders` protocol), on transformers.

    text_encoder: CLIPTextModel (CLIP-L); text_encoder_2: CLIPTextModelWithProjection (CLIP-bigG); tokenizer /
    tokenizer_2: their CLIPTokenizers (tokenizer_2's pad token is "!", id 0, in SDXL's folders). bos / eos from
    tokenizer 1; pad_1 / pad_2 each tokenizer's `pad_token_id` as the official `get_text_index` reads it.
    """

    pooled_per_call = False

    def __init__(
        self,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
    ) -> None:
        for name, tok in (("tokenizer", tokenizer), ("tokenizer_2", tokenizer_2)):
            if tok.bos_token_id is None or tok.eos_token_id is None or tok.pad_token_id is None:
                raise ValueError(f"the SDXL {name} has no BOS/EOS/pad token; load it from the model's {name} folder")
        if (tokenizer.bos_token_id, tokenizer.eos_token_id) != (tokenizer_2.bos_token_id, tokenizer_2.eos_token_id):
            raise ValueError("the SDXL tokenizers disagree on BOS/EOS ids; load both from the same SDXL model folder")
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.bos: int = tokenizer.bos_token_id
        self.eos: int = tokenizer.eos_token_id
        self.pad_1: int = tokenizer.pad_token_id
        self.pad_2: int = tokenizer_2.pad_token_id

    def tokenize_1(self, text: str) -> list[int]:
        """Tokenizer 1's content ids of `text`: no BOS/EOS, no truncation."""
        return _content_ids(self.tokenizer, text)

    def tokenize_2(self, text: str) -> list[int]:
        """Tokenizer 2's content ids of `text`: no BOS/EOS, no truncation."""
        return _content_ids(self.tokenizer_2, text)

    def encode(self, ids_1: torch.Tensor, ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both text models without gradients on windows ids_1 [n1, 77] and ids_2 [n2, 77] (moved to their devices).

        Output: hidden_states[-2] of each, [n1, 77, C1] and [n2, 77, C2], and text_encoder_2's text_embeds [n2, P]
        (the projected output at each window's EOS). `torch.no_grad`: training feeds these into a UNet with gradients.
        """
        with torch.no_grad():
            out_1 = self.text_encoder(input_ids=ids_1.to(self.text_encoder.device), output_hidden_states=True)
            out_2 = self.text_encoder_2(input_ids=ids_2.to(self.text_encoder_2.device), output_hidden_states=True)
        return out_1.hidden_states[-2], out_2.hidden_states[-2], out_2.text_embeds


def sdxl_long_prompt_embeddings(
    text_encoder: CLIPTextModel,
    text_encoder_2: CLIPTextModelWithProjection,
    tokenizer: CLIPTokenizer,
    tokenizer_2: CLIPTokenizer,
    prompts: str | Sequence[str],
    negative_prompts: str | Sequence[str] | None = None,
    *,
    max_chunks: int | None = None,
) -> SDXLLongPromptResult:
    """LLMGA's SDXL inference encoding (`encode_sdxl_long_prompts`) on a StableDiffusionXLPipeline's text encoders and
    tokenizers: embeddings / negative_embeddings [B, L, 2048], pooled / negative_pooled [B, 1280] on the encoders'
    device and dtype; no (or an empty) negative gives zeros."""
    encoders = TransformersSDXLCLIP(text_encoder, text_encoder_2, tokenizer, tokenizer_2)
    return encode_sdxl_long_prompts(encoders, prompts, negative_prompts, max_chunks=max_chunks)


def sdxl_caption_embeddings(
    text_encoder: CLIPTextModel,
    text_encoder_2: CLIPTextModelWithProjection,
    tokenizer: CLIPTokenizer,
    tokenizer_2: CLIPTokenizer,
    captions: Sequence[str],
    *,
    max_chunks: int | None = None,
) -> SDXLPromptBatch:
    """LLMGA's SDXL training encoding of one batch of captions (`encode_sdxl_prompt_batch`): embeddings [B, L, 2048],
    pooled [B, 1280]; the batch shares k; an empty caption is encoded, not zeroed."""
    encoders = TransformersSDXLCLIP(text_encoder, text_encoder_2, tokenizer, tokenizer_2)
    return encode_sdxl_prompt_batch(encoders, captions, max_chunks=max_chunks)
