"""Baseline rows of the results tables: the blurry input itself, and a classical non-blind deconvolution.

- `input`: the blurry (combined-view) image scored against the target. Every deblurring number should be read
  against it (KPAC's Table 3 gives it for DPDD: 23.92 dB).
- `wiener` / `richardson_lucy`: scikit-image's `restoration.wiener` / `restoration.richardson_lucy` with a disc
  PSF (the thin-lens defocus kernel, the same `disc_psf` the synthetic generator blurs with), one radius per
  image, applied per colour channel. The image is mirrored at its borders first, by twice the radius, because
  both methods assume periodic boundaries and would otherwise ring at the edges.
  Radius: the median |CoC| of the synthetic defocus map when the dataset has one ("oracle" radius: the best a
  single disc can do). Otherwise it is estimated from edges (Zhuo & Sim, Pattern Recognition 2011): re-blur the
  grey image with a Gaussian of sigma s0; at Canny edges the gradient-magnitude ratio R = |grad I| / |grad I_s0|
  gives the edge's blur sigma = s0 / sqrt(R^2 - 1); the median over edges, times 2 (a disc of radius r has a
  per-axis standard deviation of r / 2), is the radius. A radius under half a pixel means "in focus": the
  image is returned unchanged rather than sharpened by a one-pixel kernel.
- `sharpness` (blur detection): multi-scale local Laplacian energy with a threshold chosen on the val split
  (evaluate/sharpness.py); it returns logits, which the detection protocol turns into probabilities.
Settings (balance, iterations, estimator sigmas, sharpness scales) live in config/protocols.yaml
`baseline_settings`; the sharpness threshold is fitted by the evaluate stage and passed in as `sharpness_fit`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

MIN_RADIUS_PX = 0.5  # disc_psf's own threshold: below it the PSF is one pixel


@dataclasses.dataclass(frozen=True)
class BaselineOutput:
    image: np.ndarray            # float32 H x W x 3 (a deconvolution's output is not clipped yet), or H x W logits
    radius_px: float | None      # disc radius used (deconvolutions only)
    radius_source: str | None    # "defocus map median |CoC|" | "edge estimate (Zhuo & Sim 2011)"


def disc_kernel(radius_px: float) -> np.ndarray:
    from pipeline_src.data.synthetic.optics import disc_psf

    kernel = np.array(disc_psf(float(radius_px)), dtype=np.float64)  # a copy: the cached array is read-only
    return kernel / kernel.sum()  # renormalised in float64 (the generator's kernel is float32)


def estimate_disc_radius(image: np.ndarray, reblur_sigma: float = 1.0, canny_sigma: float = 1.0,
                         max_radius_px: float = 32.0) -> float:
    """Defocus disc radius (px) of an RGB or grey float image, from the edge gradient ratio (see module doc)."""
    from scipy import ndimage
    from skimage import color, feature, filters

    if image.ndim not in (2, 3):
        raise ValueError(f"estimate_disc_radius takes H x W or H x W x 3 floats, got shape {image.shape}")
    grey = color.rgb2gray(image) if image.ndim == 3 else image.astype(np.float64)
    edges = feature.canny(grey, sigma=canny_sigma)
    grad = filters.sobel(grey)[edges]
    grad_reblurred = filters.sobel(ndimage.gaussian_filter(grey, reblur_sigma))[edges]
    ok = grad_reblurred > 1e-6
    ratio = grad[ok] / grad_reblurred[ok]
    ratio = ratio[ratio > 1.0 + 1e-3]  # R <= 1 is noise, or an edge blurred beyond what s0 can measure
    if ratio.size == 0:
        return 0.0
    sigma = reblur_sigma / np.sqrt(ratio ** 2 - 1.0)
    return float(min(2.0 * np.median(sigma), max_radius_px))


def _per_channel(image: np.ndarray, radius: float, restore: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    psf = disc_kernel(radius)
    pad = 2 * int(math.ceil(radius))
    out = np.empty(image.shape, np.float32)
    for c in range(image.shape[2]):
        padded = np.pad(image[:, :, c].astype(np.float64), pad, mode="symmetric")
        out[:, :, c] = restore(padded, psf)[pad:pad + image.shape[0], pad:pad + image.shape[1]]
    return out


def wiener(image: np.ndarray, radius: float, balance: float) -> np.ndarray:
    from skimage import restoration

    return _per_channel(image, radius, lambda ch, psf: restoration.wiener(ch, psf, balance, clip=False))


def richardson_lucy(image: np.ndarray, radius: float, iterations: int) -> np.ndarray:
    from skimage import restoration

    return _per_channel(image, radius,
                        lambda ch, psf: restoration.richardson_lucy(ch, psf, num_iter=iterations, clip=False))


def _disc_radius(image: np.ndarray, defocus: np.ndarray | None, settings: dict) -> tuple[float, str]:
    if defocus is not None:
        return float(np.median(np.abs(defocus))), "defocus map median |CoC|"
    r = settings["radius"]
    radius = estimate_disc_radius(image, r["reblur_sigma"], r["canny_sigma"], r["max_radius_px"])
    return radius, "edge estimate (Zhuo & Sim 2011)"


def _deconvolution(restore: Callable[[np.ndarray, float, dict], np.ndarray]):
    def run(image: np.ndarray, defocus: np.ndarray | None, settings: dict) -> BaselineOutput:
        radius, source = _disc_radius(image, defocus, settings)
        restored = image.astype(np.float32) if radius <= MIN_RADIUS_PX else restore(image, radius, settings)
        return BaselineOutput(restored, radius, source)
    return run


def _input(image: np.ndarray, defocus: np.ndarray | None, settings: dict) -> BaselineOutput:
    return BaselineOutput(image.astype(np.float32), None, None)


def _sharpness(image: np.ndarray, defocus: np.ndarray | None, settings: dict) -> BaselineOutput:
    from pipeline_src.evaluate.sharpness import logits

    s = settings["sharpness"]
    return BaselineOutput(logits(image, settings["sharpness_fit"], tuple(s["sigmas"]), s["window"]), None, None)


# name -> fn(blurry float H x W x 3 on [0, 1], defocus map or None, baseline_settings) -> BaselineOutput
BASELINES: dict[str, Callable[[np.ndarray, np.ndarray | None, dict], BaselineOutput]] = {
    "input": _input,
    "wiener": _deconvolution(lambda im, r, s: wiener(im, r, s["wiener"]["balance"])),
    "richardson_lucy": _deconvolution(lambda im, r, s: richardson_lucy(im, r, s["richardson_lucy"]["iterations"])),
    "sharpness": _sharpness,
}
FITTED_ON_VAL = ("sharpness",)  # baselines whose parameters the evaluate stage fits on the val split first


def run_baseline(name: str, image: np.ndarray, defocus: np.ndarray | None, settings: dict) -> BaselineOutput:
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    if image.ndim != 3 or not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"baseline {name!r} takes a float H x W x C image, got {image.dtype} {image.shape}")
    if defocus is not None and defocus.shape != image.shape[:2]:
        raise ValueError(f"baseline {name!r}: defocus map {defocus.shape} does not match the image {image.shape[:2]}")
    return BASELINES[name](image, defocus, settings)
