#!/usr/bin/env python3
"""The CUDA runtime through ctypes: find libcudart, say what is wrong when CUDA cannot run, name the device,
and move tensors to and from it. No pycuda, cuda-python or torch: a Jetson has none of them.

Ships in the edge bundle as `edge_cuda.py` (copied verbatim by `python -m pipeline_src bundle`), so it imports
nothing from the pipeline; `infer.py` and `build_engine.py` use it, and so does the pipeline's build-engine stage.

Which libcudart is loaded (issue 11, point 7), first found wins:
1. `CUDART_LIBRARY=/path/to/libcudart.so.N`, when set;
2. a libcudart already mapped into this process: importing the tensorrt wheel loads the CUDA runtime it was
   built against (tensorrt_libs/__init__.py of TensorRT 10.x loads `nvidia/cuda_runtime/lib/*.so*`), and using
   that same copy avoids two runtimes in one process;
3. the runtime shipped with the installed TensorRT wheel, found without importing tensorrt: `libcudart.so*`
   inside the `tensorrt_libs` / `tensorrt_cuNN_libs` package, then `nvidia/cuda_runtime/lib/` and `nvidia/cuNN/lib/`
   beside it (the `nvidia-cuda-runtime-cuNN` wheel that tensorrt-cuNN-libs requires), the wheel's CUDA major first;
4. `nvidia/*/lib/libcudart.so*` anywhere else on sys.path (the CUDA wheels of another package);
5. the system's: the loader's `libcudart.so`, the sonames .13/.12/.11.0, `/usr/local/cuda/lib64` (JetPack 6).

What goes wrong is said as it is: no libcudart at all (CudaRuntimeNotFound), a driver that is missing, too old
or failing (CudaDriverError, with CUDA's own error name: update the driver / JetPack), and a working driver that
sees no device (NoCudaDevice). Before this, every failure of cudaGetDeviceCount read as "no CUDA device".
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
import re
import sys
from dataclasses import dataclass

import numpy as np

CUDART_ENV = "CUDART_LIBRARY"
SYSTEM_CUDA_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/aarch64-linux/lib")

# cudaError_t values that mean "no device" rather than a driver fault (CUDA runtime API, driver_types.h)
CUDA_SUCCESS = 0
CUDA_ERROR_NO_DEVICE = 100
# cudaDeviceAttr values (driver_types.h; unchanged from CUDA 10 to 13)
ATTR_MULTIPROCESSORS = 16
ATTR_MEMORY_CLOCK_KHZ = 36
ATTR_MEMORY_BUS_WIDTH = 37
ATTR_L2_CACHE_BYTES = 38
ATTR_CC_MAJOR, ATTR_CC_MINOR = 75, 76
PROPS_BUFFER_BYTES = 16384  # larger than cudaDeviceProp of any CUDA release; `name` is its first field in all


class CudaUnavailable(RuntimeError):
    """CUDA cannot be used here; the subclass says which part is missing."""


class CudaRuntimeNotFound(CudaUnavailable):
    """No libcudart could be loaded."""


class CudaDriverError(CudaUnavailable):
    """The runtime loaded but the driver is missing, too old or failing."""


class NoCudaDevice(CudaUnavailable):
    """Runtime and driver work, and they see no CUDA device."""


@dataclass(frozen=True)
class Device:
    """What makes an engine or a timing cache belong to a device (the key) and what else identifies it."""
    name: str
    compute_capability: tuple[int, int]
    multiprocessors: int
    fingerprint: dict

    @property
    def key(self) -> str:
        """e.g. "orin_16sm-sm87": device name and SM count (two sm87 Orins differ in both) and architecture.
        No "-" inside the name part, so engine names can be split from the right."""
        major, minor = self.compute_capability
        return f"{device_slug(self.name)}_{self.multiprocessors}sm-sm{major}{minor}"

    def as_dict(self) -> dict:
        return {"name": self.name, "compute_capability": "%d.%d" % self.compute_capability,
                "multiprocessors": self.multiprocessors, "key": self.key, "fingerprint": self.fingerprint}


def device_slug(name: str) -> str:
    """"NVIDIA GeForce RTX 4090" -> "nvidia_geforce_rtx_4090"; lower case, letters, digits and "_" only."""
    slug = re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")
    return slug or "unnamed_gpu"


# ------------------------------------------------------------------------------------------- finding it
def _mapped_cudart() -> list[str]:
    """libcudart files already mapped into this process (Linux); empty elsewhere."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libcudart.so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.isfile(p))


