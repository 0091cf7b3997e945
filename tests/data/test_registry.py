"""config/datasets.yaml: the shipped registry's facts, and the errors a malformed entry gets."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline_src.data.registry import DatasetEntry, WeightEntry, load_registry
from pipeline_src.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "datasets.yaml"


@pytest.fixture(scope="module")
def shipped():
    return load_registry(CONFIG)


# --------------------------------------------------------------------------------- shipped registry
def test_shipped_registry_has_every_required_entry(shipped):
    assert {"dpdd", "gopro", "cuhk", "dut", "dvd", "kohler", "realdof"} <= set(shipped.datasets)
    assert {"vgg16", "vgg19", "alexnet", "lpips_alex"} <= set(shipped.weights)
    assert isinstance(shipped.dataset("dpdd"), DatasetEntry) and isinstance(shipped.weight("vgg19"), WeightEntry)


def test_dpdd_facts(shipped):
    d = shipped.dataset("dpdd")
    assert (d.task, d.layout, d.bit_depth, d.test_only) == ("defocus_dual_pixel", "dpdd", 16, False)
    assert dict(d.splits) == {"train": 350, "val": 74, "test": 76}
    assert d.root_in_archive == "dd_dp_dataset_canon" and "DPDD" in d.root_aliases
    (f,) = d.files
    assert f.name == "dd_dp_dataset_canon.zip" and f.archive == "zip"
    assert f.manual is not None and f.manual.url.startswith("https://ln2.sync.com/")


def test_gopro_prefers_hugging_face_and_cuhk_merges_two_archives(shipped):
    g = shipped.dataset("gopro")
    assert g.files[0].urls[0] == "https://huggingface.co/datasets/snah/GOPRO_Large/resolve/main/GOPRO_Large.zip"
    assert dict(g.splits) == {"train": 2103, "test": 1111} and g.bit_depth == 8
    c = shipped.dataset("cuhk")
    assert [f.name for f in c.files] == ["BlurDatasetImage.zip", "BlurDatasetGT.zip"]
    assert c.root_in_archive == "." and c.task == "blur_detection" and c.mask_in_focus_value in (0, 255)
    assert sum(c.splits.values()) == 704  # the defocus images


def test_dut_training_data_is_manual_only(shipped):
    d = shipped.dataset("dut")
    assert dict(d.splits) == {"train": 600, "test": 500}
    assert all(not f.urls and f.manual is not None for f in d.files)
    assert shipped.dataset("dut_test").test_only


def test_extra_test_sets_are_test_only_and_kohler_has_its_md5s(shipped):
    for name in ("dvd", "kohler", "realdof"):
        assert shipped.dataset(name).test_only, name
    k = shipped.dataset("kohler")
    assert len(k.files) == 5 and all(f.md5 and len(f.md5) == 32 for f in k.files)
    assert {f.name: f.md5 for f in k.files}["BlurryImages.zip"] == "61ffb1434d93fca6c508976a7216d723"


def test_weights_follow_the_torchvision_hash_prefix_rule(shipped):
    for name in ("vgg16", "vgg19", "alexnet"):
        w = shipped.weight(name)
        hub_prefix = w.filename.rsplit("-", 1)[1].split(".")[0]
        assert w.sha256_prefix == hub_prefix and w.urls[0].endswith("/" + w.filename)
        assert w.sha256 is None or w.sha256.startswith(hub_prefix)
    assert shipped.weight("vgg16").sha256 == "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"
    assert shipped.weight("vgg19").sha256 is None  # no full hash published: trusted on first use
    lp = shipped.weight("lpips_alex")
    assert (lp.sha256, lp.size) == ("df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0", 6009)


def test_hosts_that_serve_web_pages_are_never_tried_as_urls(shipped):
    browser_only = ("sync.com", "pan.baidu.com", "drive.google.com")
    files = [f for d in shipped.datasets.values() for f in d.files] + list(shipped.weights.values())
    for f in files:
        assert f.urls or f.manual is not None
        for url in f.urls:
            assert not any(host in url for host in browser_only), url
            assert "dl=0" not in url, f"{url}: Dropbox needs dl=1 for the file itself"


def test_unknown_names_list_the_known_ones(shipped):
    with pytest.raises(KeyError, match="known datasets: cuhk, dpdd"):
        shipped.dataset("dpd")
    with pytest.raises(KeyError, match="known weights: adnet_dpdd, adnet_dpdd_data, adnet_gopro, adnet_gopro_data, "
                                       "alexnet, kpac_dual, kpac_single_2level, kpac_single_3level, lpips_alex"):
        shipped.weight("vgg")
    with pytest.raises(KeyError, match="unknown name 'x'"):
        shipped.entry("x")


def test_a_missing_registry_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nothere.yaml"):
        load_registry(tmp_path / "nothere.yaml")


# ------------------------------------------------------------------------------- malformed entries
VALID = {
    "datasets": {
        "x": {"title": "t", "task": "motion", "layout": "gopro", "bit_depth": 8, "splits": {"test": 3},
              "test_only": True, "licence": "l", "mask_in_focus_value": None, "root_in_archive": "X",
              "files": [{"name": "x.zip", "urls": ["https://example.org/x.zip"], "sha256": None, "archive": "zip"}]},
    },
    "weights": {
        "w": {"filename": "w-0123abcd.pth", "urls": ["https://example.org/w-0123abcd.pth"], "licence": "l",
              "sha256_prefix": "0123abcd", "sha256": "0123abcd" + "0" * 56},
    },
}


def load_mutated(tmp_path: Path, mutate) -> None:
    doc = copy.deepcopy(VALID)
    mutate(doc)
    path = tmp_path / "datasets.yaml"
    path.write_text(yaml.safe_dump(doc))
    load_registry(path)


def test_the_valid_example_loads(tmp_path):
    load_mutated(tmp_path, lambda d: None)


def _set(path: str, value):
    def mutate(doc):
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value
    return mutate


def _drop(path: str):
    def mutate(doc):
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        del node[last]
    return mutate


def _both(*mutations):
    def mutate(doc):
        for m in mutations:
            m(doc)
    return mutate


X = "datasets.x"
F = "datasets.x.files.0"


@pytest.mark.parametrize("mutate, message", [
    (_drop(f"{X}.task"), r"datasets\.x: missing field\(s\) \['task'\]"),
    (_set(f"{F}.sha265", "0" * 64), r"datasets\.x\.files\[0\]: unknown field\(s\) \['sha265'\]"),
    (_set(f"{X}.task", "deblur"), r"datasets\.x\.task: 'deblur' is not one of"),
    (_set(f"{X}.layout", "lmdb"), r"datasets\.x\.layout: 'lmdb' is not one of"),
    (_set(f"{X}.bit_depth", 12), r"datasets\.x\.bit_depth: 12 is not one of \[8, 16\]"),
    (_set(f"{X}.splits", {"test": 0}), r"datasets\.x\.splits\.test: expected a positive count"),
    (_set(f"{X}.test_only", "yes"), r"datasets\.x\.test_only: expected true or false"),
    (_set(f"{X}.mask_in_focus_value", 255), r"mask_in_focus_value: 255 given for a motion set"),
    (_set(f"{X}.task", "blur_detection"), r"mask_in_focus_value.*required for blur_detection"),
    (_set(f"{X}.root_in_archive", "../up"), r"root_in_archive: '\.\./up' must be a relative POSIX path"),
    (_set(f"{X}.root_in_archive", "/abs"), r"root_in_archive: '/abs' must be a relative POSIX path"),
    (_set(f"{X}.files", []), r"datasets\.x\.files: expected a non-empty list"),
    (_set(f"{F}.archive", "7z"), r"files\[0\]\.archive: '7z' is not one of"),
    (_set(f"{F}.sha256", "abc"), r"files\[0\]\.sha256: expected 64 lowercase hex digits or null, got 'abc'"),
    (_set(f"{F}.md5", "A" * 32), r"files\[0\]\.md5: expected 32 lowercase hex digits"),
    (_set(f"{F}.size", -1), r"files\[0\]\.size: expected a positive number of bytes"),
    (_set(f"{F}.name", "sub/x.zip"), r"files\[0\]\.name: 'sub/x\.zip' is not a plain file name"),
    (_set(f"{F}.urls", ["ftp://example.org/x.zip"]), r"files\[0\]\.urls\[0\]: expected an http:// or https:// URL"),
    (_set(f"{F}.urls", []), r"files\[0\]: no `urls` and no `manual` source"),
    (_set(f"{F}.manual", {"url": "https://x"}), r"files\[0\]\.manual: missing field\(s\) \['note'\]"),
    (_set("weights.w.sha256", "ffffffff" + "0" * 56), r"weights\.w: sha256 ffffffff0+ does not start with "
                                                      r"sha256_prefix 0123abcd"),
    (_both(_set("weights.w.sha256", None), _set("weights.w.sha256_prefix", "89abcdef")),
     r"sha256_prefix: 89abcdef disagrees with the hash 0123abcd in the "
                                                  r"filename"),
    (_set("weights.x", VALID["weights"]["w"] | {"filename": "other.pth"}), r"\['x'\] are both a dataset and a weight"),
    (_set("weights.w.filename", "x.zip"), r"file name 'x\.zip' is used by datasets\.x and weights\.w"),
    (_set("extra", {}), r"unknown field\(s\) \['extra'\]"),
])
def test_malformed_entries_name_the_field_and_what_is_accepted(tmp_path, mutate, message):
    with pytest.raises(ValueError, match=message):
        load_mutated(tmp_path, mutate)


def test_duplicate_file_names_across_datasets_are_refused(tmp_path):
    def mutate(doc):
        doc["datasets"]["y"] = copy.deepcopy(doc["datasets"]["x"])
    with pytest.raises(ValueError, match=r"file name 'x\.zip' is used by datasets\.x and datasets\.y"):
        load_mutated(tmp_path, mutate)

