"""Sum over scales of the MSE against the target resized to each scale (ADNet, PAPERS.md §4.2).

`pred` is the coarse -> fine list of a multi-scale model (a single tensor counts as one scale); the scales are
unweighted. The target is resized to each prediction's size the way the model resizes its input (`resize`, set
from the recipe's model args by train/batches.py): "half_pixel", bilinear with align_corners=False and no
antialiasing, or "tf1", TF1 `resize_images` as ADNet's code resizes its ground truth (models/layers/tf1_resize.py;
at ADNet's exact 1/2 and 1/4 it keeps every 2nd or 4th pixel).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from pipeline_src.losses import LOSSES
from pipeline_src.models.layers.tf1_resize import resize_tf1


@LOSSES.register("multiscale_mse")
class MultiScaleMSELoss(nn.Module):
    def __init__(self, resize: str = "half_pixel"):
        super().__init__()
        if resize not in ("half_pixel", "tf1"):
            raise ValueError(f"loss 'multiscale_mse': resize={resize!r}; accepted: half_pixel, tf1")
        self.resize = resize

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
                t = self._resized(target, p.shape[-2:])
            total = total + F.mse_loss(p, t)
        return total

    def _resized(self, target, size):
        if self.resize == "tf1":
            return resize_tf1(target, size)
        return F.interpolate(target, size=size, mode="bilinear", align_corners=False)
