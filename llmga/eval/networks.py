"""The metric networks, read from local files only (nothing is downloaded): FID Inception and VGG LPIPS.

InceptionFeatures: the Inception v3 of TensorFlow's FID (graph inception-2015-12-05) as pytorch-fid ports it, file
    `pt_inception-2015-12-05-6726825d.pth`. It differs from torchvision's Inception v3 in its weights, in 1008
    classes, in average pools that leave the zero padding out of the mean (TF's SAME pooling) and in a max pool
    in the last block. Input is resized to 299x299 (bilinear) and scaled to [-1, 1].
LPIPS: 'net-lin' VGG LPIPS v0.1 (richzhang/PerceptualSimilarity): torchvision's VGG16 ImageNet weights
    `vgg16-397923af.pth` and the linear heads `vgg.pth` (lpips/weights/v0.1/ of the repository or of the
    `lpips` package).

Both load strictly (every weight present with its shape, nothing unknown), pickles with torch.load(weights_only=True)
only; safetensors files with the same keys load too. Called without files, the networks have random weights (tests).
The classes are built on first use, so importing this module (for its constants and loaders) does not import torch.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..hub import ModelNotFoundError

if TYPE_CHECKING:
    import torch

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILE}"
INCEPTION_NAME = "inception-fid-2015-12-05"
INCEPTION_SIZE = 299  # pytorch-fid resizes every input to 299x299, bilinear, align_corners=False
INCEPTION_CLASSES = 1008  # the TF graph's softmax: 1000 ImageNet classes + 8 unused
INCEPTION_FEATURES = 2048  # pool3
# The Mixed blocks of torchvision's Inception3, in order (names are the state-dict prefixes of the weight file).
INCEPTION_MIXED = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                   "Mixed_7a", "Mixed_7b", "Mixed_7c")

LPIPS_VGG_FILE = "vgg16-397923af.pth"
LPIPS_VGG_URL = f"https://download.pytorch.org/models/{LPIPS_VGG_FILE}"
LPIPS_LIN_FILE = "vgg.pth"
LPIPS_LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
LPIPS_NAME = "lpips-vgg-v0.1"
# lpips ScalingLayer: inputs in [-1, 1] are shifted and scaled to ImageNet statistics.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: indices in torchvision's vgg16().features, and their widths.
LPIPS_LAYERS = (3, 8, 15, 22, 29)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_EPS = 1e-10  # lpips normalize_tensor
LISTED = 3  # keys named in an error


def __getattr__(name: str):
    if name == "InceptionFeatures":
        return _inception_class()
    if name == "LPIPS":
        return _lpips_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_inception(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The FID Inception (an `InceptionFeatures`, eval mode, no gradients) of `pt_inception-2015-12-05-6726825d.pth`
    (`path` is the file, or a folder holding it), on `device` (auto/cuda/cpu/mps) in the metrics' precision
    (`llmga.devices`: fp32)."""
    file = weights_file(path, INCEPTION_FILE, "FID Inception", INCEPTION_URL)
    model = _inception_class()()
    state = read_state_dict(file, INCEPTION_FILE, INCEPTION_URL)
    check_keys(state, model.state_dict(), file, "FID Inception", INCEPTION_FILE, INCEPTION_URL)
    model.load_state_dict(state, strict=False)  # strict already checked; old files lack BatchNorm's step counter
    model.name = INCEPTION_NAME if file.name == INCEPTION_FILE else f"inception-fid-{file.stem}"
    return _ready(model, device)