def _tensorrt_cuda_major() -> str | None:
    """"12" for an installed tensorrt-cu12 wheel (from its distribution name), else None."""
    try:
        from importlib import metadata
    except ImportError:
        return None
    for dist in metadata.distributions():
        m = re.fullmatch(r"tensorrt[-_]cu(\d+)(?:[-_](?:libs|bindings))?", (dist.metadata["Name"] or "").lower())
        if m:
            return m.group(1)
    return None


def _by_major_first(paths: list[str], major: str | None) -> list[str]:
    return sorted(paths, key=lambda p: (0 if major and re.search(rf"\.so\.{major}(\.|$)", p) else 1, p))


def _tensorrt_wheel_cudart() -> list[str]:
    """libcudart files shipped with the installed TensorRT wheel, found without importing tensorrt."""
    found: list[str] = []
    major = _tensorrt_cuda_major()
    for package in ("tensorrt_libs", *(f"tensorrt_cu{m}_libs" for m in ("13", "12", "11")), "tensorrt"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            site = os.path.dirname(os.path.abspath(location))
            found += _by_major_first(glob.glob(os.path.join(location, "libcudart.so*")), major)
            found += _by_major_first(glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "lib", "libcudart.so*"))
                                     + glob.glob(os.path.join(site, "nvidia", "cu[0-9]*", "lib", "libcudart.so*")),
                                     major)
    return found


def _other_wheel_cudart() -> list[str]:
    found = []
    for base in sys.path:
        found += sorted(glob.glob(os.path.join(base or ".", "nvidia", "*", "lib", "libcudart.so*")), reverse=True)
    return found


def _system_cudart() -> list[str]:
    names = [ctypes.util.find_library("cudart") or ""] + [f"libcudart.so{v}" for v in (".13", ".12", ".11.0", "")]
    for d in SYSTEM_CUDA_DIRS:
        names += sorted(glob.glob(os.path.join(d, "libcudart.so*")), reverse=True)
    return [n for n in names if n]


def cudart_candidates() -> list[tuple[str, str]]:
    """(library, where it comes from) in the order they are tried."""
    ordered: list[tuple[str, str]] = []
    if os.environ.get(CUDART_ENV):
        ordered.append((os.environ[CUDART_ENV], f"${CUDART_ENV}"))
    ordered += [(p, "already loaded in this process") for p in _mapped_cudart()]
    ordered += [(p, "shipped with the installed TensorRT wheel") for p in _tensorrt_wheel_cudart()]
    ordered += [(p, "a CUDA wheel on sys.path") for p in _other_wheel_cudart()]
    ordered += [(p, "the system") for p in _system_cudart()]
    seen, unique = set(), []
    for path, origin in ordered:
        real = os.path.realpath(path) if os.sep in path else path
        if real not in seen:
            seen.add(real)
            unique.append((path, origin))
    return unique


