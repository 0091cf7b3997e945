#!/usr/bin/env python3
"""Deblur an image of any size with an exported model, on a device that has numpy, OpenCV and one runtime.

This file is the edge bundle's `infer.py` (copied verbatim by `python -m pipeline_src bundle`, beside
`edge_cuda.py` and `edge_tiling.py`), so it imports nothing from the pipeline: numpy, OpenCV, and onnxruntime
(for *.onnx) or tensorrt (for *.plan / *.engine). TensorRT's device memory comes from the CUDA runtime through
ctypes (edge_cuda.py): no pycuda or torch. The pipeline imports it too (engine checks, latency benchmark).

    python3 infer.py --model model_fp16.onnx --input blurry.png --output sharp.png
    python3 infer.py --model kpac-orin_16sm-sm87-trt10.3.0-fp16.plan --input frame_1080p.png --output sharp.png
    python3 infer.py --check --model kpac-orin_16sm-sm87-trt10.3.0-fp16.plan      # vs the stored fp32 output

What the model expects comes from the bundle's manifest.json (next to this file; --manifest to change it), or
from an ONNX file's own metadata: input 1 x 3*views x H x W float32, RGB, each view divided by 255 (8-bit) or
65535 (16-bit), views concatenated along channels in the manifest's order. The image is padded to the size
multiple by repeating its last row and column (what the model does itself), run, and cropped back. A frame
larger than a TensorRT engine's optimisation profile is run in overlapping tiles inside the profile and blended
(edge_tiling.py; tile size and overlap from the manifest's `tiling`). The output is written at the input's bit
depth: RGB clipped to [0, 1] (restoration) or the in-focus probability as a grey image (detection).

`--check` runs an engine on the bundle's stored check input and compares it with the stored output of the fp32
model (made when the bundle was made), so no onnxruntime is needed on the device; the PSNR floor for the
engine's precision is in the manifest. An ONNX variant is checked the same way (its precision from the manifest's
`variants`). The check's report goes to a file (--report), never to standard output:
TensorRT's own logger and other libraries print there. TensorRT messages go to standard error through this
script's own logger. Exit codes: 0 done (check passed), 1 check failed, 2 cannot run (the message says why).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

if __package__:  # inside the pipeline
    from . import edge_cuda, edge_tiling
else:  # inside a bundle, next to this file
    import edge_cuda
    import edge_tiling

ENGINE_SUFFIXES = (".plan", ".engine")
SUPPORTED_TENSORRT_MAJORS = (10, 11)  # strongly typed networks: the ONNX variant decides the precision
DEFAULT_MIN_PSNR_DB = 40.0  # --check --onnx without a manifest floor
PSNR_CAP_DB = 100.0
EXIT_CHECK_FAILED, EXIT_CANNOT_RUN = 1, 2
# <model>-<device key>-sm<cc>-trt<version>-<precision>.plan, as trt_builder.engine_name writes it
ENGINE_NAME = re.compile(r"^(?P<model>.+)-(?P<device>[a-z0-9_]+_\d+sm-sm\d+)-trt(?P<tensorrt>\d+\.\d+(?:\.\d+)?)"
                         r"-(?P<precision>fp32|fp16|int8)\.(?:plan|engine)$")


class CannotRun(Exception):
    """A problem the user fixes (a file, an argument, the device): printed as one `error:` line, exit 2."""


class UnsupportedTensorRT(RuntimeError):
    """A TensorRT version these scripts do not build or run engines with."""


class EngineMismatch(RuntimeError):
    """An engine built for another device or TensorRT version than this one."""


# ------------------------------------------------------------------------------------------------ images
def read_image(path) -> np.ndarray:
    """uint8/uint16 RGB (H, W, 3) at the file's bit depth."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CannotRun(f"{path}: not a readable image")
    if img.dtype not in (np.uint8, np.uint16):
        raise CannotRun(f"{path}: {img.dtype} samples; expected 8- or 16-bit")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, 2::-1])  # BGR(A) -> RGB


