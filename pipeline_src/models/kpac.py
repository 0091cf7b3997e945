"""KPAC: single-image and dual-pixel defocus deblurring with kernel-sharing parallel atrous convolutions.

Son, Lee, Cho, Lee, ICCV 2021. Layer for layer as the authors' TensorFlow code (`HyeongseokSon1/KPAC`
`model.py`: `Defocus_Deblur_Net6_ms` = 2 levels, `_ds` = 3 levels, `_ds_dual` = dual pixel); the tables are in
reference/PAPERS.md §1. Parameter counts match the code exactly: 1,578,277 / 2,057,893 / 2,061,493.

Porting choices (PAPERS.md §1.9):
- Stride-2 convs, argument `stride2_padding`. The authors' TF 'SAME' pads a 3x3 stride-2 conv on an even size
  0 before and 1 after (bottom/right); `tf_same` does exactly that and is what the authors' released weights
  need (`pretrained/single_2level.npz`, `single_3level.npz`, `dual.npz` in HyeongseokSon1/KPAC; the
  `import-weights` stage sets it and matches the authors' graph to 1e-5, tests/weights_import/). `symmetric`
  (1 and 1, PyTorch's usual padding=1) is the default, so checkpoints trained before the argument existed load
  unchanged; for training from scratch the one-pixel phase shift does not matter. The model pads its input to
  a multiple of 2^levels, so every stride-2 conv sees even sizes and the fixed (0, 1) pad is TF's exact rule.
- A 4x4 stride-2 'SAME' deconv is exactly ConvTranspose2d(k=4, s=2, p=1) (TF pads it 1 and 1).
- The output is not clipped: the authors clip only when writing PNGs, and clipping inside the model would stop
  the gradient of out-of-range pixels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline_src.models import MODELS
from pipeline_src.models.layers.padding import crop_to, pad_to_multiple

NEGATIVE_SLOPE = 0.2  # TF leaky_relu default, used by the authors
INIT_STD = 0.04  # the authors' weight initialiser N(0, 0.04^2); biases start at 0
INIT_MODES = ("authors", "torch")  # "torch" = PyTorch's default initialisers


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, NEGATIVE_SLOPE)


def _conv(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # 'SAME' padding for odd kernels
    return nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation)


class TFSameStride2Conv(nn.Conv2d):
    """3x3 stride-2 conv padded as TF 'SAME' pads an even size: 0 rows/columns before, 1 after.

    A Conv2d subclass, so its parameters keep the names `weight` and `bias` whatever the padding mode.
    """

    def __init__(self, cin: int, cout: int):
        # TF 'SAME' on an even size n: pad total = (n/2 - 1) * 2 + 3 - n = 1, the odd one after
        super().__init__(cin, cout, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)))


# `stride2_padding` -> the 3x3 stride-2 conv. "symmetric" = pad 1 and 1 (the default: checkpoints trained before
# the argument existed load unchanged); "tf_same" = 0 before, 1 after (the authors' graph, needed by their weights)
STRIDE2_CONVS = {
    "symmetric": lambda cin, cout: _conv(cin, cout, 3, stride=2),
    "tf_same": TFSameStride2Conv,
}
STRIDE2_PADDINGS = tuple(STRIDE2_CONVS)


def _deconv(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)


class KPACBlock(nn.Module):
    """One KPAC block (PAPERS.md §1.4): shared-weight atrous branches, scale and shape attention, fusion.

    Both attentions are computed from the block input, not from the atrous outputs, and there is no residual
    inside the block (the authors commented it out).
    """

    def __init__(self, channels: int = 96, branch_channels: int = 48, kernel_size: int = 5,
                 dilations: tuple[int, ...] = (1, 2, 3, 4, 5)):
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.branch_channels = branch_channels
        n = len(self.dilations)
        # One weight for every dilation and no bias: the authors build the five AtrousConv2dLayers in one
        # variable scope with reuse=True and b_init=None.
        self.shared_weight = nn.Parameter(torch.empty(branch_channels, channels, kernel_size, kernel_size))
        self.scale_attention = nn.ModuleList([
            _conv(channels, 32, 5, dilation=2),
            _conv(32, 32, 5, dilation=2),
            _conv(32, 16, 5, dilation=2),
            _conv(16, 16, 5, dilation=2),
            _conv(16, n, 5),  # one map per dilation branch, sigmoid (the softmax line is commented out)
        ])
        hidden = branch_channels // 4  # 12 in the code (the paper's text says 16; the counts confirm 12)
        self.shape_attention = nn.ModuleList([
            nn.Conv2d(channels, hidden, 1),
            nn.Conv2d(hidden, branch_channels, 1),
        ])
        self.fuse = _conv(n * branch_channels, channels, 3)
        nn.init.kaiming_uniform_(self.shared_weight, a=5 ** 0.5)  # PyTorch's Conv2d default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.shared_weight.shape[-1] // 2
        branches = [_lrelu(F.conv2d(x, self.shared_weight, padding=pad * d, dilation=d)) for d in self.dilations]
        features = torch.stack(branches, dim=1)  # N x branches x 48 x H x W

        a = x
        for i, conv in enumerate(self.scale_attention):
            a = conv(a)
            a = torch.sigmoid(a) if i == len(self.scale_attention) - 1 else _lrelu(a)
        scale = a.unsqueeze(2)  # N x branches x 1 x H x W: map k weights every channel of branch k

        g = F.adaptive_avg_pool2d(x, 1)
        g = _lrelu(self.shape_attention[0](g))
        shape = torch.sigmoid(self.shape_attention[1](g)).unsqueeze(1)  # same 48-vector for every branch

        attended = (features * scale * shape).flatten(1, 2)  # concat in dilation order 1..n
        return _lrelu(self.fuse(attended))


class KPAC(nn.Module):
    """Single-image KPAC; `levels` = 2 (`Defocus_Deblur_Net6_ms`) or 3 (`Defocus_Deblur_Net6_ds`).

    Input N x 3 x H x W in [0, 1]; output the same, computed in the authors' [-1, 1] space with a global
    residual: out = (net(2x - 1) + (2x - 1) + 1) / 2. `stride2_padding`: "symmetric" (default) or "tf_same"
    (the authors' graph; see the module docstring).
    """

    input_views: tuple[str, ...] = ("c",)
    task = "restoration"
    # channels the convolutions see; the dual variant feeds L and R and adds the residual to C
    conv_in_channels = 3

    def __init__(self, levels: int = 2, num_blocks: int = 2, channels: int = 48, kernel_size: int = 5,
                 dilations: tuple[int, ...] = (1, 2, 3, 4, 5), init: str = "authors",
                 stride2_padding: str = "symmetric"):
        super().__init__()
        if levels not in (2, 3):
            raise ValueError(f"KPAC levels={levels!r}: the paper's models have 2 or 3 encoder levels")
        if int(num_blocks) < 1:
            raise ValueError(f"KPAC num_blocks={num_blocks!r}: need at least one KPAC block")
        if init not in INIT_MODES:
            raise ValueError(f"KPAC init={init!r}: accepted {INIT_MODES}")
        if stride2_padding not in STRIDE2_PADDINGS:
            raise ValueError(f"KPAC stride2_padding={stride2_padding!r}: accepted {STRIDE2_PADDINGS}")
        self.stride2_padding = stride2_padding
        self.levels = levels
        self.size_multiple = 2 ** levels
        c, c2 = channels, 2 * channels

        self.c0 = _conv(self.conv_in_channels, c, 5)
        self.c0_2 = _conv(c, c, 3)  # skip f1
        self.c2 = STRIDE2_CONVS[stride2_padding](c, c)
        self.c2_2 = _conv(c, c, 3)  # skip f2
        self.c3 = STRIDE2_CONVS[stride2_padding](c, c2)
        self.c3_2 = _conv(c2, c2, 3)  # skip f3 in the 3-level model
        if levels == 3:
            self.c4 = STRIDE2_CONVS[stride2_padding](c2, c2)
            self.c4_2 = _conv(c2, c2, 3)

        self.blocks = nn.ModuleList(
            [KPACBlock(c2, c, kernel_size, dilations) for _ in range(int(num_blocks))]
        )
        self.cm_1 = _conv(c2 * (1 + int(num_blocks)), c2, 3)  # dense concat of encoder and block outputs
        self.cm_2 = _conv(c2, c2, 3)

        if levels == 3:
            self.d0 = _deconv(c2, c2)
            self.d0_2 = _conv(2 * c2, c2, 3)
        self.d1 = _deconv(c2, c)
        self.d1_2 = _conv(2 * c, c, 3)
        self.d2 = _deconv(c, c)
        self.d2_2 = _conv(2 * c, 3, 5)

        if init == "authors":
            self._init_like_authors()

    def _init_like_authors(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, INIT_STD)

    def _residual_base(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        f1 = _lrelu(self.c0_2(_lrelu(self.c0(x))))
        f2 = _lrelu(self.c2_2(_lrelu(self.c2(f1))))
        n = _lrelu(self.c3_2(_lrelu(self.c3(f2))))
        if self.levels == 3:
            f3 = n
            n = _lrelu(self.c4_2(_lrelu(self.c4(f3))))

        stack = [n]
        for block in self.blocks:
            n = block(n)
            stack.append(n)
        n = _lrelu(self.cm_2(_lrelu(self.cm_1(torch.cat(stack, dim=1)))))

        if self.levels == 3:
            n = _lrelu(self.d0_2(torch.cat([_lrelu(self.d0(n)), f3], dim=1)))
        n = _lrelu(self.d1_2(torch.cat([_lrelu(self.d1(n)), f2], dim=1)))
        return self.d2_2(torch.cat([_lrelu(self.d2(n)), f1], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = 3 * len(self.input_views)
        # shapes are static Python ints in eager mode; under the ONNX tracer the check would only warn
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != expected):
            raise ValueError(
                f"{type(self).__name__} takes N x {expected} x H x W (views {self.input_views}), got {tuple(x.shape)}"
            )
        x, size = pad_to_multiple(x, self.size_multiple)
        x = x * 2.0 - 1.0  # the authors' (x - 127.5) / 127.5
        y = self._net(x[:, : self.conv_in_channels]) + self._residual_base(x)
        return crop_to((y + 1.0) * 0.5, size)


class KPACDual(KPAC):
    """Dual-pixel KPAC (`Defocus_Deblur_Net6_ds_dual`): 3 levels on concat[L, R]; the residual is C.

    Input N x 9 x H x W = concat[L, R, C]; the convolutions see only L and R.
    """

    input_views = ("l", "r", "c")
    conv_in_channels = 6

    def __init__(self, levels: int = 3, **kwargs):
        if levels != 3:
            raise ValueError(f"kpac_dual levels={levels!r}: the authors' dual-pixel model has 3 levels")
        super().__init__(levels=3, **kwargs)

    def _residual_base(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 6:9]


@MODELS.register("kpac")
def build_kpac(**kwargs) -> KPAC:
    return KPAC(**kwargs)


@MODELS.register("kpac_dual")
def build_kpac_dual(**kwargs) -> KPACDual:
    return KPACDual(**kwargs)
