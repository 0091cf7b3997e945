"""Thin-lens defocus: the circle of confusion and the aperture's point spread functions.

Circle of confusion. A thin lens of focal length f and f-number N focused at distance z_f images a point
at distance z as a disc of diameter  c = f^2 / (N (z_f - f)) * z_f * |1/z_f - 1/z|  on the sensor. With
inverse depths d = 1/z (dioptres) the radius in pixels of pitch p is

    r = f^2 / (2 N p (1 - f d_f)) * (d_f - d)

signed: positive behind the focal plane (d < d_f), negative in front of it. The pitch is the sensor width
over the image width, so the same camera blurs a larger image by more pixels.

Dual pixel. Each pixel is split into a left and a right photodiode, each seeing one half of the aperture,
so each view is blurred by a half-disc. Behind the focal plane the rays have crossed before reaching the
sensor, in front of it they have not, so the half that lands on the left side swaps at the focal plane:
here the left view's PSF is the left half-disc behind focus and the right half-disc in front of it (the
right view mirrors it). Content behind focus therefore moves left in L and right in R, content in front
the opposite way, and the two halves add up to the full disc.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from pipeline_src.data.synthetic.params import Camera

# Sub-samples per pixel side when integrating the disc over each pixel (anti-aliased kernel edges).
_SUPERSAMPLE = 8
HALVES = ("left", "right")


def pixel_pitch_m(camera: Camera, width_px: int) -> float:
    return camera.sensor_width_mm * 1e-3 / width_px


def coc_px_per_diopter(camera: Camera, width_px: int, focus_diopters: float) -> float:
    """Pixels of CoC radius per dioptre of distance from the focal plane (thin lens)."""
    f = camera.focal_length_mm * 1e-3
    if focus_diopters * f >= 1.0:
        raise ValueError(f"focus at {focus_diopters} D is nearer than the focal length {camera.focal_length_mm} mm")
    return f * f / (2.0 * camera.f_number * pixel_pitch_m(camera, width_px) * (1.0 - f * focus_diopters))


def signed_coc_px(diopters, focus_diopters: float, camera: Camera, width_px: int):
    """Signed CoC radius in pixels: negative in front of the focal plane, positive behind it."""
    return coc_px_per_diopter(camera, width_px, focus_diopters) * (focus_diopters - np.asarray(diopters))


def max_coc_px(camera: Camera, width_px: int, diopter_range: tuple[float, float],
               focus_range: tuple[float, float]) -> float:
    """Largest |CoC| any depth in diopter_range can get with the focus anywhere in focus_range."""
    worst_focus = max(focus_range)
    gain = coc_px_per_diopter(camera, width_px, worst_focus)
    spread = max(abs(a - b) for a in diopter_range for b in focus_range)
    return gain * spread


@functools.lru_cache(maxsize=512)
def disc_psf(radius_px: float, half: str | None = None) -> np.ndarray:
    """Disc (or its left/right half) of the given radius, integrated over each pixel, summing to 1.

    Odd-sized and centred on the middle pixel. A radius below half a pixel is a single pixel (in focus).
    The returned array is shared through the cache: treat it as read-only.
    """
    if half not in (None, *HALVES):
        raise ValueError(f"half={half!r}; expected None, 'left' or 'right'")
    radius = abs(float(radius_px))
    if radius <= 0.5:
        psf = np.ones((1, 1), np.float32)
        psf.flags.writeable = False
        return psf
    n = int(math.ceil(radius))
    # Sub-sample centres never fall on x = 0, so the middle column splits evenly between the halves.
    offsets = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - 0.5
    coords = (np.arange(-n, n + 1)[:, None] + offsets[None, :]).reshape(-1)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    inside = xx * xx + yy * yy <= radius * radius
    if half == "left":
        inside &= xx < 0
    elif half == "right":
        inside &= xx > 0
    size = 2 * n + 1
    cover = inside.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).sum(axis=(1, 3)).astype(np.float64)
    psf = (cover / cover.sum()).astype(np.float32)
    psf.flags.writeable = False
    return psf


def dual_pixel_psfs(signed_radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(left view PSF, right view PSF) for a signed CoC radius, each summing to 1 (see the module note)."""
    if signed_radius_px >= 0:  # behind the focal plane (and at it, where both are one pixel)
        return disc_psf(signed_radius_px, "left"), disc_psf(signed_radius_px, "right")
    return disc_psf(signed_radius_px, "right"), disc_psf(signed_radius_px, "left")


def psf_centroid_x(psf: np.ndarray) -> float:
    """Horizontal centre of mass relative to the middle column: where the PSF moves content to."""
    cols = np.arange(psf.shape[1]) - psf.shape[1] // 2
    return float((psf.sum(axis=0) * cols).sum() / psf.sum())
