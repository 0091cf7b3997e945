"""Squeeze-excitation channel weights (Hu et al.): global average pool, 1x1 bottleneck + ReLU, 1x1, sigmoid.

Returns the N x C x 1 x 1 weights, not the gated input, so a block can apply them alone (ATTSF's dual
attention) or together with a spatial map (ADNet's residual attention block, parallel or serial).
"""
from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.excite = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.excite(torch.relu(self.squeeze(pooled))))
