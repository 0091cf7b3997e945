"""The trained-model file every later stage reads: `final.pt` of a training phase.

A plain dict of tensors, strings and numbers, so it loads with `torch.load(weights_only=True)` (no pickle code
runs) and other tools can read it:
    {"format": 1, "model": {"name": str, "args": dict}, "state_dict": {...}, "input_views": [str],
     "size_multiple": int, "task": "restoration" | "detection", "paper": str, "dataset": str, "phase": int,
     "step": int, "config": dict (resolved training config), "mlflow_run_id": str | None}
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline_src.errors import CheckpointError

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


def torch_load(path: str | os.PathLike, what: str) -> Any:
    """torch.load(weights_only=True) of a file a stage wrote; a truncated or foreign file is a CheckpointError."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable {what}, truncated or not a PyTorch file ({reason[:160]}); "
                              "delete it and rerun the stage that writes it") from exc


def load_model_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file (expected a training phase's final.pt)")
    record = torch_load(path, "model file")
    if not isinstance(record, dict) or record.get("format") != FORMAT or "state_dict" not in record:
        raise CheckpointError(f"{path}: not a pipeline model file (format {FORMAT} with model/state_dict keys)")
    return record


def load_weights(model, state_dict: dict, path: str | os.PathLike, name: str) -> None:
    """Load `state_dict` into `model`, refusing with the first differing key and shape: a file of another model
    or variant (kpac_dual weights in a kpac record, say) is named as such, not as torch's size mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit model {name!r}: missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}; the file holds another model")
    for key, tensor in own.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path}: {key} has shape {tuple(state_dict[key].shape)}, model {name!r} needs "
                                  f"{tuple(tensor.shape)}; the file holds another variant of the model")
    model.load_state_dict(state_dict)


# The torch.nn.init functions through which PyTorch's layers (reset_parameters) and our models draw initial weights.
INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                  "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")


@contextmanager
def initial_weights_not_drawn():
    """Build modules without drawing initial weights, for a model whose every weight is loaded right after
    (load_weights refuses a file that lacks one). Drawing ATTSF's 90.8 M took 4 s of each export and evaluation, to
    be overwritten; it also consumed random numbers that nothing after a load should depend on. Not thread-safe
    (it swaps torch.nn.init's functions for the duration); the stage commands build their models in one thread."""
    from torch import nn

    saved = {name: getattr(nn.init, name) for name in INIT_FUNCTIONS}

    def untouched(tensor, *args, **kwargs):
        return tensor

    try:
        for name in saved:
            setattr(nn.init, name, untouched)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def load_model(path: str | os.PathLike):
    """Build the registered model named in the file and load its weights; returns (model.eval(), record)."""
    from pipeline_src.models import build_model

    record = load_model_file(path)
    name, args = record["model"]["name"], record["model"]["args"]
    try:
        with initial_weights_not_drawn():
            model = build_model(name, **args)
    except TypeError as exc:
        raise CheckpointError(f"{path}: model {name!r} cannot be built with the file's arguments {args} ({exc}); "
                              "the file comes from another version of the code") from exc
    load_weights(model, record["state_dict"], path, name)
    return model.eval(), record
