"""VGG16 / VGG19 convolutional features, built here (torchvision is not a dependency) with torchvision's layout.

`VGGFeatures.features` has the same module indices as torchvision's `vgg16().features` / `vgg19().features`
(conv, ReLU, ..., max-pool), so torchvision's ImageNet files (`vgg16-397923af.pth`, `vgg19-dcbb9e9d.pth`: full
classifier state dicts with keys `features.N.weight`, `classifier.N.weight`, ...) load into it with
`load_vgg_weights`, which verifies the file's SHA-256 first (reference/DATASETS.md §7).

Taps are named after the conv layer and return its output AFTER the ReLU (e.g. VGG19 "conv4_4" = index 26,
the perceptual-loss layer; VGG16 "conv1_2".."conv5_3" = indices 3, 8, 15, 22, 29, MultiANet's backbone).
The network keeps only the layers up to the deepest tap it was asked for. `ImageNetNormalize` maps [0, 1] RGB
to the input the weights expect.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from pipeline_src.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# torchvision's configurations "D" (VGG16) and "E" (VGG19): conv widths, "M" = 2x2 max-pool
CONFIGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

# ImageNet statistics the torchvision weights were trained with (RGB, [0, 1] input)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightFile:
    file_name: str
    url: str
    sha256: str | None  # full hash where one is published; the name's 8-hex prefix is always checked


# reference/DATASETS.md §7; no full SHA-256 is published for VGG19 (record it on first download)
TORCHVISION_WEIGHTS: dict[str, WeightFile] = {
    "vgg16": WeightFile(
        "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
        "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
    ),
    "vgg19": WeightFile("vgg19-dcbb9e9d.pth", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", None),
}

# torch.hub.HASH_REGEX: the hex digits after the last "-" of the file name are the start of its SHA-256
_NAME_HASH = re.compile(r"-([a-f0-9]+)\.")


def layer_names(arch: str) -> dict[str, int]:
    """Tap name -> index in `features` of the module whose output it is.

    "convB_I" = the ReLU after the I-th conv of block B (torchvision index of that ReLU); "poolB" = block B's
    max-pool.
    """
    if arch not in CONFIGS:
        raise ConfigError(f"unknown VGG architecture {arch!r}; accepted: {sorted(CONFIGS)}")
    names: dict[str, int] = {}
    index, block, conv = 0, 1, 0
    for item in CONFIGS[arch]:
        if item == "M":
            names[f"pool{block}"] = index
            index += 1
            block, conv = block + 1, 0
        else:
            conv += 1
            names[f"conv{block}_{conv}"] = index + 1  # conv at `index`, its ReLU at `index + 1`
            index += 2
    return names


def _make_layers(arch: str, num_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for item in CONFIGS[arch]:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            cin = int(item)
    return nn.Sequential(*layers[:num_layers])


class VGGFeatures(nn.Module):
    """VGG conv features returning the named taps, computed up to the deepest one only.

    `forward(x)` takes the already-normalised input (ImageNet mean/std, see `ImageNetNormalize`) and returns
    a dict tap name -> tensor, in the order the taps were given.
    """

    def __init__(self, arch: str = "vgg19", taps: tuple[str, ...] | list[str] = ("conv4_4",)):
        super().__init__()
        names = layer_names(arch)
        taps = tuple(taps)
        unknown = [t for t in taps if t not in names]
        if not taps or unknown:
            raise ConfigError(f"{arch} taps {list(taps)}: unknown {unknown}; accepted: {list(names)}")
        self.arch = arch
        self.taps = taps
        self._tap_index = {t: names[t] for t in taps}
        self.features = _make_layers(arch, max(self._tap_index.values()) + 1)
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):  # torchvision's VGG init: without weights, activations keep their scale
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        by_index = {i: t for t, i in self._tap_index.items()}
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in by_index:
                out[by_index[i]] = x
        return {t: out[t] for t in self.taps}


class ImageNetNormalize(nn.Module):
    """[0, 1] RGB -> the input torchvision's VGG weights expect. The statistics are not saved in state dicts."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_param_keys(arch: str) -> set[str]:
    """`features.*` keys of the full network (every conv's weight and bias), from the configuration alone."""
    conv_indices = [i - 1 for n, i in layer_names(arch).items() if n.startswith("conv")]
    return {f"features.{i}.{p}" for i in conv_indices for p in ("weight", "bias")}


def verify_sha256(path: Path, expected_sha256: str | None = None, sha256_prefix: str | None = None) -> str:
    """Check the file's SHA-256 against the full hash, else the prefix, else the published full hash of a
    torchvision file of that name, else the prefix in its name.

    Returns the full hash (to be recorded). A file with no hash to check against is refused: an unverified
    500 MB pickle is exactly what the check is for.
    """
    from pipeline_src.fileio import sha256_file

    known = {w.file_name: w.sha256 for w in TORCHVISION_WEIGHTS.values() if w.sha256}
    if expected_sha256 is None and sha256_prefix is None and path.name in known:
        expected_sha256 = known[path.name]
    if expected_sha256 is None and sha256_prefix is None:
        found = _NAME_HASH.findall(path.name)
        if not found:
            raise CheckpointError(
                f"{path}: no hash to verify against; pass expected_sha256 / sha256_prefix, or keep torchvision's "
                f"file name with the SHA-256 prefix in it (e.g. {TORCHVISION_WEIGHTS['vgg19'].file_name})"
            )
        sha256_prefix = found[-1]
    actual = sha256_file(path)
    if expected_sha256 is not None and actual != expected_sha256.lower():
        raise CheckpointError(f"{path}: SHA-256 is {actual}, expected {expected_sha256.lower()} "
                              "(corrupt or wrong file; fetch it again)")
    if sha256_prefix is not None and not actual.startswith(sha256_prefix.lower()):
        raise CheckpointError(
            f"{path}: SHA-256 {actual} does not start with {sha256_prefix.lower()} (corrupt, truncated or wrong file)"
        )
    return actual


def load_vgg_weights(model: VGGFeatures, path: str | os.PathLike, expected_sha256: str | None = None,
                     sha256_prefix: str | None = None) -> str:
    """Verify a torchvision VGG weight file and load its `features.*` tensors into `model`; returns its SHA-256.

    The classifier keys are ignored, and so are the feature layers past the model's deepest tap. Any other
    key the model does not have, any layer the model has and the file lacks, or a shape that differs is an
    error naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"VGG weight file {path} does not exist; fetch it with `python -m pipeline_src fetch {model.arch}`"
        )
    digest = verify_sha256(path, expected_sha256, sha256_prefix)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # re-raised with the file name; torch's message alone does not say which file
        raise CheckpointError(f"{path}: cannot be read as a PyTorch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, expected a state dict (name -> tensor)")

    full_arch_keys = _conv_param_keys(model.arch)
    wanted = model.state_dict()
    unexpected = sorted(k for k in state if not k.startswith("classifier.") and k not in full_arch_keys)
    missing = sorted(k for k in wanted if k not in state)
    if unexpected or missing:
        raise CheckpointError(
            f"{path}: not a torchvision {model.arch} state dict; missing keys {missing[:8]}, "
            f"unexpected keys {unexpected[:8]}"
        )
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                   for k, v in wanted.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong_shape:
        raise CheckpointError(f"{path}: shapes differ from {model.arch}: {wrong_shape[:8]}")
    model.load_state_dict({k: state[k] for k in wanted}, strict=True)
    log.info("loaded %s weights from %s (sha256 %s)", model.arch, path, digest)
    return digest
