"""Caption and concept-name normalisation, and the lemma rules of the ``phrase``/``bag`` text search.

Both sides of a match (captions and concept names) go through the same steps, in this order
(``MATCH_SEMANTICS_VERSION`` 3 in ``helpers.text.matching``):

1. **Format characters and HTML entities**: every invisible format character (category Cf: soft hyphen,
   zero-width space/joiner/non-joiner, word joiner, BOM, ...) is removed, then entities are decoded
   (``html.unescape``) and format characters removed again, repeatedly until nothing changes, so a
   double-escaped ``&amp;amp;`` is one ``&`` and a format character inside an entity or a tag hides neither;
   then **markup tags** (``<b>``, ``</a>``, ``<br/>``, ``<!-- -->``: a ``<`` followed by a letter, ``/`` or
   ``!``, up to the next ``>``) become a word boundary, so no tag name becomes a word.
2. **Unicode forms**: compatibility decomposition (NFKD), full case folding (``str.casefold``), NFKD again
   (case folding can produce decomposable characters), then every combining mark (category Mn: accents,
   whether precomposed or combining in the input) is removed, so ``crème brûlée`` = ``creme brulee`` and
   ``ele\\u00adphant`` = ``elephant``; the rest is recomposed (NFC). Decomposing first makes compatibility
   letters fold too (mathematical ``𝙰`` and ``№`` are ``a`` and ``no``). Dash look-alikes (U+2010-U+2015,
   U+2212, U+FE63, U+FF0D) are hyphens and apostrophe look-alikes (U+2019, U+02BC, U+FF07, U+0060, U+00B4)
   apostrophes -- both word boundaries.
3. **Words**: every character that is not a letter or digit (``str.isalnum``) is a word boundary.

For speed, steps 1-2 run only on captions with a non-ASCII character, or an ``&`` or ``<`` that can start
an entity or a tag (followed by a letter, digit or ``#``; a letter, ``/`` or ``!``); any other caption is
only lower-cased (what the full steps give for it).

Lemmas: a word's lemma is its entry in spaCy's English lookup table (``en_lemma_lookup`` of
``spacy-lookups-data``), with **noun lemmas first**: the table maps some plural nouns to a verb lemma
(``leaves -> leave``, ``calves -> calve``, ``clothes -> clothe``, ``scissors -> scissor``). Every such entry
(the table's lemma is a verb lemma of the word in lemminflect) of a word that spaCy's noun exceptions and
lemminflect's noun dictionary know as the plural of another noun (``leaves`` of ``leaf``), or lemminflect as
a plural-only noun (``clothes``), gets the noun lemma instead (``noun_lemma_corrections``; 22 entries with
spacy-lookups-data 1.0.5 and lemminflect 0.2.3). Other verb-looking entries stay as the table has them
(``building -> build``, ``saw -> see``: singular nouns are not part of the correction). Table keys are
normalised like captions (so ``cafés`` is looked up as ``cafes``).

A concept word named in the plural (``glasses``, ``jeans``, ``scissors``, ``pants``, ``mice``) is matched
literally: it matches only that plural word, not the singular (``is_plural_noun``: the plural of another
noun in lemminflect's dictionary; for words lemminflect does not know, the lookup table's lemma plus a
regular plural ending).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib
import importlib.abc
import importlib.resources
import itertools
import json
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

LITERAL = "="  # prefix of a concept term matched literally (never a character of a normalised word)
SEP = "\x00"  # caption separator inside a batch; never a word character, removed from captions first
_JOIN = f" {SEP} "
# ASCII code -> normalised code: letters lower-cased, digits kept, the separator kept, all else a space
_ASCII_LUT = np.array(
    [0 if c == 0 else ord(chr(c).lower()) if chr(c).isalnum() else 32 for c in range(128)] + [32] * 128,
    dtype=np.uint8,
)
_ASCII_BYTES = _ASCII_LUT.tobytes()  # the same table for bytes.translate
_TAG = re.compile(r"<[A-Za-z/!][^<>]*>")
DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"
APOSTROPHES = "\u2019\u02bc\uff07\u0060\u00b4"
_REGULAR_PLURALS = (("", "s"), ("", "es"), ("y", "ies"), ("f", "ves"), ("fe", "ves"))


def _fold_action(ch: str) -> str:
    """What folding does to one non-ASCII character (after NFKD): drop, map to ``-``/``'``, or keep."""
    if ch in DASHES:
        return "-"
    if ch in APOSTROPHES:
        return "'"
    return "" if unicodedata.category(ch) in ("Mn", "Cf") else ch


