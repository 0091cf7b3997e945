"""Shared helpers for the weight-import tests: the fixtures' paths, npz files written the way tensorlayer does, and
a folder served on 127.0.0.1 as a release host."""
from __future__ import annotations

import contextlib
import functools
import os
import pickletools
import struct
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# Read-only reference data beside the repository (its README says how it was made); used in place, never copied.
FIXTURES = Path(os.environ.get("KPAC_OFFICIAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "kpac_official"))
# import NAME -> (fixture stem, views in the model's input order)
CASES = {
    "kpac_single_2level": ("single_2level", ("c",)),
    "kpac_single_3level": ("single_3level", ("c",)),
    "kpac_dual": ("dual", ("l", "r", "c")),
}


def fixture(stem: str) -> Path:
    path = FIXTURES / f"{stem}.npz"
    assert path.is_file(), (f"{path}: the KPAC reference fixtures are missing; set KPAC_OFFICIAL_FIXTURES to the "
                            "folder holding single_2level.npz, ..., dual_io.npz")
    return path


def object_array(items: list) -> np.ndarray:
    """A 1-D object array of the given items (np.array would stack arrays of equal shape)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def write_params(path: Path, items: list) -> Path:
    """A tensorlayer save_npz file (np.savez(name, params=[...])) holding these items."""
    np.savez(path, params=object_array(items))
    return path


def python2_pickle(py3_pickle: bytes) -> bytes:
    """The same pickle as Python 2's numpy writes it: protocol 2, byte and text strings as py2 `str` opcodes.

    Python 3 cannot write py2 `str` itself, so the opcode stream is rewritten: BINBYTES / SHORT_BINBYTES /
    BINUNICODE become BINSTRING / SHORT_BINSTRING with the same bytes; every other opcode is copied as is.
    """
    ops = list(pickletools.genops(py3_pickle))
    out = bytearray()
    for k, (op, arg, pos) in enumerate(ops):
        end = ops[k + 1][2] if k + 1 < len(ops) else len(py3_pickle)
        if op.name == "PROTO":
            out += b"\x80\x02"
        elif op.name in ("BINBYTES", "SHORT_BINBYTES", "BINUNICODE"):
            data = arg if isinstance(arg, bytes) else arg.encode("latin1")
            out += (b"U" + struct.pack("<B", len(data)) if len(data) < 256 else b"T" + struct.pack("<i", len(data)))
            out += data
        else:
            out += py3_pickle[pos:end]
    return bytes(out)


@contextlib.contextmanager
def serve_folder(directory: Path, monkeypatch):
    """Serves `directory` read-only on 127.0.0.1 (no proxy may carry the request elsewhere); yields the base URL."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
