"""Pad an input to a model's size multiple and crop the result back.

Replicate padding (not zeros) so that the border does not look like a dark edge to a deblurring network.
The pad amounts are computed from the tensor's shape, so the ONNX export keeps H and W dynamic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2], x.shape[-1]
    ph = (multiple - h % multiple) % multiple
    pw = (multiple - w % multiple) % multiple
    if isinstance(ph, int) and isinstance(pw, int) and ph == 0 and pw == 0:
        return x, (h, w)
    return F.pad(x, (0, pw, 0, ph), mode="replicate"), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    return x[..., :h, :w]
