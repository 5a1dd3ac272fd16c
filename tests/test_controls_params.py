"""The controls' params entries in the typed layer: defaults, ranges, references; errors name the params key."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.controls import embed, similarity
from helpers.params import ConfigError, check, validate
from helpers.params.controls import LetItWag, SimilarityControl

SIM = {"corpus": "synthetic", "datasets": ["synthetic-cls"], "thresholds": [0.95, 0.8, 1.0]}
WAG = {"counts": "text_counts.parquet", "n_concepts": 20, "images": {"root": "images"}}
BASE = {
    "corpora": {"c": {"data": "d", "concepts": "c.parquet", "captions": {"format": "txt", "paths": "d/x.txt"}}},
    "image_corpora": {"synthetic": {"corpus": "c", "data": "d", "images": {"paths": "d/x.tar"},
                                    "tagger": {"backend": "trained", "checkpoint": "t.pt", "weights": "t.pt"}}},
    "evaluation": {"models": {"m": {"name": "ViT-B-32", "pretrained": "openai"}},
                   "datasets": {"synthetic-cls": {"format": "imagefolder", "root": "r"}}},
}  # fmt: skip


def test_similarity_defaults():
    got = validate(SimilarityControl, SIM, "controls.similarity")
    assert got.thresholds == [0.95, 0.8, 1.0] and got.embedder.kind == "pixel" and got.embedder.size == 6
    assert got.tag_thresholds == [0.7] and got.batch_size == 64 and got.retrain is False
    assert similarity.SearchSettings.from_config(got.search) == similarity.SearchSettings()


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"thresholds": [0.9, 1.2]}, r"controls\.similarity\.thresholds\[1\]: .*less than or equal to 1"),
        ({"thresholds": [-2]}, r"controls\.similarity\.thresholds\[0\]: .*greater than or equal to -1"),
        ({"default_threshold": 1.5}, r"controls\.similarity\.default_threshold"),
        ({"datasets": []}, r"controls\.similarity\.datasets"),
        ({"embedder": {"kind": "dino"}}, r"controls\.similarity\.embedder\.kind"),
        ({"embedder": {"kind": "open_clip"}}, r"controls\.similarity\.embedder\.model"),
        ({"embedder": {"kind": "open_clip", "model": "m", "default_threshold": -1.1}},
         r"controls\.similarity\.embedder\.default_threshold"),
        ({"search": {"nprobe": 0}}, r"controls\.similarity\.search\.nprobe"),
        ({"tag_thresholds": [1.5]}, r"controls\.similarity\.tag_thresholds"),
        ({"corpus": ""}, r"controls\.similarity\.corpus"),
        ({"thresh": 1}, r"controls\.similarity\.thresh"),
    ],
)  # fmt: skip
def test_similarity_errors_name_the_key(change, key):
    errors = check({**BASE, "controls": {"similarity": {**SIM, **change}}}, files=False)
    assert any(__import__("re").match(key, e) for e in errors), errors


def test_similarity_references_are_checked():
    bad = {**SIM, "corpus": "nope", "datasets": ["nope-ds"], "model": "nope-m",
           "embedder": {"kind": "open_clip", "model": "nope-e"}, "retrain": True}  # fmt: skip
    errors = check({**BASE, "controls": {"similarity": bad}}, files=False)
    for key in ("corpus", "datasets[0]", "model", "embedder.model", "retrain"):
        assert any(e.startswith(f"controls.similarity.{key}:") for e in errors), (key, errors)
    assert check({**BASE, "controls": {"similarity": SIM}}, files=False) == []


def test_let_it_wag_defaults_and_options():
    got = validate(LetItWag, WAG, "let_it_wag")
    assert got.min_images == 1 and got.per_class is None and got.phash_distance == 10
    assert got.corpus_dedup is None and got.outliers is None and got.dataset == "let-it-wag"
    full = validate(LetItWag, {**WAG, "corpus_dedup": {"embeddings": "emb"}, "outliers": {"model": "m",
                    "threshold": 0.2}}, "let_it_wag")  # fmt: skip
    assert full.corpus_dedup.threshold is None and full.outliers.threshold == 0.2


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"outliers": {"model": "m", "threshold": 1.01}}, r"let_it_wag\.outliers\.threshold"),
        ({"corpus_dedup": {"embeddings": "e", "threshold": -7}}, r"let_it_wag\.corpus_dedup\.threshold"),
        ({"n_concepts": 0}, r"let_it_wag\.n_concepts"),
        ({"images": {}}, r"let_it_wag\.images"),
        ({"images": {"root": "x", "world": "w"}}, r"let_it_wag\.images"),
        ({"images": {"root": "x", "urls": "y"}}, r"let_it_wag\.images\.urls"),
        ({"per_class": 0}, r"let_it_wag\.per_class"),
        ({"models": ["nope"]}, r"let_it_wag\.models\[0\]: 'nope' is not an entry of evaluation\.models"),
    ],
)
def test_let_it_wag_errors_name_the_key(change, key):
    errors = check({**BASE, "let_it_wag": {**WAG, **change}}, files=False)
    assert any(__import__("re").match(key, e) for e in errors), errors


def test_library_checks_go_through_the_params_layer():
    with pytest.raises(ConfigError, match=r"controls\.similarity\.search\.method"):
        similarity.SearchSettings(method="annoy")
    with pytest.raises(ConfigError, match=r"controls\.similarity\.embedder\.size"):
        embed.PixelEmbedder(1)
    with pytest.raises(ConfigError, match=r"controls\.similarity\.embedder\.kind"):
        embed.make_embedder({"kind": "dino"})
    with pytest.raises(ConfigError, match=r"controls\.similarity\.embedder\.model: 'm' is not an entry"):
        embed.make_embedder({"kind": "open_clip", "model": "m"}, models={})


def test_unloadable_embedding_model_fails_naming_the_key(tmp_path):
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    path = tmp_path / "controls-params-vit.json"
    path.write_text(json.dumps(config))
    torch.save({"not": torch.zeros(1)}, tmp_path / "w.pt")  # a checkpoint of another model
    models = {"tiny": {"model_config": str(path), "pretrained": str(tmp_path / "w.pt")}}
    with pytest.raises(ConfigError, match=r"controls\.similarity\.embedder\.model"):
        embed.make_embedder({"kind": "open_clip", "model": "tiny"}, models=models)
