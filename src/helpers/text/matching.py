"""Caption-side concept search: which of the study's concepts does each caption mention?

Three matching semantics, selected by ``mode`` and versioned together by ``MATCH_SEMANTICS_VERSION``
(bump it whenever any rule below changes, so counts built under different rules are never mixed):

``phrase`` (default)
    Caption and concept name are normalised the same way (NFKC, case-folded, every character that is not
    a letter or digit -- punctuation, hyphens, underscores, white space -- becomes a word boundary), each
    word is lemmatised with spaCy's English *lookup* table (``en_lemma_lookup`` of ``spacy-lookups-data``,
    no trained pipeline: ``lemma = table.get(word, word)``), and a concept matches when its lemma sequence
    occurs as a contiguous run of whole words. So "Two mice" contains "mouse", "hot-dogs" contains
    "hot dog", and "dogfood" does not contain "dog". A concept whose name normalises to no word never
    matches.

    For speed the lemmatisation is inverted rather than applied: every surface form whose lemma is a
    concept word is expanded into the concept's phrases, and all phrases are found in one Aho-Corasick
    pass over a whole batch of normalised captions joined by a separator (whole words are enforced by
    padding every word with single spaces). The result is exactly that of lemmatising every caption
    word, which ``tests/test_textsearch.py`` checks against a direct implementation.

``bag``
    The same words and lemmas; a concept matches when every distinct word of it occurs anywhere in the
    caption (order and adjacency ignored).

``paper``
    The authors' semantics: the caption side is the set of lower-cased lemmas of the NOUN and PROPN
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

Consequences worth knowing: lemmatisation is exactly the lookup table's, quirks included ("leaves" ->
"leave", so "autumn leaves" does not contain "leaf"); accents are kept ("café" is not "cafe"); punctuation
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
import gzip
import hashlib
import importlib.resources
import itertools
import json
import os
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, NamedTuple

import ahocorasick
import numpy as np
from tqdm.auto import tqdm

from helpers.naming import NORMALISATION_VERSION, concept_key
from helpers.shards import (
    ConfigError,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs a hub; never let a dependency try one


MATCH_SEMANTICS_VERSION = 1
MODES = ("phrase", "bag", "paper")
UNKNOWN_WORDS = ("drop", "zero")
DEFAULT_UNKNOWN_WORDS = {"phrase": "zero", "bag": "zero", "paper": "drop"}
PAPER_POS = frozenset({"NOUN", "PROPN"})
DEFAULT_SPACY_MODEL = "en_core_web_lg"
DEFAULT_BATCH_SIZE = 8192
# A phrase is expanded into every combination of its words' surface forms; the 4,029 concepts need at
# most a few hundred each. The cap only guards against a pathological name.
MAX_PATTERNS_PER_CONCEPT = 100_000

_SEP = "\x00"  # caption separator inside a batch; never a word character, removed from captions first
_JOIN = f" {_SEP} "
# ASCII code -> normalised code: letters lower-cased, digits kept, the separator kept, all else a space
_ASCII_LUT = np.array(
    [0 if c == 0 else ord(chr(c).lower()) if chr(c).isalnum() else 32 for c in range(128)] + [32] * 128,
    dtype=np.uint8,
)


# --------------------------------------------------------------------------------------------- text


def normalise_caption(text: str | None) -> str:
    """The normalised form the ``phrase`` and ``bag`` modes match on: words joined by single spaces.

    NFKC, then case-folded; every character that is not a letter or digit (``str.isalnum``) separates
    words, so punctuation, hyphens and underscores are word boundaries. This is the reference; batches
    are normalised by ``_normalise_batch`` with the same result.

    >>> normalise_caption("Two HOT-dogs, a dog_food can & dogfood!")
    'two hot dogs a dog food can dogfood'
    """
    if not isinstance(text, str):
        return ""
    text = text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).casefold()
    return " ".join("".join(ch if ch.isalnum() else " " for ch in text).split())


def _normalise_joined(joined: str) -> str:
    """Normalise ``" " + captions joined by " \\0 " + " "`` (non-ASCII captions already NFKC + case-folded)."""
    if joined.isascii():
        codes = _ASCII_LUT[np.frombuffer(joined.encode("ascii"), dtype=np.uint8)]
        encoding = "ascii"
    else:
        encoding = "utf-32-le"
        codes = np.frombuffer(joined.encode(encoding, "surrogatepass"), dtype=np.uint32).copy()
        high = codes >= 128
        codes[~high] = _ASCII_LUT[codes[~high]]
        distinct, inverse = np.unique(codes[high], return_inverse=True)
        is_word = np.array([chr(c).isalnum() for c in distinct.tolist()], dtype=bool)
        codes[high] = np.where(is_word[inverse], distinct[inverse], 32)
        if not is_word.any():  # only punctuation, symbols or emoji outside ASCII: one byte per character
            codes, encoding = codes.astype(np.uint8), "ascii"
    space = codes == 32
    keep = np.ones(len(codes), dtype=bool)
    np.logical_not(space[1:] & space[:-1], out=keep[1:])  # collapse runs of boundaries to one space
    return codes[keep].tobytes().decode(encoding, "surrogatepass")


def _normalise_part(texts: list[str]) -> str:
    joined = _JOIN.join(texts)
    if joined.count(_SEP) != len(texts) - 1:  # a caption contains the separator itself: blank it out
        joined = _JOIN.join(t.replace(_SEP, " ") for t in texts)
    return _normalise_joined(f" {joined} ")


def _normalise_batch(texts: list) -> tuple[str, np.ndarray | None]:
    """Normalise many captions at once: ``" w w \\0 w w \\0 ... w "`` (separator between captions).

    Works on the joined batch as one numpy array of code points (a lookup table maps ASCII; the few
    distinct non-ASCII characters of a batch are classified once), so the cost per caption is a few
    vectorised passes over its characters; the per-caption result equals ``normalise_caption``. In a
    batch mixing ASCII and other captions the ASCII ones come first (one byte per character is faster);
    the second value is then the original position of each caption in the text (None: input order).
    """
    try:
        is_plain = np.fromiter(map(str.isascii, texts), dtype=bool, count=len(texts))
    except TypeError:  # None, NaN or another non-string: an empty caption
        texts = [t if isinstance(t, str) else "" for t in texts]
        is_plain = np.fromiter(map(str.isascii, texts), dtype=bool, count=len(texts))
    if is_plain.all():
        return _normalise_part(texts), None
    folded = [unicodedata.normalize("NFKC", t).casefold() for t in itertools.compress(texts, ~is_plain)]
    text = _normalise_part(folded)
    if is_plain.any():
        text = _normalise_part(list(itertools.compress(texts, is_plain))) + _SEP + text
    return text, np.concatenate([np.flatnonzero(is_plain), np.flatnonzero(~is_plain)])


@functools.lru_cache(maxsize=1)
def _load_lemma_lookup() -> dict[str, str]:
    resource = importlib.resources.files("spacy_lookups_data") / "data" / "en_lemma_lookup.json.gz"
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def lemma_lookup() -> Mapping[str, str]:
    """spaCy's English lookup lemma table (``spacy-lookups-data``), read-only."""
    from types import MappingProxyType

    return MappingProxyType(_load_lemma_lookup())


