"""DIRformer: DiffIR's Restormer-style U-shaped transformer, modulated by the 256-d image prior z.

Every attention (DMTA) and feed-forward (DGFN) block owns `kernel = Linear(256 -> 2C, bias=False)`; on z it gives a
per-channel scale and shift applied as `x * k1 + k2` after the LayerNorm and before the block's first conv.
Attention is "transposed": a C×C map per head over L2-normalised spatial vectors, so cost is linear in pixels.

Attribute names and module order follow the official `DiffRIR/archs/S2_arch.py` (DIRformer, Attention,
FeedForward, TransformerBlock, Upsample/Downsample) and `common.py` (Upsampler), so `state_dict()` keys are the
official ones.

Inference that must answer Cancel passes `check` (a callable that raises to stop): it is called between the layers of
every block, and the big convolutions run in strips of rows (`run_stepped`), so no single step takes long even on a
large picture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

SCALES = (1, 2, 4)  # S2_arch.py DIRformer: the input channel counts exist for these scales only
PRIOR_DIM = 256  # S2_arch.py: the image prior representation z is 4 * n_feats = 256 wide
LAYER_NORM_EPS = 1e-5  # S2_arch.py BiasFree_LayerNorm
# S2_arch.py DIRformer: the input reaches the transformer at H_out/4 (PixelUnshuffle 4 of x1, 2 of x2, none for x4)
# and enters with these channel counts: 6*16 for x1, 15*4 for x2, 51 for x4 (see `input_channels`).
UNSHUFFLE = {1: 4, 2: 2, 4: 1}
EMBED_CHANNELS = {1: 96, 2: 60, 4: 51}
TAIL_ROUNDS = 2  # S2_arch.py: common.Upsampler(default_conv, 4, ...) is two rounds of conv + PixelShuffle(2)
# Multiply-adds of one step of stepped inference: about 0.1-0.2 s on two CPU cores, so Cancel is answered within 1 s.
STEP_MACS = 1 << 33

Check = Callable[[], None]  # called between steps of work; raises (e.g. ComfyUI's interrupt) to cancel


def never_stop() -> None:
    """The check of a run that nobody cancels."""


def _is_same_size_3x3(layer: nn.Module) -> bool:
    """Whether `layer` is a plain 3×3 convolution that keeps the size (stride 1, padding 1): each output row reads
    only its input row and the rows above and below it."""
    return (isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3) and layer.stride == (1, 1)
            and layer.padding == (1, 1) and layer.dilation == (1, 1) and layer.padding_mode == "zeros")


def conv_in_strips(conv: nn.Conv2d, x: Tensor, check: Check) -> Tensor:
    """`conv(x)` for a same-size 3×3 convolution, computed in strips of rows of at most STEP_MACS multiply-adds
    each (every strip reads one more input row on each side), with `check()` before each. x: [B,C,H,W] -> [B,C',H,W]
    in the layout conv(x) has, equal to conv(x) up to float rounding (a strip's shape may get another convolution
    algorithm); one strip (a small picture) is conv(x) itself."""
    batch, _, height, width = x.shape
    row_macs = batch * width * conv.in_channels // conv.groups * conv.out_channels * 9
    rows = max(1, STEP_MACS // max(row_macs, 1))
    if rows >= height:
        check()
        return conv(x)
    out = None
    for top in range(0, height, rows):
        check()
        bottom, first = min(top + rows, height), max(top - 1, 0)
        part = conv(x[:, :, first:min(bottom + 1, height)])[:, :, top - first:bottom - first]
        if out is None:
            layout = (torch.channels_last if part.is_contiguous(memory_format=torch.channels_last)
                      and not part.is_contiguous() else torch.contiguous_format)
            out = torch.empty((*part.shape[:2], height, width), dtype=part.dtype, device=part.device,
                              memory_format=layout)
        out[:, :, top:bottom] = part
    return out


def _poll(check: Check | None) -> None:
    if check is not None:
        check()


def run_stepped(layers: nn.Module, x: Tensor, check: Check) -> Tensor:
    """`layers(x)` for a layer or a (nested) nn.Sequential of layers, in short steps: same-size 3×3 convolutions in
    strips of rows (`conv_in_strips`), other layers whole, `check()` before each step."""
    if isinstance(layers, nn.Sequential):
        for layer in layers:
            x = run_stepped(layer, x, check)
        return x
    if _is_same_size_3x3(layers):
        return conv_in_strips(layers, x, check)
    check()
    return layers(x)


def input_channels(scale: int) -> int:
    """Channels of the network input at `scale`: [lq (3), the reference (1-mask)*gt pixel-unshuffled to lq's grid]."""
    return EMBED_CHANNELS[scale] // UNSHUFFLE[scale] ** 2


class BiasFreeLayerNorm(nn.Module):
    """LayerNorm over the last axis, scale only (no mean subtraction, no bias): [..., C] -> [..., C]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        variance = x.var(-1, keepdim=True, unbiased=False)
        return x / torch.sqrt(variance + LAYER_NORM_EPS) * self.weight


class ChannelLayerNorm(nn.Module):
    """BiasFreeLayerNorm over the channels of each pixel: [B,C,H,W] -> [B,C,H,W] (official `LayerNorm`, key `body`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = BiasFreeLayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        # The official to_3d / to_4d: the result is a channels-last view, which the next conv rounds as officially.
        return rearrange(self.body(rearrange(x, "b c h w -> b (h w) c")), "b (h w) c -> b c h w", h=h, w=w)


def _modulate(kernel: nn.Module, x: Tensor, z: Tensor) -> Tensor:
    """x: [B,C,H,W], z: [B,256] -> x * k1 + k2 with (k1, k2) = kernel(z) split in halves."""
    scale, shift = kernel(z).view(-1, 2 * x.shape[1], 1, 1).chunk(2, dim=1)
    return x * scale + shift


class ModulatedAttention(nn.Module):
    """DMTA (official `Attention`): [B,C,H,W], z [B,256] -> [B,C,H,W]."""

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.kernel = nn.Sequential(nn.Linear(PRIOR_DIM, dim * 2, bias=False))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: Tensor, z: Tensor, check: Check | None = None) -> Tensor:
        h, w = x.shape[-2:]
        qkv = self.qkv(_modulate(self.kernel, x, z))
        _poll(check)
        q, k, v = self.qkv_dwconv(qkv).chunk(3, dim=1)
        del qkv  # as soon as in one expression: the peak memory stays the official code's
        _poll(check)
        q, k, v = (rearrange(t, "b (head c) h w -> b head c (h w)", head=self.num_heads) for t in (q, k, v))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attention = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        _poll(check)
        out = rearrange(attention @ v, "b head c (h w) -> b (head c) h w", head=self.num_heads, h=h, w=w)
        _poll(check)
        return self.project_out(out)


class ModulatedFeedForward(nn.Module):
    """DGFN (official `FeedForward`): gated depthwise-conv MLP, [B,C,H,W], z [B,256] -> [B,C,H,W]."""

    def __init__(self, dim: int, expansion: float, bias: bool) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)
        self.kernel = nn.Sequential(nn.Linear(PRIOR_DIM, dim * 2, bias=False))

    def forward(self, x: Tensor, z: Tensor, check: Check | None = None) -> Tensor:
        hidden = self.project_in(_modulate(self.kernel, x, z))
        _poll(check)
        gate, value = self.dwconv(hidden).chunk(2, dim=1)
        del hidden
        _poll(check)
        gated = F.gelu(gate) * value
        _poll(check)
        return self.project_out(gated)


class TransformerBlock(nn.Module):
    """x + DMTA(LN(x), z), then x + DGFN(LN(x), z): [B,C,H,W] -> [B,C,H,W]."""

    def __init__(self, dim: int, num_heads: int, expansion: float, bias: bool) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = ModulatedAttention(dim, num_heads, bias)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = ModulatedFeedForward(dim, expansion, bias)

    def forward(self, x: Tensor, z: Tensor, check: Check | None = None) -> Tensor:
        normed = self.norm1(x)
        _poll(check)
        x = x + self.attn(normed, z, check)
        del normed
        _poll(check)
        normed = self.norm2(x)
        _poll(check)
        return x + self.ffn(normed, z, check)


class TransformerStage(nn.Sequential):
    """`count` TransformerBlocks at one width (keys `<stage>.<i>.…`, as the official nn.Sequential)."""

    def __init__(self, count: int, dim: int, num_heads: int, expansion: float, bias: bool) -> None:
        super().__init__(*(TransformerBlock(dim, num_heads, expansion, bias) for _ in range(count)))

    def forward(self, x: Tensor, z: Tensor, check: Check | None = None) -> Tensor:
        for block in self:
            _poll(check)
            x = block(x, z, check)
        return x


class PatchEmbed(nn.Module):
    """Official `OverlapPatchEmbed`: 3×3 conv [B,C_in,H,W] -> [B,dim,H,W] (key `proj`)."""

    def __init__(self, in_channels: int, dim: int, bias: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """conv C -> C/2, PixelUnshuffle(2): [B,C,H,W] -> [B,2C,H/2,W/2]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """conv C -> 2C, PixelShuffle(2): [B,C,H,W] -> [B,C/2,2H,2W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def _tail(channels: int, out_channels: int) -> nn.Sequential:
    """×4 upsampler (common.Upsampler: [conv C->4C, PixelShuffle(2)] twice) then a 3×3 conv to `out_channels`."""
    upsampler = nn.Sequential()
    for _ in range(TAIL_ROUNDS):
        upsampler.extend([nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2)])
    return nn.Sequential(upsampler, nn.Conv2d(channels, out_channels, 3, padding=1))


class DIRformer(nn.Module):
    """The restoration transformer: x [B,C_in,H,W], z [B,256] -> [B,3,H*scale,W*scale].

    C_in is `input_channels(scale)` (6, 15 or 51); H*scale and W*scale must be multiples of 32 (the transformer runs
    at H*scale/4 and halves that three times). The output is a residual on `x[:, :3]` upsampled (nearest).
    The sizes default to the released ones (inference_diffrir.py, every DiffRIR yml), shared by S1 and S2; the layer
    norm is always the bias-free one that every DiffRIR config uses. With `check` (see the module docstring) it runs
    in short steps, equal up to float rounding.
    """

    def __init__(self, scale: int = 1, *, dim: int = 64, num_blocks: Sequence[int] = (13, 1, 1, 1),
                 num_refinement_blocks: int = 13, heads: Sequence[int] = (1, 2, 4, 8),
                 ffn_expansion_factor: float = 2.2, bias: bool = False, out_channels: int = 3) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"DiffRIR scale {scale} is not supported: use one of {', '.join(map(str, SCALES))}")
        self.scale = scale
        if UNSHUFFLE[scale] > 1:
            self.pixel_unshuffle = nn.PixelUnshuffle(UNSHUFFLE[scale])
        widths = [dim, dim * 2, dim * 4, dim * 8]

        def stage(level: int, count: int, width: int | None = None) -> TransformerStage:
            return TransformerStage(count, width or widths[level], heads[level], ffn_expansion_factor, bias)

        self.patch_embed = PatchEmbed(EMBED_CHANNELS[scale], dim, bias=False)
        self.encoder_level1 = stage(0, num_blocks[0])
        self.down1_2 = Downsample(widths[0])
        self.encoder_level2 = stage(1, num_blocks[1])
        self.down2_3 = Downsample(widths[1])
        self.encoder_level3 = stage(2, num_blocks[2])
        self.down3_4 = Downsample(widths[2])
        self.latent = stage(3, num_blocks[3])
        self.up4_3 = Upsample(widths[3])
        self.reduce_chan_level3 = nn.Conv2d(widths[3], widths[2], kernel_size=1, bias=bias)
        self.decoder_level3 = stage(2, num_blocks[2])
        self.up3_2 = Upsample(widths[2])
        self.reduce_chan_level2 = nn.Conv2d(widths[2], widths[1], kernel_size=1, bias=bias)
        self.decoder_level2 = stage(1, num_blocks[1])
        self.up2_1 = Upsample(widths[1])
        # Level 1 of the decoder keeps the concatenated 2*dim channels (no 1x1 reduce), as does the refinement.
        self.decoder_level1 = stage(0, num_blocks[0], widths[1])
        self.refinement = stage(0, num_refinement_blocks, widths[1])
        self.tail = _tail(widths[1], out_channels)

    def forward(self, x: Tensor, z: Tensor, check: Check | None = None) -> Tensor:
        features = self.pixel_unshuffle(x) if UNSHUFFLE[self.scale] > 1 else x
        level1 = self.encoder_level1(self.patch_embed(features), z, check)
        level2 = self.encoder_level2(self.down1_2(level1), z, check)
        level3 = self.encoder_level3(self.down2_3(level2), z, check)
        latent = self.latent(self.down3_4(level3), z, check)
        decoded = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(latent), level3], 1)), z, check)
        decoded = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(decoded), level2], 1)), z, check)
        decoded = self.decoder_level1(torch.cat([self.up2_1(decoded), level1], 1), z, check)
        decoded = self.refinement(decoded, z, check)
        # The ×4 tail's convolutions work at up to the full size, the longest single layers: stepped when asked.
        tail = self.tail(decoded) if check is None else run_stepped(self.tail, decoded, check)
        return tail + F.interpolate(x[:, :3], scale_factor=self.scale, mode="nearest")
