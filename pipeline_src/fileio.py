"""Atomic file and folder writes, hashing, and image reading/writing with explicit bit depth.

Every stage output goes through these helpers so that a crash or a kill never leaves a half-written file
where a later stage would take it for good output: write to a temporary sibling, fsync, then rename.
- Temporary siblings are named `.<name>.<pid>.<random>.tmp|.partial`: a later write of the same output removes
  the ones whose process is gone (a SIGKILL leaves them behind), never those of a live process.
- A stage with several outputs writes them with `output_set`: the old set is removed first (the file later
  stages look for first), the new one renamed into place last, so a set is never a mix of two runs and its
  marker file exists only when the others do.
- `PIPELINE_KILL_AT=N` makes the main process SIGKILL itself just before its N-th commit (rename): the tests
  use it to kill every stage at chosen points. Unset, it costs one integer comparison per rename.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pipeline_src.errors import DataError

KILL_AT_ENV = "PIPELINE_KILL_AT"
_commits = 0


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _default_mode(directory: bool) -> int:
    """What open()/mkdir() would give under the current umask (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fault_point() -> None:
    """Called just before every commit (rename) of an output: the kill switch the kill tests use."""
    global _commits
    target = os.environ.get(KILL_AT_ENV)
    if not target or multiprocessing.parent_process() is not None:
        return
    _commits += 1
    if _commits == int(target):
        os.kill(os.getpid(), signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_partials(path: str | os.PathLike) -> list[Path]:
    """Remove temporary siblings of `path` left by processes that no longer run (killed mid-write)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:old-)?(\d+)(?:\..*)?$")
    removed = []
    for sibling in path.parent.iterdir():
        m = pattern.match(sibling.name)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed.append(sibling)
    return removed


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, _default_mode(directory=False))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        fault_point()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Build a folder under a temporary sibling name and rename it into place when the block succeeds.

    An existing folder at `path` is replaced only after the new one is complete (replace=True), so a
    reader never sees a partial folder under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".partial", dir=path.parent))
    os.chmod(tmp, _default_mode(directory=True))
    try:
        yield tmp
        fault_point()
        if path.exists():
            if not replace:
                raise FileExistsError(f"{path} already exists")
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def discard_outputs(paths: Sequence[str | os.PathLike]) -> None:
    """Remove a stage's previous output files (and dead partials), the marker (last) first: called when the stage
    starts, so an old result never stands beside a new run's, nor survives a run that fails."""
    for final in reversed([Path(p) for p in paths]):
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(final)
        final.unlink(missing_ok=True)


@contextlib.contextmanager
def output_set(paths: Sequence[str | os.PathLike]) -> Iterator[dict[Path, Path]]:
    """Write the files of one stage so that they appear together or not at all.

    `paths` are the stage's output files in commit order; the LAST is the marker, the file a later stage
    looks for (e.g. model_fp16.onnx for the engine stage, final.pt for evaluation). On entry the old files are
    removed, marker first, so a failed or killed run never leaves an old marker beside new siblings. Yields
    {final path: temporary path}; write each temporary file. On success they are renamed in order, the marker
    last; on an error every temporary file is removed and no output exists.
    """
    finals = [Path(p) for p in paths]
    discard_outputs(finals)
    temps: dict[Path, Path] = {}
    try:
        for final in finals:
            fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(final), suffix=".tmp", dir=final.parent)
            os.close(fd)
            os.chmod(tmp, _default_mode(directory=False))
            temps[final] = Path(tmp)
        yield dict(temps)
        for final, tmp in temps.items():
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise RuntimeError(f"{final}: the stage did not write it (output_set expects every file)")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        for final, tmp in temps.items():
            fault_point()
            os.replace(tmp, final)
        for parent in {f.parent for f in finals}:
            _fsync_dir(parent)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """A hard link where the file system allows one (no second copy of a 360 MB ONNX file), else a copy. Safe
    because outputs are never rewritten in place: a later write renames a new file over the old name, and the
    other link keeps the content it had."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# ----------------------------------------------------------------------------------------------- images
class ImageReadError(DataError):
    """An image file that is missing, truncated or not decodable; the message names the file."""


# Signatures of the formats a dataset may hold, and the suffixes that promise each.
_SIGNATURES = (("PNG", b"\x89PNG\r\n\x1a\n"), ("JPEG", b"\xff\xd8\xff"), ("TIFF", b"II*\x00"),
               ("TIFF", b"MM\x00*"), ("BMP", b"BM"), ("GIF", b"GIF8"))
_SUFFIX_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


def sniff_format(data: bytes) -> str | None:
    """The image format the bytes start with (PNG, JPEG, TIFF, BMP, GIF, WEBP), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for name, sig in _SIGNATURES if data.startswith(sig)), None)


