"""The unified concept table of the text-search stage: the release's 4,029 concepts plus new downstream ones.

The frequency study counts, in pretraining captions, the concepts of the downstream datasets it evaluates.
The release fixes 4,029 of them (``tidy.concepts``); ``build_concept_table`` keeps those with their ids and
appends the concepts of any further downstream dataset registered under ``concepts.downstream`` in
``params.yaml``, so adding a dataset there is all it takes to have its concepts counted.

A downstream entry contributes concepts in two ways (either or both)::

    concepts:
      downstream:
        mydata:
          class_names: [dog, hot dog, ...]          # or class_names_file: path/to/classes.txt
          captions:                                 # a retrieval set: CaptionSource config + image key
            {format: tsv, paths: data/mydata/captions.tsv, header: true,
             caption_column: caption, key_column: image_id}
          min_images: 10                            # retrieval options (defaults shown)
          captions_per_image: 5
          noun_extractor: spacy                     # or "lemmas" (offline fallback, see below)
          spacy_model: en_core_web_lg

* **Class names** (classification, source ``mydata:zero_shot``): every name, as written (stripped of
  surrounding white space), is a concept. ``class_names_file`` holds one name per line; blank lines, lines
  starting with ``#`` and trailing `` # comments`` (a ``#`` after white space) are ignored.
* **Retrieval captions** (source ``mydata:retrieval``): the study's rule -- the lower-cased lemmas of the
  NOUN and PROPN tokens of the first ``captions_per_image`` captions of each image, kept when they occur in
  at least ``min_images`` distinct images. Images are identified by the caption source's ``key_column``
  (several rows per image; for webdataset tars, the sample key). ``captions_per_image`` counts usable
  (non-empty) captions in reading order.

Noun extractors:

``spacy`` (default, the study's)
    a trained spaCy English pipeline (``spacy_model``; ``python -m spacy download en_core_web_lg``). Any
    object with a ``pipe(texts)`` method yielding docs of tokens with ``pos_`` and ``lemma_`` can be passed
    as ``nlp=`` instead (tests inject a fake one).
``lemmas`` (offline fallback, no trained model)
    every word of the caption lemmatised with spaCy's lookup table (``textsearch.caption_lemmas``, the same
    lemmas the ``phrase``/``bag`` text search uses) that is alphabetic, at least 3 characters long and not
    an English stop word (``spacy.lang.en.stop_words.STOP_WORDS``). It has no part-of-speech filter, so it
    **over-extracts** relative to ``spacy``: frequent adjectives, verbs and adverbs ("white", "sitting",
    "next") become concepts too. Use it for offline runs and tests, not for numbers compared to the paper.

Concept ids are stable: the release's concepts keep their ids (0..4,028, release order) and new concepts
follow, sorted by name. A new name that is exactly (same characters) a name already in the table only adds
its source to that row; names that differ only in case or separators stay separate rows with the same
``key`` (the release itself keeps such pairs). Every wrong ``concepts.downstream`` entry fails fast with a
``ConfigError`` naming the offending key.

Public API::

    build_concept_table(release_concepts, downstream=None, *, lemma_table=None, nlp=None,
                        progress=False, base_dir=None) -> DataFrame(concept_id, name, key, lemmas, sources)
    extract_caption_concepts(captions_by_image, *, min_images, captions_per_image, noun_extractor,
                             nlp=None, spacy_model="en_core_web_lg", lemma_table=None,
                             progress=False) -> DataFrame(name, n_images)
    read_class_names_file(path) -> list[str]
    downstream_concepts(name, entry, *, ...) -> dict[str, list[str]]  # one entry: concept name -> sources
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from helpers import schemas
from helpers.naming import concept_key
from helpers.params import ConfigError, validate
from helpers.params.text import Downstream
from helpers.text.captions import (
    CaptionSource,
    ShardStats,
    check_source,
    list_shards,
    read_shard,
)
from helpers.text.encodings import EncodingError, read_text_file, split_lines
from helpers.text.matching import DEFAULT_SPACY_MODEL, PAPER_POS, caption_lemmas, concept_lemmas, load_spacy_pipeline
from helpers.text.normalise import decode_markup

PARAMS_KEY = "concepts.downstream"
NOUN_EXTRACTORS = ("spacy", "lemmas")
# the defaults of a downstream entry, stated once in its params model
DEFAULT_MIN_IMAGES = Downstream.model_fields["min_images"].default
DEFAULT_CAPTIONS_PER_IMAGE = Downstream.model_fields["captions_per_image"].default
DEFAULT_NOUN_EXTRACTOR = Downstream.model_fields["noun_extractor"].default
MIN_LEMMA_CHARS = 3  # the ``lemmas`` extractor's shortest word
ZERO_SHOT_TASK = "zero_shot"
RETRIEVAL_TASK = "retrieval"


# ------------------------------------------------------------------------------------ option checks


def _where(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _check_positive_int(value: Any, key: str, prefix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{_where(prefix, key)}: expected an integer >= 1, got {value!r}")
    return int(value)


def _check_retrieval_options(
    min_images: Any, captions_per_image: Any, noun_extractor: Any, spacy_model: Any, prefix: str = ""
) -> tuple[int, int, str, str]:
    """Validate the retrieval options; ``prefix`` is the params path of the entry (for the messages)."""
    min_images = _check_positive_int(min_images, "min_images", prefix)
    captions_per_image = _check_positive_int(captions_per_image, "captions_per_image", prefix)
    if noun_extractor not in NOUN_EXTRACTORS:
        raise ConfigError(
            f"{_where(prefix, 'noun_extractor')}: expected one of {', '.join(NOUN_EXTRACTORS)}, got {noun_extractor!r}"
        )
    if not isinstance(spacy_model, str) or not spacy_model.strip():
        raise ConfigError(f"{_where(prefix, 'spacy_model')}: expected a spaCy pipeline name, got {spacy_model!r}")
    return min_images, captions_per_image, noun_extractor, spacy_model


def _spacy_pipeline(spacy_model: str, prefix: str = "") -> Any:
    """The trained pipeline for ``noun_extractor: spacy``, or a ConfigError saying how to get one."""
    try:
        return load_spacy_pipeline(spacy_model)
    except ConfigError as err:
        raise ConfigError(
            f"{_where(prefix, 'noun_extractor')}: 'spacy' needs the trained spaCy pipeline {spacy_model!r}, "
            f"which is not installed: run `python -m spacy download {spacy_model}` "
            f"(or pip install 'helpers[spacy-model]'), or set `noun_extractor: lemmas` (offline fallback "
            "without a part-of-speech filter; it over-extracts)"
        ) from err


# ------------------------------------------------------------------------------- noun extraction


def _stop_words() -> frozenset[str]:
    from spacy.lang.en.stop_words import (
        STOP_WORDS,  # a word list; no trained model needed
    )

    return frozenset(STOP_WORDS)


def _spacy_nouns(docs: Iterable[Any]) -> Iterator[set[str]]:
    """Per doc: lower-cased lemmas of its NOUN/PROPN tokens (those with a letter or digit)."""
    for doc in docs:
        found = set()
        for tok in doc:
            if tok.pos_ in PAPER_POS:
                lemma = str(tok.lemma_).lower().strip()
                if any(ch.isalnum() for ch in lemma):
                    found.add(lemma)
        yield found


def _lemma_words(captions: Iterable[str], table: Mapping[str, str] | None) -> Iterator[set[str]]:
    """Per caption: lookup lemmas that are alphabetic, >= 3 characters and not stop words (over-extracts)."""
    stop = _stop_words()
    for caption in captions:
        yield {w for w in caption_lemmas(caption, table) if len(w) >= MIN_LEMMA_CHARS and w.isalpha() and w not in stop}


def extract_caption_concepts(
    captions_by_image: Iterable[tuple[str, str]],
    *,
    min_images: int = DEFAULT_MIN_IMAGES,
    captions_per_image: int = DEFAULT_CAPTIONS_PER_IMAGE,
    noun_extractor: str = DEFAULT_NOUN_EXTRACTOR,
    nlp: Any = None,
    spacy_model: str = DEFAULT_SPACY_MODEL,
    lemma_table: Mapping[str, str] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Retrieval concepts of a captioned image set, by the study's rule.

    ``captions_by_image``: ``(image_key, caption)`` pairs in reading order (an image's rows need not be
    adjacent). Only the first ``captions_per_image`` usable captions of each image are read (None and blank
    captions are skipped, not counted). A word is a concept when it is extracted (``noun_extractor``, see
    the module docstring) from the captions of at least ``min_images`` distinct images.

    Returns ``DataFrame(name, n_images)`` sorted by ``n_images`` descending, then name; ``n_images`` is
    int64. Raises ``ConfigError`` for a wrong option or a missing spaCy pipeline.
    """
    min_images, captions_per_image, noun_extractor, spacy_model = _check_retrieval_options(
        min_images, captions_per_image, noun_extractor, spacy_model
    )
    if noun_extractor == "spacy" and nlp is None:
        nlp = _spacy_pipeline(spacy_model)
    # Downstream sets are small (COCO: 25k captions); keep the selected captions, then extract in batches.
    used: Counter[str] = Counter()
    keys: list[str] = []
    texts: list[str] = []
    for key, caption in captions_by_image:
        if not isinstance(caption, str) or not caption.strip():
            continue
        key = str(key)
        if used[key] >= captions_per_image:
            continue
        used[key] += 1
        keys.append(key)
        texts.append(caption)
    if noun_extractor == "spacy":  # entities decoded, tags and format characters removed, case kept
        extracted = _spacy_nouns(nlp.pipe([decode_markup(t) for t in texts]))
    else:
        extracted = _lemma_words(texts, lemma_table)
    per_image: dict[str, set[str]] = {}
    for key, words in tqdm(
        zip(keys, extracted), total=len(texts), desc="caption nouns", unit="caption", disable=not progress
    ):
        per_image.setdefault(key, set()).update(words)
    n_images = Counter(w for words in per_image.values() for w in words)
    kept = sorted(((w, n) for w, n in n_images.items() if n >= min_images), key=lambda item: (-item[1], item[0]))
    return pd.DataFrame({"name": [w for w, _ in kept], "n_images": np.array([n for _, n in kept], dtype=np.int64)})


