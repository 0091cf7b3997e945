"""Benchmark: random patch reads from the patch arrays (.npy, memory-mapped) against PNG files, and random
crops of the memory-mapped whole images against the windows.

    python -m pipeline_src bench-patches --patches data/patches/X [--split train] [--reads 200]
                                         [--repeats 3] [--full-images] [--out bench.json]

A "read" is what one training item needs: the same window of every image array (views, target, mask;
the float defocus map has no PNG form and is left out of both sides). The same randomly chosen patches
are read three ways:
  npy          np.load(mmap_mode="r") of <split>/<key>.npy, then one patch copied out per key
               (`sampling: windows`);
  png-patches  the same patches written as one PNG per patch and key (DPDNet's and ATTSF's patch
               format), decoded with OpenCV (pipeline_src.fileio.read_image);
  full-images  (with --full-images) the sample's original files decoded whole, then cropped: what a
               loader without a patch stage does.
and, where the split has whole-image arrays (<split>/images/, pipeline_src/data/whole_images.py):
  npy-image-crops  a crop of the window size at a random position of a random whole image, copied out of
               the flat memory-mapped arrays per key (`sampling: whole_images` without resampling): the
               same bytes per read as `npy`, read as S strided rows instead of one contiguous block.
Each is timed warm (page cache primed by an untimed pass) and cold (the files dropped from the page
cache with posix_fadvise(DONTNEED) before each pass; best effort: the kernel may keep some pages).
The PNG copies go to a temporary folder beside the patch folder (same disk) and are removed afterwards.
Each timing is the median of --repeats passes. The PNG reads are checked to equal the array reads.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from pipeline_src.errors import ConfigError, DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patches", required=True, help="patch folder written by the `patches` stage")
    parser.add_argument("--split", default="train", choices=("train", "val"))
    parser.add_argument("--reads", type=int, default=200, help="random patches read per pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per format and cache state")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-images", action="store_true",
                        help="also time decoding the original full images and cropping (slow on large images)")
    parser.add_argument("--scratch", help="folder for the temporary PNG copies (default: beside --patches)")
    parser.add_argument("--out", help="write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    from pipeline_src.fileio import atomic_write_json

    result = benchmark(args.patches, split=args.split, reads=args.reads, repeats=args.repeats, seed=args.seed,
                       full_images=args.full_images, scratch=args.scratch)
    print(format_table(result))
    if args.out:
        atomic_write_json(args.out, result)
    return 0


def benchmark(patches: str | Path, split: str = "train", reads: int = 200, repeats: int = 3, seed: int = 0,
              full_images: bool = False, scratch: str | Path | None = None) -> dict:
    import json

    import numpy as np

    patches = Path(patches)
    meta = json.loads((patches / "meta.json").read_text())
    count = meta["splits"][split]["count"]
    if count == 0:
        raise DataError(f"{patches}: the {split} split has no patches to read")
    if reads <= 0 or repeats <= 0:
        raise ConfigError(f"--reads {reads}, --repeats {repeats}: both must be positive")
    keys = [k for k in meta["arrays"] if k != "defocus"]
    picks = np.random.default_rng(seed).integers(0, count, size=reads).tolist()
    npy_files = [patches / split / f"{k}.npy" for k in keys]

    scratch_root = Path(scratch) if scratch else patches.parent
    with tempfile.TemporaryDirectory(prefix=".bench-png-", dir=scratch_root) as tmp:
        png_files = _write_png_copies(npy_files, keys, sorted(set(picks)), Path(tmp))
        _check_same(npy_files, keys, png_files, picks)
        readers: dict[str, tuple[Callable[[], None], list[Path]]] = {
            "npy": (lambda: _read_npy(npy_files, picks), npy_files),
            "png-patches": (lambda: _read_pngs(png_files, keys, picks), list(png_files.values())),
        }
        if full_images:
            readers["full-images"] = _full_image_reader(meta, split, picks)
        image_crops = _image_crop_reader(patches, meta, split, keys, reads, seed)
        if image_crops is not None:
            readers["npy-image-crops"] = image_crops
        timings = {name: {"warm_s": _time(fn, files, repeats, cold=False),
                          "cold_s": _time(fn, files, repeats, cold=True)} for name, (fn, files) in readers.items()}
        disk = {"npy": sum(f.stat().st_size for f in npy_files) / count,
                "png-patches": sum(f.stat().st_size for f in png_files.values()) / len(set(picks))}
        disk_total = {"npy": sum(f.stat().st_size for f in npy_files)}
        if image_crops is not None:
            disk_total["npy-image-crops"] = sum(f.stat().st_size for f in image_crops[1])

    decoded = sum(np.load(f, mmap_mode="r")[0].nbytes for f in npy_files)
    results = {}
    for name, t in timings.items():
        results[name] = {
            "warm_ms_per_read": 1000 * t["warm_s"] / reads,
            "cold_ms_per_read": 1000 * t["cold_s"] / reads,
            "warm_reads_per_s": reads / t["warm_s"],
            "cold_reads_per_s": reads / t["cold_s"],
            "bytes_on_disk_per_read": disk.get(name),
            "bytes_on_disk_total": disk_total.get(name),
        }
    for r in results.values():
        for state in ("warm", "cold"):
            r[f"{state}_times_slower_than_npy"] = r[f"{state}_ms_per_read"] / results["npy"][f"{state}_ms_per_read"]
    return {
        "patches": str(patches), "split": split, "keys": keys, "patch_size": meta["size"],
        "bit_depth": meta["bit_depth"], "decoded_bytes_per_read": decoded, "reads": reads, "repeats": repeats,
        "seed": seed, "cpu_count": os.cpu_count(), "results": results,
    }


def format_table(result: dict) -> str:
    head = (f"{result['reads']} random reads of {result['patch_size']}px {result['bit_depth']}-bit patches "
            f"({'+'.join(result['keys'])}; {result['decoded_bytes_per_read'] / 2**20:.2f} MiB decoded per read), "
            f"median of {result['repeats']}")
    lines = [head, f"{'format':<15} {'warm ms':>9} {'cold ms':>9} {'x npy time (warm/cold)':>24} {'disk/read':>11} "
                   f"{'disk, split':>12}"]
    for name, r in result["results"].items():
        disk = f"{r['bytes_on_disk_per_read'] / 2**20:.2f} MiB" if r["bytes_on_disk_per_read"] else "-"
        total = f"{r['bytes_on_disk_total'] / 2**20:.1f} MiB" if r.get("bytes_on_disk_total") else "-"
        lines.append(f"{name:<15} {r['warm_ms_per_read']:9.2f} {r['cold_ms_per_read']:9.2f} "
                     f"{r['warm_times_slower_than_npy']:>11.1f}x /{r['cold_times_slower_than_npy']:>6.1f}x {disk:>11} "
                     f"{total:>12}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- readers
def _write_png_copies(npy_files: list[Path], keys: list[str], indices: list[int], folder: Path) -> dict:
    import numpy as np

    from pipeline_src.fileio import write_image

    paths = {}
    for key, f in zip(keys, npy_files):
        arr = np.load(f, mmap_mode="r")
        (folder / key).mkdir()
        for i in indices:
            paths[(key, i)] = folder / key / f"{i:07d}.png"
            write_image(paths[(key, i)], np.asarray(arr[i]))
    return paths


def _read_npy(npy_files: list[Path], picks: list[int]) -> list:
    import numpy as np

    # opened per pass, as a fresh worker would; plain ndarray views of the maps, as the training sets read them
    arrays = [np.asarray(np.load(f, mmap_mode="r")) for f in npy_files]
    return [[np.array(a[i]) for a in arrays] for i in picks]


def _read_pngs(png_files: dict, keys: list[str], picks: list[int]) -> list:
    from pipeline_src.fileio import read_image

    return [[read_image(png_files[(k, i)], color=(k != "mask")) for k in keys] for i in picks]


def _check_same(npy_files: list[Path], keys: list[str], png_files: dict, picks: list[int]) -> None:
    import numpy as np

    for a, b, i in zip(_read_npy(npy_files, picks), _read_pngs(png_files, keys, picks), picks):
        for key, x, y in zip(keys, a, b):
            if not np.array_equal(x, y):
                raise AssertionError(f"patch {i} key {key}: the PNG copy does not equal the array; not lossless")


def _full_image_reader(meta: dict, split: str, picks: list[int]) -> tuple[Callable[[], None], list[Path]]:
    from pipeline_src.data.samples import load_manifest, load_sample

    manifest = load_manifest(meta["manifest"])
    windows = meta["splits"][split]["windows"]
    size = meta["size"]
    root = Path(manifest["root"])
    samples = [manifest["samples"][windows[i][0]] for i in picks]
    files = sorted({root / rel for s in samples
                    for rel in [*s["inputs"].values(), s["target"], s["mask"]] if rel})

    def read() -> list:
        out = []
        for i, s in zip(picks, samples):
            _, y, x = windows[i]
            data = load_sample(manifest, s)
            out.append([data[k][y:y + size, x:x + size] for k in data if k != "defocus"])
        return out

    return read, files


def _image_crop_reader(patches: Path, meta: dict, split: str, keys: list[str], reads: int,
                       seed: int) -> tuple[Callable[[], None], list[Path]] | None:
    """Random window-sized crops of the whole images (None when the split has no whole-image arrays)."""
    import numpy as np

    from pipeline_src.data.whole_images import ImageStore

    if split not in (meta.get("images") or {}).get("splits", {}):
        return None
    size = meta["size"]
    store = ImageStore(patches, split, keys, meta)
    fits = [i for i, e in enumerate(store.entries) if min(e.height, e.width) >= size]
    if not fits:
        return None
    rng = np.random.default_rng([seed, 1])
    crops = []
    for i in rng.choice(fits, size=reads).tolist():
        e = store.entries[i]
        crops.append((i, int(rng.integers(0, e.height - size + 1)), int(rng.integers(0, e.width - size + 1))))

    def read() -> list:
        fresh = ImageStore(patches, split, keys, meta)   # opened per pass, as a fresh worker would
        return [[fresh.region(k, i, y, y + size, x, x + size) for k in keys] for i, y, x in crops]

    return read, [store.folder / f"{k}.npy" for k in keys]


def _evict(files: list[Path]) -> None:
    """Ask the kernel to drop the files' cached pages (clean pages only, hence the fsync)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _time(fn: Callable[[], object], files: list[Path], repeats: int, cold: bool) -> float:
    if not cold:
        fn()   # prime the page cache
    passes = []
    for _ in range(repeats):
        if cold:
            _evict(files)
        start = time.perf_counter()
        fn()
        passes.append(time.perf_counter() - start)
    return statistics.median(passes)
