"""The MLflow wrapper for DVC (one parent run around a command) and the tracking switches."""
import os
import subprocess
import sys

import pytest

from pipeline_src.tracking import NullTracker, flatten, start_run


def wrap(tmp_path, *cmd):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PIPELINE_TRACKING": "1",
           "PIPELINE_MLFLOW_EXPERIMENT": "wrap-test"}
    return subprocess.run([sys.executable, "-m", "pipeline_src", "mlflow-init", "--name", "dvc", "--", *cmd],
                          capture_output=True, text=True, env=env)


@pytest.mark.parametrize("exit_code,status", [(0, "FINISHED"), (3, "FAILED")])
def test_wrapped_command_sees_the_parent_and_its_status_closes_it(tmp_path, exit_code, status):
    from mlflow.tracking import MlflowClient

    r = wrap(tmp_path, "sh", "-c", f'echo "parent=$PIPELINE_PARENT_RUN_ID"; exit {exit_code}')
    assert r.returncode == exit_code
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("wrap-test").experiment_id])
    assert f"parent={run.info.run_id}" in r.stdout
    assert run.info.status == status and run.data.tags["pipeline.role"] == "invocation"


def test_tracking_off_never_touches_a_store(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_TRACKING", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker = start_run("x", tags={})
    assert isinstance(tracker, NullTracker) and tracker.run_id is None
    assert not (tmp_path / "mlflow.db").exists()


def test_nested_config_flattens_to_params():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": "1", "a.c": "[1, 2]", "d": "x"}


def test_the_experiment_is_tagged_for_mlflow_3s_model_training_view(tmp_path, monkeypatch):
    """Without mlflow.experimentKind, MLflow 3's UI opens the experiment on its GenAI overview."""
    from mlflow.tracking import MlflowClient

    from pipeline_src.tracking import ensure_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PIPELINE_MLFLOW_EXPERIMENT", "kind-test")
    exp_id = ensure_store(tmp_path)
    client = MlflowClient(uri)
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    client.set_experiment_tag(exp_id, "mlflow.experimentKind", "genai_development")  # a store of another version
    assert ensure_store(tmp_path) == exp_id
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