# ------------------------------------------------------------------------------- downstream entries


def read_class_names_file(path: str | os.PathLike, key: str = "class_names_file") -> list[str]:
    """Class names of a text file: one per line; blank lines and ``#`` comments ignored.

    A line whose first non-blank character is ``#`` is a comment, and so is everything from a ``#`` that
    follows white space (``dog  # the animal``); a ``#`` inside a name (``C#``) is kept. ``key`` names the
    params key in error messages. UTF-8 (a byte-order mark is dropped) or UTF-16/32 with a byte-order
    mark; lines end at ``\n`` or ``\r\n`` (``helpers.text.encodings``).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{key}: file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"{key}: not a file: {path}")
    try:
        text = read_text_file(path)
    except EncodingError as err:
        raise ConfigError(f"{key}: {err}") from err
    names = []
    for line in split_lines(text):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for sep in (" #", "\t#"):
            if sep in line:
                line = line[: line.index(sep)]
        line = line.strip()
        if line:
            names.append(line)
    if not names:
        raise ConfigError(f"{key}: {path} holds no class names")
    return names


def _class_names(entry: Mapping[str, Any], prefix: str, base_dir: Path | None) -> list[str]:
    names: list[str] = []
    if "class_names" in entry:
        raw = entry["class_names"]
        if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
            raise ConfigError(f"{prefix}.class_names: expected a list of names, got {type(raw).__name__}")
        if not raw:
            raise ConfigError(f"{prefix}.class_names: the list is empty")
        for i, name in enumerate(raw):
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"{prefix}.class_names[{i}]: expected a non-empty string, got {name!r}")
            names.append(name.strip())
    if "class_names_file" in entry:
        raw = entry["class_names_file"]
        if not isinstance(raw, (str, os.PathLike)) or not str(raw).strip():
            raise ConfigError(f"{prefix}.class_names_file: expected a file path, got {raw!r}")
        path = Path(raw)
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        names.extend(read_class_names_file(path, key=f"{prefix}.class_names_file"))
    return names


def _caption_source(config: Any, prefix: str, base_dir: Path | None) -> CaptionSource:
    key = f"{prefix}.captions"
    if not isinstance(config, Mapping):
        raise ConfigError(f"{key}: expected a caption source mapping (format, paths, ...), got {type(config).__name__}")
    config = dict(config)
    if base_dir is not None and "paths" in config:
        paths = config["paths"]
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths or [])
        config["paths"] = [p if os.path.isabs(p) else os.path.join(os.fspath(base_dir), os.fspath(p)) for p in paths]
    try:
        source = CaptionSource.from_config(config)
    except ConfigError as err:
        raise ConfigError(f"{key}.{err}") from err
    except TypeError as err:  # e.g. paths given as a number
        raise ConfigError(f"{key}: {err}") from err
    if source.format != "wds" and source.key_column is None:
        raise ConfigError(
            f"{key}.key_column: required for format {source.format!r}: the column that identifies the image "
            "each caption belongs to (several captions per image)"
        )
    try:  # fail fast: every shard exists, and the first one has the configured columns
        shards = list_shards(source)
        missing = [s.path for s in shards if not os.path.isfile(s.path)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ConfigError(f"paths: file not found: {missing[0]}{more}")
        check_source(source, shards)
    except ConfigError as err:
        raise ConfigError(f"{key}.{err}") from err
    return source


def _keyed_captions(source: CaptionSource, prefix: str) -> Iterator[tuple[str, str]]:
    """(image key, caption) of every usable record; a missing or unreadable shard is a ConfigError."""
    key = f"{prefix}.captions"
    try:
        shards = list_shards(source)
    except ConfigError as err:
        raise ConfigError(f"{key}.{err}") from err
    n_captions = 0
    for shard in shards:
        stats = ShardStats(shard.index, shard.path)
        try:
            for batch in read_shard(source, shard, stats):
                for image, caption in zip(batch.keys, batch.captions):
                    if caption is not None and image is not None:
                        n_captions += 1
                        yield image, caption
        except ConfigError as err:
            raise ConfigError(f"{key}.{err}") from err
        if stats.error:
            raise ConfigError(f"{key}.paths: {stats.error}")
    if n_captions == 0:
        raise ConfigError(f"{key}.paths: no usable captions in {len(shards)} shard(s)")


def _check_entry(name: Any, entry: Any) -> str:
    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise ConfigError(f"{PARAMS_KEY}: dataset name {name!r} must be a non-empty string without ':'")
    prefix = f"{PARAMS_KEY}.{name}"
    validate(Downstream, entry, prefix)  # keys, types and combinations (helpers.params.text.Downstream)
    return prefix


@dataclass
class _Plan:
    """One validated downstream entry, ready to extract (everything checkable was checked)."""

    dataset: str
    prefix: str
    class_names: list[str]
    source: CaptionSource | None = None
    min_images: int = DEFAULT_MIN_IMAGES
    captions_per_image: int = DEFAULT_CAPTIONS_PER_IMAGE
    noun_extractor: str = DEFAULT_NOUN_EXTRACTOR
    spacy_model: str = DEFAULT_SPACY_MODEL


def _plan(name: Any, entry: Any, base_dir: Path | None) -> _Plan:
    """Check one entry completely (keys, options, class-name file, caption source) without extracting."""
    prefix = _check_entry(name, entry)
    plan = _Plan(name, prefix, _class_names(entry, prefix, base_dir))
    if "captions" in entry:
        plan.min_images, plan.captions_per_image, plan.noun_extractor, plan.spacy_model = _check_retrieval_options(
            entry.get("min_images", DEFAULT_MIN_IMAGES),
            entry.get("captions_per_image", DEFAULT_CAPTIONS_PER_IMAGE),
            entry.get("noun_extractor", DEFAULT_NOUN_EXTRACTOR),
            entry.get("spacy_model", DEFAULT_SPACY_MODEL),
            prefix,
        )
        plan.source = _caption_source(entry["captions"], prefix, base_dir)
    return plan


def _pipelines(plans: Iterable[_Plan], nlp: Any) -> dict[str, Any]:
    """spaCy model name -> pipeline for every entry using ``noun_extractor: spacy`` (each loaded once)."""
    loaded: dict[str, Any] = {}
    for plan in plans:
        if plan.source is not None and plan.noun_extractor == "spacy" and plan.spacy_model not in loaded:
            loaded[plan.spacy_model] = nlp if nlp is not None else _spacy_pipeline(plan.spacy_model, plan.prefix)
    return loaded


def _run_plan(plan: _Plan, nlp: Any, lemma_table: Mapping[str, str] | None, progress: bool) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    zero_shot = f"{plan.dataset}:{ZERO_SHOT_TASK}"
    for concept in plan.class_names:
        if zero_shot not in out.setdefault(concept, []):
            out[concept].append(zero_shot)
    if plan.source is not None:
        found = extract_caption_concepts(
            _keyed_captions(plan.source, plan.prefix),
            min_images=plan.min_images,
            captions_per_image=plan.captions_per_image,
            noun_extractor=plan.noun_extractor,
            nlp=nlp,
            spacy_model=plan.spacy_model,
            lemma_table=lemma_table,
            progress=progress,
        )
        for concept in found["name"]:
            out.setdefault(concept, []).append(f"{plan.dataset}:{RETRIEVAL_TASK}")
    return out


def downstream_concepts(
    name: str,
    entry: Mapping[str, Any],
    *,
    nlp: Any = None,
    lemma_table: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, list[str]]:
    """The concepts of one ``concepts.downstream`` entry: concept name -> its sources (``name:task``).

    Validates the whole entry before reading any caption (fail fast). Class names come first, in their
    order, then retrieval concepts; a name in both gets both sources.
    """
    plan = _plan(name, entry, Path(base_dir) if base_dir is not None else None)
    pipelines = _pipelines([plan], nlp)
    return _run_plan(plan, pipelines.get(plan.spacy_model), lemma_table, progress)


# ----------------------------------------------------------------------------------------- the table


def _release_rows(release_concepts: pd.DataFrame) -> pd.DataFrame:
    """The release table checked, in id order; its ids must be 0..n-1 (they are kept as they are)."""
    release = schemas.CONCEPTS.validate(release_concepts, lazy=True).sort_values("concept_id", kind="stable")
    ids = release["concept_id"].to_numpy()
    if not np.array_equal(ids, np.arange(len(release))):
        raise ValueError(
            "release_concepts: concept_id must be 0..n-1 (the release's ids are kept, new ids follow them); "
            f"got {len(release)} rows with ids from {ids.min() if len(ids) else None} to {ids.max() if len(ids) else None}"
        )
    return release.reset_index(drop=True)


def build_concept_table(
    release_concepts: pd.DataFrame | None,
    downstream: Mapping[str, Mapping] | None = None,
    *,
    lemma_table: Mapping[str, str] | None = None,
    nlp: Any = None,
    progress: bool = False,
    base_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """The concept table the text search counts: release concepts first (ids kept), then new ones.

    ``release_concepts``: the release's table (``tidy.concepts``, schema ``CONCEPTS``; ids 0..n-1), or None
    for a table of the downstream concepts alone (ids from 0; no release needed, so it works offline).
    ``downstream``: the ``concepts.downstream`` section of ``params.yaml`` (see the module docstring);
    relative paths in it are resolved against ``base_dir`` (default: the working directory). ``nlp``:
    a spaCy-like pipeline for ``noun_extractor: spacy`` entries (loaded from ``spacy_model`` when None).
    ``lemma_table``: the lookup lemma table (default spaCy's English one) for ``lemmas`` and for the
    ``lemmas`` column (``matching.concept_lemmas``: lemmas, with plural nouns kept as written).

    Returns ``DataFrame(concept_id int32, name, key, lemmas list[str], sources list[str])`` validated by
    ``schemas.CONCEPT_TABLE``: new concepts are sorted by name; a name already present only gets the new
    sources appended to its row.
    """
    if release_concepts is None:
        release = pd.DataFrame({"name": pd.Series(dtype=str), "sources": pd.Series(dtype=object)})
    else:
        release = _release_rows(release_concepts)
    names: list[str] = [str(n) for n in release["name"]]
    sources: dict[str, list[str]] = {n: [str(s) for s in src] for n, src in zip(names, release["sources"])}
    if downstream is None:
        downstream = {}
    if not isinstance(downstream, Mapping):
        raise ConfigError(f"{PARAMS_KEY}: expected a mapping of dataset name -> entry, got {type(downstream).__name__}")
    base = Path(base_dir) if base_dir is not None else None
    # every entry is checked (and spaCy loaded) before the first, possibly slow, caption extraction
    plans = [_plan(dataset, entry, base) for dataset, entry in downstream.items()]
    pipelines = _pipelines(plans, nlp)
    new: set[str] = set()
    for plan in plans:
        found = _run_plan(plan, pipelines.get(plan.spacy_model), lemma_table, progress)
        for concept, concept_sources in found.items():
            if concept not in sources:
                sources[concept] = []
                new.add(concept)
            for src in concept_sources:
                if src not in sources[concept]:
                    sources[concept].append(src)
    names += sorted(new)
    lemmas = [
        list(concept_lemmas(n, lemma_table))
        for n in tqdm(names, desc="concept lemmas", unit="concept", disable=not progress)
    ]
    table = pd.DataFrame(
        {
            "concept_id": pd.array(np.arange(len(names)), dtype="int32"),
            "name": names,
            "key": [concept_key(n) for n in names],
            "lemmas": lemmas,
            "sources": [sources[n] for n in names],
        }
    )
    return schemas.CONCEPT_TABLE.validate(table, lazy=True)
