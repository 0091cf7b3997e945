"""Occlusion-aware layered defocus in linear light.

Each layer is cut into depth slices whose circles of confusion differ by at most one step; the slices are
blurred by their own PSF and painted back to front with the "over" operator, their coverage (alpha) blurred
by the same PSF:   image = blur(rgb * alpha) + (1 - blur(alpha)) * image_behind.
A blurred near object thus spreads over what lies behind it, while a sharp near object hides blur behind
it (the usual layered approximation of the full light field, e.g. Hasinoff & Kutulakos, ICCV 2007).

A layer with a depth map (the background) is sliced so that each slice also covers everything nearer in
the same layer: the content hidden behind a nearer slice is then still there when that slice's edge is
blurred, and no dark seam appears between adjacent slices of one continuous surface.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator

import numpy as np

from pipeline_src.data.synthetic.scene import Scene

PsfOf = Callable[[float], np.ndarray]   # signed CoC radius (px) -> PSF


@dataclasses.dataclass(frozen=True)
class Slice:
    rgb_premultiplied: np.ndarray   # (H, W, 3)
    alpha: np.ndarray               # (H, W)
    coc_px: float                   # signed CoC radius used to blur it


def quantise_coc(coc_px: np.ndarray, step_px: float) -> np.ndarray:
    # + 0.0 turns the -0.0 that rounding leaves in front of the focal plane into 0.0
    return (np.round(np.asarray(coc_px, np.float64) / step_px) * step_px + 0.0).astype(np.float32)


def depth_slices(scene: Scene, coc_px_per_diopter: float, step_px: float) -> tuple[Iterator[Slice], np.ndarray]:
    """(slices back to front, signed CoC map of the all-in-focus image).

    The map holds, at each pixel, the quantised CoC of the front-most layer covering it by at least half:
    exactly the value that was used to blur what is seen there.
    """
    coc_map = np.zeros(scene.shape, np.float32)
    per_layer = []
    for layer in scene.layers:
        q = quantise_coc(coc_px_per_diopter * (scene.focus_diopters - layer.diopters), step_px)
        coc_map = np.where(layer.alpha >= 0.5, q, coc_map)
        per_layer.append(q)
    return _iter_slices(scene, per_layer), coc_map


def _iter_slices(scene: Scene, per_layer: list[np.ndarray]) -> Iterator[Slice]:
    # A generator: only one slice's arrays exist at a time (the paper preset's images are large).
    for layer, q in zip(scene.layers, per_layer):
        values = np.unique(q[layer.alpha > 0])[::-1]     # largest CoC = farthest first
        if len(values) == 1:
            yield Slice(layer.rgb_premultiplied, layer.alpha, float(values[0]))
            continue
        for v in values:
            nearer_or_here = (q <= v).astype(np.float32)
            yield Slice(layer.rgb_premultiplied * nearer_or_here[..., None], layer.alpha * nearer_or_here, float(v))


def convolve(image: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """True convolution (OpenCV's filter2D correlates, so the kernel is flipped), same size, mirrored borders."""
    import cv2

    if psf.shape == (1, 1):
        return image
    return cv2.filter2D(image, -1, cv2.flip(psf, -1), borderType=cv2.BORDER_REFLECT)


def composite(slices: Iterable[Slice], psf_of: dict[str, PsfOf], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Paint the slices back to front once per view; psf_of maps a view name to its PSF for a signed CoC."""
    views = {name: np.zeros((*shape, 3), np.float32) for name in psf_of}
    for s in slices:
        stacked = np.dstack([s.rgb_premultiplied, s.alpha]).astype(np.float32)
        for name, psf_for in psf_of.items():
            blurred = convolve(stacked, psf_for(s.coc_px))
            views[name] = blurred[..., :3] + (1.0 - blurred[..., 3:4]) * views[name]
    return views


def sharp_psf(_coc_px: float) -> np.ndarray:
    """The all-in-focus view: no blur at any depth."""
    return _DELTA


_DELTA = np.ones((1, 1), np.float32)
