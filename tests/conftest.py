"""Shared fixtures: the authors' released artifacts, imported and tidied once per test session.

The release is not part of this repository. Tests that need it find it through, in order:

1. the environment variable ``FDP_RELEASE_LOCAL_COPY`` (the same variable the import stage reads);
2. ``<repository root>/../shared/paper-release``.

If neither exists those tests are skipped with a reason -- except under ``CI=true``, where a missing
release is an error, so continuous integration never passes by silently skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from helpers.release import offline

# Never reach the network from tests (Hugging Face hub, DVC telemetry).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RELEASE_COPY = REPO_ROOT.parent / "shared" / "paper-release"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def params() -> dict:
    """The project's params.yaml, parsed."""
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


@pytest.fixture(scope="session")
def release_copy() -> Path:
    """Folder holding the authors' released artifacts at the pinned commit."""
    copy, where = offline.find_local_copy(DEFAULT_RELEASE_COPY)
    if copy is not None:
        return copy
    if offline.on_ci():
        pytest.fail(f"{offline.MISSING} Looked for {where}. (CI=true: refusing to skip.)", pytrace=False)
    pytest.skip(offline.MISSING)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Report every skip for a missing release at one place, so ``-ra`` shows it as ONE line with a count."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and isinstance(report.longrepr, tuple) and offline.MISSING in str(report.longrepr[2]):
        report.longrepr = (__file__, 0, report.longrepr[2])


@pytest.fixture(scope="session")
def imported_release(release_copy: Path, params: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release imported (copied and checksum-verified) into a temporary folder."""
    from helpers.release import importer as release

    dest = tmp_path_factory.mktemp("raw") / "release"
    release.import_release(
        dest,
        repo=params["release"]["repo"],
        commit=params["release"]["commit"],
        local_copy=release_copy,
        workers=2,
        progress=False,
    )
    return dest


@pytest.fixture(scope="session")
def tidy_tables(imported_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tidy Parquet tables built from the imported release."""
    from helpers.release import tidy

    out_dir = tmp_path_factory.mktemp("processed") / "release"
    tidy.build_all(imported_release, out_dir, progress=False)
    return out_dir
