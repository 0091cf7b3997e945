"""Assemble the edge bundle of one trained model: everything a device needs, and nothing from the pipeline.

`python -m pipeline_src bundle --export-dir data/export/<paper>-<dataset> --out data/bundles/<paper>-<dataset>
 [--manifest M]` builds the folder (atomically: it appears complete or not at all):
    model.onnx, model_fp16.onnx, model_int8.onnx   the ONNX variants (int8 only when quantize accepted it)
    parity.json, ops.json, quality.json             the reports they passed
    manifest.json      input name/layout/normalisation, size multiple, views, expected metrics, TensorRT profile,
                       the commands, and the sha256 of every other file in the bundle
    build_engine.sh    the one command on the device: build the engine for its GPU, then check it against ONNX
                       Runtime (`./build_engine.sh fp16`)
    build_engine.py    the builder (trt_builder.py), infer.py the standalone inference script (edge_infer.py):
                       numpy, OpenCV and onnxruntime or tensorrt, nothing else
    samples/           one test sample's input view(s) (with --manifest): what the device check runs on
Engines themselves are not shipped: they run only on the GPU and TensorRT version that built them.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from pipeline_src.export import DEFAULT_CONFIG, load_export_config, parse_size

BUNDLE_FORMAT = 1
REPORTS = ("parity.json", "ops.json", "quality.json")
SCRIPTS = {"infer.py": "edge_infer.py", "build_engine.py": "trt_builder.py"}  # bundle name -> source here

BUILD_ENGINE_SH = """#!/bin/sh
# Build a TensorRT engine for this device's GPU from the bundle's ONNX, then check it against ONNX Runtime.
#   ./build_engine.sh [fp32|fp16|int8]          (default: {default})
# Needs python3 with numpy and OpenCV, TensorRT 10 or 11 (Python package, or trtexec for the build alone) and
# onnxruntime for the check. PYTHON=... picks the interpreter. The engine lands here, named by GPU, TensorRT
# version and precision; the timing cache beside it makes the next build faster.
set -eu
cd "$(dirname "$0")"
PRECISION="${{1:-{default}}}"
PYTHON="${{PYTHON:-python3}}"
"$PYTHON" build_engine.py --precision "$PRECISION" > "build-$PRECISION.json"
ENGINE=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["engine"])' "build-$PRECISION.json")
ONNX=$("$PYTHON" -c 'import json, sys; print(json.load(open("manifest.json"))["variants"][sys.argv[1]]["file"])' "$PRECISION")
"$PYTHON" infer.py --check --onnx "$ONNX" --model "$ENGINE"
echo "engine built and checked: $ENGINE"
"""


def add_arguments(parser) -> None:
    parser.add_argument("--export-dir", required=True, help="export folder (model*.onnx and their reports)")
    parser.add_argument("--out", required=True, help="bundle folder, e.g. data/bundles/kpac-dpdd")
    parser.add_argument("--manifest", help="dataset manifest: its first test sample goes in samples/ for the "
                                           "device check (default: the check runs on noise)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="export settings (default: %(default)s)")


def _read_json(path: Path) -> Any:
    import json

    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run export-onnx and quantize for this model first")
    return json.loads(path.read_text())


def bundle_variants(export_dir: Path, quality: dict[str, Any], names: dict[str, str]) -> dict[str, str]:
    """precision -> file name of the variants to ship: fp32 and fp16 always, int8 only if accepted."""
    out = {}
    for precision, name in names.items():
        accepted = precision != "int8" or quality["variants"].get("int8", {}).get("accepted", False)
        exists = (export_dir / name).is_file()
        if accepted and not exists:
            raise FileNotFoundError(f"{export_dir / name}: the {precision} variant is missing "
                                    f"(quality.json lists it as made); re-run quantize")
        if precision == "int8" and exists and not accepted:
            raise ValueError(f"{export_dir / name}: present although quality.json rejected INT8; re-run quantize")
        if accepted:
            out[precision] = name
    return out


def expected_metrics(quality: dict[str, Any], variants: dict[str, str]) -> dict[str, Any]:
    metric = quality["metric"]
    out = {"protocol": quality["protocol"], "metric": metric, "better": quality["better"],
           "test_images": quality["images"], "manifest": quality["manifest"]}
    for precision in variants:
        entry = quality["variants"][precision]
        out[precision] = {metric: entry[metric], **{k: entry[k] for k in ("drop_db", "mae_rise", "psnr_vs_fp32_db")
                                                    if k in entry}}
    return out


def copy_samples(manifest: str, views, dest: Path) -> list[str]:
    """The first test sample's input views, byte for byte, as samples/<id>_<view>.<ext>."""
    from pipeline_src.data.samples import load_manifest, samples_of

    m = load_manifest(manifest)
    tests = samples_of(m, "test")
    if not tests:
        raise ValueError(f"{manifest}: no test samples to ship for the device check")
    sample = tests[0][1]
    dest.mkdir()
    out = []
    for v in views:
        src = Path(m["root"]) / sample["inputs"][v]
        name = f"{sample['id']}_{v}{src.suffix}".replace("/", "_")
        shutil.copyfile(src, dest / name)
        out.append(f"{dest.name}/{name}")
    return out


