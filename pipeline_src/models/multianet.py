"""MultiANet: multi-attention network for defocus blur detection (Jiang, Xu, Zhang, Zhu, MMSP 2020).

No code was released; this follows the paper's text (§III) and fills its gaps with the PFANet pattern it
builds on (reference/PAPERS.md §3.2, items marked [I] there):
- VGG16 backbone (ImageNet weights when given), taps after the ReLU of conv1_2 .. conv5_3.
- High level: conv4_3 and conv5_3 up-sampled to conv3_3's size (H/4) and concatenated (1280 ch); low level:
  conv2_2 up-sampled to conv1_2's size (H) and concatenated (192 ch). The paper feeds these "basic" features to
  the channel attention (DANet CAM, gamma = 0 at start), then each is reduced to `width` channels (conv + BN +
  ReLU; 1x1 for the wide high level, 3x3 for the low level, as PFANet).
- Spatial attention from the high-level features, two consecutive atrous 3x3 convs (`dilations`) and a sigmoid,
  up-sampled to H and multiplied into the low-level features (Eq. 3).
- Fusion: concat[attended low, up-sampled high] -> conv3x3 + BN + ReLU -> conv3x3 -> 1 logit per pixel.

Input N x 3 x H x W RGB in [0, 1]; the model applies ImageNet mean/std itself. Output N x 1 x H x W logits
(the training loss is BCE with logits; apply a sigmoid for the in-focus probability).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline_src.models import MODELS
from pipeline_src.models.layers.channel_attention import ChannelAttention
from pipeline_src.models.layers.padding import crop_to, pad_to_multiple
from pipeline_src.models.vgg import ImageNetNormalize, VGGFeatures, load_vgg_weights

TAPS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
LOW_CHANNELS = 64 + 128
HIGH_CHANNELS = 256 + 512 + 512


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    # exact factors: the input is padded to a multiple of 16, so every level divides evenly
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class SpatialAttention(nn.Module):
    """Two consecutive atrous 3x3 convs on the high-level features, then a sigmoid: one weight per pixel."""

    def __init__(self, channels: int, hidden: int, dilations: tuple[int, int]):
        super().__init__()
        d1, d2 = (int(d) for d in dilations)
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=d1, dilation=d1)
        self.conv2 = nn.Conv2d(hidden, 1, 3, padding=d2, dilation=d2)

    def forward(self, high: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv2(F.relu(self.conv1(high))))


class MultiANet(nn.Module):
    input_views: tuple[str, ...] = ("c",)
    size_multiple = 16  # four max-pools before conv5_3
    task = "detection"

    def __init__(self, vgg_weights: str | os.PathLike | None = None, vgg_sha256: str | None = None,
                 dilations: tuple[int, int] = (2, 4), width: int = 64, attention_hidden: int = 32,
                 channel_affinity: str = "similarity"):
        super().__init__()
        if len(tuple(dilations)) != 2 or any(int(d) < 1 for d in dilations):
            raise ValueError(f"MultiANet dilations={dilations!r}: need two positive atrous rates, e.g. (2, 4)")
        self.normalize = ImageNetNormalize()
        self.backbone = VGGFeatures("vgg16", taps=TAPS)
        # whether the backbone started from ImageNet weights (the training engine records it as a tag)
        self.pretrained = vgg_weights is not None
        if vgg_weights is not None:
            load_vgg_weights(self.backbone, vgg_weights, expected_sha256=vgg_sha256)

        self.high_channel_attention = ChannelAttention(channel_affinity)
        self.high_reduce = _conv_bn_relu(HIGH_CHANNELS, width, 1)
        self.low_channel_attention = ChannelAttention(channel_affinity)
        self.low_reduce = _conv_bn_relu(LOW_CHANNELS, width, 3)
        self.spatial_attention = SpatialAttention(width, attention_hidden, tuple(dilations))
        self.fuse = _conv_bn_relu(2 * width, width, 3)
        self.predict = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != 3):
            raise ValueError(f"MultiANet takes N x 3 x H x W RGB in [0, 1], got {tuple(x.shape)}")
        x, size = pad_to_multiple(x, self.size_multiple)
        c1, c2, c3, c4, c5 = self.backbone(self.normalize(x)).values()

        high = torch.cat([c3, _upsample(c4, 2), _upsample(c5, 4)], dim=1)  # H/4
        high = self.high_reduce(self.high_channel_attention(high))
        low = torch.cat([c1, _upsample(c2, 2)], dim=1)  # H
        low = self.low_reduce(self.low_channel_attention(low))

        low = low * _upsample(self.spatial_attention(high), 4)
        logits = self.predict(self.fuse(torch.cat([low, _upsample(high, 4)], dim=1)))
        return crop_to(logits, size)


@MODELS.register("multianet")
def build_multianet(**kwargs) -> MultiANet:
    return MultiANet(**kwargs)
