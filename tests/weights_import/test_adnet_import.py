"""import-weights adnet_gopro: the hand-written TensorFlow checkpoint reader against a checkpoint TensorFlow wrote,
the import's layout against the authors' real released index, exactness against the authors' graph (the
reference in fixtures/adnet_official, made with their code), the imported model through export-onnx and
evaluate, and one-line errors for damaged, truncated, missing or foreign checkpoints."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from pipeline_src.cli import main as cli_main
from pipeline_src.data.registry import load_registry
from pipeline_src.errors import CheckpointError
from pipeline_src.model_io import load_model, load_model_file
from pipeline_src.models import build_model
from pipeline_src.weights_import.adnet import DPDD, GOPRO, OPTIMIZER_SCALARS, tf_layout
from pipeline_src.weights_import.provenance import git_blob_id
from pipeline_src.weights_import.tf_checkpoint import TFCheckpoint, checkpoint_prefix
from tests.export.conftest import EXPORT_CONFIG, OP_TABLE, make_dataset
from tests.weights_import.adnet_fixture import (
    REFERENCE_IO,
    RELEASE_INDEX,
    RELEASE_INDEX_DPDD,
    formula_value,
    write_reference_checkpoint,
)
from tests.weights_import.helpers import REPO, serve_folder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return write_reference_checkpoint(tmp_path_factory.mktemp("adnet-ref"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory, reference):
    """The reference imported through the real CLI (checked against the authors' output), exported and evaluated."""
    root = tmp_path_factory.mktemp("adnet-imported")
    ckpt = root / "runs/authors/adnet_gopro/final.pt"
    assert cli_main(["import-weights", "adnet_gopro", "--file", str(reference), "--out", str(ckpt),
                     "--check-against", str(REFERENCE_IO)]) == 0
    manifest, _ = make_dataset(root / "data", size_hw=(76, 108), n_test=2, n_patches=4, patch=48)
    cfg = root / "export.yaml"
    cfg.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    assert cli_main(["export-onnx", "--checkpoint", str(ckpt), "--out", str(root / "export"), "--manifest",
                     str(manifest), "--no-tracking", "--config", str(cfg)]) == 0
    assert cli_main(["evaluate", "--checkpoint", str(ckpt), "--manifest", str(manifest), "--out",
                     str(root / "metrics/authors.json"), "--record", str(root / "metrics/authors.record.json"),
                     "--per-image", str(root / "metrics/authors.csv"), "--images", str(root / "metrics/authors"),
                     "--baselines", "--no-tracking"]) == 0
    return root


# ------------------------------------------------------------------------------------------------ the reader
def test_reader_reads_every_tensor_tensorflow_wrote_with_its_crc(reference):
    checkpoint = TFCheckpoint(reference)
    assert checkpoint.num_shards == 1 and len(checkpoint.entries) == 228
    for name, entry in checkpoint.entries.items():
        got = checkpoint.read(name)  # raises unless the rebuilt bytes carry TensorFlow's CRC32C
        assert got.dtype == np.float32 and got.shape == entry.shape
        np.testing.assert_array_equal(got, formula_value(name, entry.shape))


def test_prefix_index_and_data_shard_name_the_same_checkpoint(reference):
    prefix = reference.with_suffix("")
    shard = TFCheckpoint(reference).data_path(0)
    assert shard.name == "adnet_gopro.data-00000-of-00001"
    assert checkpoint_prefix(reference) == checkpoint_prefix(shard) == checkpoint_prefix(prefix) == prefix


# ----------------------------------------------------------------------------- the authors' released checkpoint
@pytest.mark.parametrize("release, index", [(GOPRO, RELEASE_INDEX), (DPDD, RELEASE_INDEX_DPDD)])
def test_each_released_index_holds_exactly_our_network_plus_adams_state(release, index):
    checkpoint = TFCheckpoint(index)
    assert git_blob_id(index) == release.git_blob  # the authors' file, byte for byte
    model = build_model(release.model_name, **release.model_args)
    layout = tf_layout(model)
    assert len(layout) == len(model.state_dict()) == 228
    for name, (key, shape) in layout.items():
        assert checkpoint.entries[name].shape == shape, name
        assert checkpoint.entries[name].dtype_name == "float32"
    rest = set(checkpoint.entries) - set(layout)
    assert rest == OPTIMIZER_SCALARS | {f"{n}/{slot}" for n in layout for slot in ("Adam", "Adam_1")}
    n_params = sum(int(np.prod(checkpoint.entries[n].shape)) for n in layout)
    assert n_params == sum(p.numel() for p in model.parameters()) == 6_907_057  # the model's docstring's count


@pytest.mark.parametrize("release, index", [(GOPRO, RELEASE_INDEX), (DPDD, RELEASE_INDEX_DPDD)])
def test_registry_sizes_and_urls_are_the_released_files(release, index):
    registry = load_registry(REPO / "config" / "datasets.yaml")
    entry, data = registry.weight(release.name), registry.weight(f"{release.name}_data")
    checkpoint = TFCheckpoint(index)
    assert entry.size == index.stat().st_size
    assert data.size == max(e.offset + e.size for e in checkpoint.entries.values()) == 82_884_696
    assert data.filename == f"{checkpoint_prefix(entry.filename)}.data-00000-of-00001"  # the shard beside the index
    assert all(u.endswith(f"/{release.commit}/{release.repository_path}") for u in entry.urls)
    assert all(u.endswith(f"/{release.commit}/{release.data_file[0]}") for u in data.urls)
    assert entry.sha256 is None and data.sha256 is None  # nothing published: trusted on first use


def test_the_defocus_release_is_scored_as_its_defocus_function_reads_dpdd():
    assert (DPDD.trained_on, DPDD.protocol, DPDD.model_args) == ("dpdd", "dpdd_single_8bit_pil", GOPRO.model_args)
    published = yaml.safe_load((REPO / "config" / "published.yaml").read_text())
    (entry,) = [e for e in published["entries"] if e["paper"] == "adnet" and e["dataset"] == "dpdd"]
    assert entry["protocol"] == DPDD.protocol and [r["psnr"] for r in entry["rows"]] == [25.22]


# ------------------------------------------------------------------------------------------------ exactness
def test_imported_model_reproduces_the_authors_graph_and_only_with_the_codes_options(imported):
    model, record = load_model(imported / "runs/authors/adnet_gopro/final.pt")
    check = record["provenance"]["reference_check"]
    assert check["passed"] and check["max_abs_diff"] < 1e-5 and check["size"] == "96x64"
    io = np.load(REFERENCE_IO)
    x = torch.from_numpy((io["c"] / 255.0).transpose(0, 3, 1, 2)).float()
    expected = io["output"].transpose(0, 3, 1, 2)
    misses = {}
    for option in ({"attention_order": "parallel"}, {"resize": "half_pixel"}):
        other = build_model("adnet", **{**record["model"]["args"], **option})
        other.load_state_dict(record["state_dict"])
        with torch.no_grad():
            misses[str(option)] = float(np.abs(other.predictions(x)[-1].numpy() - expected).max())
    assert min(misses.values()) > 1e-3, misses  # each of the code's two choices is needed to be exact
    with torch.no_grad():  # eval mode is the same network clamped to [0, 1], the model contract
        np.testing.assert_allclose(model(x).numpy(), np.clip(expected, 0, 1), atol=1e-5)


def test_model_file_and_phase_json_record_the_release_both_files_and_the_protocol(imported, reference):
    record = load_model_file(imported / "runs/authors/adnet_gopro/final.pt")
    assert record["model"] == {"name": "adnet", "args": GOPRO.model_args}
    assert record["protocol"] == "gopro_8bit" and record["recipe"] == "adnet" and record["dataset"] == "gopro"
    prov = record["provenance"]
    assert prov["file"] == str(reference) and prov["release_git_blob"] == GOPRO.git_blob
    assert prov["data"]["file"].endswith("adnet_gopro.data-00000-of-00001")
    assert prov["data"]["release_git_blob"] == GOPRO.data_file[1]
    assert prov["data"]["size"] == 27_628_228  # the reference's 228 tensors, no optimizer slots
    assert prov["matches_release"] is False  # a reference in the authors' format, not their bytes
    phase = json.loads((imported / "runs/authors/adnet_gopro/phase.json").read_text())
    assert phase["init"]["mode"] == "authors_release" and phase["provenance"]["data"] == prov["data"]


def test_export_keeps_the_tf1_resize_exact_at_sizes_not_used_at_export(imported):
    parity = json.loads((imported / "export/parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    assert any(not r["used_at_export"] for r in parity["sizes"])
    ops = json.loads((imported / "export/ops.json").read_text())
    assert ops["passed"] and "Resize" not in ops["operators"]  # TF1's resize is slicing and averaging here


def test_evaluate_takes_the_authors_protocol_from_the_file(imported):
    doc = json.loads((imported / "metrics/authors.record.json").read_text())
    assert doc["protocol_name"] == "gopro_8bit" and doc["model_name"] == "adnet" and doc["images"] == 2
    assert doc["weights_source"] == "authors' release" and doc["provenance"]["import"] == "adnet_gopro"
    assert doc["tiling"]["tile"] == 1280  # a GoPro frame runs whole, as the authors' test() runs it


# --------------------------------------------------------------------------------------------- bad inputs
def _import(tmp_path, index, capsys, *extra) -> str:
    out = tmp_path / "out/final.pt"
    assert cli_main(["import-weights", "adnet_gopro", "--file", str(index), "--out", str(out), *extra]) == 2
    assert not out.exists() and not out.with_name("phase.json").exists()
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    return err


def test_a_damaged_byte_in_the_data_shard_names_the_tensor(tmp_path, capsys):
    index = write_reference_checkpoint(tmp_path / "ck")
    checkpoint = TFCheckpoint(index)
    entry = checkpoint.entries["g_net/enc2_3/conv2d-2/weights"]
    with open(checkpoint.data_path(0), "r+b") as f:
        f.seek(entry.offset + 17)
        byte = f.read(1)
        f.seek(entry.offset + 17)
        f.write(bytes([byte[0] ^ 0x01]))
    assert "g_net/enc2_3/conv2d-2/weights fails its CRC32C check" in _import(tmp_path, index, capsys)


def test_a_truncated_or_missing_data_shard_is_named(tmp_path, capsys):
    index = write_reference_checkpoint(tmp_path / "ck")
    shard = TFCheckpoint(index).data_path(0)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    assert "truncated; fetch it again" in _import(tmp_path, index, capsys)
    shard.unlink()
    assert f"{shard}: missing" in _import(tmp_path, index, capsys)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-10], "no table magic"),              # cut short
    (lambda b: b[:200] + bytes([b[200] ^ 0x40]) + b[201:], "fails its CRC32C check; the index is damaged"),
    (lambda b: b"", "shorter than a table footer"),
])
def test_a_damaged_index_ends_in_one_line(tmp_path, capsys, damage, message):
    index = write_reference_checkpoint(tmp_path / "ck")
    index.write_bytes(damage(index.read_bytes()))
    assert message in _import(tmp_path, index, capsys)


