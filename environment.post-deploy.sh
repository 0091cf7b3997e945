#!/usr/bin/env bash
# Snakemake runs this inside the conda environment it has just built from environment.yml (--use-conda):
# install this project there, so every rule's `python -m pipeline_src` imports it. It cannot be a `-e .` line
# in environment.yml, because Snakemake copies that file to .snakemake/conda/ and pip would resolve `.` there.
set -euo pipefail
python -m pip install --no-deps -e "$(cd "$(dirname "$0")" && pwd)"
