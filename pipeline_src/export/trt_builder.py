#!/usr/bin/env python3
"""Build a TensorRT engine from an ONNX variant for the device it runs on; in a bundle, check it before it
gets its name.

This file is the edge bundle's `build_engine.py` (copied verbatim by `python -m pipeline_src bundle`) and the
pipeline's builder (`build-engine`), so it imports nothing from the pipeline: the standard library, numpy, the
bundle's `infer.py` and `edge_cuda.py`, and tensorrt only inside the build. For TensorRT 10 and 11 alike:
- strongly typed network: the precision is the ONNX file's own (fp32, fp16 weights/compute, or int8 Q/DQ);
  TensorRT 11 has no other mode, TensorRT 10 takes the STRONGLY_TYPED flag (trtexec: --stronglyTyped). Other
  versions are refused with the version found and the ones needed: TensorRT 8.x would build the fp16 ONNX in
  fp32 and the file would still be named fp16. An fp32 engine has TF32 off, so that fp32 means fp32.
- one optimisation profile over height and width (batch 1), min/opt/max rounded up to the size multiple;
- the engine is built under a temporary name (`.<name>.<pid>.<random>.tmp`, which the pipeline's stale-file
  sweep recognises) and gets its final name only after its check passed; a failed check removes it;
- names and timing caches are keyed by what makes them incompatible: the device's name and SM count as well
  as its architecture (two sm87 Orins differ in both), and the TensorRT version:
  `<model>-<device>_<N>sm-sm<cc>-trt<major.minor.patch>-<precision>.plan`, `timing-cache-<device key>-trt<v>.bin`;
- the timing cache: read before and written after every build, under an exclusive lock
  (`<cache>.build-lock`) held for the whole build, so parallel builds neither lose each other's entries nor
  time their tactics against each other on one GPU; the cache file itself is read and written under
  `<cache>.lock` with lockf, the lock trtexec's own timing-cache code takes. Beside it, `<cache>.device.json`
  records the device (with a fingerprint: memory clock, bus width, L2 size) and TensorRT version that wrote it.
  A cache from another device is not used: TensorRT refuses it (`set_timing_cache` returns False: checked, a
  fresh cache is started and the build says so), and our record catches what trtexec would silently accept
  (it loads caches with ignore_mismatch=true). `get_timing_cache()` returning None leaves the file as it was;
- TensorRT's messages go to standard error through our own `trt.ILogger` (trt.Logger prints to standard
  output); trtexec's output goes to a log file; reports go to files (`--report`); standard output stays empty.

    ./build_engine.sh fp16                        # in a bundle: build, check against the stored fp32 output
    python3 build_engine.py --precision int8 --builder trtexec --report build-int8.json
Exit codes: 0 engine built and checked; 1 built but below the check's floor (removed); 2 nothing built (the
report and the error line say why: no TensorRT or CUDA, an unsupported version, a parser or build failure).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__:  # inside the pipeline
    from . import edge_cuda
    from . import edge_infer as infer
else:  # inside a bundle, next to infer.py
    import edge_cuda
    import infer

PRECISIONS = ("fp32", "fp16", "int8")
JETPACK_TRTEXEC_DIR = "/usr/src/tensorrt/bin"  # where JetPack and the TensorRT tarballs put trtexec
EXIT_CHECK_FAILED, EXIT_NOTHING_BUILT = 1, 2


class NoEngineBuilt(RuntimeError):
    """TensorRT or CUDA is missing or unsupported here; the message says which and what to install."""


class BuildFailed(RuntimeError):
    """TensorRT was there and refused the model or failed to build; the message says where to look."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def engine_name(model: str, device_key: str, trt_version: str, precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; expected one of {PRECISIONS}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model):
        raise ValueError(f"model name {model!r} cannot go into a file name (letters, digits, _ . - only)")
    if not re.fullmatch(r"[a-z0-9_]+_\d+sm-sm\d+", device_key):
        raise ValueError(f"device key {device_key!r}; expected <name>_<N>sm-sm<cc> (edge_cuda.Device.key)")
    return f"{model}-{device_key}-trt{version_tag(trt_version)}-{precision}.plan"


