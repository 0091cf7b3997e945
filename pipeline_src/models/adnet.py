"""ADNet: attentive multi-scale network for blind motion deblurring (Xu, Zhu, Quan, Ji, CVIU 2021;
code zhuyeye/Attentive-Deblurring, "RDAN"), as in the paper's Fig. 2.

Three scales, coarse (1/4) -> fine (1), run by ONE shared encoder-decoder. Scale t takes
concat[blurry resized to scale t, previous prediction resized to scale t (no gradient)] (6 channels); the
coarsest scale takes the blurry image as its "previous prediction". Each scale predicts the sharp image
directly (no global residual).

One encoder-decoder (widths 32 / 64 / 128; RAB = residual attention block, layers/residual_attention.py):
    EG1  conv5x5 6->32 ReLU,            3 x RAB(32)   -> s1       1
    EG2  conv5x5 /2 32->64 ReLU,        3 x RAB(64)   -> s2       1/2
    EG3  conv5x5 /2 64->128 ReLU,       3 x RAB(128)              1/4
    DG3  3 x RAB(128), deconv4x4 x2 128->64 ReLU, + s2             1/2
    DG2  3 x RAB(64),  deconv4x4 x2 64->32 ReLU,  + s1             1
    DG1  3 x RAB(32),  conv5x5 32->3 (linear)                      1
6,907,057 parameters.

Paper vs code (paper is the default, code is an option):
- `attention_order="parallel"` (paper Eq. 6: spatial and channel maps both from the conv output) or
  "serial" (code: channel attention computed after the spatial gate). Same parameters.
- `resize="half_pixel"` (default; the paper only says "bilinear") or "tf1" (code: TF1 `resize_images`, which
  samples at src = dst * in / out with no half-pixel offset). With "tf1" a 1/2 or 1/4 downscale keeps every 2nd or
  4th pixel and a x2 upscale puts each source pixel on the even rows and columns and averages neighbours between
  them; the authors' released weights (weights_import/adnet.py) are imported with it and reproduce their graph.
  "half_pixel" is PyTorch's `align_corners=False`: the coarse inputs are shifted by a fraction of a pixel.
Porting choices, not paper/code conflicts:
- Stride-2 5x5 convs pad (1, 2) like TF 'SAME' on even sizes; 4x4 deconvs pad 1, which equals TF 'SAME'.
- Weights Xavier-uniform, biases zero (paper Sec. 4.2 and the code's arg_scope).
- Training mode returns the 3 raw predictions (no clamping, the loss sees them as they are); eval mode
  returns the finest one clamped to [0, 1], the model contract's range. `predictions(x)` gives the raw ones in
  either mode (the import's reference check compares the authors' unclipped output with it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline_src.models import MODELS
from pipeline_src.models.layers.padding import crop_to, pad_to_multiple
from pipeline_src.models.layers.residual_attention import ResidualAttentionBlock

N_SCALES = 3  # the paper's T = 3 scales, factor 2 apart


def _blocks(channels: int, count: int, **block_kwargs) -> nn.Sequential:
    return nn.Sequential(*(ResidualAttentionBlock(channels, **block_kwargs) for _ in range(count)))


def _downsample(cin: int, cout: int) -> nn.Sequential:
    # TF 'SAME' for a 5x5 stride-2 conv on an even size pads 1 before and 2 after.
    return nn.Sequential(nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(cin, cout, 5, stride=2), nn.ReLU(inplace=True))


def _upsample(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.ReLU(inplace=True))


class EncoderDecoder(nn.Module):
    """One scale's network; ADNet runs the same instance at every scale."""

    def __init__(self, in_channels: int, out_channels: int, widths, blocks_per_group: int, **block_kwargs):
        super().__init__()
        w1, w2, w3 = widths
        self.enc1 = nn.Sequential(nn.Conv2d(in_channels, w1, 5, padding=2), nn.ReLU(inplace=True),
                                  _blocks(w1, blocks_per_group, **block_kwargs))
        self.enc2 = nn.Sequential(_downsample(w1, w2), _blocks(w2, blocks_per_group, **block_kwargs))
        self.enc3 = nn.Sequential(_downsample(w2, w3), _blocks(w3, blocks_per_group, **block_kwargs))
        self.dec3 = nn.Sequential(_blocks(w3, blocks_per_group, **block_kwargs), _upsample(w3, w2))
        self.dec2 = nn.Sequential(_blocks(w2, blocks_per_group, **block_kwargs), _upsample(w2, w1))
        self.dec1 = nn.Sequential(_blocks(w1, blocks_per_group, **block_kwargs),
                                  nn.Conv2d(w1, out_channels, 5, padding=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(s1)
        y = self.dec3(self.enc3(s2)) + s2
        y = self.dec2(y) + s1
        return self.dec1(y)


RESIZES = ("half_pixel", "tf1")


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _resize_tf1(x: torch.Tensor, factor: int, up: bool) -> torch.Tensor:
    """TF1 `resize_images` (bilinear, src = dst * in / out) for the exact factors ADNet's padding guarantees."""
    if not up:
        return x[..., ::factor, ::factor]  # src = factor * dst: whole pixels, no interpolation
    for dim in (2, 3):  # x2: out[2i] = in[i], out[2i + 1] = (in[i] + in[i + 1]) / 2, the last edge-clamped
        nxt = torch.cat([x.narrow(dim, 1, x.shape[dim] - 1), x.narrow(dim, x.shape[dim] - 1, 1)], dim=dim)
        x = torch.stack([x, (x + nxt) * 0.5], dim=dim + 1).flatten(dim, dim + 1)
    return x


class ADNet(nn.Module):
    input_views = ("c",)
    task = "restoration"
    size_multiple = 2 ** (N_SCALES - 1) * 4  # two stride-2 stages at the coarsest scale (1/4): 16

    def __init__(self, widths=(32, 64, 128), blocks_per_group: int = 3, kernel_size: int = 5,
                 reduction: int = 16, attention_order: str = "parallel", resize: str = "half_pixel"):
        super().__init__()
        if resize not in RESIZES:
            raise ValueError(f"resize={resize!r}; accepted: {', '.join(RESIZES)}")
        self.resize = resize
        if len(widths) != 3:
            raise ValueError(f"widths={widths!r}; ADNet needs three widths (full, 1/2, 1/4 resolution)")
        self.net = EncoderDecoder(6, 3, widths, blocks_per_group, kernel_size=kernel_size,
                                  reduction=reduction, attention_order=attention_order)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor):
        predictions = self.predictions(x)
        return predictions if self.training else predictions[-1].clamp(0.0, 1.0)

    def predictions(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three scales' raw predictions, coarse to fine, each cropped to cover the unpadded input."""
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != 3):
            raise ValueError(f"ADNet expects N x 3 x H x W (the blurry RGB image), got {tuple(x.shape)}")
        x_pad, (h, w) = pad_to_multiple(x, self.size_multiple)
        hp, wp = x_pad.shape[-2], x_pad.shape[-1]
        factors = [2 ** (N_SCALES - 1 - level) for level in range(N_SCALES)]  # 4, 2, 1
        predictions = []
        previous = None
        for factor in factors:
            size = (hp // factor, wp // factor)
            # The coarsest scale's "previous prediction" is the blurry image itself.
            if self.resize == "tf1":
                blur = x_pad if factor == 1 else _resize_tf1(x_pad, factor, up=False)
                prev = blur if previous is None else _resize_tf1(previous.detach(), 2, up=True)
            else:
                blur = x_pad if factor == 1 else _resize(x_pad, size)
                prev = blur if previous is None else _resize(previous.detach(), size)
            previous = self.net(torch.cat([blur, prev], dim=1))
            predictions.append(previous)
        return [crop_to(p, (-(-h // f), -(-w // f))) for p, f in zip(predictions, factors)]


@MODELS.register("adnet")
def build_adnet(**kwargs) -> ADNet:
    return ADNet(**kwargs)
