"""The released files in config/datasets.yaml (KPAC's three here; ADNet's two also in test_adnet_import.py): pinned
to the authors' commit, trusted on first use, and fetched then imported the way the README says (the shipped
entry, its URL's host swapped for a local server)."""
from __future__ import annotations

import json
from urllib.parse import urlparse

import pytest
import yaml

from pipeline_src.cli import main as cli_main
from pipeline_src.data.registry import load_registry
from pipeline_src.fileio import sha256_file
from pipeline_src.model_io import load_model_file
from pipeline_src.weights_import import IMPORTS
from tests.weights_import.helpers import FIXTURES, REPO, fixture, serve_folder

REGISTRY = REPO / "config" / "datasets.yaml"


@pytest.mark.parametrize("name", IMPORTS.names())
def test_each_import_name_is_a_fetchable_weight_pinned_to_the_release_commit(name):
    entry = load_registry(REGISTRY).weight(name)
    spec = IMPORTS.build(name)
    suffix = {"tensorlayer_npz": ".npz", "tf_checkpoint": ".index"}[spec.format]
    assert entry.filename == f"{name}{suffix}" and entry.sha256 is None  # no published hash: trust on first use
    assert entry.urls and all(u.endswith(f"/{spec.commit}/{spec.repository_path}") for u in entry.urls)
    assert {urlparse(u).netloc for u in entry.urls} == {"raw.githubusercontent.com", "github.com"}
    repository = urlparse(spec.repository).path.strip("/")  # e.g. HyeongseokSon1/KPAC
    assert all(f"/{repository}/" in u for u in entry.urls)


@pytest.fixture
def fixture_server(monkeypatch):
    """Serves the fixture folder read-only on 127.0.0.1."""
    with serve_folder(FIXTURES, monkeypatch) as url:
        yield url


def test_fetch_records_the_hash_on_first_use_then_import_weights_reads_the_fetched_file(tmp_path, fixture_server):
    shipped = yaml.safe_load(REGISTRY.read_text())
    entry = dict(shipped["weights"]["kpac_dual"])
    entry["urls"] = [f"{fixture_server}/{fixture('dual').name}"]  # the same entry, served from here
    registry = tmp_path / "datasets.yaml"
    registry.write_text(yaml.safe_dump({"datasets": {}, "weights": {"kpac_dual": entry}}))
    data = tmp_path / "data"
    assert cli_main(["fetch", "kpac_dual", "--registry", str(registry), "--root", str(data), "--retries", "1"]) == 0
    fetched = data / "weights" / "kpac_dual.npz"
    assert sha256_file(fetched) == sha256_file(fixture("dual"))
    trusted = json.loads((data / "downloads" / "trusted-hashes.json").read_text())["files"]
    assert trusted["kpac_dual.npz"]["sha256"] == sha256_file(fixture("dual"))

    out = tmp_path / "runs" / "kpac_dual" / "dpdd-authors" / "final.pt"
    assert cli_main(["import-weights", "kpac_dual", "--file", str(fetched), "--out", str(out)]) == 0
    record = load_model_file(out)
    assert record["provenance"]["sha256"] == trusted["kpac_dual.npz"]["sha256"]
    assert record["provenance"]["file"] == str(fetched) and record["protocol"] == "dpdd_dual_8bit"
