"""Corpora declared in params.yaml, and the text-search stage that counts concepts in their captions.

A corpus entry (``corpora.<name>`` in params.yaml)::

    data: data/raw/samples/tsv          # the folder DVC tracks for this corpus (relative to the work folder)
    captions:                           # how to read its captions: a helpers.text.captions.CaptionSource config
      format: tsv                       # tsv | csv | parquet | wds | txt
      paths: data/raw/samples/tsv/part-{00000..00001}.tsv
      caption_column: caption
      header: true

Relative paths are resolved against the work folder (the project root unless FDP_WORKDIR is set). A wrong
entry fails before any shard is read, with an error naming the params key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa

from helpers import paths, schemas
from helpers.params import ConfigError, concept_table_error, validate
from helpers.params.text import Corpus, TextSearch
from helpers.shards import read_shard_stats, run_report, shard_records
from helpers.text.captions import CaptionSource
from helpers.text.search import run_text_search, text_counts

TEXT_COUNTS = pa.DataFrameSchema(
    {
        "corpus": pa.Column(str),
        "concept_id": pa.Column("int32", pa.Check.ge(0)),
        "concept": pa.Column(str),
        "count": pa.Column("int64", pa.Check.ge(0)),
    },
    unique=["corpus", "concept_id"],
    strict=True,
    name="text_counts",
)


def caption_source(name: str, entry: Mapping[str, Any], base: Path | None = None) -> CaptionSource:
    """The CaptionSource of corpus ``name``; errors name the params key (``corpora.<name>.captions.<key>``)."""
    prefix = f"corpora.{name}"
    validate(Corpus, entry, prefix)
    config = dict(entry["captions"])
    base = base or paths.workdir()
    if "paths" in config:
        raw = config["paths"]
        config["paths"] = paths.resolve([raw] if isinstance(raw, str) else raw, base)
    try:
        return CaptionSource.from_config(config)
    except ConfigError as err:
        raise _caption_key_error(name, err) from err


def _caption_key_error(name: str, err: ConfigError) -> ConfigError:
    """A CaptionSource error (``"<key>: why"``) as the params key of corpus ``name``."""
    return ConfigError(f"corpora.{name}.captions.{err}")


def check_text_search_settings(settings: Mapping[str, Any] | TextSearch) -> TextSearch:
    """The ``text_search`` section checked by :class:`helpers.params.text.TextSearch` (errors name its keys)."""
    return validate(TextSearch, settings, "text_search")


@dataclass
class TextSearchResult:
    counts: pd.DataFrame  # TEXT_COUNTS
    shards: pd.DataFrame  # one row per shard: status and reader stats
    report: dict
    notes: list[str] = field(default_factory=list)  # reading_notes: records the readers changed or skipped


def reading_notes(name: str, shards: pd.DataFrame, max_caption_chars: int) -> list[str]:
    """One line per kind of record the readers changed or could not use, summed over ``shards``.

    Every such record is counted in the shard table; these lines say it where a user reads the stage's output
    (the stage warns with them). Truncation comes first: it is the one kind that can hide a concept, since the
    text beyond ``max_caption_chars`` is not searched.
    """

    def total(column: str) -> int:
        return int(shards[column].fillna(0).sum()) if column in shards.columns else 0

    notes = []
    if n := total("truncated"):
        notes.append(
            f"corpora.{name}.captions.max_caption_chars: {n:,} captions longer than {max_caption_chars:,} characters "
            "were cut to that length, so text beyond it was not searched; raise the limit to search them whole"
        )
    if n := total("invalid_utf8"):
        notes.append(f"corpus {name}: {n:,} captions were not valid UTF-8 (searched with U+FFFD replacements)")
    if n := total("malformed"):
        notes.append(f"corpus {name}: {n:,} malformed records (wrong field count, undecodable) were skipped")
    return notes


def text_search_dir(name: str) -> Path:
    """Per-shard outputs of the text search of corpus ``name`` (resumable)."""
    return paths.interim_dir() / "text_search" / name


SEARCHED_CONCEPTS = pa.DataFrameSchema(
    {"concept_id": pa.Column("int32", pa.Check.ge(0), unique=True), "name": pa.Column(str, unique=True)},
    checks=pa.Check(
        lambda df: bool((df["concept_id"].to_numpy() == range(len(df))).all()) if len(df) else True,
        error="concept_id is not 0..n-1 in row order",
    ),
    strict=True,
    name="searched_concepts",
)


def searched_concepts(name: str) -> pd.DataFrame:
    """(concept_id, name) of the concepts corpus ``name``'s caption search counted, in id order."""
    path = concept_table_path(name)
    if not path.exists():
        raise ConfigError(f"corpora.{name}: no caption search at {path.parent} (run text_search@{name} first)")
    return schemas.read_table(path, SEARCHED_CONCEPTS)


