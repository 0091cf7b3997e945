# The pipeline for five blur papers. Every rule calls `python -m pipeline_src <stage>` with explicit paths;
# dvc.yaml calls the very same commands (tests/test_orchestrators.py checks that the two graphs agree).
#   snakemake --cores 8 all                       # the embedded default (synthetic data, CPU-sized)
#   snakemake --cores 8 all --config preset=smoke # seconds
from snakemake.utils import min_version, validate

from pipeline_src.gpus import nvidia_gpu_maybe_visible

min_version("9.0")


configfile: "config/config.yaml"
configfile: "config/params.yaml"


validate(config, "workflow/schemas/config.schema.yaml")

# One GPU job at a time unless told otherwise (`--resources gpu=4`): two trainings would share cuda:0. Set here
# because Snakemake only auto-loads profiles/default/ beside the Snakefile, not workflow/profiles/. On a machine
# without an NVIDIA GPU the jobs train on the CPU: no cap (Snakemake limits only the resources it is given), their
# `threads` bound what runs at once. The SLURM profile makes `gpu` a per-job (local) resource, so this cap does not
# serialise the cluster's GPU jobs.
if "gpu" not in workflow.global_resources and nvidia_gpu_maybe_visible():
    workflow.register_resource("gpu", 1)


# `snakemake --report report.html`: this text on the front page; results, plots and images by paper.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/export.smk"


rule all:
    default_target: True
    input:
        all_targets(),
