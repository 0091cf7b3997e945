"""FP16 and INT8 (Q/DQ) variants of an exported model, each scored on the test split against fp32.

`python -m pipeline_src quantize --onnx DIR/model.onnx --manifest M --patches data/patches/<ds>/train` writes
    DIR/model_fp16.onnx  float16 weights and compute, float32 input and output (onnxruntime's converter)
    DIR/model_int8.onnx  Q/DQ nodes: int8, symmetric (zero points 0, as TensorRT requires), per-channel
                         weights, biases kept float; activation ranges calibrated on training patches;
                         operators TensorRT does not take in Q/DQ form (ConvTranspose) kept float (qdq_policy.py)
    DIR/quality.json     per variant: test-split score, drop against fp32, fidelity to fp32, operator audit
The precision lives in the graph itself, which is what TensorRT 11 (strongly typed) builds from.
The three files are written together (fileio.output_set: quality.json, model_int8.onnx, then model_fp16.onnx,
the engine stage's input, last), so a killed run never leaves a model_fp16.onnx without its quality.json.
Scoring, written down: restoration = PSNR (RGB, output clipped to [0, 1], data range 1, whole image, no border
crop), drop = fp32 - variant in dB; detection = MAE of sigmoid(logits) against the in-focus mask, rise =
variant - fp32. INT8 is accepted only within `max_int8_drop_db` (`max_int8_mae_rise`); otherwise quality.json
says why, no model_int8.onnx is left, a warning says so, and the stage succeeds: the gate's verdict is a result
(the bundle then ships FP32 and FP16 only), so neither orchestrator declares model_int8.onnx as an output.
`--metrics` adds the figures as flat numbers for `dvc metrics` (written first in the same set).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_src.export import DEFAULT_CONFIG, load_export_config

PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; capped so the JSON stays standard


def add_arguments(parser) -> None:
    parser.add_argument("--onnx", required=True, help="the fp32 model.onnx written by export-onnx")
    parser.add_argument("--manifest", required=True, help="dataset manifest; its test split scores the variants")
    parser.add_argument("--patches", required=True,
                        help="the train split's patch folder (<view>.npy arrays) used for INT8 calibration")
    parser.add_argument("--out", help="output folder (default: the folder of --onnx)")
    parser.add_argument("--metrics", help="also write the variants' figures as flat numbers (DVC metrics), e.g. "
                                          "data/metrics/export/<name>.json; written with the other outputs")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="export settings (default: %(default)s)")
    parser.add_argument("--max-int8-drop-db", type=float, help="largest INT8 PSNR drop accepted (default: config)")
    parser.add_argument("--calibration-patches", type=int, help="patches for INT8 calibration (default: config)")
    parser.add_argument("--max-test-images", type=int, help="score on the first N test images (default: config)")
    parser.add_argument("--preset", choices=("smoke", "default", "paper"),
                        help="scale preset: its counts in quantize.presets of the config (calibration patches)")


# ------------------------------------------------------------------------------------------- calibration
def calibration_batches(patch_dir: str | os.PathLike, views, count: int, batch: int, seed: int) -> list[np.ndarray]:
    """`count` training patches (seeded draw, views concatenated in model order) as N x C x S x S float32 batches."""
    from pipeline_src.errors import DataError

    patch_dir = Path(patch_dir)
    arrays = {}
    for v in views:
        path = patch_dir / f"{v}.npy"
        if not path.is_file():
            raise DataError(f"{path}: no patch array for view {v!r} (the model reads views {list(views)}); "
                            "pass the train split's patch folder, or build it with the patches stage")
        try:
            arrays[v] = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable .npy array ({exc}); rebuild it with the patches stage") from exc
        if arrays[v].ndim != 4 or arrays[v].shape[-1] != 3 or arrays[v].dtype not in (np.uint8, np.uint16):
            raise DataError(f"{path}: expected (N, S, S, 3) uint8/uint16 patches, "
                            f"got {arrays[v].shape} {arrays[v].dtype}")
    n = {v: a.shape[0] for v, a in arrays.items()}
    if len(set(n.values())) != 1:
        raise DataError(f"{patch_dir}: views hold different patch counts {n}")
    total = next(iter(n.values()))
    if count < 1 or total < 1:
        raise DataError(f"{patch_dir}: need at least one calibration patch (asked {count}, have {total})")
    picks = np.sort(np.random.default_rng(seed).choice(total, size=min(count, total), replace=False))
    out = []
    for start in range(0, len(picks), batch):
        idx = picks[start:start + batch]
        parts = [arrays[v][idx].astype(np.float32) / float(np.iinfo(arrays[v].dtype).max) for v in views]
        out.append(np.ascontiguousarray(np.concatenate(parts, axis=3).transpose(0, 3, 1, 2)))
    return out


def _reader(batches: list[np.ndarray], input_name: str):
    """An onnxruntime CalibrationDataReader over prepared batches (class built here: onnxruntime loads lazily)."""
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        def __init__(self):
            self._next = iter(batches)

        def get_next(self):
            x = next(self._next, None)
            return None if x is None else {input_name: x}

        def rewind(self):
            self._next = iter(batches)

    return BatchReader()


# ------------------------------------------------------------------------------------------- conversions
def metadata_props(model) -> dict[str, str]:
    return {e.key: e.value for e in model.metadata_props}


def _copy_metadata(props: dict[str, str], dst, precision: str) -> None:
    keep = {**props, "pipeline.precision": precision}
    del dst.metadata_props[:]
    for key, value in keep.items():
        entry = dst.metadata_props.add()
        entry.key, entry.value = key, value


def make_fp16(src: str | os.PathLike, dst: str | os.PathLike):
    """Write the FP16 variant of `src` to `dst`; returns it (ModelProto) and the fp32 file's metadata."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    fp32 = onnx.load(str(src))  # read once, for the converter and for the metadata the variants keep
    props = metadata_props(fp32)
    fp16 = convert_float_to_float16(fp32, keep_io_types=True)
    del fp32
    # the converter appends the input casts at the end of the node list; ONNX (and TensorRT's parser) want
    # nodes in topological order
    OnnxModel.graph_topological_sort(fp16.graph, is_deterministic=True)
    _copy_metadata(props, fp16, "fp16")
    onnx.checker.check_model(fp16)
    onnx.save(fp16, str(dst))
    return fp16, props


