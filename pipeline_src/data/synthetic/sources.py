"""Image content that ships inside scikit-image (no download): photographs, textures and one real depth map.

Only loaders that read files bundled in the wheel are used; those that go through pooch (a network
download) are left out, since no data host can be reached. Every image is converted once per process
from sRGB to linear float32 and cached.
"""
from __future__ import annotations

import functools

import numpy as np

from pipeline_src.data.synthetic.srgb import srgb_to_linear

# Colour photographs for backgrounds and for filling shapes.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "motorcycle")
# Grey textures, tinted with random colours to fill shapes.
TEXTURES = ("brick", "grass", "gravel", "camera", "moon", "coins")


@functools.lru_cache(maxsize=1)
def _stereo_motorcycle() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import skimage.data

    return skimage.data.stereo_motorcycle()


def _load(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        return _stereo_motorcycle()[0]
    if name not in PHOTOS + TEXTURES:
        raise KeyError(f"unknown bundled image {name!r}; known: {', '.join(PHOTOS + TEXTURES)}")
    return getattr(skimage.data, name)()


@functools.lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    """(H, W, 3) float32 linear RGB. Shared through the cache: read-only."""
    img = srgb_to_linear(_load(name)[..., :3].astype(np.float32) / 255.0)
    img.flags.writeable = False
    return img


@functools.lru_cache(maxsize=None)
def texture(name: str) -> np.ndarray:
    """(H, W) float32 in [0, 1], a grey texture normalised to its full range (it modulates between colours)."""
    img = _load(name).astype(np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    low, high = np.percentile(img, [1, 99])
    out = np.clip((img - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=None)
def motorcycle_relative_inverse_depth() -> np.ndarray:
    """(H, W) float32 in [0, 1]: the Middlebury motorcycle's ground-truth disparity, normalised.

    Disparity is proportional to inverse depth, so after a linear map to dioptres it is a real depth map for
    the left photograph. Pixels without ground truth (NaN) take the value of the nearest valid pixel.
    """
    from scipy import ndimage

    disp = np.asarray(_stereo_motorcycle()[2], dtype=np.float32)
    invalid = ~np.isfinite(disp)
    if invalid.any():
        nearest = ndimage.distance_transform_edt(invalid, return_distances=False, return_indices=True)
        disp = disp[tuple(nearest)]
    low, high = float(disp.min()), float(disp.max())
    out = ((disp - low) / (high - low)).astype(np.float32)
    out.flags.writeable = False
    return out
