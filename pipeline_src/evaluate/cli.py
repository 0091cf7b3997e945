"""Evaluate a trained model with its paper's protocol: metrics, full record, per-image CSV, side-by-side images.

    python -m pipeline_src evaluate --checkpoint data/runs/kpac/synth-defocus/phase2/final.pt \
        --manifest data/manifests/synth-defocus.json --split test --baselines \
        --out data/metrics/kpac-synth-defocus.json --record data/metrics/kpac-synth-defocus.record.json \
        --per-image data/metrics/kpac-synth-defocus.csv --images data/evaluate/kpac-synth-defocus

The protocol (config/protocols.yaml) is the one the checkpoint's recipe names, unless --protocol overrides it.
Each test image is read at the protocol's bit depth, run through the model at full resolution (tiled, see
tiling.py), post-processed as the protocol says (activation, clip, quantisation) and scored; with --baselines
the protocol's baseline rows (blurry input, Wiener deconvolution) are scored on the same images.
Outputs:
- --out: numbers only, flat and few (the model's metrics, `<baseline>.<metric>`, `gain_db`, `images`): what
  `dvc metrics show/diff` and `dvc exp show` compare;
- --record: everything else the report needs (model and baseline rows, protocol, preset, checkpoint sha256,
  where the weights came from, training and evaluation MLflow run ids);
- --per-image: one CSV row per image (a numeric `index` column for `dvc plots`);
- --images: side-by-side PNGs (input | output | target | error map);
- an MLflow run tagged with the protocol and the training run's id, nested under the pipeline's parent run when
  PIPELINE_PARENT_RUN_ID is set.
The three files are written together (the metrics file last); a kill leaves all or none. Same checkpoint and
data -> the same bytes (no timestamps; with tracking on, only the record's `eval_run_id` differs).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

from pipeline_src.errors import ConfigError, DataError

# Error maps are |output - target| averaged over channels, times this gain, so 0.25 is full scale on every image.
ERROR_MAP_GAIN = 4.0
PANEL_MAX_WIDTH = 480
DECIMALS = 6  # metrics are written rounded: readable diffs, and far below any difference that matters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="a training phase's final.pt")
    parser.add_argument("--manifest", required=True, type=Path, help="data/manifests/<dataset>.json")
    parser.add_argument("--split", default="test", help="manifest split to evaluate (default: test)")
    parser.add_argument("--out", required=True, type=Path,
                        help="metrics JSON, numbers only (DVC metrics), e.g. data/metrics/<name>.json")
    parser.add_argument("--record", required=True, type=Path,
                        help="the evaluation's full record (protocol, checkpoint, data, run ids, every figure), "
                             "e.g. data/metrics/<name>.record.json; the report reads it")
    parser.add_argument("--per-image", required=True, type=Path, help="per-image CSV, e.g. data/metrics/<name>.csv")
    parser.add_argument("--images", required=True, type=Path,
                        help="folder for the side-by-side PNGs, e.g. data/evaluate/<name>")
    parser.add_argument("--protocol", default=None, help="protocol name (default: the one the checkpoint records)")
    parser.add_argument("--protocols", default=Path("config/protocols.yaml"), type=Path, help="protocol file")
    parser.add_argument("--baselines", action="store_true", help="also score the protocol's baseline rows")
    parser.add_argument("--max-images", type=int, default=None, help="only the first N images of the split")
    parser.add_argument("--side-by-side", type=int, default=3, help="how many side-by-side PNGs (default 3)")
    parser.add_argument("--data-root", type=Path, default=None, help="dataset root if moved since indexing")
    parser.add_argument("--weights-dir", type=Path, default=Path("data/weights"), help="LPIPS weight files")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu: deterministic)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def run(args: argparse.Namespace) -> int:
    import torch

    from pipeline_src.data.samples import load_manifest, manifest_sha256, samples_of
    from pipeline_src.evaluate.protocols import ProtocolError, load_protocols
    from pipeline_src.evaluate.tiling import plan_tiles
    from pipeline_src.fileio import discard_outputs, sha256_file
    from pipeline_src.model_io import load_model

    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images {args.max_images}; must be >= 1")
    discard_outputs([args.record, args.per_image, args.out])  # never an old result beside a new run's
    book = load_protocols(args.protocols)
    model, record = load_model(args.checkpoint)
    name = args.protocol or record.get("protocol")
    if not name:
        raise ProtocolError(f"{args.checkpoint}: the checkpoint records no protocol; pass --protocol "
                            f"(one of {', '.join(book.names())})")
    protocol = book.get(name)
    if record["task"] != protocol.task:
        raise ProtocolError(f"{args.protocols}: protocol {name!r} is for task {protocol.task!r}, but "
                            f"{args.checkpoint} holds a {record['task']!r} model")
    if args.split not in protocol.splits:
        raise ProtocolError(f"{args.protocols}: protocol {name!r} is defined on splits {list(protocol.splits)}, "
                            f"not {args.split!r}")
    manifest = load_manifest(args.manifest)
    conversion = protocol.conversion_from(manifest["bit_depth"])
    samples = [s for _, s in samples_of(manifest, args.split)][:args.max_images]
    _check_dataset(manifest, args, record, protocol, samples)
    baselines = tuple(protocol.baselines) if args.baselines else ()
    if baselines and "c" not in manifest["views"]:
        raise DataError(f"{args.manifest}: baselines need the blurry view 'c'; the manifest has {manifest['views']}")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    model.to(device)
    t = protocol.tiling
    plan = plan_tiles(t.tile, t.overlap, t.margin, t.batch, record["size_multiple"])

    meta = {
        "name": args.out.stem, "paper": record.get("paper"), "recipe": record.get("recipe"),
        "model_name": record["model"]["name"], "dataset": manifest["dataset"], "split": args.split,
        "task": protocol.task, "preset": (record.get("config") or {}).get("preset"),
        "protocol_name": protocol.name, "source_bit_depth": manifest["bit_depth"], "bit_depth_conversion": conversion,
        "checkpoint": {"path": str(args.checkpoint), "sha256": sha256_file(args.checkpoint),
                       "phase": record.get("phase"), "step": record.get("step")},
        "manifest": {"path": str(args.manifest), "sha256": manifest_sha256(args.manifest)},
        "training_run_id": record.get("mlflow_run_id"),
        # where the weights came from: trained here, or imported (the authors' release, with file and sha256)
        "weights_source": (record.get("provenance") or {}).get("source", "trained"),
        "provenance": record.get("provenance"),
        # why this preset's budget cannot show the paper's quality (the recipe's budget_notes), for the report
        "budget_note": (record.get("config") or {}).get("budget_note"),
    }
    tracker = _start_tracking(args, meta)
    try:
        result = _evaluate(model, record, protocol, plan, manifest, samples, baselines, book.baseline_settings,
                           args, device)
        doc = _metrics_document(meta, result, protocol, plan, args, tracker.run_id)
        _write_outputs(args, doc, result)
        _log_run(tracker, doc, result, args)
    except BaseException:
        tracker.end("KILLED" if isinstance(sys.exc_info()[1], KeyboardInterrupt) else "FAILED")
        raise
    tracker.end("FINISHED")
    shown = ", ".join(f"{k} {_fmt(v)}" for k, v in doc["model"].items())
    print(f"{args.out}: {meta['recipe'] or meta['model_name']} on {meta['dataset']} {args.split} "
          f"({result['count']} images, {protocol.name}): {shown}")
    return 0


def _check_dataset(manifest: dict, args, record: dict, protocol, samples: list) -> None:
    if not samples:
        raise DataError(f"{args.manifest}: no {args.split!r} samples (splits: {manifest['splits']})")
    missing = [v for v in record["input_views"] if v not in manifest["views"]]
    if missing:
        raise DataError(f"{args.manifest}: the model reads views {record['input_views']}, the dataset lacks "
                        f"{missing} (it has {manifest['views']})")
    need = "has_target" if protocol.task == "restoration" else "has_mask"
    if not manifest[need]:
        raise DataError(f"{args.manifest}: a {protocol.task} evaluation needs a "
                        f"{'target' if need == 'has_target' else 'mask'} per sample; this dataset has none")


# ------------------------------------------------------------------------------------------- scoring
def _crop(a, border: int):
    return a if border == 0 else a[border:-border, border:-border, ...]


@dataclasses.dataclass(frozen=True)
class Scoring:
    new_accumulator: Callable[[], Any]        # .update(image_id, pred, target) -> row; .rows
    target: Callable[[dict], Any]             # sample arrays -> what predictions are scored against
    summary: Callable[[Any], dict]            # accumulator -> {metric: dataset value}
    unavailable: dict[str, str]               # metric -> why it is None


def _restoration_scoring(protocol, weights_dir: Path) -> Scoring:
    from pipeline_src.evaluate import metrics as M

    fns = {
        "psnr": lambda p, t: M.psnr(p, t, data_range=protocol.data_range),
        "ssim": lambda p, t: M.ssim(p, t, data_range=protocol.data_range),
        "mae": M.mae,
        "ms_ssim": lambda p, t: M.ms_ssim(p, t, data_range=protocol.data_range),
    }
    unavailable = {}
    if "lpips" in protocol.metrics:
        from pipeline_src.evaluate.lpips import DEFAULT_ALEXNET_PATH, DEFAULT_LIN_PATH, LpipsMetric

        paths = (weights_dir / DEFAULT_ALEXNET_PATH.name, weights_dir / DEFAULT_LIN_PATH.name)
        fns["lpips"] = LpipsMetric(*paths)
        if not fns["lpips"].available:
            unavailable["lpips"] = f"weights not found: {paths[0]}, {paths[1]}"
    chosen = {m: fns[m] for m in protocol.metrics}
    return Scoring(new_accumulator=lambda: M.MetricAccumulator(chosen),
                   target=lambda arrays: protocol.to_float(protocol.read(arrays["target"])),
                   summary=lambda acc: acc.means(), unavailable=unavailable)


def _detection_scoring(protocol, weights_dir: Path) -> Scoring:
    from pipeline_src.evaluate.detection_metrics import DetectionAccumulator

    def summary(acc):
        results = acc.results()
        return {m: results[m] for m in protocol.metrics}

    # masks are in-focus = 1 (load_sample normalises the source polarity)
    return Scoring(new_accumulator=DetectionAccumulator, target=lambda arrays: arrays["mask"].astype(bool),
                   summary=summary, unavailable={})


SCORING = {"restoration": _restoration_scoring, "detection": _detection_scoring}


def _fit_on_val(baselines, manifest, protocol, settings, args) -> dict:
    """Parameters of the baselines that learn a little (the sharpness detector's threshold), from the val split."""
    from pipeline_src.data.samples import load_sample, samples_of
    from pipeline_src.evaluate.baselines import FITTED_ON_VAL
    from pipeline_src.evaluate.sharpness import fit, sharpness_score

    wanted = [b for b in baselines if b in FITTED_ON_VAL]
    if not wanted:
        return {}
    val = [s for _, s in samples_of(manifest, "val")]
    if not val:
        raise DataError(f"{args.manifest}: the {', '.join(wanted)} baseline chooses its threshold on the val split, "
                        "and this dataset has none; index it with a val split or evaluate without --baselines")
    s = settings["sharpness"]
    scores, masks = [], []
    for sample in val:
        arrays = load_sample(manifest, sample, root=args.data_root)
        scores.append(sharpness_score(protocol.to_float(protocol.read(arrays["c"])), tuple(s["sigmas"]), s["window"]))
        masks.append(arrays["mask"].astype(bool))
    return {"sharpness": fit(scores, masks)}


def _evaluate(model, record, protocol, plan, manifest, samples, baselines, settings, args, device) -> dict:
    import numpy as np
    import torch

    from pipeline_src.data.samples import load_sample
    from pipeline_src.evaluate.baselines import run_baseline
    from pipeline_src.evaluate.tiling import tiled_forward

    scoring = SCORING[protocol.task](protocol, args.weights_dir)
    fitted = _fit_on_val(baselines, manifest, protocol, settings, args)
    settings = {**settings, **{f"{b}_fit": f for b, f in fitted.items()}}
    accs = {"model": scoring.new_accumulator(), **{b: scoring.new_accumulator() for b in baselines}}
    radii: dict[str, list] = {b: [] for b in baselines}
    radius_source: dict[str, set] = {b: set() for b in baselines}
    panels = []
    border = protocol.border_crop
    for sample in samples:
        arrays = load_sample(manifest, sample, root=args.data_root)
        views = {v: protocol.to_float(protocol.read(arrays[v])) for v in manifest["views"]}
        x = torch.from_numpy(np.concatenate([views[v] for v in record["input_views"]], axis=2))
        raw = tiled_forward(model, x.permute(2, 0, 1)[None].to(device), plan)[0].permute(1, 2, 0).cpu().numpy()
        pred = protocol.finish(raw)
        pred = pred[..., 0] if protocol.task == "detection" else pred
        target = scoring.target(arrays)
        if border and min(target.shape[:2]) <= 2 * border:
            raise DataError(f"sample {sample['id']!r}: {target.shape[1]}x{target.shape[0]} is too small for "
                            f"protocol {protocol.name!r}'s border crop of {border}")
        accs["model"].update(sample["id"], _crop(pred, border), _crop(target, border))
        for b in baselines:
            out = run_baseline(b, views["c"], arrays.get("defocus"), settings)
            accs[b].update(sample["id"], _crop(protocol.finish(out.image), border), _crop(target, border))
            radii[b].append(out.radius_px)
            radius_source[b].add(out.radius_source)
        if len(panels) < args.side_by_side:
            shown_input = views["c"] if "c" in views else views[record["input_views"][0]]
            panels.append((sample["id"], _side_by_side(shown_input, pred, target)))
    return {"count": len(samples), "summary": {k: scoring.summary(a) for k, a in accs.items()},
            "fitted": {b: dataclasses.asdict(f) for b, f in fitted.items()},
            "rows": {k: a.rows for k, a in accs.items()}, "radii": radii,
            "radius_source": {b: sorted(s for s in v if s) for b, v in radius_source.items()},
            "panels": panels, "unavailable": scoring.unavailable}


# ------------------------------------------------------------------------------------------- outputs
def _number(v):
    """JSON-safe, rounded: non-finite values (PSNR of identical images) become null."""
    if v is None or not math.isfinite(v):
        return None
    return round(float(v), DECIMALS)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _metrics_document(meta: dict, result: dict, protocol, plan, args, eval_run_id) -> dict:
    summary = result["summary"]
    baselines = {}
    for b in summary:
        if b == "model":
            continue
        row = {k: _number(v) for k, v in summary[b].items()}
        if b in result["fitted"]:  # what it learned, and where: the report says so
            row["fitted_on_val"] = result["fitted"][b]
        radii = [r for r in result["radii"][b] if r is not None]
        if radii:
            row["radius_px_median"] = _number(statistics.median(radii))
            row["radius_source"] = ", ".join(result["radius_source"][b])
        baselines[b] = row
    return {
        "model": {k: _number(v) for k, v in summary["model"].items()},
        "baselines": baselines,
        "images": result["count"],
        **meta,
        "unavailable": result["unavailable"],
        # the protocol's facts (its prose stays in config/protocols.yaml and the MLflow params)
        "protocol": {k: v for k, v in protocol.record().items() if k not in ("description", "notes")},
        "tiling": dataclasses.asdict(plan),
        "metrics_json": str(args.out),
        "per_image_csv": str(args.per_image),
        "side_by_side_dir": str(args.images),
        "eval_run_id": eval_run_id,
    }


def _csv_text(result: dict, protocol_name: str) -> str:
    """One row per image: the model's metrics, then each baseline's (prefixed), and the protocol's name."""
    import csv
    import io

    rows = result["rows"]
    metric_names = [k for k in rows["model"][0] if k != "image"]
    # index: a numeric x for `dvc plots`; score: the protocol's primary metric (PSNR, or max F), one y for all tasks
    primary = "psnr" if "psnr" in metric_names else "max_f"
    header = ["index", "image", "protocol", "score", *metric_names]
    for b in rows:
        if b == "model":
            continue
        header += [f"{b}_{m}" for m in metric_names]
        if any(r is not None for r in result["radii"][b]):
            header.append(f"{b}_radius_px")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)

    def cell(v):
        return "" if v is None else (repr(round(v, DECIMALS)) if math.isfinite(v) else str(v))

    for i, model_row in enumerate(rows["model"]):
        line = [i, model_row["image"], protocol_name, cell(model_row[primary]),
                *(cell(model_row[m]) for m in metric_names)]
        for b in rows:
            if b == "model":
                continue
            line += [cell(rows[b][i][m]) for m in metric_names]
            if any(r is not None for r in result["radii"][b]):
                line.append(cell(result["radii"][b][i]))
        writer.writerow(line)
    return buf.getvalue()


