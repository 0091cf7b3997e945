"""ATTSF, "Attention! Stay Focus!" (Tu Vo, CVPR-W / NTIRE 2021 dual-pixel defocus deblurring; code
tuvovan/ATTSF `model.py`), as in the paper's Fig. 1. f = `filters` (64), t = `triple_pass_filter` (512).

Two attention encoders with their own weights, one for the left view and one for the right
(DA = dual attention, layers/dual_attention.py; every conv 3x3 + ReLU):
    m0  DA(3, cc = 3)                                          1
    m1  conv f, conv f,                 DA(f)                  1
    m2  conv 2f, maxpool 2, conv 2f,    DA(2f)                 1/2
    m3  conv 4f, maxpool 2, conv 4f,    DA(4f)                 1/4
    m4  conv 8f, maxpool 2, conv 8f,    DA(8f)                 1/8
Bottleneck  E = DA(conv t, conv t ([m4_L, m4_R]))                                  1/8
In parallel:
    triple local x 2 (separate weights): [conv1x1, conv3x3, conv5x5] t each -> conv3x3 t -> + input -> conv3x3 t
    global non-local: 7x7 average pool -> theta, phi, g (1x1, 256) -> softmax(theta . phi) g -> 1x1 t
                      -> + pooled -> nearest upsample to 1/8 -> conv3x3 t   (theta . phi: see below)
Merge  [triple, global, m4_L, m4_R] -> conv 8f -> conv 4f                          1/8
Decoder (LeakyReLU 0.3, Keras' default), three times: up x2 -> conv, conv -> [m_L, m_R, .] -> conv
    widths 4f (1/4), 2f (1/2), f (1)
Head  conv f, conv f (LeakyReLU) -> conv f ReLU -> conv 3 ReLU -> [m0_L, m0_R, .] -> conv 9 ReLU
      -> conv1x1 3 -> sigmoid
90,771,262 parameters with the defaults (the two triple-local modules are 37.2 M of them).

The non-local product (the paper gives no formula; it cites Wang et al.'s non-local networks and Buades et
al.'s non-local means). Default `nonlocal_mode="code"`, as the released model.py computes it: theta is
`Reshape((h*w, 256))` (P x C, P = 49 grid cells), but phi is `Reshape((256, h*w))`-ed from its h x w x 256
(NHWC) tensor: a raw memory reshape, not a transpose, so the 49 x 49 "affinity" theta . phi mixes positions
and channels; softmax over its last axis, times g (P x C), reshaped back to 7 x 7 x 256. This is what produced
the published weights and numbers, and is reproduced on the NHWC memory order the Keras model had.
`nonlocal_mode="transposed"`: the textbook non-local block (Wang et al. 2018), phi transposed, so the
affinity is position by position; the reading a paper-only port would take.
Porting choices:
- The 7x7 adaptive average pool is a reshape-mean over equal bins (H/8 is a multiple of 7 once the input is
  padded to `size_multiple = 56`), and the upsample back is nearest by the same integer factor; both keep H
  and W dynamic in ONNX.
- He-normal init as in Keras (truncated normal, std sqrt(2 / fan_in) / 0.8796), biases zero.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline_src.config import ConfigError
from pipeline_src.models import MODELS
from pipeline_src.models.layers.dual_attention import DualAttention
from pipeline_src.models.layers.padding import crop_to, pad_to_multiple

NONLOCAL_MODES = ("code", "transposed")  # see the module docstring
GLOBAL_GRID = 7  # the code's AdaptiveAveragePooling2D(output_size=(7, 7))


def _conv_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU(inplace=True))


def _conv_lrelu(cin: int, cout: int, slope: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(slope, inplace=True))


class AttentionEncoder(nn.Module):
    """One view's encoder; returns the dual-attention outputs m0..m4 (the skips), full to 1/8 resolution."""

    def __init__(self, filters: int, in_channels: int = 3):
        super().__init__()
        widths = [filters, 2 * filters, 4 * filters, 8 * filters]
        # The code's i == 1: at the input (3 channels) the channel-attention bottleneck keeps all channels.
        self.input_attention = DualAttention(in_channels, reduction=1)
        stages, attentions = [], []
        cin = in_channels
        for level, width in enumerate(widths):
            pool = [] if level == 0 else [nn.MaxPool2d(2)]
            stages.append(nn.Sequential(_conv_relu(cin, width), *pool, _conv_relu(width, width)))
            attentions.append(DualAttention(width, reduction=8))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.attentions = nn.ModuleList(attentions)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = [self.input_attention(x)]
        for stage, attention in zip(self.stages, self.attentions):
            skips.append(attention(stage(skips[-1])))
        return skips


