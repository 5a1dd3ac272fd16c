"""Notebook tests (``pytest --nbval-lax notebooks/``) with or without the authors' release.

The notebooks run in order in one scratch work folder (``FDP_WORKDIR``), so each reads what the earlier ones
wrote. The release is found as by the unit tests (tests/conftest.py): ``FDP_RELEASE_LOCAL_COPY``, else
``<repository root>/../shared/paper-release``; the variable is then set for the import notebook's kernel.

Without a copy (a fresh machine, offline):
- the cells of notebooks whose every stage depends on the release (per dvc.yaml: downstream of
  ``import_release``) are deselected, and the run ends with ONE line naming ``FDP_RELEASE_LOCAL_COPY``;
- ``FDP_RELEASE_OPTIONAL=1`` lets a notebook that also serves a release-free stage (the concept table) skip
  its release part;
- under ``CI=true`` the run stops at once instead, so continuous integration never passes by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from helpers.release import offline
from helpers.release.importer import LOCAL_COPY_ENV

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_RELEASE_COPY = REPO_ROOT.parent / "shared" / "paper-release"
RELEASE_STAGE = "import_release"

_skipped: set[str] = set()


def _under(path: str, other: str) -> bool:
    return path == other or path.startswith(other.rstrip("/") + "/") or other.startswith(path.rstrip("/") + "/")


def _paths(entries: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def release_only_notebooks(dvc: dict) -> set[str]:
    """Notebook file names whose every stage needs the release: downstream of ``import_release`` through
    declared outs and deps (deps with ``${...}`` cannot be resolved here and do not count)."""
    specs = {name: spec.get("do", spec) for name, spec in dvc["stages"].items()}
    needs = {RELEASE_STAGE}
    changed = True
    while changed:
        changed = False
        outs = [o for name in needs for o in _paths(specs[name].get("outs"))]
        for name, spec in specs.items():
            deps = [d for d in _paths(spec.get("deps")) if "${" not in d]
            if name not in needs and any(_under(d, o) for d in deps for o in outs):
                needs.add(name)
                changed = True
    by_notebook: dict[str, set[bool]] = {}
    for name, spec in specs.items():
        notebook = next((d for d in _paths(spec.get("deps")) if d.startswith("notebooks/")), None)
        if notebook:
            by_notebook.setdefault(Path(notebook).name, set()).add(name in needs)
    return {notebook for notebook, flags in by_notebook.items() if flags == {True}}


def pytest_configure(config: pytest.Config) -> None:
    copy, where = offline.find_local_copy(DEFAULT_RELEASE_COPY)
    if copy is not None:
        os.environ[LOCAL_COPY_ENV] = str(copy)  # the import notebook's kernel reads it
        return
    config.stash[_MISSING] = where
    if not offline.on_ci():
        os.environ[offline.OPTIONAL_ENV] = "1"


_MISSING = pytest.StashKey[str]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a release copy, deselect the cells of the release-only notebooks (stop at once under CI=true)."""
    if _MISSING not in config.stash:
        return
    release_only = release_only_notebooks(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text()))
    skip = [item for item in items if item.path.suffix == ".ipynb" and item.path.name in release_only]
    if not skip:
        return
    if offline.on_ci():
        pytest.exit(
            f"{offline.MISSING} Looked for {config.stash[_MISSING]}. (CI=true: refusing to skip.)", returncode=1
        )
    config.hook.pytest_deselected(items=skip)
    items[:] = [item for item in items if item not in skip]
    _skipped.update(item.path.name[:2] for item in skip)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _skipped:
        terminalreporter.write_line(
            f"SKIPPED notebooks {', '.join(sorted(_skipped))}: {offline.MISSING}", yellow=True, bold=True
        )
