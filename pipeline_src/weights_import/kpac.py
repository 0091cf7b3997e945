"""The KPAC authors' released weights: which array of their npz is which parameter of pipeline_src.models.kpac.

Facts from the authors' repository (HyeongseokSon1/KPAC at 8603ec3, the commit the registry's URLs pin):
- `pretrained/single_2level.npz` is `Defocus_Deblur_Net6_ms`, `single_3level.npz` is `Defocus_Deblur_Net6_ds`,
  `dual.npz` is `Defocus_Deblur_Net6_ds_dual`, all built with ks=5, bs=2 (`main_eval_*.py`), i.e. our `kpac`
  (levels 2 / 3) and `kpac_dual` with 2 blocks, 48 channels, dilations 1..5.
- The arrays are tensorlayer's `net.all_params`, in the order the layers are created, each merge layer
  dropping repeats (`list_remove_repeat`): encoder convs, then per KPAC block the shared atrous filter (its
  five reuses count once), the scale-attention convs, the shape-attention convs and the fusion conv, then
  cm_1, cm_2 and the decoder. Names follow tensorlayer: `Conv2d` -> `W_conv2d`, `b_conv2d`;
  `AtrousConv2dLayer` -> `filter`, `b`; `DeConv2d` -> `W_deconv2d`, `b_deconv2d`; all under `deblur_net/`.
- Layouts: conv kernels are HWIO (-> PyTorch OIHW); transposed-conv kernels are H x W x out x in (->
  ConvTranspose2d's in x out x H x W); biases are vectors. Both kernel moves are the permutation (3, 2, 0, 1).
- The graph pads its stride-2 convs as TF 'SAME' (0 before, 1 after on even sizes): the imported model sets
  `stride2_padding: tf_same`; with `symmetric` the same weights miss the authors' output by more than 1e-3
  (tests/weights_import/test_kpac_import.py).
- Protocols (what the authors' own evaluation does): single-image models read 8-bit sources (`dpdd_single_8bit`);
  `main_eval_dual.py` reads C, L and R as 8-bit images too (`scipy.misc.imread(mode='RGB')`), hence
  `dpdd_dual_8bit` for the dual model, not the 16-bit protocol DPDNet's dual-pixel numbers use.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from pipeline_src.errors import CheckpointError
from pipeline_src.weights_import import IMPORTS, ReleasedWeights

REPOSITORY = "https://github.com/HyeongseokSon1/KPAC"
COMMIT = "8603ec3ac56b5a416be6b996165b552aff1c4b0f"  # 2021-08-27, the last one; single_3level.npz changed in it
SCOPE = "deblur_net"
BLOCKS = 2  # bs=2 in every main_eval_*.py
CONVERSION = ("tensorlayer all_params order -> state dict; conv HWIO and deconv HWOI kernels permuted (3, 2, 0, 1) "
              "to OIHW / IOHW; biases as they are; float32; stride2_padding tf_same")


@dataclass(frozen=True)
class Param:
    tl_name: str    # tensorlayer's variable name, as the authors' graph has it
    torch_key: str  # the state-dict key in pipeline_src.models.kpac
    kind: str       # key of KIND_TO_TORCH


# TF layout -> PyTorch layout, and the TF shape a PyTorch shape corresponds to
KIND_TO_TORCH = {
    "conv": lambda a: a.transpose(3, 2, 0, 1),    # H W I O -> O I H W
    "deconv": lambda a: a.transpose(3, 2, 0, 1),  # H W out in -> in out H W (ConvTranspose2d)
    "bias": lambda a: a,
}
KIND_TF_SHAPE = {
    "conv": lambda s: (s[2], s[3], s[1], s[0]),
    "deconv": lambda s: (s[2], s[3], s[1], s[0]),
    "bias": lambda s: tuple(s),
}


def _layer(tl_path: str, torch_name: str, kind: str = "conv") -> list[Param]:
    """A layer with a bias: tensorlayer's weight and bias names for its kind."""
    w, b = {"conv": ("W_conv2d", "b_conv2d"), "deconv": ("W_deconv2d", "b_deconv2d"),
            "atrous": ("filter", "b")}[kind]
    tensor_kind = "deconv" if kind == "deconv" else "conv"
    return [Param(f"{SCOPE}/{tl_path}/{w}", f"{torch_name}.weight", tensor_kind),
            Param(f"{SCOPE}/{tl_path}/{b}", f"{torch_name}.bias", "bias")]


