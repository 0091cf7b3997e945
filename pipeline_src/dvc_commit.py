"""Record what Snakemake built in dvc.lock, but only when it was built with the parameters DVC records.

    python -m pipeline_src dvc-commit [TARGET ...]

`dvc commit -f` writes the current config/params.yaml into dvc.lock beside the outputs' hashes. After
`snakemake ... --config preset=smoke` the outputs are smoke-sized while params.yaml still says `default`: a plain
`dvc commit -f` would record them as the default run's. This command reads the preset and seed the outputs
themselves record (synthetic sets' meta.json, training phases' phase.json) and refuses, naming the file and the
value, when one differs from config/params.yaml; otherwise it runs `dvc commit -f` (on TARGETs, or everything).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline_src.errors import ConfigError

CHECKED = ("preset", "seed")


def add_arguments(parser) -> None:
    parser.add_argument("targets", nargs="*", help="DVC stages or outputs to commit (default: all)")
    parser.add_argument("--params", type=Path, default=Path("config/params.yaml"),
                        help="the run parameters DVC records (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=Path("data"), help="the outputs' root (default: %(default)s)")


def recorded_parameters(data: Path) -> list[tuple[Path, str, object]]:
    """(file, parameter, value) as the outputs under `data` record them."""
    found = []
    metas = sorted(data.glob("raw/*/meta.json")) + sorted(data.glob("runs/*/*/phase*/phase.json"))
    for path in metas:
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # not ours (a real dataset's file) or unreadable: nothing it could record
        found += [(path, key, doc[key]) for key in CHECKED if key in doc and doc[key] is not None]
    return found


def mismatches(params: dict, recorded: list[tuple[Path, str, object]]) -> list[str]:
    return [f"{path}: built with {key}={value}, but {key}: {params.get(key)} in the params file"
            for path, key, value in recorded if key in params and params[key] != value]


def run(args) -> int:
    from pipeline_src.config import load_yaml

    params = load_yaml(args.params)
    wrong = mismatches(params, recorded_parameters(args.data))
    if wrong:
        raise ConfigError(f"{wrong[0]}{f' (and {len(wrong) - 1} more)' if len(wrong) > 1 else ''}; DVC would record "
                          f"{args.params}'s values for them: set the run's values there (or rebuild with its values), "
                          "then run dvc-commit again")
    cmd = ["dvc", "commit", "-f", *args.targets]
    print("+ " + " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd)
