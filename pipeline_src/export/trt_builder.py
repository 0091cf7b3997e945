#!/usr/bin/env python3
"""Build a TensorRT engine from an ONNX file, for the GPU and TensorRT version it runs on.

This file is the edge bundle's `build_engine.py` (copied verbatim by `python -m pipeline_src bundle`) and the
pipeline's builder (`build-engine`), so it imports nothing from the pipeline: the standard library, and
tensorrt only inside the build. What it does, for TensorRT 10 and 11 alike:
- strongly typed network: the precision is the ONNX file's own (fp32, fp16 weights/compute, or int8 Q/DQ);
  TensorRT 11 has no other mode and removed the FP16/INT8 builder flags and calibrators, TensorRT 10 takes the
  STRONGLY_TYPED flag. An fp32 engine also has TF32 switched off, so that fp32 means fp32.
- one optimisation profile over height and width (batch 1), min/opt/max rounded up to the model's size
  multiple (the runtime pads inputs to that multiple, so every padded size up to `max` fits);
- a timing cache read before and written after every build (per GPU and TensorRT version);
- the engine named `<model>-sm<major><minor>-trt<major.minor.patch>-<precision>.plan`, because an engine runs
  only on the GPU architecture and TensorRT version that built it.

    python build_engine.py --precision fp16          # in a bundle: everything else from manifest.json
    python build_engine.py --precision int8 --builder trtexec
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8")
JETPACK_TRTEXEC_DIR = "/usr/src/tensorrt/bin"  # where JetPack and the TensorRT tarballs put trtexec


class NoEngineBuilt(RuntimeError):
    """TensorRT or a CUDA device is missing here; the message says which and what to install."""


# --------------------------------------------------------------------------------------- profile, naming
def snap_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def snap_profile(profile: dict[str, tuple[int, int]], multiple: int) -> dict[str, tuple[int, int]]:
    """{"min"|"opt"|"max": (height, width)} -> each side rounded up to `multiple`; checks min <= opt <= max."""
    if multiple < 1:
        raise ValueError(f"size multiple {multiple}; expected a positive integer")
    missing = {"min", "opt", "max"} - set(profile)
    if missing:
        raise ValueError(f"optimisation profile lacks {sorted(missing)}; it needs min, opt and max")
    snapped = {k: tuple(snap_up(v, multiple) for v in profile[k]) for k in ("min", "opt", "max")}
    for axis, name in enumerate(("height", "width")):
        lo, mid, hi = (snapped[k][axis] for k in ("min", "opt", "max"))
        if not 0 < lo <= mid <= hi:
            raise ValueError(f"optimisation profile {name}s must satisfy 0 < min <= opt <= max; after snapping to "
                             f"multiples of {multiple}: min {lo}, opt {mid}, max {hi}")
    return snapped


def version_tag(version: str) -> str:
    """"10.16.1.11" -> "10.16.1" (the build number does not change compatibility)."""
    parts = str(version).split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:3]):
        raise ValueError(f"TensorRT version {version!r}; expected MAJOR.MINOR[.PATCH...]")
    return ".".join(parts[:3])


def engine_name(model: str, compute_capability: tuple[int, int], trt_version: str, precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; expected one of {PRECISIONS}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model):
        raise ValueError(f"model name {model!r} cannot go into a file name (letters, digits, _ . - only)")
    major, minor = compute_capability
    return f"{model}-sm{major}{minor}-trt{version_tag(trt_version)}-{precision}.plan"


def timing_cache_name(compute_capability: tuple[int, int], trt_version: str) -> str:
    major, minor = compute_capability
    return f"timing-cache-sm{major}{minor}-trt{version_tag(trt_version)}.bin"


# ----------------------------------------------------------------------------------------------- probing
def _cuda_runtime():
    try:  # inside the pipeline
        from pipeline_src.export.edge_infer import CudaRuntime
    except ImportError:  # inside an edge bundle, next to infer.py
        from infer import CudaRuntime
    return CudaRuntime()


def _compute_capability() -> tuple[int, int]:
    try:
        cuda = _cuda_runtime()
    except (RuntimeError, OSError) as e:
        raise NoEngineBuilt(f"the CUDA runtime is not usable: {e}") from e
    if cuda.device_count() < 1:
        raise NoEngineBuilt("no CUDA device is visible (cudaGetDeviceCount found none)")
    return cuda.compute_capability(0)


def probe() -> tuple[object, tuple[int, int]]:
    """(tensorrt module, GPU compute capability), or NoEngineBuilt saying plainly what is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise NoEngineBuilt(f"the tensorrt Python package is not importable ({e}); on a GPU host install "
                            f"`pip install .[trt]` (TensorRT 10) or NVIDIA's wheels, on Jetson use JetPack's") from e
    major = int(str(trt.__version__).split(".")[0])
    if major not in (10, 11):
        raise NoEngineBuilt(f"TensorRT {trt.__version__} found; this builder supports TensorRT 10 and 11")
    return trt, _compute_capability()