def _format_action(ch: str) -> str:
    return "" if unicodedata.category(ch) == "Cf" else ch


_NON_ASCII = re.compile("[^\x00-\x7f]")
# an "&" that can start an entity html.unescape decodes, and a "<" that can start a tag _TAG removes (two
# patterns, each with a literal first character the regex engine finds by a fast scan: an alternation of
# the two is several times slower on a batch)
_MARKUP_STARTS = (re.compile("&[#0-9A-Za-z]"), re.compile("<[/!A-Za-z]"))
_FOLD_ACTIONS: dict[str, str] = {}
_FORMAT_ACTIONS: dict[str, str] = {}


def _apply(text: str, actions: dict[str, str], rule: Callable[[str], str]) -> str:
    """Apply a per-character rule to the distinct non-ASCII characters of ``text`` (cached per character).

    A caption has few distinct non-ASCII characters, so ``str.replace`` per character that changes is
    much faster than a per-character Python loop or ``str.translate`` over the whole text.
    """
    for ch in set(_NON_ASCII.findall(text)):
        action = actions.get(ch)
        if action is None:
            action = actions[ch] = rule(ch)
        if action != ch:
            text = text.replace(ch, action)
    return text


def needs_fold(text: str) -> bool:
    """Whether ``text`` needs the full steps 1-2 (else lower-casing gives the same)."""
    return not text.isascii() or "&" in text or "<" in text


def decode_markup(text: str) -> str:
    """Step 1 plus the removal of format characters, keeping case and accents (for a tagger's input).

    What the ``paper`` mode and the retrieval-caption noun extraction feed to a trained spaCy pipeline,
    which needs case: entities decoded (repeatedly), tags to a space, format characters removed.

    >>> decode_markup("Caf&eacute; &lt;b&gt;ele\u00adphant&lt;/b&gt;")
    'Café  elephant '
    """
    return _strip_markup(text, _TAG)


def _strip_markup(text: str, tag: re.Pattern) -> str:
    """Step 1 on ``text``: format characters removed, entities decoded (both repeatedly), ``tag`` to a space."""
    if not text.isascii():
        text = _apply(text, _FORMAT_ACTIONS, _format_action)
    if "&" in text:
        text = _unescape(text)
    if "<" in text:
        text = tag.sub(" ", text)
    return text


def _unescape(text: str) -> str:
    """Entities decoded and format characters removed, repeatedly until neither changes ``text``."""
    while True:
        decoded = html.unescape(text)
        if not decoded.isascii():
            decoded = _apply(decoded, _FORMAT_ACTIONS, _format_action)
        if decoded == text:
            return text
        text = decoded


def fold_text(text: str) -> str:
    """Steps 1-2 of the module docstring on one text (entities, tags, Unicode forms, case); boundaries kept.

    >>> fold_text("Cr&egrave;me BR\\u00dbL\\u00c9E &lt;b&gt;ele\\u00adphant&lt;/b&gt;")
    'creme brulee  elephant '
    """
    if "&" in text or "<" in text:
        text = decode_markup(text)
    if text.isascii():
        return text.lower()
    text = _fold_case(text)
    if text.isascii():  # marks and format characters are never ASCII
        return text
    text = _apply(text, _FOLD_ACTIONS, _fold_action)
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def _fold_case(text: str) -> str:
    """NFKD, full case folding, NFKD (step 2 before the marks go): ``𝙰`` -> ``a``, ``Ǆ`` -> ``dz\u030c``."""
    return unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())


# A tag that does not run across the separator: within one caption (which never holds SEP) it is _TAG.
_TAG_IN_BATCH = re.compile(r"<[A-Za-z/!][^<>\x00]*>")


def fold_many(texts: list[str]) -> list[str]:
    """``[fold_text(t) for t in texts]``, computed on one joined string (a few passes, not one per text).

    The texts are joined by ``SEP`` (NUL), which every step keeps in place and never produces: an
    entity is a prefix of what follows ``&`` and no entity name holds a NUL (``html.unescape`` leaves
    ``&`` + text it cannot decode as it was); a tag may not run across it (``_TAG_IN_BATCH``); case folding
    and compatibility decomposition map NUL to itself; and NUL, a starter (combining class 0), blocks
    the reordering and composition of combining marks across it. So the joined result, split at ``SEP``,
    is each text's own ``fold_text``. Texts holding ``SEP`` themselves are folded one by one.
    """
    if len(texts) < 2:
        return [fold_text(t) for t in texts]
    joined = SEP.join(texts)
    if joined.count(SEP) != len(texts) - 1:  # some text holds the separator: the per-text path
        return [fold_text(t) for t in texts]
    joined = _strip_markup(joined, _TAG_IN_BATCH)
    if joined.isascii():
        return joined.lower().split(SEP)
    joined = _fold_case(joined)
    if not joined.isascii():
        joined = _apply(joined, _FOLD_ACTIONS, _fold_action)
        if not joined.isascii():
            joined = unicodedata.normalize("NFC", joined)
    return joined.split(SEP)


