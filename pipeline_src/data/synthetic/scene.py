"""Layered scenes: a background with a depth map and a few fronto-parallel layers of dead-leaves shapes.

The dead-leaves model (shapes of power-law sizes dropped on top of each other) reproduces the occlusion
statistics and the 1/f spectrum of natural images; here each shape is filled with a crop of a bundled
photograph, a tinted texture, a grating or a gradient, so blur has detail to act on. The background is a
photograph or a dense dead-leaves field, on a tilted plane (for a plane under perspective, inverse depth is
affine in image coordinates) or, for the Middlebury motorcycle, on its measured depth. Object layers sit
in front of the whole background, so painting back to front is the correct occlusion order.

Depths are inverse depths in dioptres. The focus is on one object layer (never the nearest, so something
is in front of the focal plane) or, with a set probability, on a point of the background.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from pipeline_src.data.synthetic import sources
from pipeline_src.data.synthetic.params import SceneParams
from pipeline_src.data.synthetic.srgb import srgb_to_linear

FILL_KINDS = ("photo", "texture", "grating", "gradient")
FILL_PROBABILITIES = (0.35, 0.35, 0.15, 0.15)
SHAPES = ("disc", "ellipse", "rectangle")
# Share of the largest same-aspect crop of a photograph used to fill a shape / the background.
LEAF_ZOOM = (0.15, 0.6)
BACKGROUND_ZOOM = (0.5, 1.0)
GRATING_PERIOD_PX = (4.0, 32.0)


@dataclasses.dataclass(frozen=True)
class Layer:
    rgb_premultiplied: np.ndarray   # (H, W, 3) float32, linear radiance times alpha
    alpha: np.ndarray               # (H, W) float32 coverage in [0, 1]
    diopters: np.ndarray            # (H, W) float32 inverse depth (1/m); constant on fronto-parallel layers
    label: str


@dataclasses.dataclass(frozen=True)
class Scene:
    layers: tuple[Layer, ...]       # back to front
    focus_diopters: float
    info: dict                      # what was drawn, for meta.json

    @property
    def shape(self) -> tuple[int, int]:
        return self.layers[0].alpha.shape


def sample_scene(rng: np.random.Generator, height: int, width: int, scale_px: int,
                 params: SceneParams) -> Scene:
    """A scene on a canvas of height x width; shape sizes are fractions of scale_px (the output's short side)."""
    background, bg_info = _background(rng, height, width, scale_px, params)
    n_layers = int(rng.integers(params.object_layers[0], params.object_layers[1] + 1))
    depths = np.sort(rng.uniform(*params.object_diopters, size=n_layers))   # far (few dioptres) first
    objects = []
    for i, d in enumerate(depths):
        n_leaves = int(rng.integers(params.leaves_per_object_layer[0], params.leaves_per_object_layer[1] + 1))
        rgb, alpha = dead_leaves(rng, height, width, n_leaves,
                                 _radius_px(params.object_radius_fraction, scale_px), base=None)
        objects.append(Layer(rgb, alpha, np.full((height, width), d, np.float32), f"objects{i}"))
    bg_lo, bg_hi = float(background.diopters.min()), float(background.diopters.max())
    if rng.random() < params.focus_on_background_probability:
        focus, target = float(rng.uniform(bg_lo, bg_hi)), "background"
    else:
        k = int(rng.integers(0, max(n_layers - 1, 1)))     # not the nearest layer when there are several
        focus, target = float(depths[k]), f"objects{k}"
    info = {**bg_info, "background_diopters": [bg_lo, bg_hi], "object_diopters": [float(d) for d in depths],
            "focus_on": target, "focus_diopters": focus}
    return Scene((background, *objects), focus, info)


# --------------------------------------------------------------------------------------------- background
def _background(rng, height, width, scale_px, params: SceneParams) -> tuple[Layer, dict]:
    lo, hi = np.sort(rng.uniform(*params.background_diopters, size=2))
    if rng.random() < params.photo_background_probability:
        name = str(rng.choice(sources.PHOTOS))
        rgb, box, flip = photo_crop(rng, sources.photo(name), height, width, BACKGROUND_ZOOM)
        if name == "motorcycle":
            rel, _, _ = photo_crop(rng, sources.motorcycle_relative_inverse_depth(), height, width,
                                   BACKGROUND_ZOOM, box=box, flip=flip)
            depth_model = "measured (Middlebury disparity)"
        else:
            rel, depth_model = _tilted_plane(rng, height, width), "tilted plane"
        info = {"background": f"photo:{name}", "background_depth": depth_model}
    else:
        n = int(rng.integers(params.background_leaves[0], params.background_leaves[1] + 1))
        base, _ = fill(rng, height, width)
        rgb, _ = dead_leaves(rng, height, width, n, _radius_px(params.background_leaf_radius_fraction, scale_px),
                             base=base)
        rel = _tilted_plane(rng, height, width)
        info = {"background": "dead_leaves", "background_depth": "tilted plane"}
    diopters = (lo + (hi - lo) * rel).astype(np.float32)
    return Layer(rgb.astype(np.float32), np.ones((height, width), np.float32), diopters, "background"), info


def _tilted_plane(rng, height, width) -> np.ndarray:
    """Relative inverse depth in [0, 1], affine in image coordinates along a random direction."""
    theta = rng.uniform(0.0, 2.0 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xx * math.cos(theta) + yy * math.sin(theta)
    return ((ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- dead leaves
def _radius_px(fraction: tuple[float, float], scale_px: int) -> tuple[float, float]:
    return (max(fraction[0] * scale_px, 1.5), max(fraction[1] * scale_px, 1.5))


def power_law_radius(rng: np.random.Generator, r_min: float, r_max: float) -> float:
    """Radius with density proportional to r^-3 on [r_min, r_max] (the scale-invariant dead-leaves law)."""
    u = rng.random()
    return float((r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5)


def dead_leaves(rng: np.random.Generator, height: int, width: int, n_leaves: int,
                radius_range: tuple[float, float], base: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Drop n shapes, each on top of the previous ones; returns (premultiplied RGB, alpha).

    With a base image the layer is opaque from the start (a background); without, it is transparent where
    no shape fell (an object layer).
    """
    if base is None:
        rgb = np.zeros((height, width, 3), np.float32)
        alpha = np.zeros((height, width), np.float32)
    else:
        rgb = base.astype(np.float32, copy=True)
        alpha = np.ones((height, width), np.float32)
    for _ in range(n_leaves):
        radius = power_law_radius(rng, *radius_range)
        centre = (rng.uniform(0, height), rng.uniform(0, width))
        patch, (y0, y1, x0, x1) = shape_alpha(rng, height, width, centre, radius)
        if patch is None:
            continue
        colour, _ = fill(rng, y1 - y0, x1 - x0)
        a = patch[..., None]
        rgb[y0:y1, x0:x1] = a * colour + (1.0 - a) * rgb[y0:y1, x0:x1]
        alpha[y0:y1, x0:x1] = patch + (1.0 - patch) * alpha[y0:y1, x0:x1]
    return rgb, alpha


def shape_alpha(rng: np.random.Generator, height: int, width: int, centre: tuple[float, float],
                radius: float) -> tuple[np.ndarray | None, tuple[int, int, int, int]]:
    """Anti-aliased coverage of a random disc, ellipse or rectangle, inside its bounding box on the canvas.

    Coverage is 0.5 - signed distance, clipped to [0, 1]: a one-pixel linear ramp across the edge.
    Returns (None, box) when the shape misses the canvas.
    """
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    aspect = 1.0 if kind == "disc" else float(rng.uniform(0.4, 1.0))
    theta = float(rng.uniform(0.0, math.pi))
    cy, cx = centre
    reach = radius * (math.sqrt(2.0) if kind == "rectangle" else 1.0) + 1.0
    y0, y1 = max(int(math.floor(cy - reach)), 0), min(int(math.ceil(cy + reach)) + 1, height)
    x0, x1 = max(int(math.floor(cx - reach)), 0), min(int(math.ceil(cx + reach)) + 1, width)
    if y0 >= y1 or x0 >= x1:
        return None, (y0, y1, x0, x1)
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy -= cy
    dx -= cx
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    a, b = radius, radius * aspect
    if kind == "disc":
        sdf = np.hypot(u, v) - a
    elif kind == "ellipse":
        # First-order distance to the ellipse: (k0 - 1) k0 / k1 (exact on the boundary, good near it).
        k0 = np.hypot(u / a, v / b)
        k1 = np.hypot(u / (a * a), v / (b * b))
        sdf = np.where(k1 > 1e-9, k0 * (k0 - 1.0) / np.maximum(k1, 1e-9), -b)
    else:
        qx, qy = np.abs(u) - a, np.abs(v) - b
        sdf = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
    patch = np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)
    return patch, (y0, y1, x0, x1)


# ------------------------------------------------------------------------------------------------- fills
def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A colour uniform in sRGB, returned in linear light."""
    return srgb_to_linear(rng.uniform(0.0, 1.0, size=3).astype(np.float32))


def fill(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
    """(H, W, 3) linear content for a shape or a background, and a word saying which kind."""
    kind = FILL_KINDS[int(rng.choice(len(FILL_KINDS), p=FILL_PROBABILITIES))]
    if kind == "photo":
        name = str(rng.choice(sources.PHOTOS))
        return photo_crop(rng, sources.photo(name), height, width, LEAF_ZOOM)[0], kind
    if kind == "texture":
        name = str(rng.choice(sources.TEXTURES))
        t = photo_crop(rng, sources.texture(name), height, width, LEAF_ZOOM)[0]
    elif kind == "grating":
        period = rng.uniform(*GRATING_PERIOD_PX)
        t = 0.5 + 0.5 * np.sin(2.0 * math.pi * _ramp(rng, height, width) / period + rng.uniform(0, 2 * math.pi))
    else:
        t = _ramp(rng, height, width)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c1, c2 = random_colour(rng), random_colour(rng)
    return (c1 + (c2 - c1) * t[..., None].astype(np.float32)).astype(np.float32), kind


def _ramp(rng, height, width) -> np.ndarray:
    """Signed distance in pixels along a random direction."""
    theta = rng.uniform(0.0, 2.0 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return xx * math.cos(theta) + yy * math.sin(theta)


def photo_crop(rng: np.random.Generator, image: np.ndarray, height: int, width: int,
               zoom: tuple[float, float], box: tuple[int, int, int, int] | None = None,
               flip: bool | None = None) -> tuple[np.ndarray, tuple[int, int, int, int], bool]:
    """A random crop with the target's aspect ratio, resized to (height, width), maybe mirrored.

    `zoom` is the crop's share of the largest such crop that fits; passing `box` and `flip` repeats an
    earlier crop (to cut a depth map aligned with its photograph).
    """
    import cv2

    src_h, src_w = image.shape[:2]
    if box is None:
        fit = min(src_h / height, src_w / width)
        z = rng.uniform(*zoom)
        crop_h = max(int(round(height * fit * z)), 1)
        crop_w = max(int(round(width * fit * z)), 1)
        top = int(rng.integers(0, src_h - crop_h + 1))
        left = int(rng.integers(0, src_w - crop_w + 1))
        box = (top, top + crop_h, left, left + crop_w)
        flip = bool(rng.random() < 0.5)
    crop = np.ascontiguousarray(image[box[0]:box[1], box[2]:box[3]], dtype=np.float32)
    shrinking = crop.shape[0] > height
    out = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out, dtype=np.float32), box, bool(flip)
