"""requirements.txt and environment.yml pin the same packages at the same versions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[^=\s]+$")
ALLOWED_CONDA_DEPS = {"python=3.11", "pip"}


def _requirements() -> list[str]:
    lines = []
    for raw in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


@pytest.fixture(scope="module")
def environment() -> dict:
    path = REPO_ROOT / "environment.yml"
    if not path.exists():
        pytest.fail("environment.yml is missing", pytrace=False)
    return yaml.safe_load(path.read_text())


def _conda_and_pip(environment: dict) -> tuple[list[str], list[str]]:
    conda, pip = [], []
    for dep in environment.get("dependencies", []):
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"unexpected mapping in dependencies: {dep}"
            pip.extend(str(p).strip() for p in dep["pip"])
        else:
            conda.append(str(dep).strip())
    return conda, pip


def test_requirements_are_all_exact_pins_without_duplicates():
    reqs = _requirements()
    assert reqs
    bad = [r for r in reqs if not PIN.match(r)]
    assert not bad, f"not a name==version pin: {bad}"
    names = [r.split("==")[0].split("[")[0].lower() for r in reqs]
    assert len(names) == len(set(names)), "a package is pinned twice"


def test_environment_yml_has_a_pip_section(environment):
    conda, pip = _conda_and_pip(environment)
    assert pip, "environment.yml has no pip section"
    assert "pip" in conda


def test_environment_yml_conda_dependencies_are_only_python_and_pip(environment):
    conda, _ = _conda_and_pip(environment)
    assert set(conda) <= ALLOWED_CONDA_DEPS, f"conda deps besides python/pip: {sorted(set(conda) - ALLOWED_CONDA_DEPS)}"


def test_every_requirements_pin_is_in_environment_yml(environment):
    _, pip = _conda_and_pip(environment)
    missing = [r for r in _requirements() if PIN.match(r) and r not in pip]
    assert not missing, f"in requirements.txt but not identically in environment.yml's pip section: {missing}"


def test_every_environment_yml_pip_pin_is_in_requirements(environment):
    _, pip = _conda_and_pip(environment)
    reqs = set(_requirements())
    extra = [p for p in pip if p not in reqs]
    assert not extra, f"in environment.yml's pip section but not identically in requirements.txt: {extra}"


def test_rampp_environment_pins_agree_with_the_main_requirements():
    main = {r.split("==")[0].lower(): r for r in _requirements()}
    for raw in (REPO_ROOT / "requirements-rampp.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            name = line.split("==")[0].lower()
            assert name in main, f"requirements-rampp.txt pins {name}, which requirements.txt does not"
            assert main[name] == line, f"{line} differs from requirements.txt's {main[name]}"