def normalise_caption(text: str | None) -> str:
    """The normalised form the ``phrase`` and ``bag`` modes match on: words joined by single spaces.

    Steps 1-3 of the module docstring; anything but a string is an empty caption. This is the reference;
    ``normalise_batch`` gives the same per caption.

    >>> normalise_caption("Two HOT-dogs, a dog_food can &amp; dogfood!")
    'two hot dogs a dog food can dogfood'
    """
    if not isinstance(text, str):
        return ""
    text = fold_text(text) if needs_fold(text) else text.lower()
    return " ".join("".join(ch if ch.isalnum() else " " for ch in text).split())


def _normalise_codes(joined: str, collapse: bool = True) -> np.ndarray:
    """Code points (uint8 when all ASCII, else uint32) of ``" " + folded captions joined by " \\0 " + " "``
    normalised to words separated by single spaces (``collapse=False``: by runs of spaces)."""
    if joined.isascii():  # bytes.translate: the lookup table at C speed
        codes = np.frombuffer(joined.encode("ascii").translate(_ASCII_BYTES), dtype=np.uint8)
    else:
        codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).copy()
        high = codes >= 128
        codes[~high] = _ASCII_LUT[codes[~high]]
        distinct, inverse = np.unique(codes[high], return_inverse=True)
        is_word = np.array([chr(c).isalnum() for c in distinct.tolist()], dtype=bool)
        codes[high] = np.where(is_word[inverse], distinct[inverse], 32)
        if not is_word.any():  # only punctuation, symbols or emoji outside ASCII: one byte per character
            codes = codes.astype(np.uint8)
    if not collapse:
        return codes
    space = codes == 32
    keep = np.ones(len(codes), dtype=bool)
    np.logical_not(space[1:] & space[:-1], out=keep[1:])  # collapse runs of boundaries to one space
    return codes[keep]


def _decode(codes: np.ndarray) -> str:
    return codes.tobytes().decode("ascii" if codes.itemsize == 1 else "utf-32-le", "surrogatepass")


def _normalise_part(texts: list[str], collapse: bool) -> np.ndarray:
    joined = _JOIN.join(texts)
    if joined.count(SEP) != len(texts) - 1:  # a caption contains the separator itself: blank it out
        joined = _JOIN.join(t.replace(SEP, " ") for t in texts)
    return _normalise_codes(f" {joined} ", collapse)


def normalise_codes(texts: list, collapse: bool = True) -> tuple[list[tuple[np.ndarray, int]], np.ndarray | None]:
    """Normalise many captions at once, as code-point arrays: ``" w w \\0 w w \\0 ... w "``.

    Returns the parts (code points, uint8 for an ASCII part else uint32; number of captions in it) and the
    order: one part when ``order`` is None (captions in input order), else the ASCII captions (plain, then
    folded) in a first part and the others in a second, ``order`` giving each one's original position.
    Works on the joined batch as one numpy array of code points (a lookup table maps ASCII; the few
    distinct non-ASCII characters of a batch are classified once), so the cost per caption is a few
    vectorised passes over its characters; only captions with ``&``, ``<`` or non-ASCII characters are
    folded first (``fold_many``). The per-caption result equals ``normalise_caption``; with
    ``collapse=False`` words may be separated by several spaces (enough for a word scan, one pass less).
    """
    try:
        is_plain = np.fromiter(map(str.isascii, texts), dtype=bool, count=len(texts))
    except TypeError:  # None, NaN or another non-string: an empty caption
        texts = [t if isinstance(t, str) else "" for t in texts]
        is_plain = np.fromiter(map(str.isascii, texts), dtype=bool, count=len(texts))
    all_ascii = bool(is_plain.all())
    ascii_texts = texts if all_ascii else list(itertools.compress(texts, is_plain))
    joined = "".join(ascii_texts)
    if "&" in joined or "<" in joined:  # the few ASCII captions with an entity or a tag: fold them too
        ends = np.cumsum(np.fromiter(map(len, ascii_texts), dtype=np.int64, count=len(ascii_texts)))
        # "& more" or "3 < 4" need no folding: only an "&" or "<" that can start an entity or a tag
        positions = np.array([m.start() for p in _MARKUP_STARTS for m in p.finditer(joined)], dtype=np.int64)
        special = np.unique(np.searchsorted(ends, positions, side="right"))
        is_plain[special if all_ascii else np.flatnonzero(is_plain)[special]] = False
    elif all_ascii:
        return [(_normalise_part(texts, collapse), len(texts))], None
    folded_at = np.flatnonzero(~is_plain)
    folded = fold_many([texts[i] for i in folded_at.tolist()])
    # folding makes most of them ASCII (accents, dashes, entities): those join the one-byte pass
    now_ascii = np.fromiter(map(str.isascii, folded), dtype=bool, count=len(folded))
    narrow = list(itertools.compress(texts, is_plain)) + list(itertools.compress(folded, now_ascii))
    wide = list(itertools.compress(folded, ~now_ascii))
    order = np.concatenate([np.flatnonzero(is_plain), folded_at[now_ascii], folded_at[~now_ascii]])
    parts = [(_normalise_part(part, collapse), len(part)) for part in (narrow, wide) if part]
    return parts, order


