"""The LLMGA network: CLIP vision tower -> `mlp2x_gelu` projector -> image features spliced into a causal LLM.

Matches `llava_arch.py` (`encode_images`, `prepare_inputs_labels_for_multimodal`) for the released setting:
one image, `mm_patch_merge_type="flat"`, `mm_vision_select_layer=-2`, `mm_vision_select_feature="patch"`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel, PreTrainedModel

# llava/constants.py: the sentinel id that `tokenizer_image_token` puts where the image goes.
IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100  # llava/constants.py: labels that carry no loss


def build_projector(kind: str, vision_hidden: int, hidden: int) -> nn.Module:
    """The projector named by `mm_projector_type` (multimodal_projector/builder.py)."""
    if kind == "linear":
        return nn.Linear(vision_hidden, hidden)
    if kind.startswith("mlp") and kind.endswith("x_gelu"):
        depth = int(kind[3:-6])
        layers: list[nn.Module] = [nn.Linear(vision_hidden, hidden)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]  # exact GELU, not tanh
        return nn.Sequential(*layers)
    raise ValueError(f"mm_projector_type {kind!r} is not supported (expected 'linear' or 'mlp<N>x_gelu')")


class LLMGAModel(nn.Module):
    """The assistant network.

    language_model: the base `XForCausalLM`. vision_tower: `CLIPVisionModel`. projector: vision hidden -> LLM hidden.
    select_layer: which hidden state of the vision tower feeds the projector (-2: the penultimate layer).
    select_feature: "patch" drops the CLS token, "cls_patch" keeps it.
    pixel_dtype: the precision pixels are rounded to before the tower (the official CLIs send fp16 pixels to their
    fp32 tower); None sends them as given.
    """

    def __init__(self, language_model: PreTrainedModel, vision_tower: CLIPVisionModel, projector: nn.Module,
                 select_layer: int = -2, select_feature: str = "patch", pixel_dtype: torch.dtype | None = None):
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature {select_feature!r} is not supported (expected 'patch' or "
                             "'cls_patch')")
        self.language_model = language_model
        self.vision_tower = vision_tower
        self.projector = projector
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.pixel_dtype = pixel_dtype

    # No `device` property: ComfyUI's ModelPatcher keeps its own `device` attribute on the modules it manages.
    def input_device(self) -> torch.device:
        """Where inputs go: the device of the LLM's token embeddings."""
        return self.language_model.get_input_embeddings().weight.device

    def compute_dtype(self) -> torch.dtype:
        return self.language_model.get_input_embeddings().weight.dtype

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised pixels -> [B, N, hidden] projected image features (N = 576 for CLIP-L/14-336).

        The vision tower is frozen (it runs without gradients, as the official `CLIPVisionTower.forward`); the
        projector keeps its graph, so training can back-propagate into it. The tower's features enter the projector
        in the LLM's precision (the official tower casts them to its input's dtype)."""
        tower_dtype = self.vision_tower.get_input_embeddings().weight.dtype
        tower_device = self.vision_tower.get_input_embeddings().weight.device
        if self.pixel_dtype is not None:
            pixel_values = pixel_values.to(self.pixel_dtype)
        with torch.no_grad():
            outputs = self.vision_tower(pixel_values.to(tower_device, tower_dtype), output_hidden_states=True)
        features = outputs.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            features = features[:, 1:]
        return self.projector(features.to(self.compute_dtype()))

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`image_features` for inference (no graph)."""
        return self.image_features(pixel_values)

    def splice(self, input_ids: list[int], image_features: torch.Tensor | None, text_embeds: torch.Tensor,
               labels: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[L, hidden] embeddings (and [L] labels) of one sequence: `text_embeds` ([T, hidden], the embeddings of
        input_ids without the -200 sentinels) with the image features put at each sentinel, in order; labels of
        image positions are IGNORE_INDEX. An unused image (no sentinel, or a text-only sample given a dummy image)
        enters as a zero-length slice, as the official code does, so the projector stays in the autograd graph."""
        sentinels = [i for i, token in enumerate(input_ids) if token == IMAGE_TOKEN_INDEX]
        available = 0 if image_features is None else image_features.shape[0]
        if len(sentinels) > available:
            raise ValueError(f"the prompt has {len(sentinels)} <image> places but {available} image(s) were given")
        # Gemma multiplies its input embeddings by sqrt(hidden). transformers < 5 did it to the whole inputs_embeds
        # inside the model, image features included, which is what LLMGA was trained with; transformers >= 5 does
        # it inside the embedding module, so the spliced image features need the same factor here.
        scale = getattr(self.language_model.get_input_embeddings(), "embed_scale", None)
        if image_features is not None and scale is not None:
            image_features = image_features * scale.to(image_features.dtype)
        pieces, label_pieces, start, text_pos = [], [], 0, 0
        for image_index, position in enumerate(sentinels):
            length = position - start
            pieces.append(text_embeds[text_pos:text_pos + length])
            pieces.append(image_features[image_index].to(text_embeds.dtype))
            if labels is not None:
                label_pieces += labels[start:position] + [IGNORE_INDEX] * image_features.shape[1]
            text_pos += length
            start = position + 1
        pieces.append(text_embeds[text_pos:])
        if image_features is not None and not sentinels:
            pieces.append(image_features[0, :0].to(text_embeds.dtype))
        if labels is None:
            return torch.cat(pieces), None
        label_pieces += labels[start:]
        return torch.cat(pieces), torch.tensor(label_pieces, dtype=torch.long, device=text_embeds.device)

    def embed(self, input_ids: list[int], image_features: torch.Tensor | None) -> torch.Tensor:
        """[1, L, hidden] input embeddings: token embeddings with the image features put at each -200 sentinel.

        input_ids: token ids with IMAGE_TOKEN_INDEX where an image goes. image_features: [n_images, N, hidden],
        used in order (the official code takes them in order too).
        """
        text_ids = torch.tensor([t for t in input_ids if t != IMAGE_TOKEN_INDEX], dtype=torch.long,
                                device=self.input_device())
        text_embeds = self.language_model.get_input_embeddings()(text_ids)
        return self.splice(input_ids, image_features, text_embeds)[0].unsqueeze(0)

    def training_inputs(self, batch_ids: list[list[int]], batch_labels: list[list[int]],
                        batch_features: list[torch.Tensor | None],
                        max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A right-padded training batch, as `prepare_inputs_labels_for_multimodal` builds it.

        batch_ids / batch_labels: per sample, token ids (with -200 sentinels) and labels (IGNORE_INDEX outside the
        supervised spans). batch_features: per sample, its [n, N, hidden] image features or None. Each sequence is
        cut to `max_length` after the image is spliced in (the official `tokenizer_model_max_length` cut).
        Returns inputs_embeds [B, L, hidden] (zeros in the padding), attention_mask [B, L] and labels [B, L]
        (IGNORE_INDEX in the padding)."""
        embedding = self.language_model.get_input_embeddings()
        text_ids = [[t for t in ids if t != IMAGE_TOKEN_INDEX] for ids in batch_ids]
        flat = torch.tensor([t for ids in text_ids for t in ids], dtype=torch.long, device=self.input_device())
        text_embeds = embedding(flat).split([len(ids) for ids in text_ids])
        rows = zip(batch_ids, batch_labels, batch_features, text_embeds, strict=True)
        sequences = [self.splice(ids, features, embeds, labels) for ids, labels, features, embeds in rows]
        sequences = [(embeds[:max_length], labels[:max_length]) for embeds, labels in sequences]
        length = max(embeds.shape[0] for embeds, _ in sequences)
        device = sequences[0][0].device
        mask = torch.zeros(len(sequences), length, device=device, dtype=torch.long)
        targets = torch.full((len(sequences), length), IGNORE_INDEX, device=device, dtype=torch.long)
        for row, (embeds, labels) in enumerate(sequences):
            mask[row, :embeds.shape[0]] = 1
            targets[row, :embeds.shape[0]] = labels
        inputs = torch.stack([F.pad(embeds, (0, 0, 0, length - embeds.shape[0])) for embeds, _ in sequences])
        return inputs, mask, targets
