"""Benchmark: inference latency of one model in PyTorch eager, ONNX Runtime and (where present) TensorRT.

    python -m pipeline_src bench-latency --checkpoint final.pt --onnx DIR/model.onnx [DIR/model_fp16.onnx ...]
        [--engine data/engines/X/kpac-sm90-trt10.16.1-fp16.plan] [--sizes 1280x720 1680x1120]
        [--warmup 1] [--repeats 3] [--threads N] [--out latency.json] [--mlflow]

One random image per size (WIDTHxHEIGHT; defaults from config/export.yaml `latency`), batch 1, float32 input.
Each backend runs `warmup` untimed passes, then `repeats` timed ones; the figure is the median (min and max are
kept too). PyTorch runs on CUDA when torch sees a GPU, else on the CPU, under inference_mode, synchronising
before the clock stops; ONNX Runtime uses its CUDA provider when installed, else the CPU; TensorRT engines
(each --engine) need tensorrt and a CUDA device, and are reported as skipped, with the reason, where either is
missing. The host (CPU count, GPU, library versions) goes into the results, since latency means nothing
without it. With --mlflow (and mlflow importable) the figures are logged as one MLflow run.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

from pipeline_src.errors import ConfigError
from pipeline_src.export import DEFAULT_CONFIG, format_size, load_export_config, parse_size


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a training phase's final.pt (PyTorch eager)")
    parser.add_argument("--onnx", nargs="+", required=True, help="ONNX variant(s) for ONNX Runtime")
    parser.add_argument("--engine", nargs="*", default=[], help="TensorRT engine(s) built on this machine")
    parser.add_argument("--sizes", nargs="+", metavar="WxH", help="image sizes (default: config latency.sizes)")
    parser.add_argument("--warmup", type=int, help="untimed passes per backend and size (default: config)")
    parser.add_argument("--repeats", type=int, help="timed passes per backend and size (default: config)")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch and ONNX Runtime (default: config)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="export settings (default: %(default)s)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--mlflow", action="store_true", help="log the figures to MLflow (if mlflow is importable)")


# ---------------------------------------------------------------------------------------------- timing
def time_runs(fn: Callable[[], object], warmup: int, repeats: int) -> dict[str, Any]:
    """Median, min and max of `repeats` timed calls after `warmup` untimed ones, in milliseconds."""
    if warmup < 0 or repeats < 1:
        raise ConfigError(f"warmup {warmup}, repeats {repeats}: need warmup >= 0 and repeats >= 1")
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(1000 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(runs), "min_ms": min(runs), "max_ms": max(runs), "runs_ms": runs}


# -------------------------------------------------------------------------------------------- backends
def pytorch_runner(checkpoint: str, threads: int | None):
    import torch

    from pipeline_src.model_io import load_model

    if threads:
        torch.set_num_threads(threads)
    model, record = load_model(checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)

    def make(x):
        xt = torch.from_numpy(x).to(device)

        def call():
            with torch.inference_mode():
                model(xt)
            if device == "cuda":
                torch.cuda.synchronize()
        return call

    return make, {"backend": "pytorch-eager", "device": device, "precision": "fp32"}, record


def onnxruntime_runner(path: str, threads: int | None, spec):
    import onnxruntime as ort

    from pipeline_src.export.edge_infer import OnnxRuntimeModel
    from pipeline_src.export.tensorrt_engine import detect_precision

    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    model = OnnxRuntimeModel(path, spec, providers=providers[:1], threads=threads)
    info = {"backend": "onnxruntime", "device": model.session.get_providers()[0], "precision": detect_precision(path),
            "file": Path(path).name}
    return (lambda x: (lambda: model(x))), info


def tensorrt_runner(path: str, spec):
    from pipeline_src.export.edge_infer import TensorRTModel, run_padded

    model = TensorRTModel(path, spec)
    precision = Path(path).stem.rsplit("-", 1)[-1]
    info = {"backend": "tensorrt", "device": "cuda", "precision": precision, "file": Path(path).name}
    return (lambda x: (lambda: run_padded(model, x, spec.size_multiple))), info


def host_info() -> dict[str, Any]:
    import onnxruntime
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ----------------------------------------------------------------------------------------------- bench
def benchmark(checkpoint: str, onnx_paths: list[str], engines: list[str], sizes: list[tuple[int, int]],
              warmup: int, repeats: int, threads: int | None) -> dict[str, Any]:
    import numpy as np

    from pipeline_src.export.edge_infer import ModelSpec

    make_torch, torch_info, record = pytorch_runner(checkpoint, threads)
    spec = ModelSpec(tuple(record["input_views"]), int(record["size_multiple"]), record.get("task", "restoration"))
    backends = [(make_torch, torch_info)] + [onnxruntime_runner(p, threads, spec) for p in onnx_paths]
    skipped = []
    for path in engines:
        try:
            backends.append(tensorrt_runner(path, spec))
        except (ImportError, RuntimeError) as e:
            skipped.append({"backend": "tensorrt", "file": Path(path).name, "reason": f"{type(e).__name__}: {e}"})
            print(f"TensorRT not measured for {path}: {e}", file=sys.stderr)
    rng = np.random.default_rng(0)
    results = []
    for h, w in sizes:
        x = rng.random((1, 3 * len(spec.views), h, w), dtype=np.float32)
        for make, info in backends:
            timing = time_runs(make(x), warmup, repeats)
            results.append({**info, "size": format_size(h, w), **timing})
            print(f"{info['backend']:<14} {info.get('file', ''):<22} {format_size(h, w):>10}: "
                  f"{timing['median_ms']:10.1f} ms", file=sys.stderr)
    return {"model": record["model"]["name"], "checkpoint": str(checkpoint),
            "sizes": [format_size(h, w) for h, w in sizes], "warmup": warmup, "repeats": repeats,
            "threads": threads, "statistic": "median", "host": host_info(), "results": results, "skipped": skipped}


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table (one row per backend, one column per size) for the README."""
    sizes = result["sizes"]
    rows: dict[tuple, dict[str, float]] = {}
    for r in result["results"]:
        key = (r["backend"], r["precision"], r["device"])
        rows.setdefault(key, {})[r["size"]] = r["median_ms"]
    lines = ["| backend | precision | device | " + " | ".join(f"{s} (ms)" for s in sizes) + " |",
             "|---|---|---|" + "---:|" * len(sizes)]
    for (backend, precision, device), by_size in rows.items():
        cells = " | ".join(f"{by_size[s]:.1f}" if s in by_size else "-" for s in sizes)
        lines.append(f"| {backend} | {precision} | {device} | {cells} |")
    return "\n".join(lines)


