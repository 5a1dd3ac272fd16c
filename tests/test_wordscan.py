"""The vectorised caption-search paths against their one-caption references (issue 12, item 5).

``normalise.fold_many`` (special captions folded on one joined string) must equal ``fold_text`` per
caption; ``normalise.normalise_utf8`` (the scan's input) must hold each caption's ``normalise_caption``;
``wordscan.PhraseIndex`` must find exactly the whole-word runs a plain search of the word lists finds;
``wordscan._HashMap`` must answer like a dict. Inputs are adversarial: entities (double-escaped, cut
short at a caption's end), tags, combining accents, format characters inside words, characters like
the separator, empty and huge captions, words longer than a look-up chunk and multi-byte words.
"""

from __future__ import annotations

import html

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.text.matching import match_captions
from helpers.text.normalise import SEP, fold_many, fold_text, normalise_caption, normalise_utf8
from helpers.text.wordscan import PhraseIndex, _HashMap

PIECES = [
    "caf\u00e9",
    "cafe\u0301",  # combining acute
    "\u0301",  # a mark with no base
    "Cr&egrave;me",
    "&amp;amp;lt;b&amp;gt;",  # double-escaped tag
    "&amp",  # entity without ';', possibly at a caption's end
    "&",
    "&#0;",
    "&#x41",
    "&notit",
    "<b>",
    "<b",  # an unclosed tag: must not run into the next caption
    ">",
    "<!-- x -->",
    "ele\u00adphant",  # soft hyphen inside a word
    "zero\u200bwidth",
    "\ufeffbom",
    "word\u2060joiner",
    "\u2014",
    "\u2019s",
    "\u02bc",
    "\x00",  # the separator itself
    "\x01",
    "\ufffd",
    "\u0000\u0301",
    " ",
    "\n",
    "\u00a0",
    "STRASSE",
    "stra\u00dfe",
    "\u03a3\u03a3",  # final sigma context is not case folding
    "\u0130",  # dotted capital I
    "\u01c5",  # DZ ligature, title case
    "\u1100\u1161",  # Hangul jamo: composed again by NFC
    "\u6771\u4eac",
    "\U0001f60d",
    "\ud800",  # a lone surrogate
    "\u2116",
    "x" * 9,
    "",
]


@st.composite
def nasty(draw, max_pieces: int = 6) -> str:
    return "".join(draw(st.lists(st.sampled_from(PIECES), max_size=max_pieces)))


# ------------------------------------------------------------------------------ fold_many = fold_text


@settings(max_examples=300, deadline=None)
@given(st.lists(nasty(), max_size=12))
def test_fold_many_equals_fold_text(texts):
    assert fold_many(texts) == [fold_text(t) for t in texts]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=10))
def test_fold_many_equals_fold_text_on_any_text(texts):
    assert fold_many(texts) == [fold_text(t) for t in texts]


@pytest.mark.parametrize(
    "texts",
    [
        ["a &amp", "amp; b"],  # an entity cut by the caption boundary stays cut
        ["<b unclosed", "closed> dog"],  # no tag across captions
        ["e", "\u0301x"],  # a mark does not join the previous caption's letter
        ["&", "lt;"],
        ["&amp;lt;", "&amp;amp;amp;gt;"],  # different depths of escaping
        ["with\x00nul", "plain"],  # a text holding the separator: the per-text path
        ["", "", ""],
        ["x" * 200_000 + "&eacute;", "caf\u00e9"],  # a huge caption
    ],
)
def test_fold_many_adversarial(texts):
    assert fold_many(texts) == [fold_text(t) for t in texts]


# -------------------------------------------------------------------- normalise_utf8 = normalise_caption


def _batch_reference(text: str | None) -> str:
    """``normalise_caption`` as the batch path has always given it: ASCII letters lower-cased at the end.

    The two differ only where compatibility decomposition makes an upper-case ASCII letter after case
    folding (``\u2116`` -> ``No``): ``normalise_caption`` keeps ``No``, the batch path (the one the search
    uses, before and after the vectorisation) gives ``no``.
    """
    text = normalise_caption(text.replace(SEP, " ") if isinstance(text, str) else text)
    return "".join(c.lower() if c.isascii() else c for c in text)


def _captions_of(texts: list) -> list[str]:
    data, order = normalise_utf8(texts)
    parts = [" ".join(p.split()) for p in data.tobytes().decode("utf-8", "surrogatepass").split(SEP)]
    if order is not None:
        parts = [parts[list(order).index(i)] for i in range(len(texts))]
    return parts


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(nasty(), st.none()), min_size=1, max_size=12))
def test_normalise_utf8_equals_normalise_caption(texts):
    assert _captions_of(texts) == [_batch_reference(t) for t in texts]


