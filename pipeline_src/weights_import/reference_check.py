"""Compare an imported model with the authors' own graph on one recorded input (`import-weights --check-against`).

The reference is an npz holding what the authors' graph was fed and what it returned (the format of the KPAC
reference fixtures, made with the authors' model.py under TensorFlow): one array per input view (`c`, and
`l`, `r` for the dual model), N x H x W x 3 float RGB in 0..255, and `output`, N x H x W x 3, the graph's
output, not clipped, in the authors' space: [-1, 1] (KPAC, global residual included) unless an `output_range`
array says otherwise ([0, 1] for ADNet). The model contract works in [0, 1]: the views are divided by 255 and
the output mapped from its range to [0, 1], so the difference is in [0, 1] image units. A model whose forward
clamps to [0, 1] is compared through the release's `raw_output` (the same network before the clamp). A
difference above the tolerance is a CheckpointError: the import is not the authors' network, and nothing is
written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_src.errors import CheckpointError

TOLERANCE = 1e-5  # [0, 1] image units


def check_against_reference(model, path: str | os.PathLike, tolerance: float = TOLERANCE,
                            raw_output=None) -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--check-against {path}: no such reference file")
    try:
        with np.load(path, allow_pickle=False) as ref:  # plain arrays only: nothing is unpickled
            missing = [k for k in (*model.input_views, "output") if k not in ref.files]
            if missing:
                raise CheckpointError(f"--check-against {path}: no array {missing[0]!r}; a reference holds the views "
                                      f"{list(model.input_views)} and `output`")
            views = {v: np.asarray(ref[v], np.float32) for v in model.input_views}
            lo, hi = (np.asarray(ref["output_range"], np.float64).tolist() if "output_range" in ref.files
                      else (-1.0, 1.0))
            expected = ((np.asarray(ref["output"], np.float64) - lo) / (hi - lo)).astype(np.float32)
    except CheckpointError:
        raise
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"--check-against {path}: not a readable npz of plain arrays ({exc})") from None
    shapes = {k: v.shape for k, v in {**views, "output": expected}.items()}
    if len(set(shapes.values())) != 1 or len(expected.shape) != 4 or expected.shape[-1] != 3:
        raise CheckpointError(f"--check-against {path}: arrays must all be N x H x W x 3, found {shapes}")
    x = np.concatenate([views[v] for v in model.input_views], axis=3) / 255.0
    forward = model if raw_output is None else (lambda t: raw_output(model, t))
    with torch.no_grad():
        got = forward(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy().transpose(0, 2, 3, 1)
    diff = float(np.abs(got - expected).max())
    if not diff <= tolerance:
        raise CheckpointError(f"--check-against {path}: the imported model differs from the authors' output by "
                              f"{diff:.3g} (> {tolerance:g} in [0, 1] units); these weights do not reproduce that "
                              "graph: check the NAME and the file")
    return {"file": str(path), "size": f"{expected.shape[2]}x{expected.shape[1]}", "max_abs_diff": diff,
            "tolerance": tolerance, "passed": True}
