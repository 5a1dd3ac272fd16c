"""Working without the authors' release: finding a local copy, and the notebook tests' offline mode.

The release is not part of this repository. ``dvc repro`` imports it from GitHub or from a local copy
(``FDP_RELEASE_LOCAL_COPY``); without either, the release stages fail and name the variable. The tests must also
pass on a fresh machine with no network and no copy (Issue 9): there, what needs the release is skipped with one
line naming ``FDP_RELEASE_LOCAL_COPY``, and notebooks that can run without it (the concept table of the
downstream datasets) do so when ``FDP_RELEASE_OPTIONAL=1``, which only the notebook tests set, never under
``CI=true``, so continuous integration never passes by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

from helpers.release.importer import LOCAL_COPY_ENV

#: set to 1 by the notebook tests when no release copy is found; notebooks then skip their release part
OPTIONAL_ENV = "FDP_RELEASE_OPTIONAL"

MISSING = (
    f"The authors' release is not available: set {LOCAL_COPY_ENV} to a clone of the authors' repository at the "
    "pinned commit (params.yaml release.commit) to run what needs it."
)


def on_ci() -> bool:
    """True under ``CI=true`` (case-insensitive), where a missing release is an error, never a skip."""
    return os.environ.get("CI", "").strip().lower() == "true"


def find_local_copy(default: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """(the release copy folder or None, where it was looked for): ``$FDP_RELEASE_LOCAL_COPY``, else ``default``."""
    env = os.environ.get(LOCAL_COPY_ENV)
    if env:
        candidate, origin = Path(env).expanduser(), f"${LOCAL_COPY_ENV}"
    elif default is not None:
        candidate, origin = Path(default), f"the default location {default}"
    else:
        return None, f"${LOCAL_COPY_ENV} (unset)"
    return (candidate.resolve() if candidate.is_dir() else None), f"{candidate} (from {origin})"


def release_optional() -> bool:
    """True when a notebook may skip its release part: ``FDP_RELEASE_OPTIONAL=1`` and not ``CI=true``."""
    return os.environ.get(OPTIONAL_ENV, "").strip() == "1" and not on_ci()


def tables_present(tables_dir: str | os.PathLike, names: tuple[str, ...] = ("concepts",)) -> bool:
    """True when the tidy release tables ``names`` (``<name>.parquet``) exist in ``tables_dir``."""
    return all((Path(tables_dir) / f"{name}.parquet").is_file() for name in names)


__all__ = ["MISSING", "OPTIONAL_ENV", "find_local_copy", "on_ci", "release_optional", "tables_present"]
