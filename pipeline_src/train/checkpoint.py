"""Training state: everything a killed run needs to continue exactly where it stopped.

`last.pt` (rolling, every `ckpt_every` steps) holds model, optimiser, AMP scaler, the step, the data position
(epoch and batches consumed in it), the run's identity (what must match to resume), RNG states (python, numpy,
torch CPU and CUDA) and the MLflow run id.
Written atomically (temp file + rename), loaded with `weights_only=True`. RNG states are stored as tensors or
plain lists so that the safe loader accepts them.
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from pipeline_src.errors import CheckpointError
from pipeline_src.fileio import atomic_path

STATE_FORMAT = 2  # 2: the run's identity (runner.resume_identity) instead of a config hash


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]),
                   "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: str | os.PathLike, *, model, optimizer, scaler, step: int, epoch: int,
                        batch_in_epoch: int, identity: dict, mlflow_run_id: str | None,
                        extra: dict | None = None) -> None:
    state = {
        "format": STATE_FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": step,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "rng": rng_state(),
        "identity": identity,
        "mlflow_run_id": mlflow_run_id,
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    from pipeline_src.model_io import torch_load

    state = torch_load(path, "training state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a training state file of this version (format {STATE_FORMAT})")
    return state
