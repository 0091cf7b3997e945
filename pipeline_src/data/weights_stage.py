"""Fetch the pretrained weight files the configured recipes use, and record which ones are present.

    python -m pipeline_src weights --config config/config.yaml --out data/weights/status.json

Each name in config/config.yaml `weights:` is fetched like `python -m pipeline_src fetch NAME` (verified by
hash). One that cannot be had (no network, a host down) does not stop the pipeline: the status file records
it as missing with the reason, a loud warning says how to get it, and the training stages read the status
(the perceptual loss then runs on random VGG weights and the MLflow run is tagged so). Put the file in place
and rerun this stage (`snakemake -R weights` / `dvc repro -f weights`) to pick it up.
"""
from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"),
                        help="pipeline config whose `weights:` lists the registry names to fetch")
    parser.add_argument("--out", type=Path, required=True, help="status JSON (one entry per weight)")
    parser.add_argument("--root", type=Path, default=Path("data"), help="data root (weights land in ROOT/weights/)")
    parser.add_argument("--registry", type=Path, default=Path("config/datasets.yaml"))
    parser.add_argument("--retries", type=int, default=1, help="download attempts per URL")


def run(args) -> int:
    from pipeline_src.config import load_yaml
    from pipeline_src.data.fetch import FetchError, Options, fetch_weight
    from pipeline_src.data.registry import load_registry
    from pipeline_src.fileio import atomic_write_json, sha256_file

    names = load_yaml(args.config).get("weights") or []
    registry = load_registry(args.registry)
    entries = [registry.weight(n) for n in names]  # an unknown name is a config error: raise it
    options = Options(root=args.root, registry=args.registry, retries=args.retries, backoff_s=1.0, timeout_s=30.0)
    status = {}
    for entry in entries:
        try:
            path = fetch_weight(entry, options)
            status[entry.name] = {"present": True, "path": str(path), "sha256": sha256_file(path)}
        except (FetchError, OSError) as e:
            status[entry.name] = {"present": False, "path": str(args.root / "weights" / entry.filename),
                                  "reason": str(e).splitlines()[0] if str(e) else type(e).__name__}
            print(f"\n*** WARNING: pretrained weights {entry.name!r} are NOT available: "
                  f"{status[entry.name]['reason']}\n"
                  f"*** Training goes on; losses that need them run on random weights and their MLflow runs are "
                  f"tagged weights.<term>.pretrained=false.\n*** Get them with `python -m pipeline_src fetch "
                  f"{entry.name}` (or put {entry.filename} in {args.root / 'weights'}) and rerun this stage.\n",
                  file=sys.stderr)
    atomic_write_json(args.out, {"weights": status})
    return 0
