"""Assemble the edge bundle of one trained model: everything a device needs, and nothing from the pipeline.

`python -m pipeline_src bundle --export-dir data/export/<paper>-<dataset> --out data/bundles/<paper>-<dataset>
 [--manifest M]` builds the folder (atomically: it appears complete or not at all):
    model.onnx, model_fp16.onnx, model_int8.onnx   the ONNX variants (int8 only when quantize accepted it)
    parity.json, ops.json, quality.json             the reports they passed
    manifest.json      input name/layout/normalisation, size multiple, views, expected metrics, TensorRT profile,
                       tiling for frames beyond the profile, the stored check and its floors, the commands, and
                       the sha256 of every other file in the bundle
    build_engine.sh    the one command on the device: build the engine for its GPU, check it against the stored
                       fp32 output, name it only if it passed (`./build_engine.sh fp16`)
    build_engine.py    the builder (trt_builder.py); infer.py the standalone inference script (edge_infer.py);
                       edge_cuda.py (CUDA runtime through ctypes) and edge_tiling.py (tiles beyond the profile):
                       numpy, OpenCV and tensorrt or onnxruntime, nothing else
    samples/           one test sample's input view(s) (with --manifest), byte for byte
    check/input.npy    the device check's input (that sample cropped to `bundle.check_size`, or seeded noise),
    check/fp32_output.npy   and the fp32 model's output on it (ONNX Runtime, made here): the device compares
                       its engine with it, so it needs no onnxruntime (JetPack has none)
Engines themselves are not shipped: they run only on the device and TensorRT version that built them.

The check's floor for a precision is `bundle.min_psnr_vs_fp32_db`, or ONNX Runtime's own PSNR of that variant
against fp32 on the check input minus `bundle.check_margin_db`, whichever is lower: an engine must be about as
close to fp32 as the variant itself is, and never below the configured floor unless the variant itself is.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from pipeline_src.errors import ExportError
from pipeline_src.export import DEFAULT_CONFIG, format_size, load_export_config, parse_size

BUNDLE_FORMAT = 2
REPORTS = ("parity.json", "ops.json", "quality.json")
# bundle name -> source here; the scripts import each other by their bundle names
SCRIPTS = {"infer.py": "edge_infer.py", "build_engine.py": "trt_builder.py", "edge_cuda.py": "edge_cuda.py",
           "edge_tiling.py": "edge_tiling.py"}
CHECK_INPUT, CHECK_REFERENCE = "check/input.npy", "check/fp32_output.npy"

BUILD_ENGINE_SH = """#!/bin/sh
# Build a TensorRT engine for this device from the bundle's ONNX, check it against the fp32 output stored in the
# bundle, and give it its final name only if the check passed:
#   ./build_engine.sh [fp32|fp16|int8] [build_engine.py options, e.g. --builder trtexec]   (default: {default})
# Needs python3 with numpy and OpenCV, and TensorRT 10 or 11: its Python package, or trtexec alone (JetPack 6
# has both). No onnxruntime. PYTHON=... picks the interpreter. The report is build-<precision>.json; TensorRT's
# messages go to standard error, trtexec's output to <engine>.trtexec.log. Exit 0: built and checked; 1: the
# check failed (engine removed); 2: nothing built (the last line says why).
set -eu
cd "$(dirname "$0")"
PRECISION="${{1:-{default}}}"
[ "$#" -gt 0 ] && shift
exec "${{PYTHON:-python3}}" build_engine.py --precision "$PRECISION" --report "build-$PRECISION.json" "$@"
"""


def add_arguments(parser) -> None:
    parser.add_argument("--export-dir", required=True, help="export folder (model*.onnx and their reports)")
    parser.add_argument("--out", required=True, help="bundle folder, e.g. data/bundles/kpac-dpdd")
    parser.add_argument("--manifest", help="dataset manifest: its first test sample goes in samples/ and is the "
                                           "device check's input (default: the check runs on seeded noise)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="export settings (default: %(default)s)")
    parser.add_argument("--no-tracking", action="store_true",
                        help="do not log the bundle to MLflow nor register it in the Model Registry")


def _read_json(path: Path) -> Any:
    import json

    if not path.is_file():
        raise ExportError(f"{path}: missing; run export-onnx and quantize for this model first")
    return json.loads(path.read_text())


def bundle_variants(export_dir: Path, quality: dict[str, Any], names: dict[str, str]) -> dict[str, str]:
    """precision -> file name of the variants to ship: fp32 and fp16 always, int8 only if accepted."""
    out = {}
    for precision, name in names.items():
        accepted = precision != "int8" or quality["variants"].get("int8", {}).get("accepted", False)
        exists = (export_dir / name).is_file()
        if accepted and not exists:
            raise ExportError(f"{export_dir / name}: the {precision} variant is missing (quality.json lists it as "
                              "made); re-run quantize")
        if precision == "int8" and exists and not accepted:
            raise ExportError(f"{export_dir / name}: present although quality.json rejected INT8; re-run quantize")
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
        raise ExportError(f"{manifest}: no test samples to ship for the device check; pass a manifest with a "
                          "test split")
    sample = tests[0][1]
    dest.mkdir()
    out = []
    for v in views:
        src = Path(m["root"]) / sample["inputs"][v]
        name = f"{sample['id']}_{v}{src.suffix}".replace("/", "_")
        shutil.copyfile(src, dest / name)
        out.append(f"{dest.name}/{name}")
    return out


def bundle_profile(meta: dict[str, Any], cfg: dict[str, Any]) -> dict[str, tuple[int, int]]:
    from pipeline_src.export.trt_builder import snap_profile

    tcfg = cfg["tensorrt"]
    return snap_profile({k: parse_size(tcfg["profile"][k]) for k in ("min", "opt", "max")}, int(meta["size_multiple"]))


def bundle_tiling(meta: dict[str, Any], cfg: dict[str, Any], profile) -> dict[str, Any]:
    """Tiles for frames beyond the profile: the configured tile (default: the profile's max), inside the profile."""
    from pipeline_src.config import ConfigError
    from pipeline_src.export import edge_tiling

    tiling = cfg["bundle"]["tiling"]
    tile = parse_size(tiling["tile"]) if tiling.get("tile") else profile["max"]
    if not all(lo <= t <= hi for lo, t, hi in zip(profile["min"], tile, profile["max"])):
        raise ConfigError(f"bundle.tiling.tile {format_size(*tile)} lies outside the TensorRT profile "
                          f"{format_size(*profile['min'])}..{format_size(*profile['max'])}")
    try:
        spec = edge_tiling.plan(tile, int(tiling["overlap"]), int(tiling["margin"]), int(meta["size_multiple"]),
                                profile["min"])
    except ValueError as e:
        raise ConfigError(f"bundle.tiling: {e}") from e
    return {"tile": {"height": spec.tile_hw[0], "width": spec.tile_hw[1]}, "overlap": spec.overlap,
            "margin": spec.margin,
            "rule": "frames whose padded size exceeds the profile's max are run in tiles of `tile` overlapping by "
                    "`overlap`, blended with a raised-cosine window that gives `margin` pixels at inner tile edges "
                    "no weight (edge_tiling.py, the evaluation stage's scheme)"}


def check_input(manifest: str | None, meta: dict[str, Any], cfg: dict[str, Any], profile):
    """(1 x C x H x W float32, description): the first test image cropped to the check size, or seeded noise."""
    import numpy as np

    size = parse_size(cfg["bundle"]["check_size"])
    cap = tuple(min(a, b) for a, b in zip(size, profile["max"]))
    if manifest is None:
        x = np.random.default_rng(0).random((1, int(meta["in_channels"]), *cap), dtype=np.float32)
        return x, f"uniform noise, seed 0, {format_size(*cap)}"
    from pipeline_src.export import iter_test_inputs

    sample_id, x, _, _ = next(iter_test_inputs(manifest, meta["input_views"], limit=1, task=meta["task"]))
    x = np.ascontiguousarray(x[:, :, :cap[0], :cap[1]])
    return x, f"test sample {sample_id!r} of {manifest}, top-left {format_size(*x.shape[-2:])}"


def stored_check(tmp: Path, variants: dict[str, str], meta: dict[str, Any], cfg: dict[str, Any], profile,
                 manifest: str | None, names: tuple[str, str]) -> dict[str, Any]:
    """Write check/input.npy and check/fp32_output.npy; return the manifest's `check` entry with its floors."""
    import numpy as np
    import onnxruntime

    from pipeline_src.export.edge_infer import ModelSpec, OnnxRuntimeModel, compare_outputs, run_padded

    x, source = check_input(manifest, meta, cfg, profile)
    spec = ModelSpec(tuple(meta["input_views"]), int(meta["size_multiple"]), meta["task"], *names)
    outputs = {p: run_padded(OnnxRuntimeModel(tmp / f, spec, threads=1), x, spec.size_multiple, profile["min"])
               for p, f in variants.items()}
    (tmp / "check").mkdir()
    np.save(tmp / CHECK_INPUT, x)
    np.save(tmp / CHECK_REFERENCE, outputs["fp32"])
    bcfg = cfg["bundle"]
    ort_psnr = {p: compare_outputs(outputs["fp32"], y, meta["task"])["psnr_db"] for p, y in outputs.items()}
    margin = float(bcfg["check_margin_db"])
    floors = {p: round(min(float(bcfg["min_psnr_vs_fp32_db"][p]),
                           ort_psnr[p] - margin if ort_psnr[p] is not None else float("inf")), 2) for p in variants}
    return {"input": CHECK_INPUT, "reference": CHECK_REFERENCE, "input_source": source,
            "size": format_size(*x.shape[-2:]),
            "reference_made_with": f"{variants['fp32']} in ONNX Runtime {onnxruntime.__version__} (CPU), padded to "
                                   f"the size multiple and the profile's min, cropped back",
            "onnxruntime_psnr_vs_fp32_db": {p: None if v is None else round(v, 2) for p, v in ort_psnr.items()},
            "min_psnr_vs_fp32_db": floors,
            "floor_rule": f"min(bundle.min_psnr_vs_fp32_db, ONNX Runtime's PSNR of the variant - "
                          f"{bcfg['check_margin_db']} dB)"}


def bundle_manifest(meta: dict[str, Any], cfg: dict[str, Any], variants: dict[str, str], quality, parity, ops,
                    check_inputs: list[str], profile, tiling, check) -> dict[str, Any]:
    multiple = int(meta["size_multiple"])
    tcfg, onnx_cfg = cfg["tensorrt"], cfg["onnx"]
    default = cfg["bundle"]["default_engine_precision"]
    if default not in variants:
        default = "fp32"
    detection = meta["task"] == "detection"
    example = variants.get("fp16", "model.onnx")
    inputs = " ".join(check_inputs) or " ".join(f"{v}.png" for v in meta["input_views"])
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
            "versions": "10 or 11 (strongly typed: the precision is the ONNX variant's); others are refused",
            "operators_checked_against": ops["op_table"],
            "profile": {k: {"height": h, "width": w} for k, (h, w) in profile.items()},
            "workspace_mib": int(tcfg["workspace_mib"]), "default_precision": default,
            "min_psnr_vs_onnxruntime_db": {p: tcfg["min_psnr_vs_onnxruntime_db"][p] for p in variants},
        },
        "tiling": tiling,
        "check": check,
        "check_inputs": check_inputs,
        "commands": {
            "build_and_check_engine": f"./build_engine.sh {default}",
            "build_with_trtexec_only": f"./build_engine.sh {default} --builder trtexec",
            "check_engine": "python3 infer.py --check --model <engine>.plan",
            "infer_tensorrt": f"python3 infer.py --model <engine>.plan --input {inputs} --output sharp.png",
            "infer_onnxruntime": f"python3 infer.py --model {example} --input {inputs} --output sharp.png",
        },
    }