def test_normalise_utf8_huge_and_empty_captions():
    texts = ["", "A " * 100_000 + "caf&eacute;", "", "\u6771\u4eac dog", None]
    assert _captions_of(texts) == [_batch_reference(t) for t in texts]


# --------------------------------------------------------------------------- PhraseIndex = plain search

WORDS = [
    "a",
    "dog",
    "hot",
    "hotdog",
    "dogs",
    "abcdefgh",  # exactly one 8-byte chunk
    "abcdefghi",  # one byte more
    "abcdefghij",
    "abcdefghijklmnopq",  # three chunks
    "abcdefghijklmnopr",  # same first two chunks
    "caf\u00e9",  # multi-byte
    "\u6771\u4eac",
    "\u00e9\u00e9\u00e9\u00e9\u00e9",  # 10 bytes
    "x1",
    "1x",
]


def _reference(captions: list[list[str]], patterns: dict[tuple[str, ...], int]) -> set[tuple[int, int]]:
    found = set()
    for c, words in enumerate(captions):
        for pattern, value in patterns.items():
            k = len(pattern)
            if any(tuple(words[i : i + k]) == pattern for i in range(len(words) - k + 1)):
                found.add((c, value))
    return found


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(tuple), st.integers(0, 5), max_size=12
    ),
    st.lists(st.lists(st.sampled_from([*WORDS, "cat", "abcdefg", "\u00e9"]), max_size=10), max_size=8),
)
def test_phrase_index_equals_plain_search(patterns, captions):
    if not patterns:
        return
    index = PhraseIndex(patterns)
    data = np.frombuffer(
        (" " + " \x00 ".join(" ".join(words) for words in captions) + " ").encode("utf-8"), dtype=np.uint8
    )
    rows, values = index.scan(data)
    assert set(zip(rows.tolist(), values.tolist())) == _reference(captions, patterns)


def test_phrase_index_rejects_bad_words():
    with pytest.raises(ValueError, match="not a normalised word"):
        PhraseIndex({("hot dog",): 0})
    with pytest.raises(ValueError, match="no word"):
        PhraseIndex({(): 0})


def test_phrase_index_runs_of_spaces_and_edges():
    index = PhraseIndex({("hot", "dog"): 7, ("dog",): 1})
    data = np.frombuffer(b"hot   dog \x00 hot \x00 dog", dtype=np.uint8)  # no padding spaces at the ends
    rows, values = index.scan(data)
    assert sorted(zip(rows.tolist(), values.tolist())) == [(0, 1), (0, 7), (2, 1)]


# ------------------------------------------------------------------------------------ _HashMap = dict


@settings(max_examples=100, deadline=None)
@given(
    st.sets(st.integers(1, 2**64 - 1), max_size=200),
    st.lists(st.integers(0, 2**64 - 1), max_size=200),
)
def test_hash_map_equals_dict(keys, queries):
    keys = sorted(keys)
    table = _HashMap(np.array(keys, dtype=np.uint64), np.arange(len(keys), dtype=np.int64))
    expected = {k: i for i, k in enumerate(keys)}
    probe = [*keys, *queries]
    got = table.get(np.array(probe, dtype=np.uint64)).tolist()
    assert got == [expected.get(q, -1) for q in probe]


def test_hash_map_collisions_and_bad_keys():
    # keys that share a slot: multiples of 2**60 land on few slots of a small table
    keys = np.array([(i << 58) | 1 for i in range(1, 40)], dtype=np.uint64)
    table = _HashMap(keys, np.arange(len(keys), dtype=np.int64))
    assert table.get(keys).tolist() == list(range(len(keys)))
    assert table.get(np.array([0, 3, 2**64 - 1], dtype=np.uint64)).tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="key 0"):
        _HashMap(np.array([0], dtype=np.uint64), np.array([0]))
    with pytest.raises(ValueError, match="duplicate"):
        _HashMap(np.array([5, 5], dtype=np.uint64), np.array([0, 1]))


# -------------------------------------------------------------------------------- the whole search


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(nasty(), st.sampled_from(["hot-dogs &amp; caf\u00e9s", "Caf&eacute; dog"])), max_size=10))
def test_escaping_changes_no_hits(caps):
    concepts = ["dog", "hot dog", "cafe", "abcdefghij", "elephant"]
    once = [html.escape(c) for c in caps]
    assert match_captions(once, concepts) == match_captions([html.unescape(c) for c in once], concepts)
