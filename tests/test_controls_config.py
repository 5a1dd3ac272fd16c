"""The params entries of the controls: defaults, and errors that name the params key."""

from __future__ import annotations

import pytest

from helpers.controls.config import let_it_wag_params, similarity_params
from helpers.controls.similarity import SearchSettings
from helpers.shards import ConfigError

SIM = {"corpus": "synthetic", "datasets": ["synthetic-cls"], "thresholds": [0.95, 0.8, 1.0]}
WAG = {"counts": "text_counts.parquet", "n_concepts": 20, "images": {"root": "images"}}


def test_similarity_defaults():
    got = similarity_params(SIM)
    assert got["thresholds"] == [0.8, 0.95, 1.0]
    assert got["embedder"] == {"kind": "pixel"} and got["tag_thresholds"] == [0.7] and got["batch_size"] == 64
    assert got["search"] == SearchSettings()


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"thresholds": [0.9, 1.2]}, r"controls\.similarity\.thresholds: .*\[-1, 1\]"),
        ({"thresholds": -2}, r"controls\.similarity\.thresholds"),
        ({"datasets": []}, r"controls\.similarity\.datasets"),
        ({"embedder": {"kind": "dino"}}, r"controls\.similarity\.embedder\.kind"),
        ({"embedder": {"kind": "open_clip"}}, r"controls\.similarity\.embedder\.model"),
        ({"search": {"nprobe": 0}}, r"controls\.similarity\.search\.nprobe"),
        ({"tag_thresholds": [1.5]}, r"controls\.similarity\.tag_thresholds"),
        ({"corpus": ""}, r"controls\.similarity\.corpus"),
        ({"thresh": 1}, r"controls\.similarity\.thresh: unknown key"),
    ],
)
def test_similarity_errors_name_the_key(change, key):
    with pytest.raises(ConfigError, match=key):
        similarity_params({**SIM, **change})


def test_let_it_wag_defaults_and_options():
    got = let_it_wag_params(WAG)
    assert got["min_images"] == 1 and got["per_class"] is None and got["phash_distance"] == 10
    assert got["corpus_dedup"] is None and got["outliers"] is None
    full = let_it_wag_params({**WAG, "corpus_dedup": {"embeddings": "emb", "embedder": {"kind": "pixel"}},
                              "outliers": {"model": "m", "threshold": 0.2}})  # fmt: skip
    assert full["corpus_dedup"]["threshold"] is None and full["outliers"]["threshold"] == 0.2


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"outliers": {"model": "m", "threshold": 1.01}}, r"let_it_wag\.outliers\.threshold: .*\[-1, 1\]"),
        (
            {"corpus_dedup": {"embeddings": "e", "embedder": {"kind": "pixel"}, "threshold": -7}},
            r"let_it_wag\.corpus_dedup\.threshold",
        ),
        ({"n_concepts": 0}, r"let_it_wag\.n_concepts"),
        ({"images": {}}, r"let_it_wag\.images\.root"),
        ({"images": {"root": "x", "urls": "y"}}, r"let_it_wag\.images\.urls: unknown key"),
        ({"per_class": 0}, r"let_it_wag\.per_class"),
    ],
)
def test_let_it_wag_errors_name_the_key(change, key):
    with pytest.raises(ConfigError, match=key):
        let_it_wag_params({**WAG, **change})
