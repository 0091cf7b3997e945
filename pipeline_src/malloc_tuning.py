"""glibc malloc settings for the stage processes (`python -m pipeline_src ...`), set by re-executing once at start.

The stages allocate and free large buffers over and over: quantize loads, copies and serialises ATTSF's 363 MB
graph several times; training allocates its activations anew at every step. With glibc's defaults every block
above the (adaptive) mmap threshold is a fresh mmap that the kernel hands out one zeroed 4 KiB page at a time, and
memory freed at the top of the heap goes back to the kernel to be faulted in again: the smoke run spent 19 % of
its CPU time in the kernel, ATTSF's quantize job 14 of its 35 CPU seconds (3.6 million page faults).

TUNABLES asks malloc for transparent huge pages on its own memory (`glibc.malloc.hugetlb=1`, glibc >= 2.35; a
no-op where THP is off), fixes the mmap threshold at its ceiling (32 MiB) and keeps up to 1 GiB of freed heap (the
trim threshold) with 64 MiB of headroom per heap extension, so freed memory is reused rather than faulted in
again. Measured by `python -m pipeline_src bench-malloc -- COMMAND` (README "Measured figures").

glibc reads GLIBC_TUNABLES only when a process starts, hence the exec: same pid (signals, Snakemake's benchmark
and the kill tests see one process), same interpreter flags and arguments (`sys.orig_argv`). Left alone: any
GLIBC_TUNABLES already set (the user's choice; `GLIBC_TUNABLES=` turns this off), any platform but Linux with glibc,
and the `pipeline-src` console script, which calls cli.main directly (the orchestrators run `python -m`). Unknown
tunables (older glibc) are ignored by glibc itself.
"""
from __future__ import annotations

import os
import platform
import sys

TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:"
            "glibc.malloc.trim_threshold=1073741824:glibc.malloc.top_pad=67108864")
ENV = "GLIBC_TUNABLES"


def wanted(environ=os.environ, system: str | None = None, libc: str | None = None) -> bool:
    """Whether this process should re-execute itself with TUNABLES."""
    system = platform.system() if system is None else system
    libc = platform.libc_ver()[0] if libc is None else libc
    return ENV not in environ and system == "Linux" and libc == "glibc"


def reexec_with_tunables() -> None:
    """Replace this process by the same command with TUNABLES set; returns only when that is not wanted or the
    exec fails (then the run goes on with glibc's defaults, only slower)."""
    if not wanted():
        return
    os.environ[ENV] = TUNABLES
    try:
        os.execv(sys.executable, sys.orig_argv)
    except OSError:
        del os.environ[ENV]