def normalise_utf8(texts: list) -> tuple[np.ndarray, np.ndarray | None]:
    """``normalise_codes(texts, collapse=False)`` as one array of UTF-8 bytes (uint8), parts joined by
    the separator: the input of ``wordscan.PhraseIndex.scan``. ``order`` as in ``normalise_codes``."""
    parts, order = normalise_codes(texts, collapse=False)
    arrays = [
        codes if codes.itemsize == 1 else np.frombuffer(_decode(codes).encode("utf-8", "surrogatepass"), np.uint8)
        for codes, _ in parts
    ]
    if len(arrays) == 1:
        return arrays[0], order
    return np.concatenate([arrays[0], np.zeros(1, dtype=np.uint8), arrays[1]]), order  # " ... \0 ... "


def normalise_batch(texts: list) -> tuple[str, np.ndarray | None]:
    """Normalise many captions at once: ``" w w \\0 w w \\0 ... w "`` (separator between captions).

    ``normalise_codes`` decoded to one string: when some captions were folded, the ASCII ones (plain, then
    folded) come first and the others last; the second value is then the original position of each
    caption in the text (None: input order).
    """
    parts, order = normalise_codes(texts)
    return SEP.join(_decode(codes) for codes, _ in parts), order


# -------------------------------------------------------------------------------------------- lemmas


@functools.lru_cache(maxsize=1)
def spacy_lookup_table() -> Mapping[str, str]:
    """spaCy's English lookup lemma table as shipped (``spacy-lookups-data``), read-only, unnormalised."""
    resource = importlib.resources.files("spacy_lookups_data") / "data" / "en_lemma_lookup.json.gz"
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        return MappingProxyType(json.load(fh))


class _SkipSpacy(importlib.abc.MetaPathFinder):
    """Refuses ``import spacy`` while lemminflect is imported (see ``_lemminflect``)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "spacy" or name.startswith("spacy."):
            raise ImportError("spaCy is not imported for lemminflect's dictionary look-ups")


@functools.lru_cache(maxsize=1)
def _lemminflect() -> Any:
    """lemminflect, imported without its optional spaCy hook when spaCy is not loaded yet.

    lemminflect's ``__init__`` imports spaCy (when installed) only to register ``Token._.lemma``, which
    nothing here uses; importing spaCy (and, through thinc, torch) would cost seconds and about 0.75 GB
    in every text-search worker. Only lemminflect's dictionary look-ups are used (no pickled OOV models).
    """
    if "spacy" in sys.modules:
        return importlib.import_module("lemminflect")
    finder = _SkipSpacy()
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module("lemminflect")
    finally:
        sys.meta_path.remove(finder)


def _noun_lemmas(word: str) -> tuple[str, ...]:
    return tuple(_lemminflect().getAllLemmas(word, upos="NOUN").get("NOUN", ()))


def _verb_lemmas(word: str) -> tuple[str, ...]:
    return tuple(_lemminflect().getAllLemmas(word, upos="VERB").get("VERB", ()))


def _noun_plurals(lemma: str) -> tuple[str, ...]:
    return tuple(_lemminflect().getAllInflections(lemma, upos="NOUN").get("NNS", ()))


@functools.lru_cache(maxsize=1)
def spacy_noun_exceptions() -> Mapping[str, list[str]]:
    """spaCy's irregular noun lemmas (``en_lemma_exc["noun"]`` of ``spacy-lookups-data``), read-only."""
    resource = importlib.resources.files("spacy_lookups_data") / "data" / "en_lemma_exc.json.gz"
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        return MappingProxyType(json.load(fh)["noun"])


