#!/usr/bin/env python3
"""Deblur an image with an exported model, on a device that has only numpy, OpenCV and one runtime.

This file is the edge bundle's `infer.py` (copied verbatim by `python -m pipeline_src bundle`), so it imports
nothing from the pipeline: numpy, OpenCV, and onnxruntime (for *.onnx) or tensorrt (for *.plan / *.engine).
TensorRT needs device memory; it is allocated through the CUDA runtime library with ctypes, so no pycuda or
torch is needed either. The pipeline imports it too (engine checks, latency benchmark).

    python infer.py --model model_fp16.onnx --input blurry.png --output sharp.png
    python infer.py --model kpac-sm87-trt10.3.0-fp16.plan --input left.png right.png --output sharp.png
    python infer.py --check --onnx model_fp16.onnx --model kpac-sm87-trt10.3.0-fp16.plan [--input img.png]

What the model expects comes from the bundle's manifest.json (next to this file; --manifest to change it), or
from an ONNX file's own metadata: input 1 x 3*views x H x W float32, RGB, each view divided by 255 (8-bit) or
65535 (16-bit) to [0, 1], views concatenated along channels in the manifest's order. The image is padded to
the size multiple by repeating its last row and column (what the model does itself), run, and cropped back.
The output is written at the input's bit depth: RGB clipped to [0, 1] (restoration) or the in-focus
probability as a grey image (detection).
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import glob
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ENGINE_SUFFIXES = (".plan", ".engine")
DEFAULT_MIN_PSNR_DB = 40.0  # --check without a manifest: engine vs ONNX Runtime


# ------------------------------------------------------------------------------------------------ images
def read_image(path) -> np.ndarray:
    """uint8/uint16 RGB (H, W, 3) at the file's bit depth."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise SystemExit(f"{path}: not a readable image")
    if img.dtype not in (np.uint8, np.uint16):
        raise SystemExit(f"{path}: {img.dtype} samples; expected 8- or 16-bit")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, 2::-1])  # BGR(A) -> RGB


def write_image(path, img: np.ndarray) -> None:
    arr = img[:, :, ::-1] if img.ndim == 3 else img
    if not cv2.imwrite(str(path), np.ascontiguousarray(arr)):
        raise SystemExit(f"{path}: OpenCV could not write it (check the suffix, e.g. .png)")


