"""STAND-IN for NVIDIA's `tensorrt` Python package: it tests OUR control flow, not TensorRT.

Put on sys.path only inside the tests that use it (tests/export/standins/__init__.py builds a site folder
with it). It reproduces the behaviours of TensorRT 10.x / 11.x's Python bindings (python/src/infer/pyCore.cpp)
that the builder and infer.py must handle, and nothing about TensorRT's numerics:
- `trt.Logger` prints with std::cout, i.e. to file descriptor 1, whatever sys.stdout is; `trt.ILogger`
  subclasses must call `trt.ILogger.__init__(self)` (pybind11 trampolines);
- `IBuilderConfig.set_timing_cache(cache, ignore_mismatch=False)` returns False for a cache made on another
  device (different device properties); `get_timing_cache()` returns None when no cache is attached, or
  always with STANDIN_TRT_NO_TIMING_CACHE=1;
- `__version__` is STANDIN_TRT_VERSION (default 10.3.0.30, JetPack 6's TensorRT); 11.x networks are always
  strongly typed and have no STRONGLY_TYPED flag; a 10.x network built without it runs an fp16 ONNX in fp32;
- `Builder(logger)` raises TypeError (pybind11's "factory function returned nullptr") when CUDA fails;
- `Runtime.deserialize_cuda_engine` returns None for a plan of another TensorRT version or device;
- `IExecutionContext.set_input_shape` returns False outside the optimisation profile; device pointers are
  those of the stand-in libcudart (host memory), read and written directly;
- warnings are logged during builds, through the logger the caller passed.
STANDIN_TRT_BUILD_SECONDS makes a build take that long (to test the timing-cache lock).
"""
from __future__ import annotations

import ctypes
import enum
import hashlib
import os
import time
from pathlib import Path

import numpy as np

try:  # as the real wheel: the libs package loads its CUDA runtime before the bindings
    import tensorrt_libs  # noqa: F401
except ImportError:
    pass

from . import _device

__version__ = _device.trt_version()
_MAJOR = int(__version__.split(".")[0])


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = _Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = tuple(_Severity)

    def __init__(self):
        self._standin_initialised = True

    def log(self, severity, msg):  # pure virtual in TensorRT
        raise RuntimeError("Tried to call pure virtual function \"ILogger::log\"")


class Logger(ILogger):
    """TensorRT's default logger: writes to the process's standard output (std::cout), not to sys.stdout."""

    def __init__(self, min_severity=_Severity.WARNING):
        super().__init__()
        self.min_severity = min_severity

    def log(self, severity, msg):
        if severity > self.min_severity:
            return
        stamp = time.strftime("[%m/%d/%Y-%H:%M:%S] ")
        os.write(1, f"{stamp}[TRT] [{'FEWIV'[int(severity)]}] {msg}\n".encode())


def _log(logger, severity, msg):
    logger.log(severity, msg)


def _check_logger(logger):
    if not isinstance(logger, ILogger):
        raise TypeError(f"incompatible constructor arguments: logger must be a tensorrt.ILogger, got {type(logger)}")
    if not getattr(logger, "_standin_initialised", False):
        raise TypeError("tensorrt.ILogger.__init__() must be called when overriding __init__")


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class BuilderFlag(enum.IntEnum):
    TF32 = 0


if _MAJOR < 11:
    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 1
else:
    class NetworkDefinitionCreationFlag(enum.IntEnum):  # TensorRT 11: every network is strongly typed
        pass


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class _Tensor:
    def __init__(self, name, shape):
        self.name, self.shape = name, tuple(shape)


class INetworkDefinition:
    def __init__(self, strongly_typed: bool):
        self.strongly_typed = strongly_typed
        self.onnx = None
        self.description = None

    @property
    def num_inputs(self):
        return len(self.description["inputs"]) if self.description else 0

    def get_input(self, i):
        return _Tensor(*self.description["inputs"][i])


class _ParserError:
    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text


class OnnxParser:
    def __init__(self, network, logger):
        _check_logger(logger)
        self.network, self.logger, self.errors = network, logger, []

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]

    def parse_from_file(self, path):
        data = Path(path).read_bytes()
        try:
            self.network.description = _device.describe(data)
        except RuntimeError as e:
            self.errors.append(_ParserError(f"In node -1 (parseGraph): INVALID_GRAPH: {e}"))
            _log(self.logger, _Severity.ERROR, f"ModelImporter.cpp: Failed to parse ONNX model from file: {path}")
            return False
        self.network.onnx = data
        return True


class IOptimizationProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, min, opt, max):  # noqa: A002 - TensorRT's own argument names
        for lo, mid, hi in zip(min, opt, max):
            if not 0 <= lo <= mid <= hi:
                raise ValueError("min <= opt <= max violated")
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class ITimingCache:
    def __init__(self, device, entries):
        self.device, self.entries = device, dict(entries)

    def serialize(self):
        return memoryview(_device.serialize_cache(self.device, self.entries))

    def combine(self, input_cache, ignore_mismatch):
        if input_cache.device != self.device and not ignore_mismatch:
            return False
        self.entries.update(input_cache.entries)
        return True


