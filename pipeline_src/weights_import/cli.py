"""Import a paper's released weights into a model file later stages take like a trained one.

    python -m pipeline_src import-weights kpac_single_2level --file data/weights/kpac_single_2level.npz \
        --out data/runs/kpac/dpdd-authors/final.pt
    python -m pipeline_src import-weights adnet_gopro --out data/runs/authors/adnet_gopro/final.pt

Without --file, the file `fetch NAME` puts in data/weights/ (the registry's filename) is read. Reads the released
file safely (no pickled code runs; a TensorFlow checkpoint's index and data shard by hand, every tensor's CRC32C
checked), checks every array's name, shape and values against the model, and writes, together
(fileio.output_set, final.pt last):
- `final.pt`: the model_io format (model name and every constructor argument, state dict, input views, ...)
  plus `recipe`, `protocol` (the one the authors' evaluation used, so `evaluate` picks it) and `provenance`
  (source "authors' release", file, sha256, git blob check, repository, commit);
- `phase.json` beside it: the keys a training phase's phase.json has (phase, steps and validation are null or
  empty: nothing was trained here), with `init.mode` "authors_release" and the same `provenance`.
With `--check-against IO_NPZ` (an input and the authors' graph's output on it, reference_check.py) the import
fails unless it reproduces that output within 1e-5, and the difference is recorded in the provenance.
With tracking on, an MLflow run `import-weights/<NAME>` records the provenance as params and tags and
phase.json as an artifact; its id is the model file's `mlflow_run_id`, so evaluations link to it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline_src.weights_import import AUTHORS_RELEASE, IMPORTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=IMPORTS.names(), metavar="NAME",
                        help=f"the release to import: {', '.join(IMPORTS.names())}")
    parser.add_argument("--file", type=Path,
                        help="the released file, e.g. data/weights/kpac_single_2level.npz, or a TensorFlow "
                             "checkpoint's .index with its data shard beside it (default: the file `fetch NAME` "
                             "puts in --weights-dir)")
    parser.add_argument("--weights-dir", type=Path, default=Path("data/weights"),
                        help="where `fetch` puts weight files (default: %(default)s)")
    parser.add_argument("--registry", type=Path, default=Path("config/datasets.yaml"),
                        help="the registry naming each release's file (default: %(default)s)")
    parser.add_argument("--out", required=True, type=Path, help="the model file to write, e.g. data/runs/kpac/"
                                                                "dpdd-authors/final.pt (phase.json goes beside it)")
    parser.add_argument("--check-against", type=Path, metavar="IO_NPZ",
                        help="an npz of one input and the authors' graph's output on it (views c[, l, r] in 0..255, "
                             "`output` in [-1, 1] or in its `output_range`): fail unless the import matches it "
                             "within 1e-5 in [0, 1] units; the difference is recorded")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def run(args: argparse.Namespace) -> int:
    from pipeline_src.errors import PipelineError
    from pipeline_src.tracking import config_tracking_flag, start_run, tracking_enabled

    if args.out.suffix != ".pt":
        raise PipelineError(f"--out {args.out}: expected the model file's path ending in .pt, e.g. "
                            f"data/runs/kpac/dpdd-authors/final.pt")
    spec = IMPORTS.build(args.name)
    if args.file is None:
        from pipeline_src.data.registry import load_registry

        args.file = args.weights_dir / load_registry(args.registry).weight(spec.name).filename
        if not args.file.is_file():
            raise PipelineError(f"{args.file}: not there; get it with `python -m pipeline_src fetch {spec.name}`"
                                + (f" and `fetch {spec.name}_data`" if spec.data_file else "") + ", or pass --file")
    model, provenance, digest = import_release(spec, args.file, args.check_against)
    tags = {"pipeline.role": "import-weights", "paper": spec.paper, "recipe": spec.recipe, "import": spec.name,
            "source": AUTHORS_RELEASE, "protocol": spec.protocol, "weights.sha256": provenance["sha256"],
            "weights.matches_release": str(provenance["matches_release"]).lower(), "dataset": spec.trained_on}
    tracker = start_run(f"import-weights/{spec.name}", tags=tags,
                        enabled=tracking_enabled(config_tracking_flag()) and not args.no_tracking)
    try:
        tracker.log_params({"model": {"name": spec.model_name, "args": spec.model_args}, "provenance": provenance})
        if provenance["reference_check"]:
            tracker.log_metrics({"reference/max_abs_diff": provenance["reference_check"]["max_abs_diff"]}, step=0)
        summary = write_import(args.out, spec, model, provenance, digest, tracker.run_id)
        tracker.log_artifact(args.out.with_name("phase.json"))
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    released = ("the released bytes (git blob matches)" if provenance["matches_release"] else
                f"NOT the released bytes: git blob {provenance['file_git_blob'][:12]}, the release's is "
                f"{provenance['release_git_blob'][:12]}")
    check = provenance["reference_check"]
    checked = (f"; max |diff| {check['max_abs_diff']:.2g} against {check['file']} at {check['size']}"
               if check else "")
    print(f"{args.out}: {spec.name} from {args.file} (sha256 {provenance['sha256'][:12]}; {released}); model "
          f"{spec.model_name} {spec.model_args}; evaluate with protocol {spec.protocol}; digest "
          f"{summary['final_state_digest'][:12]}{checked}")
    return 0


def import_release(spec, path: Path, check_against: Path | None = None):
    """(model with the released weights, provenance, state digest); every fault is a CheckpointError."""
    from pipeline_src.models import build_model
    from pipeline_src.train.runner import state_digest
    from pipeline_src.weights_import.provenance import provenance_record
    from pipeline_src.weights_import.reference_check import check_against_reference
    from pipeline_src.weights_import.tensorlayer_npz import read_tensorlayer_npz
    from pipeline_src.weights_import.tf_checkpoint import TFCheckpoint

    if spec.format == "tf_checkpoint":
        contents = TFCheckpoint(path)
        path = contents.index_path  # PREFIX, PREFIX.index or a data shard given: the provenance names the index
    else:
        contents = read_tensorlayer_npz(path)
    model = build_model(spec.model_name, **spec.model_args)
    model.load_state_dict(spec.to_state_dict(contents, model, path), strict=True)
    model.eval()
    provenance = provenance_record(spec, path)
    provenance["reference_check"] = (check_against_reference(model, check_against, raw_output=spec.raw_output)
                                     if check_against else None)
    return model, provenance, state_digest(model)


def write_import(out: Path, spec, model, provenance: dict, digest: str, run_id: str | None) -> dict:
    """final.pt and phase.json beside it, written as one set (final.pt, the file later stages read, last)."""
    import json

    import torch

    from pipeline_src.fileio import output_set
    from pipeline_src.model_io import model_record

    init = {"mode": "authors_release", "path": provenance["file"], "sha256": provenance["sha256"],
            "state_digest": digest}
    config = {"source": AUTHORS_RELEASE, "import": spec.name, "paper": spec.paper, "recipe": spec.recipe,
              "protocol": spec.protocol, "preset": None, "model": {"name": spec.model_name, "args": spec.model_args}}
    record = model_record(model, spec.model_name, spec.model_args)
    record.update(paper=spec.paper, recipe=spec.recipe, dataset=spec.trained_on, phase=None, step=None,
                  config=config, mlflow_run_id=run_id, init=init, protocol=spec.protocol, provenance=provenance)
    summary = {"paper": spec.paper, "recipe": spec.recipe, "dataset": spec.trained_on, "phase": None,
               "phase_name": AUTHORS_RELEASE, "preset": None, "steps": None, "total_steps": None, "validation": {},
               "init": init, "final_state_digest": digest, "mlflow_run_id": run_id, "protocol": spec.protocol,
               "model": {"name": spec.model_name, "args": spec.model_args}, "provenance": provenance}
    phase_json = out.with_name("phase.json")
    with output_set([phase_json, out]) as tmp:
        tmp[phase_json].write_text(json.dumps(summary, indent=2) + "\n")
        torch.save(record, tmp[out])
    return summary
