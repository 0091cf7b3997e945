"""Export a trained model to ONNX with dynamic height and width, check it, audit it, and prove parity.

`python -m pipeline_src export-onnx --checkpoint final.pt --out DIR [--manifest M]` writes
    DIR/model.onnx    opset 17 (config), input "input" N x C x H x W, output "output", H and W dynamic;
                      the pipeline's facts about the model (views, size multiple, task, ...) in its metadata
    DIR/parity.json   ONNX Runtime vs PyTorch, max absolute difference per size (fp32, limit 1e-4)
    DIR/ops.json      operator audit against the TensorRT ONNX parser's list (op_audit.py)
model.onnx appears only when `onnx.checker`, the audit and the parity check all pass; the three files are written
together (fileio.output_set: parity.json, ops.json, then model.onnx, the file later stages read, last), so a
killed run never leaves a model.onnx without its reports, nor reports of one run beside a model of another. A
failed check leaves the reports saying why (passed: false) and no model.onnx. The legacy TorchScript exporter is
used (`dynamo=False`): the dynamo exporter fails on in-graph padding in torch 2.13.
Parity inputs are crops of the first test image of `--manifest` when one is given (real image statistics),
else seeded uniform noise.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from pipeline_src.errors import ExportError
from pipeline_src.export import DEFAULT_CONFIG, format_size, load_export_config, parse_size

METADATA_PREFIX = "pipeline."


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a training phase's final.pt")
    parser.add_argument("--out", required=True, help="output folder (model.onnx, parity.json, ops.json)")
    parser.add_argument("--manifest", help="dataset manifest: parity is checked on crops of its first test image")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="export settings (default: %(default)s)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: config onnx.opset)")
    parser.add_argument("--sizes", nargs="+", metavar="WxH",
                        help="parity sizes, WIDTHxHEIGHT; at least two, one not the export size "
                             "(default: config onnx.parity.check_sizes)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument("--atol", type=float, help="fp32 max absolute difference allowed (default: config)")


# ------------------------------------------------------------------------------------------------ export
def export_onnx(model, path: str | os.PathLike, in_channels: int, *, opset: int, export_size: tuple[int, int],
                input_name: str = "input", output_name: str = "output",
                metadata: dict[str, Any] | None = None) -> None:
    """Trace `model` (through the export rewrites) to `path` with dynamic batch, height and width."""
    import warnings

    import onnx
    import torch

    from pipeline_src.export.rewrites import prepare_for_export

    wrapped = prepare_for_export(model)
    example = torch.rand(1, in_channels, *export_size, generator=torch.Generator().manual_seed(0))
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        # the legacy exporter is a deliberate choice (module docstring); its deprecation notices are noise here
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapped, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: dynamic, output_name: dynamic}, do_constant_folding=True)
    proto = onnx.load(str(path))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key = METADATA_PREFIX + key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, str(path))


def check_model(path: str | os.PathLike) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The pipeline's metadata written at export (keys without the prefix, JSON values decoded)."""
    import onnx
    from google.protobuf.message import DecodeError

    if not Path(path).is_file():
        raise ExportError(f"{path}: no such ONNX file; run export-onnx first")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except DecodeError as exc:
        raise ExportError(f"{path}: not a readable ONNX file ({exc}); run export-onnx again") from exc
    out = {}
    for entry in proto.metadata_props:
        if entry.key.startswith(METADATA_PREFIX):
            key = entry.key[len(METADATA_PREFIX):]
            try:
                out[key] = json.loads(entry.value)
            except json.JSONDecodeError:
                out[key] = entry.value
    if not out:
        raise ExportError(f"{path}: no {METADATA_PREFIX}* metadata; export it with "
                          "`python -m pipeline_src export-onnx`")
    return out


