"""Run a kind's tasks (in parallel) into a temporary folder, then rename it into place with its meta.json.

Each task draws from its own generator (seeding.item_rng), so the number of workers and the order in which
they finish change nothing in the output: same seed and preset, same bytes. The folder is built under a
temporary sibling name (fileio.atomic_dir): a failed or killed run leaves nothing under the final name, its
workers die with it (PR_SET_PDEATHSIG), and the next run removes the partial folder it left.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pipeline_src.data.synthetic import GENERATOR_VERSION, sources
from pipeline_src.data.synthetic.kinds import KINDS, Task
from pipeline_src.data.synthetic.params import KindSpec, Physics, physics_as_dict
from pipeline_src.data.synthetic.seeding import item_rng


def generate_dataset(kind: str, spec: KindSpec, physics: Physics, seed: int, out: str | Path,
                     workers: int | None = None, preset: str = "custom") -> dict:
    """Write the dataset to `out` (replacing a previous one only once the new one is complete); returns meta."""
    from pipeline_src.fileio import atomic_dir, atomic_write_json

    if kind != spec.kind:
        raise ValueError(f"kind {kind!r} does not match the spec's kind {spec.kind!r}")
    if seed < 0:
        raise ValueError(f"seed {seed}: expected a non-negative integer")
    if workers is not None and workers < 1:
        raise ValueError(f"workers={workers}: expected at least 1 (or None for every core)")
    writer = KINDS.build(kind)
    tasks = writer.tasks(spec)
    n_workers = min(workers or os.cpu_count() or 1, len(tasks))
    with atomic_dir(out) as tmp:
        jobs = [(kind, task, spec, physics, seed, str(tmp)) for task in tasks]
        if n_workers == 1:
            with opencv_single_thread():
                results = [run_task(job) for job in jobs]
        else:
            # spawn, not fork: a forked child would inherit OpenCV's and OpenMP's thread pools half set up.
            # An executor, not multiprocessing.Pool: a worker that dies (or whose initializer fails) raises
            # BrokenProcessPool here instead of being respawned for ever.
            with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_worker, initargs=(os.getpid(),)) as pool:
                results = list(pool.map(run_task, jobs, chunksize=1))
        records = [record for task_records in results for record in task_records]
        conventions = writer.finish(tmp, spec, physics, records)
        meta = build_meta(kind, spec, physics, seed, preset, conventions, records)
        atomic_write_json(tmp / "meta.json", meta)
    return meta


def run_task(job: tuple[str, Task, KindSpec, Physics, int, str]) -> list[dict]:
    kind, task, spec, physics, seed, out = job
    rng = item_rng(seed, kind, task.split, task.index)
    return KINDS.build(kind).render(task, spec, physics, rng, Path(out))


def _init_worker(parent_pid: int) -> None:
    import cv2

    die_with_parent(parent_pid)
    # The parallelism is over images; OpenCV's own threads would only compete with the other workers.
    cv2.setNumThreads(1)


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this worker when its parent dies (Linux prctl PR_SET_PDEATHSIG): a parent killed
    with SIGKILL cannot stop its pool, and orphaned workers would render on for minutes. Elsewhere a no-op."""
    import ctypes
    import ctypes.util
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


@contextlib.contextmanager
def opencv_single_thread():
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def build_meta(kind: str, spec: KindSpec, physics: Physics, seed: int, preset: str, conventions: dict,
               records: list[dict]) -> dict:
    """Everything needed to regenerate or interpret the set; no timestamp, so it is byte-identical too."""
    import cv2
    import numpy
    import scipy
    import skimage

    from pipeline_src.data.synthetic import optics

    counts = {split: size.images for split, size in spec.splits.items()}
    meta = {
        "generator": GENERATOR_VERSION,
        "kind": kind,
        "preset": preset,
        "seed": seed,
        "size": [spec.height, spec.width],
        "counts": counts,
        "physics": physics_as_dict(physics),
        "derived": {
            "pixel_pitch_um": optics.pixel_pitch_m(physics.camera, spec.width) * 1e6,
            "coc_px_per_diopter_focus_at_1m": optics.coc_px_per_diopter(physics.camera, spec.width, 1.0),
        },
        "conventions": conventions,
        "content": {"photos": list(sources.PHOTOS), "textures": list(sources.TEXTURES),
                    "origin": "scikit-image's bundled data (no download); the motorcycle's depth is its "
                              "Middlebury ground-truth disparity"},
        # Byte-identity holds for the same versions of these (and the same CPU family).
        "software": {"numpy": numpy.__version__, "opencv": cv2.__version__, "scikit-image": skimage.__version__,
                     "scipy": scipy.__version__},
        "samples": records,
    }
    if spec.coc_step_px is not None:
        meta["coc_step_px"] = spec.coc_step_px
    if kind == "motion":
        meta["sequences"] = {split: size.sequences for split, size in spec.splits.items()}
    return meta

