"""helpers.images.corpora: the image-search stage's glue, end to end on a small sample corpus."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from helpers import schemas
from helpers.images import corpora as image_corpora
from helpers.shards import ConfigError
from helpers.synthetic import samples
from helpers.text import corpora

CONCEPTS = ["dog", "mouse", "hot dog", "teddy bear", "knife", "child", "zebra"]
TEXT_SETTINGS = {"mode": "phrase", "executor": "serial"}


@pytest.fixture()
def world(tmp_path, monkeypatch):
    """A work folder with a sample corpus, its caption search done, and a trained sample tagger."""
    monkeypatch.setenv("FDP_WORKDIR", str(tmp_path))
    torch.set_num_threads(1)
    out = tmp_path / "data" / "raw" / "samples"
    configs = samples.write_sample_corpus(
        out, n_captions=240, n_shards=2, seed=3, concept_names=CONCEPTS, relative_to=tmp_path
    )
    tagger_set = samples.write_sample_tagger_set(
        out / "tagger", n_per_concept=10, seed=3, concept_names=CONCEPTS, relative_to=tmp_path
    )
    concepts = pd.DataFrame({"concept_id": pd.array(range(len(CONCEPTS)), dtype="int32"), "name": CONCEPTS})
    corpora.search_corpus(
        "toy",
        {"data": "x", "concepts": "concepts.parquet", "captions": configs["wds"]},
        concepts,
        TEXT_SETTINGS,
        progress=False,
    )
    training = {
        "labels": tagger_set["labels"],
        "checkpoint": "data/processed/taggers/trained.pt",
        "image_size": 16,
        "epochs": 15,
        "batch_size": 32,
        "lr": 0.003,
        "seed": 0,
    }
    tagger = image_corpora.train_sample_tagger(training, progress=False)
    entry = {
        "data": "x",
        "images": {"format": "wds", "paths": configs["wds"]["paths"], "image_ext": ["jpg"]},
        "tagger": {"backend": "trained", "checkpoint": "data/processed/taggers/trained.pt", "unknown_concepts": "zero"},
    }
    settings = {
        "thresholds": [0.5, 0.7],
        "prob_floor": 0.5,
        "batch_size": 32,
        "executor": "serial",
    }
    return {
        "tmp": tmp_path,
        "concepts": concepts,
        "entry": entry,
        "settings": settings,
        "tagger": tagger,
        "configs": configs,
    }


def test_training_lowers_the_loss_and_saves_a_checkpoint(world):
    history = world["tagger"].loss_history
    assert history[-1] < history[0] * 0.6
    assert (world["tmp"] / "data" / "processed" / "taggers" / "trained.pt").exists()


def test_tag_corpus_writes_image_matched_and_text_counts(world):
    result = image_corpora.tag_corpus("toy", world["entry"], world["concepts"], world["settings"], progress=False)
    table = schemas.read_table(image_corpora.frequencies_path("toy"), schemas.CORPUS_FREQUENCIES)
    assert set(table["method"]) == {"text", "image", "matched"}
    text = table[table["method"] == "text"].set_index("concept")["count"]
    wide = table[table["method"] != "text"].pivot_table(
        index="concept", columns=["method", "threshold"], values="count"
    )
    wide = wide.reindex(text.index)
    for t in (0.5, 0.7):
        matched, image = wide[("matched", t)], wide[("image", t)]
        assert (matched <= image).all()
        assert (matched <= text).all()
    # higher thresholds never count more
    assert (wide[("image", 0.7)] <= wide[("image", 0.5)]).all()
    # the sample images show their caption's first concept, so the tagger finds some of them
    assert wide[("image", 0.5)].sum() > 0
    assert list(result.misalignment["threshold"]) == [0.5, 0.7]
    assert (result.shards["status"] == "ok").all()


def test_prior_shift_moves_the_tagger_onto_the_corpus_priors_and_is_recorded(world):
    """With ``prior_shift`` the stage fits EM offsets on a corpus sample, tags with the shifted tagger, writes
    ``prior_shift.parquet`` and reports it; the stored probabilities are the shifted ones."""
    from helpers.images.search import image_search_dir

    plain = image_corpora.tag_corpus("toy", world["entry"], world["concepts"], world["settings"], progress=False)
    entry = {**world["entry"], "prior_shift": {"images": 100}}
    result = image_corpora.tag_corpus("toy", entry, world["concepts"], world["settings"], progress=False)
    table = schemas.read_table(image_search_dir("toy") / "prior_shift.parquet", schemas.PRIOR_SHIFT)
    assert table["concept_id"].tolist() == list(range(len(CONCEPTS)))
    assert result.report["prior_shift"]["n_images"] == 100 and result.report["prior_shift"]["converged"]
    assert not plain.report.get("prior_shift")
    unknown = [c not in world["tagger"].model_concepts for c in CONCEPTS]
    assert (table.loc[unknown, "offset"] == 0).all()  # unknown concepts (scored 0) are left alone
    # the counts move the way the offsets say: a concept shifted up is never counted less often
    counts = {}
    for name, res in (("plain", plain), ("shifted", result)):
        image = res.frequencies[(res.frequencies["method"] == "image") & (res.frequencies["threshold"] == 0.5)]
        counts[name] = image.set_index("concept_id")["count"]
    up = table.set_index("concept_id")["offset"] > 0
    assert (counts["shifted"][up] >= counts["plain"][up]).all()
    assert (counts["shifted"][~up] <= counts["plain"][~up]).all()


def test_tag_corpus_needs_the_caption_side_and_a_tagger(world):
    with pytest.raises(ConfigError, match="image_corpora.other: no caption search for 'other'"):
        image_corpora.tag_corpus("other", world["entry"], world["concepts"], world["settings"], progress=False)
    no_tagger = {k: v for k, v in world["entry"].items() if k != "tagger"}
    with pytest.raises(ConfigError, match=r"^image_corpora\.toy\.tagger: missing"):
        image_corpora.tag_corpus("toy", no_tagger, world["concepts"], world["settings"], progress=False)
    with pytest.raises(ConfigError, match=r"^image_corpora\.toy\.taggr: unknown key; did you mean 'tagger'"):
        image_corpora.tag_corpus("toy", {**world["entry"], "taggr": {}}, world["concepts"], world["settings"])
    # image_search holds only settings shared by every corpus: a tagger there is refused by name
    with pytest.raises(ConfigError, match=r"^image_search\.tagger: unknown key"):
        settings = {**world["settings"], "tagger": world["entry"]["tagger"]}
        image_corpora.tag_corpus("toy", world["entry"], world["concepts"], settings, progress=False)
    bad_tagger = {**world["entry"], "tagger": {**world["entry"]["tagger"], "unknown_concepts": "drop"}}
    with pytest.raises(ConfigError, match=r"^image_corpora\.toy\.tagger\.unknown_concepts: 'drop' is not one of"):
        image_corpora.tag_corpus("toy", bad_tagger, world["concepts"], world["settings"], progress=False)


def test_an_image_corpus_names_its_caption_side_and_its_own_tagger(world):
    """Two taggers of one corpus: entries with their own names, `corpus` pointing at the caption search."""
    entry = {**world["entry"], "corpus": "toy"}
    result = image_corpora.tag_corpus("toy_trained", entry, world["concepts"], world["settings"], progress=False)
    assert result.image_dir == image_corpora.image_search_dir("toy_trained")
    assert image_corpora.frequencies_path("toy_trained").exists()
    text = result.frequencies[result.frequencies["method"] == "text"]["count"].sum()
    assert text == pd.read_parquet(corpora.text_counts_path("toy"))["count"].sum() > 0
    # the image search reads the concept table the caption search used
    searched = image_corpora.searched_concepts("toy_trained", entry)
    assert searched["name"].tolist() == CONCEPTS
    with pytest.raises(ConfigError, match="image_corpora.x.corpus: no caption search for 'nope'"):
        image_corpora.searched_concepts("x", {**world["entry"], "corpus": "nope"})


def test_qualitative_examples_return_images_with_tags(world):
    result = image_corpora.tag_corpus("toy", world["entry"], world["concepts"], world["settings"], progress=False)
    examples = image_corpora.qualitative_examples("toy", world["entry"], result.image_dir, CONCEPTS, threshold=0.5, n=4)
    assert len(examples) == 4
    assert all(image.size == (8, 8) and isinstance(tags, list) for image, tags in examples)


def test_relative_tagger_paths_resolve_against_the_work_folder(tmp_path):
    config = image_corpora.resolve_tagger_config(
        {"backend": "trained", "checkpoint": "m/t.pt", "train": {"labels": "l.csv"}}, base=tmp_path
    )
    assert config["checkpoint"] == str(tmp_path / "m/t.pt")
    assert config["train"]["labels"] == str(tmp_path / "l.csv")


def test_training_params_are_checked_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("FDP_WORKDIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^taggers\.sample\.epoch: unknown key; did you mean 'epochs'"):
        image_corpora.train_sample_tagger({"labels": "x", "checkpoint": "y", "epoch": 3})
    with pytest.raises(ConfigError, match="taggers.world.labels: file not found"):
        image_corpora.train_sample_tagger({"labels": "missing.csv", "checkpoint": "y"}, name="world")


def test_the_stage_runs_with_the_open_clip_backend_from_a_local_checkpoint(world):
    """Any backend plugs into the same stage: here a tiny open_clip model saved and loaded by path."""
    import json

    import open_clip

    config = world["tmp"] / "models" / "stage-test-tiny-vit.json"
    config.parent.mkdir(parents=True)
    config.write_text(
        json.dumps(
            {
                "embed_dim": 32,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
            }
        )
    )
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    torch.save(open_clip.create_model("stage-test-tiny-vit").state_dict(), world["tmp"] / "models" / "tiny.pt")
    entry = {
        **world["entry"],
        "tagger": {
            "backend": "open_clip",
            "model_config": "models/stage-test-tiny-vit.json",
            "pretrained": "models/tiny.pt",
        },
    }
    result = image_corpora.tag_corpus("toy", entry, world["concepts"], world["settings"], progress=False)
    assert result.image_dir == image_corpora.image_search_dir("toy")  # the stage's declared out, whatever the tagger
    assert set(result.frequencies["method"]) == {"text", "image", "matched"}
    assert (result.shards["status"] == "ok").all()


def test_a_failed_shard_with_both_settings_on_finishes_and_is_reported(world):
    """Issue 10, case 3: an empty tar with text_ and image_search.allow_failed_shards true used to tag every
    shard and then stop with IncompleteRunError in the matched counts."""
    folder = world["tmp"] / "data" / "raw" / "samples" / "wds"
    (folder / "00002.tar").write_bytes(b"")  # an empty tar: a third shard of both sides
    entry = {**world["entry"], "images": {**world["entry"]["images"], "paths": str(folder / "*.tar")}}
    captions = {**world["configs"]["wds"], "paths": str(folder / "*.tar")}
    with pytest.raises(RuntimeError, match="text_search.allow_failed_shards"):
        corpora.search_corpus(
            "toy", {"data": "x", "concepts": "concepts.parquet", "captions": captions}, world["concepts"], TEXT_SETTINGS
        )
    with pytest.raises(RuntimeError, match="did not accept"):  # the image stage honours the text stage's decision
        image_corpora.tag_corpus("toy", entry, world["concepts"], world["settings"], progress=False)
    text_settings = {**TEXT_SETTINGS, "allow_failed_shards": True}
    text = corpora.search_corpus(
        "toy", {"data": "x", "concepts": "concepts.parquet", "captions": captions}, world["concepts"], text_settings
    )
    assert list(text.shards["status"]) == ["ok", "ok", "error"]
    with pytest.raises(RuntimeError, match="image_search.allow_failed_shards"):
        image_corpora.tag_corpus("toy", entry, world["concepts"], world["settings"], progress=False)
    settings = {**world["settings"], "allow_failed_shards": True}
    result = image_corpora.tag_corpus("toy", entry, world["concepts"], settings, progress=False)
    assert list(result.shards["status"]) == ["ok", "ok", "error"]
    assert list(result.shards["caption_status"]) == ["ok", "ok", "error"]
    assert "truncated" in result.shards["error"].iloc[2] and "truncated" in result.shards["caption_error"].iloc[2]
    assert [f["shard"] for f in result.report["failed"]] == [2] and [
        f["shard"] for f in result.report["caption_failed"]
    ] == [2]
    # the empty shard adds nothing: the counts equal those of the two good shards alone
    (folder / "00002.tar").unlink()
    corpora.search_corpus(
        "toy", {"data": "x", "concepts": "concepts.parquet", "captions": captions}, world["concepts"], TEXT_SETTINGS
    )
    clean = image_corpora.tag_corpus("toy", world["entry"], world["concepts"], world["settings"], progress=False)
    assert clean.frequencies.equals(result.frequencies)
