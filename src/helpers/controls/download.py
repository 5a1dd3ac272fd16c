"""Let It Wag! candidates from URL lists, downloaded with img2dataset in its own environment.

The study gathered its Let It Wag! candidates from the web (Udandarao et al. 2024, Sec. 6). img2dataset
(1.47.0) is the standard downloader for such URL lists, but it pins ``pandas<3`` and ``webdataset<0.3``,
which conflict with this project's pins, so -- like RAM++ -- it runs in a separate virtual environment
(``./run.sh img2dataset-env`` makes ``.venv-img2dataset`` from ``requirements-img2dataset.txt``) and is
driven here by a subprocess through its Python API (``img2dataset.download``). Nothing of img2dataset is
imported into this environment; its output is read back from disk:

- ``output_format: files``: ``<folder>/<shard>/<key>.<ext>`` per downloaded image and ``<shard>.parquet``;
- ``output_format: webdataset``: ``<shard>.tar`` (``<key>.<ext>`` members) and ``<shard>.parquet``.

Every shard's Parquet lists *every* URL of the shard with its ``status`` (``success``,
``failed_to_download`` -- HTTP errors, timeouts --, ``failed_to_resize`` -- bytes that do not decode) and
``error_message``, plus the URL list's class column (``save_additional_columns``). ``download_candidates``
turns that into candidate image paths per class (a folder per class, so the folder source's downstream steps
apply unchanged) and a table of counted, reported skips per class (``DOWNLOAD_SKIPS``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from helpers import paths
from helpers.params import ConfigError
from helpers.schemas import LET_IT_WAG_DOWNLOAD as DOWNLOAD_SKIPS

KEY = "let_it_wag.images.urls"
ENV_VAR = "FDP_IMG2DATASET_PYTHON"
DEFAULT_PYTHON = ".venv-img2dataset/bin/python"
MAKE_ENV = "./run.sh img2dataset-env"
_URL, _CLASS, _INDEX = "url", "wag_class", "wag_index"  # the columns of the list handed to img2dataset

# Run in the download environment: read the JSON keyword arguments, call img2dataset's API.
_DRIVER = "import json, sys\nfrom img2dataset import download\ndownload(**json.loads(sys.argv[1]))\n"


def find_python(python: str | None) -> str:
    """The download environment's python: ``python`` (relative to the project root), else ``$FDP_IMG2DATASET_PYTHON``,
    else ``.venv-img2dataset/bin/python`` of the project root.

    Raises ``ConfigError`` naming ``let_it_wag.images.urls.python`` when it does not exist or cannot import
    img2dataset (with how to make the environment: ``./run.sh img2dataset-env``).
    """
    chosen = python or os.environ.get(ENV_VAR) or DEFAULT_PYTHON
    path = Path(paths.resolve(chosen, paths.project_root()))
    where = f"{KEY}.python" if python else (ENV_VAR if os.environ.get(ENV_VAR) else f"{KEY}.python (default)")
    if not path.is_file():
        raise ConfigError(f"{where}: {path} does not exist; make the download environment with `{MAKE_ENV}`")
    probe = subprocess.run([str(path), "-c", "import img2dataset"], capture_output=True, text=True, env=_env(),
                           timeout=300)  # fmt: skip
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise ConfigError(f"{where}: {path} cannot import img2dataset ({last}); remake it with `{MAKE_ENV}`")
    return str(path)


def _env() -> dict[str, str]:
    """The subprocess environment: offline-friendly, no project sources on its path (its pins differ)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled", WANDB_SILENT="true")
    return env


