# Helpers shared by the rules: stage tables from config/config.yaml, the paths they imply, report
# categories, the MLflow parent run and the targets of `all`. Rule files hold rules only (snakemake --lint).
import os

import yaml

from pipeline_src.config import check_train_chain, run_dir

check_train_chain(config, "config/config.yaml")


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
def eval_checkpoint(wildcards):
    return final_pt(config["evaluate"][wildcards.name])


def eval_dataset(wildcards):
    return config["evaluate"][wildcards.name]["dataset"]


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


def paper_of_evaluation(wildcards):
    """Category of an evaluation's results; `evaluation` from report patterns, `name` from the rule."""
    name = wildcards.get("evaluation", wildcards.get("name"))
    return paper_of_recipe(config["evaluate"][name]["recipe"])


def evaluation_name(wildcards):
    return wildcards.get("evaluation", wildcards.get("name"))


# ---------------------------------------------------------------------------------------------- targets
def all_targets():
    targets = [f"data/manifests/{d}.json" for d in config["datasets"]]
    targets += [f"data/patches/{d}" for d in config["datasets"]]
    targets += [final_pt(j) for j in config["train"].values()]
    targets += [f"data/bundles/{name}" for name in config["export"]]
    if config["evaluate"]:
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
        # jobs read config/config.yaml, which a `--config tracking=false` does not reach
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
