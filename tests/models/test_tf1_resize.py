"""TF1's bilinear resize (models/layers/tf1_resize.py) against its definition, and ADNet's exact-factor slices
(models/adnet.py, what ONNX exports) against the general form."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_src.models.adnet import _resize_tf1
from pipeline_src.models.layers.tf1_resize import resize_tf1


def tf1_bilinear(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 resize_bilinear (align_corners=False, half_pixel_centers=False), written from its definition:
    src = dst * in / out, neighbours floor(src) and min(floor(src) + 1, in - 1)."""
    def axis(n_in, n_out):
        src = np.arange(n_out) * (n_in / n_out)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo
    (y0, y1, fy), (x0, x1, fx) = axis(a.shape[-2], out_h), axis(a.shape[-1], out_w)
    rows = a[..., y0, :] * (1 - fy)[:, None] + a[..., y1, :] * fy[:, None]
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx


@pytest.mark.parametrize("src, dst", [((16, 20), (6, 7)), ((8, 12), (16, 24)), ((5, 5), (5, 9)), ((16, 20), (4, 5))])
def test_general_form_is_tf1s_definition(src, dst):
    x = torch.rand(2, 3, *src, dtype=torch.float64)
    np.testing.assert_allclose(resize_tf1(x, dst).numpy(), tf1_bilinear(x.numpy(), *dst), atol=1e-12)


@pytest.mark.parametrize("factor, up", [(2, False), (4, False), (2, True)])
def test_adnets_slices_are_the_general_form_at_its_factors(factor, up):
    x = torch.rand(2, 3, 8, 12, dtype=torch.float64)
    size = (16, 24) if up else (8 // factor, 12 // factor)
    torch.testing.assert_close(_resize_tf1(x, factor, up), resize_tf1(x, size), rtol=0, atol=1e-12)
