"""The `paper` preset for all five papers on the real datasets, declared as a user declares them after `fetch`:
both orchestrators plan the whole DAG (a dry run), and plan the same jobs. The datasets are miniature trees in
the real layouts (DPDD, GoPro, CUHK) where `python -m pipeline_src fetch NAME` puts them."""
import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.data.test_manifest import make_cuhk_tree, make_dpdd_tree, make_gopro_tree
from tests.test_orchestrators import dvc_stages, same_jobs, snakemake_jobs
from tests.workspace import BIN, copy_repo, env_for

PHASES = {"kpac": ("dpdd", 2), "kpac_dual": ("dpdd", 2), "attsf": ("dpdd", 3), "adnet": ("gopro", 1),
          "bianet": ("gopro", 1), "multianet": ("cuhk", 1)}


def real_dataset_config(cfg: dict) -> dict:
    """config/config.yaml as a user edits it for the papers' data: the real datasets and a stage per phase."""
    cfg["synthesize"] = {}
    cfg["datasets"] = {name: {"layout": name, "root": f"data/raw/{name}"} for name in ("dpdd", "gopro", "cuhk")}
    cfg["train"] = {}
    for recipe, (dataset, phases) in PHASES.items():
        for k in range(1, phases + 1):
            after = f"config/models/{recipe}.yaml" if k == 1 else f"data/runs/{recipe}/{dataset}/phase{k - 1}/final.pt"
            cfg["train"][f"{recipe}-{dataset}-p{k}"] = {"recipe": recipe, "dataset": dataset, "phase": k,
                                                         "after": after}
    trained = {f"{r}-{d}": {"recipe": r, "dataset": d, "phase": n} for r, (d, n) in PHASES.items()}
    cfg["evaluate"], cfg["export"] = dict(trained), dict(trained)
    cfg["authors_weights"] = {"kpac_single_2level-dpdd": {"weights": "kpac_single_2level", "dataset": "dpdd"},
                              "adnet_gopro-gopro": {"weights": "adnet_gopro", "dataset": "gopro"}}
    return cfg


def test_paper_preset_plans_all_five_papers_on_the_real_datasets_in_snakemake_and_dvc(tmp_path):
    ws = copy_repo(tmp_path / "ws")
    make_dpdd_tree(ws / "data/raw/dpdd")
    make_gopro_tree(ws / "data/raw/gopro")
    make_cuhk_tree(ws / "data/raw/cuhk")
    config = ws / "config/config.yaml"
    config.write_text(yaml.safe_dump(real_dataset_config(yaml.safe_load(config.read_text())), sort_keys=False))

    r = subprocess.run([BIN / "snakemake", "-n", "--cores", "8", "all", "--config", "preset=paper"], cwd=ws,
                       env=env_for(ws), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    planned = r.stdout
    for recipe, (dataset, phases) in PHASES.items():
        assert f"data/runs/{recipe}/{dataset}/phase{phases}/final.pt" in planned, recipe
    for weights, dataset in (("kpac_single_2level", "dpdd"), ("adnet_gopro", "gopro")):
        assert f"data/runs/authors/{weights}/final.pt" in planned
        assert f"data/metrics/{weights}-{dataset}.record.json" in planned

    # DVC's equivalent: the preset set where DVC reads it, then the plan (`dvc repro --dry` cannot plan past a
    # stage whose output does not exist yet: it hashes the next stage's missing deps; `dvc status` lists every
    # stage that would run, with the params it would run with)
    params = ws / "config/params.yaml"
    params.write_text(re.sub(r"^preset: \S+", "preset: paper", params.read_text(), flags=re.M))
    d = subprocess.run([BIN / "dvc", "status", "--json"], cwd=ws, env=env_for(ws), capture_output=True, text=True)
    assert d.returncode == 0, d.stdout[-3000:] + d.stderr[-3000:]
    status = json.loads(d.stdout)
    for recipe, (dataset, phases) in PHASES.items():
        assert f"train@{recipe}-{dataset}-p{phases}" in status, recipe
    for name in ("kpac_single_2level-dpdd", "adnet_gopro-gopro"):
        assert f"evaluate_authors@{name}" in status and f"import_weights@{name}" in status
    assert not [s for s in status if "synthesize" in s]

    # and the two plans are the same jobs
    same_jobs(snakemake_jobs(ws, "--config", "preset=paper"), dvc_stages(ws))


def test_the_papers_recipes_fit_their_data_at_the_paper_preset():
    """Every recipe's paper-preset crop fits the patch windows (or whole images) the paper preset cuts for its
    dataset's layout: the stage would otherwise stop on the real data."""
    from pipeline_src.config import load_recipe
    from pipeline_src.data.patches import load_settings

    root = Path(__file__).resolve().parents[1]
    layouts = {"dpdd": (1120, 1680), "gopro": (720, 1280), "cuhk": (427, 640)}
    for recipe, (dataset, _) in PHASES.items():
        r = load_recipe(root / f"config/models/{recipe}.yaml", "paper")
        windows = load_settings(root / "config/presets.yaml", "paper", dataset)
        for phase in r["phases"]:
            limit = windows.size if phase["sampling"] == "windows" else min(layouts[dataset])
            assert phase["crop"] <= limit, (recipe, phase["name"], phase["crop"], limit)
            assert min(layouts[dataset]) >= windows.size, (recipe, dataset)
