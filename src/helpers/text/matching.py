"""Caption-side concept search: which of the study's concepts does each caption mention?

Three matching semantics, selected by ``mode`` and versioned together by ``MATCH_SEMANTICS_VERSION``
(bump it whenever any rule below changes, so counts built under different rules are never mixed):

``phrase`` (default)
    Caption and concept name are normalised the same way (``helpers.text.normalise``: HTML entities
    decoded and markup tags removed, case-folded, NFKD with accents and invisible format characters
    removed, every character that is not a letter or digit -- punctuation, hyphens, underscores, white
    space -- a word boundary), each caption word is lemmatised with spaCy's English *lookup* table
    (``en_lemma_lookup`` of ``spacy-lookups-data``, no trained pipeline: ``lemma = table.get(word, word)``)
    with noun lemmas first (``leaves -> leaf``), each concept word is lemmatised the same way unless it is
    a plural noun (``glasses``), which is kept as written and matches only itself, and a concept matches
    when its term sequence occurs as a contiguous run of whole words. So "Two mice" contains "mouse",
    "hot-dogs" contains "hot dog", and "dogfood" does not contain "dog". A concept whose name normalises to no word never
    matches.

    For speed the lemmatisation is inverted rather than applied: every surface form whose lemma is a
    concept word is expanded into the concept's phrases, and all phrases are found at once in a whole
    batch of normalised captions joined by a separator, as runs of whole words (``helpers.text.wordscan``:
    numpy passes over the batch's UTF-8 bytes, exact word look-ups and a trie over word ids). The result
    is exactly that of lemmatising every caption word, which ``tests/test_textsearch.py`` checks against
    a direct implementation.

``bag``
    The same words and lemmas; a concept matches when every distinct word of it occurs anywhere in the
    caption (order and adjacency ignored).

``paper``
    The authors' semantics: the caption side (HTML entities decoded, tags and format characters
    removed: ``normalise.decode_markup``) is the set of lower-cased lemmas of the NOUN and PROPN
    tokens found by a trained spaCy English pipeline (``en_core_web_lg`` by default, installed with the
    ``spacy-model`` extra; any object with spaCy's ``nlp.pipe`` interface can be injected with ``nlp=``);
    a concept is its lower-cased name split on white space and underscores, each word lemmatised by the
    same pipeline; a concept matches when all its words are in the caption's set (bag-AND).

Unknown words (``unknown_words``): a concept word that occurs in no caption of the corpus is either
dropped from the concept's query (``"drop"``, as the authors did: the concept is then searched with its
remaining words, and counts zero only if none remains) or makes the concept count zero (``"zero"``, the
plain AND). ``"drop"`` is the default of ``paper``, ``"zero"`` the default of ``bag``; ``phrase`` supports
only ``"zero"`` (a phrase with a word left out is no longer the phrase). With ``"drop"`` the result
depends on the whole corpus: ``match_captions`` treats the captions it is given as the corpus, and the
sharded search (``run_text_search`` / ``text_counts``) keeps enough per-shard evidence to give the exact
corpus-level answer however the corpus is split into shards.

Consequences worth knowing: lemmatisation is the lookup table's apart from the plural nouns it maps to a
verb ("autumn leaves" contains "leaf"); a concept named in the plural matches only the plural ("a glass of
wine" does not contain "glasses"); accents are folded ("café" is "cafe"); punctuation
between two words does not break a phrase ("hot, dog" contains "hot dog"); a concept spelled with
punctuation is matched with that punctuation as a boundary ("St. Bernard" = "st bernard").

Public API::

    match_captions(captions, concepts, mode="phrase", **options) -> list[list[str]]
    compile_matcher(concepts, mode="phrase", **options) -> TextMatcher
    TextMatcher.find(captions) -> Hits(caption_index int64, concept_index int32)   # reusable, numpy
    TextMatcher.match(captions) -> list[list[str]]
    run_text_search(source, concepts, out_dir, mode=..., executor="process"|"ray"|"serial", ...) -> RunResult
    text_counts(out_dir) -> DataFrame(concept_id int32, count int64)
    search_shard(shard, source=..., spec=MatcherSpec(...))   # the pure shard function a stage maps
    normalise_caption(text), caption_lemmas(text), concept_lemmas(name)    # the reference, one caption
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from helpers.naming import NORMALISATION_VERSION, concept_key
from helpers.shards import ConfigError
from helpers.text import normalise
from helpers.text.normalise import (
    LITERAL,
    concept_terms,
    decode_markup,
    default_lemma_table,
    inverse_table,
    lemmatise,
    normalise_caption,
    normalise_utf8,
)
from helpers.text.wordscan import PhraseIndex

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs a hub; never let a dependency try one


MATCH_SEMANTICS_VERSION = 3  # 2: HTML entities, accent/format folding, noun lemmas first, literal plurals;
# 3: format characters removed before entities and tags are read, compatibility letters case-folded
MODES = ("phrase", "bag", "paper")
UNKNOWN_WORDS = ("drop", "zero")
DEFAULT_UNKNOWN_WORDS = {"phrase": "zero", "bag": "zero", "paper": "drop"}
PAPER_POS = frozenset({"NOUN", "PROPN"})
DEFAULT_SPACY_MODEL = "en_core_web_lg"
DEFAULT_BATCH_SIZE = 8192
# A phrase is expanded into every combination of its words' surface forms; the 4,029 concepts need at
# most a few hundred each. The cap only guards against a pathological name.
MAX_PATTERNS_PER_CONCEPT = 100_000


# --------------------------------------------------------------------------------------------- text


def lemma_lookup() -> Mapping[str, str]:
    """The lemma table the ``phrase``/``bag`` modes use (``normalise.default_lemma_table``), read-only."""
    return default_lemma_table()


@functools.lru_cache(maxsize=1)
def lookup_table_sha256() -> str:
    """Checksum of the lemma table in use (part of every run's fingerprint)."""
    return _table_sha256(default_lemma_table())


def _table_sha256(table: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(table), sort_keys=True).encode()).hexdigest()


