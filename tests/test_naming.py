"""Concept naming: the release's spelling quirks and the normalised matching key."""

from __future__ import annotations

import pytest

from helpers import naming
from helpers.naming import concept_key, release_name

# --- release_name: evaluation class name -> spelling used by the search-count files -------------------


def test_cifar10_plane_is_renamed_to_airplane():
    assert release_name("cifar10", "plane") == "airplane"


@pytest.mark.parametrize("class_name", ["car", "bird", "cat", "truck", "airplane"])
def test_other_cifar10_classes_are_unchanged(class_name):
    assert release_name("cifar10", class_name) == class_name


@pytest.mark.parametrize("dataset", ["cifar100", "imagenet", "caltech101", "fgvcaircraft"])
def test_plane_rename_applies_only_to_cifar10(dataset):
    assert release_name(dataset, "plane") == "plane"


@pytest.mark.parametrize(
    "class_name, expected",
    [
        ("great_white_shark", "great white shark"),
        ("hammerhead shark", "hammerhead shark"),
        ("goldfish", "goldfish"),
        ("a_b_c", "a b c"),
    ],
)
def test_imagenet_r_underscores_become_spaces(class_name, expected):
    assert release_name("imagenet-r", class_name) == expected


@pytest.mark.parametrize(
    "dataset, class_name",
    [
        ("imagenet", "great_white_shark"),
        ("imagenet-sketch", "great_white_shark"),
        ("cub", "Black_footed_Albatross"),
        ("birdsnap", "Red_tailed_Hawk"),
        ("stanfordcars", "AM General Hummer SUV 2000"),
        ("dtd", "banded"),
    ],
)
def test_other_datasets_keep_class_names_verbatim(dataset, class_name):
    assert release_name(dataset, class_name) == class_name


def test_release_name_keeps_case_and_hyphens_for_imagenet_r():
    # Only underscores are rewritten; case and hyphens are part of the release name.
    assert release_name("imagenet-r", "West_Highland-white_Terrier") == "West Highland-white Terrier"


# --- concept_key: normalised matching key ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Cat", "cat"),
        ("GREAT White Shark", "great white shark"),
        ("american-flag", "american flag"),
        ("Black_footed_Albatross", "black footed albatross"),
        ("  Great  White shark", "great white shark"),
        ("tab\tand\nnewline", "tab and newline"),
        ("mixed _-_ separators", "mixed separators"),
        ("__leading and trailing--", "leading and trailing"),
        ("a--b__c  d", "a b c d"),
    ],
)
def test_concept_key_casefolds_and_collapses_separators(name, expected):
    assert concept_key(name) == expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("\uff23\uff41\uff54", "cat"),  # full-width "Ｃａｔ"
        ("\ufb01sh", "fish"),  # "ﬁ" ligature
        ("no\u00a0break", "no break"),  # non-breaking space
        ("Stra\u00dfe", "strasse"),  # casefold, not just lower()
        ("cafe\u0301", "caf\u00e9"),  # combining accent composed by NFKC
    ],
)
def test_concept_key_applies_unicode_nfkc(name, expected):
    assert concept_key(name) == expected


def test_concept_key_unifies_spellings_of_one_concept():
    spellings = ["Great White Shark", "great_white_shark", "great-white-shark", " great  white\tshark "]
    assert {concept_key(s) for s in spellings} == {"great white shark"}


def test_concept_key_is_idempotent():
    for name in ["Black_footed_Albatross", "  A--b  ", "\uff23\uff41\uff54", "plain"]:
        assert concept_key(concept_key(name)) == concept_key(name)


def test_concept_key_keeps_other_punctuation():
    assert concept_key("St. Bernard's (dog)") == "st. bernard's (dog)"


def test_concept_key_of_empty_or_separator_only_name_is_empty():
    assert concept_key("") == ""
    assert concept_key(" _- ") == ""


def test_normalisation_version_is_a_positive_int():
    assert isinstance(naming.NORMALISATION_VERSION, int) and naming.NORMALISATION_VERSION >= 1
