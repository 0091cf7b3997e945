"""Configuration as data: loading, schema validation, presets and named options.

- `config/config.yaml`: what the DAG builds (read by Snakemake and DVC alike), validated against
  `workflow/schemas/config.schema.yaml` — the same schema Snakemake's `validate()` uses.
- `config/presets.yaml`: data sizes per scale preset.
- `config/models/<recipe>.yaml`: one training recipe (model, phases, protocol); its `presets` may change only
  sizes and lengths, its `options` are named variants (e.g. the released code's hyper-parameters).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from pipeline_src.errors import ConfigError  # defined there, importable from here as before

PRESETS = ("smoke", "default", "paper")
PARAMS_FILE = "params.yaml"  # config/params.yaml: preset, seed, engines, tracking (DVC's params)
# The repository this package is installed from (editable install): schemas live in workflow/schemas/.
REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = REPO_ROOT / "workflow" / "schemas"
# What a preset may change in a training phase: sizes, counts and lengths, never the recipe itself.
PRESET_PHASE_KEYS = {"length", "batch_size", "crop", "val_every", "ckpt_every", "log_every", "val_samples",
                     "num_workers", "image_every"}


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The folder holding config/config.yaml, searched upwards from `start` (default: the working directory)."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "config" / "config.yaml").is_file():
            return d
    return here


def load_yaml(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e


def deep_merge(base: Any, override: Any) -> Any:
    """Merge `override` into a copy of `base`: dicts key by key, lists element by element, else replace."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for k, v in override.items():
            out[k] = deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(override, list):
        if len(override) > len(base):
            raise ConfigError(f"override has {len(override)} list items, the base only {len(base)}")
        return [deep_merge(b, o) for b, o in zip(base, override)] + copy.deepcopy(base[len(override):])
    return copy.deepcopy(override)


def validate_schema(data: Any, schema: str | os.PathLike | dict, what: str) -> None:
    """Validate against a JSON schema (a file, or the schema itself); every error names its field."""
    import jsonschema

    schema = schema if isinstance(schema, dict) else load_yaml(schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{what}: {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:10]]
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise ConfigError("\n".join(lines) + more)  # the CLI joins the lines with "; "


def load_pipeline_config(path: str | os.PathLike = "config/config.yaml", overrides: dict | None = None,
                         params: str | os.PathLike | None = None) -> dict:
    """config/config.yaml merged with the run parameters (config/params.yaml beside it), as Snakemake reads them."""
    path = Path(path)
    params = Path(params) if params else path.with_name(PARAMS_FILE)
    cfg = deep_merge(deep_merge(load_yaml(path), load_yaml(params)), overrides or {})
    validate_schema(cfg, SCHEMAS / "config.schema.yaml", f"{path} + {params}")
    check_train_chain(cfg, str(path))
    return cfg


def check_train_chain(cfg: dict, where: str) -> None:
    """Each train entry's `after` is what the phase starts from: the recipe file for phase 1, else the
    previous phase's final.pt. DVC cannot compute that path, so config spells it out; this checks it."""
    for key, job in cfg.get("train", {}).items():
        want = (f"config/models/{job['recipe']}.yaml" if job["phase"] == 1 else
                run_dir(job["recipe"], job["dataset"], job["phase"] - 1) + "/final.pt")
        if job["after"] != want:
            raise ConfigError(f"{where}: train.{key}.after is {job['after']!r}; phase {job['phase']} of "
                              f"{job['recipe']} on {job['dataset']} must start from {want!r}")


def run_dir(recipe: str, dataset: str, phase: int) -> str:
    return f"data/runs/{recipe}/{dataset}/phase{phase}"


def load_presets(root: str | os.PathLike | None = None) -> dict:
    return load_presets_file(project_root(root) / "config" / "presets.yaml")


def load_presets_file(path: str | os.PathLike) -> dict:
    """config/presets.yaml (or another presets file), validated by workflow/schemas/presets.schema.yaml."""
    presets = load_yaml(path)
    validate_schema(presets, SCHEMAS / "presets.schema.yaml", str(path))
    return presets


def preset_section(preset: str, section: str, root: str | os.PathLike | None = None) -> dict:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    presets = load_presets(root)
    try:
        return presets[preset][section]
    except KeyError:
        raise ConfigError(f"config/presets.yaml: no section {preset}.{section}") from None


def _preset_override_schema() -> dict:
    """A recipe's `presets.<name>` section: phases holding only the keys a preset may change, each with the type
    and bounds the recipe schema gives it (one definition: a preset's `batch_size: 0` fails like a recipe's)."""
    phase = load_yaml(SCHEMAS / "recipe.schema.yaml")["$defs"]["phase"]
    allowed = {k: v for k, v in phase["properties"].items() if k in PRESET_PHASE_KEYS}
    return {"type": "object", "additionalProperties": False,
            "properties": {"phases": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                                 "properties": allowed}}}}


def load_recipe(path: str | os.PathLike, preset: str, option: str | None = None) -> dict:
    """A training recipe resolved for a preset (and a named option): the dict the phase runner executes."""
    path = Path(path)
    raw = load_yaml(path)
    validate_schema(raw, SCHEMAS / "recipe.schema.yaml", str(path))
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    recipe = {k: v for k, v in raw.items() if k not in ("presets", "options", "budget_notes")}
    if option is not None:
        options = raw.get("options", {})
        if option not in options:
            raise ConfigError(f"{path}: no option {option!r}; known: {', '.join(options) or '(none)'}")
        recipe = deep_merge(recipe, options[option])
    override = raw.get("presets", {}).get(preset, {})
    for i, phase in enumerate(override.get("phases", [])):
        bad = set(phase) - PRESET_PHASE_KEYS
        if bad:
            raise ConfigError(f"{path}: presets.{preset}.phases[{i}] may change only {sorted(PRESET_PHASE_KEYS)}, "
                              f"not {sorted(bad)}: a preset never changes the recipe itself")
    if set(override) - {"phases"}:
        extra = sorted(set(override) - {"phases"})
        raise ConfigError(f"{path}: presets.{preset} may only hold `phases`, found {extra}")
    validate_schema(override, _preset_override_schema(), f"{path}: presets.{preset}")
    recipe = deep_merge(recipe, override)
    for phase, over in zip(recipe["phases"], override.get("phases", [])):
        if "length" in over:  # a length replaces the recipe's (epochs -> iterations is allowed), never merges
            phase["length"] = copy.deepcopy(over["length"])
    # what the runner executes must itself be a valid recipe (an option's merge, a preset's values)
    validate_schema(recipe, SCHEMAS / "recipe.schema.yaml", f"{path} (resolved for preset {preset}, option {option})")
    recipe["preset"] = preset
    recipe["option"] = option
    recipe["budget_note"] = raw.get("budget_notes", {}).get(preset)
    recipe["recipe_file"] = str(path)
    return recipe
