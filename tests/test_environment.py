"""pyproject.toml and environment.yml pin the same packages; the installed versions are the pinned ones."""
import tomllib
from importlib.metadata import version
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_pins() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["test"]
    pins = {}
    for r in reqs:
        name, _, ver = r.partition("==")
        assert ver, f"pyproject.toml: {r!r} is not pinned with =="
        pins[name.lower()] = ver
    return pins


def _conda_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {n.lower(): v for n, _, v in (p.partition("==") for p in pip)}


def test_pyproject_and_environment_yml_agree():
    assert _pyproject_pins() == _conda_pins()


def test_installed_versions_match_the_pins():
    wrong = {}
    for name, pinned in _pyproject_pins().items():
        got = version(name).split("+")[0]  # torch reports 2.13.0+cpu
        if got != pinned:
            wrong[name] = (pinned, got)
    assert not wrong, f"installed versions differ from pyproject.toml: {wrong}"
