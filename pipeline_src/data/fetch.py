"""Download, verify and extract a registered dataset or weight file (`python -m pipeline_src fetch NAME`).

Each archive is downloaded to data/downloads/<file>.part (resumed by the next call after a failure), checked
(size, file type, then sha256 or md5; a file with no published hash is trusted on first use and its hash
recorded in data/downloads/trusted-hashes.json) and only then renamed to data/downloads/<file>. The archives
are extracted into a temporary folder under data/raw/ and the dataset's root is renamed to data/raw/<name>/,
with a .fetched.json record (files, sizes, hashes, sources, time). Weight files go to
data/weights/<filename> with a <filename>.sha256.json record. A rerun on a verified entry is a no-op. A file
no script can download (sync.com, Baidu, a Google Drive quota page) ends the call with exit code 2 and a
message naming the page to open and the exact path to save the file at; the next call picks it up from
there, verifies it and extracts it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from pipeline_src.data.registry import DatasetEntry, ManualSource, Registry, WeightEntry, load_registry
from pipeline_src.errors import ConfigError, PipelineError

DEFAULT_REGISTRY = "config/datasets.yaml"
DEFAULT_ROOT = "data"
TRUST_FILE = "trusted-hashes.json"
RECORD_FILE = ".fetched.json"
EXIT_MANUAL = 2


class FetchError(PipelineError, RuntimeError):
    """A fetch that cannot go on; the message names the file and what to do."""


class ChecksumMismatch(FetchError):
    """A file whose size or hash is not the expected one."""


class ManualDownloadRequired(FetchError):
    """Some file must be downloaded by hand; the message says from where and to which path."""


class ExistingDataError(FetchError):
    """data/raw/<name> exists but does not match what the registry and the downloads say."""


# --------------------------------------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="dataset or weight name from the registry")
    parser.add_argument("--list", action="store_true", help="list every entry with its status and exit")
    parser.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry YAML (default: %(default)s)")
    parser.add_argument("--root", default=DEFAULT_ROOT,
                        help="data folder holding downloads/, raw/ and weights/ (default: %(default)s)")
    parser.add_argument("--mirror", metavar="TEXT",
                        help="use only the URLs that contain TEXT (e.g. huggingface, dropbox)")
    parser.add_argument("--force", action="store_true",
                        help="extract again, replacing data/raw/NAME (the archives are verified as always)")
    parser.add_argument("--retries", type=int, default=4, help="retries per URL (default: %(default)s)")
    parser.add_argument("--backoff", type=float, default=2.0,
                        help="seconds before the first retry, doubled after each (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for a connection or for data (default: %(default)s)")


def run(args) -> int:
    registry = load_registry(args.registry)
    if args.list:
        print("\n".join(list_entries(registry, Path(args.root))))
        return 0
    if not args.name:
        raise ConfigError(f"fetch: give a NAME or --list; known: {', '.join(registry.names())}")
    options = Options(root=Path(args.root), registry=Path(args.registry), mirror=args.mirror, force=args.force,
                      retries=args.retries, backoff_s=args.backoff, timeout_s=args.timeout)
    try:
        fetch(registry, args.name, options)
    except ManualDownloadRequired as e:  # instructions for a person, over several lines: printed as they are
        print(str(e), file=sys.stderr)
        return EXIT_MANUAL
    return 0


@dataclass(frozen=True)
class Options:
    root: Path = Path(DEFAULT_ROOT)
    registry: Path = Path(DEFAULT_REGISTRY)  # named in messages (where to pin a hash)
    mirror: str | None = None
    force: bool = False
    retries: int = 4
    backoff_s: float = 2.0
    timeout_s: float = 60.0

    def __post_init__(self):  # accept str paths from callers
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "registry", Path(self.registry))

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    def rerun_command(self, name: str) -> str:
        extra = "" if self.root == Path(DEFAULT_ROOT) else f" --root {self.root}"
        extra += "" if self.registry == Path(DEFAULT_REGISTRY) else f" --registry {self.registry}"
        return f"python -m pipeline_src fetch {name}{extra}"


def fetch(registry: Registry, name: str, options: Options) -> Path:
    """Fetch one dataset (-> data/raw/<name>) or weight (-> data/weights/<filename>); returns that path."""
    entry = registry.entry(name)
    if isinstance(entry, DatasetEntry):
        return fetch_dataset(entry, options)
    return fetch_weight(entry, options)


# -------------------------------------------------------------------------------------- what to get
@dataclass(frozen=True)
class _Spec:
    """One file to obtain, whatever registry section it comes from."""

    key: str  # file name: unique across the registry, the key of the trust store
    owner: str  # "datasets.dpdd" / "weights.vgg19", for messages
    urls: tuple[str, ...]
    manual: ManualSource | None
    archive: str
    sha256: str | None
    sha256_prefix: str | None
    md5: str | None
    size: int | None


@dataclass(frozen=True)
class _Obtained:
    spec: _Spec
    path: Path
    sha256: str
    md5: str | None
    size: int
    source: str  # the URL, or a note that the file was already there
    check: str  # how it was verified


@dataclass(eq=False)
class _Unobtainable(Exception):
    spec: _Spec
    path: Path
    failures: list[tuple[str, str]]  # (url, reason)
    needs_person: bool  # a manual-only host or a web page where the file should be


def _dataset_specs(entry: DatasetEntry) -> list[_Spec]:
    return [_Spec(f.name, f"datasets.{entry.name}", f.urls, f.manual, f.archive, f.sha256, None, f.md5, f.size)
            for f in entry.files]


def _weight_spec(entry: WeightEntry) -> _Spec:
    return _Spec(entry.filename, f"weights.{entry.name}", entry.urls, entry.manual, "file", entry.sha256,
                 entry.sha256_prefix, entry.md5, entry.size)


# ----------------------------------------------------------------------------------------- datasets
def fetch_dataset(entry: DatasetEntry, options: Options) -> Path:
    raw = options.root / "raw" / entry.name
    record = raw / RECORD_FILE
    if not options.force:
        if record.is_file():
            print(f"{entry.name}: {_check_record(entry, record, options)}")
            return raw
        if raw.exists():
            raise ExistingDataError(f"{raw} exists but has no {RECORD_FILE}, so fetch did not make it (or was "
                                    "interrupted); move it away, or pass --force to replace it")
    trust = TrustStore(options.downloads / TRUST_FILE)
    obtained, missing = [], []
    for spec in _dataset_specs(entry):
        try:
            obtained.append(_obtain(spec, options.downloads / spec.key, options, trust))
        except _Unobtainable as u:
            missing.append(u)
    if missing:
        _raise_unobtainable(entry.name, missing, options)
    _extract_all(entry, obtained, raw)
    print(f"{entry.name}: extracted {len(obtained)} archive(s) into {raw}")
    return raw


def _check_record(entry: DatasetEntry, record_path: Path, options: Options) -> str:
    """The no-op path: the record must match the registry and the archives still in data/downloads."""
    files = _read_json(record_path).get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and {"name", "sha256"} <= set(f) for f in files):
        raise ExistingDataError(f"{record_path}: no valid `files` list (name, sha256); pass --force to fetch and "
                                "extract again")
    recorded = {f["name"]: f for f in files}
    wanted = {f.name: f for f in entry.files}
    if set(recorded) != set(wanted):
        raise ExistingDataError(f"{record_path}: extracted from {sorted(recorded)}, but the registry now lists "
                                f"{sorted(wanted)}; pass --force to fetch and extract again")
    kept = 0
    for name, f in wanted.items():
        if f.sha256 is not None and recorded[name]["sha256"] != f.sha256:
            raise ExistingDataError(f"{record_path}: {name} had sha256 {recorded[name]['sha256']}, the registry now "
                                    f"pins {f.sha256}; pass --force to fetch and extract again")
        archive = options.downloads / name
        if archive.is_file():
            actual = _digests(archive, want_md5=False)[0]
            if actual != recorded[name]["sha256"]:
                raise ExistingDataError(f"{archive} (sha256 {actual}) is not the archive {record_path.parent} was "
                                        f"extracted from (sha256 {recorded[name]['sha256']}); pass --force to "
                                        "verify it and extract again")
            kept += 1
    if kept == len(wanted):
        return f"already present and verified ({record_path.parent}; archive hashes match {RECORD_FILE})"
    return (f"already present ({record_path.parent}, verified when extracted); {len(wanted) - kept} archive(s) no "
            "longer in data/downloads, so not re-checked")


def _extract_all(entry: DatasetEntry, obtained: list[_Obtained], raw: Path) -> None:
    """Extract every archive into one staging folder, then rename its root into place with the record."""
    from pipeline_src.data.archive import UnsafeArchiveError, extract
    from pipeline_src.fileio import atomic_dir, atomic_write_json

    raw.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.extract-", dir=raw.parent))
    try:
        for o in obtained:
            print(f"{entry.name}: extracting {o.path.name}")
            try:
                extract(o.path, staging, o.spec.archive)
            except UnsafeArchiveError as e:
                raise UnsafeArchiveError(f"{e}; nothing was placed in {raw}") from e
        root = _find_root(entry, staging)
        with atomic_dir(raw) as out:
            for child in root.iterdir():
                os.replace(child, out / child.name)
            atomic_write_json(out / RECORD_FILE, {
                "name": entry.name,
                "fetched_at": _now(),
                "root_in_archive": str(root.relative_to(staging)),
                "files": [{"name": o.spec.key, "size": o.size, "sha256": o.sha256, "md5": o.md5,
                           "source": o.source, "check": o.check} for o in obtained],
            })
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _find_root(entry: DatasetEntry, staging: Path) -> Path:
    names = (entry.root_in_archive, *entry.root_aliases)
    found = [staging / n for n in names if (staging / n).is_dir()]
    if len(found) != 1:
        top = sorted(p.name for p in staging.iterdir())
        what = "none" if not found else f"several ({[str(p.relative_to(staging)) for p in found]})"
        raise FetchError(f"datasets.{entry.name}: {what} of root_in_archive/root_aliases {list(names)} is a folder "
                         f"in the extracted archives, whose top level holds {top}; correct the registry")
    return found[0]


# ------------------------------------------------------------------------------------------ weights
def fetch_weight(entry: WeightEntry, options: Options) -> Path:
    from pipeline_src.fileio import atomic_write_json

    final = options.root / "weights" / entry.filename
    record = final.with_name(final.name + ".sha256.json")
    was_there = final.is_file()
    trust = TrustStore(options.downloads / TRUST_FILE)
    try:
        got = _obtain(_weight_spec(entry), final, options, trust)
    except _Unobtainable as u:
        _raise_unobtainable(entry.name, [u], options)
    if was_there and record.is_file() and _read_json(record).get("sha256") == got.sha256:
        print(f"{entry.name}: already present and verified ({final})")
        return final
    atomic_write_json(record, {"name": entry.name, "filename": entry.filename, "size": got.size,
                               "sha256": got.sha256, "source": got.source, "check": got.check,
                               "fetched_at": _now()})
    print(f"{entry.name}: {final} ({'picked up and ' if was_there else ''}verified: {got.check})")
    return final


# ----------------------------------------------------------------------------------- obtain a file
def _obtain(spec: _Spec, final: Path, options: Options, trust: TrustStore) -> _Obtained:
    """Make `final` hold the verified file: take one already there (placed by hand or by an earlier call)
    or download it into `final`.part, check it, and rename it."""
    from pipeline_src.data.download import (
        DownloadError,
        HtmlInsteadOfFile,
        SizeMismatch,
        UnexpectedFileType,
        check_magic,
        http_download,
    )

    if final.is_file():
        try:
            check_magic(final, spec.archive)
            return _verify(final, spec, trust, options, source=f"{final} (present before this call)")
        except (DownloadError, ChecksumMismatch) as e:
            raise ChecksumMismatch(f"{e}. This file was already at {final} (placed by hand or by an earlier "
                                   "call); remove or replace it") from e
    urls = _select_urls(spec, options.mirror)
    failures: list[tuple[str, str]] = []
    needs_person = not spec.urls or spec.manual is not None
    part = final.with_name(final.name + ".part")
    for url in urls:
        print(f"{spec.owner}: downloading {url} -> {part}")
        try:
            http_download(url, part, expected_size=spec.size, retries=options.retries, backoff_s=options.backoff_s,
                          timeout_s=options.timeout_s)
            check_magic(part, spec.archive)
        except (HtmlInsteadOfFile, UnexpectedFileType) as e:
            part.unlink(missing_ok=True)  # a web page is no prefix of the file: never resume it
            needs_person = True
            failures.append((url, str(e)))
            continue
        except (SizeMismatch, DownloadError) as e:
            failures.append((url, str(e)))
            continue
        try:
            got = _verify(part, spec, trust, options, source=url)
        except ChecksumMismatch as e:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(f"{e}. The download was deleted; nothing was extracted") from e
        os.replace(part, final)
        return dataclasses.replace(got, path=final)
    raise _Unobtainable(spec, final, failures, needs_person)


def _select_urls(spec: _Spec, mirror: str | None) -> tuple[str, ...]:
    if mirror is None or not spec.urls:
        return spec.urls
    chosen = tuple(u for u in spec.urls if mirror in u)
    if not chosen:
        raise FetchError(f"{spec.owner}: no URL of {spec.key} contains {mirror!r}; its URLs: {list(spec.urls)}")
    return chosen


def _raise_unobtainable(name: str, missing: list[_Unobtainable], options: Options) -> NoReturn:
    lines = [f"{name}: {len(missing)} file(s) must be downloaded by hand:"]
    for u in missing:
        u.path.parent.mkdir(parents=True, exist_ok=True)  # so the file can be saved straight there
        lines.append(f"  {u.spec.key}")
        if u.spec.manual is not None:
            lines.append(f"    open:    {u.spec.manual.url}")
            lines.append(f"             ({u.spec.manual.note})")
        elif u.failures:
            lines.append(f"    open:    {u.failures[0][0]}  (in a browser)")
        lines.append(f"    save as: {u.path.resolve()}")
        for url, reason in u.failures:
            lines.append(f"    tried:   {reason if reason.startswith(url) else f'{url}: {reason}'}")
    lines.append(f"Then run `{options.rerun_command(name)}` again: it picks the file(s) up from there, verifies "
                 "them and extracts them.")
    error = ManualDownloadRequired if any(u.needs_person for u in missing) else FetchError
    raise error("\n".join(lines))


# ------------------------------------------------------------------------------------ verification
def _verify(path: Path, spec: _Spec, trust: TrustStore, options: Options, source: str) -> _Obtained:
    """Size, then published hashes (sha256, its prefix, md5), then the hash trusted on first use."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise ChecksumMismatch(f"{path}: {size} bytes, {spec.owner} expects {spec.size} for {spec.key}")
    sha256, md5 = _digests(path, want_md5=spec.md5 is not None)
    if spec.sha256 is not None and sha256 != spec.sha256:
        raise ChecksumMismatch(f"{path}: sha256 {sha256}, but {spec.owner} in {options.registry} pins {spec.sha256} "
                               f"for {spec.key} (corrupt, or a different file)")
    if spec.sha256_prefix is not None and not sha256.startswith(spec.sha256_prefix):
        raise ChecksumMismatch(f"{path}: sha256 {sha256} does not start with {spec.sha256_prefix}, the prefix "
                               f"{spec.owner} expects for {spec.key} (corrupt, or a different file)")
    if spec.md5 is not None and md5 != spec.md5:
        raise ChecksumMismatch(f"{path}: md5 {md5}, but {spec.owner} expects the published {spec.md5} for {spec.key}")
    published = [name for name, value in (("sha256", spec.sha256), ("sha256 prefix", spec.sha256_prefix),
                                          ("md5", spec.md5)) if value is not None]
    if spec.sha256 is not None:
        return _Obtained(spec, path, sha256, md5, size, source, "pinned sha256")
    trusted = trust.get(spec.key)
    if trusted is not None:
        if trusted["sha256"] != sha256:
            raise ChecksumMismatch(
                f"{path}: sha256 {sha256} differs from the hash trusted on first use for {spec.key} "
                f"({trusted['sha256']}, recorded {trusted['recorded_at']} from {trusted['source']} in {trust.path}); "
                f"the file on the server changed, or this copy is corrupt. If this file is the right one, delete the "
                f"{spec.key!r} entry from {trust.path} (or pin its sha256 in {options.registry})")
        return _Obtained(spec, path, sha256, md5, size, source, " + ".join(published + ["sha256 trusted on first use"]))
    trust.record(spec.key, {"sha256": sha256, "size": size, "source": source, "recorded_at": _now()})
    print(f"{spec.owner}: {spec.key} has no published sha256; trusting this first copy: sha256 {sha256} "
          f"({size} bytes), recorded in {trust.path}. To pin it, set `sha256: {sha256}` and `size: {size}` for "
          f"{spec.key} under {spec.owner} in {options.registry}.")
    return _Obtained(spec, path, sha256, md5, size, source, " + ".join(published + ["sha256 recorded on first use"]))