def make_int8(src: str | os.PathLike, dst: str | os.PathLike, batches: list[np.ndarray], qcfg: dict[str, Any],
              input_name: str, props: dict[str, str]):
    """Write the INT8 (Q/DQ) variant of `src` to `dst`, with `src`'s metadata `props`; returns it (ModelProto)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from pipeline_src.export.qdq_policy import ops_to_quantize, require_float

    op_types, kept_float = ops_to_quantize(qcfg)
    method = qcfg["calibration_method"]
    if method not in CalibrationMethod.__members__:
        from pipeline_src.config import ConfigError

        raise ConfigError(f"quantize.calibration_method {method!r}; "
                          f"choose one of {list(CalibrationMethod.__members__)}")
    with tempfile.TemporaryDirectory(dir=Path(dst).parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # symbolic shape inference cannot follow the data-dependent padding amounts; ONNX's own inference can
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(dst), _reader(batches, input_name),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod[method],
            op_types_to_quantize=op_types,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": True,
                           # TensorRT dequantizes only int8/fp8/int4 tensors: an int32 bias would not parse
                           "QuantizeBias": False},
        )
    int8 = onnx.load(str(dst))
    require_float(int8, kept_float, str(dst))
    _copy_metadata(props, int8, "int8")
    onnx.checker.check_model(int8)
    onnx.save(int8, str(dst))
    return int8


# -------------------------------------------------------------------------------------------- evaluation
def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR (data range 1, whole image) from the evaluation metrics, capped at PSNR_CAP_DB."""
    from pipeline_src.evaluate.metrics import psnr as metric_psnr

    return min(metric_psnr(test, reference, data_range=1.0), PSNR_CAP_DB)


def to_prediction(output: np.ndarray, task: str) -> np.ndarray:
    """Raw model output (1 x C x H x W) -> the image that is scored: RGB clipped, or a probability map."""
    if task == "detection":
        return 1.0 / (1.0 + np.exp(-output[0, 0].astype(np.float64)))
    return np.clip(output[0].transpose(1, 2, 0), 0.0, 1.0)


def score(prediction: np.ndarray, target: np.ndarray, task: str) -> float:
    from pipeline_src.evaluate.metrics import mae

    return mae(prediction, target) if task == "detection" else psnr(target, prediction)


def evaluate_variants(paths: dict[str, Path], manifest: str, meta: dict[str, Any], input_name: str,
                      limit: int | None) -> dict[str, Any]:
    """Run every variant on the test split in ONNX Runtime (CPU); per variant and image: score, fidelity to fp32."""
    import onnxruntime as ort

    from pipeline_src.export import iter_test_inputs

    task = meta["task"]
    sessions = {name: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for name, p in paths.items()}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    for sample_id, x, target, _ in iter_test_inputs(manifest, meta["input_views"], limit=limit, task=task):
        if target is None:
            raise ValueError(f"{manifest}: test sample {sample_id!r} has no target to score against")
        preds = {name: to_prediction(s.run(None, {input_name: x})[0], task) for name, s in sessions.items()}
        for name, pred in preds.items():
            rows[name].append({"id": sample_id, "score": score(pred, target, task),
                               "psnr_vs_fp32_db": psnr(preds["fp32"], pred) if name != "fp32" else None})
    return rows


