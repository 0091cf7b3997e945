"""Channel attention (DANet's CAM, Fu et al. CVPR 2019), as MultiANet uses it (its Eq. 1-2).

X (C x N, N = H*W) -> E = X X^T (C x C) -> A = softmax over the last axis -> Y = gamma * (A X) + X, gamma a
learned scalar that starts at 0, so the module is the identity at initialisation. No convolutions.

Two affinities, because the paper and the cited code differ:
- "similarity" (default, MultiANet Eq. 1): A = softmax(E); similar channels reinforce each other.
- "danet" (`junfu1115/DANet` `CAM_Module`): A = softmax(rowmax(E) - E), which equals softmax(-E): the code
  weights dissimilar channels most.
"""
from __future__ import annotations

import torch
import torch.nn as nn

AFFINITIES = ("similarity", "danet")


class ChannelAttention(nn.Module):
    def __init__(self, affinity: str = "similarity"):
        super().__init__()
        if affinity not in AFFINITIES:
            raise ValueError(f"channel attention affinity={affinity!r}: accepted {AFFINITIES}")
        self.affinity = affinity
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # N x C x HW
        energy = torch.bmm(flat, flat.transpose(1, 2))  # N x C x C
        if self.affinity == "danet":
            energy = energy.amax(dim=-1, keepdim=True) - energy
        attention = torch.softmax(energy, dim=-1)
        out = torch.bmm(attention, flat).view_as(x)
        return self.gamma * out + x
