"""Tiled inference equals whole-image inference when the receptive field fits the tile margin."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline_src.evaluate.tiling import axis_weights, plan_tiles, tile_starts, tiled_forward
from pipeline_src.models.layers.padding import crop_to, pad_to_multiple

torch.set_num_threads(1)


class FullyConv(nn.Module):
    """Three 3x3 convs (one dilated by 2): receptive-field radius 1 + 2 + 1 = 4 px, size multiple 1."""

    def __init__(self, cin: int = 3, cout: int = 3):
        super().__init__()
        self.size_multiple = 1
        self.a = nn.Conv2d(cin, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.c = nn.Conv2d(8, cout, 3, padding=1)

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


class Strided(nn.Module):
    """Stride-2 encoder and nearest upsampling, padding to a multiple of 4 like the real models.
    Receptive-field radius: 1 (down) + 2 (down2) + 4 (up, at 1/4) + 3 (nearest x4) = 10 px."""

    def __init__(self):
        super().__init__()
        self.size_multiple = 4
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.up = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        xp, size = pad_to_multiple(x, self.size_multiple)
        y = F.interpolate(F.relu(self.down2(F.relu(self.down(xp)))), scale_factor=4, mode="nearest")
        return crop_to(xp + self.up(y), size)


def _image(h, w, c=3, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((1, c, h, w), dtype=np.float32))


@pytest.mark.parametrize("h,w", [(67, 93), (40, 40), (101, 37)])
def test_tiled_equals_whole_image_for_odd_sizes(h, w):
    torch.manual_seed(0)
    model = FullyConv().eval()
    x = _image(h, w)
    plan = plan_tiles(tile=32, overlap=12, margin=4, batch=3, size_multiple=1)
    with torch.no_grad():
        whole = model(x)
    tiled = tiled_forward(model, x, plan)
    assert tiled.shape == whole.shape
    assert float((tiled - whole).abs().max()) < 1e-4


def test_strided_model_is_exact_when_tiles_are_aligned_to_its_multiple():
    torch.manual_seed(1)
    model = Strided().eval()
    x = _image(130, 97)
    plan = plan_tiles(tile=58, overlap=26, margin=10, batch=2, size_multiple=4)   # -> tile 56, overlap 28
    assert (plan.tile, plan.overlap) == (56, 28)
    with torch.no_grad():
        whole = model(x)
    assert float((tiled_forward(model, x, plan) - whole).abs().max()) < 1e-4


def test_receptive_field_beyond_the_margin_is_not_exact_but_close():
    torch.manual_seed(0)
    model = FullyConv().eval()
    x = _image(64, 64)
    plan = plan_tiles(tile=32, overlap=8, margin=1, batch=4, size_multiple=1)  # margin 1 < radius 4
    with torch.no_grad():
        whole = model(x)
    diff = float((tiled_forward(model, x, plan) - whole).abs().max())
    assert 1e-4 < diff < 0.5


def test_tile_larger_than_image_is_one_whole_image_pass():
    model = FullyConv(cin=6).eval()
    x = _image(21, 17, c=6)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    out = tiled_forward(model, x, plan_tiles(512, 64, 16, 2, 1))
    assert calls == [(1, 6, 21, 17)] and out.shape == (1, 3, 21, 17)


def test_tiles_are_batched_and_batch_size_does_not_change_the_result():
    torch.manual_seed(0)
    model = FullyConv().eval()
    x = _image(60, 75)
    results, shapes = [], []
    hook = model.register_forward_hook(lambda m, i, o: shapes.append(i[0].shape[0]))
    for batch in (1, 4, 100):
        shapes.clear()
        results.append(tiled_forward(model, x, plan_tiles(32, 12, 4, batch, 1)))
        n_tiles = len(tile_starts(60, 32, 20)) * len(tile_starts(75, 32, 20))
        assert sum(shapes) == n_tiles and max(shapes) == min(batch, n_tiles)
    hook.remove()
    assert all(torch.allclose(results[0], r, atol=1e-6) for r in results[1:])


def test_batch_of_images_is_tiled_image_by_image():
    torch.manual_seed(0)
    model = FullyConv().eval()
    x = torch.cat([_image(50, 45, seed=1), _image(50, 45, seed=2)])
    with torch.no_grad():
        whole = model(x)
    assert float((tiled_forward(model, x, plan_tiles(24, 10, 4, 2, 1)) - whole).abs().max()) < 1e-4


def test_weights_cover_every_pixel_and_ramp_inside_the_overlap():
    w = axis_weights(32, overlap=12, margin=4, at_start=False, at_end=False)
    assert (w[:4] == 0).all() and (w[-4:] == 0).all() and (w[12:20] == 1).all()
    assert np.all(np.diff(w[4:8]) > 0) and np.all((w[4:8] > 0) & (w[4:8] < 1))
    edge = axis_weights(32, 12, 4, at_start=True, at_end=True)
    assert (edge == 1).all()
    # Neighbouring tiles' ramps add to one where they cross (a partition of unity with the regular step).
    left = axis_weights(32, 12, 4, at_start=True, at_end=False)
    right = axis_weights(32, 12, 4, at_start=False, at_end=True)
    total = np.zeros(52)
    total[:32] += left
    total[20:] += right
    assert np.allclose(total, 1.0)


def test_tile_starts_cover_the_axis_and_end_aligned():
    assert tile_starts(100, 32, 20) == [0, 20, 40, 60, 68]
    assert tile_starts(32, 32, 20) == [0]
    assert tile_starts(10, 32, 20) == [0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(tile=32, overlap=12, margin=6, batch=1, size_multiple=1), "margin"),
    (dict(tile=20, overlap=12, margin=2, batch=1, size_multiple=1), "twice the overlap"),
    (dict(tile=32, overlap=0, margin=2, batch=1, size_multiple=1), "needs an overlap"),
    (dict(tile=32, overlap=8, margin=2, batch=0, size_multiple=1), "batch"),
    (dict(tile=32, overlap=8, margin=2, batch=1, size_multiple=0), "size_multiple"),
])
def test_bad_plans_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_tiles(**kwargs)


def test_models_returning_lists_or_wrong_sizes_are_refused():
    class Lister(nn.Module):
        def forward(self, x):
            return [x]

    class Shrinker(nn.Module):
        def forward(self, x):
            return x[..., 1:, :]

    x = _image(16, 16)
    with pytest.raises(TypeError, match="model.eval"):
        tiled_forward(Lister(), x, plan_tiles(64, 8, 2, 1, 1))
    with pytest.raises(ValueError, match="contract"):
        tiled_forward(Shrinker(), x, plan_tiles(64, 8, 2, 1, 1))
    with pytest.raises(ValueError, match="N x C x H x W"):
        tiled_forward(FullyConv(), x[0], plan_tiles(64, 8, 2, 1, 1))
