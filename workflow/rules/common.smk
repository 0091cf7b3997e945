# Helpers shared by the rules: stage tables from config/config.yaml, MLflow parent run, targets of `all`.
import os

from pipeline_src.config import check_train_chain, run_dir

check_train_chain(config, "config/config.yaml")
PRESET = config["preset"]
SEED = config["seed"]
PY = "python -m pipeline_src"


def train_job(wc):
    for job in config["train"].values():
        if (job["recipe"], job["dataset"], job["phase"]) == (wc.recipe, wc.dataset, int(wc.phase)):
            return job
    raise ValueError(f"no train entry in config/config.yaml for {wc.recipe}/{wc.dataset}/phase{wc.phase}")


def final_pt(job):
    return run_dir(job["recipe"], job["dataset"], job["phase"]) + "/final.pt"


def all_targets():
    targets = [f"data/manifests/{d}.json" for d in config["datasets"]]
    targets += [f"data/patches/{d}" for d in config["datasets"]]
    targets += [final_pt(j) for j in config["train"].values()]
    targets += [f"data/bundles/{name}" for name in config["export"]]
    if config["evaluate"]:
        targets.append("data/report/results.md")
    targets += [f"data/engines/{name}/build-report-fp16.json" for name in config["export"]]
    return targets


# One MLflow parent run per invocation; every job's run nests under it (PIPELINE_PARENT_RUN_ID is inherited
# by local jobs). The store is created here, once, before any job starts.
onstart:
    from pipeline_src.tracking import PARENT_ENV, start_parent, tracking_enabled

    if not config["tracking"]:  # jobs read config/config.yaml, which a `--config tracking=false` does not reach
        os.environ["PIPELINE_TRACKING"] = "0"
    if tracking_enabled(config["tracking"]) and PARENT_ENV not in os.environ:
        os.environ[PARENT_ENV] = start_parent(f"snakemake/{PRESET}")


onsuccess:
    from pipeline_src.tracking import PARENT_ENV, end_parent

    if PARENT_ENV in os.environ:
        end_parent(os.environ[PARENT_ENV], ok=True)


onerror:
    from pipeline_src.tracking import PARENT_ENV, end_parent

    if PARENT_ENV in os.environ:
        end_parent(os.environ[PARENT_ENV], ok=False)
