"""Streaming caption readers for pretraining corpora, shard by shard, with per-shard bad-input stats.

Formats (``CaptionSource.format``):

``tsv``      CC-3M style: one record per line, fields split on a tab, no quoting. ``header`` (default
             false), ``caption_column`` (default 0: an index, or a name when there is a header),
             ``n_columns`` (rows with another field count are malformed; default: the header's width
             when there is one, else only rows too short for the caption column are malformed).
``csv``      RFC 4180 CSV (quoted fields may span lines; one record per row). ``header`` default true,
             ``caption_column`` default ``"caption"``.
``parquet``  LAION / img2dataset metadata: one record per row; ``caption_column`` default ``"caption"``
             (LAION's own metadata calls it ``"TEXT"``). The column must be a string or binary column.
``wds``      webdataset tar shards as img2dataset writes them: files grouped into samples by key (the path
             up to the first dot of the file name, as webdataset does); the caption is the sample's
             ``.txt`` file (``text_ext="txt"``) or the ``caption_key`` field of its ``.json`` file
             (``text_ext="json"``). The sample's key is kept (``CaptionBatch.keys``).
``txt``      plain text: one caption per line.

``.gz`` compressed tsv/csv/txt files are read transparently. Text is UTF-8; a UTF-8 byte-order mark is
dropped, and a UTF-16/UTF-32 shard (recognised by its byte-order mark) is refused with a shard error naming
the file and the encoding (``helpers.text.encodings``). Lines end at ``\n`` or ``\r\n`` only.

``decode`` (every format; default ``none``): ``url`` percent-decodes each caption and reads ``+`` as a
space (``urllib.parse.unquote_plus``, UTF-8; invalid bytes counted as ``invalid_utf8``), as the YFCC-15M
metadata needs (its titles and descriptions are URL-encoded: ``hot%20dog%2Cketchup+and+mustard``).

Sample ids (stable, documented, shared with the image side): ``sample_id = (shard_index << 32) |
position`` (int64), where ``shard_index`` is the shard's position in the sorted (by path string) shard
list of the corpus -- missing shards keep their place -- and ``position`` counts every record of the shard
in file order, bad ones (empty, malformed, invalid UTF-8) included. For tars a record is a sample (a key
group); ``iter_tar_samples`` is the one grouping both sides use.

Bad input never raises: per shard, ``ShardStats`` counts records, usable captions, empty (None, NaN,
blank or no caption file), invalid UTF-8 (decoded with U+FFFD replacements and still searched), truncated
(longer than ``max_caption_chars``; cut to that length and still searched), malformed rows (wrong field
count, undecodable CSV or JSON) and holds a shard-level ``error`` (missing or unreadable file, truncated
tar: the samples completed before the damage are kept, the partly read one is not). A wrong
configuration (unknown format or key, missing column) raises ``ConfigError`` naming the config key.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import math
import os
import re
import sys
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from helpers.shards import (
    MAX_RECORDS_PER_SHARD,
    MAX_SHARDS,
    ConfigError,
    Shard,
    make_sample_ids,
)
from helpers.text.encodings import EncodingError, skip_utf8_bom, url_decode
from helpers.text.encodings import decode_lenient as _decode  # BOM-aware, U+FFFD for invalid bytes
from helpers.text.tars import ShardReadError, iter_tar_samples

FORMATS = ("tsv", "csv", "parquet", "wds", "txt")
SUFFIXES = {
    "tsv": (".tsv", ".tsv.gz"),
    "csv": (".csv", ".csv.gz"),
    "parquet": (".parquet",),
    "wds": (".tar", ".tar.gz", ".tgz"),
    "txt": (".txt", ".txt.gz"),
}
DEFAULT_MAX_CAPTION_CHARS = 4096
DEFAULT_READ_BATCH = 8192
DECODES = ("none", "url")
_BRACE_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_BRACE_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


@dataclass
class ShardStats:
    """Per-shard counts of what was read and what was wrong with it."""

    shard: int
    path: str
    records: int = 0  # every record, bad ones included (= the next position)
    captions: int = 0  # records with a usable (non-empty) caption
    empty: int = 0
    invalid_utf8: int = 0
    truncated: int = 0
    malformed: int = 0
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CaptionBatch:
    """A batch of consecutive records of one shard; ``captions[i]`` is None for a record without one."""

    sample_ids: np.ndarray  # int64
    captions: list[str | None]
    keys: list[str | None] | None = None


@dataclass(frozen=True)
class CaptionSource:
    """Where the captions of a corpus are and how to read them (see the module docstring).

    ``paths``: one path or pattern, or a list of them (stored as a tuple). Defaults by format: tsv
    ``caption_column=0, header=False``; csv and parquet ``caption_column="caption"`` (csv ``header=True``);
    wds ``text_ext="txt"`` (``"json"`` reads ``caption_key``). ``max_caption_chars`` truncates (counted);
    ``batch_size`` is the number of records per ``CaptionBatch``. ``decode``: ``none`` or ``url``
    (percent-escapes and ``+``, for URL-encoded metadata such as YFCC-15M's).
    """

    format: str
    paths: tuple[str, ...]
    caption_column: str | int | None = None
    key_column: str | int | None = None
    header: bool | None = None
    n_columns: int | None = None
    delimiter: str | None = None
    text_ext: str = "txt"
    caption_key: str = "caption"
    max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS
    batch_size: int = DEFAULT_READ_BATCH
    decode: str = "none"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"format: unknown caption format {self.format!r} (expected one of {', '.join(FORMATS)})")
        if self.decode not in DECODES:
            raise ConfigError(f"decode: expected one of {', '.join(DECODES)}, got {self.decode!r}")
        paths = (self.paths,) if isinstance(self.paths, (str, os.PathLike)) else tuple(self.paths or ())
        paths = tuple(os.fspath(p) for p in paths)
        if not paths:
            raise ConfigError("paths: no caption shard paths given")
        object.__setattr__(self, "paths", paths)
        if self.format in ("tsv", "csv"):
            header = (self.format == "csv") if self.header is None else self.header
            if not isinstance(header, bool):
                raise ConfigError(f"header: expected true or false, got {self.header!r}")
            object.__setattr__(self, "header", header)
            column = (
                self.caption_column if self.caption_column is not None else (0 if self.format == "tsv" else "caption")
            )
            object.__setattr__(self, "caption_column", column)
            delimiter = self.delimiter or ("\t" if self.format == "tsv" else ",")
            if len(delimiter) != 1:
                raise ConfigError(f"delimiter: must be one character, got {delimiter!r}")
            object.__setattr__(self, "delimiter", delimiter)
            for key in ("caption_column", "key_column"):
                value = getattr(self, key)
                if isinstance(value, str) and not header:
                    raise ConfigError(f"{key}: column name {value!r} needs header: true (or give a column index)")
                if isinstance(value, bool) or (value is not None and not isinstance(value, (str, int))):
                    raise ConfigError(f"{key}: expected a column name or index, got {value!r}")
                if isinstance(value, int) and value < 0:
                    raise ConfigError(f"{key}: column index must be >= 0, got {value}")
            if self.n_columns is not None and (not isinstance(self.n_columns, int) or self.n_columns < 1):
                raise ConfigError(f"n_columns: expected a positive integer, got {self.n_columns!r}")
        elif self.format == "parquet":
            object.__setattr__(
                self, "caption_column", "caption" if self.caption_column is None else self.caption_column
            )
        elif self.format == "wds":
            if self.text_ext not in ("txt", "json"):
                raise ConfigError(f"text_ext: expected 'txt' or 'json', got {self.text_ext!r}")
        for key in ("max_caption_chars", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key}: expected a positive integer, got {value!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CaptionSource:
        """From a mapping (e.g. a ``params.yaml`` section); unknown keys are refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(
                f"{', '.join(unknown)}: unknown caption source key(s) (known: {', '.join(sorted(known))})"
            )
        for key in ("format", "paths"):
            if key not in config:
                raise ConfigError(f"{key}: missing from the caption source config")
        return cls(**dict(config))

    def to_config(self) -> dict:
        """JSON-serialisable description (part of a run fingerprint)."""
        out = asdict(self)
        out["paths"] = list(self.paths)
        return out


# ------------------------------------------------------------------------------------- shard lists


def _expand_braces(pattern: str) -> list[str]:
    """``{000..012}`` (zero-padded numeric ranges) and ``{a,b}`` alternatives, as webdataset writes them."""
    match = _BRACE_RANGE.search(pattern)
    if match:
        lo, hi = match.group(1), match.group(2)
        width = len(lo) if lo.startswith("0") else 0
        return [
            p
            for i in range(int(lo), int(hi) + 1)
            for p in _expand_braces(pattern[: match.start()] + str(i).zfill(width) + pattern[match.end() :])
        ]
    match = _BRACE_LIST.search(pattern)
    if match:
        return [
            p
            for alt in match.group(1).split(",")
            for p in _expand_braces(pattern[: match.start()] + alt + pattern[match.end() :])
        ]
    return [pattern]


def list_shards(source: CaptionSource) -> list[Shard]:
    """The corpus's shards, sorted by path; ``Shard.index`` is the position in that list.

    Paths may be files (kept even when missing: a missing shard is reported, never skipped), brace
    patterns, glob patterns (one matching nothing is a config error) or directories (their files with the
    format's suffixes). A glob over a growing folder changes indices; brace patterns or lists do not.
    """
    found: set[str] = set()
    for raw in source.paths:
        for path in _expand_braces(raw):
            if glob.has_magic(path):
                matches = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
                if not matches:
                    raise ConfigError(f"paths: pattern {path!r} matches no files")
                found.update(matches)
            elif os.path.isdir(path):
                files = [os.path.join(path, f) for f in os.listdir(path) if f.endswith(SUFFIXES[source.format])]
                if not files:
                    raise ConfigError(f"paths: folder {path!r} holds no {'/'.join(SUFFIXES[source.format])} files")
                found.update(files)
            else:
                found.add(path)
    shards = [Shard(i, p) for i, p in enumerate(sorted(found))]
    if len(shards) > MAX_SHARDS:
        raise ConfigError(f"paths: {len(shards)} shards exceed the sample-id limit of 2**31")
    return shards


def check_source(source: CaptionSource, shards: Sequence[Shard] | None = None) -> None:
    """Fail fast on a wrong configuration: open the first existing shard and resolve its columns."""
    shards = list_shards(source) if shards is None else shards
    for shard in shards:
        if os.path.exists(shard.path):
            stats = ShardStats(shard.index, shard.path)
            reader = read_shard(source, Shard(shard.index, shard.path), stats, max_records=1)
            for _ in reader:
                pass
            return


# ----------------------------------------------------------------------------------------- reading


class _Batcher:
    """Accumulates cleaned records of a shard and emits ``CaptionBatch`` objects."""

    def __init__(self, source: CaptionSource, stats: ShardStats, with_keys: bool) -> None:
        self.source, self.stats, self.with_keys = source, stats, with_keys
        self.captions: list[str | None] = []
        self.keys: list[str | None] = []
        self.start = 0

    def add(self, caption: Any, key: str | None = None, *, invalid: bool = False, malformed: bool = False) -> None:
        stats = self.stats
        if stats.records >= MAX_RECORDS_PER_SHARD:
            raise ShardReadError("more than 2**32 records in one shard")
        stats.records += 1
        if self.source.decode == "url" and isinstance(caption, str) and not malformed:
            caption, bad = url_decode(caption)
            invalid = invalid or bad
        if invalid:
            stats.invalid_utf8 += 1
        if malformed:
            stats.malformed += 1
            caption = None
        elif caption is None or (isinstance(caption, float) and math.isnan(caption)):
            stats.empty += 1
            caption = None
        elif not isinstance(caption, str):
            stats.malformed += 1
            caption = None
        elif not caption or caption.isspace():
            stats.empty += 1
            caption = None
        else:
            if len(caption) > self.source.max_caption_chars:
                stats.truncated += 1
                caption = caption[: self.source.max_caption_chars]
            stats.captions += 1
        self.captions.append(caption)
        if self.with_keys:
            self.keys.append(key)

    def full(self) -> bool:
        return len(self.captions) >= self.source.batch_size

    def flush(self) -> CaptionBatch | None:
        if not self.captions:
            return None
        ids = make_sample_ids(self.stats.shard, np.arange(self.start, self.start + len(self.captions)))
        batch = CaptionBatch(ids, self.captions, self.keys if self.with_keys else None)
        self.start += len(self.captions)
        self.captions, self.keys = [], []
        return batch


def _skip_bom(stream: IO[bytes], path: str) -> None:
    try:
        skip_utf8_bom(stream, path)
    except EncodingError as err:
        raise ShardReadError(str(err)) from err


def _unescape(text: str) -> tuple[str, bool]:
    """Text read with ``surrogateescape``: re-decode its invalid bytes with replacements."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace"), True


def _open_binary(path: str) -> IO[bytes]:
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _column_index(source: CaptionSource, key: str, names: list[str] | None, path: str) -> int | None:
    value = getattr(source, key)
    if value is None or isinstance(value, int):
        return value
    if names is None or value not in names:
        raise ConfigError(f"{key}: column {value!r} not in the header of {path} (columns: {names})")
    return names.index(value)


def _read_tsv(source: CaptionSource, path: str, batcher: _Batcher, max_records: int | None) -> Iterator[CaptionBatch]:
    sep = source.delimiter.encode()
    with _open_binary(path) as fh:
        _skip_bom(fh, path)
        names = None
        n_columns = source.n_columns
        if source.header:
            first = fh.readline()
            if not first:
                raise ShardReadError("empty file: no header line")
            names = [_decode(f)[0] for f in first.rstrip(b"\r\n").split(sep)]
            n_columns = n_columns or len(names)
        cap_i = _column_index(source, "caption_column", names, path)
        key_i = _column_index(source, "key_column", names, path)
        need = max(cap_i, key_i if key_i is not None else -1)
        for raw in fh:
            parts = raw.rstrip(b"\r\n").split(sep)
            if (n_columns is not None and len(parts) != n_columns) or len(parts) <= need:
                batcher.add(None, malformed=True)
            else:
                caption, invalid = _decode(parts[cap_i])
                key = _decode(parts[key_i])[0] if key_i is not None else None
                batcher.add(caption, key, invalid=invalid)
            if batcher.full():
                yield batcher.flush()
            if max_records is not None and batcher.stats.records >= max_records:
                break


def _read_csv(source: CaptionSource, path: str, batcher: _Batcher, max_records: int | None) -> Iterator[CaptionBatch]:
    # a 1 MB caption must be read (then truncated), not refused by the csv module's 128 kB field limit;
    # the limit is process-wide, so it is only ever raised, never lowered
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))
    with _open_binary(path) as fb:
        _skip_bom(fb, path)
        text = io.TextIOWrapper(fb, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=source.delimiter)
        names = None
        n_columns = source.n_columns
        if source.header:
            try:
                names = [_unescape(f)[0] for f in next(reader)]
            except StopIteration:
                raise ShardReadError("empty file: no header line") from None
            except csv.Error as err:
                raise ShardReadError(f"unreadable CSV header: {err}") from err
            n_columns = n_columns or len(names)
        cap_i = _column_index(source, "caption_column", names, path)
        key_i = _column_index(source, "key_column", names, path)
        need = max(cap_i, key_i if key_i is not None else -1)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error:  # e.g. a NUL byte or an unterminated quote: one malformed record
                batcher.add(None, malformed=True)
                row = None
            if row is not None:
                if (n_columns is not None and len(row) != n_columns) or len(row) <= need:
                    batcher.add(None, malformed=True)
                else:
                    caption, invalid = _unescape(row[cap_i])
                    key = _unescape(row[key_i])[0] if key_i is not None else None
                    batcher.add(caption, key, invalid=invalid)
            if batcher.full():
                yield batcher.flush()
            if max_records is not None and batcher.stats.records >= max_records:
                break


def _read_txt(source: CaptionSource, path: str, batcher: _Batcher, max_records: int | None) -> Iterator[CaptionBatch]:
    with _open_binary(path) as fh:
        _skip_bom(fh, path)
        for raw in fh:
            caption, invalid = _decode(raw.rstrip(b"\r\n"))
            batcher.add(caption, invalid=invalid)
            if batcher.full():
                yield batcher.flush()
            if max_records is not None and batcher.stats.records >= max_records:
                break


def _read_parquet(
    source: CaptionSource, path: str, batcher: _Batcher, max_records: int | None
) -> Iterator[CaptionBatch]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise ShardReadError(f"unreadable Parquet file: {err}") from err
    names = pf.schema_arrow.names
    columns = []
    for key in ("caption_column", "key_column"):
        value = getattr(source, key)
        if value is None:
            columns.append(None)
            continue
        if isinstance(value, int):
            if not 0 <= value < len(names):
                raise ConfigError(f"{key}: column index {value} out of range for {path} ({len(names)} columns)")
            value = names[value]
        if value not in names:
            raise ConfigError(f"{key}: column {value!r} not in {path} (columns: {names})")
        columns.append(value)
    cap_col, key_col = columns
    cap_type = pf.schema_arrow.field(cap_col).type
    if not (
        pa.types.is_string(cap_type)
        or pa.types.is_large_string(cap_type)
        or pa.types.is_binary(cap_type)
        or pa.types.is_large_binary(cap_type)
        or pa.types.is_null(cap_type)
        or getattr(pa.types, "is_string_view", lambda t: False)(cap_type)
    ):
        raise ConfigError(f"caption_column: column {cap_col!r} of {path} has type {cap_type}, not text")
    binary = pa.types.is_binary(cap_type) or pa.types.is_large_binary(cap_type)
    wanted = [c for c in dict.fromkeys([cap_col, key_col]) if c is not None]
    try:
        for rb in pf.iter_batches(batch_size=source.batch_size, columns=wanted):
            captions = rb.column(cap_col).to_pylist()
            keys = rb.column(key_col).to_pylist() if key_col is not None else [None] * len(captions)
            for caption, key in zip(captions, keys):
                invalid = False
                if binary and caption is not None:
                    caption, invalid = _decode(caption)
                batcher.add(caption, None if key is None else str(key), invalid=invalid)
                if batcher.full():
                    yield batcher.flush()
                if max_records is not None and batcher.stats.records >= max_records:
                    return
    except (pa.ArrowException, OSError) as err:
        raise ShardReadError(f"Parquet file damaged after {batcher.stats.records} records: {err}") from err


def _read_wds(source: CaptionSource, path: str, batcher: _Batcher, max_records: int | None) -> Iterator[CaptionBatch]:
    ext = source.text_ext
    for sample in iter_tar_samples(path, {ext}):
        data = sample.files.get(ext)
        if data is None:
            batcher.add(None, sample.key)
        elif ext == "txt":
            caption, invalid = _decode(data)
            batcher.add(caption, sample.key, invalid=invalid)
        else:
            text, invalid = _decode(data)
            try:
                meta = json.loads(text)
            except json.JSONDecodeError:
                batcher.add(None, sample.key, invalid=invalid, malformed=True)
            else:
                caption = meta.get(source.caption_key) if isinstance(meta, dict) else None
                batcher.add(caption, sample.key, invalid=invalid, malformed=not isinstance(meta, dict))
        if batcher.full():
            yield batcher.flush()
        if max_records is not None and batcher.stats.records >= max_records:
            return


_READERS = {"tsv": _read_tsv, "csv": _read_csv, "txt": _read_txt, "parquet": _read_parquet, "wds": _read_wds}


def read_shard(
    source: CaptionSource, shard: Shard, stats: ShardStats | None = None, *, max_records: int | None = None
) -> Iterator[CaptionBatch]:
    """Stream one shard as ``CaptionBatch`` objects of ``source.batch_size`` records.

    Counts go into ``stats`` (pass a ``ShardStats`` to read them afterwards). Shard-level problems are
    recorded in ``stats.error`` and end the stream after what could be read; only ``ConfigError`` raises.
    """
    stats = ShardStats(shard.index, shard.path) if stats is None else stats
    with_keys = source.format == "wds" or source.key_column is not None
    batcher = _Batcher(source, stats, with_keys)
    if not os.path.exists(shard.path):
        stats.error = f"missing shard: {shard.path} does not exist"
        return
    try:
        yield from _READERS[source.format](source, shard.path, batcher, max_records)
    except ShardReadError as err:
        stats.error = str(err)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        stats.error = f"unreadable shard after {stats.records} records: {type(err).__name__}: {err}"
    last = batcher.flush()
    if last is not None:
        yield last
