"""The perceptual loss of DiffRIR's GAN stage: L1 between VGG19 features of the output and of the target.

train_DiffRIRS2_GAN_x1*.yml `perceptual_opt` (BasicSR `PerceptualLoss` over `VGGFeatureExtractor`): vgg_type vgg19
with torchvision's ImageNet weights, use_input_norm true (inputs in [0,1] normalised with the ImageNet mean and std),
range_norm false, criterion l1 (mean over elements), style_weight 0 (no style term), perceptual_weight 1.0 and the
layer weights conv1_2 0.1, conv2_2 0.1, conv3_4 1, conv4_4 1, conv5_4 1. The features are the conv outputs *before*
their ReLU (BasicSR clones each conv output before torchvision's in-place ReLU overwrites it); the target's features
carry no gradient.

The weights are torchvision's `vgg19-dcbb9e9d.pth` (the file BasicSR loads from experiments/pretrained_models/), read
from a local file only, with the evaluation networks' policy (`llmga/eval/networks.py`): a pickle through
torch.load(weights_only=True) or a safetensors twin, every `features.*` key present with its shape and nothing
unknown (the classifier is ignored), and one-line errors that name the file and where it is published. The channel
widths are read from the file, so narrower VGG19-shaped test networks load through the same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..eval.networks import check_keys, read_state_dict, weights_file

VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision VGG19_Weights.IMAGENET1K_V1
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
VGG19_WHAT = "VGG19 (perceptual loss)"
# torchvision cfgs["E"]: convolutions per block; each block but the last ends in a 2×2 max pool.
VGG19_BLOCKS = (2, 2, 4, 4, 4)
VGG19_WIDTHS = (64, 128, 256, 512, 512)
VGG19_MODULES = sum(2 * convs + 1 for convs in VGG19_BLOCKS)  # conv + ReLU each, one pool per block: 37
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # BasicSR VGGFeatureExtractor use_input_norm
IMAGENET_STD = (0.229, 0.224, 0.225)
# train_DiffRIRS2_GAN_x1.yml perceptual_opt layer_weights ("before relu"); perceptual_weight 1.0.
LAYER_WEIGHTS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}


def vgg19_layer_indices() -> dict[str, int]:
    """BasicSR's conv names -> indices in torchvision's `vgg19().features` (conv1_1 0, conv1_2 2, ..., conv5_4 34)."""
    indices, index = {}, 0
    for block, convs in enumerate(VGG19_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            indices[f"conv{block}_{conv}"] = index
            index += 2  # the conv and its ReLU
        index += 1  # the max pool
    return indices


class VGG19Features(nn.Module):
    """torchvision's `vgg19().features` up to the deepest layer asked for (state-dict keys `features.<i>.*` as in
    `vgg19-dcbb9e9d.pth`): images [B,3,H,W] in [0,1] -> {layer name: pre-ReLU conv output [B,C,H/2^k,W/2^k]}.
    Frozen, eval mode; random weights until loaded (`load_vgg19`)."""

    def __init__(self, layers: Sequence[str] = tuple(LAYER_WEIGHTS), widths: Sequence[int] = VGG19_WIDTHS) -> None:
        super().__init__()
        named = vgg19_layer_indices()
        unknown = [name for name in layers if name not in named]
        if unknown or not layers:
            raise ValueError(f"unknown VGG19 layer(s) {unknown or 'none given'}: choose among {', '.join(named)}")
        if len(widths) != len(VGG19_BLOCKS) or any(width < 1 for width in widths):
            raise ValueError(f"VGG19 has {len(VGG19_BLOCKS)} blocks: give one positive width each, got {widths}")
        self.layers = {named[name]: name for name in layers}
        modules: list[nn.Module] = []
        channels = 3
        for convs, width in zip(VGG19_BLOCKS, widths, strict=True):
            for _ in range(convs):
                modules += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
                channels = width
            modules.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*modules[:max(self.layers) + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = (images - self.mean) / self.std
        found = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self.layers:
                found[self.layers[index]] = x  # ReLU is not in place here: x stays the pre-ReLU output
        return found

    def train(self, mode: bool = True) -> VGG19Features:
        """Always eval mode: the loss network is frozen (it has no dropout or batch norm, so this is bookkeeping)."""
        return super().train(False)


def _widths_in(state: Mapping[str, Tensor]) -> tuple[int, ...] | None:
    """The output width of each block's first conv in a VGG19 state dict, or None when one is missing."""
    indices = vgg19_layer_indices()
    firsts = [state.get(f"features.{indices[f'conv{block}_1']}.weight") for block in range(1, len(VGG19_BLOCKS) + 1)]
    if any(weight is None or weight.dim() != 4 for weight in firsts):
        return None
    return tuple(int(weight.shape[0]) for weight in firsts)


def load_vgg19(path: str | Path, layers: Sequence[str] = tuple(LAYER_WEIGHTS),
               device: str | torch.device = "cpu") -> VGG19Features:
    """`VGG19Features` for `layers` with the weights of `path` (torchvision's `vgg19-dcbb9e9d.pth`, its
    .safetensors twin, or a folder holding one), frozen on `device` in float32. Raises ModelNotFoundError (one line:
    the file, what is wrong, where the weights are published) for a missing, unsafe or unfitting file."""
    file = weights_file(path, VGG19_FILE, VGG19_WHAT, VGG19_URL)
    state = read_state_dict(file, VGG19_FILE, VGG19_URL)
    model = VGG19Features(layers, _widths_in(state) or VGG19_WIDTHS)
    # Only the layers up to the deepest one used are needed; the rest of the file (and the classifier) is ignored.
    expected = model.state_dict()
    deeper = tuple(f"features.{index}." for index in range(len(model.features), VGG19_MODULES))
    check_keys(state, expected, file, VGG19_WHAT, VGG19_FILE, VGG19_URL, ignore=("classifier.", *deeper))
    model.load_state_dict({key: state[key] for key in expected}, strict=True)
    return model.to(device=device, dtype=torch.float32)


class PerceptualLoss(nn.Module):
    """BasicSR's PerceptualLoss as the GAN stage configures it: output, target [B,3,H,W] in [0,1] -> a scalar,
    weight · Σ_layer layer_weight · mean|φ(output) - φ(target)| (target features without gradient)."""

    def __init__(self, features: VGG19Features, layer_weights: Mapping[str, float] | None = None,
                 weight: float = 1.0) -> None:
        super().__init__()
        self.features = features
        self.layer_weights = dict(LAYER_WEIGHTS if layer_weights is None else layer_weights)
        missing = [name for name in self.layer_weights if name not in features.layers.values()]
        if missing:
            raise ValueError(f"the VGG19 features were built without layer(s) {missing}: build them with every "
                             "layer that has a weight")
        self.weight = weight

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        found = self.features(output)
        with torch.no_grad():
            reference = self.features(target.detach())
        loss = sum(weight * F.l1_loss(found[name], reference[name]) for name, weight in self.layer_weights.items())
        return self.weight * loss
