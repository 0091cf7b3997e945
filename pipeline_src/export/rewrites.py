"""Export-only rewrites, kept out of the model code (MMDeploy's habit).

The model contract (pipeline_src/models/__init__.py) already makes every model exportable as it is: one input,
in-graph padding to the size multiple, a tensor out in eval mode. What export adds is done here, around the
model, never inside it:
- the graph returns exactly one tensor: the finest output when a model hands back a coarse-to-fine list;
- parameters are frozen, so the traced graph holds no autograd state and the weights become initializers.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ExportWrapper(nn.Module):
    """`model` in eval mode with a single-tensor output; its forward is what the ONNX graph computes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, (list, tuple)):
            # multi-scale models list their outputs coarse to fine; the last is the model's answer
            out = out[-1]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{type(self.model).__name__}.forward returned {type(out).__name__}; "
                            "export needs a tensor (or a list of tensors whose last item is the output)")
        return out


def prepare_for_export(model: nn.Module) -> nn.Module:
    return ExportWrapper(model)
