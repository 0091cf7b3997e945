"""LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018; richzhang/PerceptualSimilarity), without the `lpips`
or `torchvision` packages.

Formula (lpips.LPIPS(net='alex', version='0.1'), inputs given in [0, 1] as with `normalize=True`):
    x -> 2x - 1 -> ScalingLayer (x - shift) / scale, shift [-.030, -.088, -.188], scale [.458, .448, .450]
    -> AlexNet ReLU outputs relu1..relu5 (64, 192, 384, 256, 256 channels)
    -> each feature unit-normalised over channels: f / (||f||_2 + 1e-10)
    -> squared difference -> 1x1 conv (lin0..lin4, no bias, non-negative weights) -> spatial mean -> sum of layers.

Weights (reference/DATASETS.md §7), paths injectable; neither file ships with the package:
- backbone: torchvision's `alexnet-owt-7be5be79.pth` (its `features.*` keys load into AlexNetFeatures);
- linear layers: the lpips package's `weights/v0.1/alex.pth` (keys `lin{i}.model.1.weight`).
Both are verified by SHA-256 when loaded. When either file is missing `lpips_available()` is False and
`LpipsMetric` returns None: the table says "unavailable", never 0.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline_src.errors import CheckpointError

DEFAULT_ALEXNET_PATH = Path("data/weights/alexnet-owt-7be5be79.pth")
DEFAULT_LIN_PATH = Path("data/weights/lpips-v0.1-alex.pth")
ALEXNET_SHA256 = "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02"
LIN_SHA256 = "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
LAYER_CHANNELS = (64, 192, 384, 256, 256)
# index just after each ReLU whose output LPIPS uses, in torchvision's alexnet().features
LAYER_ENDS = (2, 5, 8, 10, 12)
MIN_SIZE = 31  # smallest side for which AlexNet's relu5 map is non-empty


class AlexNetFeatures(nn.Module):
    """torchvision `alexnet().features`, same indices, so `features.N.*` keys of its checkpoint load as is."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs, start = [], 0
        for end in LAYER_ENDS:
            x = self.features[start:end](x)
            outputs.append(x)
            start = end
        return outputs


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = AlexNetFeatures()
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in LAYER_CHANNELS])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-image distance (shape N) between N x 3 x H x W images in [0, 1]."""
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"LPIPS takes two N x 3 x H x W images of one shape, got {tuple(pred.shape)} "
                             f"and {tuple(target.shape)}")
        if min(pred.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS (AlexNet) needs H and W >= {MIN_SIZE}, got {tuple(pred.shape[-2:])}")
        feats = [self.backbone((2 * t - 1 - self.shift) / self.scale) for t in (pred, target)]
        total = 0
        for lin, f0, f1 in zip(self.lins, *feats):
            diff = (_unit_normalise(f0) - _unit_normalise(f1)) ** 2
            total = total + lin(diff).mean(dim=(2, 3))
        return total.flatten()


def _unit_normalise(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def lpips_available(alexnet_path: str | os.PathLike = DEFAULT_ALEXNET_PATH,
                    lin_path: str | os.PathLike = DEFAULT_LIN_PATH) -> bool:
    return Path(alexnet_path).is_file() and Path(lin_path).is_file()


def _load_verified(path: Path, expected_sha256: str | None, what: str) -> dict:
    from pipeline_src.fileio import sha256_file

    if not path.is_file():
        raise CheckpointError(f"{path}: {what} weights not found")
    if expected_sha256 is not None:
        got = sha256_file(path)
        if got != expected_sha256:
            raise CheckpointError(f"{path}: sha256 {got} does not match the expected {expected_sha256} for {what}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_lpips(alexnet_path: str | os.PathLike = DEFAULT_ALEXNET_PATH,
               lin_path: str | os.PathLike = DEFAULT_LIN_PATH,
               alexnet_sha256: str | None = ALEXNET_SHA256, lin_sha256: str | None = LIN_SHA256) -> LPIPS:
    """Build LPIPS and load both weight files (verified by hash; pass None to skip a check, e.g. in tests)."""
    model = LPIPS()
    backbone = _load_verified(Path(alexnet_path), alexnet_sha256, "AlexNet backbone")
    features = {k: v for k, v in backbone.items() if k.startswith("features.")}
    model.backbone.load_state_dict(features, strict=True)
    lin = _load_verified(Path(lin_path), lin_sha256, "LPIPS v0.1 linear layers")
    expected = {f"lin{i}.model.1.weight" for i in range(len(LAYER_CHANNELS))}
    if set(lin) != expected:
        raise CheckpointError(f"{lin_path}: keys {sorted(lin)} are not the LPIPS v0.1 linear layers {sorted(expected)}")
    for i, conv in enumerate(model.lins):
        conv.weight.copy_(lin[f"lin{i}.model.1.weight"])
    return model


class LpipsMetric:
    """numpy H x W x 3 images in [0, 1] -> LPIPS distance, or None when the weights are not present."""

    def __init__(self, alexnet_path: str | os.PathLike = DEFAULT_ALEXNET_PATH,
                 lin_path: str | os.PathLike = DEFAULT_LIN_PATH, device: str = "cpu", **hashes):
        self.available = lpips_available(alexnet_path, lin_path)
        self.device = device
        self.model = load_lpips(alexnet_path, lin_path, **hashes).to(device) if self.available else None

    def __call__(self, pred: np.ndarray, target: np.ndarray) -> float | None:
        if self.model is None:
            return None
        if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] != 3:
            raise ValueError(f"LPIPS takes two H x W x 3 RGB images of one shape, got {pred.shape} and {target.shape}")
        if not (np.issubdtype(pred.dtype, np.floating) and np.issubdtype(target.dtype, np.floating)):
            raise TypeError(f"LPIPS takes float images in [0, 1], got {pred.dtype} and {target.dtype}")

        def to_tensor(a):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[None].to(self.device)

        with torch.no_grad():
            return float(self.model(to_tensor(pred), to_tensor(target))[0])
