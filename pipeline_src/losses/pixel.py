"""Per-pixel losses on the finest prediction: L1 (= MAE), MSE, and binary cross-entropy on logits."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from pipeline_src.losses import LOSSES, check_same_shape, finest


@LOSSES.register("mae")
@LOSSES.register("l1")
class L1Loss(nn.Module):
    def forward(self, pred, target):
        pred = finest(pred)
        check_same_shape(pred, target, "l1")
        return F.l1_loss(pred, target)


@LOSSES.register("mse")
class MSELoss(nn.Module):
    def forward(self, pred, target):
        pred = finest(pred)
        check_same_shape(pred, target, "mse")
        return F.mse_loss(pred, target)


@LOSSES.register("bce")
class BCEWithLogitsLoss(nn.Module):
    """Blur detection: `pred` are logits (the detection models' output), `target` the in-focus mask in [0, 1]."""

    def forward(self, pred, target):
        pred = finest(pred)
        check_same_shape(pred, target, "bce")
        if target.min() < 0 or target.max() > 1:
            raise ValueError(f"loss 'bce': target spans [{float(target.min())}, {float(target.max())}]; "
                             "expected a mask in [0, 1]")
        return F.binary_cross_entropy_with_logits(pred, target)
