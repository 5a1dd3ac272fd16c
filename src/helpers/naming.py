"""Concept names: one versioned normalisation for the release's known naming quirks.

Two different things are called a "concept name" in the release:

* the **release name**, exactly as the search-count files spell it. The 4,029 concepts of the study are
  the distinct release names (case and punctuation kept), so the concept table is keyed by them;
* the **key**, a normalised form for matching names written differently (case-folded; underscores,
  hyphens and runs of white space become one space). Text search and cross-dataset pairing use it.

The evaluation files spell a few class names differently from the count files; ``release_name`` maps an
evaluation class name to the release name of its counts. Bump ``NORMALISATION_VERSION`` whenever a rule
changes, so tables built with different rules are never mixed silently.
"""

from __future__ import annotations

import re
import unicodedata

NORMALISATION_VERSION = 1

# Dataset-specific renames between the evaluation files and the count files.
_EVAL_TO_COUNT_RENAMES: dict[str, dict[str, str]] = {
    "cifar10": {"plane": "airplane"},
}
# Datasets whose evaluation class names use underscores where the count files use spaces.
_UNDERSCORE_DATASETS = {"imagenet-r"}

_SEPARATORS = re.compile(r"[\s_\-]+")


def release_name(dataset: str, class_name: str) -> str:
    """The count-file spelling of an evaluation class name of ``dataset``."""
    renamed = _EVAL_TO_COUNT_RENAMES.get(dataset, {}).get(class_name, class_name)
    if dataset in _UNDERSCORE_DATASETS:
        renamed = renamed.replace("_", " ")
    return renamed


def concept_key(name: str) -> str:
    """Normalised matching key: NFKC, case-folded, ``_``/``-``/white space collapsed to one space.

    >>> concept_key("Black_footed_Albatross"), concept_key("american-flag"), concept_key("  Great  White shark")
    ('black footed albatross', 'american flag', 'great white shark')
    """
    text = unicodedata.normalize("NFKC", name).casefold()
    return _SEPARATORS.sub(" ", text).strip()