def concept_table_path(name: str) -> Path:
    """The concept table a corpus' caption search used (kept beside its shards for the image search)."""
    return text_search_dir(name) / "concepts.parquet"


def load_concepts(name: str, entry: Mapping[str, Any]) -> pd.DataFrame:
    """The concept table ``corpora.<name>.concepts`` names (a Parquet file from the concepts stages)."""
    if not isinstance(entry, Mapping) or not entry.get("concepts"):
        raise ConfigError(
            f"corpora.{name}.concepts: missing (the concept table to search, e.g. data/processed/concepts.parquet)"
        )
    why = concept_table_error(str(entry["concepts"]))
    if why:
        raise ConfigError(f"corpora.{name}.concepts: {why}")
    path = Path(paths.resolve(entry["concepts"]))
    if not path.is_file():
        raise ConfigError(f"corpora.{name}.concepts: {path} not found (run its concepts stage first)")
    return schemas.read_table(path, schemas.CONCEPT_TABLE)


def text_counts_path(name: str) -> Path:
    return paths.processed_dir() / "corpora" / name / "text_counts.parquet"


def shard_table(out_dir: Path) -> pd.DataFrame:
    """One row per shard of a run: its file, status, error and the reader's counters (missing shards too)."""
    run, records, missing = shard_records(out_dir)
    names = {e["index"]: Path(str(e["path"])).name for e in run["shards"]}
    rows = []
    for record in records:
        stats = {
            k: v
            for k, v in read_shard_stats(out_dir, record["shard"]).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "shard"
        }
        rows.append(
            {
                "shard": record["shard"],
                "file": names[record["shard"]],
                "status": record["status"],
                "error": record.get("error") or "",
                **stats,
            }
        )
    rows += [{"shard": i, "file": names[i], "status": "not run", "error": ""} for i in missing]
    return pd.DataFrame(rows).sort_values("shard").reset_index(drop=True)


def require_complete(shards: pd.DataFrame, *, what: str, setting: str, allow_failed: bool) -> None:
    """Stop a stage whose run has failed or missing shards, naming each, unless ``allow_failed``."""
    failed = shards[shards["status"] != "ok"]
    if len(failed) and not allow_failed:
        listing = "; ".join(f"{r.file}: {r.error or r.status}" for r in failed.itertuples())
        raise RuntimeError(
            f"{what}: {len(failed)} shard(s) failed ({listing}). Fix or remove them, or set "
            f"{setting}: true to count the rest (the shard table lists them)."
        )


ACCEPTED_FILE = "accepted_failures.json"


