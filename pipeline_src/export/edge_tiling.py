#!/usr/bin/env python3
"""Any image size through a model with a size limit: overlapping tiles inside the limit, blended (numpy only).

Ships in the edge bundle as `edge_tiling.py`; infer.py uses it when a frame is larger than the TensorRT
engine's optimisation profile allows (a 1920x1080 or 3840x2160 frame and a 1680x1120 profile maximum). The
scheme is the evaluation stage's (pipeline_src/evaluate/tiling.py, which needs torch), restated in numpy with
rectangular tiles, because a profile's maximum need not be square:
1. the image is padded once (repeat the last row and column) to the size multiple and to at least the
   profile's minimum; tile sides, overlap and every tile origin are multiples of the size multiple, so a strided
   network sees each tile at the phase it would see the whole image;
2. tiles are all the same shape (the last one on an axis is aligned to the end);
3. each tile's output is weighted by a separable window: zero on `margin` pixels at its inner edges, a
   raised-cosine ramp over the rest of the overlap, one elsewhere; image borders get full weight; the weighted
   sum is divided by the summed weights.
For a fully convolutional model whose receptive-field radius is at most `margin`, the result equals the
whole-image result up to float rounding (tests/export/test_edge_tiling.py checks that, and that it equals the
evaluation stage's tiling).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class TileSpec:
    tile_hw: tuple[int, int]   # largest tile (height, width); multiples of size_multiple
    overlap: int               # multiple of size_multiple
    margin: int
    size_multiple: int
    min_hw: tuple[int, int] = (1, 1)


def plan(tile_hw: tuple[int, int], overlap: int, margin: int, size_multiple: int,
         min_hw: tuple[int, int] = (1, 1)) -> TileSpec:
    """The tiling actually used: tile sides rounded down and overlap rounded up to the size multiple."""
    m = int(size_multiple)
    if m < 1:
        raise ValueError(f"size multiple {size_multiple}; must be >= 1")
    tile = tuple(max(m, (int(t) // m) * m) for t in tile_hw)
    overlap_m = -(-int(overlap) // m) * m
    if overlap_m and 2 * margin >= overlap_m:
        raise ValueError(f"tiling margin {margin} leaves no blend band in overlap {overlap_m}; need 2 * margin < "
                         "overlap")
    if min(tile) < 2 * overlap_m:
        raise ValueError(f"tile {tile[1]}x{tile[0]} must be at least twice the overlap {overlap_m} on each side")
    return TileSpec(tile, overlap_m, int(margin), m, tuple(int(v) for v in min_hw))


def pad_to(x: np.ndarray, multiple: int, min_hw: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Repeat the last row/column up to a multiple of `multiple` and at least `min_hw`."""
    h, w = x.shape[-2:]
    ph = -(-max(h, min_hw[0]) // multiple) * multiple - h
    pw = -(-max(w, min_hw[1]) // multiple) * multiple - w
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
    return np.ascontiguousarray(x)


def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Origins along one axis: every `step`, the last one aligned to the end; [0] if one tile covers it."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, step)) + [length - tile]


def axis_weights(size: int, overlap: int, margin: int, at_start: bool, at_end: bool) -> np.ndarray:
    w = np.ones(size)
    band = overlap - 2 * margin
    if band <= 0:
        return w
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(band) + 0.5) / band)  # raised cosine, strictly inside (0, 1)
    if not at_start:
        w[:margin] = 0.0
        w[margin:margin + band] *= ramp
    if not at_end:
        w[size - margin:] = 0.0
        w[size - margin - band:size - margin] *= ramp[::-1]
    return w


def count_tiles(height: int, width: int, spec: TileSpec) -> int:
    xp = pad_to(np.zeros((1, 1, height, width), np.float32), spec.size_multiple, spec.min_hw)
    hp, wp = xp.shape[-2:]
    th, tw = min(spec.tile_hw[0], hp), min(spec.tile_hw[1], wp)
    return len(tile_starts(hp, th, th - spec.overlap)) * len(tile_starts(wp, tw, tw - spec.overlap))


def run_tiled(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, spec: TileSpec) -> np.ndarray:
    """run(x) computed tile by tile; x: 1 x C x H x W float32; returns 1 x C_out x H x W float32.

    `run` receives padded tiles no larger than `spec.tile_hw` and returns outputs of the same height and width.
    """
    if x.ndim != 4:
        raise ValueError(f"run_tiled takes a 1 x C x H x W array, got shape {x.shape}")
    h, w = x.shape[-2:]
    xp = pad_to(x, spec.size_multiple, spec.min_hw)
    hp, wp = xp.shape[-2:]
    th, tw = min(spec.tile_hw[0], hp), min(spec.tile_hw[1], wp)
    ys = tile_starts(hp, th, th - spec.overlap)
    xs = tile_starts(wp, tw, tw - spec.overlap)
    if len(ys) == 1 and len(xs) == 1:
        return np.ascontiguousarray(run(xp)[:, :, :h, :w])
    acc = None
    weight = np.zeros((hp, wp))
    for y0 in ys:
        wy = axis_weights(th, spec.overlap, spec.margin, y0 == 0, y0 + th == hp)
        for x0 in xs:
            wx = axis_weights(tw, spec.overlap, spec.margin, x0 == 0, x0 + tw == wp)
            out = run(np.ascontiguousarray(xp[:, :, y0:y0 + th, x0:x0 + tw]))
            if out.shape[-2:] != (th, tw):
                raise ValueError(f"the model mapped a {tw}x{th} tile to {out.shape[-1]}x{out.shape[-2]}")
            if acc is None:
                acc = np.zeros((x.shape[0], out.shape[1], hp, wp))
            tile_w = np.outer(wy, wx)
            acc[:, :, y0:y0 + th, x0:x0 + tw] += out.astype(np.float64) * tile_w
            weight[y0:y0 + th, x0:x0 + tw] += tile_w
    if float(weight.min()) <= 0.0:
        raise RuntimeError(f"tiling left pixels without weight ({spec}, image {wp}x{hp}); this is a bug")
    return np.ascontiguousarray((acc / weight)[:, :, :h, :w].astype(np.float32))