def to_input(images: list[np.ndarray]) -> np.ndarray:
    """View images (model order) -> 1 x C x H x W float32 in [0, 1]."""
    shapes = {img.shape for img in images}
    if len(shapes) != 1 or len({img.dtype for img in images}) != 1:
        raise SystemExit(f"input views differ in size or bit depth: {[(i.shape, str(i.dtype)) for i in images]}")
    x = np.concatenate([img.astype(np.float32) / float(np.iinfo(img.dtype).max) for img in images], axis=2)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def pad_to_multiple(x: np.ndarray, multiple: int, min_hw: tuple[int, int] = (1, 1)
                    ) -> tuple[np.ndarray, tuple[int, int]]:
    """Repeat the last row/column up to a multiple of `multiple`, and at least `min_hw` (an engine's smallest
    profile size); returns the padded array and the original (height, width)."""
    h, w = x.shape[-2:]
    ph = -(-max(h, min_hw[0]) // multiple) * multiple - h
    pw = -(-max(w, min_hw[1]) // multiple) * multiple - w
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
    return np.ascontiguousarray(x), (h, w)


def to_image(y: np.ndarray, task: str, dtype) -> np.ndarray:
    """Model output (1 x C x H x W) -> RGB (restoration) or grey probability (detection) at `dtype`."""
    top = float(np.iinfo(dtype).max)
    if task == "detection":
        out = 1.0 / (1.0 + np.exp(-y[0, 0].astype(np.float64)))
    else:
        out = np.clip(y[0].transpose(1, 2, 0).astype(np.float64), 0.0, 1.0)
    return np.round(out * top).astype(dtype)


def compare_outputs(reference: np.ndarray, test: np.ndarray) -> dict:
    """Max absolute difference and PSNR (data range 1, outputs clipped to [0, 1]) between two raw outputs."""
    if reference.shape != test.shape:
        raise ValueError(f"outputs differ in shape: {reference.shape} vs {test.shape}")
    a = np.clip(reference.astype(np.float64), 0, 1)
    b = np.clip(test.astype(np.float64), 0, 1)
    mse = float(np.mean((a - b) ** 2))
    return {"max_abs_diff": float(np.abs(reference.astype(np.float64) - test).max()),
            "psnr_db": 100.0 if mse == 0 else min(100.0, float(10 * np.log10(1.0 / mse)))}


# -------------------------------------------------------------------------------------------- model spec
@dataclass(frozen=True)
class ModelSpec:
    views: tuple[str, ...]
    size_multiple: int
    task: str
    input_name: str = "input"
    output_name: str = "output"

    @classmethod
    def from_manifest(cls, path) -> "ModelSpec":
        m = json.loads(Path(path).read_text())
        return cls(tuple(m["input"]["views"]), int(m["input"]["size_multiple"]), m["output"]["task"],
                   m["input"]["name"], m["output"]["name"])

    @classmethod
    def from_onnx(cls, path) -> "ModelSpec":
        import onnxruntime as ort

        meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
        props = meta.custom_metadata_map
        if "pipeline.size_multiple" not in props:
            raise SystemExit(f"{path}: no pipeline metadata; pass --manifest")
        return cls(tuple(json.loads(props["pipeline.input_views"])), int(props["pipeline.size_multiple"]),
                   props["pipeline.task"])


# --------------------------------------------------------------------------------------------- runtimes
class OnnxRuntimeModel:
    min_hw = (1, 1)  # dynamic height and width: any size

    def __init__(self, path, spec: ModelSpec, providers=None, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.spec = spec
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.spec.output_name], {self.spec.input_name: x})[0]


class CudaRuntime:
    """The few CUDA runtime calls TensorRT inference needs, through ctypes (libcudart ships with TensorRT)."""
    H2D, D2H = 1, 2
    ATTR_CC_MAJOR, ATTR_CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor / Minor

    def __init__(self):
        self.lib = self._load()
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p

    @staticmethod
    def _candidates() -> list[str]:
        names = [ctypes.util.find_library("cudart")] + [f"libcudart.so{v}" for v in ("", ".13", ".12", ".11.0")]
        for base in sys.path:  # the CUDA runtime wheels TensorRT's pip packages depend on
            names += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib", "libcudart.so*")), reverse=True)
        return [n for n in names if n]

    def _load(self):
        errors = []
        for name in self._candidates():
            try:
                return ctypes.CDLL(name)
            except OSError as e:
                errors.append(f"{name}: {e}")
        raise RuntimeError("CUDA runtime library (libcudart) not found; tried " + "; ".join(errors[:6]))

    def check(self, err: int, what: str) -> None:
        if err != 0:
            raise RuntimeError(f"CUDA {what} failed: {self.lib.cudaGetErrorString(err).decode()} (error {err})")

    def device_count(self) -> int:
        n = ctypes.c_int(0)
        err = self.lib.cudaGetDeviceCount(ctypes.byref(n))
        return n.value if err == 0 else 0

    def compute_capability(self, device: int = 0) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(major), self.ATTR_CC_MAJOR, device), "attribute")
        self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(minor), self.ATTR_CC_MINOR, device), "attribute")
        return major.value, minor.value

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


class TensorRTModel:
    """A serialized engine (TensorRT 10 or 11) with float32 input and output."""

    def __init__(self, path, spec: ModelSpec):
        import tensorrt as trt

        self.trt, self.spec, self.cuda = trt, spec, CudaRuntime()
        if self.cuda.device_count() < 1:
            raise RuntimeError("no CUDA device visible")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)  # kept: the engine must not outlive its runtime
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{path}: TensorRT could not deserialize it (built for another GPU or TensorRT "
                               f"version than {trt.__version__}? engines are not portable: rebuild on this device)")
        self.context = self.engine.create_execution_context()
        for name in (spec.input_name, spec.output_name):
            if self.engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise RuntimeError(f"{path}: tensor {name!r} is {self.engine.get_tensor_dtype(name)}, expected FLOAT")
        self.stream = self.cuda.stream()
        profile_min = self.engine.get_tensor_profile_shape(spec.input_name, 0)[0]
        self.min_hw = (int(profile_min[2]), int(profile_min[3]))
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes); grown, then reused

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr, size = self.cuda.malloc(nbytes), nbytes
            self._buffers[name] = (ptr, size)
            self.context.set_tensor_address(name, ptr)
        return ptr

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not self.context.set_input_shape(self.spec.input_name, tuple(x.shape)):
            raise ValueError(f"input shape {x.shape} is outside the engine's optimisation profile "
                             f"{self.engine.get_tensor_profile_shape(self.spec.input_name, 0)}")
        y = np.empty(tuple(self.context.get_tensor_shape(self.spec.output_name)), np.float32)
        self.cuda.to_device(self._buffer(self.spec.input_name, x.nbytes), x)
        d_out = self._buffer(self.spec.output_name, y.nbytes)
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.cuda.synchronize(self.stream)
        self.cuda.to_host(y, d_out)
        return y

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cuda.free(ptr)
        self._buffers.clear()


