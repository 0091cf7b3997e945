"""ATTSF's dual-attention module (Vo, NTIRE 2021, Fig. 2; `model.py: dual_attention` in tuvovan/ATTSF).

    M   = conv3x3(c->c) -> ReLU -> conv3x3(c->c)
    CA  = M * sigmoid(conv1x1(cc->c)(ReLU(conv1x1(c->cc)(GAP(M)))))      channel attention
    SA  = M * sigmoid(conv1x1(2->1)([max_c(M), mean_c(M)]))               pixel (position) attention
    out = X + conv1x1(2c->c)([CA, SA])                                    linear fusion, residual

The released code sizes the channel-attention bottleneck as cc = c at the input level (i == 1, where c = 3)
and cc = c / 8 everywhere else; `reduction` carries that choice (1 or 8).
The code names the channel-wise max `gap` and the mean `gmp`; the order fed to the 1x1 conv is [max, mean].
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_src.models.layers.squeeze_excite import SqueezeExcite


class PixelAttention(nn.Module):
    """Per-pixel gate from the channel-wise max and mean (2 maps -> 1x1 conv -> sigmoid)."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Conv2d(2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.gate(pooled))


class DualAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        if channels < 1 or reduction < 1 or channels // reduction < 1:
            raise ValueError(
                f"DualAttention: channels={channels}, reduction={reduction} leaves no hidden channel; "
                "need channels >= reduction >= 1"
            )
        self.hidden = channels // reduction
        self.features = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.channel_attention = SqueezeExcite(channels, self.hidden)
        self.pixel_attention = PixelAttention()
        self.fuse = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.features(x)
        return x + self.fuse(torch.cat([m * self.channel_attention(m), self.pixel_attention(m)], dim=1))