def write_image(path, img: np.ndarray) -> None:
    """Written under a temporary name and renamed, so a killed run leaves no half image under `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    arr = img[:, :, ::-1] if img.ndim == 3 else img
    try:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(arr)):
            raise CannotRun(f"{path}: OpenCV could not write it (check the folder and the suffix, e.g. .png)")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def to_input(images: list[np.ndarray]) -> np.ndarray:
    """View images (model order) -> 1 x C x H x W float32 in [0, 1]."""
    shapes = {img.shape for img in images}
    if len(shapes) != 1 or len({img.dtype for img in images}) != 1:
        raise CannotRun(f"input views differ in size or bit depth: {[(i.shape, str(i.dtype)) for i in images]}")
    x = np.concatenate([img.astype(np.float32) / float(np.iinfo(img.dtype).max) for img in images], axis=2)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def pad_to_multiple(x: np.ndarray, multiple: int, min_hw: tuple[int, int] = (1, 1)
                    ) -> tuple[np.ndarray, tuple[int, int]]:
    """Repeat the last row/column up to a multiple of `multiple`, and at least `min_hw` (an engine's smallest
    profile size); returns the padded array and the original (height, width)."""
    return edge_tiling.pad_to(x, multiple, min_hw), tuple(x.shape[-2:])


def scored(y: np.ndarray, task: str) -> np.ndarray:
    """Raw output -> what is written and compared: RGB clipped to [0, 1], or the in-focus probability."""
    y = y.astype(np.float64)
    return 1.0 / (1.0 + np.exp(-y)) if task == "detection" else np.clip(y, 0.0, 1.0)


def to_image(y: np.ndarray, task: str, dtype) -> np.ndarray:
    """Model output (1 x C x H x W) -> RGB (restoration) or grey probability (detection) at `dtype`."""
    out = scored(y[0, :1] if task == "detection" else y[0], task)
    out = out[0] if task == "detection" else out.transpose(1, 2, 0)
    return np.round(out * float(np.iinfo(dtype).max)).astype(dtype)


def compare_outputs(reference: np.ndarray, test: np.ndarray, task: str = "restoration") -> dict:
    """Max absolute difference of the raw outputs and PSNR (data range 1) of what is written (clipped RGB, or
    the probability for detection). Non-finite outputs give psnr_db None."""
    if reference.shape != test.shape:
        raise ValueError(f"outputs differ in shape: {reference.shape} vs {test.shape}")
    finite = bool(np.isfinite(test).all() and np.isfinite(reference).all())
    diff = np.abs(reference.astype(np.float64) - test.astype(np.float64))
    if not finite:
        return {"max_abs_diff": None, "psnr_db": None, "finite": False}
    mse = float(np.mean((scored(reference, task) - scored(test, task)) ** 2))
    psnr = PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(1.0 / mse))
    return {"max_abs_diff": float(diff.max()), "psnr_db": psnr, "finite": True}


# ----------------------------------------------------------------------------------------------- TensorRT
def tensorrt_major(version: str) -> int:
    head = str(version).split(".")[0]
    if not head.isdigit():
        raise UnsupportedTensorRT(f"TensorRT version {version!r} is not MAJOR.MINOR.PATCH")
    return int(head)


def require_supported_tensorrt(version: str, where: str) -> None:
    """Refuse TensorRT versions these scripts do not support, naming the version found and the ones needed."""
    if tensorrt_major(version) not in SUPPORTED_TENSORRT_MAJORS:
        raise UnsupportedTensorRT(
            f"{where} is TensorRT {version}; these scripts need TensorRT "
            f"{' or '.join(f'{m}.x' for m in SUPPORTED_TENSORRT_MAJORS)} (strongly typed networks: older versions "
            "would build the fp16/int8 ONNX in another precision than its name says); on Jetson use JetPack 6")


def stderr_logger(trt, min_severity: str = "WARNING"):
    """A trt.ILogger that writes to standard error. trt.Logger prints to standard output (std::cout in
    TensorRT's pyCore.cpp), where it would corrupt anything a caller reads from there.
    Keep a reference to it as long as the builder, runtime or engine using it lives."""
    order = ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"]
    letters = dict(zip(order, "FEWIV"))
    limit = order.index(min_severity)

    class StderrLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)  # pybind11 trampolines need the base initialiser called explicitly

        def log(self, severity, msg):
            name = getattr(severity, "name", str(severity)).split(".")[-1]
            if name in order and order.index(name) <= limit:
                print(f"[TRT] [{letters[name]}] {msg}", file=sys.stderr, flush=True)

    return StderrLogger()


def parse_engine_name(path) -> dict | None:
    """{"model", "device", "tensorrt", "precision"} from an engine file name written by build_engine.py."""
    m = ENGINE_NAME.match(Path(path).name)
    return m.groupdict() if m else None


def require_engine_for_this_device(path, device_key: str, trt_version: str) -> None:
    """An engine named for another device or TensorRT version is refused before TensorRT tries to load it."""
    named = parse_engine_name(path)
    if named is None:
        return  # renamed by hand: TensorRT's own deserialization check is all there is
    here = ".".join(str(trt_version).split(".")[:3])
    if named["device"] != device_key or named["tensorrt"] != here:
        raise EngineMismatch(f"{path}: built for {named['device']} with TensorRT {named['tensorrt']}; this is "
                             f"{device_key} with TensorRT {here}: build one here with ./build_engine.sh "
                             f"{named['precision']}")


# -------------------------------------------------------------------------------------------- model spec
@dataclass(frozen=True)
class ModelSpec:
    views: tuple[str, ...]
    size_multiple: int
    task: str
    input_name: str = "input"
    output_name: str = "output"
    tile_hw: tuple[int, int] | None = None  # None: the engine profile's maximum
    tile_overlap: int = 64
    tile_margin: int = 16

    @classmethod
    def from_manifest(cls, path) -> "ModelSpec":
        m = json.loads(Path(path).read_text())
        tiling = m.get("tiling", {})
        tile = tiling.get("tile")
        return cls(tuple(m["input"]["views"]), int(m["input"]["size_multiple"]), m["output"]["task"],
                   m["input"]["name"], m["output"]["name"],
                   (int(tile["height"]), int(tile["width"])) if tile else None,
                   int(tiling.get("overlap", 64)), int(tiling.get("margin", 16)))

    @classmethod
    def from_onnx(cls, path) -> "ModelSpec":
        import onnxruntime as ort

        meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
        props = meta.custom_metadata_map
        if "pipeline.size_multiple" not in props:
            raise CannotRun(f"{path}: no pipeline metadata; pass --manifest")
        return cls(tuple(json.loads(props["pipeline.input_views"])), int(props["pipeline.size_multiple"]),
                   props["pipeline.task"])


# --------------------------------------------------------------------------------------------- runtimes
class OnnxRuntimeModel:
    min_hw = (1, 1)  # dynamic height and width: any size
    max_hw = None

    def __init__(self, path, spec: ModelSpec, providers=None, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.spec = spec
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.spec.output_name], {self.spec.input_name: x})[0]

    def close(self) -> None:
        pass


class TensorRTModel:
    """A serialized engine (TensorRT 10 or 11) with float32 input and output, one optimisation profile."""

    def __init__(self, path, spec: ModelSpec):
        import tensorrt as trt  # first: its wheel loads the CUDA runtime that edge_cuda then prefers

        require_supported_tensorrt(trt.__version__, "the tensorrt Python package")
        self.trt, self.spec, self.path = trt, spec, Path(path)
        self.cuda = edge_cuda.CudaRuntime()
        self.device = self.cuda.device()
        require_engine_for_this_device(path, self.device.key, trt.__version__)
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes); grown, then reused
        self.stream = 0
        self.logger = stderr_logger(trt)
        self.runtime = trt.Runtime(self.logger)  # kept: the engine must not outlive its runtime
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise EngineMismatch(f"{path}: TensorRT {trt.__version__} could not deserialize it (built for another "
                                 f"GPU or TensorRT version than {self.device.key}? engines are not portable: build "
                                 "one here with ./build_engine.sh)")
        self.context = self.engine.create_execution_context()
        for name in (spec.input_name, spec.output_name):
            if self.engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise EngineMismatch(f"{path}: tensor {name!r} is {self.engine.get_tensor_dtype(name)}, "
                                     "expected FLOAT")
        self.stream = self.cuda.stream()
        shapes = self.engine.get_tensor_profile_shape(spec.input_name, 0)
        self.min_hw = (int(shapes[0][2]), int(shapes[0][3]))
        self.max_hw = (int(shapes[2][2]), int(shapes[2][3]))

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
            raise RuntimeError("TensorRT execute_async_v3 failed (see the [TRT] lines above)")
        self.cuda.synchronize(self.stream)
        self.cuda.to_host(y, d_out)
        return y

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cuda.free(ptr)
        self._buffers.clear()
        if self.stream:
            self.cuda.destroy_stream(self.stream)
            self.stream = 0


def load_model(path, spec: ModelSpec):
    path = Path(path)
    if not path.is_file():
        raise CannotRun(f"{path}: no such model file")
    if path.suffix in ENGINE_SUFFIXES:
        return TensorRTModel(path, spec)
    if path.suffix == ".onnx":
        return OnnxRuntimeModel(path, spec)
    raise CannotRun(f"{path}: unknown model type; expected .onnx or {' / '.join(ENGINE_SUFFIXES)}")


def run_padded(model, x: np.ndarray, multiple: int, min_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Pad to the size multiple (and the model's smallest size), run, crop back to the input's height and width."""
    padded, (h, w) = pad_to_multiple(x, multiple, min_hw or model.min_hw)
    return model(padded)[:, :, :h, :w]


def tiling_for(model, spec: ModelSpec) -> edge_tiling.TileSpec | None:
    """The tiling a model needs for frames beyond its largest size (None: no limit, e.g. ONNX Runtime)."""
    max_hw = getattr(model, "max_hw", None)
    if max_hw is None:
        return None
    tile = spec.tile_hw or max_hw
    tile = (min(tile[0], max_hw[0]), min(tile[1], max_hw[1]))
    return edge_tiling.plan(tile, spec.tile_overlap, spec.tile_margin, spec.size_multiple, model.min_hw)


def run_any_size(model, x: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """model(x) at x's size: one run where the padded frame fits the model, overlapping tiles where it does not."""
    tiles = tiling_for(model, spec)
    if tiles is None:
        return run_padded(model, x, spec.size_multiple)
    return edge_tiling.run_tiled(model, x, tiles)


# ------------------------------------------------------------------------------------------------- check
def stored_check(manifest_path) -> tuple[dict, Path]:
    """The manifest's `check` entry (stored input, fp32 output, floors) and the bundle folder."""
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise CannotRun(f"{manifest_path}: no bundle manifest; --check compares against the fp32 output stored "
                        "in a bundle (or pass --onnx to compare with ONNX Runtime)")
    check = json.loads(manifest_path.read_text()).get("check")
    if not check:
        raise CannotRun(f"{manifest_path}: no `check` entry (a bundle made before stored checks); remake the bundle")
    return check, manifest_path.parent


def reference_min_hw(manifest_path, model) -> tuple[int, int]:
    """The smallest size the stored fp32 output was made at (the engine profile's min), at least the model's own:
    a check input below it is padded the same way, so an ONNX variant meets the reference on the same pixels."""
    low = json.loads(Path(manifest_path).read_text()).get("tensorrt", {}).get("profile", {}).get("min", {})
    return max(model.min_hw[0], int(low.get("height", 1))), max(model.min_hw[1], int(low.get("width", 1)))


def check_against_stored(run, check: dict, folder: Path, precision: str, task: str) -> dict:
    """Run `run` on the stored check input and compare with the stored fp32 output (PSNR floor per precision)."""
    x = np.load(folder / check["input"])
    reference = np.load(folder / check["reference"])
    floors = check["min_psnr_vs_fp32_db"]
    if precision not in floors:
        raise CannotRun(f"no PSNR floor for precision {precision!r} in the manifest's check (has {sorted(floors)})")
    result = compare_outputs(reference, run(x), task)
    passed = result["psnr_db"] is not None and result["psnr_db"] >= floors[precision]
    return {"against": f"{check['reference']} (fp32 model, stored when the bundle was made)",
            "input": check["input"], "size": f"{x.shape[3]}x{x.shape[2]}", "precision": precision, **result,
            "min_psnr_db": floors[precision], "passed": passed}


def variant_precision(manifest_path, onnx_path) -> str | None:
    """The precision the bundle's manifest gives this ONNX file (its `variants`); None if it lists no such file."""
    if not Path(manifest_path).is_file():
        return None
    variants = json.loads(Path(manifest_path).read_text()).get("variants", {})
    return {v["file"]: p for p, v in variants.items()}.get(Path(onnx_path).name)


def model_precision(path, given: str | None, manifest_path) -> str:
    """--precision, else an engine's from its file name, else an ONNX variant's from the manifest."""
    if given:
        return given
    if Path(path).suffix in ENGINE_SUFFIXES:
        named = parse_engine_name(path)
        found = named["precision"] if named else None
    else:
        found = variant_precision(manifest_path, path)
    if found is None:
        raise CannotRun(f"{path}: cannot tell its precision from the name or the manifest's variants; pass "
                        "--precision fp32|fp16|int8")
    return found


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
                   help="compare --model with the fp32 output stored in the bundle (exit 1 below the floor); "
                        "with --onnx, with ONNX Runtime on that file instead")
    p.add_argument("--onnx", help="with --check: compare with this ONNX file in ONNX Runtime (needs onnxruntime)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                   help="with --check: the model's precision (default: an engine's from its file name, an ONNX "
                        "file's from the manifest's variants)")
    p.add_argument("--min-psnr", type=float, help="with --check --onnx: PSNR floor in dB (default: the manifest's "
                                                  f"for that variant, else {DEFAULT_MIN_PSNR_DB:g})")
    p.add_argument("--report", help="with --check: where the JSON report goes (default: <model>.check.json)")
    return p.parse_args(argv)


def model_spec(args) -> ModelSpec:
    if Path(args.manifest).is_file():
        return ModelSpec.from_manifest(args.manifest)
    onnx_file = args.model if args.model.endswith(".onnx") else args.onnx
    if onnx_file:
        return ModelSpec.from_onnx(onnx_file)
    raise CannotRun(f"{args.manifest}: no manifest, and no ONNX file to read the model's metadata from")


def onnx_floor(args) -> float:
    if args.min_psnr is not None:
        return args.min_psnr
    precision = variant_precision(args.manifest, args.onnx)
    if precision is None:
        return DEFAULT_MIN_PSNR_DB
    m = json.loads(Path(args.manifest).read_text())
    return float(m.get("tensorrt", {}).get("min_psnr_vs_onnxruntime_db", {}).get(precision, DEFAULT_MIN_PSNR_DB))


def run_check(args, spec: ModelSpec, model) -> int:
    run = (lambda x: run_any_size(model, x, spec))
    if args.onnx:  # live comparison with ONNX Runtime, on --input or the stored check input
        reference_model = OnnxRuntimeModel(args.onnx, spec)
        if args.input:
            x = to_input([read_image(p) for p in args.input])
        else:
            check, folder = stored_check(args.manifest)
            x = np.load(folder / check["input"])
        floor = onnx_floor(args)
        result = compare_outputs(run_padded(reference_model, x, spec.size_multiple, model.min_hw), run(x), spec.task)
        passed = result["psnr_db"] is not None and result["psnr_db"] >= floor
        report = {"against": f"{args.onnx} in ONNX Runtime", "size": f"{x.shape[3]}x{x.shape[2]}", **result,
                  "min_psnr_db": floor, "passed": passed}
    else:
        check, folder = stored_check(args.manifest)
        precision = model_precision(args.model, args.precision, args.manifest)
        min_hw = reference_min_hw(args.manifest, model)  # the check input fits the profile: no tiles
        report = check_against_stored(lambda x: run_padded(model, x, spec.size_multiple, min_hw), check, folder,
                                      precision, spec.task)
    report = {"model": args.model, **report}
    out = args.report or f"{args.model}.check.json"
    write_json(out, report)
    psnr = "non-finite output" if report["psnr_db"] is None else f"PSNR {report['psnr_db']:.2f} dB"
    verdict = "passed" if report["passed"] else "FAILED"
    print(f"check {verdict}: {args.model} vs {report['against']}: {psnr} (floor {report['min_psnr_db']:g} dB); "
          f"report {out}", file=sys.stderr)
    return 0 if report["passed"] else EXIT_CHECK_FAILED


def run_images(args, spec: ModelSpec, model) -> int:
    if not args.input:
        raise CannotRun("--input is required (or --check)")
    if len(args.input) != len(spec.views):
        raise CannotRun(f"the model reads {len(spec.views)} view(s) {list(spec.views)}; got {len(args.input)} "
                        "image(s)")
    images = [read_image(p) for p in args.input]
    x = to_input(images)
    y = run_any_size(model, x, spec)
    tiles = tiling_for(model, spec)
    count = edge_tiling.count_tiles(x.shape[2], x.shape[3], tiles) if tiles else 1
    if args.output:
        write_image(args.output, to_image(y, spec.task, images[0].dtype))
        print(f"{args.output}: {y.shape[3]}x{y.shape[2]}, {np.iinfo(images[0].dtype).bits}-bit"
              + (f", {count} tiles" if count > 1 else ""), file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    model = None
    try:
        spec = model_spec(args)
        model = load_model(args.model, spec)
        return run_check(args, spec, model) if args.check else run_images(args, spec, model)
    except (CannotRun, UnsupportedTensorRT, EngineMismatch, edge_cuda.CudaUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except ImportError as e:
        print(f"error: {args.model} needs {e.name or 'a runtime'} (not importable here: {e}); ONNX files need "
              "onnxruntime, engines need TensorRT's Python package (JetPack: python3-libnvinfer)", file=sys.stderr)
        return EXIT_CANNOT_RUN
    finally:
        if model is not None:
            model.close()


if __name__ == "__main__":
    sys.exit(main())
