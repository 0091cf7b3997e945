"""Generate a physically motivated synthetic dataset in a real dataset's layout.

    python -m pipeline_src synthesize defocus   --preset default --seed 0 --out data/raw/synth-defocus
    python -m pipeline_src synthesize motion    --preset default --seed 0 --out data/raw/synth-motion
    python -m pipeline_src synthesize detection --preset default --seed 0 --out data/raw/synth-detection

defocus = DPDD layout (dual-pixel views, 16-bit, plus signed CoC maps), motion = GoPro layout, detection =
CUHK layout (in-focus = 255). Sizes and counts come from the preset's `synthesize` section in
config/presets.yaml. The same seed and preset give byte-identical files, whatever --workers is.
"""
from __future__ import annotations

import argparse
import os

from pipeline_src.data.synthetic.params import KIND_SPLITS, SynthConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=sorted(KIND_SPLITS), help="which dataset to generate")
    parser.add_argument("--preset", required=True, help="scale preset in the presets file: smoke, default or paper")
    parser.add_argument("--seed", type=int, default=0, help="non-negative integer; same seed = same bytes")
    parser.add_argument("--out", required=True, help="dataset folder to create (replaced once complete)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes rendering images in parallel (default: all cores)")
    parser.add_argument("--presets", default="config/presets.yaml", help="presets file (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from pipeline_src.data.synthetic.generate import generate_dataset
    from pipeline_src.data.synthetic.params import load_preset

    if args.seed < 0:
        raise SynthConfigError(f"--seed {args.seed}: expected a non-negative integer")
    if args.workers < 1:
        raise SynthConfigError(f"--workers {args.workers}: expected at least 1")
    spec, physics = load_preset(args.presets, args.preset, args.kind)
    meta = generate_dataset(args.kind, spec, physics, args.seed, args.out, workers=args.workers, preset=args.preset)
    counts = ", ".join(f"{split} {n}" for split, n in meta["counts"].items())
    print(f"{args.out}: synthetic {args.kind} ({args.preset}, seed {args.seed}, "
          f"{spec.height}x{spec.width}): {counts}")
    return 0
