"""Whether this machine may have an NVIDIA GPU, judged without importing torch (the Snakefile asks at parse
time, and torch's import would add seconds to every Snakemake call, dry runs included).

It errs towards "yes": a GPU is assumed when the NVIDIA driver lists one under /proc/driver/nvidia/gpus or when
`nvidia-smi` is on the PATH (WSL2 has no /proc entry), unless CUDA_VISIBLE_DEVICES hides every device. A wrong
"yes" only keeps the one-GPU-job-at-a-time cap that a GPU machine needs.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")


def nvidia_gpu_maybe_visible(environ=os.environ, proc: Path = NVIDIA_PROC, which=shutil.which) -> bool:
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False  # CUDA's own convention for "no device"
    if proc.is_dir() and any(proc.iterdir()):
        return True
    return which("nvidia-smi") is not None