def caption_lemmas(text: str | None, table: Mapping[str, str] | None = None) -> list[str]:
    """The lemma sequence the ``phrase``/``bag`` modes see for one caption (a reference, slow path).

    ``table``: a caller's own lemma table (normalised here, no noun corrections); default the study's.
    """
    return lemmatise(normalise_caption(text).split(), normalise.lemma_table(table))


def concept_match_terms(name: str, table: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """A concept's match terms (``naming.concept_key`` first): lemmas, and ``LITERAL``-prefixed plurals.

    A caption word matches a lemma term when its lemma equals it, and a literal term when it *is* it.
    """
    return concept_terms(normalise_caption(concept_key(name)).split(), normalise.lemma_table(table))


def concept_lemmas(name: str, table: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """A concept's words as matched in the ``phrase``/``bag`` modes: lemmas, and plurals as written.

    >>> concept_lemmas("Black_footed_Albatross"), concept_lemmas("Mice"), concept_lemmas("Leaves")
    (('black', 'foot', 'albatross'), ('mice',), ('leaves',))
    """
    return tuple(t.removeprefix(LITERAL) for t in concept_match_terms(name, table))


def paper_concept_words(name: str) -> list[str]:
    """The authors' split of a concept name: lower-cased, split on white space and underscores."""
    return name.lower().replace("_", " ").split()


@functools.lru_cache(maxsize=1)
def _default_inverse() -> dict[str, list[str]]:
    return inverse_table(default_lemma_table())


class Hits(NamedTuple):
    """Matches as parallel arrays, sorted by caption then concept, without duplicates."""

    caption_index: np.ndarray  # int64, position of the caption in the input
    concept_index: np.ndarray  # int32, position of the concept in the matcher's concept list


class PartialHits(NamedTuple):
    """Per caption and concept, which of the concept's distinct words occur (bit i = word i)."""

    caption_index: np.ndarray  # int64
    concept_index: np.ndarray  # int32
    word_mask: np.ndarray  # uint64


_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_EMPTY_I32 = np.zeros(0, dtype=np.int32)
_EMPTY_U64 = np.zeros(0, dtype=np.uint64)


def _csr_expand(rows: np.ndarray, keys: np.ndarray, indptr: np.ndarray, *values: np.ndarray):
    """For each (row, key), emit (row, v[j]) for every j in indptr[key]:indptr[key+1] (vectorised)."""
    starts, counts = indptr[keys], indptr[keys + 1] - indptr[keys]
    total = int(counts.sum())
    out_rows = np.repeat(rows, counts)
    # index j = start of its group + offset within the group
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    idx = np.repeat(starts, counts) + offsets
    return (out_rows, *(v[idx] for v in values))


def _sorted_distinct(rows: np.ndarray, values: np.ndarray, n_values: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (row, value) pairs sorted by row then value (0 <= value < n_values)."""
    # matches arrive in text order, so the packed keys are nearly sorted already: cheap for a stable sort
    keys = np.sort(rows * np.int64(n_values) + values)
    if len(keys) > 1:
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    return keys // n_values, keys % n_values


def _batched(items: Iterable, size: int) -> Iterator[list]:
    if isinstance(items, list):
        for start in range(0, len(items), size):
            yield items[start : start + size]
        return
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


# ------------------------------------------------------------------------------------------ matcher


class TextMatcher:
    """A compiled concept matcher, built once and reused for any number of caption batches or shards.

    ``find`` returns (caption_index, concept_index) hits as numpy arrays; ``match`` returns concept names
    per caption. Concept indices are positions in ``concepts`` (pass names in ``concept_id`` order to
    get concept ids).
    """

    def __init__(
        self,
        concepts: Sequence[str],
        mode: str = "phrase",
        *,
        unknown_words: str | None = None,
        nlp: Any = None,
        spacy_model: str = DEFAULT_SPACY_MODEL,
        batch_size: int = DEFAULT_BATCH_SIZE,
        lemma_table: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(concepts, str):
            raise TypeError("concepts must be a sequence of names, not one string")
        if mode not in MODES:
            raise ConfigError(f"mode: unknown text-search mode {mode!r} (expected one of {', '.join(MODES)})")
        unknown_words = DEFAULT_UNKNOWN_WORDS[mode] if unknown_words is None else unknown_words
        if unknown_words not in UNKNOWN_WORDS:
            raise ConfigError(f"unknown_words: {unknown_words!r} is not one of {', '.join(UNKNOWN_WORDS)}")
        if mode == "phrase" and unknown_words == "drop":
            raise ConfigError("unknown_words: 'drop' is not defined for mode 'phrase' (use 'bag' or 'paper')")
        if batch_size < 1:
            raise ConfigError(f"batch_size: must be positive, got {batch_size}")
        self.concepts: tuple[str, ...] = tuple(str(c) for c in concepts)
        self.mode = mode
        self.unknown_words = unknown_words
        self.batch_size = int(batch_size)
        self.spacy_model = spacy_model
        self._custom_table = lemma_table is not None
        self._table = normalise.lemma_table(lemma_table)
        self._nlp = nlp
        if mode == "paper":
            self._nlp = nlp if nlp is not None else load_spacy_pipeline(spacy_model)
            self.concept_words = self._paper_concept_words()
        else:
            # match terms: lemmas, and LITERAL-prefixed plural nouns (matched as written)
            self.concept_words = [
                concept_terms(normalise_caption(concept_key(name)).split(), self._table) for name in self.concepts
            ]
        if mode == "phrase":
            self._compile_phrases()
        else:
            self._compile_words()

    # ---- compilation

    def _surface_forms(self) -> dict[str, list[str]]:
        """term -> every normalised token it matches: a literal term its word, a lemma every token whose
        lemma it is (the inverted lemma table)."""
        inverse = inverse_table(self._table) if self._custom_table else _default_inverse()
        forms: dict[str, list[str]] = {}
        for term in {w for words in self.concept_words for w in words}:
            if term.startswith(LITERAL):
                forms[term] = [term.removeprefix(LITERAL)]
                continue
            surfaces = set(inverse.get(term, ()))
            # a lemma is its own surface form unless the table maps it elsewhere
            if self._table.get(term, term) == term and normalise_caption(term) == term:
                surfaces.add(term)
            forms[term] = sorted(surfaces)
        return forms

    @staticmethod
    def _group(patterns: dict[str, list[int]]) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        """Patterns mapping to several values (``glass`` and literal ``glasses`` share ``" glasses "``):
        pattern -> group id, and the groups' values as CSR (indptr, values)."""
        groups: dict[tuple[int, ...], int] = {}
        out = {p: groups.setdefault(tuple(sorted(set(v))), len(groups)) for p, v in patterns.items()}
        counts = np.array([len(g) for g in groups], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        values = np.array([v for g in groups for v in g], dtype=np.int64)
        return out, indptr, values

    def _build_index(self, patterns: dict[str, int], n_values: int) -> None:
        """One word-sequence index over the ``" word word "`` patterns (``wordscan.PhraseIndex``)."""
        self.n_patterns = len(patterns)
        self._n_values = max(n_values, 1)
        self._index = PhraseIndex({tuple(p.split()): v for p, v in patterns.items()}) if patterns else None

    def _compile_phrases(self) -> None:
        forms = self._surface_forms()
        patterns: dict[str, list[int]] = {}  # surface phrase -> the concepts it matches
        for i, words in enumerate(self.concept_words):
            if not words:
                continue
            options = [forms[w] for w in words]
            size = int(np.prod([len(o) for o in options]))
            if size > MAX_PATTERNS_PER_CONCEPT:
                raise ValueError(f"concept phrase {' '.join(words)!r} expands to {size} surface forms")
            for combo in itertools.product(*options):
                patterns.setdefault(f" {' '.join(combo)} ", []).append(i)
        keys, self._key_indptr, key_concepts = self._group(patterns)
        self._key_concepts = key_concepts.astype(np.int32)
        counts = np.diff(self._key_indptr)
        self._key_shared = counts > 1
        self._key_rest_indptr = np.concatenate([[0], np.cumsum(counts - 1)]).astype(np.int64)
        first = np.zeros(len(self._key_concepts), dtype=bool)
        first[self._key_indptr[:-1][counts > 0]] = True
        self._key_rest = self._key_concepts[~first]
        self._build_index(keys, len(counts))

    def _compile_words(self) -> None:
        """Bag and paper modes: a vocabulary of concept words, and word -> (concept, bit) incidence."""
        vocab: dict[str, int] = {}
        incidence: list[tuple[int, int, int]] = []  # (word, concept, bit)
        n_words = np.zeros(len(self.concepts), dtype=np.int64)
        for c, words in enumerate(self.concept_words):
            distinct = list(dict.fromkeys(words))
            if len(distinct) > 63:
                raise ValueError(f"concept {self.concepts[c]!r} has more than 63 distinct words")
            n_words[c] = len(distinct)
            for bit, w in enumerate(distinct):
                incidence.append((vocab.setdefault(w, len(vocab)), c, bit))
        self.vocabulary: tuple[str, ...] = tuple(vocab)
        self._word_index = vocab
        incidence.sort()
        inc = np.array(incidence, dtype=np.int64).reshape(-1, 3)
        self._word_indptr = np.searchsorted(inc[:, 0], np.arange(len(vocab) + 1)).astype(np.int64)
        self._word_concepts = inc[:, 1].astype(np.int32)
        self._word_bits = np.left_shift(np.uint64(1), inc[:, 2].astype(np.uint64))
        self._full_mask = (np.left_shift(np.uint64(1), n_words.astype(np.uint64)) - np.uint64(1)).astype(np.uint64)
        patterns: dict[str, list[int]] = {}  # surface -> the vocabulary terms it matches
        if self.mode == "bag":
            for term, surfaces in self._surface_forms().items():
                for surface in surfaces:
                    patterns.setdefault(f" {surface} ", []).append(vocab[term])
        keys, self._group_indptr, self._group_words = self._group(patterns)
        self._build_index(keys, len(self._group_indptr) - 1)

    def _paper_concept_words(self) -> list[tuple[str, ...]]:
        split = [paper_concept_words(name) for name in self.concepts]
        distinct = sorted({w for words in split for w in words})
        lemmas = {
            word: "".join(tok.lemma_.lower() + tok.whitespace_ for tok in doc).strip() or word
            for word, doc in zip(distinct, self._nlp.pipe(distinct))
        }
        return [tuple(lemmas[w] for w in words) for words in split]

    # ---- scanning

    def _scan(self, texts: list, distinct: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Whole-word pattern search over one batch: (caption position in batch, pattern value), sorted
        and distinct (or, with ``distinct=False``, every occurrence, unsorted)."""
        if self._index is None or not texts:
            return _EMPTY_I64, _EMPTY_I64
        data, order = normalise_utf8(texts)
        captions, found = self._index.scan(data)
        if order is not None:
            captions = order[captions]
        if len(captions) == 0:
            return _EMPTY_I64, _EMPTY_I64
        if not distinct:
            return captions, found
        return _sorted_distinct(captions, found, self._n_values)

    def _paper_words(self, texts: list) -> tuple[np.ndarray, np.ndarray]:
        """Paper mode: (caption position, word index) of concept words among the caption's noun lemmas."""
        texts = [decode_markup(t) if isinstance(t, str) else "" for t in texts]
        rows, words = [], []
        for i, doc in enumerate(self._nlp.pipe(texts)):
            found = {self._word_index.get(tok.lemma_.lower()) for tok in doc if tok.pos_ in PAPER_POS}
            found.discard(None)
            rows.extend([i] * len(found))
            words.extend(found)
        if not rows:
            return _EMPTY_I64, _EMPTY_I64
        keys = np.unique(np.array(rows, dtype=np.int64) * max(len(self.vocabulary), 1) + np.array(words))
        return keys // max(len(self.vocabulary), 1), keys % max(len(self.vocabulary), 1)

    def _phrase_batch(self, texts: list) -> tuple[np.ndarray, np.ndarray]:
        """Phrase mode, one batch: (caption position, concept index), sorted and distinct."""
        rows, keys = self._scan(texts, distinct=False)
        concepts = self._key_concepts[self._key_indptr[keys]]  # a phrase's first concept
        shared = self._key_shared[keys]
        if shared.any():  # phrases shared by several concepts ("Dog" and "dog"): add the others
            more_rows, more = _csr_expand(rows[shared], keys[shared], self._key_rest_indptr, self._key_rest)
            rows, concepts = np.concatenate([rows, more_rows]), np.concatenate([concepts, more])
        rows, concepts = _sorted_distinct(rows, concepts, len(self.concepts))
        return rows, concepts.astype(np.int32)

    def _word_batch(self, texts: list) -> tuple[np.ndarray, np.ndarray]:
        if self.mode == "paper":
            return self._paper_words(texts)
        rows, groups = self._scan(texts)
        if len(rows) == 0:
            return rows, groups
        rows, words = _csr_expand(rows, groups, self._group_indptr, self._group_words)
        return _sorted_distinct(rows, words, max(len(self.vocabulary), 1))

    def _over_batches(self, captions: Iterable, fn, progress: bool) -> tuple[np.ndarray, np.ndarray, int]:
        """Apply ``fn`` batch by batch; concatenate its (row, value) arrays, rows offset; count captions."""
        rows, values, offset = [], [], 0
        total = len(captions) if isinstance(captions, Sized) else None
        with tqdm(total=total, desc="captions", unit="caption", unit_scale=True, disable=not progress) as bar:
            for batch in _batched(captions, self.batch_size):
                r, v = fn(batch)
                rows.append(r + offset)
                values.append(v)
                offset += len(batch)
                bar.update(len(batch))
        if not rows:
            return _EMPTY_I64, _EMPTY_I64, 0
        return np.concatenate(rows), np.concatenate(values), offset

    def word_hits(self, captions: Iterable[str | None], *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Bag/paper modes: (caption_index, word_index) for every concept word each caption contains."""
        if self.mode == "phrase":
            raise ValueError("word_hits is defined for the bag and paper modes")
        rows, words, _ = self._over_batches(captions, self._word_batch, progress)
        return rows, words

    def _partial_from_words(self, rows: np.ndarray, words: np.ndarray) -> PartialHits:
        if len(rows) == 0:
            return PartialHits(_EMPTY_I64, _EMPTY_I32, _EMPTY_U64)
        rows, concepts, bits = _csr_expand(rows, words, self._word_indptr, self._word_concepts, self._word_bits)
        keys = rows * np.int64(len(self.concepts)) + concepts
        order = np.argsort(keys, kind="stable")
        keys, bits = keys[order], bits[order]
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        masks = np.bitwise_or.reduceat(bits, starts)
        uniq = keys[starts]
        return PartialHits(uniq // len(self.concepts), (uniq % len(self.concepts)).astype(np.int32), masks)

    def partial_hits(self, captions: Iterable[str | None]) -> PartialHits:
        """Bag/paper modes: per caption and concept, the mask of the concept's words it contains."""
        return self._partial_from_words(*self.word_hits(captions))

    def query_masks(self, present_words: np.ndarray | Iterable[str] | None) -> np.ndarray:
        """Per concept, the mask of words its query keeps (``drop``: the words present in the corpus)."""
        if self.unknown_words == "zero" or present_words is None:
            return self._full_mask.copy()
        present = self._present_array(present_words)
        masks = np.zeros(len(self.concepts), dtype=np.uint64)
        word_of = np.repeat(np.arange(len(self.vocabulary)), np.diff(self._word_indptr))
        keep = present[word_of]
        np.bitwise_or.at(masks, self._word_concepts[keep], self._word_bits[keep])
        return masks

    def _present_array(self, present_words: np.ndarray | Iterable[str]) -> np.ndarray:
        if isinstance(present_words, np.ndarray) and present_words.dtype == bool:
            return present_words
        present = np.zeros(len(self.vocabulary), dtype=bool)
        for w in present_words:
            if isinstance(w, (int, np.integer)):
                present[int(w)] = True
            elif w in self._word_index:
                present[self._word_index[w]] = True
        return present

    def resolve(self, partial: PartialHits, query_masks: np.ndarray) -> Hits:
        """Concept hits: a caption matches when it contains every word of the concept's (non-empty) query."""
        wanted = query_masks[partial.concept_index]
        keep = ((partial.word_mask & wanted) == wanted) & (wanted != 0)
        return Hits(partial.caption_index[keep], partial.concept_index[keep])

    def _find(
        self, captions: Iterable[str | None], vocabulary: Iterable[str] | None, progress: bool
    ) -> tuple[Hits, int]:
        if self.mode == "phrase":
            rows, concepts, n = self._over_batches(captions, self._phrase_batch, progress)
            return Hits(rows, concepts.astype(np.int32)), n
        rows, words, n = self._over_batches(captions, self._word_batch, progress)
        partial = self._partial_from_words(rows, words)
        if self.unknown_words == "zero":
            return self.resolve(partial, self._full_mask), n
        if vocabulary is None:
            present = np.zeros(len(self.vocabulary), dtype=bool)
            present[words] = True
        else:
            present = self._present_array(vocabulary)
        return self.resolve(partial, self.query_masks(present)), n

    def find(
        self, captions: Iterable[str | None], *, vocabulary: Iterable[str] | None = None, progress: bool = False
    ) -> Hits:
        """All (caption_index, concept_index) hits of ``captions`` (any iterable; None for no caption).

        With ``unknown_words="drop"`` the corpus vocabulary is ``vocabulary`` (lemmas) when given, else the
        concept words that occur in ``captions`` themselves.
        """
        return self._find(captions, vocabulary, progress)[0]

    def match(
        self, captions: Iterable[str | None], *, vocabulary: Iterable[str] | None = None, progress: bool = False
    ) -> list[list[str]]:
        """Concept names per caption, in input order (names in concept order)."""
        hits, n = self._find(captions, vocabulary, progress)
        out: list[list[str]] = [[] for _ in range(n)]
        for row, concept in zip(hits.caption_index.tolist(), hits.concept_index.tolist()):
            out[row].append(self.concepts[concept])
        return out

    def fingerprint(self) -> dict:
        """What determines the hits (goes into the run fingerprint of a sharded search)."""
        fp = {
            "match_semantics_version": MATCH_SEMANTICS_VERSION,
            "normalisation_version": NORMALISATION_VERSION,
            "mode": self.mode,
            "unknown_words": self.unknown_words,
            "concepts_sha256": hashlib.sha256("\n".join(self.concepts).encode()).hexdigest(),
            "n_concepts": len(self.concepts),
        }
        if self.mode == "paper":
            meta = getattr(self._nlp, "meta", None) or {}
            fp["nlp"] = {"name": meta.get("name", type(self._nlp).__name__), "version": meta.get("version")}
        else:
            fp["lemma_table_sha256"] = _table_sha256(self._table) if self._custom_table else lookup_table_sha256()
            fp["concept_terms_sha256"] = hashlib.sha256(json.dumps(self.concept_words).encode()).hexdigest()
        return fp


def load_spacy_pipeline(model: str = DEFAULT_SPACY_MODEL) -> Any:
    """A trained spaCy English pipeline for the ``paper`` mode (tagger and lemmatiser are what matter)."""
    import spacy

    try:
        return spacy.load(model, exclude=["parser", "ner"])
    except OSError as err:
        raise ConfigError(
            f"spacy_model: the 'paper' mode needs the trained spaCy pipeline {model!r}, which is not "
            "installed (pip install 'helpers[spacy-model]', or pass nlp= a loaded pipeline)"
        ) from err


def compile_matcher(concepts: Sequence[str], mode: str = "phrase", **options: Any) -> TextMatcher:
    """Build a reusable matcher (see ``TextMatcher`` for the options)."""
    return TextMatcher(concepts, mode, **options)


def match_captions(
    captions: Iterable[str | None], concepts: Sequence[str], mode: str = "phrase", **options: Any
) -> list[list[str]]:
    """The concept names each caption contains, one list per caption in input order.

    ``captions`` may hold None (or NaN) for missing captions; ``concepts`` are names as in the concept
    table. ``options``: ``unknown_words``, ``nlp`` and ``spacy_model`` (paper mode), ``batch_size``,
    ``lemma_table``, ``vocabulary`` (drop mode: the corpus lemmas, default the captions' own) and
    ``progress`` (a progress bar). The same compiled matcher serves the sharded search; build one with
    ``compile_matcher`` to reuse it.

    >>> match_captions(["Two mice near a HOT-DOG stand", None, "dogfood"], ["mouse", "hot dog", "dog"])
    [['mouse', 'hot dog', 'dog'], [], []]
    """
    vocabulary = options.pop("vocabulary", None)
    progress = options.pop("progress", False)
    matcher = TextMatcher(concepts, mode, **options)
    return matcher.match(captions, vocabulary=vocabulary, progress=progress)