class IBuilderConfig:
    def __init__(self, logger):
        self.logger = logger
        self.profiles, self.flags, self.pools = [], {BuilderFlag.TF32}, {}
        self._timing_cache = None

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def set_flag(self, flag):
        self.flags.add(flag)

    def get_flag(self, flag):
        return flag in self.flags

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache):
        parsed = _device.parse_cache(bytes(serialized_timing_cache))
        if parsed is None:
            _log(self.logger, _Severity.ERROR, "Failed to create a timing cache: the buffer is not a timing cache")
            return None
        return ITimingCache(*parsed)

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache.device != _device.device_properties() and not ignore_mismatch:
            _log(self.logger, _Severity.ERROR, "The provided timing cache was created on a different device "
                 f"({cache.device['name']}) than the current one: it cannot be used")
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self):
        if os.environ.get("STANDIN_TRT_NO_TIMING_CACHE"):
            return None
        return self._timing_cache


class Builder:
    def __init__(self, logger):
        _check_logger(logger)
        if _device.cuda_error():
            raise TypeError("pybind11::init(): factory function returned nullptr")
        self.logger = logger
        _log(logger, _Severity.WARNING, "CUDA lazy loading is not enabled. Enabling it can significantly reduce "
             "device memory usage and speed up TensorRT initialization. See \"Lazy Loading\" section of CUDA "
             "documentation")

    def create_network(self, flags=0):
        strongly = _MAJOR >= 11 or bool(flags & (1 << 1))
        return INetworkDefinition(strongly_typed=strongly)

    def create_builder_config(self):
        return IBuilderConfig(self.logger)

    def create_optimization_profile(self):
        return IOptimizationProfile()

    def build_serialized_network(self, network, config):
        return build_plan(network.onnx, network.description, network.strongly_typed, config.profiles,
                          config._timing_cache, self.logger, BuilderFlag.TF32 in config.flags)


def build_plan(onnx, description, strongly_typed, profiles, timing_cache, logger, tf32):
    """Shared by Builder and the stand-in trtexec: the "engine" for the current device."""
    if onnx is None:
        _log(logger, _Severity.ERROR, "Network must have at least one input")
        return None
    name, shape = description["inputs"][0]
    if not profiles or name not in profiles[0].shapes:
        _log(logger, _Severity.ERROR, f"Network has dynamic or shape inputs, but no optimization profile has been "
             f"defined for {name}")
        return None
    seconds = float(os.environ.get("STANDIN_TRT_BUILD_SECONDS") or 0)
    if seconds:
        time.sleep(seconds)
    precision = description["precision"] if strongly_typed else "fp32"
    if precision == "fp16" or not strongly_typed:
        _log(logger, _Severity.WARNING, "TensorRT encountered issues when converting weights between types and "
             "that could affect accuracy.")
    if timing_cache is not None:
        digest = hashlib.sha256(onnx).hexdigest()[:12]
        timing_cache.entries.update({f"{digest}:{i}": {"tactic": i, "ms": 0.1 * i} for i in range(3)})
    mins, opts, maxs = profiles[0].shapes[name]
    # shape inference, as TensorRT's builder does: the output's channels from one run at the profile's min
    out_channels = _device.run(onnx, name, np.zeros(mins, np.float32)).shape[1]
    header = {"tensorrt": __version__, "device": _device.device_properties(), "precision": precision,
              "tf32": bool(tf32), "input": name, "output": description["outputs"][0][0],
              "out_channels": int(out_channels), "profile": [list(mins), list(opts), list(maxs)]}
    return memoryview(_device.make_plan(onnx, header))


class Runtime:
    def __init__(self, logger):
        _check_logger(logger)
        self.logger = logger

    def deserialize_cuda_engine(self, data):
        parsed = _device.read_plan(bytes(data))
        if parsed is None:
            _log(self.logger, _Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                 "(Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
            return None
        header, onnx = parsed
        if header["tensorrt"] != __version__:
            _log(self.logger, _Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error "
                 "(The engine plan file is not compatible with this version of TensorRT, expecting library "
                 f"version {__version__} got {header['tensorrt']}, please rebuild.)")
            return None
        if header["device"] != _device.device_properties():
            _log(self.logger, _Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error "
                 "(The engine plan file is generated on an incompatible device, please rebuild.)")
            return None
        return ICudaEngine(header, onnx)


class ICudaEngine:
    def __init__(self, header, onnx):
        self.header, self.onnx = header, onnx

    @property
    def num_io_tensors(self):
        return 2

    def get_tensor_name(self, i):
        return (self.header["input"], self.header["output"])[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name == self.header["input"] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return DataType.FLOAT  # the variants keep float32 I/O

    def get_tensor_profile_shape(self, name, profile_index):
        return [tuple(s) for s in self.header["profile"]]

    def create_execution_context(self):
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine):
        self.engine, self.shape, self.addresses = engine, None, {}

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.header["profile"]
        if name != self.engine.header["input"] or len(shape) != len(lo):
            return False
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shape = tuple(int(s) for s in shape)
        return True

    def get_tensor_shape(self, name):
        n, _, h, w = self.shape
        return (n, self.engine.header["out_channels"], h, w) if name == self.engine.header["output"] else self.shape

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle):
        header = self.engine.header
        count = int(np.prod(self.shape))
        x = np.frombuffer(ctypes.string_at(self.addresses[header["input"]], 4 * count), np.float32)
        y = _device.run(self.engine.onnx, header["input"], x.reshape(self.shape).copy())
        y = np.ascontiguousarray(y, dtype=np.float32)
        ctypes.memmove(self.addresses[header["output"]], y.ctypes.data, y.nbytes)
        return True
