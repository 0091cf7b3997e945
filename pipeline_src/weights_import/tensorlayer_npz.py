"""Read a tensorlayer `save_npz` file safely: a list of float arrays, and nothing a pickle could smuggle in.

tensorlayer 1.x (bundled with the KPAC authors' code) saves a network with `np.savez(name, params=[...])`: one
member, `params.npy`, holding an object array of the variables in `net.all_params` order, which numpy can
only store as a pickle (`np.load(..., allow_pickle=True)` would run any code the pickle names). Here the
pickle is unpickled by an unpickler that resolves exactly the three names a pickled numpy array needs
(`_reconstruct`, `ndarray`, `dtype`) and refuses every other one before anything runs; the result must then
be a 1-D object array whose every item is a float ndarray.

The authors' files were written under Python 2 (their README: Python 2.7, TensorFlow 1.10), whose pickles
hold array bytes as `str`: they are read with `encoding="latin1"`, numpy's documented way to load them.
Every fault is a CheckpointError naming the file and what to do.
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np

from pipeline_src.errors import CheckpointError

MEMBER = "params.npy"  # tl.files.save_npz: np.savez(name, params=...)


def _pickled_array_names() -> dict[tuple[str, str], object]:
    """The only globals a pickled ndarray refers to, under the module names old and new numpy write."""
    reconstruct = np.empty(0).__reduce__()[0]  # numpy's own _reconstruct, wherever this numpy keeps it
    names = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        names[(module, "_reconstruct")] = reconstruct
    return names


class _RefusedName(pickle.UnpicklingError):
    """The pickle names something other than what a numpy array needs."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    ALLOWED = _pickled_array_names()

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedName(f"refers to {module}.{name}") from None


def read_tensorlayer_npz(path: str | os.PathLike) -> list[np.ndarray]:
    """The arrays of a tensorlayer npz in file order (float, as stored)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weight file; fetch it (`python -m pipeline_src fetch NAME`) or "
                              "pass the path of the authors' npz with --file")
    raw = _read_member(path)
    header = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(header)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, _, dtype = read_header(header)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: {MEMBER} is not a readable .npy array ({exc}); the file is damaged: "
                              "fetch it again") from None
    if dtype != np.dtype(object) or len(shape) != 1:
        raise CheckpointError(f"{path}: {MEMBER} is a {dtype} array of shape {shape}; a tensorlayer save_npz "
                              "file holds a 1-D object array of weight arrays: this is not one")
    try:
        params = _ArraysOnlyUnpickler(header, encoding="latin1").load()
    except _RefusedName as exc:
        raise CheckpointError(f"{path}: the pickle in {MEMBER} {exc}; only numpy arrays are accepted, so it was "
                              "refused unread: use the authors' released file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as exc:
        raise CheckpointError(f"{path}: the pickle in {MEMBER} is damaged or truncated ({type(exc).__name__}: "
                              f"{exc}); fetch the file again") from None
    return _float_arrays(params, path)


def _read_member(path: Path) -> bytes:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if MEMBER not in names:
                raise CheckpointError(f"{path}: holds {names}, not {MEMBER}; a tensorlayer save_npz file has one "
                                      f"array named 'params': this is not the authors' weight file")
            return z.read(MEMBER)  # checks the CRC: a damaged member fails here
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable npz (zip) file ({exc}); it is truncated or not the "
                              "authors' release: fetch it again") from None


def _float_arrays(params: object, path: Path) -> list[np.ndarray]:
    if not isinstance(params, np.ndarray) or params.dtype != object or params.ndim != 1:
        got = f"a {params.dtype} array" if isinstance(params, np.ndarray) else f"a {type(params).__name__}"
        raise CheckpointError(f"{path}: {MEMBER} unpickles to {got}; expected a 1-D object array of float arrays")
    arrays = []
    for i, item in enumerate(params):
        if not isinstance(item, np.ndarray) or item.dtype.kind != "f":
            got = f"a {item.dtype} array" if isinstance(item, np.ndarray) else f"a {type(item).__name__}"
            raise CheckpointError(f"{path}: {MEMBER} item {i} is {got}; a weight file holds float arrays only")
        arrays.append(item)
    return arrays
