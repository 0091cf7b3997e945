"""STAND-IN for NVIDIA's `trtexec` command: it tests OUR control flow, not TensorRT.

Installed by the tests as `<tmp>/bin/trtexec` (a shell wrapper running this file), on PATH only inside the
tests that use it. It reproduces what matters to the bundle's builder, from trtexec's sources (TensorRT 10.3:
samples/trtexec/trtexec.cpp, samples/common/{logging.h,sampleOptions.cpp,sampleReporting.cpp},
samples/utils/timingCache.cpp):
- `&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec ...` first, `&&&& PASSED|FAILED ...` last, and
  INFO lines on standard output; warnings and errors on standard error; exit 1 on failure;
- `--help`: the banner and the usage on standard output, exit 0;
- options of TensorRT 8.x lack --stronglyTyped ("Unknown option", exit 1); without it a network is built
  weakly typed, so an fp16 ONNX becomes an fp32 engine (the defect the version gate prevents);
- `--timingCacheFile`: read under `<file>.lock` (lockf) and attached with ignore_mismatch=true (a cache of
  another device is used silently); after the build, combined into the file with ignore_mismatch=false (a
  mismatched file is left as it was);
- `--loadEngine --shapes --loadInputs --exportOutput`: one inference, outputs written as trtexec's JSON
  (values printed like a C++ stream: 6 significant digits, nan/inf spelled as C++ does).
Device and version come from the same STANDIN_* variables as the stand-in tensorrt package and libcudart.
"""
from __future__ import annotations

import fcntl
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.environ["STANDIN_SITE"])
import numpy as np  # noqa: E402
import tensorrt as trt  # noqa: E402  (the stand-in package)
from tensorrt import _device  # noqa: E402

VERSION = _device.trt_version()
MAJOR, MINOR, PATCH = (int(p) for p in VERSION.split(".")[:3])
ENCODED = MAJOR * 10000 + MINOR * 100 + PATCH if MAJOR >= 10 else MAJOR * 1000 + MINOR * 100 + PATCH
KNOWN = {"--onnx", "--saveEngine", "--loadEngine", "--minShapes", "--optShapes", "--maxShapes", "--shapes",
         "--timingCacheFile", "--memPoolSize", "--skipInference", "--noTF32", "--fp16", "--int8", "--loadInputs",
         "--exportOutput", "--iterations", "--warmUp", "--duration", "--avgRuns", "--verbose", "--help"}
if MAJOR >= 10:
    KNOWN.add("--stronglyTyped")


class StreamLogger(trt.ILogger):
    """trtexec's logger: INFO and VERBOSE to standard output, WARNING and worse to standard error."""

    def __init__(self):
        trt.ILogger.__init__(self)

    def log(self, severity, msg):
        if severity > trt.ILogger.INFO:
            return
        stream = sys.stdout if severity >= trt.ILogger.INFO else sys.stderr
        stream.write(time.strftime("[%m/%d/%Y-%H:%M:%S] ") + f"[{'FEWIV'[int(severity)]}] {msg}\n")
        stream.flush()


LOG = StreamLogger()


def info(msg):
    LOG.log(trt.ILogger.INFO, msg)


def error(msg):
    LOG.log(trt.ILogger.ERROR, msg)


def banner(state, argv):
    print(f"&&&& {state} TensorRT.trtexec [TensorRT v{ENCODED}] # trtexec {' '.join(argv)}", flush=True)


def parse(argv):
    opts = {}
    for arg in argv:
        key, _, value = arg.partition("=")
        opts[key] = value
    return opts


def shape_spec(text):
    name, _, dims = text.rpartition(":")
    return name.strip("'"), tuple(int(d) for d in dims.split("x"))


class Locked:
    """samples/utils/fileLock.cpp: `<file>.lock`, lockf(F_LOCK)."""

    def __init__(self, path):
        self.path = f"{path}.lock"

    def __enter__(self):
        self.f = open(self.path, "a+b")
        fcntl.lockf(self.f.fileno(), fcntl.LOCK_EX)

    def __exit__(self, *exc):
        fcntl.lockf(self.f.fileno(), fcntl.LOCK_UN)
        self.f.close()


