"""`python -m pipeline_src <stage> ...`: one subcommand per pipeline stage.

Snakemake rules and DVC stages call exactly these commands with explicit input and output paths. Each stage
module exposes `add_arguments(parser)` and `run(args) -> int | None` and imports its heavy dependencies
(torch, mlflow, onnx) inside `run`, so that `--help` and the Snakefile's parse stay fast.

A fault the user can fix (pipeline_src.errors.PipelineError) ends in one line, `error: <message>`, and exit
code 2; a bug keeps its traceback. `--debug` or PIPELINE_DEBUG=1 shows the traceback of the former too.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from pipeline_src.errors import EXIT_USER_ERROR, PipelineError, one_line

DEBUG_ENV = "PIPELINE_DEBUG"

# stage name -> (module, one-line help). Order = order of the DAG.
STAGES: dict[str, tuple[str, str]] = {
    "fetch": ("pipeline_src.data.fetch", "download, verify and extract a registered dataset or weight file"),
    "weights": ("pipeline_src.data.weights_stage", "fetch the configured pretrained weights; record which are present"),
    "synthesize": ("pipeline_src.data.synthetic.cli", "generate a synthetic defocus / motion / detection dataset"),
    "index": ("pipeline_src.data.manifest", "validate a dataset tree and write its manifest (JSON)"),
    "patches": ("pipeline_src.data.patches", "cut sliding-window training patches into memory-mappable arrays"),
    "mlflow-init": ("pipeline_src.tracking", "create the MLflow store and experiment once, before parallel jobs"),
    "dvc-commit": ("pipeline_src.dvc_commit",
                   "record Snakemake's outputs in dvc.lock, if built with params.yaml's values"),
    "train": ("pipeline_src.train.cli", "run one training phase of one model on one dataset"),
    "import-weights": ("pipeline_src.weights_import.cli",
                       "import an author's released weights (KPAC npz) into a final.pt"),
    "evaluate": ("pipeline_src.evaluate.cli", "evaluate a checkpoint with its paper's protocol"),
    "report": ("pipeline_src.evaluate.report", "write the paper-versus-ours report and plots"),
    "export-onnx": ("pipeline_src.export.onnx_export", "export a checkpoint to ONNX with a parity check and op audit"),
    "quantize": ("pipeline_src.export.quantize", "make FP16 and INT8 (Q/DQ) ONNX variants and measure their drop"),
    "build-engine": ("pipeline_src.export.tensorrt_engine", "build and check a TensorRT engine for this GPU"),
    "bundle": ("pipeline_src.export.bundle", "assemble the edge bundle (ONNX variants, manifest, scripts)"),
    "bench-patches": ("pipeline_src.benchmarks.patch_reading", "benchmark: random patch reads, arrays vs PNG"),
    "bench-train": ("pipeline_src.benchmarks.train_throughput", "benchmark: phase runner vs a plain PyTorch loop"),
    "bench-latency": ("pipeline_src.benchmarks.latency", "benchmark: PyTorch vs ONNX Runtime (vs TensorRT) latency"),
    "bench-malloc": ("pipeline_src.benchmarks.malloc_tunables",
                     "benchmark: a stage with glibc's malloc defaults vs ours"),
    "run-summary": ("pipeline_src.benchmarks.run_summary", "where a Snakemake run's time, memory and disk went"),
}


def build_parser(stages: dict[str, tuple[str, str]] | None = None) -> argparse.ArgumentParser:
    stages = STAGES if stages is None else stages
    parser = argparse.ArgumentParser(
        prog="python -m pipeline_src",
        description="Stages of the blur-papers pipeline. Each is called by Snakemake and DVC alike.",
    )
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (module, help_text) in stages.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.add_argument("--debug", action="store_true",
                       help=f"on an error, show the full traceback (or set {DEBUG_ENV}=1)")
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Build only the requested stage's parser when one is named (faster, and a broken stage module
    # cannot break the others); the full parser for --help and errors.
    stages = STAGES
    if argv and argv[0] in STAGES:
        stages = {argv[0]: STAGES[argv[0]]}
    args = build_parser(stages).parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        rc = args._run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except PipelineError as exc:
        # A fault the user can fix: one line naming the culprit. Anything else is a bug and keeps its traceback.
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    return int(rc or 0)