def load_model(path, spec: ModelSpec):
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{path}: no such model file")
    if path.suffix in ENGINE_SUFFIXES:
        return TensorRTModel(path, spec)
    if path.suffix == ".onnx":
        return OnnxRuntimeModel(path, spec)
    raise SystemExit(f"{path}: unknown model type; expected .onnx or {' / '.join(ENGINE_SUFFIXES)}")


def run_padded(model, x: np.ndarray, multiple: int, min_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Pad to the size multiple (and the model's smallest size), run, crop back to the input's height and width."""
    padded, (h, w) = pad_to_multiple(x, multiple, min_hw or model.min_hw)
    return model(padded)[:, :, :h, :w]


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model*.onnx (onnxruntime) or *.plan / *.engine (tensorrt)")
    p.add_argument("--input", nargs="+", help="input image(s), one per view in the manifest's order")
    p.add_argument("--output", help="output PNG (written at the input's bit depth)")
    p.add_argument("--manifest", default=str(Path(__file__).resolve().with_name("manifest.json")),
                   help="bundle manifest (default: manifest.json next to this script)")
    p.add_argument("--check", action="store_true",
                   help="run --model and --onnx on the same input and compare (exit 1 below --min-psnr); "
                        "without --input it uses the manifest's check_inputs, or seeded noise")
    p.add_argument("--onnx", help="with --check: the ONNX the engine was built from")
    p.add_argument("--min-psnr", type=float,
                   help="with --check: PSNR (dB) the outputs must reach (default: the manifest's for that "
                        f"variant, else {DEFAULT_MIN_PSNR_DB:g})")
    return p.parse_args(argv)


def check_defaults(args) -> tuple[list[str] | None, float]:
    """--input and --min-psnr for --check when not given: from the bundle manifest where it has them."""
    if not Path(args.manifest).is_file():
        return args.input, DEFAULT_MIN_PSNR_DB if args.min_psnr is None else args.min_psnr
    m = json.loads(Path(args.manifest).read_text())
    here = Path(args.manifest).parent
    inputs = args.input or [str(here / p) for p in m.get("check_inputs", [])] or None
    min_psnr = args.min_psnr
    if min_psnr is None:
        by_file = {v["file"]: p for p, v in m.get("variants", {}).items()}
        precision = by_file.get(Path(args.onnx or "").name)
        min_psnr = m.get("tensorrt", {}).get("min_psnr_vs_onnxruntime_db", {}).get(precision, DEFAULT_MIN_PSNR_DB)
    return inputs, float(min_psnr)


def model_spec(args) -> ModelSpec:
    if Path(args.manifest).is_file():
        return ModelSpec.from_manifest(args.manifest)
    onnx_file = args.model if args.model.endswith(".onnx") else args.onnx
    if onnx_file:
        return ModelSpec.from_onnx(onnx_file)
    raise SystemExit(f"{args.manifest}: no manifest, and no ONNX file to read the model's metadata from")


def main(argv=None) -> int:
    args = parse_args(argv)
    spec = model_spec(args)
    if args.check:
        args.input, args.min_psnr = check_defaults(args)
    if args.input:
        if len(args.input) != len(spec.views):
            raise SystemExit(f"the model reads {len(spec.views)} view(s) {list(spec.views)}; got {len(args.input)} "
                             "image(s)")
        images = [read_image(p) for p in args.input]
        x = to_input(images)
    elif args.check:  # no image given: seeded noise at a size every profile holds
        images = None
        x = np.random.default_rng(0).random((1, 3 * len(spec.views), 256, 256), dtype=np.float32)
    else:
        raise SystemExit("--input is required (or --check to compare on noise)")
    model = load_model(args.model, spec)
    y = run_padded(model, x, spec.size_multiple)
    if args.check:
        if not args.onnx:
            raise SystemExit("--check needs --onnx (the ONNX file to compare with)")
        ref = run_padded(OnnxRuntimeModel(args.onnx, spec), x, spec.size_multiple, model.min_hw)
        result = compare_outputs(ref, y)
        ok = result["psnr_db"] >= args.min_psnr
        print(json.dumps({"model": args.model, "onnx": args.onnx, **result, "min_psnr_db": args.min_psnr,
                          "passed": ok}))
        if not ok:
            return 1
    if args.output:
        if images is None:
            raise SystemExit("--output needs --input")
        write_image(args.output, to_image(y, spec.task, images[0].dtype))
        print(f"{args.output}: {y.shape[3]}x{y.shape[2]}, {np.iinfo(images[0].dtype).bits}-bit", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