def timing_cache_name(device_key: str, trt_version: str) -> str:
    return f"timing-cache-{device_key}-trt{version_tag(trt_version)}.bin"


def candidate_path(final: Path) -> Path:
    """Where an engine is built before its check: a hidden sibling named the way the pipeline's fileio names
    its temporaries, so a build killed half-way is swept away by the next one (here or by fileio)."""
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def sweep_stale_candidates(final: Path) -> list[Path]:
    """Remove candidates of `final` left by builds whose process is gone (killed before their check ended)."""
    removed = []
    for sibling in final.parent.glob(f".{final.name}.*.tmp"):
        pid = sibling.name[len(final.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # a live build owns it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        sibling.unlink(missing_ok=True)
        removed.append(sibling)
    return removed


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # what open() would give, not mkstemp's 0600
    try:
        _fsync_write(Path(tmp), data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def commit_engine(candidate: Path, final: Path) -> None:
    """The engine passed its check: give it its name."""
    os.replace(candidate, final)


def discard(candidate: Path | None) -> None:
    if candidate is not None:
        Path(candidate).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- probing
def probe_device() -> "edge_cuda.Device":
    try:
        return edge_cuda.CudaRuntime().device()
    except edge_cuda.CudaUnavailable as e:
        raise NoEngineBuilt(str(e)) from e


def probe_python():
    """The tensorrt module, if importable and supported; else NoEngineBuilt saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise NoEngineBuilt(f"the tensorrt Python package is not importable ({e}); on a GPU host install "
                            f"`pip install .[trt]` or NVIDIA's wheels, on Jetson JetPack's python3-libnvinfer") from e
    try:
        infer.require_supported_tensorrt(trt.__version__, "the tensorrt Python package")
    except infer.UnsupportedTensorRT as e:
        raise NoEngineBuilt(str(e)) from e
    return trt


def probe() -> tuple[object, "edge_cuda.Device"]:
    """(tensorrt module, this device), or NoEngineBuilt saying plainly what is missing."""
    trt = probe_python()  # first: the tensorrt wheel loads the CUDA runtime edge_cuda then prefers
    return trt, probe_device()


def find_trtexec() -> str | None:
    return shutil.which("trtexec") or shutil.which("trtexec", path=JETPACK_TRTEXEC_DIR)


def parse_trtexec_banner(text: str) -> str:
    """TensorRT version from trtexec's banner: "[TensorRT v101601]" -> "10.16.1", "[TensorRT v8601]" -> "8.6.1"."""
    m = re.search(r"TensorRT v(\d+)", text)
    if not m:
        raise ValueError("no '[TensorRT vNNNNN]' banner in trtexec's output")
    n = int(m.group(1))
    # 8.x encodes MAJOR*1000 + MINOR*100 + PATCH; 10.x and later MAJOR*10000 + MINOR*100 + PATCH
    return f"{n // 10000}.{n // 100 % 100}.{n % 100}" if n >= 100000 else f"{n // 1000}.{n // 100 % 10}.{n % 100}"


def trtexec_version(trtexec: str) -> str:
    """The version trtexec reports in the banner of `--help` (captured whole; only the banner is read), gated."""
    out = subprocess.run([trtexec, "--help"], capture_output=True, text=True, timeout=120)
    try:
        version = parse_trtexec_banner(out.stdout + out.stderr)
    except ValueError as e:
        raise NoEngineBuilt(f"{trtexec}: could not read the TensorRT version ({e})") from e
    try:
        infer.require_supported_tensorrt(version, trtexec)
    except infer.UnsupportedTensorRT as e:
        raise NoEngineBuilt(str(e)) from e
    return version


# ------------------------------------------------------------------------------------------ timing cache
@contextlib.contextmanager
def _locked(path: Path, how: str):
    """An exclusive lock on `path` (created if missing): `flock` or `lockf` (trtexec's FileLock uses lockf)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        lock = fcntl.flock if how == "flock" else fcntl.lockf
        try:
            lock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            say(f"waiting for {path} (another build uses this timing cache)")
            lock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            lock(f.fileno(), fcntl.LOCK_UN)


class TimingCache:
    """One timing-cache file for one device and TensorRT version, with the record of who wrote it."""

    def __init__(self, path: Path, device: "edge_cuda.Device", trt_version: str):
        self.path, self.device, self.trt_version = Path(path), device, version_tag(trt_version)
        self.record = self.path.with_name(self.path.name + ".device.json")

    def build_lock(self):
        return _locked(self.path.with_name(self.path.name + ".build-lock"), "flock")

    def _file_lock(self):
        return _locked(self.path.with_name(self.path.name + ".lock"), "lockf")

    def _expected_record(self) -> dict:
        return {"device": self.device.as_dict(), "tensorrt": self.trt_version}

    def _recorded_elsewhere(self) -> str | None:
        """Why the file must not be used (made on another device per our record), or None."""
        if not self.record.is_file():
            return None
        try:
            recorded = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return f"{self.record} is unreadable"
        if {k: recorded.get(k) for k in ("device", "tensorrt")} != self._expected_record():
            device = recorded.get("device") or {}
            return (f"it was written on {device.get('key', '?')} {device.get('fingerprint', {})} with TensorRT "
                    f"{recorded.get('tensorrt', '?')}, this is {self.device.key} {self.device.fingerprint} with "
                    f"TensorRT {self.trt_version}")
        return None

    def read(self, trust_unrecorded: bool = True) -> tuple[bytes, str]:
        """(serialized cache or b"", status). A cache our record places on another device is not returned."""
        with self._file_lock():
            if not self.path.is_file():
                return b"", "created"
            elsewhere = self._recorded_elsewhere()
            if elsewhere is None and not trust_unrecorded and not self.record.is_file():
                elsewhere = f"nothing records which device wrote it ({self.record} is missing)"
            if elsewhere:
                say(f"timing cache {self.path}: not used, {elsewhere}; starting a fresh one")
                return b"", "replaced: made on another device (our record)"
            return self.path.read_bytes(), "reused"

    def write(self, data: bytes) -> None:
        with self._file_lock():
            atomic_write(self.path, data)
            atomic_write(self.record, (json.dumps({**self._expected_record(), "written": time.strftime(
                "%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n").encode())

    def clear_for_trtexec(self) -> str:
        """trtexec reads the file itself and ignores device mismatches: remove a cache not recorded as ours."""
        data, status = self.read(trust_unrecorded=False)
        if not data and self.path.is_file():
            with self._file_lock():
                self.path.unlink()
        return status

    def note_trtexec_wrote(self) -> None:
        if self.path.is_file():
            with self._file_lock():
                atomic_write(self.record, (json.dumps({**self._expected_record(), "written": time.strftime(
                    "%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n").encode())


# ---------------------------------------------------------------------------------------------- building
def build_with_python(trt, onnx_path: Path, candidate: Path, *, input_name: str,
                      profile: dict[str, tuple[int, int]], precision: str, workspace_mib: int,
                      cache: TimingCache) -> dict:
    logger = infer.stderr_logger(trt)
    try:
        builder = trt.Builder(logger)
    except TypeError as e:  # pybind11 "factory function returned nullptr": CUDA failed to initialise
        raise NoEngineBuilt(f"TensorRT could not create a builder (CUDA initialisation failed: {e})") from e
    flags = 0
    if infer.tensorrt_major(trt.__version__) == 10:  # TensorRT 11 networks are always strongly typed
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external-data ONNX files resolve
        errors = "; ".join(str(parser.get_error(i)).replace("\n", " ") for i in range(parser.num_errors))
        raise BuildFailed(f"{onnx_path}: TensorRT's ONNX parser refused it: {errors}")
    channels = network.get_input(0).shape[1]

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(input_name, *((1, channels, *profile[k]) for k in ("min", "opt", "max")))
    config.add_optimization_profile(opt_profile)

    data, status = cache.read()
    timing = config.create_timing_cache(data)
    if not config.set_timing_cache(timing, ignore_mismatch=False):
        say(f"timing cache {cache.path}: TensorRT refused it (made on another device or TensorRT build); "
            "starting a fresh one")
        timing = config.create_timing_cache(b"")
        if not config.set_timing_cache(timing, ignore_mismatch=False):
            raise BuildFailed(f"TensorRT {trt.__version__} refused even an empty timing cache")
        status = "replaced: TensorRT refused it (another device)"

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildFailed(f"{onnx_path}: TensorRT failed to build an engine (see the [TRT] lines above)")
    _fsync_write(candidate, bytes(plan))
    updated = config.get_timing_cache()
    serialized = updated.serialize() if updated is not None else None
    if serialized is None:
        say(f"timing cache {cache.path}: TensorRT returned none after the build; the file is left as it was")
        return {"timing_cache_status": status, "timing_cache_saved": False}
    cache.write(bytes(serialized))
    return {"timing_cache_status": status, "timing_cache_saved": True}


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "[E]" in ln or "rror" in ln]
    return (errors or lines or ["(empty)"])[-1][:300]


def run_trtexec(cmd: list[str], log: Path, what: str) -> None:
    """trtexec with its standard output and error in `log` (INFO lines and &&&& banners go to standard output;
    nothing of it is parsed); a failure names the log and its last error line."""
    with open(log, "a") as f:
        f.write("+ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise BuildFailed(f"trtexec failed to {what} (exit {rc}); its output is in {log}: {_last_line(log)}")


def build_with_trtexec(trtexec: str, onnx_path: Path, candidate: Path, *, input_name: str, channels: int,
                       profile: dict[str, tuple[int, int]], precision: str, workspace_mib: int,
                       cache: TimingCache, trt_major: int, log: Path) -> dict:
    status = cache.clear_for_trtexec()
    shapes = {k: f"{input_name}:1x{channels}x{h}x{w}" for k, (h, w) in profile.items()}
    cmd = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={candidate}", f"--minShapes={shapes['min']}",
           f"--optShapes={shapes['opt']}", f"--maxShapes={shapes['max']}", f"--timingCacheFile={cache.path}",
           f"--memPoolSize=workspace:{int(workspace_mib)}M", "--skipInference"]
    if trt_major == 10:
        cmd.append("--stronglyTyped")
    if precision == "fp32":
        cmd.append("--noTF32")
    run_trtexec(cmd, log, f"build {onnx_path.name}")
    if not candidate.is_file() or candidate.stat().st_size == 0:
        raise BuildFailed(f"trtexec exited 0 but wrote no engine at {candidate}; its output is in {log}")
    cache.note_trtexec_wrote()
    return {"timing_cache_status": status, "timing_cache_saved": cache.path.is_file()}


def build(onnx_path, out_dir, *, model: str, precision: str, input_name: str, channels: int, multiple: int,
          profile: dict[str, tuple[int, int]], workspace_mib: int, timing_cache_dir=None,
          builder: str = "python") -> dict:
    """Build one engine under a temporary name in `out_dir`. Returns what was built: "candidate" (check it, then
    commit_engine(candidate, engine) or discard(candidate)) and "engine" (its final name). NoEngineBuilt when
    TensorRT/CUDA is missing or unsupported, BuildFailed when TensorRT refused or failed."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
    snapped = snap_profile(profile, multiple)
    if builder == "trtexec":
        trtexec = find_trtexec()
        if trtexec is None:
            raise NoEngineBuilt(f"trtexec is not on PATH (nor in {JETPACK_TRTEXEC_DIR})")
        version = trtexec_version(trtexec)
        device = probe_device()
    elif builder == "python":
        trt, device = probe()
        version = str(trt.__version__)
    else:
        raise ValueError(f"builder {builder!r}; expected python or trtexec")
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / engine_name(model, device.key, version, precision)
    cache = TimingCache(Path(timing_cache_dir or out_dir) / timing_cache_name(device.key, version), device, version)
    sweep_stale_candidates(final)
    candidate = candidate_path(final)
    log = out_dir / f"{final.stem}.trtexec.log"
    info = {"engine": str(final), "candidate": str(candidate), "onnx": str(onnx_path), "precision": precision,
            "builder": builder, "tensorrt": version, "device": device.as_dict(),
            "profile": {k: {"height": h, "width": w} for k, (h, w) in snapped.items()}, "size_multiple": multiple,
            "timing_cache": str(cache.path)}
    try:
        with cache.build_lock():
            if builder == "python":
                info.update(build_with_python(trt, onnx_path, candidate, input_name=input_name, profile=snapped,
                                              precision=precision, workspace_mib=workspace_mib, cache=cache))
            else:
                log.unlink(missing_ok=True)
                info["trtexec_log"] = str(log)
                info.update(build_with_trtexec(trtexec, onnx_path, candidate, input_name=input_name,
                                               channels=channels, profile=snapped, precision=precision,
                                               workspace_mib=workspace_mib, cache=cache,
                                               trt_major=infer.tensorrt_major(version), log=log))
    except BaseException:
        discard(candidate)
        raise
    return info


# ------------------------------------------------------------------------------- the bundle's engine check
def _read_trtexec_json(path: Path) -> list[dict]:
    """trtexec's --exportOutput file: values printed by C++ streams (nan, -nan, inf are not JSON)."""
    text = re.sub(r"(?<![\w.])-?nan\b", "NaN", path.read_text())
    text = re.sub(r"(?<![\w.])(-?)inf\b", r"\1Infinity", text)
    return json.loads(text)


def run_with_trtexec(trtexec: str, engine: Path, x: np.ndarray, *, input_name: str, output_name: str,
                     log: Path, workdir: Path) -> np.ndarray:
    """One inference of `engine` on x (1 x C x H x W, inside the profile) through trtexec: --loadInputs with the
    raw float32 tensor, --exportOutput to a JSON file (read back; trtexec's standard output is not)."""
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".trtexec-check-") as tmp:
        raw, exported = Path(tmp) / "input.bin", Path(tmp) / "output.json"
        np.ascontiguousarray(x, dtype=np.float32).tofile(raw)
        shape = "x".join(str(d) for d in x.shape)
        run_trtexec([trtexec, f"--loadEngine={engine}", f"--shapes={input_name}:{shape}",
                     f"--loadInputs={input_name}:{raw}", f"--exportOutput={exported}", "--iterations=1",
                     "--warmUp=0", "--duration=0", "--avgRuns=1"], log, f"run {engine.name}")
        outputs = {o["name"]: o for o in _read_trtexec_json(exported)}
    if output_name not in outputs:
        raise BuildFailed(f"trtexec's exported outputs are {sorted(outputs)}; expected {output_name!r}")
    dims = [int(d) for d in outputs[output_name]["dimensions"].split("x")]
    return np.asarray(outputs[output_name]["values"], dtype=np.float32).reshape(dims)


def check_candidate(info: dict, manifest: dict, bundle: Path, spec: "infer.ModelSpec") -> dict:
    """The candidate engine on the bundle's stored check input against the stored fp32 output."""
    check = manifest.get("check")
    if not check:
        raise BuildFailed(f"{bundle / 'manifest.json'}: no stored check (input and fp32 output); remake the bundle")
    candidate, precision = Path(info["candidate"]), info["precision"]
    if info["builder"] == "python":
        model = infer.TensorRTModel(candidate, spec)
        try:
            return infer.check_against_stored(lambda x: infer.run_any_size(model, x, spec), check, bundle,
                                              precision, spec.task)
        finally:
            model.close()
    profile = info["profile"]
    min_hw = (profile["min"]["height"], profile["min"]["width"])

    def run(x):
        padded, (h, w) = infer.pad_to_multiple(x, spec.size_multiple, min_hw)
        y = run_with_trtexec(find_trtexec(), candidate, padded, input_name=spec.input_name,
                             output_name=spec.output_name, log=Path(info["trtexec_log"]), workdir=candidate.parent)
        return y[:, :, :h, :w]

    return infer.check_against_stored(run, check, bundle, precision, spec.task)


# ------------------------------------------------------------------------------------------ bundle main
def choose_builder(requested: str) -> str:
    if requested != "auto":
        return requested
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        return "python"
    if find_trtexec():
        return "trtexec"
    raise NoEngineBuilt("neither the tensorrt Python package nor trtexec is available here (install TensorRT 10 "
                        "or 11 for this device: JetPack's python3-libnvinfer and trtexec, or NVIDIA's wheels)")


def bundle_build(manifest_path: Path, precision: str | None, out_dir: Path, builder: str,
                 timing_cache_dir: Path | None) -> tuple[int, dict]:
    """Build, check against the stored fp32 output, and name the engine only if the check passed."""
    m = json.loads(manifest_path.read_text())
    bundle = manifest_path.parent
    precision = precision or m["tensorrt"]["default_precision"]
    report: dict = {"precision": precision, "built": False, "checked": False, "engine": None}
    variant = m["variants"].get(precision)
    if variant is None:
        report["reason"] = f"{manifest_path}: no {precision} variant in this bundle; it has {sorted(m['variants'])}"
        return EXIT_NOTHING_BUILT, report
    report["onnx"] = variant["file"]
    info = None
    try:
        builder = choose_builder(builder)
        profile = {k: (v["height"], v["width"]) for k, v in m["tensorrt"]["profile"].items()}
        info = build(bundle / variant["file"], out_dir, model=m["model"]["name"], precision=precision,
                     input_name=m["input"]["name"], channels=m["input"]["channels"],
                     multiple=m["input"]["size_multiple"], profile=profile,
                     workspace_mib=m["tensorrt"]["workspace_mib"], timing_cache_dir=timing_cache_dir,
                     builder=builder)
        report.update({k: v for k, v in info.items() if k not in ("candidate", "engine")})
        check = check_candidate(info, m, bundle, infer.ModelSpec.from_manifest(manifest_path))
        report["check"] = check
        if not check["passed"]:
            psnr = "non-finite output" if check["psnr_db"] is None else f"PSNR {check['psnr_db']:.2f} dB"
            report["reason"] = (f"the engine's output differs from the stored fp32 output: {psnr} < floor "
                                f"{check['min_psnr_db']:g} dB; engine removed")
            return EXIT_CHECK_FAILED, report
        commit_engine(Path(info["candidate"]), Path(info["engine"]))
        report.update({"built": True, "checked": True, "engine": Path(info["engine"]).name})
        return 0, report
    except (NoEngineBuilt, BuildFailed, FileNotFoundError, infer.CannotRun, infer.EngineMismatch,
            edge_cuda.CudaUnavailable) as e:
        report["reason"] = str(e)
        return EXIT_NOTHING_BUILT, report
    finally:
        if info is not None:
            discard(Path(info["candidate"]))  # after a commit there is nothing left to discard


def main(argv=None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", default=str(here / "manifest.json"),
                   help="bundle manifest (default: next to this file)")
    p.add_argument("--precision", choices=PRECISIONS, help="which ONNX variant to build (default: the manifest's)")
    p.add_argument("--out-dir", default=str(here), help="where the engine goes (default: here)")
    p.add_argument("--timing-cache-dir", help="where timing caches go (default: --out-dir)")
    p.add_argument("--builder", choices=("auto", "python", "trtexec"), default="auto",
                   help="auto: the tensorrt Python API if importable, else trtexec")
    p.add_argument("--report", help="the JSON report (default: <out-dir>/build-<precision>.json)")
    args = p.parse_args(argv)
    manifest = Path(args.manifest)
    if not manifest.is_file():
        say(f"error: {manifest}: no bundle manifest")
        return EXIT_NOTHING_BUILT
    out_dir = Path(args.out_dir)
    rc, report = bundle_build(manifest, args.precision, out_dir, args.builder,
                              Path(args.timing_cache_dir) if args.timing_cache_dir else None)
    report_path = Path(args.report or out_dir / f"build-{report['precision']}.json")
    atomic_write(report_path, (json.dumps(report, indent=2) + "\n").encode())
    if rc == 0:
        say(f"engine built and checked: {out_dir / report['engine']} ({report['check']['psnr_db']:.2f} dB vs the "
            f"stored fp32 output, floor {report['check']['min_psnr_db']:g}); report {report_path}")
    else:
        say(f"error: no engine: {report['reason']} (report {report_path})")
    return rc


if __name__ == "__main__":
    sys.exit(main())