# ---------------------------------------------------------------------------------------------- building
def build_with_python(trt, onnx_path: Path, engine_path: Path, *, input_name: str,
                      profile: dict[str, tuple[int, int]], precision: str, workspace_mib: int,
                      timing_cache: Path) -> None:
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError as e:  # pybind11 "factory function returned nullptr": CUDA failed to initialise
        raise NoEngineBuilt(f"TensorRT could not create a builder (CUDA initialisation failed: {e})") from e
    major = int(str(trt.__version__).split(".")[0])
    flags = 0
    if major == 10:  # TensorRT 11 networks are always strongly typed and have no flag for it
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external-data ONNX files resolve
        errors = "\n  ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser refused it:\n  {errors}")
    channels = network.get_input(0).shape[1]

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(input_name, *((1, channels, *profile[k]) for k in ("min", "opt", "max")))
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    _atomic_write(engine_path, bytes(plan))
    _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))


def build_with_trtexec(trtexec: str, onnx_path: Path, engine_path: Path, *, input_name: str, channels: int,
                       profile: dict[str, tuple[int, int]], precision: str, workspace_mib: int,
                       timing_cache: Path, trt_major: int) -> None:
    shapes = {k: f"{input_name}:1x{channels}x{h}x{w}" for k, (h, w) in profile.items()}
    cmd = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}", f"--minShapes={shapes['min']}",
           f"--optShapes={shapes['opt']}", f"--maxShapes={shapes['max']}", f"--timingCacheFile={timing_cache}",
           f"--memPoolSize=workspace:{int(workspace_mib)}M", "--skipInference"]
    if trt_major == 10:
        cmd.append("--stronglyTyped")
    if precision == "fp32":
        cmd.append("--noTF32")
    print("+ " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)


def parse_trtexec_banner(text: str) -> str:
    """TensorRT version from trtexec's banner: "[TensorRT v101601]" -> "10.16.1", "[TensorRT v8601]" -> "8.6.1"."""
    m = re.search(r"TensorRT v(\d+)", text)
    if not m:
        raise ValueError("no '[TensorRT vNNNNN]' banner in trtexec's output")
    n = int(m.group(1))
    # 8.x encodes MAJOR*1000 + MINOR*100 + PATCH; 10.x and later MAJOR*10000 + MINOR*100 + PATCH
    return f"{n // 10000}.{n // 100 % 100}.{n % 100}" if n >= 100000 else f"{n // 1000}.{n // 100 % 10}.{n % 100}"


