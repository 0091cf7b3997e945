"""The trained-model file every later stage reads: `final.pt` of a training phase.

A plain dict of tensors, strings and numbers, so it loads with `torch.load(weights_only=True)` (no pickle code
runs) and other tools can read it:
    {"format": 1, "model": {"name": str, "args": dict}, "state_dict": {...}, "input_views": [str],
     "size_multiple": int, "task": "restoration" | "detection", "paper": str, "dataset": str, "phase": int,
     "step": int, "config": dict (resolved training config), "mlflow_run_id": str | None}
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

FORMAT = 1


def model_record(model, name: str, args: dict) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": {"name": name, "args": dict(args)},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "input_views": list(model.input_views),
        "size_multiple": int(model.size_multiple),
        "task": str(getattr(model, "task", "restoration")),
    }


def save_model_file(path: str | os.PathLike, record: dict[str, Any]) -> None:
    import torch

    from pipeline_src.fileio import atomic_path

    with atomic_path(path) as tmp:
        torch.save(record, tmp)


def load_model_file(path: str | os.PathLike) -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file (expected a training phase's final.pt)")
    record = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(record, dict) or record.get("format") != FORMAT or "state_dict" not in record:
        raise ValueError(f"{path}: not a pipeline model file (format {FORMAT} with model/state_dict keys)")
    return record


def load_model(path: str | os.PathLike):
    """Build the registered model named in the file and load its weights; returns (model.eval(), record)."""
    from pipeline_src.models import build_model

    record = load_model_file(path)
    model = build_model(record["model"]["name"], **record["model"]["args"])
    missing, unexpected = model.load_state_dict(record["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit model {record['model']['name']!r}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), record
