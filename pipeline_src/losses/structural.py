"""1 - SSIM and 1 - MS-SSIM, computed by the evaluation metrics' own torch functions (evaluate/metrics.py).

"ssim" is the skimage-compatible SSIM of the tables (7x7 uniform window), averaged over the batch.
"ms_ssim" defaults to tf.image.ssim_multiscale's definition (11x11 Gaussian, 5 scales), the loss in ATTSF's
code (5 * MAE + (1 - MS-SSIM)); it needs crops of at least 161 pixels, or fewer `weights` (scales).
"""
from __future__ import annotations

from torch import nn

from pipeline_src.evaluate.metrics import MS_SSIM_WEIGHTS, SSIM_WINDOWS, ms_ssim_torch, ssim_torch
from pipeline_src.losses import LOSSES, check_same_shape, finest


@LOSSES.register("ssim")
class SSIMLoss(nn.Module):
    def __init__(self, data_range: float = 1.0):
        super().__init__()
        self.data_range = float(data_range)

    def forward(self, pred, target):
        pred = finest(pred)
        check_same_shape(pred, target, "ssim")
        return 1.0 - ssim_torch(pred, target, data_range=self.data_range).mean()


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