def build_bundle(export_dir: str | os.PathLike, out: str | os.PathLike, cfg: dict[str, Any],
                 manifest: str | None = None) -> dict[str, Any]:
    """The stage's work: returns the manifest written to `out`/manifest.json."""
    from pipeline_src.export.onnx_export import onnx_metadata
    from pipeline_src.fileio import atomic_dir, atomic_write_json, atomic_write_text, link_or_copy, sha256_file

    export_dir = Path(export_dir)
    parity, ops, quality = (_read_json(export_dir / name) for name in REPORTS)
    for name, report in (("parity.json", parity), ("ops.json", ops)):
        if not report["passed"]:
            raise ExportError(f"{export_dir / name}: did not pass; nothing to bundle (fix the export first)")
    variants = bundle_variants(export_dir, quality, cfg["bundle"]["variants"])
    meta = onnx_metadata(export_dir / variants["fp32"])
    profile = bundle_profile(meta, cfg)
    tiling = bundle_tiling(meta, cfg, profile)
    here = Path(__file__).resolve().parent
    names = (cfg["onnx"]["input_name"], cfg["onnx"]["output_name"])
    with atomic_dir(out) as tmp:
        for name in (*variants.values(), *REPORTS):  # linked, not copied: the ONNX files are large
            link_or_copy(export_dir / name, tmp / name)
        for bundle_name, source in SCRIPTS.items():
            shutil.copyfile(here / source, tmp / bundle_name)
            os.chmod(tmp / bundle_name, 0o755)
        default = cfg["bundle"]["default_engine_precision"]
        atomic_write_text(tmp / "build_engine.sh", BUILD_ENGINE_SH.format(default=default if default in variants
                                                                         else "fp32"))
        os.chmod(tmp / "build_engine.sh", 0o755)
        check_inputs = copy_samples(manifest, meta["input_views"], tmp / "samples") if manifest else []
        check = stored_check(tmp, variants, meta, cfg, profile, manifest, names)
        content = bundle_manifest(meta, cfg, variants, quality, parity, ops, check_inputs, profile, tiling, check)
        content["files"] = {p.relative_to(tmp).as_posix(): sha256_file(p)
                            for p in sorted(tmp.rglob("*")) if p.is_file()}
        atomic_write_json(tmp / "manifest.json", content)
    return content


