"""Cut sliding-window training patches from a manifest into memory-mappable arrays.

    python -m pipeline_src patches --manifest data/manifests/X.json --out data/patches/X --preset default
                                   [--size S --stride T --val-stride V --discard-fraction F]

Output (written under a temporary name and renamed into place when complete):
    <out>/meta.json              settings, manifest path and sha256, per-patch (sample index, y, x)
    <out>/<split>/<key>.npy      one array per key, patch i of every array = the same window of one sample:
                                 views and target (N, S, S, 3) uint8/uint16 (bit depth kept),
                                 mask (N, S, S) uint8 0/1 (1 = in focus), defocus (N, S, S) float32
Only train and val get patches; test is evaluated on full images.

Windows: a stride grid from the top-left corner plus a last row and column aligned to the bottom and right
borders, so every pixel is covered and no window leaves the image; each window appears once. An image
smaller than the patch is an error naming it (padding would teach a network the padding).

Sharpness discard (DPDNet, `image_to_patch_filter.py`): per image, the Sobel gradient magnitude of the
grayscale target summed over each window at ksize 3, 7, 11 and 15; each of the four scores min-max
normalised over the image's windows, multiplied; the int(fraction x n) lowest dropped. Train split only,
as DPDNet (val keeps every window). Datasets without a target (detection) skip it and meta.json says so.

Why .npy arrays: a training step reads random patches; from an uncompressed array opened with
np.load(mmap_mode="r") a patch is one contiguous read and no decode, where a PNG patch costs a zlib
inflate (see the bench-patches stage and the README for the measured difference).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

from pipeline_src.errors import ConfigError, DataError, UnknownNameError

PATCH_FORMAT = 1
PATCH_SPLITS = ("train", "val")
SOBEL_KSIZES = (3, 7, 11, 15)
_SETTING_KEYS = {"size", "stride", "val_stride", "discard_fraction", "splits"}


@dataclasses.dataclass(frozen=True)
class PatchSettings:
    size: int
    stride: int
    val_stride: int | None = None        # None: the patch size (non-overlapping val windows, like DPDNet)
    discard_fraction: float = 0.0        # of each train image's windows, the flattest dropped
    splits: tuple[str, ...] = PATCH_SPLITS

    def __post_init__(self):
        for name in ("size", "stride", "val_stride"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"patches.{name} = {value!r}; expected a positive integer")
        for name, stride in (("stride", self.stride), ("val_stride", self.val_stride)):
            if stride is not None and stride > self.size:
                raise ConfigError(f"patches.{name} = {stride} > size {self.size}: windows would skip pixels")
        if not 0.0 <= self.discard_fraction < 1.0:
            raise ConfigError(f"patches.discard_fraction = {self.discard_fraction!r}; expected 0 <= f < 1")
        bad = [s for s in self.splits if s not in PATCH_SPLITS]
        if bad or not self.splits:
            raise ConfigError(f"patches.splits = {list(self.splits)}; expected a non-empty subset of {PATCH_SPLITS}")

    def stride_for(self, split: str) -> int:
        return self.stride if split == "train" else (self.val_stride or self.size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="manifest written by `index`")
    parser.add_argument("--out", required=True, help="patch folder to write, e.g. data/patches/dpdd-560-140")
    parser.add_argument("--preset", default="default", help="section of --presets to read (smoke|default|paper)")
    parser.add_argument("--presets", default="config/presets.yaml", help="scale presets file")
    parser.add_argument("--size", type=int, help="patch size (overrides the preset)")
    parser.add_argument("--stride", type=int, help="train stride (overrides the preset)")
    parser.add_argument("--val-stride", type=int, help="val stride (overrides the preset; default = size)")
    parser.add_argument("--discard-fraction", type=float, help="DPDNet sharpness discard on train (0 = off)")
    parser.add_argument("--splits", nargs="+", choices=PATCH_SPLITS, help="splits to cut (default: preset)")
    parser.add_argument("--workers", type=int, default=2, help="threads reading images ahead")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.presets, args.preset)
    overrides = {"size": args.size, "stride": args.stride, "val_stride": args.val_stride,
                 "discard_fraction": args.discard_fraction,
                 "splits": tuple(args.splits) if args.splits else None}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    meta = write_patches(args.manifest, args.out, settings, workers=args.workers)
    counts = ", ".join(f"{split} {info['count']}" for split, info in meta["splits"].items())
    print(f"{args.out}: {settings.size}px patches, stride {settings.stride}: {counts}")
    return 0


def load_settings(presets_path: str | Path, preset: str) -> PatchSettings:
    import yaml

    presets = yaml.safe_load(Path(presets_path).read_text()) or {}
    if preset not in presets:
        raise UnknownNameError(f"{presets_path}: no preset {preset!r}; known: {', '.join(presets)}")
    section = (presets[preset] or {}).get("patches") or {}
    unknown = set(section) - _SETTING_KEYS
    if unknown or "size" not in section or "stride" not in section:
        raise ConfigError(f"{presets_path}: {preset}.patches = {section}; needs size and stride, may have "
                          f"{sorted(_SETTING_KEYS - {'size', 'stride'})}, unknown keys {sorted(unknown)}")
    if "splits" in section:
        section = {**section, "splits": tuple(section["splits"])}
    try:
        return PatchSettings(**section)
    except ConfigError as exc:  # the settings name their field; add where it was read
        raise ConfigError(f"{presets_path}: {preset}.{exc}") from exc


# ------------------------------------------------------------------------------------------------ windows
def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets along one axis: 0, stride, 2*stride, ... and the border-aligned length - size."""
    if length < size:
        raise ConfigError(f"length {length} < patch size {size}")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def window_grid(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """(y, x) of every window, row by row."""
    return [(y, x) for y in window_starts(height, size, stride) for x in window_starts(width, size, stride)]


# ---------------------------------------------------------------------------------------------- sharpness
def sharpness_scores(target, windows: list[tuple[int, int]], size: int):
    """DPDNet's per-window sharpness of an RGB target (see the module docstring); higher = sharper."""
    import cv2
    import numpy as np

    gray = cv2.cvtColor(target, cv2.COLOR_RGB2GRAY)   # DPDNet: BGR2GRAY on BGR data, the same luma
    energy = np.empty((len(SOBEL_KSIZES), len(windows)))
    for j, (y, x) in enumerate(windows):
        # Sobel per patch, not on the whole image, so the patch borders are handled as DPDNet does.
        patch = np.ascontiguousarray(gray[y:y + size, x:x + size])
        for i, k in enumerate(SOBEL_KSIZES):
            gx = cv2.Sobel(patch, cv2.CV_64F, 1, 0, ksize=k)
            gy = cv2.Sobel(patch, cv2.CV_64F, 0, 1, ksize=k)
            energy[i, j] = np.sqrt(gx * gx + gy * gy).sum()
    low = energy.min(axis=1, keepdims=True)
    span = energy.max(axis=1, keepdims=True) - low
    # All windows equally sharp at one ksize: that factor carries no ranking, so it is 1 for all.
    normalised = np.where(span > 0, (energy - low) / np.where(span > 0, span, 1.0), 1.0)
    return normalised.prod(axis=0)


def keep_after_discard(scores, fraction: float) -> list[int]:
    """Indices kept after dropping the int(fraction * n) lowest scores (ties: the earlier window goes
    first, as DPDNet's repeated argmin), in window order."""
    import numpy as np

    drop = set(np.argsort(scores, kind="stable")[: int(fraction * len(scores))].tolist())
    return [i for i in range(len(scores)) if i not in drop]


# ---------------------------------------------------------------------------------------------- writing
@dataclasses.dataclass
class _SamplePlan:
    index: int                  # in manifest["samples"]
    sample: dict
    windows: list[tuple[int, int]]
    n_keep: int


def write_patches(manifest_path: str | Path, out: str | Path, settings: PatchSettings, workers: int = 2) -> dict:
    from pipeline_src.data.samples import array_keys, load_manifest, manifest_sha256, samples_of
    from pipeline_src.fileio import atomic_dir, atomic_write_json

    manifest = load_manifest(manifest_path)
    keys = array_keys(manifest)
    discard_on = settings.discard_fraction > 0 and manifest["has_target"]
    meta = {
        "format": PATCH_FORMAT,
        "dataset": manifest["dataset"],
        "layout": manifest["layout"],
        "manifest": str(manifest_path),
        "manifest_sha256": manifest_sha256(manifest_path),
        "bit_depth": manifest["bit_depth"],
        "size": settings.size,
        "stride": settings.stride,
        "val_stride": settings.stride_for("val"),
        "views": list(manifest["views"]),
        "arrays": {k: _array_spec(k, manifest["bit_depth"], settings.size) for k in keys},
        "window_rule": "stride grid from (0, 0) plus a last row/column aligned to the bottom/right border",
        "discard": {
            "fraction": settings.discard_fraction,
            "splits": ["train"],
            "applied": discard_on,
            "method": "DPDNet: Sobel magnitude of the grey target at ksize 3,7,11,15, summed per window, "
                      "min-max normalised over the image's windows, multiplied; int(fraction*n) lowest dropped",
            **({} if discard_on or settings.discard_fraction == 0 else
               {"not_applied_because": "the dataset has no target to measure sharpness on"}),
        },
        "splits": {},
    }
    if settings.discard_fraction > 0 and not discard_on:
        print(f"{manifest_path}: no targets, so the sharpness discard is not applied (recorded in meta.json)")
    with atomic_dir(out) as tmp:
        for split in settings.splits:
            stride = settings.stride_for(split)
            fraction = settings.discard_fraction if (discard_on and split == "train") else 0.0
            plans = [_plan(i, s, manifest, settings.size, stride, fraction) for i, s in samples_of(manifest, split)]
            meta["splits"][split] = _write_split(tmp / split, manifest, plans, keys, settings.size, fraction,
                                                 workers)
            meta["splits"][split]["stride"] = stride
        atomic_write_json(tmp / "meta.json", meta)
    return meta


def _array_spec(key: str, bit_depth: int, size: int) -> dict:
    image_dtype = "uint16" if bit_depth == 16 else "uint8"
    return {
        "mask": {"dtype": "uint8", "patch_shape": [size, size], "values": "0/1, 1 = in focus"},
        "defocus": {"dtype": "float32", "patch_shape": [size, size], "values": "signed CoC radius, pixels"},
    }.get(key, {"dtype": image_dtype, "patch_shape": [size, size, 3], "values": f"RGB, {bit_depth}-bit"})


def _plan(index: int, sample: dict, manifest: dict, size: int, stride: int, fraction: float) -> _SamplePlan:
    h, w = sample["height"], sample["width"]
    if h < size or w < size:
        raise DataError(f"{Path(manifest['root']) / sample['inputs'][manifest['views'][0]]}: {w}x{h} (WxH) is "
                        f"smaller than the {size}px patch; use a smaller --size")
    windows = window_grid(h, w, size, stride)
    return _SamplePlan(index, sample, windows, len(windows) - int(fraction * len(windows)))


def _write_split(folder: Path, manifest: dict, plans: list[_SamplePlan], keys: list[str], size: int,
                 fraction: float, workers: int) -> dict:
    import numpy as np

    from pipeline_src.data.samples import load_sample

    folder.mkdir(parents=True)
    total = sum(p.n_keep for p in plans)
    specs = {k: _array_spec(k, manifest["bit_depth"], size) for k in keys}
    arrays = {}
    for k, spec in specs.items():
        shape = (total, *spec["patch_shape"])
        if total == 0:   # a zero-length memmap cannot be created; an empty .npy reads the same
            np.save(folder / f"{k}.npy", np.zeros(shape, spec["dtype"]))
        else:
            arrays[k] = np.lib.format.open_memmap(folder / f"{k}.npy", mode="w+", dtype=spec["dtype"], shape=shape)
    windows_out: list[list[int]] = []
    row = 0
    loaded = _bounded_map(lambda p: (p, load_sample(manifest, p.sample)), plans, workers)
    for plan, data in loaded:
        keep = list(range(len(plan.windows)))
        if fraction > 0:
            keep = keep_after_discard(sharpness_scores(data["target"], plan.windows, size), fraction)
        for j in keep:
            y, x = plan.windows[j]
            for k, arr in arrays.items():
                arr[row] = data[k][y:y + size, x:x + size]
            windows_out.append([plan.index, y, x])
            row += 1
    for arr in arrays.values():
        arr.flush()
    return {"count": total, "dropped": sum(len(p.windows) - p.n_keep for p in plans),
            "samples": len(plans), "windows": windows_out}


def _bounded_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """fn over items in order, at most workers+1 results held at once (full images are large)."""
    items = iter(items)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