def summarise(rows: dict[str, list[dict[str, Any]]], task: str, qcfg: dict[str, Any]) -> dict[str, Any]:
    """Mean score per variant, its loss against fp32 (drop in dB, or MAE rise), and the INT8 verdict."""
    if task == "detection":
        metric, better, loss_key, limit_key = "mae", "lower", "mae_rise", "max_int8_mae_rise"
    else:
        metric, better, loss_key, limit_key = "psnr_db", "higher", "drop_db", "max_int8_drop_db"
    means = {name: float(np.mean([r["score"] for r in rs])) for name, rs in rows.items()}
    out: dict[str, Any] = {"metric": metric, "better": better, "images": len(rows["fp32"]), "variants": {}}
    for name, rs in rows.items():
        entry: dict[str, Any] = {metric: means[name], "per_image": rs}
        if name != "fp32":
            entry[loss_key] = means["fp32"] - means[name] if better == "higher" else means[name] - means["fp32"]
            entry["psnr_vs_fp32_db"] = float(np.mean([r["psnr_vs_fp32_db"] for r in rs]))
        out["variants"][name] = entry
    if "int8" in rows:
        limit = float(qcfg[limit_key])
        loss = out["variants"]["int8"][loss_key]
        out["int8_limit"] = {limit_key: limit}
        out["variants"]["int8"]["accepted"] = bool(math.isfinite(loss) and loss <= limit)
    return out


# ------------------------------------------------------------------------------------------------- stage
def quantize_model(onnx_path: str, manifest: str, patches: str, cfg: dict[str, Any],
                   out: str | os.PathLike | None = None, metrics: str | os.PathLike | None = None) -> dict[str, Any]:
    """The stage's work; returns the quality report (also written to quality.json)."""
    from pipeline_src.export import require_split_files
    from pipeline_src.export.onnx_export import onnx_metadata
    from pipeline_src.export.op_audit import audit_model, load_op_table, require_supported
    from pipeline_src.export.qdq_policy import ops_to_quantize
    from pipeline_src.fileio import output_set, remove_stale_partials

    qcfg, input_name = cfg["quantize"], cfg["onnx"]["input_name"]
    src = Path(onnx_path)
    meta = onnx_metadata(src)
    out = Path(out) if out else src.parent
    out.mkdir(parents=True, exist_ok=True)
    names = {"fp16": out / "model_fp16.onnx", "int8": out / "model_int8.onnx"}
    quality_path = out / "quality.json"
    metrics_path = Path(metrics) if metrics else None
    for stale in (names["fp16"], names["int8"], quality_path, metrics_path):  # the marker (engine's input) first
        if stale is not None:
            stale.unlink(missing_ok=True)
    require_split_files(manifest, qcfg["max_test_images"])  # now, not after minutes of calibration
    table = load_op_table(cfg["onnx"]["op_table"])

    batches = calibration_batches(patches, meta["input_views"], int(qcfg["calibration_patches"]),
                                  int(qcfg["calibration_batch"]), int(qcfg["seed"]))
    # scratch space named like the marker's temporaries, so the next run sweeps it away after a kill
    remove_stale_partials(names["fp16"])
    scratch = Path(tempfile.mkdtemp(prefix=f".{names['fp16'].name}.{os.getpid()}.", suffix=".partial", dir=out))
    try:
        candidates = {"fp32": src, "fp16": scratch / "model_fp16.onnx", "int8": scratch / "model_int8.onnx"}
        # each variant audited as made, from memory, and dropped (ATTSF's FP16 proto is 180 MB)
        fp16, props = make_fp16(src, candidates["fp16"])
        audits = {"fp16": audit_model(fp16, table)}
        del fp16
        require_supported(audits["fp16"], f"{names['fp16']} (made from {src})")
        audits["int8"] = audit_model(make_int8(src, candidates["int8"], batches, qcfg, input_name, props), table)
        require_supported(audits["int8"], f"{names['int8']} (made from {src})")
        rows = evaluate_variants(candidates, manifest, meta, input_name, qcfg["max_test_images"])
        report = summarise(rows, meta["task"], qcfg)
        quantized, kept_float = ops_to_quantize(qcfg)
        report.update({
            "onnx": str(src), "task": meta["task"], "manifest": str(manifest),
            "protocol": ("PSNR on RGB, output clipped to [0, 1], data range 1, whole image, no border crop"
                         if meta["task"] != "detection" else "MAE of sigmoid(logits) against the in-focus mask"),
            "calibration": {"patches": sum(len(b) for b in batches), "from": str(patches),
                            "method": qcfg["calibration_method"], "seed": int(qcfg["seed"]),
                            "op_types": quantized, "float_for_tensorrt": kept_float,
                            "activations": "int8 symmetric", "weights": "int8 symmetric per-channel",
                            "bias": "float"},
        })
        for name in ("fp16", "int8"):
            report["variants"][name]["ops"] = audits[name]["operators"]
        report["variants"]["fp32"]["file"] = src.name
        report["variants"]["fp16"]["file"] = names["fp16"].name
        accepted = report["variants"]["int8"]["accepted"]
        report["variants"]["int8"]["file"] = names["int8"].name if accepted else None
        # written together: the report, the INT8 variant if accepted, the FP16 variant (the marker) last
        files = [*([metrics_path] if metrics_path else []), quality_path, *([names["int8"]] if accepted else []),
                 names["fp16"]]
        with output_set(files) as temps:
            if metrics_path:
                temps[metrics_path].write_text(json.dumps(flat_quality(report), indent=2) + "\n")
            temps[quality_path].write_text(json.dumps(report, indent=2) + "\n")
            if accepted:
                os.replace(candidates["int8"], temps[names["int8"]])
            os.replace(candidates["fp16"], temps[names["fp16"]])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def flat_quality(report: dict) -> dict[str, float]:
    """The numbers DVC compares: each variant's score and its loss against fp32, INT8 acceptance as 0/1."""
    metric = report["metric"]
    out = {}
    for name, entry in report["variants"].items():
        out[f"{name}.{metric}"] = entry[metric]
        out.update({f"{name}.{k}": entry[k] for k in ("drop_db", "mae_rise") if k in entry})
        if "accepted" in entry:
            out[f"{name}.accepted"] = int(bool(entry["accepted"]))
    out["images"] = report["images"]
    return out