def load_lpips(vgg: str | Path, lin: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """VGG LPIPS v0.1 (an `LPIPS`, eval mode, no gradients) of torchvision's `vgg16-397923af.pth` and lpips'
    `vgg.pth` (each argument the file, or a folder holding it), on `device` in the metrics' precision (fp32)."""
    vgg_file = weights_file(vgg, LPIPS_VGG_FILE, "LPIPS VGG16", LPIPS_VGG_URL)
    lin_file = weights_file(lin, LPIPS_LIN_FILE, "LPIPS linear heads", LPIPS_LIN_URL)
    model = _lpips_class()()
    expected = model.state_dict()
    vgg_state = read_state_dict(vgg_file, LPIPS_VGG_FILE, LPIPS_VGG_URL)
    features = {key: value for key, value in expected.items() if key.startswith("features.")}
    check_keys(vgg_state, features, vgg_file, "VGG16", LPIPS_VGG_FILE, LPIPS_VGG_URL, ignore=("classifier.",))
    lin_state = read_state_dict(lin_file, LPIPS_LIN_FILE, LPIPS_LIN_URL)
    heads = {key: value for key, value in expected.items() if key.startswith("lin")}
    check_keys(lin_state, heads, lin_file, "LPIPS v0.1 VGG linear-head", LPIPS_LIN_FILE, LPIPS_LIN_URL)
    model.load_state_dict({**{key: vgg_state[key] for key in features}, **lin_state}, strict=True)
    return _ready(model, device)


def _ready(model: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """`model` on `device` in the precision `llmga.devices` gives metric networks (fp32), in eval mode, frozen."""
    from ..devices import device_and_dtype

    target, dtype = device_and_dtype("metrics", device)
    return model.to(target, dtype).eval().requires_grad_(False)


@functools.cache
def _inception_class() -> type:
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torchvision.models.inception import BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE

    def tf_average_pool(x: torch.Tensor) -> torch.Tensor:
        """TF's 3x3 SAME average pool: the zero padding does not count in the mean."""
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    def tf_max_pool(x: torch.Tensor) -> torch.Tensor:
        """The pool of the FID graph's last block (mixed_10), a max pool where Inception v3 has an average."""
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)

    class FIDInceptionA(InceptionA):
        """torchvision's InceptionA (same weights) with TF's average pool."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
            branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(tf_average_pool(x))], 1)

    class FIDInceptionC(InceptionC):
        """torchvision's InceptionC (same weights) with TF's average pool."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            branch7x7dbl = x
            for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                         self.branch7x7dbl_5):
                branch7x7dbl = conv(branch7x7dbl)
            return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(tf_average_pool(x))], 1)

    class FIDInceptionE(InceptionE):
        """torchvision's InceptionE (same weights) with the given pool before its pool branch."""

        def __init__(self, in_channels: int, pool) -> None:
            super().__init__(in_channels)
            self.pool = pool

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            branch3x3 = self.branch3x3_1(x)
            branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            return torch.cat([self.branch1x1(x), self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3),
                              self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl),
                              self.branch_pool(self.pool(x))], 1)

    class InceptionFeatures(nn.Module):
        """FID Inception v3: images [B, 3, H, W] float in [0, 1] -> (pool [B, 2048], logits [B, 1008]).

        `pool` is pool3, the FID feature. `logits` are pool3 times the softmax layer's weights without its bias,
        what the original Inception Score code (openai/improved-gan) and torch-fidelity take p(y|x) from:
        softmax(logits) is the class distribution for IS. Random weights until loaded (load_inception).
        Channel widths are torchvision's Inception3; state-dict keys are those of the weight file.
        """

        def __init__(self) -> None:
            super().__init__()
            self.name = "inception-random"  # the feature-cache key; load_inception names the loaded weights
            self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
            self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
            self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
            self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
            self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
            self.Mixed_5b = FIDInceptionA(192, pool_features=32)
            self.Mixed_5c = FIDInceptionA(256, pool_features=64)
            self.Mixed_5d = FIDInceptionA(288, pool_features=64)
            self.Mixed_6a = InceptionB(288)
            self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
            self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
            self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
            self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
            self.Mixed_7a = InceptionD(768)
            self.Mixed_7b = FIDInceptionE(1280, tf_average_pool)
            self.Mixed_7c = FIDInceptionE(2048, tf_max_pool)
            self.fc = nn.Linear(INCEPTION_FEATURES, INCEPTION_CLASSES)
            for module in self.modules():  # random weights that keep activations O(1) (no denormal slowdown)
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = F.interpolate(images, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
            x = 2 * x - 1
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            for name in INCEPTION_MIXED:
                x = getattr(self, name)(x)
            pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
            return pool, F.linear(pool, self.fc.weight)

    InceptionFeatures.__qualname__ = "InceptionFeatures"  # defined on first use, named as a module-level class
    return InceptionFeatures


@functools.cache
def _lpips_class() -> type:
    import torch
    from torch import nn
    from torchvision.models.vgg import cfgs, make_layers

    class LinearHead(nn.Module):
        """lpips' NetLinLayer: dropout (idle in eval) then a 1x1 conv to one channel, keys `model.1.weight`."""

        def __init__(self, channels: int) -> None:
            super().__init__()
            self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

    class LPIPS(nn.Module):
        """'net-lin' VGG LPIPS v0.1: images a, b [B, 3, H, W] float in [0, 1] -> distances [B] (0 for equal images).

        Per VGG16 layer (relu1_2 ... relu5_3): features unit-normalised over channels, squared difference, weighted
        by the layer's linear head, averaged over space; the five layers summed. Random weights until loaded
        (load_lpips); random heads are non-negative, as trained ones are (lpips clamps them while training).
        """

        def __init__(self) -> None:
            super().__init__()
            self.name = LPIPS_NAME
            self.features = make_layers(cfgs["D"])[:LPIPS_LAYERS[-1] + 1]  # keys features.<i>.* as vgg16's
            for module in self.features.modules():  # random weights as torchvision's VGG initialises them
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(module.bias)
            for index, channels in enumerate(LPIPS_CHANNELS):
                head = LinearHead(channels)
                head.model[1].weight.data.abs_()
                self.add_module(f"lin{index}", head)
            self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            if a.shape != b.shape:
                raise ValueError(f"LPIPS compares images of one size: got {tuple(a.shape)} and {tuple(b.shape)}")
            x = (2 * torch.cat([a, b]) - 1 - self.shift) / self.scale
            distance = torch.zeros(len(a), device=a.device, dtype=x.dtype)
            for index, module in enumerate(self.features):
                x = module(x)
                if index in LPIPS_LAYERS:
                    unit = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + LPIPS_EPS)
                    unit_a, unit_b = unit.chunk(2)
                    head = getattr(self, f"lin{LPIPS_LAYERS.index(index)}")
                    distance = distance + head((unit_a - unit_b) ** 2).mean(dim=(1, 2, 3))
            return distance

    LPIPS.__qualname__ = "LPIPS"
    return LPIPS


