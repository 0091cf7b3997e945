"""Full-resolution inference in overlapping tiles, blended, with memory bounded by the tile size.

How it works:
1. The image is padded once to the model's size multiple (replicate, bottom/right: what the models do
   themselves), and tile side, overlap and every tile's origin are multiples of it, so a strided network sees
   each tile at the same phase as it would see the whole image.
2. Every tile has the same shape (the last one on an axis is aligned to the end), so tiles are batched.
3. Each tile's output is weighted by a separable window: zero on the `margin` pixels at its inner edges (where
   the tile's own border padding corrupts a convolution's output), a raised-cosine ramp over the rest of the
   overlap, one elsewhere; image borders get full weight. Outputs are summed and divided by the summed weights.
Consequence: for a fully convolutional model whose receptive-field radius is at most `margin`, every output
pixel is a convex combination of exact values, and the tiled result equals the whole-image result up to float
rounding (tests/evaluate/test_tiling.py). For larger receptive fields (or global attention) the blend hides the
seams; the difference is what a bounded memory costs.
Peak memory: the model's activations for `batch` tiles of `tile` x `tile`, plus one output-sized accumulator.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from pipeline_src.errors import ConfigError
from pipeline_src.models.layers.padding import crop_to, pad_to_multiple


@dataclasses.dataclass(frozen=True)
class TilePlan:
    tile: int      # multiple of size_multiple
    overlap: int   # multiple of size_multiple
    margin: int
    batch: int
    size_multiple: int

    @property
    def step(self) -> int:
        return self.tile - self.overlap


def plan_tiles(tile: int, overlap: int, margin: int, batch: int, size_multiple: int) -> TilePlan:
    """The tiling actually used: tile rounded down and overlap rounded up to the size multiple."""
    m = int(size_multiple)
    if m < 1:
        raise ConfigError(f"size_multiple {size_multiple}; must be >= 1")
    if batch < 1:
        raise ConfigError(f"tile batch {batch}; must be >= 1")
    tile_m = max(m, (tile // m) * m)
    overlap_m = math.ceil(overlap / m) * m
    if overlap_m and 2 * margin >= overlap_m:
        raise ConfigError(f"margin {margin} leaves no blend band in overlap {overlap_m}; need 2 * margin < overlap")
    if not overlap_m and margin:
        raise ConfigError(f"margin {margin} needs an overlap > 0")
    if tile_m < 2 * overlap_m:
        raise ConfigError(f"tile {tile_m} (rounded to the size multiple {m}) must be at least twice the overlap "
                          f"{overlap_m}; use a larger tile or a smaller overlap")
    return TilePlan(tile=tile_m, overlap=overlap_m, margin=margin, batch=batch, size_multiple=m)


def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Origins along one axis: every `step`, the last one aligned to the end; [0] if one tile covers it."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, step)) + [length - tile]


def axis_weights(size: int, overlap: int, margin: int, at_start: bool, at_end: bool) -> np.ndarray:
    """One tile's blend weights along one axis (float64, length `size`)."""
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


def tiled_forward(model: torch.nn.Module, x: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """model(x) computed tile by tile. x: N x C x H x W float; returns N x C_out x H x W on x's device."""
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"tiled_forward takes an N x C x H x W float tensor, got {tuple(x.shape)} {x.dtype}")
    h, w = x.shape[-2:]
    xp, _ = pad_to_multiple(x, plan.size_multiple)
    hp, wp = xp.shape[-2:]
    th, tw = min(plan.tile, hp), min(plan.tile, wp)
    ys, xs = tile_starts(hp, th, plan.step), tile_starts(wp, tw, plan.step)
    with torch.no_grad():
        if len(ys) == 1 and len(xs) == 1:
            return crop_to(_run(model, xp), (h, w))
        weight = torch.zeros(hp, wp, dtype=torch.float64)
        tiles = []
        for y in ys:
            wy = axis_weights(th, plan.overlap, plan.margin, y == 0, y + th == hp)
            for x0 in xs:
                wx = axis_weights(tw, plan.overlap, plan.margin, x0 == 0, x0 + tw == wp)
                tile_w = torch.from_numpy(np.outer(wy, wx))
                weight[y:y + th, x0:x0 + tw] += tile_w
                tiles.append((y, x0, tile_w))
        if float(weight.min()) <= 0.0:
            raise RuntimeError(f"tiling left pixels without weight (plan {plan}, image {hp}x{wp}); this is a bug")
        acc = None
        for n in range(x.shape[0]):
            for i in range(0, len(tiles), plan.batch):
                chunk = tiles[i:i + plan.batch]
                batch = torch.cat([xp[n:n + 1, :, y:y + th, x0:x0 + tw] for y, x0, _ in chunk])
                out = _run(model, batch)
                if acc is None:
                    acc = torch.zeros(x.shape[0], out.shape[1], hp, wp, dtype=torch.float64, device=out.device)
                for k, (y, x0, tile_w) in enumerate(chunk):
                    acc[n, :, y:y + th, x0:x0 + tw] += out[k].double() * tile_w.to(out.device)
        result = acc / weight.to(acc.device)
        return crop_to(result, (h, w)).to(x.dtype)


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{type(model).__name__} returned {type(out).__name__}, not a tensor; multi-scale models "
                        "return lists in training mode only: call model.eval() before evaluating")
    if out.shape[-2:] != x.shape[-2:] or out.shape[0] != x.shape[0]:
        raise ValueError(f"{type(model).__name__} maps {tuple(x.shape)} to {tuple(out.shape)}; the model contract "
                         "is N x C_out x H x W at the input's size")
    return out
