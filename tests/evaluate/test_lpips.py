"""LPIPS (AlexNet, v0.1) on random weights against a direct computation; weight files, hashes, unavailability."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline_src.errors import CheckpointError
from pipeline_src.evaluate.lpips import (
    LIN_SHA256,
    LPIPS,
    LpipsMetric,
    load_lpips,
    lpips_available,
)
from pipeline_src.fileio import sha256_file

torch.set_num_threads(1)


def _random_weight_files(tmp_path):
    """A torchvision-layout AlexNet checkpoint (features + classifier keys) and an lpips-layout lin file."""
    g = torch.Generator().manual_seed(0)
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    backbone = {}
    for i, shape in shapes.items():
        fan_in = shape[1] * shape[2] * shape[3]
        backbone[f"features.{i}.weight"] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        backbone[f"features.{i}.bias"] = torch.randn(shape[0], generator=g) * 0.01
    backbone["classifier.1.weight"] = torch.randn(8, 4, generator=g)  # ignored by LPIPS
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
           for i, c in enumerate((64, 192, 384, 256, 256))}
    alex_path, lin_path = tmp_path / "alexnet.pth", tmp_path / "alex.pth"
    torch.save(backbone, alex_path)
    torch.save(lin, lin_path)
    return alex_path, lin_path, backbone, lin


def _lpips_by_hand(x0, x1, backbone, lin):
    """The LPIPS v0.1 formula written out layer by layer from the raw weights."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def relus(x):
        x = (2 * x - 1 - shift) / scale
        w = lambda i: (backbone[f"features.{i}.weight"], backbone[f"features.{i}.bias"])  # noqa: E731
        r1 = F.relu(F.conv2d(x, *w(0), stride=4, padding=2))
        r2 = F.relu(F.conv2d(F.max_pool2d(r1, 3, 2), *w(3), padding=2))
        r3 = F.relu(F.conv2d(F.max_pool2d(r2, 3, 2), *w(6), padding=1))
        r4 = F.relu(F.conv2d(r3, *w(8), padding=1))
        r5 = F.relu(F.conv2d(r4, *w(10), padding=1))
        return [r1, r2, r3, r4, r5]

    total = torch.zeros(x0.shape[0])
    for i, (a, b) in enumerate(zip(relus(x0), relus(x1))):
        na = a / (torch.sqrt((a * a).sum(1, keepdim=True)) + 1e-10)
        nb = b / (torch.sqrt((b * b).sum(1, keepdim=True)) + 1e-10)
        weighted = ((na - nb) ** 2 * lin[f"lin{i}.model.1.weight"]).sum(1)  # 1x1 conv to one channel
        total += weighted.mean(dim=(1, 2))
    return total


def test_lpips_matches_direct_computation(tmp_path):
    alex_path, lin_path, backbone, lin = _random_weight_files(tmp_path)
    model = load_lpips(alex_path, lin_path, alexnet_sha256=sha256_file(alex_path), lin_sha256=sha256_file(lin_path))
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.rand(2, 3, 64, 72, generator=g), torch.rand(2, 3, 64, 72, generator=g)
    with torch.no_grad():
        got = model(x0, x1)
        expected = _lpips_by_hand(x0, x1, backbone, lin)
        assert got.shape == (2,)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (got, expected)
        assert torch.allclose(model(x0, x0), torch.zeros(2), atol=1e-7)


def test_metric_on_numpy_images_and_sizes(tmp_path):
    alex_path, lin_path, backbone, lin = _random_weight_files(tmp_path)
    metric = LpipsMetric(alex_path, lin_path, alexnet_sha256=None, lin_sha256=None)
    assert metric.available
    rng = np.random.default_rng(0)
    a, b = rng.random((40, 50, 3)), rng.random((40, 50, 3))
    expected = _lpips_by_hand(torch.from_numpy(a).float().permute(2, 0, 1)[None],
                              torch.from_numpy(b).float().permute(2, 0, 1)[None], backbone, lin)
    assert metric(a, b) == pytest.approx(float(expected[0]), rel=1e-5)
    with pytest.raises(ValueError, match=">= 31"):
        metric(a[:20], b[:20])
    with pytest.raises(ValueError, match="H x W x 3"):
        metric(a, b[:, :40])
    with pytest.raises(TypeError, match="float"):
        metric((a * 255).astype(np.uint8), (b * 255).astype(np.uint8))


def test_missing_weights_make_the_metric_unavailable(tmp_path):
    alex_path, lin_path, *_ = _random_weight_files(tmp_path)
    missing = tmp_path / "absent.pth"
    assert lpips_available(alex_path, lin_path)
    assert not lpips_available(missing, lin_path)
    assert not lpips_available(alex_path, missing)
    metric = LpipsMetric(missing, lin_path)
    assert not metric.available
    assert metric(np.zeros((40, 40, 3)), np.zeros((40, 40, 3))) is None  # reported unavailable, never 0


def test_wrong_hash_or_keys_raise(tmp_path):
    alex_path, lin_path, *_ = _random_weight_files(tmp_path)
    with pytest.raises(ValueError, match="sha256"):
        load_lpips(alex_path, lin_path, alexnet_sha256=None, lin_sha256=LIN_SHA256)
    bad_lin = tmp_path / "bad_lin.pth"
    torch.save({"lin0.weight": torch.zeros(1, 64, 1, 1)}, bad_lin)
    with pytest.raises(ValueError, match="linear layers"):
        load_lpips(alex_path, bad_lin, alexnet_sha256=None, lin_sha256=None)
    with pytest.raises(CheckpointError, match="absent.pth"):
        load_lpips(tmp_path / "absent.pth", lin_path, alexnet_sha256=None, lin_sha256=None)


def test_backbone_keys_match_torchvision_layout():
    keys = set(LPIPS().backbone.state_dict())
    assert keys == {f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")}