def model_metadata(record: dict[str, Any], in_channels: int, out_channels: int) -> dict[str, Any]:
    return {
        "model": record["model"]["name"], "model_args": record["model"]["args"],
        "input_views": list(record["input_views"]), "size_multiple": int(record["size_multiple"]),
        "task": record.get("task", "restoration"), "paper": record.get("paper", ""),
        "dataset": record.get("dataset", ""), "phase": record.get("phase", ""),
        "in_channels": in_channels, "out_channels": out_channels,
    }


# ------------------------------------------------------------------------------------------------ parity
def parity_inputs(in_channels: int, sizes, seed: int, manifest: str | None, views) -> tuple[list, str]:
    """One 1 x C x H x W float32 input per (H, W): crops of a test image, or seeded noise without a manifest."""
    import numpy as np

    if manifest is None:
        rng = np.random.default_rng(seed)
        return [rng.random((1, in_channels, h, w), dtype=np.float32) for h, w in sizes], f"uniform noise, seed {seed}"
    from pipeline_src.export import iter_test_inputs

    sample_id, x, _, _ = next(iter_test_inputs(manifest, views, limit=1))
    img_h, img_w = x.shape[-2:]
    too_big = [format_size(h, w) for h, w in sizes if h > img_h or w > img_w]
    if too_big:
        raise ValueError(f"{manifest}: test image {sample_id!r} is {format_size(img_h, img_w)}, smaller than "
                         f"parity size(s) {too_big}; pick smaller --sizes")
    return [np.ascontiguousarray(x[:, :, :h, :w]) for h, w in sizes], f"crops of test image {sample_id!r}"


def check_parity(model, onnx_path: str | os.PathLike, inputs, *, atol: float, export_size: tuple[int, int],
                 input_name: str = "input") -> dict[str, Any]:
    """Run PyTorch and ONNX Runtime (CPU) on each input; report the max absolute difference per size."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from pipeline_src.export.rewrites import prepare_for_export

    sizes = [tuple(x.shape[-2:]) for x in inputs]
    if len(sizes) < 2 or all(s == tuple(export_size) for s in sizes):
        raise ValueError(f"parity needs two or more sizes, one of them not the export size "
                         f"{format_size(*export_size)}; got {[format_size(*s) for s in sizes]}")
    wrapped = prepare_for_export(model)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rows = []
    for x in inputs:
        with torch.no_grad():
            ref = wrapped(torch.from_numpy(x)).numpy()
        got = session.run(None, {input_name: x})[0]
        if got.shape != ref.shape:
            raise ValueError(f"{onnx_path}: output shape {got.shape} differs from PyTorch's {ref.shape} "
                             f"at {format_size(*x.shape[-2:])}")
        diff = float(np.abs(got.astype(np.float64) - ref).max())
        rows.append({"size": format_size(*x.shape[-2:]), "used_at_export": tuple(x.shape[-2:]) == tuple(export_size),
                     "max_abs_diff": diff, "passed": diff <= atol})
    worst = max(r["max_abs_diff"] for r in rows)
    return {"precision": "fp32", "atol": atol, "max_abs_diff": worst, "sizes": rows, "passed": worst <= atol}


# ------------------------------------------------------------------------------------------------- stage
def export_checkpoint(checkpoint: str, out: str | os.PathLike, cfg: dict[str, Any], *, manifest: str | None = None,
                      opset: int | None = None, sizes=None, atol: float | None = None) -> dict[str, Any]:
    """The stage's work; returns {"onnx", "parity", "ops"}. Raises when a check fails (reports still written)."""
    import torch

    from pipeline_src.export.op_audit import audit_model, load_op_table, require_supported
    from pipeline_src.fileio import atomic_write_json, output_set, sha256_file
    from pipeline_src.model_io import load_model

    onnx_cfg = cfg["onnx"]
    opset = opset or int(onnx_cfg["opset"])
    atol = float(onnx_cfg["parity"]["atol"] if atol is None else atol)
    export_size = parse_size(onnx_cfg["parity"]["export_size"])
    check_sizes = [parse_size(s) for s in (sizes or onnx_cfg["parity"]["check_sizes"])]
    in_name, out_name = onnx_cfg["input_name"], onnx_cfg["output_name"]
    table = load_op_table(onnx_cfg["op_table"])

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final, parity_path, ops_path = out / "model.onnx", out / "parity.json", out / "ops.json"
    for stale in (final, parity_path, ops_path):  # marker first: a failed re-export leaves no model looking current
        stale.unlink(missing_ok=True)

    model, record = load_model(checkpoint)
    in_channels = 3 * len(record["input_views"])
    with torch.no_grad():
        out_channels = int(model(torch.rand(1, in_channels, *export_size)).shape[1])
    metadata = model_metadata(record, in_channels, out_channels)
    metadata["checkpoint_sha256"] = sha256_file(checkpoint)
    metadata["training_run_id"] = record.get("mlflow_run_id")  # the Model Registry links a version to it

    refused: dict[Path, dict[str, Any]] = {}
    try:
        with output_set([parity_path, ops_path, final]) as temps:
            tmp = temps[final]
            export_onnx(model, tmp, in_channels, opset=opset, export_size=export_size, input_name=in_name,
                        output_name=out_name, metadata=metadata)
            check_model(tmp)
            import onnx

            ops = audit_model(onnx.load(str(tmp)), table)
            if not ops["passed"]:
                refused[ops_path] = ops
                require_supported(ops, f"{checkpoint} -> {final}")
            inputs, source = parity_inputs(in_channels, check_sizes, int(onnx_cfg["parity"]["seed"]), manifest,
                                           record["input_views"])
            parity = check_parity(model, tmp, inputs, atol=atol, export_size=export_size, input_name=in_name)
            parity.update({"inputs": source, "export_size": format_size(*export_size), "opset": opset,
                           "checkpoint": str(checkpoint)})
            if not parity["passed"]:
                refused.update({ops_path: ops, parity_path: parity})
                raise ExportError(f"{final}: ONNX Runtime differs from PyTorch by {parity['max_abs_diff']:.3g} > "
                                  f"{atol:g} (see {parity_path}); model.onnx not written")
            for path, report in ((parity_path, parity), (ops_path, ops)):
                temps[path].write_text(json.dumps(report, indent=2) + "\n")
    finally:
        for path, report in refused.items():  # the reports of a refused export say why; no model.onnx beside them
            atomic_write_json(path, report)
    return {"onnx": str(final), "parity": parity, "ops": ops}