def bundle_manifest(meta: dict[str, Any], cfg: dict[str, Any], variants: dict[str, str], quality, parity, ops,
                    check_inputs: list[str]) -> dict[str, Any]:
    from pipeline_src.export.trt_builder import snap_profile

    multiple = int(meta["size_multiple"])
    tcfg, onnx_cfg = cfg["tensorrt"], cfg["onnx"]
    profile = snap_profile({k: parse_size(tcfg["profile"][k]) for k in ("min", "opt", "max")}, multiple)
    default = cfg["bundle"]["default_engine_precision"]
    if default not in variants:
        default = "fp32"
    detection = meta["task"] == "detection"
    example = variants.get("fp16", "model.onnx")
    return {
        "format": BUNDLE_FORMAT,
        "model": {"name": meta["model"], "args": meta["model_args"],
                  **{k: meta.get(k) for k in ("paper", "dataset", "phase", "checkpoint_sha256")}},
        "input": {
            "name": onnx_cfg["input_name"], "layout": "NCHW", "batch": 1, "dtype": "float32", "color_order": "RGB",
            "views": list(meta["input_views"]), "channels": int(meta["in_channels"]),
            "normalisation": "each view divided by 255 (8-bit) or 65535 (16-bit) to [0, 1]; views concatenated "
                             "along channels in `views` order",
            "divide_by": {"8": 255, "16": 65535}, "size_multiple": multiple,
            "padding": "repeat the last row and column up to a multiple of size_multiple, crop the output back",
        },
        "output": {
            "name": onnx_cfg["output_name"], "layout": "NCHW", "dtype": "float32", "task": meta["task"],
            "channels": int(meta["out_channels"]),
            "meaning": ("in-focus logits: sigmoid gives the probability" if detection else
                        "sharp RGB in [0, 1]; clip to [0, 1] before writing (the model does not clip)"),
        },
        "variants": {p: {"file": f, "precision": p} for p, f in variants.items()},
        "expected_metrics": expected_metrics(quality, variants),
        "parity": {"onnxruntime_vs_pytorch_max_abs_diff": parity["max_abs_diff"], "atol": parity["atol"],
                   "sizes": [r["size"] for r in parity["sizes"]], "opset": parity["opset"]},
        "tensorrt": {
            "versions": "10 or 11 (strongly typed: the precision is the ONNX variant's)",
            "operators_checked_against": ops["op_table"],
            "profile": {k: {"height": h, "width": w} for k, (h, w) in profile.items()},
            "workspace_mib": int(tcfg["workspace_mib"]), "default_precision": default,
            "min_psnr_vs_onnxruntime_db": {p: tcfg["min_psnr_vs_onnxruntime_db"][p] for p in variants},
        },
        "check_inputs": check_inputs,
        "commands": {
            "build_and_check_engine": f"./build_engine.sh {default}",
            "infer_onnxruntime": f"python3 infer.py --model {example} --input "
                                 + " ".join(f"{v}.png" for v in meta["input_views"]) + " --output out.png",
            "infer_tensorrt": "python3 infer.py --model <engine>.plan --input ... --output out.png",
        },
    }


def build_bundle(export_dir: str | os.PathLike, out: str | os.PathLike, cfg: dict[str, Any],
                 manifest: str | None = None) -> dict[str, Any]:
    """The stage's work: returns the manifest written to `out`/manifest.json."""
    from pipeline_src.export.onnx_export import onnx_metadata
    from pipeline_src.fileio import atomic_dir, atomic_write_json, atomic_write_text, sha256_file

    export_dir = Path(export_dir)
    parity, ops, quality = (_read_json(export_dir / name) for name in REPORTS)
    for name, report in (("parity.json", parity), ("ops.json", ops)):
        if not report["passed"]:
            raise ValueError(f"{export_dir / name}: did not pass; nothing to bundle")
    variants = bundle_variants(export_dir, quality, cfg["bundle"]["variants"])
    meta = onnx_metadata(export_dir / variants["fp32"])
    here = Path(__file__).resolve().parent
    with atomic_dir(out) as tmp:
        for name in (*variants.values(), *REPORTS):
            shutil.copyfile(export_dir / name, tmp / name)
        for bundle_name, source in SCRIPTS.items():
            shutil.copyfile(here / source, tmp / bundle_name)
            os.chmod(tmp / bundle_name, 0o755)
        default = cfg["bundle"]["default_engine_precision"]
        atomic_write_text(tmp / "build_engine.sh", BUILD_ENGINE_SH.format(default=default if default in variants
                                                                         else "fp32"))
        os.chmod(tmp / "build_engine.sh", 0o755)
        check_inputs = copy_samples(manifest, meta["input_views"], tmp / "samples") if manifest else []
        content = bundle_manifest(meta, cfg, variants, quality, parity, ops, check_inputs)
        content["files"] = {p.relative_to(tmp).as_posix(): sha256_file(p)
                            for p in sorted(tmp.rglob("*")) if p.is_file()}
        atomic_write_json(tmp / "manifest.json", content)
    return content


def run(args) -> int:
    cfg = load_export_config(args.config)
    content = build_bundle(args.export_dir, args.out, cfg, args.manifest)
    print(f"{args.out}: {content['model']['name']} bundle with {', '.join(content['variants'])}; "
          f"on the device: {content['commands']['build_and_check_engine']}", file=sys.stderr)
    return 0
