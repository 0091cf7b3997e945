"""BiANet: single-image motion deblurring with a bi-attention network (Li, Luo, Lu, Tongji University).

The paper's text is short (papers/bianet_bi_attention_deblurring.txt) and no code is published, so most of the
concrete network is ours. What the paper states:
- a criss-cross attention (CCA) module on the shallow features F0 BEFORE the encoder-decoder (Eq. 3) and a second
  one on the reconstructed features F_rec AFTER it (Eq. 4), two separate modules;
- the CCA itself (Eq. 1-2): Q, K by 1x1 convs to C' < C channels, V by a 1x1 conv, correlations over the H + W - 1
  positions of each pixel's cross, aggregation of V plus the input F;
- a feature-fusion module that resizes the encoder's three levels to a common scale and concatenates them
  (Eq. 5), giving the decoder multi-scale features;
- an encoder with three convolutional scale stages.
Our choices (PAPERS.md §5.1 recommendations; every size is a constructor argument):
- CCA as in CCNet (layers/criss_cross.py): C' = C/8, gamma-scaled aggregation with gamma = 0 at init, applied
  R = 2 times with shared weights (RCCA);
- each RCCA runs at 1/4 resolution (`attention_stride=4`) inside a residual branch
  `f + conv3x3(bilinear_up(RCCA(stem(f))))`, stem = two 3x3 stride-2 convs. The attention tensor is
  N x h x w x (h + w) floats: at 720x1280 that is 7.4 GB per pass at full resolution but 115 MB at 1/4;
- head conv3x3 3->C; encoder levels at 1, 1/2, 1/4 with widths (C, 2C, 4C), each `blocks_per_level` residual
  blocks (conv3x3-ReLU-conv3x3 + x), 3x3 stride-2 convs between levels;
- the fusion runs at every decoder scale: all three encoder outputs are brought to that scale (average pooling
  down, bilinear up), concatenated and mixed by a 1x1 conv. At 1/4 it is the decoder's input (the paper's
  "input of decoder"); at 1/2 and 1 it is the skip, joined to the upsampled decoder features by concat + 1x1;
- 4x4 stride-2 transposed convs up, ReLU everywhere, no normalisation, PyTorch's default initialisers;
- output conv3x3 C->3 and a global residual out = x + f(x). Training mode returns it unclamped (the loss sees
  every pixel); eval mode clamps it to [0, 1], the model contract's range.
Any H and W are accepted: the input is padded to `size_multiple` (4, or the attention stride if larger) and the
output cropped back.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline_src.models import MODELS
from pipeline_src.models.layers.criss_cross import RecurrentCrissCrossAttention
from pipeline_src.models.layers.padding import crop_to, pad_to_multiple

ENCODER_LEVELS = 3  # resolutions 1, 1/2, 1/4


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv3(channels, channels), nn.ReLU(inplace=True), _conv3(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _blocks(channels: int, count: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock(channels) for _ in range(count)))


class ReducedResolutionAttention(nn.Module):
    """f + conv(upsample(RCCA(stem(f)))): criss-cross attention on a map `stride` times smaller than f."""

    def __init__(self, channels: int, stride: int, recurrence: int, reduction: int):
        super().__init__()
        steps = int(math.log2(stride))
        layers: list[nn.Module] = []
        for i in range(steps):
            layers.append(_conv3(channels, channels, stride=2))
            if i < steps - 1:
                layers.append(nn.ReLU(inplace=True))
        self.stem = nn.Sequential(*layers)
        self.attention = RecurrentCrissCrossAttention(channels, recurrence, reduction)
        self.project = _conv3(channels, channels)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        context = self.attention(self.stem(f))
        context = F.interpolate(context, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return f + self.project(context)


def _resize_level(f: torch.Tensor, source: int, target: int, like: torch.Tensor) -> torch.Tensor:
    """Bring a feature map from encoder level `source` to level `target` (level l is at 1 / 2**l)."""
    if target > source:
        return F.avg_pool2d(f, 2 ** (target - source))
    if target < source:
        return F.interpolate(f, size=like.shape[-2:], mode="bilinear", align_corners=False)
    return f


class FeatureFusion(nn.Module):
    """All encoder levels brought to level `target`, concatenated, mixed by a 1x1 conv (paper Eq. 5)."""

    def __init__(self, widths: tuple[int, ...], target: int):
        super().__init__()
        self.target = target
        self.mix = nn.Conv2d(sum(widths), widths[target], 1)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        like = levels[self.target]
        resized = [_resize_level(f, i, self.target, like) for i, f in enumerate(levels)]
        return self.mix(torch.cat(resized, dim=1))


class BiANet(nn.Module):
    input_views = ("c",)
    task = "restoration"

    def __init__(self, widths=(32, 64, 128), blocks_per_level: int = 4, recurrence: int = 2,
                 attention_stride: int = 4, attention_reduction: int = 8):
        super().__init__()
        widths = tuple(int(c) for c in widths)
        if len(widths) != ENCODER_LEVELS or min(widths) < 1:
            raise ValueError(f"widths={widths!r}; BiANet needs {ENCODER_LEVELS} positive widths (levels 1, 1/2, 1/4)")
        if blocks_per_level < 1:
            raise ValueError(f"blocks_per_level={blocks_per_level}; needs at least 1 residual block per level")
        if attention_stride < 1 or attention_stride & (attention_stride - 1):
            raise ValueError(f"attention_stride={attention_stride}; must be a power of two (1, 2, 4, 8, ...)")
        self.size_multiple = max(2 ** (ENCODER_LEVELS - 1), attention_stride)
        c1, c2, c3 = widths

        self.head = _conv3(3, c1)
        self.attention_in = ReducedResolutionAttention(c1, attention_stride, recurrence, attention_reduction)
        self.encoder = nn.ModuleList([
            _blocks(c1, blocks_per_level),
            nn.Sequential(_conv3(c1, c2, stride=2), nn.ReLU(inplace=True), _blocks(c2, blocks_per_level)),
            nn.Sequential(_conv3(c2, c3, stride=2), nn.ReLU(inplace=True), _blocks(c3, blocks_per_level)),
        ])
        self.fusion = nn.ModuleList([FeatureFusion(widths, level) for level in range(ENCODER_LEVELS)])

        self.decoder3 = _blocks(c3, blocks_per_level)
        self.up2 = nn.Sequential(nn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1), nn.ReLU(inplace=True))
        self.merge2 = nn.Conv2d(2 * c2, c2, 1)
        self.decoder2 = _blocks(c2, blocks_per_level)
        self.up1 = nn.Sequential(nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.ReLU(inplace=True))
        self.merge1 = nn.Conv2d(2 * c1, c1, 1)
        self.decoder1 = _blocks(c1, blocks_per_level)

        self.attention_out = ReducedResolutionAttention(c1, attention_stride, recurrence, attention_reduction)
        self.tail = _conv3(c1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != 3):
            raise ValueError(f"BiANet expects N x 3 x H x W (the blurry RGB image), got {tuple(x.shape)}")
        x_pad, size = pad_to_multiple(x, self.size_multiple)

        f = self.attention_in(self.head(x_pad))
        levels = []
        for stage in self.encoder:
            f = stage(f)
            levels.append(f)
        fused = [fusion(levels) for fusion in self.fusion]

        d = self.decoder3(fused[2])
        d = self.decoder2(self.merge2(torch.cat([self.up2(d), fused[1]], dim=1)))
        d = self.decoder1(self.merge1(torch.cat([self.up1(d), fused[0]], dim=1)))
        out = x_pad + self.tail(self.attention_out(d))

        out = crop_to(out, size)
        return out if self.training else out.clamp(0.0, 1.0)


@MODELS.register("bianet")
def build_bianet(**kwargs) -> BiANet:
    return BiANet(**kwargs)
