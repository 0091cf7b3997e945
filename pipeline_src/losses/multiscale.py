"""Sum over scales of the MSE against the target resized to each scale (ADNet, PAPERS.md §4.2).

`pred` is the coarse -> fine list of a multi-scale model (a single tensor counts as one scale). The target is
resized bilinearly (align_corners=False, no antialiasing) to each prediction's size; the scales are unweighted.
TF1's resize in ADNet's code samples without the half-pixel offset, a sub-pixel difference.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from pipeline_src.losses import LOSSES


@LOSSES.register("multiscale_mse")
class MultiScaleMSELoss(nn.Module):
    def forward(self, pred, target):
        preds = list(pred) if isinstance(pred, (list, tuple)) else [pred]
        if not preds:
            raise ValueError("loss 'multiscale_mse' got an empty list of predictions")
        total = 0
        for p in preds:
            if p.shape[:2] != target.shape[:2]:
                raise ValueError(f"loss 'multiscale_mse': prediction {tuple(p.shape)} and target "
                                 f"{tuple(target.shape)} differ in batch or channels")
            t = target
            if p.shape[-2:] != target.shape[-2:]:
                t = F.interpolate(target, size=p.shape[-2:], mode="bilinear", align_corners=False)
            total = total + F.mse_loss(p, t)
        return total
