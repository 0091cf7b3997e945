"""The sRGB transfer curve (IEC 61966-2-1) and quantisation to stored integers.

Blur and noise happen in linear light; the files hold sRGB-encoded values, as a camera's JPEG/PNG does.
Neither scikit-image nor OpenCV exposes the piecewise curve itself (skimage applies it only inside colour
space conversions), so the standard's formula is written out here.
"""
from __future__ import annotations

import numpy as np

_LINEAR_KNEE = 0.0031308      # linear value where the curve changes from the line to the power law
_ENCODED_KNEE = 0.04045       # the same point on the encoded side (12.92 * _LINEAR_KNEE, rounded in the standard)


def srgb_to_linear(encoded: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light, float32."""
    v = np.clip(np.asarray(encoded, dtype=np.float32), 0.0, 1.0)
    return np.where(v <= _ENCODED_KNEE, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Linear light (clipped to [0, 1]) -> sRGB-encoded values in [0, 1], float32."""
    v = np.clip(np.asarray(linear, dtype=np.float32), 0.0, 1.0)
    return np.where(v <= _LINEAR_KNEE, v * 12.92, 1.055 * v ** (1.0 / 2.4) - 0.055).astype(np.float32)


def quantise(encoded: np.ndarray, bits: int) -> np.ndarray:
    """Values in [0, 1] -> uint8 (bits=8) or uint16 (bits=16), rounding to the nearest level."""
    dtypes = {8: np.uint8, 16: np.uint16}
    if bits not in dtypes:
        raise ValueError(f"quantise: bits={bits}; expected 8 or 16")
    top = float(np.iinfo(dtypes[bits]).max)
    return np.rint(np.clip(encoded, 0.0, 1.0) * top).astype(dtypes[bits])


def encode(linear: np.ndarray, bits: int) -> np.ndarray:
    """Linear light -> stored sRGB integers."""
    return quantise(linear_to_srgb(linear), bits)
