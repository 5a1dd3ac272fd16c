"""Import the authors' released artifacts, pinned to one commit, and verify them.

The release (counts, evaluations, concept lists) is published in the authors' GitHub repository.
``import_release`` copies it into ``data/raw/release`` either from a local copy (a clone of the
pinned commit, or any folder with the same layout) or, when none is given, by downloading each file
of the manifest from GitHub at the pinned commit. Every file is checked against the SHA-256 in
``helpers/data/release_manifest.csv``; JSON files must also parse. A checksum mismatch or corrupt
JSON is refused with the file named. Optional files (large upstream files that are not always
obtainable) may be missing; the import report lists them.

One file is not part of the authors' repository: ``extra/openclip_imagenet_accuracy.csv``, the
ImageNet top-1 of the Let It Wag! models that have no entry in ``zero_shot_evaluations/``. The
authors took these numbers from open_clip's published results table; when downloading, we derive
the same table from that file at a pinned open_clip commit (``helpers/data/openclip_imagenet_map.csv``
says which row of it belongs to which model key).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tqdm.auto import tqdm

from helpers.hashing import sha256_bytes, sha256_file

LOCAL_COPY_ENV = "FDP_RELEASE_LOCAL_COPY"
RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
EXTRA_IMAGENET_FILE = "extra/openclip_imagenet_accuracy.csv"
REPORT_NAME = "IMPORT_REPORT.json"


class ReleaseError(RuntimeError):
    """The release could not be imported; the message says which file and what to do."""


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    sha256: str  # empty when the upstream file's checksum is unknown (optional files)
    size: int | None
    required: bool


@dataclass
class ImportReport:
    source: str
    commit: str
    copied: list[str] = field(default_factory=list)
    missing_optional: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)  # optional files present without a known checksum

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "commit": self.commit,
            "n_files": len(self.copied),
            "missing_optional": sorted(self.missing_optional),
            "unverified_optional": sorted(self.unverified),
        }


def load_manifest() -> list[ManifestEntry]:
    """The files of the pinned release, with their checksums."""
    text = resources.files("helpers.data").joinpath("release_manifest.csv").read_text()
    entries = []
    for row in csv.DictReader(io.StringIO(text)):
        entries.append(
            ManifestEntry(
                path=row["path"],
                sha256=row["sha256"],
                size=int(row["bytes"]) if row["bytes"] else None,
                required=row["status"] == "required",
            )
        )
    return entries


def resolve_local_copy(param_value: str | os.PathLike | None) -> Path | None:
    """The local copy to import from: the environment variable wins over params.yaml."""
    value = os.environ.get(LOCAL_COPY_ENV) or param_value
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ReleaseError(
            f"The release copy {path} (from {'$' + LOCAL_COPY_ENV if os.environ.get(LOCAL_COPY_ENV) else 'params.yaml release.local_copy'}) "
            "is not a folder. Point it at a clone of the authors' repository at the pinned commit."
        )
    return path


def sha256_of(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (``helpers.hashing.sha256_bytes``)."""
    return sha256_bytes(data)


def verify_bytes(entry: ManifestEntry, data: bytes) -> None:
    """Refuse a file whose checksum differs from the manifest or whose JSON does not parse."""
    if entry.sha256 and sha256_of(data) != entry.sha256:
        raise ReleaseError(
            f"Checksum mismatch for {entry.path}: expected sha256 {entry.sha256}, got {sha256_of(data)}. "
            "The file is corrupt or from another commit; re-fetch it from the pinned commit."
        )
    if entry.path.endswith(".json"):
        try:
            json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ReleaseError(f"Corrupt JSON in {entry.path}: {err}") from err


def _no_network_message(repo: str, commit: str, err: Exception) -> str:
    return (
        f"Could not download the release from github.com/{repo} ({err}). "
        "With no network, import from a local copy instead: clone the repository, check out commit "
        f"{commit}, and set release.local_copy in params.yaml or the environment variable "
        f"{LOCAL_COPY_ENV}=/path/to/the/clone, then run `dvc repro` again."
    )


def _download(url: str, timeout: float = 60.0) -> bytes | None:
    """Bytes at url, or None for a 404 (a file missing upstream). Other failures raise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def derive_openclip_imagenet_table(results_csv: str, model_map_csv: str) -> bytes:
    """Build extra/openclip_imagenet_accuracy.csv from open_clip's published results table."""
    results = {(row["name"], row["pretrained"]): row for row in csv.DictReader(io.StringIO(results_csv))}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["model_key", "imagenet_top1", "source"])
    for row in csv.DictReader(io.StringIO(model_map_csv)):
        key = (row["openclip_name"], row["openclip_pretrained"])
        if key not in results:
            raise ReleaseError(f"open_clip's results table has no row {key} for {row['model_key']}")
        top1 = round(float(results[key]["ImageNet 1k"]) * 100, 2)
        writer.writerow([row["model_key"], f"{top1:.2f}", "open_clip docs/openclip_classification_results.csv"])
    return out.getvalue().encode()


