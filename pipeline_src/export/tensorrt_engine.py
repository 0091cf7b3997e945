"""Build a TensorRT engine for this machine's GPU from an ONNX variant, and check it against ONNX Runtime.

`python -m pipeline_src build-engine --onnx DIR/model_fp16.onnx --out-dir data/engines/<paper>-<dataset>
 [--manifest M]` writes
    <out-dir>/<model>-<device>_<N>sm-sm<cc>-trt<version>-<precision>.plan   (name: trt_builder.engine_name)
    <out-dir>/build-report-<precision>.json                                   what was built, or why nothing was
and updates the timing cache in `tensorrt.timing_cache_dir` (one file per device and TensorRT version, reused by
every later build there, locked while a build uses it). The precision is read from the ONNX graph (Q/DQ nodes:
int8; float16 weights: fp16; else fp32): TensorRT builds strongly typed, so the file decides, not a flag.

The engine is built under a temporary name, run on test images (crops that fit the profile, padded to the size
multiple) next to ONNX Runtime on the same ONNX, and only then written under its final name together with the
report (fileio.output_set: engine, then the report the DAG tracks). A PSNR below
`min_psnr_vs_onnxruntime_db[precision]` removes the engine, writes the report saying so, and fails the stage.

Where tensorrt or a CUDA device is missing (or TensorRT is a version the builder does not support), the stage
says plainly that no engine was built and why, writes the report saying so and no engine. `--when` carries
config/config.yaml's `engines` setting, so Snakemake and DVC run the same command: `auto` (default) exits 0
then, `on` fails (engines were demanded), `off` builds nothing and reports that the config switched engines off.
`tensorrt` is imported only inside the build (trt_builder.py).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from pipeline_src.errors import ExportError
from pipeline_src.export import DEFAULT_CONFIG, load_export_config, parse_size


def add_arguments(parser) -> None:
    parser.add_argument("--onnx", required=True, help="an ONNX variant: model.onnx, model_fp16.onnx, model_int8.onnx")
    parser.add_argument("--out-dir", required=True, help="engine folder, e.g. data/engines/kpac-dpdd")
    parser.add_argument("--when", choices=("auto", "on", "off"), default="auto",
                        help="auto: build where TensorRT and CUDA exist, else report why; on: fail without them; "
                             "off: build nothing (config `engines`)")
    parser.add_argument("--manifest", help="dataset manifest: the engine is checked on its test images "
                                           "(default: seeded noise)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="export settings (default: %(default)s)")
    parser.add_argument("--timing-cache-dir", help="timing caches (default: config tensorrt.timing_cache_dir)")


def detect_precision(onnx_path: str | os.PathLike) -> str:
    """int8 if the graph holds Q/DQ nodes, fp16 if float16 weights, else fp32; cross-checked with the metadata."""
    import onnx

    if not Path(onnx_path).is_file():
        raise ExportError(f"{onnx_path}: no such ONNX file; run export-onnx and quantize first")
    proto = onnx.load(str(onnx_path), load_external_data=False)
    ops = {n.op_type for n in proto.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        found = "int8"
    elif any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        found = "fp16"
    else:
        found = "fp32"
    declared = {e.key: e.value for e in proto.metadata_props}.get("pipeline.precision")
    if declared is not None and declared != found:
        raise ExportError(f"{onnx_path}: metadata says {declared}, but the graph is {found}; re-run quantize")
    return found


def profile_from_config(tcfg: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {k: parse_size(tcfg["profile"][k]) for k in ("min", "opt", "max")}


def comparison_inputs(manifest: str | None, meta: dict[str, Any], profile: dict[str, tuple[int, int]],
                      count: int) -> list[tuple[str, Any]]:
    """(name, 1 x C x H x W float32) inputs that fit the profile: test images cropped to `max`, or noise."""
    import numpy as np

    max_h, max_w = profile["max"]
    if manifest is None:
        rng = np.random.default_rng(0)
        sizes = [profile["min"], profile["opt"]]
        return [(f"noise-{w}x{h}", rng.random((1, meta["in_channels"], h, w), dtype=np.float32)) for h, w in sizes]
    from pipeline_src.export import iter_test_inputs

    return [(sample_id, np.ascontiguousarray(x[:, :, :max_h, :max_w]))
            for sample_id, x, _, _ in iter_test_inputs(manifest, meta["input_views"], limit=count, task=meta["task"])]


def compare_with_onnxruntime(engine_path: str, onnx_path: str, meta: dict[str, Any], inputs, names) -> list[dict]:
    from pipeline_src.export.edge_infer import ModelSpec, OnnxRuntimeModel, TensorRTModel, compare_outputs, run_padded

    spec = ModelSpec(tuple(meta["input_views"]), int(meta["size_multiple"]), meta["task"], *names)
    engine, reference = TensorRTModel(engine_path, spec), OnnxRuntimeModel(onnx_path, spec)
    rows = []
    try:
        for name, x in inputs:
            # both on the same padded input (padded up to the profile's minimum where an image is smaller)
            result = compare_outputs(run_padded(reference, x, spec.size_multiple, engine.min_hw),
                                     run_padded(engine, x, spec.size_multiple), spec.task)
            rows.append({"input": name, "size": f"{x.shape[3]}x{x.shape[2]}", **result})
    finally:
        engine.close()
    return rows


def _no_engine(report_path: Path, report: dict[str, Any], reason: str) -> dict[str, Any]:
    from pipeline_src.fileio import atomic_write_json

    report.update({"built": False, "engine": None, "reason": reason})
    atomic_write_json(report_path, report)
    return report


def build_engine_stage(onnx_path: str, out_dir: str | os.PathLike, cfg: dict[str, Any], *,
                       manifest: str | None = None, timing_cache_dir: str | None = None) -> dict[str, Any]:
    """The stage's work; returns the report (also written). Raises ExportError when the engine fails its check."""
    from pipeline_src.export import trt_builder
    from pipeline_src.export.edge_infer import CannotRun, EngineMismatch
    from pipeline_src.export.onnx_export import onnx_metadata
    from pipeline_src.fileio import output_set

    tcfg, onnx_cfg = cfg["tensorrt"], cfg["onnx"]
    precision = detect_precision(onnx_path)  # first: it names a missing file
    meta = onnx_metadata(onnx_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / f"build-report-{precision}.json"
    report_path.unlink(missing_ok=True)  # the marker of an earlier run goes first
    profile = profile_from_config(tcfg)
    try:
        trt_builder.snap_profile(profile, int(meta["size_multiple"]))
    except ValueError as e:
        from pipeline_src.config import ConfigError

        raise ConfigError(f"export settings tensorrt.profile: {e}") from e
    report: dict[str, Any] = {"onnx": str(onnx_path), "precision": precision, "model": meta["model"]}
    try:
        info = trt_builder.build(onnx_path, out_dir, model=meta["model"], precision=precision,
                                 input_name=onnx_cfg["input_name"], channels=int(meta["in_channels"]),
                                 multiple=int(meta["size_multiple"]), profile=profile,
                                 workspace_mib=int(tcfg["workspace_mib"]),
                                 timing_cache_dir=timing_cache_dir or tcfg["timing_cache_dir"], builder="python")
    except trt_builder.NoEngineBuilt as e:
        return _no_engine(report_path, report, str(e))
    except trt_builder.BuildFailed as e:
        _no_engine(report_path, report, str(e))
        raise ExportError(f"{onnx_path}: {e} (report {report_path})") from e
    candidate, final = Path(info.pop("candidate")), Path(info["engine"])
    try:
        report.update({"built": True, **info})
        snapped = {k: (v["height"], v["width"]) for k, v in info["profile"].items()}
        inputs = comparison_inputs(manifest, meta, snapped, int(tcfg["compare_images"]))
        try:
            rows = compare_with_onnxruntime(str(candidate), onnx_path, meta, inputs,
                                            (onnx_cfg["input_name"], onnx_cfg["output_name"]))
        except (CannotRun, EngineMismatch) as e:
            _no_engine(report_path, report, f"the built engine could not be run: {e}")
            raise ExportError(f"{onnx_path}: the built engine could not be run here: {e}") from e
        need = float(tcfg["min_psnr_vs_onnxruntime_db"][precision])
        psnrs = [r["psnr_db"] for r in rows]
        worst = None if any(p is None for p in psnrs) else min(psnrs)
        passed = worst is not None and worst >= need
        report["check"] = {"against": "onnxruntime CPU, same ONNX", "min_psnr_db": need, "worst_psnr_db": worst,
                           "images": rows, "passed": passed}
        if not passed:
            shown = "non-finite output" if worst is None else f"PSNR {worst:.2f} dB"
            _no_engine(report_path, report, f"engine output differs from ONNX Runtime: {shown} < {need:g} dB")
            raise ExportError(f"{onnx_path}: {report['reason']}; engine removed (see {report_path})")
        # only a checked engine gets its name; the report (the file the DAG tracks) is committed after it
        with output_set([final, report_path]) as temps:
            os.replace(candidate, temps[final])
            temps[report_path].write_text(json.dumps(report, indent=2) + "\n")
        return report
    finally:
        trt_builder.discard(candidate)


def run(args) -> int:
    cfg = load_export_config(args.config)
    if args.when == "off":
        from pipeline_src.fileio import atomic_write_json

        precision = detect_precision(args.onnx)
        reason = "engines are switched off in config/config.yaml (engines: off)"
        atomic_write_json(Path(args.out_dir) / f"build-report-{precision}.json",
                          {"onnx": str(args.onnx), "precision": precision, "built": False, "engine": None,
                           "reason": reason})
        print(f"No TensorRT engine was built for {args.onnx}: {reason}", file=sys.stderr)
        return 0
    report = build_engine_stage(args.onnx, args.out_dir, cfg, manifest=args.manifest,
                                timing_cache_dir=args.timing_cache_dir)
    if not report["built"]:
        print(f"No TensorRT engine was built for {args.onnx}: {report['reason']}", file=sys.stderr)
        return 1 if args.when == "on" else 0
    check = report["check"]
    print(f"{report['engine']}: TensorRT {report['tensorrt']} on {report['device']['key']}, {report['precision']}; "
          f"vs ONNX Runtime worst PSNR {check['worst_psnr_db']:.2f} dB >= {check['min_psnr_db']:g} on "
          f"{len(check['images'])} input(s); timing cache {report['timing_cache_status']}: {report['timing_cache']}",
          file=sys.stderr)
    return 0
