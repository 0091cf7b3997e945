"""The recipes: valid for every preset and option, the papers' (or the authors' code's) numbers with each choice's
source, how each samples its crops (and that the crops fit the paper preset's data), and one smoke run of ATTSF,
ADNet, MultiANet and BiANet through the real CLI on tiny synthetic data made by the real stages.

ATTSF (90.8 M parameters) runs from a test-local copy of its recipe with reduced widths: at full width one smoke
phase takes 30-40 s on this 2-core machine and writes a 1.1 GB last.pt, over this file's time budget. Its phases,
presets and options are the recipe's own; only the model's widths differ.
"""
import inspect
import json
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml

from pipeline_src.config import PRESETS, load_recipe, load_yaml
from pipeline_src.data.augment import Augment
from pipeline_src.data.patches import load_settings
from pipeline_src.data.registry import load_registry
from pipeline_src.losses import LOSSES, build_loss
from pipeline_src.model_io import load_model
from pipeline_src.models.adnet import ADNet
from pipeline_src.models.attsf import ATTSF
from pipeline_src.models.bianet import BiANet
from pipeline_src.models.multianet import MultiANet
from pipeline_src.train.batches import loss_options
from pipeline_src.train.optim import build_optimizer
from pipeline_src.train.schedules import build_schedule

from .conftest import ROOT, cli

RECIPES = ("attsf", "adnet", "multianet", "bianet")
MODEL_CLASSES = {"attsf": ATTSF, "adnet": ADNet, "multianet": MultiANet, "bianet": BiANet}
# the dataset kind each recipe trains on: (synthetic kind in config/presets.yaml, the real dataset's layout)
DATA_OF = {"kpac": ("defocus", "dpdd"), "kpac_dual": ("defocus", "dpdd"), "attsf": ("defocus", "dpdd"),
           "adnet": ("motion", "gopro"), "bianet": ("motion", "gopro"), "multianet": ("detection", "cuhk")}
# Every CLI child runs single-threaded and untracked: the machine has 2 cores shared with other test runs.
CHILD_ENV = {"PIPELINE_TRACKING": "0", "OMP_NUM_THREADS": "1"}
ATTSF_TEST_WIDTHS = {"filters": 8, "triple_pass_filter": 16, "nonlocal_filter": 8}


def recipe_path(name: str) -> Path:
    return ROOT / "config" / "models" / f"{name}.yaml"


def option_names(name: str) -> list:
    return [None, *load_yaml(recipe_path(name)).get("options", {})]


def phase_validator() -> jsonschema.Draft202012Validator:
    schema = load_yaml(ROOT / "workflow" / "schemas" / "recipe.schema.yaml")
    return jsonschema.Draft202012Validator({**schema["$defs"]["phase"], "$defs": schema["$defs"]})


def crop_limit(name: str, preset: str, sampling: str) -> int:
    """The largest crop the preset's data allows this recipe: the window size of its dataset's layout
    (`windows`) or the short side of its images (`whole_images`; the synthetic set at the real one's size)."""
    kind, layout = DATA_OF[name]
    if sampling == "windows":
        return load_settings(ROOT / "config" / "presets.yaml", preset, layout).size
    return min(load_yaml(ROOT / "config" / "presets.yaml")[preset]["synthesize"][kind]["size"])


def ms_ssim_problem(phase: dict) -> str | None:
    """The MS-SSIM loss's own complaint about this phase's crop, or None when it computes."""
    if phase["loss"].get("ms_ssim", 0) == 0:
        return None
    crop = phase["crop"]
    loss = LOSSES.build("ms_ssim")
    try:
        loss(torch.rand(1, 3, crop, crop), torch.rand(1, 3, crop, crop))
    except ValueError as e:
        return str(e)
    return None


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("name", RECIPES)
def test_every_preset_and_option_resolves_to_runnable_phases(name):
    validator = phase_validator()
    protocols = load_yaml(ROOT / "config" / "protocols.yaml")["protocols"]
    registry = load_registry(ROOT / "config" / "datasets.yaml")
    param = [torch.nn.Parameter(torch.zeros(1))]
    for preset in PRESETS:
        for option in option_names(name):
            where = f"{name} preset={preset} option={option}"
            recipe = load_recipe(recipe_path(name), preset, option)
            assert recipe["paper"] == name and recipe["model"]["name"] == name, where
            assert recipe["protocol"] in protocols, where
            for role in recipe.get("weights", {}).values():
                registry.weight(role)  # raises KeyError naming the unknown weight
            # the resolved model args are ones the model's constructor takes
            inspect.signature(MODEL_CLASSES[name]).bind(**recipe["model"].get("args", {}))
            for i, phase in enumerate(recipe["phases"]):
                errors = [e.message for e in validator.iter_errors(phase)]
                assert not errors, f"{where} phase {i + 1}: {errors}"
                assert (i == 0) == (phase["init"] == "scratch"), where
                limit = crop_limit(name, preset, phase["sampling"])
                assert phase["crop"] <= limit, f"{where}: crop {phase['crop']} > {limit} ({phase['sampling']})"
                augment = Augment.from_recipe(phase.get("augment"), where)
                assert not augment.resamples or phase["sampling"] == "whole_images", where
                build_loss(phase["loss"])
                build_optimizer(phase["optimizer"], param)
                factor = build_schedule(phase["schedule"], total_steps=100, steps_per_epoch=10)
                assert factor(0) == 1.0, where