def weights_file(path: str | Path, filename: str, what: str, url: str) -> Path:
    """`path` if it is a file, else `filename` (or its .safetensors twin) inside the folder `path`."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / filename, path / Path(filename).with_suffix(".safetensors").name):
            if candidate.is_file():
                return candidate
        problem = f"has no {filename}"
    else:
        problem = "does not exist"
    raise ModelNotFoundError(f"{what} weights not found: {path} {problem}. Give the file {filename} (or a folder "
                             f"holding it); the public weights are at {url}")


def read_state_dict(file: Path, filename: str, url: str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or of a pickled state dict (torch.load with weights_only=True, either torch
    format: the published files predate torch's zip format)."""
    from ..model_files import read_tensors

    return read_tensors(file, ModelNotFoundError, f"give {filename} from {url}")


def check_keys(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], file: Path, what: str,
                filename: str, url: str, ignore: tuple[str, ...] = ()) -> None:
    """ModelNotFoundError unless `state` holds every key of `expected` (BatchNorm step counters optional) with its
    shape, and no other key (but those starting with `ignore`)."""
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    unknown = [key for key in state if key not in expected and not key.startswith(ignore)]
    wrong = [f"{key} {tuple(state[key].shape)} instead of {tuple(expected[key].shape)}" for key in expected
             if key in state and state[key].shape != expected[key].shape]
    problems = [f"{len(keys)} {kind}, e.g. {', '.join(keys[:LISTED])}"
                for kind, keys in (("missing", missing), ("unexpected", unknown), ("of the wrong shape", wrong))
                if keys]
    if problems:
        raise ModelNotFoundError(f"{file} does not hold the {what} weights ({'; '.join(problems)}): give {filename} "
                                 f"from {url}")
