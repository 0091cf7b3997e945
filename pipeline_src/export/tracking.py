"""One MLflow run per export step (ONNX export, precision variants), nested like every other stage's run.

The run holds the step's reports as metrics and artifacts and the ONNX files themselves, tagged with the
checkpoint and the training run they come from, so an engine on a device can be traced back to its training.
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
