"""STAND-IN internals shared by the stand-in `tensorrt` package and the stand-in `trtexec`: what a "GPU", a
"plan" and a "timing cache" are here. Tests of OUR control flow only; nothing here models TensorRT's numerics.

- The device is described by the same STANDIN_GPU_* variables the stand-in libcudart reads (cudart.c), so the
  bundle's code (through ctypes) and the stand-in TensorRT agree on which device this is.
- A plan is a header (TensorRT version, device properties, precision, profile, tensor names) and the ONNX
  file it was built from; "running" it runs that ONNX in ONNX Runtime, so an fp16 plan computes what the fp16
  ONNX computes. STANDIN_ENGINE_NOISE=<sigma> adds seeded noise to every output (a bad engine, for the check).
- A timing cache is a header with the device properties plus entries; a cache from another device is the
  "mismatch" TensorRT reports.
- The ONNX work happens in this process (trtexec, a separate program anyway) or in a child "GPU" process
  (the Python package), so the process using the stand-in needs no onnxruntime: the bundle's engine path is
  tested in a process where onnxruntime is not importable.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys

import numpy as np

PLAN_MAGIC = b"STANDIN-TRT-PLAN\n"
CACHE_MAGIC = b"STANDIN-TRT-TIMING-CACHE\n"


def trt_version() -> str:
    return os.environ.get("STANDIN_TRT_VERSION", "10.3.0.30")


def device_properties() -> dict:
    """What a real timing cache / plan header records about the device (name, SMs, clocks, ...)."""
    env = os.environ.get
    return {"name": env("STANDIN_GPU_NAME") or "Orin", "cc": int(env("STANDIN_GPU_CC") or 87),
            "sms": int(env("STANDIN_GPU_SMS") or 16), "memclk": int(env("STANDIN_GPU_MEMCLK") or 3199000),
            "bus": int(env("STANDIN_GPU_BUS") or 256), "l2": int(env("STANDIN_GPU_L2") or 4194304)}


def cuda_error() -> int:
    return int(os.environ.get("STANDIN_CUDA_ERROR") or 0)


# ----------------------------------------------------------------------------------------------- plans
def make_plan(onnx_bytes: bytes, header: dict) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    return PLAN_MAGIC + struct.pack("<Q", len(head)) + head + onnx_bytes


def read_plan(data: bytes) -> tuple[dict, bytes] | None:
    if not data.startswith(PLAN_MAGIC):
        return None
    n = struct.unpack("<Q", data[len(PLAN_MAGIC):len(PLAN_MAGIC) + 8])[0]
    start = len(PLAN_MAGIC) + 8
    return json.loads(data[start:start + n]), data[start + n:]


# ---------------------------------------------------------------------------------------- timing cache
def serialize_cache(device: dict, entries: dict) -> bytes:
    return CACHE_MAGIC + json.dumps({"device": device, "entries": entries}, sort_keys=True).encode()


def parse_cache(data: bytes) -> tuple[dict, dict] | None:
    if not data:
        return device_properties(), {}
    if not data.startswith(CACHE_MAGIC):
        return None
    content = json.loads(data[len(CACHE_MAGIC):])
    return content["device"], content["entries"]


# ------------------------------------------------------------------------------------------- ONNX work
_sessions: dict = {}


def _local_describe(onnx_bytes: bytes) -> dict:
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    ops = {n.op_type for n in proto.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        precision = "int8"
    elif any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        precision = "fp16"
    else:
        precision = "fp32"

    def dims(value_info):
        return [d.dim_value if d.dim_value else -1 for d in value_info.type.tensor_type.shape.dim]

    return {"inputs": [(i.name, dims(i)) for i in proto.graph.input],
            "outputs": [(o.name, dims(o)) for o in proto.graph.output], "precision": precision}


def _local_run(onnx_bytes: bytes, name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    key = hashlib.sha256(onnx_bytes).hexdigest()
    if key not in _sessions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        _sessions[key] = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    y = _sessions[key].run(None, {name: x})[0]
    sigma = float(os.environ.get("STANDIN_ENGINE_NOISE") or 0)
    if sigma:
        y = y + np.random.default_rng(0).normal(0, sigma, y.shape).astype(np.float32)
    return y


class _Worker:
    """A child process doing the ONNX work (the stand-in's "GPU")."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        atexit.register(self.close)

    def call(self, *request):
        data = pickle.dumps(request)
        self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
        self.proc.stdin.flush()
        n = struct.unpack("<Q", self.proc.stdout.read(8))[0]
        ok, value = pickle.loads(self.proc.stdout.read(n))
        if not ok:
            raise RuntimeError(f"stand-in GPU worker: {value}")
        return value

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


_worker: _Worker | None = None


def describe(onnx_bytes: bytes, in_process: bool = False) -> dict:
    global _worker
    if in_process:
        return _local_describe(onnx_bytes)
    _worker = _worker or _Worker()
    return _worker.call("describe", onnx_bytes)


def run(onnx_bytes: bytes, name: str, x: np.ndarray, in_process: bool = False) -> np.ndarray:
    global _worker
    if in_process:
        return _local_run(onnx_bytes, name, x)
    _worker = _worker or _Worker()
    return _worker.call("run", onnx_bytes, name, x)


def serve() -> None:
    src, dst = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = src.read(8)
        if len(head) < 8:
            return
        op, *args = pickle.loads(src.read(struct.unpack("<Q", head)[0]))
        try:
            value = (True, _local_describe(*args) if op == "describe" else _local_run(*args))
        except Exception as e:  # reported to the caller, which raises it
            value = (False, f"{type(e).__name__}: {e}")
        data = pickle.dumps(value)
        dst.write(struct.pack("<Q", len(data)) + data)
        dst.flush()


if __name__ == "__main__":
    serve()
