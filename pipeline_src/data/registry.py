"""The dataset and weight registry: config/datasets.yaml read into frozen dataclasses, checked on load.

Every entry is validated when the file is read, so a typo in the YAML is an error naming the entry and the
field (with what would be accepted) before anything is downloaded. Unknown keys are errors too: a misspelt
`sha265` must not silently turn a pinned hash into trust-on-first-use.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from pipeline_src.errors import ConfigError, UnknownNameError, one_line

TASKS = ("defocus_dual_pixel", "motion", "blur_detection", "defocus_single")
LAYOUTS = ("dpdd", "gopro", "cuhk", "dut", "dvd", "kohler", "realdof")
ARCHIVES = ("zip", "tar", "tar.gz", "rar", "file")
BIT_DEPTHS = (8, 16)
MASK_VALUES = (0, 255)

# torch.hub's rule (HASH_REGEX): the hex digits after the last '-' of a weight filename start its SHA-256.
_TORCH_HUB_HASH = re.compile(r"-([a-f0-9]+)\.")
_HEX = re.compile(r"[0-9a-f]+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

_DATASET_KEYS = {"title", "task", "layout", "bit_depth", "splits", "test_only", "licence",
                 "mask_in_focus_value", "root_in_archive", "root_aliases", "files"}
_DATASET_REQUIRED = _DATASET_KEYS - {"root_aliases"}
_FILE_KEYS = {"name", "urls", "manual", "sha256", "md5", "size", "archive"}
_FILE_REQUIRED = {"name", "urls", "archive"}
_WEIGHT_KEYS = {"filename", "urls", "manual", "sha256", "sha256_prefix", "md5", "size", "licence"}
_WEIGHT_REQUIRED = {"filename", "urls", "licence"}
_MANUAL_KEYS = {"url", "note"}


@dataclass(frozen=True)
class ManualSource:
    """A host that a script cannot download from (sync.com, Baidu, a Drive quota): the page a person opens."""

    url: str
    note: str


@dataclass(frozen=True)
class DatasetFile:
    """One archive of a dataset. Every URL must serve the same bytes: one name, one hash."""

    name: str  # the file's name under data/downloads/
    urls: tuple[str, ...]  # ordered; scriptable hosts first
    archive: str  # one of ARCHIVES
    manual: ManualSource | None = None
    sha256: str | None = None  # None = trust on first use
    md5: str | None = None  # where only an MD5 is published (Köhler)
    size: int | None = None  # bytes


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    title: str
    task: str
    layout: str
    bit_depth: int
    splits: Mapping[str, int]
    test_only: bool
    licence: str
    mask_in_focus_value: int | None
    root_in_archive: str  # folder of the extracted archive(s) that becomes data/raw/<name>/; "." = all of it
    files: tuple[DatasetFile, ...]
    # Other names the same folder has in mirrors that re-packed the archive (IFAN's DPDD.zip has DPDD/).
    root_aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class WeightEntry:
    name: str
    filename: str  # lands at data/weights/<filename>
    urls: tuple[str, ...]
    licence: str
    manual: ManualSource | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None  # torchvision's filename rule; checked even where the full hash is unknown
    md5: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Registry:
    path: Path
    datasets: Mapping[str, DatasetEntry] = field(default_factory=dict)
    weights: Mapping[str, WeightEntry] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.datasets) + sorted(self.weights)

    def dataset(self, name: str) -> DatasetEntry:
        if name not in self.datasets:
            known = ", ".join(sorted(self.datasets))
            raise UnknownNameError(f"unknown dataset {name!r} in {self.path}; known datasets: {known}")
        return self.datasets[name]

    def weight(self, name: str) -> WeightEntry:
        if name not in self.weights:
            raise UnknownNameError(f"unknown weight {name!r} in {self.path}; "
                                   f"known weights: {', '.join(sorted(self.weights))}")
        return self.weights[name]

    def entry(self, name: str) -> DatasetEntry | WeightEntry:
        """A dataset or a weight by name (the names are unique across both)."""
        if name in self.datasets:
            return self.datasets[name]
        if name in self.weights:
            return self.weights[name]
        raise UnknownNameError(f"unknown name {name!r} in {self.path}; known: {', '.join(self.names())}")


def load_registry(path: str | Path = "config/datasets.yaml") -> Registry:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"dataset registry {path} does not exist; pass --registry config/datasets.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({one_line(str(exc))})") from exc
    where = str(path)
    _check_keys(doc, {"datasets", "weights"}, {"datasets", "weights"}, where)
    datasets = {name: _dataset(name, raw, f"{where}: datasets.{name}")
                for name, raw in _mapping(doc["datasets"], f"{where}: datasets").items()}
    weights = {name: _weight(name, raw, f"{where}: weights.{name}")
               for name, raw in _mapping(doc["weights"], f"{where}: weights").items()}
    _check_unique(datasets, weights, where)
    return Registry(path=path, datasets=datasets, weights=weights)


# ------------------------------------------------------------------------------------------ entries
def _dataset(name: str, raw: Any, where: str) -> DatasetEntry:
    _check_name(name, where)
    _check_keys(raw, _DATASET_KEYS, _DATASET_REQUIRED, where)
    task = _choice(raw["task"], TASKS, f"{where}.task")
    mask_value = raw["mask_in_focus_value"]
    if task == "blur_detection":
        _choice(mask_value, MASK_VALUES, f"{where}.mask_in_focus_value (required for blur_detection sets)")
    elif mask_value is not None:
        raise ConfigError(f"{where}.mask_in_focus_value: {mask_value!r} given for a {task} set; expected null "
                          "(only blur_detection sets have masks)")
    files = raw["files"]
    if not isinstance(files, list) or not files:
        raise ConfigError(f"{where}.files: expected a non-empty list of archives, got {files!r}")
    aliases = raw.get("root_aliases") or []
    if not isinstance(aliases, list):
        raise ConfigError(f"{where}.root_aliases: expected a list of folder names, got {aliases!r}")
    return DatasetEntry(
        name=name,
        title=_text(raw["title"], f"{where}.title"),
        task=task,
        layout=_choice(raw["layout"], LAYOUTS, f"{where}.layout"),
        bit_depth=_choice(raw["bit_depth"], BIT_DEPTHS, f"{where}.bit_depth"),
        splits=_splits(raw["splits"], f"{where}.splits"),
        test_only=_bool(raw["test_only"], f"{where}.test_only"),
        licence=_text(raw["licence"], f"{where}.licence"),
        mask_in_focus_value=mask_value,
        root_in_archive=_relative_folder(raw["root_in_archive"], f"{where}.root_in_archive"),
        root_aliases=tuple(_relative_folder(a, f"{where}.root_aliases[{i}]") for i, a in enumerate(aliases)),
        files=tuple(_file(item, f"{where}.files[{i}]") for i, item in enumerate(files)),
    )


def _file(raw: Any, where: str) -> DatasetFile:
    _check_keys(raw, _FILE_KEYS, _FILE_REQUIRED, where)
    urls, manual = _sources(raw, where)
    return DatasetFile(
        name=_filename(raw["name"], f"{where}.name"),
        urls=urls,
        archive=_choice(raw["archive"], ARCHIVES, f"{where}.archive"),
        manual=manual,
        sha256=_hex(raw.get("sha256"), 64, f"{where}.sha256"),
        md5=_hex(raw.get("md5"), 32, f"{where}.md5"),
        size=_size(raw.get("size"), f"{where}.size"),
    )


def _weight(name: str, raw: Any, where: str) -> WeightEntry:
    _check_name(name, where)
    _check_keys(raw, _WEIGHT_KEYS, _WEIGHT_REQUIRED, where)
    urls, manual = _sources(raw, where)
    filename = _filename(raw["filename"], f"{where}.filename")
    sha256 = _hex(raw.get("sha256"), 64, f"{where}.sha256")
    prefix = raw.get("sha256_prefix")
    if prefix is not None:
        if not isinstance(prefix, str) or not _HEX.fullmatch(prefix) or not 8 <= len(prefix) <= 64:
            raise ConfigError(f"{where}.sha256_prefix: expected 8 to 64 lowercase hex digits or null, got {prefix!r}")
        if sha256 is not None and not sha256.startswith(prefix):
            raise ConfigError(f"{where}: sha256 {sha256} does not start with sha256_prefix {prefix}")
    hub = _TORCH_HUB_HASH.search(filename)
    if hub and prefix is not None and not (hub.group(1).startswith(prefix) or prefix.startswith(hub.group(1))):
        raise ConfigError(f"{where}.sha256_prefix: {prefix} disagrees with the hash {hub.group(1)} in the filename "
                          f"{filename}")
    return WeightEntry(
        name=name, filename=filename, urls=urls, licence=_text(raw["licence"], f"{where}.licence"), manual=manual,
        sha256=sha256, sha256_prefix=prefix, md5=_hex(raw.get("md5"), 32, f"{where}.md5"),
        size=_size(raw.get("size"), f"{where}.size"),
    )


def _sources(raw: Mapping, where: str) -> tuple[tuple[str, ...], ManualSource | None]:
    urls = raw["urls"]
    if not isinstance(urls, list):
        raise ConfigError(f"{where}.urls: expected a list of http(s) URLs (may be empty with `manual`), got {urls!r}")
    for i, url in enumerate(urls):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.urls[{i}]: expected an http:// or https:// URL, got {url!r}")
    manual = None
    if raw.get("manual") is not None:
        _check_keys(raw["manual"], _MANUAL_KEYS, _MANUAL_KEYS, f"{where}.manual")
        manual = ManualSource(url=_text(raw["manual"]["url"], f"{where}.manual.url"),
                              note=_text(raw["manual"]["note"], f"{where}.manual.note"))
    if not urls and manual is None:
        raise ConfigError(f"{where}: no `urls` and no `manual` source; give at least one so the file can be obtained")
    return tuple(urls), manual


def _check_unique(datasets: Mapping[str, DatasetEntry], weights: Mapping[str, WeightEntry], where: str) -> None:
    both = sorted(set(datasets) & set(weights))
    if both:
        raise ConfigError(f"{where}: {both} are both a dataset and a weight; `fetch NAME` needs unique names")
    # data/downloads/ is shared by every dataset (and holds the trust store keyed by file name).
    owner: dict[str, str] = {}
    for entry in datasets.values():
        for f in entry.files:
            if f.name in owner:
                raise ConfigError(f"{where}: file name {f.name!r} is used by {owner[f.name]} and "
                                  f"datasets.{entry.name}; "
                                  "file names must be unique")
            owner[f.name] = f"datasets.{entry.name}"
    for entry in weights.values():
        if entry.filename in owner:
            raise ConfigError(f"{where}: file name {entry.filename!r} is used by {owner[entry.filename]} and "
                              f"weights.{entry.name}; file names must be unique")
        owner[entry.filename] = f"weights.{entry.name}"


# ----------------------------------------------------------------------------------------- scalars
def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of name -> entry, got {type(value).__name__}")
    return value


def _check_keys(raw: Any, allowed: set[str], required: set[str], where: str) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; accepted: {sorted(allowed)}")
    missing = sorted(required - set(raw))
    if missing:
        raise ConfigError(f"{where}: missing field(s) {missing}")


def _check_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: name {name!r} must be letters, digits, '_', '.', '-'")


def _choice(value: Any, accepted: tuple, where: str):
    if value not in accepted or isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not one of {list(accepted)}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _hex(value: Any, length: int, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != length or not _HEX.fullmatch(value):
        raise ConfigError(f"{where}: expected {length} lowercase hex digits or null, got {value!r}")
    return value


def _size(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}: expected a positive number of bytes or null, got {value!r}")
    return value


def _splits(value: Any, where: str) -> dict[str, int]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: expected a mapping split -> count, e.g. {{train: 350, test: 76}}, got {value!r}")
    for split, count in value.items():
        if not isinstance(split, str) or isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise ConfigError(f"{where}.{split}: expected a positive count, got {count!r}")
    return dict(value)


def _filename(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(f"{where}: {value!r} is not a plain file name (letters, digits, '_', '.', '-'; no folders)")
    return value


def _relative_folder(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a folder path inside the archive ('.' for its top), got {value!r}")
    parts = PurePosixPath(value).parts
    if value.startswith(("/", "\\")) or ".." in parts or "\\" in value:
        raise ConfigError(f"{where}: {value!r} must be a relative POSIX path inside the archive, without '..'")
    return value