@functools.lru_cache(maxsize=1)
def lookup_table_sha256() -> str:
    """Checksum of the lookup table in use (part of every run's fingerprint)."""
    table = _load_lemma_lookup()
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()


def lemmatise(words: Iterable[str], table: Mapping[str, str] | None = None) -> list[str]:
    """Lookup lemmatisation of already normalised words: ``table.get(word, word)``."""
    table = _load_lemma_lookup() if table is None else table
    return [table.get(w, w) for w in words]


def caption_lemmas(text: str | None, table: Mapping[str, str] | None = None) -> list[str]:
    """The lemma sequence the ``phrase``/``bag`` modes see for one caption (a reference, slow path)."""
    return lemmatise(normalise_caption(text).split(), table)


def concept_lemmas(name: str, table: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """A concept's lemma sequence in the ``phrase``/``bag`` modes (``naming.concept_key`` first)."""
    return tuple(lemmatise(normalise_caption(concept_key(name)).split(), table))


def paper_concept_words(name: str) -> list[str]:
    """The authors' split of a concept name: lower-cased, split on white space and underscores."""
    return name.lower().replace("_", " ").split()


def _is_token(word: str) -> bool:
    """Whether ``word`` can be a token of a normalised caption (so a surface form worth matching)."""
    return bool(word) and normalise_caption(word) == word


def _inverse_table(table: Mapping[str, str] | None) -> dict[str, list[str]]:
    """lemma -> the table's keys that lemmatise to it and can occur as caption tokens."""
    if table is None:
        return _default_inverse()
    inverse: dict[str, list[str]] = {}
    for surface, lemma in table.items():
        if _is_token(surface):
            inverse.setdefault(lemma, []).append(surface)
    return inverse


@functools.lru_cache(maxsize=1)
def _default_inverse() -> dict[str, list[str]]:
    return _inverse_table(_load_lemma_lookup())


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
    keys = np.sort(rows * np.int64(n_values) + values, kind="stable")
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
        self._table = dict(lemma_table) if lemma_table is not None else _load_lemma_lookup()
        self._nlp = nlp
        if mode == "paper":
            self._nlp = nlp if nlp is not None else load_spacy_pipeline(spacy_model)
            self.concept_words = self._paper_concept_words()
        else:
            self.concept_words = [concept_lemmas(name, self._table) for name in self.concepts]
        if mode == "phrase":
            self._compile_phrases()
        else:
            self._compile_words()

    # ---- compilation

    def _surface_forms(self) -> dict[str, list[str]]:
        """lemma -> every normalised token whose lookup lemma it is (the inverted lookup table)."""
        inverse = _inverse_table(None) if not self._custom_table else _inverse_table(self._table)
        forms: dict[str, list[str]] = {}
        for lemma in {w for words in self.concept_words for w in words}:
            surfaces = set(inverse.get(lemma, ()))
            # a lemma is its own surface form unless the table maps it elsewhere
            if self._table.get(lemma, lemma) == lemma and _is_token(lemma):
                surfaces.add(lemma)
            forms[lemma] = sorted(surfaces)
        return forms

    def _build_automaton(self, patterns: dict[str, int], n_values: int) -> None:
        """One automaton over ``" word word "`` patterns, plus the caption separator (value ``n_values``)."""
        self.n_patterns = len(patterns)
        self._n_values = max(n_values, 1)
        self._automaton = None
        if not patterns:
            return
        automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        for pattern, value in patterns.items():
            automaton.add_word(pattern, value)
        automaton.add_word(_SEP, self._n_values)
        automaton.make_automaton()
        self._automaton = automaton
        # The most patterns that can end at one position: a pattern and those of its word suffixes that are
        # patterns too ("dog" inside "hot dog"). Bounds the matches of a batch (see ``_scan``).
        self._depth = max(
            sum(f" {' '.join(words[k:])} " in patterns for k in range(len(words)))
            for words in (p.split() for p in patterns)
        )

    def _compile_phrases(self) -> None:
        sequences: dict[tuple[str, ...], list[int]] = {}
        for i, words in enumerate(self.concept_words):
            if words:
                sequences.setdefault(tuple(words), []).append(i)
        forms = self._surface_forms()
        patterns: dict[str, int] = {}
        for seq_id, words in enumerate(sequences):
            options = [forms[w] for w in words]
            size = int(np.prod([len(o) for o in options]))
            if size > MAX_PATTERNS_PER_CONCEPT:
                raise ValueError(f"concept phrase {' '.join(words)!r} expands to {size} surface forms")
            for combo in itertools.product(*options):
                patterns[f" {' '.join(combo)} "] = seq_id  # a surface phrase has one lemma sequence
        counts = np.array([len(v) for v in sequences.values()], dtype=np.int64)
        self._key_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._key_concepts = np.array([c for v in sequences.values() for c in v], dtype=np.int32)
        self._key_shared = counts > 1
        self._key_rest_indptr = np.concatenate([[0], np.cumsum(counts - 1)]).astype(np.int64)
        self._key_rest = np.array([c for v in sequences.values() for c in v[1:]], dtype=np.int32)
        self._build_automaton(patterns, len(sequences))

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
        patterns: dict[str, int] = {}
        if self.mode == "bag":
            for lemma, surfaces in self._surface_forms().items():
                for surface in surfaces:
                    patterns[f" {surface} "] = vocab[lemma]
        self._build_automaton(patterns, len(vocab))

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
        """Aho-Corasick over one batch: (caption position in batch, automaton value), sorted and distinct
        (or, with ``distinct=False``, every match in text order)."""
        if self._automaton is None or not texts:
            return _EMPTY_I64, _EMPTY_I64
        text, order = _normalise_batch(texts)
        # find_all with a C-level callback is several times faster per match than iterating ``iter()``.
        # ``values.insert(end, value)`` appends while ``end >= len(values)``: scanning starts after a pad
        # longer than the most matches the batch can have (each ends at a space or a separator, at most
        # ``_depth`` per position), so every reported end offset is past the list's end. The separator's
        # own matches then delimit the captions in the value stream.
        pad = self._depth * text.count(" ") + len(texts) + 1
        values: list[int] = []
        self._automaton.find_all(" " * pad + text, values.insert, pad)
        found = np.array(values, dtype=np.int64)
        separator = found == self._n_values
        captions = np.cumsum(separator)[~separator]
        if order is not None:
            captions = order[captions]
        if len(captions) == 0:
            return _EMPTY_I64, _EMPTY_I64
        if not distinct:
            return captions, found[~separator]
        return _sorted_distinct(captions, found[~separator], self._n_values)

    def _paper_words(self, texts: list) -> tuple[np.ndarray, np.ndarray]:
        """Paper mode: (caption position, word index) of concept words among the caption's noun lemmas."""
        texts = [t if isinstance(t, str) else "" for t in texts]
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
        return self._paper_words(texts) if self.mode == "paper" else self._scan(texts)

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
            fp["lemma_table_sha256"] = (
                hashlib.sha256(json.dumps(self._table, sort_keys=True).encode()).hexdigest()
                if self._custom_table
                else lookup_table_sha256()
            )
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
