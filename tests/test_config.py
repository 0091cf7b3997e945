
import pytest
import yaml

from pipeline_src.config import ConfigError, load_pipeline_config, load_recipe, project_root

ROOT = project_root()


def test_repository_config_is_valid_and_every_recipe_resolves_for_every_preset():
    cfg = load_pipeline_config(ROOT / "config" / "config.yaml")
    recipes = {job["recipe"] for job in cfg["train"].values()}
    for name in recipes:
        for preset in ("smoke", "default", "paper"):
            r = load_recipe(ROOT / "config" / "models" / f"{name}.yaml", preset)
            assert r["preset"] == preset and r["phases"]


def test_kpac_paper_recipe_is_the_papers_and_the_released_code_is_an_option():
    paper = load_recipe(ROOT / "config/models/kpac.yaml", "paper")
    p1, p2 = paper["phases"]
    assert p1["loss"] == {"l1": 1.0} and p2["loss"] == {"l1": 1.0, "perceptual": 7e-4}
    assert p1["length"] == {"iterations": 200_000} and p2["length"] == {"iterations": 100_000}
    assert p1["optimizer"] == {"name": "adam", "lr": 1e-4, "betas": [0.9, 0.99]}
    assert p2["optimizer"]["lr"] == 5e-5 and p2["init"] == "previous"
    assert (p1["batch_size"], p1["crop"]) == (4, 512)
    code = load_recipe(ROOT / "config/models/kpac.yaml", "paper", option="released_code")
    assert code["phases"][0]["batch_size"] == 8 and code["phases"][0]["optimizer"]["betas"] == [0.9, 0.999]


def test_presets_change_only_lengths_and_sizes():
    paper = load_recipe(ROOT / "config/models/kpac.yaml", "paper")
    for preset in ("smoke", "default"):
        r = load_recipe(ROOT / "config/models/kpac.yaml", preset)
        for a, b in zip(paper["phases"], r["phases"]):
            for key in ("loss", "optimizer", "schedule", "init", "name"):
                assert a[key] == b[key], (preset, key)


def test_a_preset_that_changes_the_recipe_is_refused(tmp_path):
    raw = yaml.safe_load((ROOT / "config/models/kpac.yaml").read_text())
    raw["presets"]["smoke"]["phases"][0]["loss"] = {"l1": 2.0}
    bad = tmp_path / "kpac.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="never changes the recipe"):
        load_recipe(bad, "smoke")


def test_bad_pipeline_values_are_named():
    with pytest.raises(ConfigError, match="preset"):
        load_pipeline_config(ROOT / "config/config.yaml", {"preset": "huge"})
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    key = next(k for k, j in cfg["train"].items() if j["phase"] == 2)
    with pytest.raises(ConfigError, match=f"train.{key}.after"):
        load_pipeline_config(ROOT / "config/config.yaml", {"train": {key: {"after": "config/models/kpac.yaml"}}})


def test_unknown_option_and_preset_are_refused():
    with pytest.raises(ConfigError, match="released_code"):
        load_recipe(ROOT / "config/models/kpac.yaml", "paper", option="nope")
    with pytest.raises(ConfigError, match="smoke"):
        load_recipe(ROOT / "config/models/kpac.yaml", "tiny")


def test_the_adnet_budget_probe_is_adnet_with_only_its_stated_changes():
    """config/probes/adnet_budget.yaml backs ADNet's budget note: it must stay the ADNet recipe with a 10x learning
    rate and a longer default preset of smaller crops, nothing else (a drifted probe would back nothing)."""
    recipe = load_recipe(ROOT / "config/models/adnet.yaml", "default")
    probe = load_recipe(ROOT / "config/probes/adnet_budget.yaml", "default")
    r, p = recipe["phases"][0], probe["phases"][0]
    assert p["optimizer"]["lr"] == 10 * r["optimizer"]["lr"]
    assert (p["length"], p["crop"], r["crop"]) == ({"iterations": 1000}, 32, 64)
    changed = {"optimizer", "length", "crop", "val_every"}
    assert {k: v for k, v in p.items() if k not in changed} == {k: v for k, v in r.items() if k not in changed}
    assert {k: v for k, v in p["optimizer"].items() if k != "lr"} == {k: v for k, v in r["optimizer"].items()
                                                                      if k != "lr"}
    same = ("paper", "model", "protocol")
    assert [probe[k] for k in same] == [recipe[k] for k in same]
    assert "config/probes/adnet_budget.yaml" in recipe["budget_note"]