def registry_entry(content: dict[str, Any], export_dir: Path, bundle_dir: Path, manifest: str | None):
    """Tags and figures of the bundle's model version: what it was trained from and how well it survived export."""
    import json

    from pipeline_src.export.onnx_export import onnx_metadata
    from pipeline_src.fileio import sha256_file

    meta = onnx_metadata(export_dir / "model.onnx")
    quality = json.loads((export_dir / "quality.json").read_text())
    tags = {"paper": str(meta.get("paper", "")), "dataset": str(meta.get("dataset", "")),
            "model": meta["model"], "task": meta["task"],
            "training_run_id": str(meta.get("training_run_id")),
            "checkpoint.sha256": str(meta.get("checkpoint_sha256")),
            "bundle_manifest.sha256": sha256_file(bundle_dir / "manifest.json"),
            "variants": ",".join(content["variants"]),
            "int8.accepted": str(quality["variants"]["int8"]["accepted"]).lower()}
    if manifest:
        tags["data_manifest.sha256"] = sha256_file(manifest)
    metrics = {"parity/max_abs_diff": content["parity"]["onnxruntime_vs_pytorch_max_abs_diff"]}
    metric = quality["metric"]
    for name, entry in quality["variants"].items():
        metrics[f"{name}/{metric}"] = entry[metric]
        metrics.update({f"{name}/{k}": entry[k] for k in ("drop_db", "mae_rise") if k in entry})
    tags.update({f"figure.{k}": f"{v:.6g}" for k, v in metrics.items()})
    description = (f"{meta['model']} ({meta.get('paper', '')}) trained on {meta.get('dataset', '')}: edge bundle "
                   f"with {', '.join(content['variants'])} ONNX variants; build the engine on the device with "
                   f"{content['commands']['build_and_check_engine']}")
    return tags, metrics, description


def run(args) -> int:
    from pipeline_src.export.tracking import register_bundle

    cfg = load_export_config(args.config)
    content = build_bundle(args.export_dir, args.out, cfg, args.manifest)
    tags, metrics, description = registry_entry(content, Path(args.export_dir), Path(args.out), args.manifest)
    run_id, version = register_bundle(Path(args.out).name, Path(args.out), tags=tags, metrics=metrics,
                                      description=description, enabled=not args.no_tracking)
    registered = f"; registered as models:/{Path(args.out).name}/{version}" if version else ""
    print(f"{args.out}: {content['model']['name']} bundle with {', '.join(content['variants'])}; "
          f"on the device: {content['commands']['build_and_check_engine']}{registered}", file=sys.stderr)
    return 0