def _check_container(path: Path, data: bytes) -> None:
    """The format behind the extension must be the one the extension names, and complete."""
    found = sniff_format(data)
    promised = _SUFFIX_FORMAT.get(path.suffix.lower())
    if found is None:
        raise ImageReadError(f"{path}: not an image file ({len(data)} bytes, starting {data[:8]!r}); "
                             "re-download or regenerate it")
    if promised is not None and found != promised:
        raise ImageReadError(f"{path}: named {path.suffix} but its bytes are a {found} image; "
                             f"convert it to {promised} or give it the right extension")
    # A PNG ends with the IEND chunk (length 0, b"IEND", CRC); a JPEG with the EOI marker FF D9 (cameras may
    # append a trailer after it, so it is looked for near the end). A cut download lacks them.
    if found == "PNG" and data[-12:-4] != b"\x00\x00\x00\x00IEND":
        raise ImageReadError(f"{path}: truncated PNG (no IEND chunk); re-download or regenerate it")
    if found == "JPEG" and b"\xff\xd9" not in data[-65536:]:
        raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker); re-download or regenerate it")


def decode_image(data: bytes, path: str | os.PathLike, color: bool = True) -> np.ndarray:
    """Decode image bytes (read from `path`, named in errors) at their stored bit depth.

    color=True: an RGB image, (H, W, 3) in RGB order. A grey or RGBA file is refused, not converted: a dataset
    declared RGB that holds one is not what it says (drop or convert the file deliberately).
    color=False: a grey image (H, W), e.g. a mask; a mask stored as RGB(A) is read as grey only when its colour
    channels are equal (the conversion loses nothing); otherwise it is refused.
    OpenCV is used because it keeps 16 bits (IMREAD_UNCHANGED); it returns BGR, converted here once.
    """
    import cv2

    path = Path(path)
    _check_container(path, data)
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f"{path}: not a decodable image ({len(data)} bytes); re-download or regenerate it")
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"{path}: unsupported sample type {img.dtype}; expected 8- or 16-bit")
    channels = 1 if img.ndim == 2 else img.shape[2]
    if color:
        if channels != 3:
            kind = {1: "a grey", 2: "a grey+alpha", 4: "an RGBA"}.get(channels, f"a {channels}-channel")
            raise ImageReadError(f"{path}: {kind} image where RGB is expected; convert it to 3-channel RGB "
                                 "(or remove it from the dataset)")
        return np.ascontiguousarray(img[:, :, ::-1])
    if channels == 1:
        return np.ascontiguousarray(img.reshape(img.shape[:2]))
    colour = img[:, :, :3] if channels >= 3 else img[:, :, :1]
    if not (colour == colour[:, :, :1]).all():
        raise ImageReadError(f"{path}: a {channels}-channel image with differing channels where a grey mask "
                             "is expected; save the mask as a single-channel image")
    return np.ascontiguousarray(colour[:, :, 0])


def read_image(path: str | os.PathLike, color: bool = True) -> np.ndarray:
    """Read an image file at its stored bit depth: RGB (H, W, 3), or grey (H, W) with color=False.

    See `decode_image` for the channel rules; the format behind the extension is checked first.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    return decode_image(path.read_bytes(), path, color)


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write an RGB (H, W, 3) or grey (H, W) uint8/uint16 array atomically; the suffix picks the format."""
    import cv2

    if img.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"{path}: write_image expects uint8 or uint16, got {img.dtype}")
    arr = img[:, :, ::-1] if img.ndim == 3 else img
    ok, buf = cv2.imencode(Path(path).suffix, np.ascontiguousarray(arr))
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the image")
    atomic_write_bytes(path, buf.tobytes())


def bit_depth_of(img: np.ndarray) -> int:
    return {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}[img.dtype]


def to_float(img: np.ndarray) -> np.ndarray:
    """uint8/uint16 -> float32 in [0, 1], dividing by the dtype's maximum (255 or 65535)."""
    return img.astype(np.float32) / float(np.iinfo(img.dtype).max)
