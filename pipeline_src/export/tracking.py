"""One MLflow run per export step (ONNX export, precision variants, bundle), nested like every other stage's run.

The run holds the step's reports as metrics and artifacts, tagged with the checkpoint and the training run they
come from and with the sha256 of each ONNX file it wrote, so an engine on a device can be traced back to its
training. The ONNX files themselves go into MLflow once, with the bundle: logging them in the export and quantize
runs as well doubled `mlruns/` (ATTSF's three files are 607 MB).
The bundle step also registers the bundle in MLflow's Model Registry: one registered model per export name, a new
version per bundle, whose files are the bundle (ONNX variants, reports, manifest, device scripts), tagged with the
training run, the checkpoint and data hashes and the parity and quantization figures. A deployment engineer
fetches a version with `mlflow artifacts download -u models:/<name>/<version> -d <folder>`.
"""
from __future__ import annotations

from pathlib import Path


def log_export_step(name: str, *, tags: dict[str, str], metrics: dict[str, float], artifacts: list[Path],
                    enabled: bool = True) -> str | None:
    from pipeline_src.tracking import config_tracking_flag, start_run

    tracker = start_run(name, tags={"pipeline.role": "export", **tags}, enabled=enabled and config_tracking_flag())
    try:
        tracker.log_metrics({k: v for k, v in metrics.items() if v is not None}, step=0)
        for path in artifacts:
            if Path(path).is_file():
                tracker.log_artifact(path)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return tracker.run_id


def register_bundle(name: str, bundle_dir: Path, *, tags: dict[str, str], metrics: dict[str, float],
                    description: str, enabled: bool = True) -> tuple[str | None, str | None]:
    """Log the bundle folder as a run's artifacts and register it as a new version of model `name`.
    Returns (run id, model version), or (None, None) when tracking is off."""
    from pipeline_src.tracking import config_tracking_flag, start_run, tracking_uri

    tracker = start_run(f"bundle {name}", tags={"pipeline.role": "export", "stage": "bundle", **tags},
                        enabled=enabled and config_tracking_flag())
    if tracker.run_id is None:
        return None, None
    try:
        tracker.log_metrics({k: v for k, v in metrics.items() if v is not None}, step=0)
        tracker.log_artifacts(bundle_dir, "bundle")
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri())
        try:
            client.create_registered_model(name, description=description)
        except MlflowException as exc:  # registered by an earlier bundle: a new version follows
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{client.get_run(tracker.run_id).info.artifact_uri}/bundle"
        version = client.create_model_version(name, source=source, run_id=tracker.run_id, tags=tags,
                                              description=description)
        tracker.set_tags({"registered_model": name, "registered_model.version": str(version.version)})
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return tracker.run_id, str(version.version)