def accept_failures(out_dir: Path, setting: str) -> list[int]:
    """Note in a finished run folder that its failed shards were accepted under ``setting`` (the params key,
    e.g. ``text_search.allow_failed_shards``), so that later stages reading the run (the image stage's matched
    counts and misalignment) honour the same decision instead of asking again. Returns the shard indices.

    The note holds the run's settings sha and each failed shard's input fingerprint: after a rerun that
    changed either, ``accepted_failures`` no longer vouches for that shard.
    """
    run, records, _ = shard_records(out_dir)
    failed = {r["shard"]: r.get("input") for r in records if r["status"] != "ok"}
    note = {"setting": setting, "fingerprint_sha256": run["fingerprint_sha256"], "shards": list(failed.items())}
    tmp = Path(out_dir) / f".{ACCEPTED_FILE}.tmp"
    tmp.write_text(json.dumps(note, indent=1))
    os.replace(tmp, Path(out_dir) / ACCEPTED_FILE)
    return sorted(failed)


def accepted_failures(out_dir: Path) -> set[int]:
    """The failed shards of the run in ``out_dir`` that its stage accepted (``accept_failures``) and that
    have not changed since."""
    try:
        note = json.loads((Path(out_dir) / ACCEPTED_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return set()
    run, records, _ = shard_records(out_dir)
    if note.get("fingerprint_sha256") != run["fingerprint_sha256"]:
        return set()
    failed = {r["shard"]: r.get("input") for r in records if r["status"] != "ok"}
    return {int(i) for i, fp in note.get("shards", []) if int(i) in failed and failed[int(i)] == fp}


def search_corpus(
    name: str,
    entry: Mapping[str, Any],
    concepts: pd.DataFrame,
    settings: Mapping[str, Any] | TextSearch,
    *,
    progress: bool = True,
) -> TextSearchResult:
    """Count the concepts in corpus ``name``'s captions and write its text-counts table.

    ``concepts`` is the concept table (concept_id 0..n-1 in order, name); ``settings`` the ``text_search``
    section of params.yaml. A rerun resumes from the completed shards when nothing changed and starts over
    when the configuration did. A failed shard stops the stage (naming it) unless ``allow_failed_shards``.
    """
    settings = check_text_search_settings(settings)
    source = caption_source(name, entry)
    if not concepts["concept_id"].equals(pd.Series(range(len(concepts)), dtype=concepts["concept_id"].dtype)):
        raise ValueError("concept ids must be 0..n-1 in table order (the concepts stage writes them so)")
    out_dir = text_search_dir(name)
    (out_dir / ACCEPTED_FILE).unlink(missing_ok=True)  # decided again below, for this run
    try:
        run_text_search(
            source,
            concepts["name"].tolist(),
            out_dir,
            mode=settings.mode,
            unknown_words=settings.unknown_words,
            executor=settings.executor,
            workers=settings.workers,
            ray_address=settings.ray_address,
            overwrite=True,
            progress=progress,
        )
    except ConfigError as err:  # found while reading a file (a column missing from its header): name the key
        if str(err).split(":")[0] not in {f.name for f in dataclasses.fields(CaptionSource)}:
            raise  # not about the captions (e.g. the run folder): already names its key
        raise _caption_key_error(name, err) from err
    report = run_report(out_dir)
    shards = shard_table(out_dir)
    allow_failed = settings.allow_failed_shards
    require_complete(
        shards, what=f"corpus {name}", setting="text_search.allow_failed_shards", allow_failed=allow_failed
    )
    if allow_failed:
        accept_failures(out_dir, "text_search.allow_failed_shards")
    counts = text_counts(out_dir, allow_failed=allow_failed)
    notes = reading_notes(name, shards, source.max_caption_chars)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    table = (
        concepts[["concept_id", "name"]].rename(columns={"name": "concept"}).merge(counts, on="concept_id", how="left")
    )
    table["count"] = table["count"].fillna(0).astype("int64")
    table.insert(0, "corpus", name)
    table["concept_id"] = table["concept_id"].astype("int32")
    schemas.write_table(table, TEXT_COUNTS, text_counts_path(name))
    searched = concepts[["concept_id", "name"]].reset_index(drop=True).astype({"concept_id": "int32"})
    schemas.write_table(searched, SEARCHED_CONCEPTS, concept_table_path(name))
    return TextSearchResult(counts=table, shards=shards, report=report, notes=notes)
