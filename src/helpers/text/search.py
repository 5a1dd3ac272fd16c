"""Sharded text search over a corpus: the pure shard function, the resumable run, and the counts.

The matching semantics live in ``helpers.text.matching``; this module maps them over a corpus's caption
shards (process pool, Ray or serial, resumable) and reduces the per-shard hits to counts.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from helpers.shards import (
    SHARD_DIR,
    RunResult,
    Shard,
    ShardChunk,
    check_complete,
    distinct_pairs,
    read_shard_stats,
    run_shards,
)
from helpers.text.captions import (
    CaptionSource,
    ShardStats,
    check_source,
    list_shards,
    read_shard,
)
from helpers.text.matching import DEFAULT_BATCH_SIZE, DEFAULT_SPACY_MODEL, TextMatcher

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs a hub; never let a dependency try one


@dataclass(frozen=True)
class MatcherSpec:
    """A picklable description of a matcher; workers compile it once per process (``build``)."""

    concepts: tuple[str, ...]
    mode: str = "phrase"
    unknown_words: str | None = None
    spacy_model: str = DEFAULT_SPACY_MODEL
    batch_size: int = DEFAULT_BATCH_SIZE
    nlp: Any = field(default=None, compare=False, repr=False)

    def build(self) -> TextMatcher:
        key = (self.concepts, self.mode, self.unknown_words, self.spacy_model, self.batch_size, id(self.nlp))
        matcher = _MATCHERS.get(key)
        if matcher is None or (self.nlp is not None and matcher._nlp is not self.nlp):
            matcher = TextMatcher(
                self.concepts,
                self.mode,
                unknown_words=self.unknown_words,
                nlp=self.nlp,
                spacy_model=self.spacy_model,
                batch_size=self.batch_size,
            )
            while len(_MATCHERS) >= 4:
                _MATCHERS.pop(next(iter(_MATCHERS)))
            _MATCHERS[key] = matcher
        return matcher


_MATCHERS: dict[tuple, TextMatcher] = {}  # per process: a worker compiles each spec once


def _drops_unknown(matcher: TextMatcher) -> bool:
    return matcher.mode != "phrase" and matcher.unknown_words == "drop"


def search_shard(
    shard: Shard, *, source: CaptionSource, spec: MatcherSpec, keep_keys: bool = False
) -> Generator[ShardChunk, None, dict]:
    """The shard function of the caption search: read one shard, yield its hits, return its stats.

    Pure (depends only on the shard's file and the arguments). With ``unknown_words="drop"`` it also
    yields a ``partial`` table (sample_id, concept_id, word_mask) of samples holding some but not all
    words of a concept, and lists in its stats the concept words present in the shard: ``text_counts``
    needs both to apply the corpus-level vocabulary exactly. ``keep_keys`` adds a ``keys`` table
    (sample_id, key) of the records' keys (webdataset keys, or the ``key_column``).
    """
    matcher = spec.build()
    stats = ShardStats(shard.index, shard.path)
    drop = _drops_unknown(matcher)
    present = np.zeros(len(getattr(matcher, "vocabulary", ())), dtype=bool)
    for batch in read_shard(source, shard, stats):
        extra: dict[str, pa.Table] = {}
        if keep_keys and batch.keys is not None:
            extra["keys"] = pa.table(
                {"sample_id": pa.array(batch.sample_ids, pa.int64()), "key": pa.array(batch.keys, pa.string())}
            )
        if not drop:
            hits = matcher.find(batch.captions)
            yield ShardChunk(batch.sample_ids[hits.caption_index], hits.concept_index, extra)
            continue
        rows, words = matcher.word_hits(batch.captions)
        present[words] = True
        partial = matcher._partial_from_words(rows, words)
        full = partial.word_mask == matcher._full_mask[partial.concept_index]
        # A partial row counts only if every word it lacks is absent from the whole corpus. A word seen
        # in this shard is not, so rows lacking one are dropped now (the merge applies the exact rule).
        seen = matcher.query_masks(present)[partial.concept_index]
        useful = ~full & ((seen & ~partial.word_mask) == 0)
        extra["partial"] = pa.table(
            {
                "sample_id": pa.array(batch.sample_ids[partial.caption_index[useful]], pa.int64()),
                "concept_id": pa.array(partial.concept_index[useful], pa.int32()),
                "word_mask": pa.array(partial.word_mask[useful], pa.uint64()),
            }
        )
        yield ShardChunk(batch.sample_ids[partial.caption_index[full]], partial.concept_index[full], extra)
    out = stats.to_dict()
    if drop:
        out["present_words"] = np.flatnonzero(present).tolist()
    return out


def text_search_fingerprint(source: CaptionSource, matcher: TextMatcher, keep_keys: bool = False) -> dict:
    """Everything a caption search's outputs depend on (batch sizes excluded: they change nothing)."""
    src = source.to_config()
    src.pop("batch_size", None)
    fp = {"kind": "text_search", "matcher": matcher.fingerprint(), "source": src, "keep_keys": keep_keys}
    if matcher.mode != "phrase":
        # the resolved concept words: the merge of a 'drop' run needs them, and they depend on the lemmatiser
        fp["vocabulary"] = list(matcher.vocabulary)
        fp["concept_words"] = [
            [matcher._word_index[w] for w in dict.fromkeys(words)] for words in matcher.concept_words
        ]
    return fp


def run_text_search(
    source: CaptionSource | Mapping[str, Any],
    concepts: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    mode: str = "phrase",
    unknown_words: str | None = None,
    nlp: Any = None,
    spacy_model: str = DEFAULT_SPACY_MODEL,
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep_keys: bool = False,
    executor: str = "process",
    workers: int | None = None,
    ray_address: str | None = None,
    retry_failed: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Search every shard of a caption corpus for ``concepts`` (concept id = position), resumably.

    Writes per-shard hits and stats under ``out_dir`` (see ``helpers.shards``); ``text_counts(out_dir)``
    then gives the counts table. A wrong configuration fails here, before any shard is read.
    """
    source = source if isinstance(source, CaptionSource) else CaptionSource.from_config(source)
    shards = list_shards(source)
    check_source(source, shards)
    spec = MatcherSpec(tuple(str(c) for c in concepts), mode, unknown_words, spacy_model, batch_size, nlp)
    matcher = spec.build()  # validates the options and gives the fingerprint
    fn = functools.partial(search_shard, source=source, spec=spec, keep_keys=keep_keys)
    return run_shards(
        shards,
        fn,
        out_dir,
        fingerprint=text_search_fingerprint(source, matcher, keep_keys),
        n_concepts=len(spec.concepts),
        executor=executor,
        workers=workers,
        ray_address=ray_address,
        retry_failed=retry_failed,
        overwrite=overwrite,
        progress=progress,
    )


class TextRunPairs:
    """The (sample, concept) pairs a caption-search run counts, shard by shard: the one reading of a text run,
    used by ``text_counts`` and by the matched counts (``helpers.images.frequencies``).

    For ``unknown_words="drop"`` runs a concept's query is the set of its words present *somewhere in the
    corpus* (the union of the counted shards' ``present_words``): a ``hits`` row counts only when the query
    is the concept's full word set, and a ``partial`` row when its word mask is exactly the reduced query
    (the paper's rule, see ``helpers.text.matching``). Other runs count their ``hits`` as they are.

    Raises ``IncompleteRunError`` when a shard is not done, or failed and ``allow_failed`` is false.
    """

    def __init__(self, out_dir: str | os.PathLike, *, allow_failed: bool = False) -> None:
        self.out_dir = Path(out_dir)
        run, self.records = check_complete(self.out_dir, allow_failed)
        fp = run.get("fingerprint", {})
        self.n_concepts = int(run.get("n_concepts") or 0)
        matcher = fp.get("matcher", {})
        self.drop = matcher.get("mode") != "phrase" and matcher.get("unknown_words") == "drop"
        if not self.drop:
            return
        present = np.zeros(len(fp["vocabulary"]), dtype=bool)
        for record in self.records:  # failed ones are here only with allow_failed: they count
            present[read_shard_stats(self.out_dir, record["shard"]).get("present_words", [])] = True
        n = len(fp["concept_words"])
        self.full = np.zeros(n, dtype=np.uint64)
        self.query = np.zeros(n, dtype=np.uint64)
        for c, words in enumerate(fp["concept_words"]):
            for bit, w in enumerate(words):
                self.full[c] |= np.uint64(1) << np.uint64(bit)
                if present[w]:
                    self.query[c] |= np.uint64(1) << np.uint64(bit)

    def _table(self, record: dict, name: str) -> pa.Table | None:
        info = record.get("files", {}).get(name)
        return None if info is None else pq.read_table(self.out_dir / SHARD_DIR / info["file"])

    def shard(self, record: dict) -> tuple[np.ndarray, np.ndarray]:
        """Distinct sorted (sample_id int64, concept_id int32) arrays of one shard's completion record."""
        hits = self._table(record, "hits")
        if hits is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int32)
        sample, concept = hits["sample_id"].to_numpy(), hits["concept_id"].to_numpy()
        if self.drop:
            keep = self.query[concept] == self.full[concept]
            sample, concept = sample[keep], concept[keep]
            partial = self._table(record, "partial")
            if partial is not None and partial.num_rows:
                pc = partial["concept_id"].to_numpy()
                wanted = self.query[pc]
                ok = (partial["word_mask"].to_numpy() == wanted) & (wanted != 0) & (wanted != self.full[pc])
                sample = np.concatenate([sample, partial["sample_id"].to_numpy()[ok]])
                concept = np.concatenate([concept, pc[ok]])
        return distinct_pairs(sample, concept)

    def __iter__(self) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
        """(completion record, sample ids, concept ids) per shard, one shard in memory at a time."""
        for record in self.records:
            yield (record, *self.shard(record))


def text_counts(out_dir: str | os.PathLike, *, allow_failed: bool = False, progress: bool = False) -> pd.DataFrame:
    """Counts table of a caption search: concept_id (int32), count (int64) = distinct samples.

    Counts the pairs of ``TextRunPairs`` (so ``unknown_words="drop"`` runs count each concept with exactly
    the query the whole corpus gives it). Streams one shard at a time.
    """
    pairs = TextRunPairs(out_dir, allow_failed=allow_failed)
    counts = np.zeros(pairs.n_concepts, dtype=np.int64)
    for _, _, concepts in tqdm(pairs, desc="merge", disable=not progress, total=len(pairs.records)):
        if len(concepts):
            shard_counts = np.bincount(concepts, minlength=len(counts))
            if len(shard_counts) > len(counts):
                raise ValueError(f"{out_dir}: concept id {len(shard_counts) - 1} >= n_concepts {len(counts)}")
            counts += shard_counts
    return pd.DataFrame({"concept_id": np.arange(len(counts), dtype=np.int32), "count": counts})