def build(opts):
    onnx = Path(opts["--onnx"]).read_bytes()
    description = _device.describe(onnx, in_process=True)
    profile = trt.IOptimizationProfile()
    name = description["inputs"][0][0]
    profile.set_shape(name, *(shape_spec(opts[k])[1] for k in ("--minShapes", "--optShapes", "--maxShapes")))
    cache_file = opts.get("--timingCacheFile")
    cache = None
    if cache_file:
        with Locked(cache_file):
            data = Path(cache_file).read_bytes() if Path(cache_file).is_file() else b""
        if data:
            info(f"Loaded {len(data)} bytes of timing cache from {cache_file}")
        else:
            LOG.log(trt.ILogger.WARNING, f"Could not read timing cache from: {cache_file}. A new timing cache will "
                    "be generated and written.")
        parsed = _device.parse_cache(data)
        cache = trt.ITimingCache(*parsed)  # set with ignore_mismatch=true: another device's cache is used
    strongly = MAJOR >= 11 or "--stronglyTyped" in opts
    plan = trt.build_plan(onnx, description, strongly, [profile], cache, LOG, "--noTF32" not in opts)
    if plan is None:
        return False
    Path(opts["--saveEngine"]).write_bytes(bytes(plan))
    info(f"Engine built in 0.1 sec. Saved engine to {opts['--saveEngine']}")
    if cache_file:
        with Locked(cache_file):
            existing = Path(cache_file).read_bytes() if Path(cache_file).is_file() else b""
            merged = trt.ITimingCache(*_device.parse_cache(existing))
            if merged.combine(cache, False):  # a mismatched file is left as it was
                Path(cache_file).write_bytes(bytes(merged.serialize()))
                info(f"Saved {len(bytes(merged.serialize()))} bytes of timing cache to {cache_file}")
    return True


def cpp_float(v):
    if math.isnan(v):
        return "nan" if math.copysign(1, v) > 0 else "-nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:g}"


def infer(opts):
    engine = trt.Runtime(LOG).deserialize_cuda_engine(Path(opts["--loadEngine"]).read_bytes())
    if engine is None:
        error("Engine deserialization failed")
        return False
    name, shape = shape_spec(opts["--shapes"])
    context = engine.create_execution_context()
    if not context.set_input_shape(name, shape):
        error(f"Shape {shape} for input {name} is out of the optimization profile")
        return False
    if "--loadInputs" in opts:
        _, _, path = opts["--loadInputs"].partition(":")
        x = np.fromfile(path.strip("'"), dtype=np.float32).reshape(shape)
    else:
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
    y = _device.run(engine.onnx, name, x, in_process=True)
    info("Average on 1 runs - GPU latency: 1.0 ms")
    if "--exportOutput" in opts:
        with open(opts["--exportOutput"], "w") as f:
            f.write("[\n")
            f.write(f'  {{ "name" : "{engine.header["output"]}"\n')
            f.write(f'  , "dimensions" : "{"x".join(str(d) for d in y.shape)}"\n')
            f.write('  , "values" : [ ' + ", ".join(cpp_float(float(v)) for v in y.ravel()) + " ]\n  }\n]\n")
    return True


def main(argv):
    banner("RUNNING", argv)
    opts = parse(argv)
    if not argv or "--help" in opts:
        print("=== Model Options ===\n  --onnx=<file>  ONNX model\n=== Build Options ===\n  ...", flush=True)
        banner("PASSED", argv)
        return 0
    unknown = [k for k in opts if k not in KNOWN]
    if unknown:
        for k in unknown:
            error(f"Unknown option: {k} {opts[k]}")
        banner("FAILED", argv)
        return 1
    info(f"TensorRT version: {MAJOR}.{MINOR}.{PATCH}")
    if _device.cuda_error():
        error("Cuda failure: CUDA driver version is insufficient for CUDA runtime version")
        banner("FAILED", argv)
        return 1
    ok = build(opts) if "--onnx" in opts else infer(opts)
    banner("PASSED" if ok else "FAILED", argv)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
