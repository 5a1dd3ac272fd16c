"""helpers.text.corpora: corpus entries from params.yaml and the text-search stage's glue."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers.shards import ConfigError
from helpers.synthetic import samples
from helpers.text import corpora
from helpers.text.captions import list_shards

CONCEPTS = ["dog", "mouse", "hot dog", "teddy bear", "knife", "child"]
SETTINGS = {
    "mode": "phrase",
    "unknown_words": None,
    "executor": "serial",
    "workers": None,
    "ray_address": None,
    "allow_failed_shards": False,
}


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("FDP_WORKDIR", str(tmp_path))
    return tmp_path


@pytest.fixture()
def sample(workdir):
    configs = samples.write_sample_corpus(
        workdir / "data" / "raw" / "samples",
        n_captions=300,
        n_shards=2,
        seed=1,
        concept_names=CONCEPTS,
        relative_to=workdir,
    )
    return configs


def _concepts() -> pd.DataFrame:
    return pd.DataFrame({"concept_id": pd.array(range(len(CONCEPTS)), dtype="int32"), "name": CONCEPTS})


def test_relative_caption_paths_resolve_against_the_work_folder(sample, workdir):
    source = corpora.caption_source("c", {"data": "x", "concepts": "concepts.parquet", "captions": sample["tsv"]})
    assert all(p.startswith(str(workdir)) for p in source.paths)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"data": "x"}, "corpora.c.captions: missing"),
        (
            {"data": "x", "concepts": "concepts.parquet", "captions": {"format": "tsv", "paths": "a.tsv"}, "colour": 1},
            "corpora.c.colour: unknown key",
        ),
        (
            {"data": "x", "concepts": "concepts.parquet", "captions": {"format": "xml", "paths": "a.xml"}},
            "corpora.c.captions.format",
        ),
        (
            {
                "data": "x",
                "concepts": "concepts.parquet",
                "captions": {"format": "tsv", "paths": "a.tsv", "captoin_column": 1},
            },
            "corpora.c.captions.captoin_column",
        ),
        ("not a mapping", "corpora.c: input should be a valid dictionary"),
    ],
)
def test_wrong_corpus_entries_fail_fast_naming_the_params_key(entry, message, workdir):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        corpora.caption_source("c", entry)


def test_unknown_text_search_setting_is_named():
    with pytest.raises(ConfigError, match=r"^text_search\.modus: unknown key; did you mean 'mode'"):
        corpora.check_text_search_settings({**SETTINGS, "modus": "phrase"})


def test_search_corpus_counts_match_the_generators_mentions_in_every_format(sample, workdir):
    expected = sample["expected"]["mentions"]
    results = {}
    for fmt in ("tsv", "parquet", "wds", "txt"):
        result = corpora.search_corpus(
            f"c_{fmt}",
            {"data": "x", "concepts": "concepts.parquet", "captions": sample[fmt]},
            _concepts(),
            SETTINGS,
            progress=False,
        )
        counts = result.counts.set_index("concept")["count"]
        results[fmt] = counts
        assert corpora.text_counts_path(f"c_{fmt}").exists()
        assert (result.shards["status"] == "ok").all()
    for fmt, counts in results.items():
        assert counts.equals(results["tsv"]), fmt
    # "hot dog" captions also contain "dog": the phrase matcher counts the sample under both concepts.
    for name, n in expected.items():
        if name not in ("dog",):
            assert results["tsv"][name] == n, name


def test_rerun_resumes_and_gives_identical_counts(sample, workdir):
    entry = {"data": "x", "concepts": "concepts.parquet", "captions": sample["parquet"]}
    first = corpora.search_corpus("c", entry, _concepts(), SETTINGS, progress=False).counts
    done = sorted((corpora.text_search_dir("c") / "shards").glob("*"))
    mtimes = {p: p.stat().st_mtime_ns for p in done}
    second = corpora.search_corpus("c", entry, _concepts(), SETTINGS, progress=False).counts
    assert first.equals(second)
    assert {p: p.stat().st_mtime_ns for p in done} == mtimes  # nothing recomputed


def test_a_missing_shard_stops_the_stage_naming_it_unless_allowed(sample, workdir):
    captions = dict(sample["txt"])
    shard_paths = [
        s.path
        for s in list_shards(
            corpora.caption_source("c", {"data": "x", "concepts": "concepts.parquet", "captions": captions})
        )
    ]
    captions["paths"] = shard_paths + [str(workdir / "data" / "raw" / "samples" / "txt" / "part-99999.txt")]
    entry = {"data": "x", "concepts": "concepts.parquet", "captions": captions}
    with pytest.raises(RuntimeError, match="part-99999.txt"):
        corpora.search_corpus("c", entry, _concepts(), SETTINGS, progress=False)
    result = corpora.search_corpus("c", entry, _concepts(), {**SETTINGS, "allow_failed_shards": True}, progress=False)
    assert (result.shards["status"] != "ok").sum() == 1
    assert result.counts["count"].sum() > 0


def test_concept_ids_must_be_positions(sample, workdir):
    shuffled = _concepts().iloc[::-1].reset_index(drop=True)
    with pytest.raises(ValueError, match="0..n-1"):
        corpora.search_corpus(
            "c",
            {"data": "x", "concepts": "concepts.parquet", "captions": sample["txt"]},
            shuffled,
            SETTINGS,
            progress=False,
        )


def test_a_corpus_names_its_concept_table_and_the_search_keeps_a_copy(sample, workdir):
    from helpers import schemas
    from helpers.text import concepts as concept_lib

    table = concept_lib.build_concept_table(None, {"toy": {"class_names": CONCEPTS}})
    schemas.write_table(table, schemas.CONCEPT_TABLE, workdir / "data" / "processed" / "concept_tables" / "toy.parquet")
    entry = {"data": "x", "concepts": "data/processed/concept_tables/toy.parquet", "captions": sample["tsv"]}
    loaded = corpora.load_concepts("c", entry)
    assert loaded["name"].tolist() == sorted(CONCEPTS)
    corpora.search_corpus("c", entry, loaded, SETTINGS, progress=False)
    searched = corpora.searched_concepts("c")
    assert searched.equals(loaded[["concept_id", "name"]])
    with pytest.raises(ConfigError, match="corpora.c.concepts: missing"):
        corpora.load_concepts("c", {"data": "x", "captions": sample["tsv"]})
    # the release's tidy concept table has no lemmas: refused naming the key and the stages to use instead
    release_table = {**entry, "concepts": "data/processed/release/concepts.parquet"}
    with pytest.raises(
        ConfigError, match=r"^corpora\.c\.concepts: .*release's tidy concept table.*downstream_concepts@"
    ):
        corpora.load_concepts("c", release_table)
    with pytest.raises(ConfigError, match="corpora.c.concepts: .*not found"):
        corpora.load_concepts("c", {**entry, "concepts": "nope.parquet"})
    with pytest.raises(ConfigError, match="corpora.other: no caption search"):
        corpora.searched_concepts("other")


def test_a_caption_cut_at_max_caption_chars_is_reported_where_the_user_reads(workdir):
    """A long caption is cut (and counted); the stage says so, naming the key that raises the limit."""
    folder = workdir / "data" / "raw" / "long"
    folder.mkdir(parents=True)
    long = "a dog " + "x" * 6000 + " and a mouse"
    (folder / "part-00000.txt").write_text(f"{long}\na teddy bear\n", encoding="utf-8")
    captions = {"format": "txt", "paths": str(folder / "*.txt"), "max_caption_chars": 4096}
    entry = {"data": str(folder), "concepts": "concepts.parquet", "captions": captions}
    with pytest.warns(UserWarning, match=r"corpora\.long\.captions\.max_caption_chars: 1 captions longer than 4,096"):
        result = corpora.search_corpus("long", entry, _concepts(), SETTINGS, progress=False)
    counts = result.counts.set_index("concept")["count"]
    assert counts["dog"] == 1 and counts["mouse"] == 0 and counts["teddy bear"] == 1  # the mouse was cut off
    assert len(result.notes) == 1 and int(result.shards["truncated"].sum()) == 1
    whole = corpora.search_corpus("long", {**entry, "captions": {**captions, "max_caption_chars": 8192}},
                                  _concepts(), SETTINGS, progress=False)  # fmt: skip
    assert whole.notes == [] and whole.counts.set_index("concept")["count"]["mouse"] == 1


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_a_column_missing_from_a_files_header_names_the_corpus_key(workdir, executor):
    """Found only once a file is read (the header is not known from the params): the error names the key."""
    folder = workdir / "tsv"
    folder.mkdir()
    (folder / "a.tsv").write_text("url\tcaption\nx\ta dog on grass\n", encoding="utf-8")
    entry = {"data": "tsv", "concepts": "concepts.parquet",
             "captions": {"format": "tsv", "paths": "tsv/*.tsv", "header": True, "caption_column": "text"}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"corpora\.mine\.captions\.caption_column: column 'text' not in the header"):
        corpora.search_corpus("mine", entry, _concepts(), {**SETTINGS, "executor": executor, "workers": 1},
                              progress=False)  # fmt: skip
