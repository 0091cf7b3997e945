"""STAND-INS for TensorRT, trtexec and the CUDA runtime, for tests of OUR control flow only (not of TensorRT).

No TensorRT, trtexec or GPU exists on the machines this project is built on, so the engine path is driven end
to end against stand-ins that reproduce the behaviours it must handle (see each file's docstring):
    site/tensorrt/        the `tensorrt` Python package (TensorRT 10.x / 11.x bindings' behaviour)
    site/tensorrt_libs/   the tensorrt-cu12-libs wheel's package (loads the CUDA runtime beside it)
    cudart.c              libcudart, compiled by `build_site` into site/nvidia/cuda_runtime/lib/libcudart.so.12
    trtexec.py            the trtexec command (installed as <root>/bin/trtexec by `build_site`)
They are put on sys.path / PATH only by the tests that use them, through the environment `device_env` returns
for a subprocess, never in the test process itself.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class StandinSite:
    root: Path
    site: Path        # holds tensorrt/, tensorrt_libs/ and nvidia/cuda_runtime/lib/libcudart.so.12
    bin: Path         # holds trtexec and device-python
    cudart: Path


def compile_cudart(dest: Path) -> Path:
    """The stand-in libcudart, built with the system C compiler (the one Python was built with)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        compiler = "cc"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(dest), str(HERE / "cudart.c")], check=True)
    return dest


def build_site(root: Path, harness: str) -> StandinSite:
    """A site folder with the stand-in packages and runtime, and a bin folder with trtexec and device-python
    (the interpreter a device has: `python3 -I` with the pipeline, torch and DEVICE_REFUSE unimportable)."""
    site, bin_dir = root / "site", root / "bin"
    for package in ("tensorrt", "tensorrt_libs"):
        shutil.copytree(HERE / "site" / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    cudart = compile_cudart(site / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12")
    bin_dir.mkdir(parents=True)
    (root / "harness.py").write_text(harness)
    scripts = {"trtexec": f'exec "{sys.executable}" "{HERE / "trtexec.py"}" "$@"\n',
               "device-python": f'exec "{sys.executable}" -I "{root / "harness.py"}" "$@"\n'}
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    return StandinSite(root, site, bin_dir, cudart)


def device_env(standin: StandinSite | None, *, tensorrt: bool = True, trtexec: bool = False,
               refuse: tuple[str, ...] = ("onnxruntime",), **settings: str) -> dict[str, str]:
    """Environment of a device subprocess: the stand-in tensorrt package importable (tensorrt=True), the stand-in
    trtexec on PATH (trtexec=True), `refuse` unimportable, STANDIN_* settings (e.g. STANDIN_TRT_VERSION)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STANDIN_", "DEVICE_", "CUDART_"))}
    env["DEVICE_REFUSE"] = ",".join(refuse)
    if standin is not None:
        env["STANDIN_SITE"] = str(standin.site)
        env["PYTHON"] = str(standin.bin / "device-python")
        if tensorrt:
            env["DEVICE_PATH"] = str(standin.site)
        else:  # no tensorrt package, but the CUDA runtime is still where a CUDA install puts it
            env["CUDART_LIBRARY"] = str(standin.cudart)
        if trtexec:
            env["PATH"] = f"{standin.bin}{os.pathsep}{env['PATH']}"
    env.update({f"STANDIN_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def stage_env(standin: StandinSite, repo: Path, **settings: str) -> dict[str, str]:
    """Environment of a pipeline stage subprocess (`python -m pipeline_src build-engine`) on a stand-in GPU host:
    the repository and the stand-in tensorrt package importable, tracking off."""
    env = device_env(standin, **settings)
    env.update({"PYTHONPATH": os.pathsep.join([str(repo), str(standin.site)]), "PIPELINE_TRACKING": "0",
                "OMP_NUM_THREADS": "1"})
    return env