@functools.lru_cache(maxsize=1)
def noun_lemma_corrections() -> Mapping[str, str]:
    """Plural nouns whose spaCy lookup entry is a verb lemma -> their noun lemma.

    An entry ``word -> lemma`` of the lookup table, ``word`` ending in ``s``, is corrected when ``lemma``
    is one of lemminflect's verb lemmas of ``word`` and either
    (a) spaCy's own noun exceptions (``en_lemma_exc``) give ``word`` another first noun lemma of which
    it is a plural in lemminflect's noun dictionary (``leaves -> leaf``, ``calves -> calf``), or
    (b) lemminflect knows ``word`` as a plural-only noun and ``lemma`` as none of its noun lemmas
    (``clothes -> clothes``, ``scissors -> scissors``).
    """
    exceptions = spacy_noun_exceptions()
    out: dict[str, str] = {}
    for word, lemma in spacy_lookup_table().items():
        if word == lemma or not word.endswith("s") or not word.isalpha():
            continue
        if lemma not in _verb_lemmas(word):
            continue
        first = exceptions.get(word, [None])[0]
        nouns = _noun_lemmas(word)
        if first not in (None, lemma, word) and word in _noun_plurals(first):
            out[word] = first
        elif word not in exceptions and word in nouns and lemma not in nouns and word in _noun_plurals(word):
            out[word] = word
    return MappingProxyType(out)


def normalise_table(table: Mapping[str, str]) -> dict[str, str]:
    """A lemma table keyed and valued in normalised form (keys that normalise to one word only).

    Where several keys normalise to the same word, the key already in normalised form wins, then the first.
    """
    out: dict[str, str] = {}
    later: list[tuple[str, str]] = []
    for word, lemma in table.items():
        key = normalise_caption(word)
        if not key or " " in key:
            continue
        value = normalise_caption(lemma) or key
        if key == word:
            out[key] = value
        else:
            later.append((key, value))
    for key, value in later:
        out.setdefault(key, value)
    return out


@functools.lru_cache(maxsize=1)
def default_lemma_table() -> Mapping[str, str]:
    """The lemma table in use: spaCy's lookup table, noun lemmas first, keys normalised; read-only."""
    table = dict(spacy_lookup_table())
    table.update(noun_lemma_corrections())
    return MappingProxyType(normalise_table(table))


def lemma_table(table: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """``table`` normalised (a caller's own table: no noun corrections), or the default table when None."""
    return default_lemma_table() if table is None else normalise_table(table)


def lemmatise(words: Iterable[str], table: Mapping[str, str] | None = None) -> list[str]:
    """Lookup lemmatisation of already normalised words: ``table.get(word, word)`` (default table if None)."""
    table = default_lemma_table() if table is None else table
    return [table.get(w, w) for w in words]


@functools.lru_cache(maxsize=65536)
def _dictionary_plural(word: str) -> bool | None:
    """lemminflect's answer: is ``word`` a plural of another noun (None: not in its noun dictionary)."""
    nouns = _noun_lemmas(word)
    if not nouns:
        return None
    return any(n != word and word in _noun_plurals(n) for n in nouns)


def is_plural_noun(word: str, table: Mapping[str, str] | None = None) -> bool:
    """Whether a normalised word is a plural noun (of another noun): ``mice``, ``glasses``, ``pants``.

    lemminflect's noun dictionary first (``word`` is a plural form of a noun lemma other than itself);
    for a word it does not know, the lemma ``table`` (default: ``default_lemma_table``) plus a regular
    ending (s, es, y/ies, f/ves, fe/ves).
    """
    known = _dictionary_plural(word)
    if known is not None:
        return known
    lemma = (default_lemma_table() if table is None else table).get(word, word)
    return lemma != word and any(
        lemma.endswith(old) and lemma[: len(lemma) - len(old)] + new == word for old, new in _REGULAR_PLURALS
    )


def concept_terms(words: Iterable[str], table: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """A concept's normalised words as match terms: a plural noun stays itself, prefixed ``LITERAL``
    (matched literally); any other word is its lemma in ``table`` (default: ``default_lemma_table``)."""
    table = default_lemma_table() if table is None else table
    return tuple(LITERAL + w if is_plural_noun(w, table) else table.get(w, w) for w in words)


def inverse_table(table: Mapping[str, str]) -> dict[str, list[str]]:
    """lemma -> the (normalised) table keys that lemmatise to it."""
    inverse: dict[str, list[str]] = {}
    for surface, lemma in table.items():
        inverse.setdefault(lemma, []).append(surface)
    return inverse
