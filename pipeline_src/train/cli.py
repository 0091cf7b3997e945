"""Train one phase of one recipe on one dataset.

    python -m pipeline_src train --recipe config/models/kpac.yaml --phase 2 --dataset synth-defocus \
        --manifest data/manifests/synth-defocus.json --patches data/patches/synth-defocus \
        --out data/runs/kpac/synth-defocus/phase2

Writes `<out>/final.pt` (the trained model, atomically, at the end), `<out>/phase.json` (summary) and keeps
`<out>/last.pt` (full training state) for resuming: rerunning the same command after a crash or a kill
continues from it. Under `torchrun --nproc-per-node N` the same command trains with DDP.
"""
from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", required=True, type=Path, help="config/models/<recipe>.yaml")
    parser.add_argument("--phase", required=True, type=int, help="1-based phase number in the recipe")
    parser.add_argument("--dataset", required=True, help="dataset name (as in config/config.yaml)")
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--patches", required=True, type=Path, help="patch folder written by the patches stage")
    parser.add_argument("--out", required=True, type=Path, help="phase folder: final.pt, phase.json, last.pt")
    parser.add_argument("--curves", type=Path, default=None,
                        help="validation curve CSV, one row per validation (default: <out>/curves.csv; the DAG "
                             "writes data/metrics/train/<recipe>-<dataset>-phase<k>.csv for DVC plots)")
    parser.add_argument("--loss-curve", type=Path, default=None,
                        help="training loss CSV, one row per log line (default: <out>/loss.csv; the DAG writes "
                             "data/metrics/loss/<recipe>-<dataset>-phase<k>.csv)")
    parser.add_argument("--init-from", type=Path,
                        help="weights for a phase with `init: previous` (default: ../phase<k-1>/final.pt beside --out)")
    parser.add_argument("--weights-dir", type=Path, default=Path("data/weights"))
    # Preset and seed always come from the command line (the orchestrators pass the effective values), never
    # from config/config.yaml, which a `--config seed=1` override does not reach.
    parser.add_argument("--preset", required=True, help="smoke | default | paper")
    parser.add_argument("--option", default=None, help="a named option of the recipe, e.g. released_code")
    parser.add_argument("--seed", type=int, required=True, help="the pipeline's seed (config/config.yaml `seed`)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument("--restart", action="store_true", help="ignore <out>/last.pt and start the phase over")


def run(args) -> int:
    from pipeline_src.config import ConfigError, load_recipe
    from pipeline_src.tracking import config_tracking_flag, tracking_enabled
    from pipeline_src.train.runner import PhaseJob, run_phase

    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed}: expected a non-negative integer")
    recipe = load_recipe(args.recipe, args.preset, args.option)
    n_phases = len(recipe["phases"])
    if not 1 <= args.phase <= n_phases:
        raise ConfigError(f"{args.recipe} has phases 1..{n_phases}, not --phase {args.phase}")
    init_from = args.init_from
    if init_from is None and recipe["phases"][args.phase - 1]["init"] == "previous":
        init_from = args.out.parent / f"phase{args.phase - 1}" / "final.pt"
    job = PhaseJob(recipe=recipe, recipe_name=args.recipe.stem, phase=args.phase, dataset=args.dataset,
                   manifest=args.manifest, patches=args.patches, out_dir=args.out, prev_final=init_from,
                   weights_dir=args.weights_dir, seed=args.seed,
                   device=args.device, tracking=tracking_enabled(config_tracking_flag()) and not args.no_tracking,
                   restart=args.restart, extra_tags={"option": args.option or "paper"}, curves=args.curves,
                   loss_curve=args.loss_curve)
    summary = run_phase(job)
    val = summary["validation"]
    print(f"{args.out}: {summary['steps']} steps; " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))
    return 0
