"""import-weights for the KPAC authors' npz files: exactness against the authors' TF graph, what the model file
and its phase.json record, and one-line errors for files of the wrong variant, truncated or wrongly shaped."""
from __future__ import annotations

import inspect
import json
import subprocess

import numpy as np
import pytest
import torch

from pipeline_src.cli import main as cli_main
from pipeline_src.fileio import sha256_file
from pipeline_src.model_io import load_model, load_model_file
from pipeline_src.models import build_model
from pipeline_src.models.kpac import KPAC
from pipeline_src.weights_import import IMPORTS
from pipeline_src.weights_import.kpac import authors_layout
from pipeline_src.weights_import.provenance import git_blob_id
from pipeline_src.weights_import.tensorlayer_npz import read_tensorlayer_npz
from tests.weights_import.helpers import CASES, FIXTURES, fixture, write_params

torch.set_num_threads(1)
TRAIN_PHASE_JSON_KEYS = {"paper", "recipe", "dataset", "phase", "phase_name", "preset", "steps", "total_steps",
                         "validation", "init", "final_state_digest", "mlflow_run_id"}  # train/runner.py _finish


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Each fixture file imported through the real CLI, checked against its reference output: NAME -> final.pt."""
    root = tmp_path_factory.mktemp("imported")
    out = {}
    for name, (stem, _) in CASES.items():
        out[name] = root / name / "final.pt"
        assert cli_main(["import-weights", name, "--file", str(fixture(stem)), "--out", str(out[name]),
                         "--check-against", str(FIXTURES / f"{stem}_io.npz")]) == 0
    return out


def _authors_io(stem: str, views) -> tuple[torch.Tensor, np.ndarray]:
    """The fixture's input as the model contract takes it ([0, 1], views concatenated) and the authors' output
    in [0, 1] image units ((y + 1) / 2 of their [-1, 1] output, global residual included, not clipped)."""
    io = np.load(FIXTURES / f"{stem}_io.npz")
    x = np.concatenate([io[v] for v in views], axis=3) / 255.0
    return torch.from_numpy(x.transpose(0, 3, 1, 2)).float(), (io["output"][0] + 1.0) / 2.0


@pytest.mark.parametrize("name", list(CASES))
def test_imported_model_reproduces_the_authors_graph_within_1e5(imported, name):
    stem, views = CASES[name]
    model, record = load_model(imported[name])
    x, expected = _authors_io(stem, views)
    with torch.no_grad():
        got = model(x)[0].permute(1, 2, 0).numpy()
    assert got.shape == expected.shape == (64, 96, 3)
    assert np.abs(got - expected).max() < 1e-5
    # the stride-2 padding is what makes it exact: the same weights padded symmetrically are far off
    symmetric = build_model(record["model"]["name"], **{**record["model"]["args"], "stride2_padding": "symmetric"})
    symmetric.load_state_dict(record["state_dict"])
    with torch.no_grad():
        off = symmetric.eval()(x)[0].permute(1, 2, 0).numpy()
    assert np.abs(off - expected).max() > 1e-3


@pytest.mark.parametrize("name,model_name,levels,protocol,recipe", [
    ("kpac_single_2level", "kpac", 2, "dpdd_single_8bit", "kpac"),
    ("kpac_single_3level", "kpac", 3, "dpdd_single_8bit", "kpac"),
    ("kpac_dual", "kpac_dual", 3, "dpdd_dual_8bit", "kpac_dual"),
])
def test_model_file_records_every_argument_the_protocol_and_the_provenance(imported, name, model_name, levels,
                                                                           protocol, recipe):
    stem, views = CASES[name]
    record = load_model_file(imported[name])
    args = record["model"]["args"]
    assert record["model"]["name"] == model_name and args["levels"] == levels
    assert args["stride2_padding"] == "tf_same"
    # every constructor argument is written down, so a later default change cannot change the network
    assert set(inspect.signature(KPAC.__init__).parameters) - {"self"} == set(args)
    assert record["input_views"] == list(views) and record["size_multiple"] == 2 ** levels
    assert record["protocol"] == protocol and record["recipe"] == recipe and record["paper"] == "kpac"
    assert record["dataset"] == "dpdd" and record["phase"] is None and record["step"] is None
    prov = record["provenance"]
    assert prov["source"] == "authors' release" and prov["import"] == name
    assert prov["sha256"] == sha256_file(fixture(stem)) and prov["file"] == str(fixture(stem))
    assert prov["repository"] == "https://github.com/HyeongseokSon1/KPAC"
    assert prov["repository_path"] == f"pretrained/{stem}.npz"
    # the fixtures are random weights in the authors' format, not the released bytes: recorded as such
    assert prov["file_git_blob"] == git_blob_id(fixture(stem)) != prov["release_git_blob"]
    assert prov["matches_release"] is False
    check = prov["reference_check"]
    assert check["passed"] and check["max_abs_diff"] < 1e-5 and check["size"] == "96x64"
    assert check["file"] == str(FIXTURES / f"{stem}_io.npz")
    assert record["init"] == {"mode": "authors_release", "path": str(fixture(stem)), "sha256": prov["sha256"],
                              "state_digest": record["init"]["state_digest"]}


@pytest.mark.parametrize("name", list(CASES))
def test_phase_json_beside_it_has_a_training_phases_keys_and_the_same_provenance(imported, name):
    from pipeline_src.train.runner import state_digest

    phase = json.loads(imported[name].with_name("phase.json").read_text())
    record = load_model_file(imported[name])
    assert TRAIN_PHASE_JSON_KEYS <= set(phase)
    assert phase["provenance"] == record["provenance"] and phase["protocol"] == record["protocol"]
    assert phase["phase_name"] == "authors' release" and phase["steps"] is None and phase["validation"] == {}
    model, _ = load_model(imported[name])
    assert phase["final_state_digest"] == phase["init"]["state_digest"] == state_digest(model)
    assert phase["model"] == record["model"]


@pytest.mark.parametrize("name", list(CASES))
def test_layout_names_every_parameter_once_and_matches_the_files_array_count(name):
    spec = IMPORTS.build(name)
    layout = authors_layout(spec.model_args["levels"])
    model = build_model(spec.model_name, **spec.model_args)
    assert sorted(p.torch_key for p in layout) == sorted(model.state_dict())
    assert len({p.tl_name for p in layout}) == len(layout)
    assert len(read_tensorlayer_npz(fixture(CASES[name][0]))) == len(layout)
    assert layout[0].tl_name == "deblur_net/deblur/c0/W_conv2d"


def test_git_blob_id_is_what_git_computes():
    path = fixture("single_2level")
    git = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    assert git_blob_id(path) == git


# ------------------------------------------------------------------------------------------------ errors
def _import_fails(capsys, name, file, out) -> str:
    assert cli_main(["import-weights", name, "--file", str(file), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not out.exists() and not out.with_name("phase.json").exists()
    return err


@pytest.mark.parametrize("name,stem,array,shape,other", [
    ("kpac_single_3level", "single_2level", "deblur_net/deblur/c4/W_conv2d", "(3, 3, 96, 96)", "kpac_single_2level"),
    ("kpac_single_2level", "single_3level", "deblur_net/dc1/0/filter", "(5, 5, 96, 48)", "kpac_single_3level"),
    ("kpac_dual", "single_3level", "deblur_net/deblur/c0/W_conv2d", "(5, 5, 6, 48)", "kpac_single_3level"),
    ("kpac_single_3level", "dual", "deblur_net/deblur/c0/W_conv2d", "(5, 5, 3, 48)", "kpac_dual"),
])
def test_a_file_of_another_variant_names_the_array_the_expected_shape_and_the_right_name(
        tmp_path, capsys, name, stem, array, shape, other):
    err = _import_fails(capsys, name, fixture(stem), tmp_path / "final.pt")
    assert f"should be {array} with shape {shape}" in err
    assert f"its arrays match {other}: import it under that name" in err


def test_a_truncated_array_list_names_the_first_missing_array(tmp_path, capsys):
    arrays = read_tensorlayer_npz(fixture("single_2level"))
    path = write_params(tmp_path / "short.npz", arrays[:30])
    err = _import_fails(capsys, "kpac_single_2level", path, tmp_path / "final.pt")
    layout = authors_layout(2)
    assert f"has 30 arrays, kpac_single_2level needs 58; missing {layout[30].tl_name} (expected shape " \
           f"{tuple(arrays[30].shape)})" in err


def test_a_wrongly_shaped_array_is_named_with_its_expected_shape(tmp_path, capsys):
    arrays = read_tensorlayer_npz(fixture("single_2level"))
    arrays[19] = np.ascontiguousarray(arrays[19][:, :4])  # a damaged kernel of block 0's 4th scale-attention conv
    path = write_params(tmp_path / "bent.npz", arrays)
    err = _import_fails(capsys, "kpac_single_2level", path, tmp_path / "final.pt")
    assert "array 19 should be deblur_net/sca_dc4/0/filter with shape (5, 5, 16, 16), found (5, 4, 16, 16)" in err


def test_extra_arrays_and_non_finite_values_are_refused(tmp_path, capsys):
    arrays = read_tensorlayer_npz(fixture("single_2level"))
    err = _import_fails(capsys, "kpac_single_2level", write_params(tmp_path / "long.npz", arrays + [arrays[-1]]),
                        tmp_path / "final.pt")
    assert "has 59 arrays, kpac_single_2level has 58 (the last is deblur_net/deblur/d2_2/b_conv2d)" in err
    arrays[3] = arrays[3].copy()
    arrays[3][0] = np.nan
    err = _import_fails(capsys, "kpac_single_2level", write_params(tmp_path / "nan.npz", arrays),
                        tmp_path / "final.pt")
    assert "deblur_net/deblur/c0_2/b_conv2d holds NaN or infinite values" in err


def test_a_truncated_file_and_a_bad_out_path_end_in_one_line(tmp_path, capsys):
    data = fixture("dual").read_bytes()
    (tmp_path / "dual.npz").write_bytes(data[: len(data) - 1000])
    err = _import_fails(capsys, "kpac_dual", tmp_path / "dual.npz", tmp_path / "final.pt")
    assert "dual.npz: not a readable npz (zip) file" in err
    err = _import_fails(capsys, "kpac_dual", fixture("dual"), tmp_path / "outdir")
    assert "--out" in err and "ending in .pt" in err


def test_check_against_another_graphs_output_fails_and_writes_nothing(tmp_path, capsys):
    err = _import_fails_with(capsys, ["import-weights", "kpac_single_3level", "--file", str(fixture("single_3level")),
                                      "--check-against", str(FIXTURES / "single_2level_io.npz")], tmp_path)
    assert "single_2level_io.npz: the imported model differs from the authors' output by" in err
    reference = tmp_path / "no_views.npz"
    np.savez(reference, output=np.zeros((1, 8, 8, 3), np.float32))
    err = _import_fails_with(capsys, ["import-weights", "kpac_dual", "--file", str(fixture("dual")),
                                      "--check-against", str(reference)], tmp_path)
    assert "no_views.npz: no array 'l'; a reference holds the views ['l', 'r', 'c'] and `output`" in err


def _import_fails_with(capsys, argv, tmp_path) -> str:
    out = tmp_path / "final.pt"
    assert cli_main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and not out.exists()
    return err


def test_tracking_on_records_the_provenance_in_an_mlflow_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("PIPELINE_TRACKING", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PIPELINE_MLFLOW_EXPERIMENT", "import-test")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run" / "final.pt"
    assert cli_main(["import-weights", "kpac_single_2level", "--file", str(fixture("single_2level")),
                     "--check-against", str(FIXTURES / "single_2level_io.npz"), "--out", str(out)]) == 0
    record = load_model_file(out)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("import-test").experiment_id])
    assert record["mlflow_run_id"] == run.info.run_id and run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    assert tags["source"] == "authors' release" and tags["pipeline.role"] == "import-weights"
    assert tags["weights.sha256"] == sha256_file(fixture("single_2level")) and tags["protocol"] == "dpdd_single_8bit"
    assert params["provenance.repository"] == "https://github.com/HyeongseokSon1/KPAC"
    assert params["model.args.stride2_padding"] == "tf_same"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["phase.json"]
    assert run.data.metrics["reference/max_abs_diff"] == record["provenance"]["reference_check"]["max_abs_diff"]


def test_a_kill_before_final_pt_is_committed_leaves_no_model_file_and_a_rerun_completes(tmp_path):
    """final.pt is the marker of the set: killed just before its rename, no final.pt exists (phase.json may)."""
    import os
    import sys

    out = tmp_path / "authors" / "final.pt"
    cmd = [sys.executable, "-m", "pipeline_src", "import-weights", "kpac_single_2level",
           "--file", str(fixture("single_2level")), "--out", str(out)]
    env = {**os.environ, "PIPELINE_TRACKING": "0", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(cmd, env={**env, "PIPELINE_KILL_AT": "2"}, capture_output=True, text=True)
    assert killed.returncode == -9 and not out.exists()
    assert subprocess.run(cmd, env=env, capture_output=True, text=True).returncode == 0
    assert load_model_file(out)["provenance"]["import"] == "kpac_single_2level"
    assert sorted(p.name for p in out.parent.iterdir()) == ["final.pt", "phase.json"]  # no temporary left over
