"""Structural-similarity losses: 1 - SSIM in the two definitions the papers' code uses, and 1 - MS-SSIM.

"ssim" is the skimage-compatible SSIM of the evaluation tables (7x7 uniform window, sample covariance),
computed by the metrics' own torch function (evaluate/metrics.py), averaged over the batch.

"tf_ssim" is `1 - tf.reduce_mean(tf.image.ssim(y_true, y_pred, 1.0))`, the SSIM term of ATTSF's released
`config.py` (`SSIMLoss`, in `loss_function` and in Eq. 1's "SSIMLoss"). tf.image.ssim, as TensorFlow's
image_ops_impl.py computes it (`_fspecial_gauss`, `_ssim_helper`, `_ssim_per_channel`, `ssim`):
  - window: an 11 x 11 Gaussian, sigma 1.5, taps softmax(-(i^2 + j^2) / (2 sigma^2)) over i, j in -5..5
    (normalised to sum 1; the outer product of the normalised 1-D taps, which is how it is applied here);
  - every local mean is a depthwise convolution with that window, padding VALID (no border values);
  - c1 = (0.01 max_val)^2, c2 = (0.03 max_val)^2; population statistics (compensation 1.0);
  - luminance = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1);
    cs = (2 E[xy] - 2 mu_x mu_y + c2) / (E[x^2] + E[y^2] - mu_x^2 - mu_y^2 + c2);
  - SSIM of a channel = the spatial mean of luminance * cs over the valid region; of an image = the mean
    over channels; the loss averages over the batch. Images need at least 11 x 11 pixels (TF asserts it).
It differs from "ssim" (window, weights, covariance, region), so a training term and the evaluation metric
that shares its name are two numbers; the evaluation keeps its protocol's SSIM.

"ms_ssim" defaults to tf.image.ssim_multiscale's definition (11x11 Gaussian, 5 scales), the loss in ATTSF's
code (5 * MAE + (1 - MS-SSIM)); it needs crops of at least 161 pixels, or fewer `weights` (scales).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline_src.config import ConfigError
from pipeline_src.evaluate.metrics import K1, K2, MS_SSIM_WEIGHTS, SSIM_WINDOWS, ms_ssim_torch, ssim_torch
from pipeline_src.losses import LOSSES, check_same_shape, finest

TF_SSIM_FILTER_SIZE = 11
TF_SSIM_FILTER_SIGMA = 1.5


def gaussian_taps(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """TF's _fspecial_gauss as 1-D taps: its 2-D softmax kernel is the outer product of these."""
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2.0
    return torch.softmax(-0.5 * coords.square() / sigma ** 2, dim=0)


def tf_ssim_torch(pred: torch.Tensor, target: torch.Tensor, max_val: float = 1.0,
                  filter_size: int = TF_SSIM_FILTER_SIZE, filter_sigma: float = TF_SSIM_FILTER_SIGMA) -> torch.Tensor:
    """tf.image.ssim on N x C x H x W tensors: one value per image (shape N), differentiable."""
    n, c, h, w = pred.shape
    if h < filter_size or w < filter_size:
        raise ConfigError(f"loss 'tf_ssim': images are {h}x{w}; tf.image.ssim needs at least "
                          f"{filter_size}x{filter_size} (its Gaussian window): use a larger crop")
    taps = gaussian_taps(filter_size, filter_sigma, pred)
    vertical = taps.view(1, 1, -1, 1).repeat(5 * c, 1, 1, 1)
    horizontal = taps.view(1, 1, 1, -1).repeat(5 * c, 1, 1, 1)
    target = target.to(pred.dtype)
    stacked = torch.cat([pred, target, pred * target, pred.square(), target.square()], dim=1)
    stats = F.conv2d(F.conv2d(stacked, vertical, groups=5 * c), horizontal, groups=5 * c)  # VALID
    mx, my, exy, exx, eyy = stats.split(c, dim=1)
    c1, c2 = (K1 * max_val) ** 2, (K2 * max_val) ** 2
    num0, den0 = 2.0 * mx * my, mx.square() + my.square()
    luminance = (num0 + c1) / (den0 + c1)
    cs = (2.0 * exy - num0 + c2) / (exx + eyy - den0 + c2)
    return (luminance * cs).mean(dim=(-2, -1)).mean(dim=1)


@LOSSES.register("ssim")
class SSIMLoss(nn.Module):
    def __init__(self, data_range: float = 1.0):
        super().__init__()
        self.data_range = float(data_range)

    def forward(self, pred, target):
        pred = finest(pred)
        check_same_shape(pred, target, "ssim")
        return 1.0 - ssim_torch(pred, target, data_range=self.data_range).mean()


@LOSSES.register("tf_ssim")
class TFSSIMLoss(nn.Module):
    """1 - mean over the batch of tf.image.ssim(target, pred, max_val) (see the module docstring)."""

    def __init__(self, max_val: float = 1.0):
        super().__init__()
        self.max_val = float(max_val)

    def forward(self, pred, target):
        pred = finest(pred)
        check_same_shape(pred, target, "tf_ssim")
        return 1.0 - tf_ssim_torch(pred, target, max_val=self.max_val).mean()


@LOSSES.register("ms_ssim")
class MSSSIMLoss(nn.Module):
    def __init__(self, data_range: float = 1.0, weights=MS_SSIM_WEIGHTS, window: str = "gaussian11"):
        super().__init__()
        if window not in SSIM_WINDOWS:
            raise ValueError(f"loss 'ms_ssim': unknown window {window!r}; known: {', '.join(SSIM_WINDOWS)}")
        self.data_range = float(data_range)
        self.weights = tuple(float(w) for w in weights)
        self.window = window

    def forward(self, pred, target):
        pred = finest(pred)
        check_same_shape(pred, target, "ms_ssim")
        value = ms_ssim_torch(pred, target, data_range=self.data_range, weights=self.weights, window=self.window)
        return 1.0 - value.mean()