def read_url_lists(pattern: str | Sequence[str], url_column: str, class_column: str) -> pd.DataFrame:
    """The URL lists (CSV, TSV or Parquet; a path, glob or list of them) as DataFrame(url, class).

    Raises ``ConfigError`` naming ``let_it_wag.images.urls.lists`` when no file matches, and naming the file
    when it lacks the URL or class column. Rows with an empty URL or class are dropped (a URL list's blank
    lines); duplicate (url, class) rows are kept once.
    """
    files = _expand(pattern)
    if not files:
        raise ConfigError(f"{KEY}.lists: no file matches {pattern!r}")
    frames = []
    for file in files:
        suffix = file.suffix.lower()
        if suffix == ".parquet":
            table = pd.read_parquet(file)
        elif suffix in (".csv", ".tsv"):
            table = pd.read_csv(file, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        else:
            raise ConfigError(f"{KEY}.lists: {file}: expected a .csv, .tsv or .parquet file")
        missing = [c for c in (url_column, class_column) if c not in table.columns]
        if missing:
            raise ConfigError(f"{KEY}: {file} has no column(s) {missing} (columns: {list(table.columns)})")
        frames.append(pd.DataFrame({"url": table[url_column].astype(str).str.strip(),
                                    "class": table[class_column].astype(str).str.strip()}))  # fmt: skip
    out = pd.concat(frames, ignore_index=True)
    out = out[(out["url"] != "") & (out["class"] != "")]
    return out.drop_duplicates().reset_index(drop=True)


def _expand(pattern: str | Sequence[str]) -> list[Path]:
    import glob

    items = [pattern] if isinstance(pattern, str) else list(pattern)
    found: list[Path] = []
    for item in items:
        matches = (
            sorted(glob.glob(item)) if any(ch in item for ch in "*?[") else ([item] if Path(item).is_file() else [])
        )
        found.extend(Path(m) for m in matches)
    return found


def run_img2dataset(
    urls: pd.DataFrame,
    out_dir: str | os.PathLike,
    python: str,
    *,
    output_format: str = "files",
    encode_format: str = "jpg",
    image_size: int | None = None,
    threads: int = 16,
    processes: int = 1,
    timeout: int = 10,
    retries: int = 0,
) -> Path:
    """Download ``urls`` (DataFrame(url, class)) with img2dataset in the environment of ``python``.

    ``out_dir`` is removed first and filled anew (not with img2dataset's ``incremental_mode: overwrite``:
    in 1.47.0 that deletes the folder after making its ``_tmp`` sub-folder, and the download then fails). ``image_size``: null keeps
    each image's size (``resize_mode: no``, but still decoded and re-encoded as ``encode_format``, so bytes
    that do not decode fail as ``failed_to_resize``); else the longer side is cut to it. ``timeout``:
    seconds per URL. ``encode_format`` png is lossless (img2dataset's quality is then the zlib level: 3);
    jpg and webp are written at quality 95. Returns ``out_dir``. Raises ``RuntimeError`` with img2dataset's stderr when it fails.
    """
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = out.parent / f"{out.name}.urls.parquet"
    listed = pd.DataFrame({_URL: urls["url"], _CLASS: urls["class"], _INDEX: range(len(urls))})
    listed.to_parquet(table, index=False)
    kwargs: dict[str, Any] = {
        "url_list": str(table), "input_format": "parquet", "url_col": _URL,
        "save_additional_columns": [_CLASS, _INDEX], "output_folder": str(out), "output_format": output_format,
        "encode_format": encode_format, "encode_quality": 3 if encode_format == "png" else 95, "resize_mode": "no" if image_size is None else "keep_ratio_largest",
        "image_size": image_size or 256, "resize_only_if_bigger": True, "thread_count": threads,
        "processes_count": processes, "timeout": timeout, "retries": retries, "enable_wandb": False,
        "incremental_mode": "incremental", "distributor": "multiprocessing", "compute_hash": None,
        "extract_exif": False, "number_sample_per_shard": 10000,
    }  # fmt: skip
    run = subprocess.run([python, "-c", _DRIVER, json.dumps(kwargs)], capture_output=True, text=True, env=_env())
    if run.returncode != 0:
        raise RuntimeError(f"img2dataset ({python}) failed with exit code {run.returncode}:\n{run.stderr[-3000:]}")
    return out


def read_download_stats(out_dir: str | os.PathLike) -> pd.DataFrame:
    """Every URL's outcome from img2dataset's per-shard Parquet files: DataFrame(key, url, class, index, status,
    error_message). Raises ``FileNotFoundError`` when there is none, ``ValueError`` naming a file without the
    expected columns."""
    files = sorted(Path(out_dir).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{out_dir}: no img2dataset shard Parquet (did the download run?)")
    need = ["key", "url", "status", "error_message", _CLASS, _INDEX]
    frames = []
    for file in files:
        frame = pd.read_parquet(file)
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise ValueError(f"{file}: not an img2dataset shard table; missing columns {missing}")
        frames.append(frame[need].rename(columns={_CLASS: "class", _INDEX: "index"}))
    return pd.concat(frames, ignore_index=True)


def skips_per_class(stats: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Counted skips per class (``DOWNLOAD_SKIPS``): URLs, downloaded, failed to download, failed to decode,
    and the first error message seen (e.g. ``HTTP Error 404: File not found``); classes keep their order."""
    rows = []
    for name in classes:
        mine = stats[stats["class"] == name]
        errors = mine.loc[mine["status"] != "success", "error_message"].dropna()
        rows.append({"class": name, "urls": len(mine), "downloaded": int((mine["status"] == "success").sum()),
                     "failed_download": int((mine["status"] == "failed_to_download").sum()),
                     "failed_decode": int((mine["status"] == "failed_to_resize").sum()),
                     "first_error": str(errors.iloc[0]) if len(errors) else None})  # fmt: skip
    table = pd.DataFrame(rows, columns=list(DOWNLOAD_SKIPS.columns))
    return DOWNLOAD_SKIPS.validate(table.astype({c: "int64" for c in ("urls", "downloaded", "failed_download",
                                                                        "failed_decode")}))  # fmt: skip


def collect_images(
    out_dir: str | os.PathLike, stats: pd.DataFrame, output_format: str, encode_format: str
) -> dict[str, list[Path]]:
    """Paths of the downloaded images per class. ``files``: img2dataset's own files; ``webdataset``: the
    images of each tar extracted into ``<out_dir>/extracted/<shard>/<key>.<ext>`` (read as bytes, unchanged)."""
    out = Path(out_dir)
    ok = stats[stats["status"] == "success"]
    by_key = dict(zip(ok["key"].astype(str), ok["class"]))
    found: dict[str, list[Path]] = {}
    if output_format == "files":
        for key, name in by_key.items():
            matches = sorted(out.glob(f"*/{key}.{encode_format}"))
            if matches:
                found.setdefault(name, []).append(matches[0])
    else:
        for tar_path in sorted(out.glob("*.tar")):
            target = out / "extracted" / tar_path.stem
            target.mkdir(parents=True, exist_ok=True)
            with tarfile.open(tar_path) as tar:
                for member in tar.getmembers():
                    key, _, ext = member.name.partition(".")
                    if ext != encode_format or key not in by_key or not member.isfile():
                        continue
                    path = target / f"{key}.{ext}"
                    path.write_bytes(tar.extractfile(member).read())
                    found.setdefault(by_key[key], []).append(path)
    return {name: sorted(v) for name, v in found.items()}


def download_candidates(
    urls: pd.DataFrame,
    classes: Sequence[str],
    out_dir: str | os.PathLike,
    python: str,
    settings: Mapping[str, Any] | None = None,
) -> tuple[dict[str, list[Path]], pd.DataFrame]:
    """Download the URLs of ``classes`` (names as in ``urls['class']``) and read back what came.

    ``settings``: ``run_img2dataset`` keywords (output_format, encode_format, image_size, threads, processes,
    timeout, retries). Returns (class -> image paths, the ``DOWNLOAD_SKIPS`` table); a class whose every URL
    failed has an empty list (the builder then drops it as below ``min_images``, reported).
    """
    settings = dict(settings or {})
    chosen = urls[urls["class"].isin(list(classes))].reset_index(drop=True)
    if chosen.empty:
        raise ConfigError(f"{KEY}.lists: no URL of the selected classes {list(classes)[:5]}")
    out = run_img2dataset(chosen, out_dir, python, **settings)
    stats = read_download_stats(out)
    images = collect_images(out, stats, settings.get("output_format", "files"), settings.get("encode_format", "jpg"))
    return {name: images.get(name, []) for name in classes}, skips_per_class(stats, classes)


__all__ = [
    "DOWNLOAD_SKIPS", "ENV_VAR", "collect_images", "download_candidates", "find_python", "read_download_stats",
    "read_url_lists", "run_img2dataset", "skips_per_class",
]  # fmt: skip
