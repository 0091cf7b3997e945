"""Restoration metrics against scikit-image, torch twins against numpy, MS-SSIM properties, bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline_src.evaluate import metrics as M
from pipeline_src.fileio import to_float

torch.set_num_threads(1)


def _skimage_ssim(a, b):
    return structural_similarity(a, b, channel_axis=-1 if a.ndim == 3 else None, data_range=1.0, win_size=7,
                                 gaussian_weights=False, use_sample_covariance=True)


def _pairs():
    """(name, pred, target) float64 pairs of the kinds the pipeline meets."""
    rng = np.random.default_rng(7)
    rgb = rng.random((33, 47, 3))
    grey = rng.random((40, 29))
    u8 = rng.integers(0, 256, (31, 38, 3), dtype=np.uint8)
    u16 = rng.integers(0, 65536, (27, 35, 3), dtype=np.uint16)
    noisy = lambda a, s: np.clip(a + s * rng.standard_normal(a.shape), 0, 1)  # noqa: E731
    smooth = np.clip(np.linspace(0, 1, 45)[None, :, None] * np.linspace(0.2, 1, 37)[:, None, None]
                     * np.ones((1, 1, 3)), 0, 1)
    return [
        ("rgb-noisy", noisy(rgb, 0.1), rgb),
        ("grey-odd", noisy(grey, 0.05), grey),
        ("8bit-derived", to_float(np.clip(u8.astype(int) + rng.integers(-9, 10, u8.shape), 0, 255).astype(np.uint8))
         .astype(np.float64), to_float(u8).astype(np.float64)),
        ("16bit-derived", noisy(to_float(u16).astype(np.float64), 0.02), to_float(u16).astype(np.float64)),
        ("near-identical", rgb + 1e-7 * rng.standard_normal(rgb.shape), rgb),
        ("very-noisy", rng.random(rgb.shape), rgb),
        ("smooth-gradient", noisy(smooth, 0.01), smooth),
    ]


def _nchw(a: np.ndarray) -> torch.Tensor:
    a = a[..., None] if a.ndim == 2 else a
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]


@pytest.mark.parametrize("name,pred,target", _pairs(), ids=[p[0] for p in _pairs()])
def test_psnr_and_ssim_match_skimage(name, pred, target):
    assert M.psnr(pred, target) == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=1.0), abs=1e-6)
    assert M.ssim(pred, target) == pytest.approx(_skimage_ssim(pred, target), abs=1e-6)


def test_float32_inputs_are_computed_in_float64():
    pred, target = _pairs()[0][1:]
    p32, t32 = pred.astype(np.float32), target.astype(np.float32)
    reference = _skimage_ssim(p32.astype(np.float64), t32.astype(np.float64))
    assert M.ssim(p32, t32) == pytest.approx(reference, abs=1e-12)


def test_psnr_known_value_and_border_crop():
    target = np.zeros((20, 20, 3))
    pred = np.full_like(target, 0.1)  # MSE 0.01 -> 20 dB
    assert M.psnr(pred, target) == pytest.approx(20.0)
    assert M.psnr(pred, target, data_range=2.0) == pytest.approx(20.0 + 20 * np.log10(2))
    pred[:2] = 1.0  # only the border is wrong
    pred[:, :2] = 1.0
    assert M.psnr(pred, target, crop_border=2) == pytest.approx(20.0)
    assert M.psnr(target, target) == float("inf")


def test_mae_known_value():
    target = np.zeros((8, 9, 3))
    pred = target.copy()
    pred[..., 0] = 0.3
    assert M.mae(pred, target) == pytest.approx(0.1)


def test_ssim_identical_is_one_and_crop_matches_skimage_on_crop():
    pred, target = _pairs()[0][1:]
    assert M.ssim(target, target) == pytest.approx(1.0)
    assert M.ssim(pred, target, crop_border=4) == pytest.approx(_skimage_ssim(pred[4:-4, 4:-4], target[4:-4, 4:-4]))


@pytest.mark.parametrize("name,pred,target", _pairs(), ids=[p[0] for p in _pairs()])
def test_torch_twins_equal_numpy(name, pred, target):
    p, t = _nchw(pred), _nchw(target)
    assert M.ssim_torch(p, t).item() == pytest.approx(M.ssim(pred, target), abs=1e-10)
    assert M.mae_torch(p, t).item() == pytest.approx(M.mae(pred, target), abs=1e-12)
    assert M.psnr_torch(p, t).item() == pytest.approx(M.psnr(pred, target), abs=1e-8)
    # float32 (training) stays close
    assert M.ssim_torch(p.float(), t.float()).item() == pytest.approx(M.ssim(pred, target), abs=2e-5)


def test_torch_twins_are_per_image_and_differentiable():
    pairs = _pairs()
    pred, target = pairs[0][1:]
    other = pairs[5][1]
    p = torch.cat([_nchw(pred), _nchw(other)]).requires_grad_(True)
    t = torch.cat([_nchw(target), _nchw(target)])
    values = M.ssim_torch(p, t)
    assert values.shape == (2,)
    assert values[1].item() == pytest.approx(M.ssim(other, target), abs=1e-10)
    values.sum().backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()


def _large_pair(noise: float, seed: int = 3, size=(170, 183)):
    rng = np.random.default_rng(seed)
    target = np.clip(np.cumsum(rng.standard_normal((*size, 3)), axis=1) / 40 + 0.5, 0, 1)
    return np.clip(target + noise * rng.standard_normal(target.shape), 0, 1), target


def test_ms_ssim_is_one_for_identical_and_decreases_with_noise():
    _, target = _large_pair(0.0)
    assert M.ms_ssim(target, target) == pytest.approx(1.0)
    values = [M.ms_ssim(_large_pair(s)[0], target) for s in (0.01, 0.05, 0.2)]
    assert 1.0 > values[0] > values[1] > values[2] > 0


def test_ms_ssim_one_scale_equals_ssim():
    pred, target = _large_pair(0.05, size=(40, 37))
    # the uniform window at one scale is exactly our (skimage) SSIM
    assert M.ms_ssim(pred, target, weights=(1.0,), window="uniform7") == pytest.approx(M.ssim(pred, target), abs=1e-12)
    # the TF window at one scale is skimage's Gaussian SSIM (sigma 1.5, 11 taps, population covariance)
    reference = structural_similarity(pred, target, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                      sigma=1.5, use_sample_covariance=False)
    assert M.ms_ssim(pred, target, weights=(1.0,)) == pytest.approx(reference, abs=1e-10)


def test_ms_ssim_torch_equals_numpy_including_odd_sizes():
    pred, target = _large_pair(0.05, size=(171, 165))
    for window in ("gaussian11", "uniform7"):
        expected = M.ms_ssim(pred, target, window=window)
        got = M.ms_ssim_torch(_nchw(pred), _nchw(target), window=window).item()
        assert got == pytest.approx(expected, abs=1e-10)


def test_ms_ssim_halving_pads_symmetrically_like_tensorflow():
    a = np.arange(15, dtype=np.float64).reshape(3, 5)
    halved = M._halve(a)
    # last row/column repeated (SYMMETRIC pad by one), then 2x2 means
    assert halved.shape == (2, 3)
    assert halved[1, 2] == pytest.approx(a[2, 4])
    assert halved[0, 0] == pytest.approx(a[:2, :2].mean())
    torch_halved = M._halve_torch(torch.from_numpy(a)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(torch_halved, halved)


def test_metric_accumulator_rows_means_and_unavailable():
    pairs = _pairs()
    acc = M.MetricAccumulator({"psnr": M.psnr, "ssim": M.ssim, "lpips": lambda p, t: None})
    for name, pred, target in pairs[:3]:
        acc.update(name, pred, target)
    assert len(acc) == 3 and [r["image"] for r in acc.rows] == [p[0] for p in pairs[:3]]
    means = acc.means()
    assert means["psnr"] == pytest.approx(np.mean([M.psnr(p, t) for _, p, t in pairs[:3]]))
    assert means["lpips"] is None  # unavailable, never 0
    with pytest.raises(ValueError, match="already evaluated"):
        acc.update(pairs[0][0], pairs[0][1], pairs[0][2])
    with pytest.raises(ValueError, match="no images"):
        M.MetricAccumulator({"psnr": M.psnr}).means()


def test_bad_inputs_raise_clear_errors():
    a = np.zeros((10, 10, 3))
    with pytest.raises(ValueError, match="differ in shape"):
        M.psnr(a, np.zeros((10, 11, 3)))
    with pytest.raises(ValueError, match="at least 7x7"):
        M.ssim(np.zeros((6, 20)), np.zeros((6, 20)))
    with pytest.raises(ValueError, match="at least 7x7"):
        M.ssim(a, a, crop_border=2)  # 6x6 after the crop
    with pytest.raises(TypeError, match="to_float"):
        M.ssim(np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        M.mae(np.full((8, 8), np.nan), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="161x161"):
        M.ms_ssim(np.zeros((100, 200)), np.zeros((100, 200)))
    with pytest.raises(ValueError, match="unknown SSIM window"):
        M.ms_ssim(a, a, weights=(1.0,), window="box")
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(a, a, data_range=0)
    with pytest.raises(ValueError, match="N x C x H x W"):
        M.ssim_torch(torch.zeros(3, 10, 10), torch.zeros(3, 10, 10))
    with pytest.raises(ValueError, match="differ in shape"):
        M.ssim_torch(torch.zeros(1, 3, 10, 10), torch.zeros(1, 3, 10, 12))
    with pytest.raises(ValueError, match="at least 7x7"):
        M.ssim_torch(torch.zeros(1, 3, 5, 10), torch.zeros(1, 3, 5, 10))
