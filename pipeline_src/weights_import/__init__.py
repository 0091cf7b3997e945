"""Weights released by a paper's authors, imported into the pipeline's model file (`final.pt`).

`python -m pipeline_src import-weights NAME --file FILE --out DIR/final.pt` (weights_import/cli.py) reads a
released file, converts it into a registered model's state dict, and writes a `final.pt` that `evaluate`,
`export-onnx`, `quantize`, `bundle` and `bench-latency` take like a trained one, with where it came from.

Each importable release is a `ReleasedWeights` registered under its NAME in `IMPORTS` by the module that
knows its layout (kpac.py: the KPAC authors' tensorlayer npz files; adnet.py: the ADNet authors' TensorFlow
checkpoint). This module imports nothing heavy, so the CLI parser can list the names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline_src.registry import Registry

IMPORTS = Registry(
    "weight import",
    locations={
        "kpac_single_2level": "pipeline_src.weights_import.kpac",
        "kpac_single_3level": "pipeline_src.weights_import.kpac",
        "kpac_dual": "pipeline_src.weights_import.kpac",
        "adnet_gopro": "pipeline_src.weights_import.adnet",
        "adnet_dpdd": "pipeline_src.weights_import.adnet",
    },
)

AUTHORS_RELEASE = "authors' release"  # the provenance every imported file records


@dataclass(frozen=True)
class ReleasedWeights:
    """One released weight file and the pipeline model that reproduces the authors' network with it."""

    name: str                       # the import NAME, also the weight entry in config/datasets.yaml
    description: str
    paper: str                      # key in config/published.yaml
    recipe: str                     # the recipe whose published figures these weights produced
    protocol: str                   # the evaluation protocol the authors' own evaluation follows
    trained_on: str                 # dataset the authors trained on (registry name)
    model_name: str                 # registered model
    model_args: dict[str, Any]      # every constructor argument, so load_model() rebuilds exactly this network
    repository: str                 # the authors' repository
    repository_path: str            # the file in it
    commit: str                     # the commit the registry's URLs pin
    git_blob: str                   # git's object id of the file at that commit (sha1 of "blob <size>\0" + bytes)
    # (what the format's reader returns, model built from model_name/model_args, file path) -> state dict
    to_state_dict: Callable[..., dict] = field(repr=False, compare=False)
    conversion: str = ""            # how the arrays map onto the model (recorded in the provenance)
    # the file's format: "tensorlayer_npz" (tensorlayer_npz.py, a list of arrays) or "tf_checkpoint"
    # (tf_checkpoint.py: --file is the .index, its data shard beside it)
    format: str = "tensorlayer_npz"
    # (repository path, git blob) of a checkpoint's data shard, checked like the file itself
    data_file: tuple[str, str] | None = None
    # (model, input) -> the output the authors' graph returns, for a model whose forward clamps it (ADNet)
    raw_output: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
