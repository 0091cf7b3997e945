"""ADNet's residual attention block (RAB; "RDAB" in zhuyeye/Attentive-Deblurring `util/util.py`).

    y   = conv5x5(f->f) -> ReLU -> conv5x5(f->f)
    A   = sigmoid(conv1x1(f/r->1)(ReLU(conv1x1(f->f/r)(y))))          spatial attention: per-pixel MLP, N x 1 x H x W
    a   = sigmoid(conv1x1(f/r->f)(ReLU(conv1x1(f->f/r)(GAP(.)))))     channel attention (SE), N x f x 1 x 1
    out = x + y * A * a

Where the paper and the code differ (the paper is the default):
- "parallel" (paper, Eq. 6: X o (A (x) a)): A and a are both computed from y.
- "serial" (code): a is computed from y * A, i.e. the channel gate sees the spatially gated features.
Both have the same parameters, so weights move between the two.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_src.models.layers.squeeze_excite import SqueezeExcite

ATTENTION_ORDERS = ("parallel", "serial")


class SpatialAttentionMap(nn.Module):
    """Per-pixel MLP over the channel vector at each location (1x1 convs), sigmoid; returns the map."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(x))))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 5, reduction: int = 16, attention_order: str = "parallel"):
        super().__init__()
        if attention_order not in ATTENTION_ORDERS:
            raise ValueError(f"attention_order={attention_order!r}; accepted: {', '.join(ATTENTION_ORDERS)}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size={kernel_size}; an odd size is needed for 'same' padding")
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(
                f"channels={channels} with reduction={reduction} leaves no hidden unit; need channels >= reduction"
            )
        self.attention_order = attention_order
        pad = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size, padding=pad),
        )
        self.spatial = SpatialAttentionMap(channels, hidden)
        self.channel = SqueezeExcite(channels, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.attention_order == "serial":
            y = y * self.spatial(y)
            y = y * self.channel(y)
        else:
            y = y * self.spatial(y) * self.channel(y)
        return x + y
