"""TF1's bilinear `resize_images` (align_corners=False, half_pixel_centers=False), as ADNet's code resizes.

TensorFlow 1 samples output pixel `dst` of an axis at src = dst * in / out (no half-pixel offset) and blends
floor(src) with the next pixel, clamped at the edge. At ADNet's exact factors this is every 2nd or 4th pixel
(1/2, 1/4) and, for x2, the source pixels on the even rows and columns with their neighbours' means between:
models/adnet.py writes those out as slices (ONNX-friendly). `resize_tf1` is the general form, for any size; the
multi-scale loss resizes its targets with it.
"""
from __future__ import annotations

import torch


def resize_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x C x H x W -> N x C x size[0] x size[1], TF1 bilinear (not differentiable in the sizes, only in x)."""
    for dim, n_out in zip((2, 3), size):
        n_in = x.shape[dim]
        if n_in == n_out:
            continue
        src = torch.arange(n_out, dtype=torch.float64, device=x.device) * (n_in / n_out)
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=n_in - 1)
        shape = [1] * x.dim()
        shape[dim] = n_out
        frac = (src - lo).to(x.dtype).view(shape)
        x = x.index_select(dim, lo) * (1 - frac) + x.index_select(dim, hi) * frac
    return x