def _log_to_mlflow(args, result: dict) -> None:
    from pipeline_src.export.tracking import log_export_step
    from pipeline_src.fileio import sha256_file

    out = Path(args.out)
    parity = result["parity"]
    metrics = {"parity/max_abs_diff": parity["max_abs_diff"], "operator_types": len(result["ops"]["operators"])}
    metrics.update({f"parity/max_abs_diff_{r['size']}": r["max_abs_diff"] for r in parity["sizes"]})
    log_export_step(f"export-onnx {out.name}", enabled=not args.no_tracking, metrics=metrics,
                    tags={"stage": "export-onnx", "checkpoint": str(args.checkpoint),
                          "checkpoint.sha256": sha256_file(args.checkpoint), "opset": str(parity["opset"]),
                          "onnx.sha256": sha256_file(result["onnx"])},
                    artifacts=[out / "parity.json", out / "ops.json"])  # the ONNX file: tracking.py says where


def run(args) -> int:
    cfg = load_export_config(args.config)
    result = export_checkpoint(args.checkpoint, args.out, cfg, manifest=args.manifest, opset=args.opset,
                               sizes=args.sizes, atol=args.atol)
    parity = result["parity"]
    _log_to_mlflow(args, result)
    print(f"{result['onnx']}: opset {parity['opset']}, {len(result['ops']['operators'])} operator types, all in "
          f"the TensorRT {result['ops']['tensorrt']} parser's list; parity max |diff| {parity['max_abs_diff']:.2e} "
          f"<= {parity['atol']:g} at {', '.join(r['size'] for r in parity['sizes'])}", file=sys.stderr)
    return 0