class TripleLocal(nn.Module):
    """Inception-like: 1x1, 3x3 and 5x5 branches, fused by a 3x3 conv, residual, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.branches = nn.ModuleList(_conv_relu(channels, channels, k) for k in (1, 3, 5))
        self.fuse = _conv_relu(3 * channels, channels)
        self.out = _conv_relu(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))
        return self.out(y + x)


def grid_average_pool(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Average over a grid x grid partition into equal bins: adaptive average pooling for H, W divisible by
    `grid`, written as reshape + mean so that the bin size follows the input's shape in ONNX."""
    n, c, h, w = x.shape
    if not torch.jit.is_tracing() and (h % grid or w % grid):
        raise ValueError(f"grid_average_pool needs H and W divisible by {grid}, got {h} x {w}")
    return x.reshape(n, c, grid, h // grid, grid, w // grid).mean(dim=(3, 5))


class GlobalNonLocal(nn.Module):
    """Non-local attention over a 7x7 average-pooled grid, broadcast back to the input's size."""

    def __init__(self, channels: int, inner: int, mode: str = "code"):
        super().__init__()
        if mode not in NONLOCAL_MODES:
            raise ConfigError(f"nonlocal_mode={mode!r}; accepted: {', '.join(NONLOCAL_MODES)} "
                              "(a model arg of the recipe)")
        self.mode = mode
        self.theta = _conv_relu(channels, inner, 1)
        self.phi = _conv_relu(channels, inner, 1)
        self.g = _conv_relu(channels, inner, 1)
        self.project = _conv_relu(inner, channels, 1)
        self.refine = _conv_relu(channels, channels)

    def affinity(self, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """Softmax-normalised N x P x P weights (P = 49 grid cells) from theta and phi, both N x C x 7 x 7."""
        n, c = theta.shape[0], theta.shape[1]
        theta = theta.flatten(2).transpose(1, 2)  # N x P x C, P = 49 positions
        if self.mode == "transposed":
            phi = phi.flatten(2)  # N x C x P: a true transpose of N x P x C
        else:
            # Keras Reshape((C, P)) on the NHWC tensor: reinterpret the P x C memory as C x P.
            phi = phi.permute(0, 2, 3, 1).reshape(n, c, -1)
        return torch.softmax(theta @ phi, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w = x.shape[0], x.shape[2], x.shape[3]
        pooled = grid_average_pool(x, GLOBAL_GRID)
        g = self.g(pooled).flatten(2).transpose(1, 2)  # N x P x inner
        y = self.affinity(self.theta(pooled), self.phi(pooled)) @ g
        y = y.transpose(1, 2).reshape(n, -1, GLOBAL_GRID, GLOBAL_GRID)
        y = self.project(y) + pooled
        return self.refine(F.interpolate(y, size=(h, w), mode="nearest"))


class DecoderStage(nn.Module):
    """Nearest x2, two convs, then fuse with both encoders' skips at that level."""

    def __init__(self, cin: int, width: int, skip_channels: int, slope: float):
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                _conv_lrelu(cin, width, slope), _conv_lrelu(width, width, slope))
        self.fuse = _conv_lrelu(2 * skip_channels + width, width, slope)

    def forward(self, x, skip_l, skip_r):
        return self.fuse(torch.cat([skip_l, skip_r, self.up(x)], dim=1))


class ATTSF(nn.Module):
    input_views = ("l", "r")
    task = "restoration"
    size_multiple = 56  # three 2x poolings, then the 7x7 global grid: 8 * 7

    def __init__(self, filters: int = 64, triple_pass_filter: int = 512, nonlocal_filter: int = 256,
                 nonlocal_mode: str = "code", decoder_negative_slope: float = 0.3):
        super().__init__()
        f, t = filters, triple_pass_filter
        if f < 8 or t < 8 or nonlocal_filter < 1:
            raise ValueError(f"filters={f} (>= 8, so the attention bottleneck c/8 >= 1), "
                             f"triple_pass_filter={t} (>= 8), nonlocal_filter={nonlocal_filter} (>= 1)")
        slope = decoder_negative_slope
        self.encoder_l = AttentionEncoder(f)
        self.encoder_r = AttentionEncoder(f)
        self.bottleneck = nn.Sequential(_conv_relu(16 * f, t), _conv_relu(t, t), DualAttention(t, reduction=8))
        self.triple_local = nn.Sequential(TripleLocal(t), TripleLocal(t))
        self.global_nonlocal = GlobalNonLocal(t, nonlocal_filter, nonlocal_mode)
        self.merge = nn.Sequential(_conv_relu(2 * t + 16 * f, 8 * f), _conv_relu(8 * f, 4 * f))
        self.decoder = nn.ModuleList([
            DecoderStage(4 * f, 4 * f, 4 * f, slope),
            DecoderStage(4 * f, 2 * f, 2 * f, slope),
            DecoderStage(2 * f, f, f, slope),
        ])
        self.refine = nn.Sequential(_conv_lrelu(f, f, slope), _conv_lrelu(f, f, slope),
                                    _conv_relu(f, f), _conv_relu(f, 3))
        self.head = nn.Sequential(_conv_relu(9, 9), nn.Conv2d(9, 3, 1), nn.Sigmoid())
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # Keras he_normal: truncated at 2 std, std corrected for the truncation.
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
                nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != 6):
            raise ValueError(f"ATTSF expects N x 6 x H x W (left view RGB, then right view RGB), got {tuple(x.shape)}")
        x_pad, size = pad_to_multiple(x, self.size_multiple)
        skips_l = self.encoder_l(x_pad[:, :3])
        skips_r = self.encoder_r(x_pad[:, 3:])
        e = self.bottleneck(torch.cat([skips_l[4], skips_r[4]], dim=1))
        y = self.merge(torch.cat([self.triple_local(e), self.global_nonlocal(e), skips_l[4], skips_r[4]], dim=1))
        for stage, level in zip(self.decoder, (3, 2, 1)):
            y = stage(y, skips_l[level], skips_r[level])
        y = self.head(torch.cat([skips_l[0], skips_r[0], self.refine(y)], dim=1))
        return crop_to(y, size)


@MODELS.register("attsf")
def build_attsf(**kwargs) -> ATTSF:
    return ATTSF(**kwargs)
