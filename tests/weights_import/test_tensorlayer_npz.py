"""The safe reader of tensorlayer npz files: the authors' format in, float arrays out, nothing else accepted."""
from __future__ import annotations

import io
import os
import pickletools
import zipfile

import numpy as np
import pytest

from pipeline_src.errors import CheckpointError
from pipeline_src.weights_import.tensorlayer_npz import read_tensorlayer_npz
from tests.weights_import.helpers import fixture, python2_pickle, write_params


def test_reads_the_authors_format_exactly_as_numpy_does():
    path = fixture("single_2level")
    arrays = read_tensorlayer_npz(path)
    reference = np.load(path, allow_pickle=True)["params"]  # trusted fixture: numpy's own reading as reference
    assert len(arrays) == len(reference) == 58
    assert arrays[0].shape == (5, 5, 3, 48) and arrays[0].dtype == np.float32
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(arrays, reference))


def test_reads_a_python2_pickle_as_the_authors_tensorflow_1_10_setup_wrote_it(tmp_path):
    """Their README: Python 2.7.12. Old numpy pickles array bytes and dtype codes as py2 `str` (protocol 2)."""
    with zipfile.ZipFile(fixture("single_3level")) as z:
        raw = z.read("params.npy")
    header = io.BytesIO(raw)
    np.lib.format.read_magic(header)
    np.lib.format.read_array_header_1_0(header)
    start = header.tell()
    py2 = python2_pickle(raw[start:])
    opcodes = {op.name for op, _, _ in pickletools.genops(py2)}
    assert {"BINSTRING", "SHORT_BINSTRING"} <= opcodes  # array bytes and dtype codes as py2 str, as old numpy
    assert not opcodes & {"BINBYTES", "SHORT_BINBYTES", "BINUNICODE"}
    path = tmp_path / "py2.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("params.npy", raw[:start] + py2)
    got = read_tensorlayer_npz(path)
    expected = read_tensorlayer_npz(fixture("single_3level"))
    assert len(got) == 66 and all(np.array_equal(a, b) for a, b in zip(got, expected))


class _RunsCode:
    """What a malicious pickle holds: unpickling it would call os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_names_any_other_callable_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    path = write_params(tmp_path / "evil.npz", [np.zeros(3, np.float32), _RunsCode(marker)])
    with pytest.raises(CheckpointError, match=r"evil\.npz: the pickle in params\.npy refers to (posix|os|nt)\.system"):
        read_tensorlayer_npz(path)
    assert not marker.exists()


@pytest.mark.parametrize("item,shown", [
    ("a string", "item 1 is a str"),
    (np.arange(4), r"item 1 is a int64 array"),
    ([1.0, 2.0], "item 1 is a list"),
    (np.array([np.zeros(2)], dtype=object), "item 1 is a object array"),
])
def test_only_float_arrays_are_accepted_as_items(tmp_path, item, shown):
    path = write_params(tmp_path / "w.npz", [np.zeros((2, 2), np.float32), item])
    with pytest.raises(CheckpointError, match=shown):
        read_tensorlayer_npz(path)


def test_a_plain_float_array_is_not_a_weight_list(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, params=np.zeros((3, 3)))
    with pytest.raises(CheckpointError, match=r"params\.npy is a float64 array of shape \(3, 3\)"):
        read_tensorlayer_npz(path)


def test_an_npz_without_params_is_named(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"holds \['weights\.npy'\], not params\.npy"):
        read_tensorlayer_npz(path)


def test_a_truncated_download_is_refused(tmp_path):
    data = fixture("dual").read_bytes()
    path = tmp_path / "dual.npz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"dual\.npz: not a readable npz \(zip\) file .*truncated"):
        read_tensorlayer_npz(path)


def test_a_corrupted_byte_fails_the_zip_checksum(tmp_path):
    data = bytearray(fixture("single_2level").read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the float data: only the CRC can tell
    path = tmp_path / "bad.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"bad\.npz: not a readable npz .*CRC"):
        read_tensorlayer_npz(path)


def test_a_cut_pickle_inside_a_valid_zip_is_named_damaged(tmp_path):
    with zipfile.ZipFile(fixture("single_2level")) as z:
        raw = z.read("params.npy")
    path = tmp_path / "cut.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("params.npy", raw[: len(raw) // 3])
    with pytest.raises(CheckpointError, match=r"cut\.npz: the pickle in params\.npy is damaged or truncated"):
        read_tensorlayer_npz(path)


def test_a_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.npz: no such weight file; fetch it"):
        read_tensorlayer_npz(tmp_path / "nope.npz")