def authors_layout(levels: int) -> list[Param]:
    """`net.all_params` of the authors' 2- or 3-level graph (the dual one is the 3-level order), in file order."""
    encoder = ["c0", "c0_2", "c2", "c2_2", "c3", "c3_2"] + (["c4", "c4_2"] if levels == 3 else [])
    params = [p for name in encoder for p in _layer(f"deblur/{name}", name)]
    for i in range(BLOCKS):
        block = f"blocks.{i}"
        params.append(Param(f"{SCOPE}/dc1/{i}/filter", f"{block}.shared_weight", "conv"))  # no bias
        for j in range(4):
            params += _layer(f"sca_dc{j + 1}/{i}", f"{block}.scale_attention.{j}", "atrous")
        params += _layer(f"sca_c2/{i}", f"{block}.scale_attention.4")
        params += _layer(f"sha_c1/{i}", f"{block}.shape_attention.0")
        params += _layer(f"sha_c2/{i}", f"{block}.shape_attention.1")
        params += _layer(f"cf/{i}", f"{block}.fuse")
    params += _layer("deblur/cm_1", "cm_1") + _layer("deblur/cm_2", "cm_2")
    if levels == 3:
        params += _layer("deblur/d0", "d0", "deconv") + _layer("deblur/d0_2", "d0_2")
    params += _layer("deblur/d1", "d1", "deconv") + _layer("deblur/d1_2", "d1_2")
    params += _layer("deblur/d2", "d2", "deconv") + _layer("deblur/d2_2", "d2_2")
    return params


def expected_tf_shapes(layout: list[Param], model) -> list[tuple[int, ...]]:
    """The shape each array must have in the file, derived from the PyTorch model it will load into."""
    state = model.state_dict()
    return [KIND_TF_SHAPE[p.kind](tuple(state[p.torch_key].shape)) for p in layout]


def to_state_dict(arrays: list[np.ndarray], model, path: Path, *, levels: int, name: str) -> dict:
    """Check every array against the layout (count, shape, finite values) and convert it; errors name the array."""
    import torch

    layout = authors_layout(levels)
    shapes = expected_tf_shapes(layout, model)
    state = {}
    for i, (param, shape) in enumerate(zip(layout, shapes)):
        if i >= len(arrays):
            raise CheckpointError(
                f"{path}: has {len(arrays)} arrays, {name} needs {len(layout)}; missing {param.tl_name} (expected "
                f"shape {shape}): the file is truncated or another variant{_variant_hint(arrays, name)}")
        a = arrays[i]
        if tuple(a.shape) != shape:
            raise CheckpointError(
                f"{path}: array {i} should be {param.tl_name} with shape {shape}, found {tuple(a.shape)}: not the "
                f"{name} file{_variant_hint(arrays, name)}")
        if not np.isfinite(a).all():
            raise CheckpointError(f"{path}: {param.tl_name} holds NaN or infinite values; the file is damaged: "
                                  "fetch it again")
        state[param.torch_key] = torch.from_numpy(np.ascontiguousarray(KIND_TO_TORCH[param.kind](a),
                                                                       dtype=np.float32))
    if len(arrays) > len(layout):
        extra = arrays[len(layout)]
        raise CheckpointError(
            f"{path}: has {len(arrays)} arrays, {name} has {len(layout)} (the last is {layout[-1].tl_name}); array "
            f"{len(layout)} (shape {tuple(extra.shape)}) belongs to a larger network{_variant_hint(arrays, name)}")
    return state


def _variant_hint(arrays: list[np.ndarray], asked: str) -> str:
    """'; it matches kpac_xxx' when another KPAC release has exactly these shapes."""
    from pipeline_src.models import build_model

    found = [np.shape(a) for a in arrays]
    for other in RELEASES:
        if other.name == asked:
            continue
        model = build_model(other.model_name, **other.model_args)
        if found == expected_tf_shapes(authors_layout(other.model_args["levels"]), model):
            return f"; its arrays match {other.name}: import it under that name"
    return ""


def _release(name: str, description: str, file: str, blob: str, model_name: str, levels: int, recipe: str,
             protocol: str) -> ReleasedWeights:
    args = {"levels": levels, "num_blocks": BLOCKS, "channels": 48, "kernel_size": 5, "dilations": [1, 2, 3, 4, 5],
            "init": "authors", "stride2_padding": "tf_same"}
    return ReleasedWeights(
        name=name, description=description, paper="kpac", recipe=recipe, protocol=protocol, trained_on="dpdd",
        model_name=model_name, model_args=args, repository=REPOSITORY, repository_path=f"pretrained/{file}",
        commit=COMMIT, git_blob=blob, to_state_dict=partial(to_state_dict, levels=levels, name=name),
        conversion=CONVERSION,
    )


# git object ids from the repository's tree at COMMIT (`git ls-tree 8603ec3 pretrained/`)
RELEASES = (
    _release("kpac_single_2level", "KPAC 2-level, single image (Defocus_Deblur_Net6_ms)", "single_2level.npz",
             "d9862f0de90a4d5969c80f1cdef0d983e59ee335", "kpac", 2, "kpac", "dpdd_single_8bit"),
    _release("kpac_single_3level", "KPAC 3-level, single image (Defocus_Deblur_Net6_ds)", "single_3level.npz",
             "63a42534cff9483fa052de4cbd626a2b165cd425", "kpac", 3, "kpac", "dpdd_single_8bit"),
    _release("kpac_dual", "KPAC dual-pixel, 3-level on L and R (Defocus_Deblur_Net6_ds_dual)", "dual.npz",
             "91cd33877f875af745853e1601066fb3833a79ad", "kpac_dual", 3, "kpac_dual", "dpdd_dual_8bit"),
)
for _r in RELEASES:
    IMPORTS.register(_r.name)(lambda r=_r: r)
