"""Perceptual loss: MSE between VGG19 features of prediction and target (KPAC phase 2, conv4_4 after ReLU).

KPAC (Son et al., ICCV 2021) adds 7e-4 x this term to MAE in its second phase. The authors' TF code feeds
Caffe-converted weights with BGR mean subtraction; here torchvision's `vgg19-dcbb9e9d.pth` is used with ImageNet
mean/std on RGB, so feature magnitudes (and hence the best weight) can differ (reference/PAPERS.md §1.7).
As in the authors' `Vgg19_simple_api2`, the prediction is clipped to [0, 1] before the VGG.

Without the weight file the loss still runs, on random VGG weights, after a loud warning; `pretrained` says
which, so the training engine can tag the run. Those random weights come from their own seed (RANDOM_VGG_SEED),
not from the global generator: the same VGG in every run, and the model's random stream (data order, anything
drawn after the loss is built) does not depend on whether, or how many, initial weights were drawn before it.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline_src.losses import LOSSES, check_same_shape, finest
from pipeline_src.models.vgg import TORCHVISION_WEIGHTS, ImageNetNormalize, VGGFeatures, load_vgg_weights

log = logging.getLogger(__name__)

RANDOM_VGG_SEED = 19  # the VGG19 drawn when its weight file is absent; any fixed value would do


@LOSSES.register("perceptual")
class PerceptualLoss(nn.Module):
    def __init__(self, weights_path: str | os.PathLike | None = None, layer: str = "conv4_4",
                 expected_sha256: str | None = None):
        super().__init__()
        self.layer = layer
        self.normalize = ImageNetNormalize()
        with torch.random.fork_rng(devices=[]):  # the global CPU generator is left as it was
            torch.manual_seed(RANDOM_VGG_SEED)
            self.vgg = VGGFeatures("vgg19", taps=(layer,))
        path = Path(weights_path) if weights_path is not None else None
        self.pretrained = path is not None and path.is_file()
        self.weights_sha256: str | None = None
        if self.pretrained:
            # a file that is present but corrupt or wrong is an error, not a reason to fall back
            self.weights_sha256 = load_vgg_weights(self.vgg, path, expected_sha256=expected_sha256)
        else:
            where = "no weights_path was given" if path is None else f"{path} does not exist"
            msg = (
                f"PerceptualLoss: {where}, so the perceptual term runs on RANDOM VGG19 weights and is not the "
                f"paper's loss. Fetch torchvision's {TORCHVISION_WEIGHTS['vgg19'].file_name} with "
                f"`python -m pipeline_src fetch vgg19` and pass its path as weights_path."
            )
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning(msg)
        self.vgg.requires_grad_(False)
        self.vgg.eval()

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.vgg.eval()  # frozen feature extractor, whatever mode the training engine sets
        return self

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vgg(self.normalize(x))[self.layer]

    def forward(self, pred: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        pred = finest(pred)  # multi-scale output: the full-resolution prediction
        check_same_shape(pred, target, "perceptual")
        if pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"loss 'perceptual': takes N x 3 x H x W RGB in [0, 1], got {tuple(pred.shape)}")
        with torch.no_grad():
            target_features = self._features(target)
        return F.mse_loss(self._features(pred.clamp(0.0, 1.0)), target_features)
