# Helpers shared by the rules: stage tables from config/config.yaml, the paths they imply, report
# categories, the MLflow parent run and the targets of `all`. Rule files hold rules only (snakemake --lint).
import os
import re

import yaml

from pipeline_src.config import check_train_chain, load_presets, run_dir

check_train_chain(config, "config/config.yaml")

# `threads:` of the compute jobs (synthesize, patches, train, evaluate, quantize), by preset (config/presets.yaml,
# job_threads). All of them alike: a 2-thread job among 1-thread ones waits until both cores are free at once.
JOB_THREADS = load_presets()[config["preset"]]["job_threads"]

# `priority:` of the data jobs (synthesize, index, patches). Snakemake starts the ready job of highest priority
# first, so every dataset is ready before the trainings fill the cores; without it the smoke run held one
# dataset's patches back for 90 s behind trainings, and that dataset's chain ran alone at the end.
DATA_FIRST = 10

# The weights stage reads its list from config/config.yaml in both orchestrators (DVC cannot put a list on a
# command line): an override on Snakemake's command line would not reach it, so it is refused.
with open("config/config.yaml") as f:
    if yaml.safe_load(f)["weights"] != config["weights"]:
        raise ValueError("weights: set the list in config/config.yaml; a --config override does not reach the "
                         "weights stage (it reads the file, as DVC does)")


# ---------------------------------------------------------------------------------------------- data
def synth_kind(wildcards):
    return config["synthesize"][wildcards.name]["kind"]


def dataset_root(wildcards):
    return config["datasets"][wildcards.name]["root"]


def dataset_layout(wildcards):
    return config["datasets"][wildcards.name]["layout"]


# ---------------------------------------------------------------------------------------------- training
def train_job(wildcards):
    for job in config["train"].values():
        if (job["recipe"], job["dataset"], job["phase"]) == (
            wildcards.recipe,
            wildcards.dataset,
            int(wildcards.phase),
        ):
            return job
    raise ValueError(
        f"no train entry in config/config.yaml for "
        f"{wildcards.recipe}/{wildcards.dataset}/phase{wildcards.phase}"
    )


def final_pt(job):
    return os.path.join(run_dir(job["recipe"], job["dataset"], job["phase"]), "final.pt")


def train_after(wildcards):
    """What the phase starts from: the recipe (phase 1) or the previous phase's final.pt."""
    return train_job(wildcards)["after"]


def out_dir(wildcards, output):
    """The folder a stage writes into: its first output's parent (the command's --out / --out-dir)."""
    return os.path.dirname(output[0])


# ---------------------------------------------------------------------------------------------- evaluation, export
def one_of(names):
    """A wildcard constraint matching exactly these names (none: matching nothing)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def imported_pt(weights):
    return f"data/runs/authors/{weights}/final.pt"


def eval_checkpoint(wildcards):
    if wildcards.name in config["authors_weights"]:
        return imported_pt(config["authors_weights"][wildcards.name]["weights"])
    return final_pt(config["evaluate"][wildcards.name])


def eval_dataset(wildcards):
    table = config["authors_weights"] if wildcards.name in config["authors_weights"] else config["evaluate"]
    return table[wildcards.name]["dataset"]


def evaluations():
    """Every evaluation's name: our trained models' and the authors' imported weights'."""
    return [*config["evaluate"], *config["authors_weights"]]


def eval_manifest(wildcards):
    return f"data/manifests/{eval_dataset(wildcards)}.json"


def eval_root(wildcards):
    return f"data/raw/{eval_dataset(wildcards)}"


def export_checkpoint(wildcards):
    return final_pt(config["export"][wildcards.name])


def export_dataset(wildcards):
    return config["export"][wildcards.name]["dataset"]


def export_manifest(wildcards):
    return f"data/manifests/{export_dataset(wildcards)}.json"


def export_patches(wildcards):
    return f"data/patches/{export_dataset(wildcards)}"


def train_patches(wildcards, input):
    return os.path.join(input.patches, "train")


def export_dir(wildcards, input):
    return os.path.dirname(input.onnx)


# ---------------------------------------------------------------------------------------------- report
# Report categories: one per paper, named as config/published.yaml titles it ("KPAC", "MultiANet", ...).
with open("config/published.yaml") as f:
    PAPER_NAMES = {
        key: paper["title"].split(":")[0]
        for key, paper in yaml.safe_load(f)["papers"].items()
    }


def paper_of_recipe(recipe):
    with open(f"config/models/{recipe}.yaml") as f:
        key = yaml.safe_load(f)["paper"]
    return PAPER_NAMES.get(key, key)


# the recipe each of the authors' releases is imported as (pipeline_src/weights_import)
AUTHORS_RECIPE = {"kpac_single_2level": "kpac", "kpac_single_3level": "kpac", "kpac_dual": "kpac_dual",
                  "adnet_gopro": "adnet", "adnet_dpdd": "adnet"}


def paper_of_evaluation(wildcards):
    """Category of an evaluation's results; `evaluation` from report patterns, `name` from the rule."""
    name = wildcards.get("evaluation", wildcards.get("name"))
    if name in config["authors_weights"]:
        return paper_of_recipe(AUTHORS_RECIPE[config["authors_weights"][name]["weights"]])
    return paper_of_recipe(config["evaluate"][name]["recipe"])


def evaluation_name(wildcards):
    return wildcards.get("evaluation", wildcards.get("name"))


# ---------------------------------------------------------------------------------------------- targets
def all_targets():
    targets = [f"data/manifests/{d}.json" for d in config["datasets"]]
    targets += [f"data/patches/{d}" for d in config["datasets"]]
    targets += [final_pt(j) for j in config["train"].values()]
    targets += [f"data/bundles/{name}" for name in config["export"]]
    if evaluations():
        targets.append("data/report/results.md")
    targets += [
        f"data/engines/{name}/build-report-fp16.json" for name in config["export"]
    ]
    return targets


# ---------------------------------------------------------------------------------------------- MLflow
# One MLflow parent run per invocation; every job's run nests under it (PIPELINE_PARENT_RUN_ID is inherited
# by local jobs and exported to SLURM jobs by sbatch). The store is created here, once, before any job starts.
onstart:
    from pipeline_src.tracking import PARENT_ENV, start_parent, tracking_enabled

    if not config["tracking"]:
        # jobs read config/params.yaml, which a `--config tracking=false` does not reach
        os.environ.update(PIPELINE_TRACKING="0")
    if tracking_enabled(config["tracking"]) and PARENT_ENV not in os.environ:
        os.environ[PARENT_ENV] = start_parent(f"snakemake/{config['preset']}")


onsuccess:
    from pipeline_src.tracking import PARENT_ENV, end_parent

    if PARENT_ENV in os.environ:
        end_parent(os.environ[PARENT_ENV], ok=True)


onerror:
    from pipeline_src.tracking import PARENT_ENV, end_parent

    if PARENT_ENV in os.environ:
        end_parent(os.environ[PARENT_ENV], ok=False)