def trtexec_version(trtexec: str) -> str:
    out = subprocess.run([trtexec, "--help"], capture_output=True, text=True)
    try:
        return parse_trtexec_banner(out.stdout + out.stderr)
    except ValueError as e:
        raise NoEngineBuilt(f"{trtexec}: could not read the TensorRT version ({e})") from e


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(onnx_path, out_dir, *, model: str, precision: str, input_name: str, channels: int, multiple: int,
          profile: dict[str, tuple[int, int]], workspace_mib: int, timing_cache_dir=None,
          builder: str = "python") -> dict:
    """Build one engine into `out_dir`; returns what was built. NoEngineBuilt when TensorRT/CUDA is missing."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
    snapped = snap_profile(profile, multiple)
    if builder == "trtexec":
        trtexec = shutil.which("trtexec") or shutil.which("trtexec", path=JETPACK_TRTEXEC_DIR)
        if trtexec is None:
            raise NoEngineBuilt(f"trtexec is not on PATH (nor in {JETPACK_TRTEXEC_DIR})")
        version = trtexec_version(trtexec)
        cc = _compute_capability()
    elif builder == "python":
        trt, cc = probe()
        version = str(trt.__version__)
    else:
        raise ValueError(f"builder {builder!r}; expected python or trtexec")
    engine_path = out_dir / engine_name(model, cc, version, precision)
    cache = Path(timing_cache_dir or out_dir) / timing_cache_name(cc, version)
    cache_reused = cache.is_file()
    if builder == "python":
        build_with_python(trt, onnx_path, engine_path, input_name=input_name, profile=snapped, precision=precision,
                          workspace_mib=workspace_mib, timing_cache=cache)
    else:
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:  # trtexec writes in place; rename when done
            partial = Path(tmp) / engine_path.name
            build_with_trtexec(trtexec, onnx_path, partial, input_name=input_name, channels=channels,
                               profile=snapped, precision=precision, workspace_mib=workspace_mib,
                               timing_cache=cache, trt_major=int(version.split(".")[0]))
            os.replace(partial, engine_path)
    return {"engine": str(engine_path), "onnx": str(onnx_path), "precision": precision, "builder": builder,
            "tensorrt": version, "compute_capability": f"{cc[0]}.{cc[1]}",
            "profile": {k: {"height": h, "width": w} for k, (h, w) in snapped.items()}, "size_multiple": multiple,
            "timing_cache": str(cache), "timing_cache_reused": cache_reused}


# ------------------------------------------------------------------------------------------ bundle main
def main(argv=None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", default=str(here / "manifest.json"), help="bundle manifest (default: next to this file)")
    p.add_argument("--precision", choices=PRECISIONS, help="which ONNX variant to build (default: the manifest's)")
    p.add_argument("--out-dir", default=str(here), help="where the engine and timing cache go (default: here)")
    p.add_argument("--builder", choices=("auto", "python", "trtexec"), default="auto",
                   help="auto: the tensorrt Python API if importable, else trtexec")
    args = p.parse_args(argv)
    m = json.loads(Path(args.manifest).read_text())
    precision = args.precision or m["tensorrt"]["default_precision"]
    variant = m["variants"].get(precision)
    if variant is None:
        raise SystemExit(f"{args.manifest}: no {precision} variant in this bundle; it has {sorted(m['variants'])}")
    builder = args.builder
    if builder == "auto":
        import importlib.util

        has_python_api = importlib.util.find_spec("tensorrt") is not None
        has_trtexec = bool(shutil.which("trtexec") or shutil.which("trtexec", path=JETPACK_TRTEXEC_DIR))
        if not (has_python_api or has_trtexec):
            print("No engine was built: neither the tensorrt Python package nor trtexec is available here "
                  "(install TensorRT 10 or 11 for this device: JetPack's python3-libnvinfer, or NVIDIA's wheels)",
                  file=sys.stderr)
            return 2
        builder = "python" if has_python_api else "trtexec"
    profile = {k: (v["height"], v["width"]) for k, v in m["tensorrt"]["profile"].items()}
    try:
        info = build(Path(args.manifest).parent / variant["file"], args.out_dir, model=m["model"]["name"],
                     precision=precision, input_name=m["input"]["name"], channels=m["input"]["channels"],
                     multiple=m["input"]["size_multiple"], profile=profile,
                     workspace_mib=m["tensorrt"]["workspace_mib"], builder=builder)
    except NoEngineBuilt as e:
        print(f"No engine was built: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
