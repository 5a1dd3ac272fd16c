"""helpers.analysis.frequency_stats on a small hand-built frequencies table, and one check on the release."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.analysis import frequency_stats as fs
from helpers.release import tidy

KIND = {"lemmatized": "text", "rampp0.7": "image", "integrated_tlemmatized_i0.7": "matched"}


def _rows(pretrain: str, method: str, downstream: str, counts: dict[str, int]) -> list[dict]:
    threshold = 0.7 if method != "lemmatized" else None
    return [
        {
            "downstream": downstream,
            "pretrain": pretrain,
            "method": method,
            "kind": KIND[method],
            "threshold": threshold,
            "concept": c,
            "count": n,
        }
        for c, n in counts.items()
    ]


@pytest.fixture
def freq() -> pd.DataFrame:
    rows = []
    # Pretrain "a": five shared concepts (rank order 1..5) plus one only it has; 'dog' and 'cat' are
    # counted for two downstream datasets (same counts, as in the release).
    rows += _rows("a", "lemmatized", "cifar10", {"dog": 3, "cat": 1, "aardvark": 100})
    rows += _rows("a", "lemmatized", "imagenet", {"dog": 3, "cat": 1, "eel": 2, "fox": 4, "gnu": 5})
    # Pretrain "b": the same five concepts in a different row order (and one only it has). By name the
    # ranks are cat 1, eel 3, dog 2, fox 5, gnu 4.
    rows += _rows("b", "lemmatized", "imagenet", {"zebra": 7, "gnu": 40, "fox": 50, "dog": 20, "eel": 30, "cat": 10})
    rows += _rows("b", "lemmatized", "cifar10", {"dog": 20, "cat": 10})
    # Image and matched counts of "a" (none for "b").
    rows += _rows("a", "rampp0.7", "imagenet", {"dog": 9, "cat": 8, "eel": 7, "hen": 6})
    rows += _rows("a", "integrated_tlemmatized_i0.7", "imagenet", {"dog": 2, "eel": 1, "gnu": 0})
    return pd.DataFrame(rows)


def test_concept_counts_has_one_count_per_concept_across_downstream_datasets(freq):
    counts = fs.concept_counts(freq, pretrain="a", method="lemmatized")
    assert counts.index.is_unique
    assert counts.to_dict() == {"aardvark": 100, "cat": 1, "dog": 3, "eel": 2, "fox": 4, "gnu": 5}


def test_concept_counts_can_exclude_downstream_datasets(freq):
    counts = fs.concept_counts(freq, pretrain="a", method="lemmatized", exclude_downstream=("imagenet",))
    assert counts.to_dict() == {"aardvark": 100, "cat": 1, "dog": 3}


def test_concept_counts_of_an_absent_method_is_empty(freq):
    assert len(fs.concept_counts(freq, pretrain="b", method="rampp0.7")) == 0


def test_long_tail_table_has_one_row_per_concept_for_each_present_pretrain_and_kind(freq):
    table = fs.long_tail_table(freq, pretrains=["a", "b"], methods={"text": "lemmatized", "image": "rampp0.7"})
    assert list(table.columns) == ["pretrain", "kind", "concept", "count"]
    sizes = table.groupby(["pretrain", "kind"]).size().to_dict()
    assert sizes == {("a", "text"): 6, ("a", "image"): 4, ("b", "text"): 6}  # b has no image counts
    got = table[(table["pretrain"] == "b") & (table["kind"] == "text")].set_index("concept")["count"].to_dict()
    assert got == {"cat": 10, "dog": 20, "eel": 30, "fox": 50, "gnu": 40, "zebra": 7}


def test_tail_summary_hand_checked():
    counts = [0, 0, 1, 5, 9, 10, 20, 50, 100, 805]  # sum 1000
    table = pd.DataFrame(
        {"pretrain": "p", "kind": "text", "concept": [f"c{i}" for i in range(10)], "count": counts[::-1]}
    )
    two = pd.DataFrame({"pretrain": "q", "kind": "text", "concept": ["x", "y"], "count": [0, 0]})
    summary = fs.tail_summary(pd.concat([table, two], ignore_index=True)).set_index("pretrain")
    p = summary.loc["p"]
    assert p["concepts"] == 10
    assert p["zero_count_share"] == pytest.approx(0.2)
    assert p["below_10_share"] == pytest.approx(0.5)
    assert p["top_decile_share_of_mentions"] == pytest.approx(0.805)
    q = summary.loc["q"]  # all zeros: no division by zero
    assert q["zero_count_share"] == 1.0 and q["top_decile_share_of_mentions"] == 0.0


def test_pretrain_correlations_pair_by_concept_name_not_position(freq):
    corr, n = fs.pretrain_correlations(freq, pretrains=["a", "b"], method="lemmatized")
    assert list(corr.index) == list(corr.columns) == ["a", "b"]
    assert np.diag(corr.to_numpy()).tolist() == [1.0, 1.0]
    # Shared concepts only: ranks (1,2,3,4,5) vs (1,3,2,5,4) -> sum d^2 = 4, rho = 1 - 6*4/(5*24) = 0.8
    assert corr.loc["a", "b"] == pytest.approx(0.8)
    assert corr.loc["b", "a"] == pytest.approx(0.8)
    assert n.loc["a", "b"] == 5 and n.loc["b", "a"] == 5  # 'aardvark' and 'zebra' are not paired
    assert n.loc["a", "a"] == 6 and n.loc["b", "b"] == 6


def test_pretrain_correlations_leave_out_pretrains_without_counts(freq):
    corr, n = fs.pretrain_correlations(freq, pretrains=["a", "b", "missing"], method="lemmatized")
    assert list(corr.index) == ["a", "b"] and list(n.columns) == ["a", "b"]


def test_pretrain_correlations_is_nan_with_fewer_than_three_pairs(freq):
    two = pd.DataFrame(
        _rows("a", "lemmatized", "x", {"p": 1, "q": 2, "r": 3})
        + _rows("b", "lemmatized", "x", {"p": 1, "q": 2, "s": 3})
    )
    corr, n = fs.pretrain_correlations(two, pretrains=["a", "b"], method="lemmatized")
    assert n.loc["a", "b"] == 2 and np.isnan(corr.loc["a", "b"])


def test_pretrain_correlation_pair_counts_are_integers(freq):
    _, n = fs.pretrain_correlations(freq, pretrains=["a", "b"], method="lemmatized")
    assert all(pd.api.types.is_integer_dtype(t) for t in n.dtypes)


def test_count_kinds_wide_joins_the_three_kinds_on_concept(freq):
    wide = fs.count_kinds_wide(
        freq, pretrains=["a", "b"], text="lemmatized", image="rampp0.7", matched="integrated_tlemmatized_i0.7"
    )
    assert set(wide.columns) == {"concept", "text", "image", "matched", "pretrain"}
    assert set(wide["pretrain"]) == {"a"}  # b has no image or matched counts
    # only concepts with all three counts; each column from its own method, aligned by name
    got = wide.set_index("concept")[["text", "image", "matched"]].sort_index()
    assert got.to_dict("index") == {
        "dog": {"text": 3, "image": 9, "matched": 2},
        "eel": {"text": 2, "image": 7, "matched": 1},
    }


# --- the release ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release_freq(tidy_tables) -> pd.DataFrame:
    return tidy.load(tidy_tables, "frequencies")


def test_release_cc3m_and_cc12m_text_counts_agree_by_spearman(release_freq):
    corr, n = fs.pretrain_correlations(release_freq, pretrains=["cc3m", "cc12m"], method="lemmatized")
    # The release gives 0.792 over the 3,775 zero-shot/retrieval concepts (the matched counts,
    # integrated_tlemmatized_i0.7, give 0.916).
    assert n.loc["cc3m", "cc12m"] > 3500
    assert corr.loc["cc3m", "cc12m"] > 0.75
    assert corr.loc["cc3m", "cc12m"] == pytest.approx(0.792, abs=0.005)


def test_release_cc3m_and_cc12m_matched_counts_agree_above_0_8(release_freq):
    corr, _ = fs.pretrain_correlations(release_freq, pretrains=["cc3m", "cc12m"], method="integrated_tlemmatized_i0.7")
    assert corr.loc["cc3m", "cc12m"] > 0.8
