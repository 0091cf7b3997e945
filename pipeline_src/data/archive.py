"""Safe extraction of zip, tar, tar.gz and rar archives into a folder.

Every member name is checked before anything is written: no absolute paths, no `..`, no links that point
outside the target (zip-slip, tar link tricks). Tar members then go through the standard library's `data`
filter (PEP 706), which also refuses device files and strips set-uid bits. RAR needs `bsdtar` (libarchive);
without it the error says what to install.
"""
from __future__ import annotations

import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from pipeline_src.errors import ConfigError, PipelineError


class UnsafeArchiveError(PipelineError, ValueError):
    """An archive member would land outside the target folder (or is a device file); nothing is trusted."""


class ArchiveToolMissing(PipelineError, RuntimeError):
    """The archive needs an external tool that is not installed."""


def extract(archive: Path, dest: Path, kind: str) -> None:
    """Extract `archive` (kind: zip | tar | tar.gz | rar | file) into the existing folder `dest`."""
    archive, dest = Path(archive), Path(dest)
    extractors = {"zip": extract_zip, "tar": extract_tar, "tar.gz": extract_tar, "rar": extract_rar,
                  "file": _place_file}
    if kind not in extractors:
        raise ConfigError(f"{archive}: unknown archive kind {kind!r}; accepted: {sorted(extractors)}")
    extractors[kind](archive, dest)


def check_member(archive: Path, name: str, link_target: str | None = None, hard_link: bool = False) -> None:
    """Refuse a member whose path (or link target) is absolute or climbs out of the extraction folder.

    A symbolic link's target is relative to the link's folder; a tar hard link's to the archive's top.
    """
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refused")
    if ".." in PurePosixPath(normalised).parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..' (would write outside the target); refused")
    if link_target is not None:
        target = link_target.replace("\\", "/")
        base = "" if hard_link else posixpath.dirname(normalised)
        resolved = posixpath.normpath(posixpath.join(base, target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchiveError(f"{archive}: member {name!r} is a link to {link_target!r}, outside the target; "
                                     "refused")


# ----------------------------------------------------------------------------------------------- zip
def extract_zip(archive: Path, dest: Path) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise UnsafeArchiveError(f"{archive}: not a readable zip archive ({e})") from e
    with zf:
        members = zf.infolist()
        links = {}
        for info in members:
            link = zf.read(info).decode("utf-8", "surrogateescape") if _zip_is_symlink(info) else None
            check_member(archive, info.filename, link)
            if link is not None:
                links[info.filename] = link
        _check_free_space(archive, dest, sum(i.file_size for i in members))
        for info in members:
            if info.filename in links:
                # zipfile would write the link target as file content; make the (checked, inward) link instead.
                path = dest / info.filename
                path.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(links[info.filename], path)
            else:
                zf.extract(info, dest)


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


# ----------------------------------------------------------------------------------------------- tar
def extract_tar(archive: Path, dest: Path) -> None:
    try:
        tf = tarfile.open(archive)  # compression detected from the bytes
    except tarfile.TarError as e:
        raise UnsafeArchiveError(f"{archive}: not a readable tar archive ({e})") from e
    with tf:
        members = tf.getmembers()
        dest_abs = os.path.realpath(dest)
        for m in members:  # everything is checked before the first byte is written
            check_member(archive, m.name, m.linkname if (m.issym() or m.islnk()) else None, hard_link=m.islnk())
            try:
                tarfile.data_filter(m, dest_abs)
            except tarfile.FilterError as e:
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} refused: {e}") from e
        _check_free_space(archive, dest, sum(m.size for m in members if m.isfile()))
        tf.extractall(dest, members=members, filter="data")


# ----------------------------------------------------------------------------------------------- rar
def extract_rar(archive: Path, dest: Path) -> None:
    """RAR through bsdtar: list and check the names first, extract, then check every link that was made."""
    bsdtar = shutil.which("bsdtar")
    if bsdtar is None:
        raise ArchiveToolMissing(
            f"{archive}: RAR archives need `bsdtar` (libarchive), which is not on PATH. Install it "
            "(Debian/Ubuntu: `apt install libarchive-tools`; conda: `conda install -c conda-forge libarchive`; "
            "macOS ships it as `tar`), then run the same fetch command again: the archive is kept.")
    listing = _run_tool([bsdtar, "-tf", str(archive)], archive)
    for name in listing.splitlines():
        check_member(archive, name)
    # bsdtar refuses '..' and absolute names by default (no -P); links are checked once they exist.
    _run_tool([bsdtar, "-xf", str(archive), "-C", str(dest), "--no-same-owner"], archive)
    root = Path(os.path.realpath(dest))
    for path in Path(dest).rglob("*"):
        if path.is_symlink():
            target = Path(os.path.realpath(path))
            if target != root and root not in target.parents:
                raise UnsafeArchiveError(f"{archive}: member {path.relative_to(dest)} is a link to "
                                         f"{os.readlink(path)!r}, outside the target; refused")


def _run_tool(cmd: list[str], archive: Path) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise UnsafeArchiveError(f"{archive}: `{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


# ----------------------------------------------------------------------------------------------- file
def _place_file(archive: Path, dest: Path) -> None:
    """A dataset file that is not an archive is copied as it is (the download stays for re-verification)."""
    shutil.copy2(archive, dest / archive.name)


def _check_free_space(archive: Path, dest: Path, needed: int) -> None:
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise OSError(f"{archive}: extracting needs {needed / 1e9:.2f} GB, {dest} has {free / 1e9:.2f} GB free")