def _fetch_extra_from_openclip(openclip: dict) -> bytes | None:
    url = RAW_URL.format(repo=openclip["repo"], commit=openclip["commit"], path=openclip["results_path"])
    data = _download(url)
    if data is None:
        return None
    if sha256_of(data) != openclip["sha256"]:
        raise ReleaseError(f"Checksum mismatch for open_clip's {openclip['results_path']} at {openclip['commit']}")
    model_map = resources.files("helpers.data").joinpath("openclip_imagenet_map.csv").read_text()
    return derive_openclip_imagenet_table(data.decode(), model_map)


def import_release(
    dest: Path,
    *,
    repo: str,
    commit: str,
    local_copy: str | os.PathLike | None = None,
    openclip: dict | None = None,
    workers: int = 8,
    progress: bool = True,
) -> ImportReport:
    """Copy and verify the pinned release into ``dest``; what was there is kept unless the import succeeds.

    Every file is verified in memory (checksum, JSON) as it arrives, written to a staging folder next to
    ``dest`` (``<dest>.partial``), and the staged copy is verified again from disk (``verify_staged``) before
    it is swapped in: the old ``dest`` is renamed aside, the staging folder renamed into place, and only
    then is the old one deleted. Any failure removes the staging folder and leaves ``dest`` as it was.
    (``dvc repro`` would delete ``dest`` itself before running the stage; dvc.yaml marks it ``persist``.)
    Raises ``ReleaseError`` naming the file at fault.
    """
    source_dir = resolve_local_copy(local_copy)
    manifest = load_manifest()
    report = ImportReport(source=str(source_dir) if source_dir else f"github.com/{repo}@{commit}", commit=commit)

    if source_dir is not None:

        def read(entry: ManifestEntry) -> bytes | None:
            path = source_dir / entry.path
            return path.read_bytes() if path.is_file() else None
    else:

        def read(entry: ManifestEntry) -> bytes | None:
            if entry.path == EXTRA_IMAGENET_FILE:
                return _fetch_extra_from_openclip(openclip) if openclip else None
            return _download(RAW_URL.format(repo=repo, commit=commit, path=entry.path))

    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    def fetch_one(entry: ManifestEntry) -> tuple[ManifestEntry, bytes | None]:
        return entry, read(entry)

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        results = pool.map(fetch_one, manifest)
        for entry, data in tqdm(results, total=len(manifest), desc="release files", disable=not progress):
            if data is None:
                if entry.required:
                    raise ReleaseError(
                        f"Required release file {entry.path} is missing from {report.source}. "
                        "Is this a clone of the pinned commit?"
                    )
                report.missing_optional.append(entry.path)
                continue
            verify_bytes(entry, data)
            if not entry.sha256:
                report.unverified.append(entry.path)
            target = staging / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            report.copied.append(entry.path)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise ReleaseError(_no_network_message(repo, commit, err)) from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        # fail fast: queued downloads are cancelled instead of each waiting for its time-out
        pool.shutdown(wait=False, cancel_futures=True)

    try:
        verify_staged(staging, manifest, report.copied)
        (staging / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, dest)
    return report


def verify_staged(staging: Path, manifest: list[ManifestEntry], copied: list[str]) -> None:
    """Check the staged copy on disk: every copied file exists with its manifest checksum (a short write,
    a full disk or a concurrent edit is caught before the copy replaces anything); raises ``ReleaseError``."""
    expected = {e.path: e for e in manifest}
    for path in copied:
        target = staging / path
        entry = expected[path]
        if not target.is_file():
            raise ReleaseError(f"Staged release file {path} vanished from {staging} before it was swapped in")
        if entry.sha256 and sha256_file(target) != entry.sha256:
            raise ReleaseError(f"Staged release file {path} differs from the manifest checksum after writing")


def swap_in(staging: Path, dest: Path) -> None:
    """Replace ``dest`` by ``staging`` with renames only: the old copy is moved aside first and deleted last,
    so no moment leaves neither (a crash in between leaves ``<dest>.previous``, restored on the next call)."""
    previous = dest.with_name(dest.name + ".previous")
    if previous.exists() and not dest.exists():
        previous.rename(dest)  # a crash in an earlier swap: put the good copy back first
    shutil.rmtree(previous, ignore_errors=True)
    if dest.exists():
        dest.rename(previous)
    try:
        staging.rename(dest)
    except BaseException:
        if previous.exists() and not dest.exists():
            previous.rename(dest)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def read_import_report(release: Path) -> dict:
    return json.loads((release / REPORT_NAME).read_text())
