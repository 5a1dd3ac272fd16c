"""Where things live: one place that knows the project's folder layout.

Notebooks and stages never build ``../`` paths themselves. The project root is found by walking
up from the current directory to the folder holding ``dvc.yaml`` and ``params.yaml``; the
environment variable ``FDP_ROOT`` overrides it. ``FDP_WORKDIR`` redirects every *output*
(data/, reports/) to another folder, which is how the notebook tests run on small inputs
without touching a user's results.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT_MARKERS = ("dvc.yaml", "params.yaml")


def project_root(start: Path | None = None) -> Path:
    """The compendium's root folder (the one with dvc.yaml and params.yaml)."""
    env = os.environ.get("FDP_ROOT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if all((folder / marker).exists() for marker in ROOT_MARKERS):
            return folder
    # Fall back to the source checkout this package was installed from (editable install).
    package_root = Path(__file__).resolve().parents[2]
    if all((package_root / marker).exists() for marker in ROOT_MARKERS):
        return package_root
    raise FileNotFoundError(
        "Could not find the compendium root (a folder with dvc.yaml and params.yaml) above "
        f"{here}. Run from inside the project or set FDP_ROOT."
    )


def workdir() -> Path:
    """Root for build outputs (data/ and reports/); the project root unless FDP_WORKDIR is set."""
    env = os.environ.get("FDP_WORKDIR")
    return Path(env).resolve() if env else project_root()


def params_file() -> Path:
    return project_root() / "params.yaml"


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def raw_dir() -> Path:
    return workdir() / "data" / "raw"


def interim_dir() -> Path:
    return workdir() / "data" / "interim"


def processed_dir() -> Path:
    return workdir() / "data" / "processed"


def release_dir() -> Path:
    """The verified copy of the authors' release that the import stage writes."""
    return raw_dir() / "release"


def release_tables_dir() -> Path:
    """Tidy Parquet tables built from the release."""
    return processed_dir() / "release"


def reports_dir() -> Path:
    return workdir() / "reports"


def figures_dir(section: str | None = None) -> Path:
    base = reports_dir() / "figures"
    return base / section if section else base


def tables_dir() -> Path:
    return reports_dir() / "tables"


def plots_data_dir() -> Path:
    """Per-concept data behind `dvc plots`."""
    return reports_dir() / "plots"


def ensure(path: Path) -> Path:
    """Create a folder (and parents) if needed and return it."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve(value, base: Path | None = None):
    """A path from params.yaml made absolute: relative paths (``~`` expanded) are taken against ``base``
    (default: the work folder), since notebooks run in ``notebooks/``. Lists and tuples are resolved item by
    item; None stays None. Returns strings, as the readers and open_clip take them."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [resolve(v, base) for v in value]
    text = os.path.expanduser(str(value))
    return text if os.path.isabs(text) else str((base if base is not None else workdir()) / text)


def covers(folder: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (lexically: no symlinks resolved, nothing read)."""
    folder_p, path_p = Path(folder), Path(path)
    return path_p == folder_p or folder_p in path_p.parents
