"""Train one phase of one recipe on one dataset.

    python -m pipeline_src train --recipe config/models/kpac.yaml --phase 2 --dataset synth-defocus \
        --manifest data/manifests/synth-defocus.json --patches data/patches/synth-defocus \
        --out data/runs/kpac/synth-defocus/phase2

Writes `<out>/final.pt` (the trained model, atomically, at the end), `<out>/phase.json` (summary) and keeps
`<out>/last.pt` (full training state) for resuming: rerunning the same command after a crash or a kill
continues from it. Under `torchrun --nproc-per-node N` the same command trains with DDP.
"""
from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", required=True, type=Path, help="config/models/<recipe>.yaml")
    parser.add_argument("--phase", required=True, type=int, help="1-based phase number in the recipe")
    parser.add_argument("--dataset", required=True, help="dataset name (as in config/config.yaml)")
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--patches", required=True, type=Path, help="patch folder written by the patches stage")
    parser.add_argument("--out", required=True, type=Path, help="phase folder: final.pt, phase.json, last.pt")
    parser.add_argument("--init-from", type=Path,
                        help="weights for a phase with `init: previous` (default: ../phase<k-1>/final.pt beside --out)")
    parser.add_argument("--weights-dir", type=Path, default=Path("data/weights"))
    parser.add_argument("--preset", default=None, help="smoke | default | paper (default: config/config.yaml)")
    parser.add_argument("--option", default=None, help="a named option of the recipe, e.g. released_code")
    parser.add_argument("--seed", type=int, default=None, help="default: config/config.yaml")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument("--restart", action="store_true", help="ignore <out>/last.pt and start the phase over")


def run(args) -> int:
    from pipeline_src.config import load_pipeline_config, load_recipe, project_root
    from pipeline_src.tracking import tracking_enabled
    from pipeline_src.train.runner import PhaseJob, run_phase

    cfg = load_pipeline_config(project_root() / "config" / "config.yaml")
    preset = args.preset or cfg["preset"]
    recipe = load_recipe(args.recipe, preset, args.option)
    n_phases = len(recipe["phases"])
    if not 1 <= args.phase <= n_phases:
        print(f"error: {args.recipe} has phases 1..{n_phases}, not {args.phase}", file=sys.stderr)
        return 2
    init_from = args.init_from
    if init_from is None and recipe["phases"][args.phase - 1]["init"] == "previous":
        init_from = args.out.parent / f"phase{args.phase - 1}" / "final.pt"
    job = PhaseJob(recipe=recipe, recipe_name=args.recipe.stem, phase=args.phase, dataset=args.dataset,
                   manifest=args.manifest, patches=args.patches, out_dir=args.out, prev_final=init_from,
                   weights_dir=args.weights_dir, seed=cfg["seed"] if args.seed is None else args.seed,
                   device=args.device, tracking=tracking_enabled(cfg["tracking"]) and not args.no_tracking,
                   restart=args.restart, extra_tags={"option": args.option or "paper"})
    summary = run_phase(job)
    val = summary["validation"]
    print(f"{args.out}: {summary['steps']} steps; " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))
    return 0
