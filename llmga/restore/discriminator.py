"""The discriminator of DiffRIR's GAN stage: Real-ESRGAN's U-Net discriminator with spectral normalisation.

train_DiffRIRS2_GAN_x1*.yml `network_d`: UNetDiscriminatorSN(num_in_ch=3, num_feat=64, skip_connection=True), the
architecture of Real-ESRGAN (`realesrgan/archs/discriminator_arch.py`, also in DiffRIR/archs/discriminator_arch.py):
a plain 3×3 conv, three spectral-normalised 4×4 stride-2 convs down, three bilinear ×2 upsamplings each followed by a
spectral-normalised 3×3 conv (plus the encoder feature of the same size with skip connections), two more
spectral-normalised 3×3 convs and a plain 3×3 conv to one logit per pixel; LeakyReLU(0.2) after every conv but the
last. PyTorch's default initialisation, as officially.

Spectral normalisation is `torch.nn.utils.spectral_norm` (one power iteration per forward in training mode), whose
state dict (`convN.weight_orig`, `convN.weight_u`, `convN.weight_v`) is the layout of BasicSR's `net_d_*.pth`
files, so Real-ESRGAN's released discriminators load too.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import spectral_norm

NUM_FEAT = 64  # train_DiffRIRS2_GAN_x1.yml network_d num_feat
NEGATIVE_SLOPE = 0.2
DOWNSAMPLINGS = 3  # H and W must divide by 2^3


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, NEGATIVE_SLOPE)


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class UNetDiscriminatorSN(nn.Module):
    """images [B,C,H,W] (C = in_channels, 3; H and W multiples of 8) in [0,1] -> logits [B,1,H,W], one
    real-vs-generated logit per pixel."""

    def __init__(self, in_channels: int = 3, num_feat: int = NUM_FEAT, skip_connection: bool = True) -> None:
        super().__init__()
        self.skip_connection = skip_connection

        def sn_conv(channels_in: int, channels_out: int, kernel: int, stride: int) -> nn.Module:
            return spectral_norm(nn.Conv2d(channels_in, channels_out, kernel, stride, 1, bias=False))

        widths = [num_feat * 2**level for level in range(DOWNSAMPLINGS + 1)]  # 64, 128, 256, 512
        self.conv0 = nn.Conv2d(in_channels, num_feat, 3, 1, 1)
        self.conv1 = sn_conv(widths[0], widths[1], 4, 2)
        self.conv2 = sn_conv(widths[1], widths[2], 4, 2)
        self.conv3 = sn_conv(widths[2], widths[3], 4, 2)
        self.conv4 = sn_conv(widths[3], widths[2], 3, 1)
        self.conv5 = sn_conv(widths[2], widths[1], 3, 1)
        self.conv6 = sn_conv(widths[1], widths[0], 3, 1)
        self.conv7 = sn_conv(num_feat, num_feat, 3, 1)
        self.conv8 = sn_conv(num_feat, num_feat, 3, 1)
        self.conv9 = nn.Conv2d(num_feat, 1, 3, 1, 1)

    def forward(self, images: Tensor) -> Tensor:
        multiple = 2**DOWNSAMPLINGS
        if images.shape[-2] % multiple or images.shape[-1] % multiple:
            raise ValueError(f"the discriminator takes images whose sides are multiples of {multiple}, got "
                             f"{tuple(images.shape[-2:])}: crop or pad the training patches (gt_size)")
        x0 = _lrelu(self.conv0(images))
        x1 = _lrelu(self.conv1(x0))
        x2 = _lrelu(self.conv2(x1))
        x3 = _lrelu(self.conv3(x2))
        up = x3
        for conv, skip in ((self.conv4, x2), (self.conv5, x1), (self.conv6, x0)):
            up = _lrelu(conv(_upsample(up)))
            if self.skip_connection:
                up = up + skip
        out = _lrelu(self.conv8(_lrelu(self.conv7(up))))
        return self.conv9(out)