def test_another_networks_checkpoint_names_the_variable_and_the_shape(reference):
    checkpoint = TFCheckpoint(reference)
    narrow = build_model("adnet", widths=(16, 32, 64))
    with pytest.raises(CheckpointError, match=r"g_net/enc1_1/weights has shape \(5, 5, 6, 32\), expected "
                                              r"\(5, 5, 6, 16\): another network"):
        GOPRO.to_state_dict(checkpoint, narrow, reference)
    checkpoint.entries["d_net/conv1/weights"] = checkpoint.entries["g_net/dec1_0/weights"]
    model = build_model(GOPRO.model_name, **GOPRO.model_args)
    with pytest.raises(CheckpointError, match="holds 'd_net/conv1/weights'"):
        GOPRO.to_state_dict(checkpoint, model, reference)
    del checkpoint.entries["d_net/conv1/weights"], checkpoint.entries["g_net/enc1_1/biases"]
    with pytest.raises(CheckpointError, match=r"no variable g_net/enc1_1/biases \(expected shape \(32,\)\)"):
        GOPRO.to_state_dict(checkpoint, model, reference)


def test_a_kpac_npz_or_a_missing_file_is_not_taken_for_a_checkpoint(tmp_path, capsys):
    npz = tmp_path / "single_2level.index"  # an npz under an index's name
    np.savez(npz.with_suffix(".npz"), params=np.zeros(3))
    shutil.move(npz.with_suffix(".npz"), npz)
    assert "no table magic" in _import(tmp_path, npz, capsys)
    assert "no TensorFlow checkpoint index" in _import(tmp_path, tmp_path / "nothing.index", capsys)
    out = tmp_path / "default/final.pt"  # no --file: the registry's file in --weights-dir, which is empty
    assert cli_main(["import-weights", "adnet_gopro", "--weights-dir", str(tmp_path / "empty"),
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "adnet_gopro.index: not there; get it with `python -m pipeline_src fetch adnet_gopro` and " \
           "`fetch adnet_gopro_data`" in err


def test_check_against_another_output_fails_and_writes_nothing(tmp_path, capsys, reference):
    io = dict(np.load(REFERENCE_IO))
    io["output"] = io["output"] + 0.01
    other = tmp_path / "other_io.npz"
    np.savez(other, **io)
    assert "differs from the authors' output by 0.01" in _import(tmp_path, reference, capsys,
                                                                 "--check-against", str(other))


# ------------------------------------------------------------------------------- fetch, then import by name
@pytest.fixture
def local_server(monkeypatch, tmp_path):
    """The reference checkpoint under the released files' names, served on 127.0.0.1."""
    served = tmp_path / "served"
    write_reference_checkpoint(served, stem="deblur.model-675000")
    with serve_folder(served, monkeypatch) as url:
        yield url, served


def test_fetch_both_files_then_import_by_name_reads_them_from_data_weights(tmp_path, local_server):
    url, served = local_server
    shipped = yaml.safe_load((REPO / "config" / "datasets.yaml").read_text())["weights"]
    weights = {}
    for name in ("adnet_gopro", "adnet_gopro_data"):  # the shipped entries, served from here at the fixture's size
        entry = dict(shipped[name])
        remote = entry["urls"][0].rsplit("/", 1)[1]
        entry.update(urls=[f"{url}/{remote}"], size=(served / remote).stat().st_size)
        weights[name] = entry
    registry = tmp_path / "datasets.yaml"
    registry.write_text(yaml.safe_dump({"datasets": {}, "weights": weights}))
    data = tmp_path / "data"
    for name in weights:
        assert cli_main(["fetch", name, "--registry", str(registry), "--root", str(data), "--retries", "1"]) == 0
    out = tmp_path / "runs/authors/adnet_gopro/final.pt"
    assert cli_main(["import-weights", "adnet_gopro", "--registry", str(registry), "--weights-dir",
                     str(data / "weights"), "--out", str(out), "--check-against", str(REFERENCE_IO)]) == 0
    prov = load_model_file(out)["provenance"]
    assert prov["file"] == str(data / "weights/adnet_gopro.index")
    assert prov["data"]["file"] == str(data / "weights/adnet_gopro.data-00000-of-00001")
    assert prov["reference_check"]["passed"]