def flat_metrics(doc: dict) -> dict[str, float]:
    """The numbers DVC compares: the model's metrics, each baseline's (`<baseline>.<metric>`), the gain over the
    blurry input where there is one, and the image count. Unavailable metrics are left out, never 0."""
    metric_names = set(doc["model"])
    out = {k: v for k, v in doc["model"].items() if v is not None}
    for baseline, row in doc["baselines"].items():
        out.update({f"{baseline}.{k}": v for k, v in row.items() if k in metric_names and v is not None})
    if out.get("psnr") is not None and out.get("input.psnr") is not None:
        out["gain_db"] = _number(out["psnr"] - out["input.psnr"])
    out["images"] = doc["images"]
    return out


def _write_outputs(args, doc: dict, result: dict) -> None:
    from pipeline_src.fileio import atomic_dir, atomic_write_json, output_set, write_image

    with atomic_dir(args.images) as tmp:
        for image_id, panel in result["panels"]:
            write_image(tmp / f"{_safe_name(image_id)}.png", panel)
        # the PNGs cannot carry it themselves: what made them, beside them
        atomic_write_json(tmp / "protocol.json", {"protocol": doc["protocol"], "checkpoint": doc["checkpoint"],
                                                  "panels": "input | output | target | "
                                                            f"|output - target| x {ERROR_MAP_GAIN:g}"})
    # the metrics file last: its presence means the record and the per-image rows are this run's too
    with output_set([args.record, args.per_image, args.out]) as tmp:
        tmp[args.record].write_text(json.dumps(doc, indent=2) + "\n")
        tmp[args.per_image].write_text(_csv_text(result, doc["protocol_name"]))
        tmp[args.out].write_text(json.dumps(flat_metrics(doc), indent=2) + "\n")