def _digests(path: Path, want_md5: bool, chunk: int = 1 << 20) -> tuple[str, str | None]:
    """sha256 (and md5) of a file in one read."""
    sha = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False) if want_md5 else None
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            sha.update(block)
            if md5 is not None:
                md5.update(block)
    return sha.hexdigest(), (md5.hexdigest() if md5 is not None else None)


class TrustStore:
    """data/downloads/trusted-hashes.json: {file name: {sha256, size, source, recorded_at}}.

    Read-modify-write under an exclusive lock: Snakemake may run several fetches at once.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def get(self, key: str) -> dict | None:
        return self._load().get(key)

    def record(self, key: str, value: dict) -> None:
        from pipeline_src.fileio import atomic_write_json

        with self._locked():
            files = self._load()
            files[key] = value
            atomic_write_json(self.path, {"files": dict(sorted(files.items()))})

    def _load(self) -> dict:
        if not self.path.is_file():
            return {}
        doc = _read_json(self.path)
        if not isinstance(doc.get("files"), dict):
            raise FetchError(f"{self.path}: expected {{\"files\": {{name: {{sha256, ...}}}}}}; fix or delete it")
        return doc["files"]

    @contextlib.contextmanager
    def _locked(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------- status
def list_entries(registry: Registry, root: Path) -> list[str]:
    """One line per entry: name, kind, status (verified | present | missing | manual), where, title.

    `verified` means fetch wrote its record after checking the hashes; listing does not re-hash (that is
    what `fetch NAME` does).
    """
    rows = [("NAME", "KIND", "STATUS", "PATH", "DESCRIPTION")]
    for entry in registry.datasets.values():
        raw = root / "raw" / entry.name
        scriptable = all(f.urls for f in entry.files)
        status = _status((raw / RECORD_FILE).is_file(), raw.exists(), scriptable)
        rows.append((entry.name, "dataset", status, str(raw), entry.title))
    for entry in registry.weights.values():
        final = root / "weights" / entry.filename
        record = final.with_name(final.name + ".sha256.json")
        verified = final.is_file() and record.is_file() and _read_json(record).get("size") == final.stat().st_size
        rows.append((entry.name, "weight", _status(verified, final.exists(), bool(entry.urls)), str(final),
                     entry.filename))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]


def _status(verified: bool, present: bool, scriptable: bool) -> str:
    if verified:
        return "verified"
    if present:
        return "present"
    return "missing" if scriptable else "manual"


# ------------------------------------------------------------------------------------------ helpers
def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FetchError(f"{path}: not valid JSON ({e}); delete it and fetch again") from e
    if not isinstance(doc, dict):
        raise FetchError(f"{path}: expected a JSON object; delete it and fetch again")
    return doc


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