# --------------------------------------------------------------------------------------------- the API
class CudaRuntime:
    """The few CUDA runtime calls TensorRT inference and device identification need."""
    H2D, D2H = 1, 2

    def __init__(self):
        self.lib, self.path, self.origin = self._load()
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.lib.cudaGetErrorName.restype = ctypes.c_char_p

    @staticmethod
    def _load():
        tried = []
        for path, origin in cudart_candidates():
            try:
                return ctypes.CDLL(path), path, origin
            except OSError as e:
                tried.append(f"{path} ({str(e).split(':')[-1].strip()})")
        raise CudaRuntimeNotFound("the CUDA runtime library (libcudart) was not found: install the TensorRT wheel with "
                                  f"its CUDA runtime, JetPack, or the CUDA toolkit, or set {CUDART_ENV}; tried "
                                  + "; ".join(tried[:6]))

    def error_text(self, err: int) -> str:
        name = (self.lib.cudaGetErrorName(err) or b"unknown").decode()
        text = (self.lib.cudaGetErrorString(err) or b"").decode()
        return f"{name} ({err}): {text}"

    def check(self, err: int, what: str) -> None:
        if err != CUDA_SUCCESS:
            raise RuntimeError(f"CUDA {what} failed: {self.error_text(err)}")

    def device_count(self) -> int:
        """The number of devices; a driver fault raises CudaDriverError, none visible raises NoCudaDevice."""
        n = ctypes.c_int(0)
        err = self.lib.cudaGetDeviceCount(ctypes.byref(n))
        if err == CUDA_ERROR_NO_DEVICE or (err == CUDA_SUCCESS and n.value < 1):
            raise NoCudaDevice(f"no CUDA device is visible (runtime {self.path}; CUDA_VISIBLE_DEVICES="
                               f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})")
        if err != CUDA_SUCCESS:
            raise CudaDriverError(f"the CUDA driver failed: cudaGetDeviceCount returned {self.error_text(err)} "
                                  f"(runtime {self.path}); install or update the NVIDIA driver (JetPack on Jetson) "
                                  "to one that supports this CUDA runtime")
        return n.value

    def attribute(self, attr: int, device: int = 0) -> int:
        value = ctypes.c_int()
        self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(value), attr, device), f"attribute {attr}")
        return value.value

    def compute_capability(self, device: int = 0) -> tuple[int, int]:
        return self.attribute(ATTR_CC_MAJOR, device), self.attribute(ATTR_CC_MINOR, device)

    def device_name(self, device: int = 0) -> str:
        buf = ctypes.create_string_buffer(PROPS_BUFFER_BYTES)
        # CUDA 12 headers map cudaGetDeviceProperties to the _v2 symbol; older runtimes have only the plain one
        getter = getattr(self.lib, "cudaGetDeviceProperties_v2", None) or self.lib.cudaGetDeviceProperties
        self.check(getter(buf, device), "cudaGetDeviceProperties")
        return buf.raw[:256].split(b"\0", 1)[0].decode(errors="replace").strip()

    def device(self, index: int = 0) -> Device:
        """The device's identity; raises CudaUnavailable (with the reason) when CUDA cannot run."""
        count = self.device_count()
        if index >= count:
            raise NoCudaDevice(f"CUDA device {index} asked for; {count} visible")
        fingerprint = {"memory_clock_khz": self.attribute(ATTR_MEMORY_CLOCK_KHZ, index),
                       "memory_bus_width_bits": self.attribute(ATTR_MEMORY_BUS_WIDTH, index),
                       "l2_cache_bytes": self.attribute(ATTR_L2_CACHE_BYTES, index)}
        return Device(self.device_name(index), self.compute_capability(index),
                      self.attribute(ATTR_MULTIPROCESSORS, index), fingerprint)

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes)), f"cudaMalloc({nbytes})")
        return ptr.value

    def free(self, ptr: int) -> None:
        self.check(self.lib.cudaFree(ctypes.c_void_p(ptr)), "cudaFree")

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        self.check(self.lib.cudaMemcpy(ctypes.c_void_p(ptr), host.ctypes.data_as(ctypes.c_void_p),
                                       ctypes.c_size_t(host.nbytes), self.H2D), "copy to device")

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        self.check(self.lib.cudaMemcpy(host.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(ptr),
                                       ctypes.c_size_t(host.nbytes), self.D2H), "copy to host")

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return s.value or 0

    def synchronize(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def destroy_stream(self, stream: int) -> None:
        if stream:
            self.check(self.lib.cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")


def main() -> int:
    """`python3 edge_cuda.py`: which libcudart is used and what device it sees (or why none)."""
    try:
        cuda = CudaRuntime()
        print(f"libcudart: {cuda.path} ({cuda.origin})", file=sys.stderr)
        print(f"device: {cuda.device().as_dict()}", file=sys.stderr)
    except CudaUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