def _log_to_mlflow(args, report: dict) -> None:
    from pipeline_src.export.tracking import log_export_step
    from pipeline_src.fileio import sha256_file

    out = Path(args.out or Path(args.onnx).parent)
    metric = report["metric"]
    metrics = {}
    for name, entry in report["variants"].items():
        metrics[f"{name}/{metric}"] = entry[metric]
        metrics.update({f"{name}/{k}": entry[k] for k in ("drop_db", "mae_rise") if k in entry})
        if "accepted" in entry:
            metrics[f"{name}/accepted"] = float(entry["accepted"])
    variant_hashes = {f"{name}.sha256": sha256_file(out / entry["file"]) for name, entry in report["variants"].items()
                      if name != "fp32" and entry.get("file")}
    log_export_step(f"quantize {out.name}", enabled=not args.no_tracking, metrics=metrics,
                    tags={"stage": "quantize", "onnx.sha256": sha256_file(args.onnx), **variant_hashes,
                          "int8.accepted": str(report["variants"]["int8"]["accepted"]).lower()},
                    artifacts=[out / "quality.json"])  # the variant files: tracking.py says where


def run(args) -> int:
    cfg = load_export_config(args.config)
    cfg["quantize"].update((cfg["quantize"].get("presets") or {}).get(args.preset, {}) if args.preset else {})
    for key, value in (("max_int8_drop_db", args.max_int8_drop_db), ("calibration_patches", args.calibration_patches),
                       ("max_test_images", args.max_test_images)):
        if value is not None:
            cfg["quantize"][key] = value
    report = quantize_model(args.onnx, args.manifest, args.patches, cfg, args.out, args.metrics)
    _log_to_mlflow(args, report)
    metric = report["metric"]
    for name, entry in report["variants"].items():
        loss = {k: entry[k] for k in ("drop_db", "mae_rise") if k in entry}
        print(f"{name}: {metric} {entry[metric]:.4f} on {report['images']} test image(s)"
              + "".join(f", {k} {v:.4f}" for k, v in loss.items()), file=sys.stderr)
    if not report["variants"]["int8"]["accepted"]:
        # the gate's verdict, not a failure: quality.json records it, the bundle ships without INT8
        (limit_key, limit), = report["int8_limit"].items()
        print(f"warning: INT8 rejected: its loss exceeds {limit_key} = {limit:g}; no model_int8.onnx was written "
              "and the bundle ships FP32 and FP16 only (the limit is quantize.max_int8_drop_db / "
              "max_int8_mae_rise in config/export.yaml, or --max-int8-drop-db)", file=sys.stderr)
    return 0
