"""ADNet's gradient loss (zhuyeye/Attentive-Deblurring `build_model`, PAPERS.md §4.2), on the finest scale:
grey = tf.image.rgb_to_grayscale weights (0.2989, 0.5870, 0.1140); horizontal and vertical differences by a
VALID [1, -1] convolution; loss = MSE(dx) + MSE(dy). ADNet weighs it 2.5 next to "multiscale_mse" (config).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline_src.losses import LOSSES, check_same_shape, finest

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"loss 'gradient': expected N x 3 x H x W RGB (or one channel), got {tuple(x.shape)}")
    w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dy) = x[j] - x[j + 1] along width and height: the [1, -1] VALID cross-correlation."""
    return x[..., :, :-1] - x[..., :, 1:], x[..., :-1, :] - x[..., 1:, :]


@LOSSES.register("gradient")
class GradientLoss(nn.Module):
    def forward(self, pred, target):
        pred = finest(pred)
        check_same_shape(pred, target, "gradient")
        (pdx, pdy), (tdx, tdy) = image_gradients(_gray(pred)), image_gradients(_gray(target))
        return F.mse_loss(pdx, tdx) + F.mse_loss(pdy, tdy)
