"""Criss-cross attention (CCNet, Huang et al. ICCV 2019) in plain PyTorch, and its recurrent form (RCCA).

Each position attends to the H + W - 1 positions of its own column and row (PAPERS.md §5.2):
q, k = 1x1 conv C -> C/8, v = 1x1 conv C -> C; column and row energies are concatenated and one softmax runs
over all H + W logits, of which the column's own position is masked to -inf so that the centre is counted once
(in the row branch); out = gamma * (column aggregate + row aggregate) + x, gamma = 0 at init (identity).

The diagonal mask is an `arange` equality with `masked_fill(-inf)`, not `torch.diag` (which the legacy ONNX
exporter cannot export and CCNet's version pins to CUDA); only matmul/permute/softmax follow, so the module
exports with dynamic H and W. The row branch always has finite logits, so the softmax never sees a row of -inf.

Memory: the attention tensor is N x H x W x (H + W) floats per pass; apply it at reduced resolution.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class CrissCrossAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"CrissCrossAttention: channels and reduction must be >= 1, got {channels}, {reduction}")
        inner = max(channels // reduction, 1)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        q, k, v = self.query(x), self.key(x), self.value(x)

        # column energies: N x W x H x H' -> N x H x W x H'; a position's own column entry is masked
        energy_col = torch.matmul(q.permute(0, 3, 2, 1), k.permute(0, 3, 1, 2))
        idx = torch.arange(h, device=x.device)
        same = idx.unsqueeze(1) == idx.unsqueeze(0)  # H x H', True on the diagonal
        energy_col = energy_col.masked_fill(same, float("-inf")).permute(0, 2, 1, 3)
        # row energies: N x H x W x W'
        energy_row = torch.matmul(q.permute(0, 2, 3, 1), k.permute(0, 2, 1, 3))

        attention = torch.softmax(torch.cat([energy_col, energy_row], dim=3), dim=3)
        att_col, att_row = attention[..., :h], attention[..., h:]

        # out_col[n, c, h, w] = sum_h' att_col[n, h, w, h'] * v[n, c, h', w]
        out_col = torch.matmul(v.permute(0, 3, 1, 2), att_col.permute(0, 2, 3, 1)).permute(0, 2, 3, 1)
        # out_row[n, c, h, w] = sum_w' att_row[n, h, w, w'] * v[n, c, h, w']
        out_row = torch.matmul(v.permute(0, 2, 1, 3), att_row.permute(0, 1, 3, 2)).permute(0, 2, 1, 3)
        return self.gamma * (out_col + out_row) + x


class RecurrentCrissCrossAttention(nn.Module):
    """The same criss-cross module applied `recurrence` times (one parameter set).

    R = 2 lets every position gather context from the whole image (CCNet's released models use 2).
    """

    def __init__(self, channels: int, recurrence: int = 2, reduction: int = 8):
        super().__init__()
        if recurrence < 1:
            raise ValueError(f"RecurrentCrissCrossAttention: recurrence must be >= 1, got {recurrence}")
        self.recurrence = int(recurrence)
        self.attention = CrissCrossAttention(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):
            x = self.attention(x)
        return x
