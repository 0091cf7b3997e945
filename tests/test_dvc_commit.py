"""`dvc-commit` refuses to record outputs built with other run parameters than config/params.yaml (what DVC
records); the end-to-end flow with real DVC is in tests/test_pipeline_e2e.py."""
import json

from pipeline_src.cli import main


def _outputs(data, preset, seed):
    (data / "raw/synth-defocus").mkdir(parents=True)
    (data / "raw/synth-defocus/meta.json").write_text(json.dumps({"generator": 1, "preset": preset, "seed": seed}))
    (data / "runs/kpac/synth-defocus/phase1").mkdir(parents=True)
    (data / "runs/kpac/synth-defocus/phase1/phase.json").write_text(json.dumps({"preset": preset, "seed": seed}))


def test_outputs_of_another_preset_are_refused_with_the_file_and_values(tmp_path, capsys):
    _outputs(tmp_path / "data", "smoke", 0)
    (tmp_path / "params.yaml").write_text("preset: default\nseed: 0\nengines: auto\ntracking: true\n")
    rc = main(["dvc-commit", "--params", str(tmp_path / "params.yaml"), "--data", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error: ") == 1
    assert "synth-defocus/meta.json: built with preset=smoke, but preset: default in the params file" in err
    assert "(and 1 more)" in err and "dvc commit" not in err


def test_matching_outputs_go_on_to_dvc_commit(tmp_path, capsys, monkeypatch):
    import subprocess

    _outputs(tmp_path / "data", "smoke", 3)
    (tmp_path / "params.yaml").write_text("preset: smoke\nseed: 3\n")
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert main(["dvc-commit", "train", "--params", str(tmp_path / "params.yaml"),
                 "--data", str(tmp_path / "data")]) == 0
    assert calls == [["dvc", "commit", "-f", "train"]]