def test_released_attsf_loss_needs_the_paper_crops():
    """MS-SSIM's 5 scales need 161 px: the released-code loss runs at the paper's 560-px crops only."""
    assert ms_ssim_problem(load_recipe(recipe_path("attsf"), "paper", "released_code")["phases"][0]) is None
    for preset in ("smoke", "default"):
        for phase in load_recipe(recipe_path("attsf"), preset, "released_code")["phases"]:
            problem = ms_ssim_problem(phase)
            assert problem is not None and "MS-SSIM" in problem and "161x161" in problem
    for option in (None, "eq1_every_phase", "sgd_momentum", "metric_ssim_loss"):  # the paper's losses: no such limit
        for preset in PRESETS:
            assert all(ms_ssim_problem(p) is None for p in load_recipe(recipe_path("attsf"), preset, option)["phases"])


def test_presets_change_only_sizes_and_lengths():
    """A preset of a recipe is that recipe with other sizes: losses, optimisers, schedules and inits are equal."""
    kept = ("name", "loss", "optimizer", "schedule", "sampling", "bit_depth", "augment", "init")
    for name in RECIPES:
        for option in option_names(name):
            paper = load_recipe(recipe_path(name), "paper", option)
            for preset in ("smoke", "default"):
                small = load_recipe(recipe_path(name), preset, option)
                assert small["model"] == paper["model"]
                for p, s in zip(paper["phases"], small["phases"], strict=True):
                    assert {k: s.get(k) for k in kept} == {k: p.get(k) for k in kept}, (name, option, preset)


def test_a_preset_that_changes_the_recipe_is_refused(tmp_path):
    raw = load_yaml(recipe_path("adnet"))
    raw["presets"]["smoke"]["phases"][0]["optimizer"] = {"name": "sgd", "lr": 1.0}
    bad = tmp_path / "adnet.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"presets\.smoke\.phases\[0\].*optimizer"):
        load_recipe(bad, "smoke")
    with pytest.raises(ValueError, match="no option 'released'"):
        load_recipe(recipe_path("adnet"), "paper", "released")


# ------------------------------------------------------------------------------------------ the papers' values


