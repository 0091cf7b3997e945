"""MLflow tracking: the store, the parent run of a pipeline invocation, and one run per stage job.

- Store: MLflow's own SQLite file `mlflow.db` at the project root (artifacts in `mlruns/` beside it), or
  wherever `MLFLOW_TRACKING_URI` points. A fresh SQLite store crashes when several processes run its schema
  migrations at once, so `ensure_store` creates schema and experiment under an exclusive file lock: the first
  process migrates, the others wait and find it ready. Snakemake's `onstart` calls it before any job starts;
  every job calls it again (cheap once the store exists), which also covers `dvc repro` and single-rule runs.
- Nesting: the parent run's id travels in `PIPELINE_PARENT_RUN_ID` (not `MLFLOW_RUN_ID`, which would make every
  child resume the parent). Children work without a parent too.
- Tracking off (`tracking: false` in config/params.yaml or `PIPELINE_TRACKING=0`): `NullTracker`, and mlflow is
  never imported (the GPU hosts have no mlflow installed).
`import mlflow` costs over a second, so it happens inside functions only.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline_src.config import project_root

EXPERIMENT_ENV = "PIPELINE_MLFLOW_EXPERIMENT"
# MLflow 3's UI opens an experiment by its kind; without this tag it shows the GenAI overview, not the runs table
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
PARENT_ENV = "PIPELINE_PARENT_RUN_ID"
DEFAULT_EXPERIMENT = "blur-papers"


def tracking_enabled(config_flag: bool = True) -> bool:
    return config_flag and os.environ.get("PIPELINE_TRACKING", "1").lower() not in ("0", "false", "off", "no")


def config_tracking_flag(root: Path | None = None) -> bool:
    """config/params.yaml's `tracking:` (true where there is no project config, e.g. a lone checkpoint). A
    Snakemake `--config tracking=false` reaches the jobs as PIPELINE_TRACKING=0 instead (common.smk)."""
    import yaml

    config = (root or project_root()) / "config" / "params.yaml"
    return bool(yaml.safe_load(config.read_text()).get("tracking", True)) if config.is_file() else True


def tracking_uri(root: Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = root or project_root()
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def experiment_name() -> str:
    return os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    if uri.startswith("sqlite:///"):
        lock_path = Path(uri[len("sqlite:///"):] + ".lock")
    else:  # a server: its own database handles concurrency; the lock only orders this host's processes
        lock_path = Path(tempfile.gettempdir()) / "pipeline_src-mlflow.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_store(root: Path | None = None) -> str:
    """Create the store's schema and the experiment once; return the experiment id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    root = root or project_root()
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    with _store_lock(uri):
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment_name())
        if exp is not None:
            for key, value in EXPERIMENT_TAGS.items():  # a store made by an older version
                if exp.tags.get(key) != value:
                    client.set_experiment_tag(exp.experiment_id, key, value)
            return exp.experiment_id
        # artifacts beside the SQLite file (mlruns/), so a store and its images move together
        artifacts = (Path(uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri() \
            if uri.startswith("sqlite:///") else None
        return client.create_experiment(experiment_name(), artifact_location=artifacts, tags=EXPERIMENT_TAGS)


def git_state(root: Path) -> dict[str, str]:
    def git(*args):
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit or "unknown", "git.dirty": str(bool(dirty)).lower() if commit else "unknown"}


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"} for MLflow params (values as text, lists as JSON)."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(d) if isinstance(d, (list, tuple)) else str(d)
    return out


class NullTracker:
    """Tracking switched off: every call is accepted and nothing is recorded."""
    run_id = None

    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def log_artifacts(self, folder: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def log_dict(self, obj: dict, name: str) -> None: ...
    def log_image(self, image: np.ndarray, name: str) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(NullTracker):
    def __init__(self, run_id: str, uri: str):
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient(uri)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, v[:6000]) for k, v in flatten(params).items() if k not in existing]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path, artifact_path=None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder, artifact_path=None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_dict(self, obj: dict, name: str) -> None:
        self.client.log_dict(self.run_id, obj, name)

    def log_image(self, image: np.ndarray, name: str) -> None:
        self.client.log_image(self.run_id, image, artifact_file=name)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def start_run(name: str, *, tags: dict[str, str], enabled: bool = True, resume_run_id: str | None = None,
              root: Path | None = None) -> NullTracker:
    """One run per stage job, nested under the pipeline's parent run when there is one; resumes a run by id
    (a training phase restarted after a kill continues its run)."""
    if not tracking_enabled(enabled):
        return NullTracker()
    from mlflow.tracking import MlflowClient

    root = root or project_root()
    uri = tracking_uri(root)
    exp_id = ensure_store(root)
    client = MlflowClient(uri)
    if resume_run_id:
        client.update_run(resume_run_id, status="RUNNING")
        tracker = MlflowTracker(resume_run_id, uri)
    else:
        all_tags = {"mlflow.runName": name, **git_state(root), **tags}
        parent = os.environ.get(PARENT_ENV)
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = client.create_run(exp_id, tags=all_tags, run_name=name)
        tracker = MlflowTracker(run.info.run_id, uri)
    return tracker


# ------------------------------------------------------------------------------------------ the stage
def add_arguments(parser) -> None:
    parser.add_argument("--name", default="pipeline", help="name of the parent run (with a command)")
    parser.add_argument("command", nargs="*", metavar="-- CMD",
                        help="optional: create a parent run, run CMD (e.g. `-- dvc repro`) with PIPELINE_PARENT_RUN_ID "
                             "set so every stage's run nests under it, then close the parent with CMD's status")


def start_parent(name: str, root: Path | None = None) -> str:
    from mlflow.tracking import MlflowClient

    root = root or project_root()
    exp_id = ensure_store(root)
    client = MlflowClient(tracking_uri(root))
    run = client.create_run(exp_id, tags={"mlflow.runName": name, "pipeline.role": "invocation",
                                          **git_state(root)}, run_name=name)
    return run.info.run_id


def end_parent(run_id: str, ok: bool, root: Path | None = None) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri(root or project_root())).set_terminated(run_id, "FINISHED" if ok else "FAILED")


def run(args) -> int:
    cmd = list(args.command)
    if not tracking_enabled(config_tracking_flag()):
        print("tracking is off (config `tracking: false` or PIPELINE_TRACKING=0): no MLflow store touched")
        return subprocess.call(cmd) if cmd else 0
    exp_id = ensure_store()
    print(f"MLflow store {tracking_uri()} ready, experiment {experiment_name()!r} (id {exp_id})")
    if not cmd:
        return 0
    parent = start_parent(args.name)
    print(f"parent run {parent}: {' '.join(cmd)}", file=sys.stderr)
    rc = subprocess.call(cmd, env={**os.environ, PARENT_ENV: parent})
    end_parent(parent, rc == 0)
    return rc