def _safe_name(image_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", image_id)


def _to_u8(img):
    import numpy as np

    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _side_by_side(blurry, pred, target):
    """input | output | target | error map, uint8 RGB, each panel at most PANEL_MAX_WIDTH wide, labelled."""
    import cv2
    import numpy as np

    def rgb(a):
        a = _to_u8(a)
        return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a

    target_f = target.astype(np.float32)
    diff = np.abs(pred.astype(np.float32) - target_f)
    err = _to_u8((diff.mean(axis=2) if diff.ndim == 3 else diff) * ERROR_MAP_GAIN)
    err_rgb = cv2.applyColorMap(err, cv2.COLORMAP_INFERNO)[:, :, ::-1]
    panels = [("input", rgb(blurry)), ("output", rgb(pred)), ("target", rgb(target_f)),
              (f"|error| x{ERROR_MAP_GAIN:g}", err_rgb)]
    h, w = panels[0][1].shape[:2]
    scale = min(1.0, PANEL_MAX_WIDTH / w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = []
    for label, p in panels:
        p = cv2.resize(p, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else p
        strip = np.full((18, size[0], 3), 255, np.uint8)
        cv2.putText(strip, label, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        out.append(np.concatenate([strip, p], axis=0))
    gap = np.full((out[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([x for p in out for x in (p, gap)][:-1], axis=1)


# ------------------------------------------------------------------------------------------- tracking
def _start_tracking(args, meta: dict):
    from pipeline_src.tracking import config_tracking_flag, start_run

    flag = config_tracking_flag()
    tags = {"pipeline.role": "evaluate", "protocol": meta["protocol_name"], "paper": str(meta["paper"]),
            "recipe": str(meta["recipe"]), "dataset": meta["dataset"], "split": meta["split"],
            "preset": str(meta["preset"]), "training_run_id": str(meta["training_run_id"]),
            "checkpoint.sha256": meta["checkpoint"]["sha256"], "manifest.sha256": meta["manifest"]["sha256"]}
    return start_run(f"evaluate {meta['name']}", tags=tags, enabled=flag and not args.no_tracking)


def _log_run(tracker, doc: dict, result: dict, args) -> None:
    if tracker.run_id is None:
        return
    tracker.log_params({"protocol": doc["protocol"], "tiling": doc["tiling"], "split": doc["split"],
                        "images": doc["images"], "bit_depth_conversion": doc["bit_depth_conversion"],
                        "checkpoint": doc["checkpoint"]["path"], "manifest": doc["manifest"]["path"]})
    metrics = {k: v for k, v in doc["model"].items() if v is not None}
    for b, row in doc["baselines"].items():
        metrics.update({f"{b}/{k}": v for k, v in row.items() if isinstance(v, float)})
    tracker.log_metrics(metrics, step=int(doc["checkpoint"]["step"] or 0))
    for image_id, panel in result["panels"]:
        tracker.log_image(panel, f"side_by_side/{_safe_name(image_id)}.png")
    tracker.log_artifact(args.record)
    tracker.log_artifact(args.per_image)