def test_attsf_paper_recipe():
    r = load_recipe(recipe_path("attsf"), "paper")
    assert r["model"] == {"name": "attsf", "args": {}} and r["protocol"] == "dpdd_dual_16bit"
    assert ATTSF(filters=8, triple_pass_filter=16, nonlocal_filter=8).global_nonlocal.mode == "code"  # model.py's
    adam, sgd, finetune = r["phases"]
    assert adam["optimizer"] == {"name": "adam", "lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-7}
    assert adam["batch_size"] == 4 and adam["length"] == {"epochs": 200} and adam["init"] == "scratch"
    assert adam["loss"] == {"mse": 100.0, "tf_ssim": 5.0}  # the code's loss_function ("loss function 1")
    # SGD without momentum: neither paper nor code sets one, Keras' SGD default is 0.0, written out
    assert sgd["optimizer"] == {"name": "sgd", "lr": 5e-5, "momentum": 0.0}
    assert build_optimizer(sgd["optimizer"], [torch.nn.Parameter(torch.zeros(1))]).defaults["momentum"] == 0.0
    assert sgd["batch_size"] == 2 and sgd["length"] == {"epochs": 100} and sgd["init"] == "previous"
    assert sgd["loss"] == {"tf_ssim": 1.0, "l1": 0.5}  # Eq. 1, alpha = 1, beta = 0.5, SSIM as tf.image.ssim
    # the paper's "finetuning the network again with the loss function 1", from phase 2's weights
    assert finetune["loss"] == adam["loss"] and finetune["init"] == "previous"
    assert {k: finetune[k] for k in ("optimizer", "batch_size", "length", "schedule")} == \
           {k: sgd[k] for k in ("optimizer", "batch_size", "length", "schedule")}   # ours: as phase 2
    for phase in (adam, sgd, finetune):
        assert phase["schedule"] == {"name": "step", "every_epochs": 20, "gamma": 0.5}
        assert phase["sampling"] == "windows" and phase["crop"] == 560 and "bit_depth" not in phase
        assert phase["augment"] == {"hflip": True, "vflip": True, "rot90": True}
    # DPDNet's 560 / 140 windows with the 30 % discard at the paper preset
    windows = load_settings(ROOT / "config" / "presets.yaml", "paper", "dpdd")
    assert (windows.size, windows.stride, windows.discard_fraction) == (560, 140, 0.3)
    # halving every 20 epochs, in steps of the phase
    factor = build_schedule(sgd["schedule"], total_steps=100 * 50, steps_per_epoch=50)
    assert [factor(e * 50) for e in (0, 19, 20, 39, 40, 99)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.0625]


def test_attsf_config_runs_all_three_phases_in_the_dag():
    table = load_yaml(ROOT / "config" / "config.yaml")  # ATTSF is in `all`
    phases = sorted(job["phase"] for job in table["train"].values() if job["recipe"] == "attsf")
    assert phases == [1, 2, 3] and table["train"]["attsf-synth-defocus-p3"]["after"] == \
        "data/runs/attsf/synth-defocus/phase2/final.pt"
    assert table["evaluate"]["attsf-synth-defocus"]["phase"] == table["export"]["attsf-synth-defocus"]["phase"] == 3


def test_attsf_options():
    param = [torch.nn.Parameter(torch.zeros(1))]
    code = load_recipe(recipe_path("attsf"), "paper", "released_code")
    assert code["model"]["args"] == {}  # the code's non-local block is the model's default
    for phase in code["phases"]:
        assert {k: w for k, w in phase["loss"].items() if w} == {"l1": 5.0, "ms_ssim": 1.0}
        spec = {k: v for k, v in phase["optimizer"].items() if v is not None}   # null = removed by the option
        assert spec == {"name": "adam", "lr": 1e-5, "betas": [0.9, 0.999], "eps": 1e-7}
        assert isinstance(build_optimizer(phase["optimizer"], param), torch.optim.Adam)
        factor = build_schedule(phase["schedule"], total_steps=300 * 50, steps_per_epoch=50)
        assert {factor(s) for s in range(0, 300 * 50, 500)} == {1.0} and phase["batch_size"] == 4  # constant lr
    assert sum(p["length"]["epochs"] for p in code["phases"]) == 300  # nb_epoch
    eq1 = load_recipe(recipe_path("attsf"), "paper", "eq1_every_phase")
    assert [{k: w for k, w in p["loss"].items() if w} for p in eq1["phases"]] == [{"tf_ssim": 1.0, "l1": 0.5}] * 3
    momentum = load_recipe(recipe_path("attsf"), "paper", "sgd_momentum")
    assert [build_optimizer(p["optimizer"], param).defaults.get("momentum") for p in momentum["phases"]] == \
        [None, 0.9, 0.9]   # Adam has none
    metric = load_recipe(recipe_path("attsf"), "paper", "metric_ssim_loss")
    assert [{k: w for k, w in p["loss"].items() if w} for p in metric["phases"]] == \
        [{"mse": 100.0, "ssim": 5.0}, {"ssim": 1.0, "l1": 0.5}, {"mse": 100.0, "ssim": 5.0}]
    transposed = load_recipe(recipe_path("attsf"), "paper", "nonlocal_transposed")
    assert transposed["model"]["args"] == {"nonlocal_mode": "transposed"}
    assert transposed["phases"] == load_recipe(recipe_path("attsf"), "paper")["phases"]


@pytest.mark.parametrize("name", ["kpac", "kpac_dual"])
def test_kpac_recipes_crop_whole_images_at_8_bits(name):
    r = load_recipe(recipe_path(name), "paper")
    assert r["protocol"] == {"kpac": "dpdd_single_8bit", "kpac_dual": "dpdd_dual_8bit"}[name]
    for phase in r["phases"]:
        # paper Sec. 5: random 512 crops of each image, DPDD converted to 8 bits, no other augmentation
        assert phase["sampling"] == "whole_images" and phase["crop"] == 512 and phase["bit_depth"] == 8
        assert "augment" not in phase
    assert [p["augment"] for p in load_recipe(recipe_path(name), "paper", "hflip")["phases"]] == [{"hflip": True}] * 2
    code = load_recipe(recipe_path(name), "paper", "released_code")
    assert [(p["batch_size"], p["optimizer"]["betas"]) for p in code["phases"]] == [(8, [0.9, 0.999])] * 2
    for preset in PRESETS:   # the crops fit the preset's images
        for phase in load_recipe(recipe_path(name), preset)["phases"]:
            assert phase["crop"] <= crop_limit(name, preset, phase["sampling"])


def test_adnet_paper_recipe():
    r = load_recipe(recipe_path("adnet"), "paper")
    assert r["model"] == {"name": "adnet", "args": {}} and r["protocol"] == "gopro_8bit"
    (phase,) = r["phases"]
    assert phase["loss"] == {"multiscale_mse": 1.0, "gradient": 2.5}
    assert phase["optimizer"] == {"name": "adam", "lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8}
    assert phase["schedule"] == {"name": "poly", "power": 0.3, "end_factor": 0.0}
    assert phase["length"] == {"iterations": 4000 * (2103 // 16)} == {"iterations": 524000}
    assert phase["batch_size"] == 16 and phase["crop"] == 256
    assert phase["sampling"] == "whole_images"  # the code's tf.random_crop of whole frames, no discard
    assert phase["augment"] == {"hflip": True, "vflip": True}
    factor = build_schedule(phase["schedule"], total_steps=524000, steps_per_epoch=131)
    assert factor(262000) == pytest.approx(0.5 ** 0.3) and factor(524000) == 0.0
    code = load_recipe(recipe_path("adnet"), "paper", "released_code")
    assert code["model"]["args"] == {"attention_order": "serial", "resize": "tf1"} and code["phases"] == r["phases"]
    assert loss_options(code, code["phases"][0], Path("data/weights")) == {"multiscale_mse": {"resize": "tf1"}}
    assert loss_options(r, r["phases"][0], Path("data/weights")) == {}


def test_multianet_paper_recipe_and_backbone_weights():
    r = load_recipe(recipe_path("multianet"), "paper")
    assert r["protocol"] == "dbd_cuhk" and r["weights"] == {"backbone": "vgg16"}
    # a weight path in the model args would be stored in every checkpoint and demanded at evaluation
    assert "vgg_weights" not in r["model"]["args"]
    (phase,) = r["phases"]
    assert phase["loss"] == {"bce": 1.0}
    assert phase["optimizer"]["name"] == "adam" and phase["optimizer"]["lr"] == 4e-4 and phase["batch_size"] == 6
    # not published: DBD practice (BR2Net poly 0.9; D-DFFNet's 75 epochs of 604 images at batch 6)
    assert phase["schedule"] == {"name": "poly", "power": 0.9, "end_factor": 0.0}
    assert phase["length"] == {"iterations": 75 * (604 // 6)}
    # "randomly flipping, cropping, resizing and rotating" the origin images; the ranges are ours
    assert phase["sampling"] == "whole_images" and phase["crop"] == 256
    assert phase["augment"] == {"hflip": True, "scale": [0.75, 1.25], "rotate_degrees": 10.0}
    assert Augment.from_recipe(phase["augment"]).resamples
    # CUHK-sized images (427 x 640) hold the crop even at the smallest scale
    assert 256 <= 0.75 * crop_limit("multianet", "paper", "whole_images")


def test_bianet_recipe_and_loss_option():
    r = load_recipe(recipe_path("bianet"), "paper")
    assert r["protocol"] == "gopro_8bit"
    (phase,) = r["phases"]
    assert phase["loss"] == {"l1": 1.0} and phase["crop"] == 256
    adnet = load_recipe(recipe_path("adnet"), "paper")["phases"][0]
    same = ("optimizer", "schedule", "batch_size", "sampling", "crop", "augment", "length")
    assert {k: phase[k] for k in same} == {k: adnet[k] for k in same}  # ADNet's GoPro schedule, by choice
    mse = load_recipe(recipe_path("bianet"), "paper", "mse")["phases"][0]
    assert {k: w for k, w in mse["loss"].items() if w} == {"mse": 1.0}


# ------------------------------------------------------------------------------------------ smoke runs


def make_patches(base: Path, kind: str, layout: str, *index_flags) -> dict:
    raw, manifest, patches = base / "raw", base / "manifest.json", base / "patches"
    cli("synthesize", kind, "--preset", "smoke", "--seed", "0", "--out", raw, env=CHILD_ENV)
    cli("index", "synth", "--layout", layout, "--root", raw, "--out", manifest, *index_flags, env=CHILD_ENV)
    cli("patches", "--manifest", manifest, "--out", patches, "--preset", "smoke", env=CHILD_ENV)
    return {"manifest": manifest, "patches": patches}


@pytest.fixture(scope="session")
def motion_data(tmp_path_factory):
    return make_patches(tmp_path_factory.mktemp("motion"), "motion", "gopro")


@pytest.fixture(scope="session")
def detection_data(tmp_path_factory):
    """Synthetic CUHK-layout detection set; the index stage carves its val split from train (CUHK has none),
    and the synthetic set's meta.json gives the mask polarity."""
    data = make_patches(tmp_path_factory.mktemp("detection"), "detection", "cuhk")
    assert json.loads(data["manifest"].read_text())["splits"]["val"] >= 1
    return data


def train(data: dict, recipe: Path, out: Path, phase: int = 1, option: str | None = None):
    cli("train", "--recipe", recipe, "--phase", phase, "--dataset", "synth", "--manifest", data["manifest"],
        "--patches", data["patches"], "--out", out, "--preset", "smoke", "--seed", "0",
        *(["--option", option] if option else []),
        env=CHILD_ENV)
    return json.loads((out / "phase.json").read_text())


def check_run(summary: dict, out: Path, recipe: dict, phase: int, steps: int) -> None:
    spec = recipe["phases"][phase - 1]
    assert summary["steps"] == summary["total_steps"] == steps
    assert summary["phase_name"] == spec["name"] and summary["preset"] == "smoke"
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["validation"].values())
    model, record = load_model(out / "final.pt")
    assert record["model"] == recipe["model"] and record["protocol"] == recipe["protocol"]
    assert record["config"]["phases"][phase - 1]["loss"] == spec["loss"]
    assert isinstance(model, MODEL_CLASSES[recipe["paper"]])


@pytest.mark.parametrize("name, option", [("adnet", None), ("bianet", None), ("adnet", "released_code")])
def test_motion_recipe_smoke_phase(name, option, motion_data, tmp_path):
    recipe = load_recipe(recipe_path(name), "smoke", option)
    summary = train(motion_data, recipe_path(name), tmp_path / "phase1", option=option)
    check_run(summary, tmp_path / "phase1", recipe, 1, steps=3)  # an option's model args reach the checkpoint
    assert set(summary["validation"]) == {"val/psnr", "val/psnr_input", "val/psnr_gain"}


def test_multianet_smoke_phase(detection_data, tmp_path):
    recipe = load_recipe(recipe_path("multianet"), "smoke")
    summary = train(detection_data, recipe_path("multianet"), tmp_path / "phase1")
    check_run(summary, tmp_path / "phase1", recipe, 1, steps=3)
    # detection validates with the evaluation's figures (sigmoid map against the mask), never PSNR
    assert set(summary["validation"]) == {"val/max_f", "val/f_at_0_5", "val/mae"}
    assert all(0.0 <= v <= 1.0 for v in summary["validation"].values())
    header = (tmp_path / "phase1" / "curves.csv").read_text().splitlines()[0].split(",")
    assert header == ["step", "train_loss", "lr", "val_score", "val_max_f", "val_f_at_0_5", "val_mae"]


def test_attsf_three_smoke_phases_at_reduced_width(defocus_data, tmp_path):
    raw = load_yaml(recipe_path("attsf"))
    raw["model"]["args"] = dict(ATTSF_TEST_WIDTHS)
    copy = tmp_path / "attsf.yaml"
    copy.write_text(yaml.safe_dump(raw, sort_keys=False))
    recipe = load_recipe(copy, "smoke")
    runs = tmp_path / "runs"
    summaries = [train(defocus_data, copy, runs / f"phase{k}", k) for k in (1, 2, 3)]
    for i, summary in enumerate(summaries):  # the recipe's smoke length: a fixed step count per phase
        steps = recipe["phases"][i]["length"]["iterations"]
        assert steps == 1
        check_run(summary, runs / f"phase{i + 1}", recipe, i + 1, steps=steps)
    for before, after in zip(summaries, summaries[1:]):
        assert after["init"]["mode"] == "previous" and after["init"]["state_digest"] == before["final_state_digest"]