def log_to_mlflow(result: dict[str, Any]) -> None:
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        print("--mlflow: mlflow is not importable here; the figures were not logged", file=sys.stderr)
        return
    from pipeline_src.tracking import start_run

    tracker = start_run(f"bench-latency-{result['model']}", tags={"pipeline.stage": "bench-latency",
                                                                 "pipeline.model": result["model"]})
    tracker.log_params({"checkpoint": result["checkpoint"], "sizes": result["sizes"], "warmup": result["warmup"],
                        "repeats": result["repeats"], "threads": result["threads"], "host": result["host"]})
    metrics = {}
    for r in result["results"]:
        name = "-".join(filter(None, (r["backend"], r["precision"], r["device"].replace("ExecutionProvider", ""))))
        metrics[f"latency_ms.{name}.{r['size']}"] = r["median_ms"]
    tracker.log_metrics(metrics, step=0)
    tracker.log_dict(result, "latency.json")
    tracker.end()
    if tracker.run_id:
        print(f"logged to MLflow run {tracker.run_id}", file=sys.stderr)


def run(args) -> int:
    from pipeline_src.fileio import atomic_write_json

    lcfg = load_export_config(args.config)["latency"]
    sizes = [parse_size(s) for s in (args.sizes or lcfg["sizes"])]
    result = benchmark(args.checkpoint, args.onnx, args.engine, sizes,
                       warmup=int(lcfg["warmup"] if args.warmup is None else args.warmup),
                       repeats=int(lcfg["repeats"] if args.repeats is None else args.repeats),
                       threads=args.threads if args.threads is not None else lcfg["threads"])
    print(format_table(result))
    if args.out:
        atomic_write_json(args.out, result)
    if args.mlflow:
        log_to_mlflow(result)
    return 0
