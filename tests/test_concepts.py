"""The unified concept table: release ids kept, downstream concepts appended, every wrong entry refused by key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import schemas
from helpers.naming import concept_key
from helpers.shards import ConfigError
from helpers.text.concepts import (
    build_concept_table,
    extract_caption_concepts,
    read_class_names_file,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _release(names: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "concept_id": pd.array(range(len(names)), dtype="int32"),
            "name": names,
            "key": [concept_key(n) for n in names],
            "sources": [[f"rel{i % 2}:zero_shot"] for i in range(len(names))],
        }
    )


@pytest.fixture
def release() -> pd.DataFrame:
    return _release(["airplane", "dog", "hot dog", "mouse"])


class FakeToken:
    def __init__(self, text: str, pos: str, lemma: str) -> None:
        self.text, self.pos_, self.lemma_ = text, pos, lemma


class FakeNLP:
    """A spaCy stand-in: words split on white space, a small noun/lemma vocabulary, the rest tagged VERB."""

    NOUNS = {"dog": "dog", "dogs": "dog", "mice": "mouse", "mouse": "mouse", "beach": "beach", "park": "park",
             "kite": "kite", "kites": "kite", "Paris": "Paris", "tables": "table"}  # fmt: skip

    def __init__(self) -> None:
        self.calls = 0

    def pipe(self, texts):
        self.calls += 1
        for text in texts:
            words = text.replace(".", " ").split()
            yield [
                FakeToken(w, "PROPN" if w[0].isupper() and w in self.NOUNS else "NOUN", self.NOUNS[w])
                if w in self.NOUNS
                else FakeToken(w, "VERB", w.lower())
                for w in words
            ]


def _write_captions(path: Path, rows: list[tuple[str, str]]) -> dict:
    path.write_text("image_id\tcaption\n" + "".join(f"{k}\t{c}\n" for k, c in rows))
    return {"format": "tsv", "paths": str(path), "header": True, "caption_column": "caption", "key_column": "image_id"}


# ------------------------------------------------------------------------------------------ the table


def test_release_only_keeps_ids_names_and_sources(release):
    table = build_concept_table(release)
    assert table["concept_id"].dtype == "int32"
    assert table["concept_id"].tolist() == [0, 1, 2, 3]
    assert table["name"].tolist() == release["name"].tolist()
    assert table["key"].tolist() == release["key"].tolist()
    assert table["sources"].tolist() == release["sources"].tolist()
    assert table["lemmas"].tolist() == [["airplane"], ["dog"], ["hot", "dog"], ["mouse"]]
    schemas.CONCEPT_TABLE.validate(table)


def test_release_order_is_by_id_not_row_order(release):
    shuffled = release.iloc[[2, 0, 3, 1]]
    assert build_concept_table(shuffled)["name"].tolist() == ["airplane", "dog", "hot dog", "mouse"]


def test_release_ids_must_be_contiguous(release):
    gappy = release.assign(concept_id=pd.array([0, 1, 2, 7], dtype="int32"))
    with pytest.raises(ValueError, match="0..n-1"):
        build_concept_table(gappy)


def test_class_names_appended_sorted_with_sources(release):
    downstream = {"mydata": {"class_names": ["zebra", "dog", " Aardvark ", "mice", "zebra"]}}
    table = build_concept_table(release, downstream).set_index("name")
    assert table.loc["dog", "concept_id"] == 1  # already present: same row, source appended
    assert table.loc["dog", "sources"] == ["rel1:zero_shot", "mydata:zero_shot"]
    # new concepts after the release, sorted by name (Python's order: upper case first)
    assert table.reset_index()["name"].tolist()[4:] == ["Aardvark", "mice", "zebra"]
    assert table.loc[["Aardvark", "mice", "zebra"], "concept_id"].tolist() == [4, 5, 6]
    assert table.loc["zebra", "sources"] == ["mydata:zero_shot"]  # listed twice, one source
    assert table.loc["Aardvark", "key"] == "aardvark"


def test_plural_names_kept_as_written_and_exact_name_rule(release):
    names = ["mice", "Hot_Dogs", "geese", "Leaf", "wolf"]
    table = build_concept_table(release, {"d": {"class_names": names}}).set_index("name")
    # a concept named in the plural is matched as written (issue 12): its "lemmas" are the plural words
    assert table.loc["mice", "lemmas"] == ["mice"]
    assert table.loc["geese", "lemmas"] == ["geese"]
    assert table.loc["Hot_Dogs", "lemmas"] == ["hot", "dogs"]
    assert table.loc["Leaf", "lemmas"] == ["leaf"] and table.loc["wolf", "lemmas"] == ["wolf"]
    # "mice" is not the name "mouse": its own row (different key)
    assert table.loc["mice", "concept_id"] != table.loc["mouse", "concept_id"]
    assert table.loc["mice", "key"] == "mice"


def test_duplicates_across_datasets_are_merged(release):
    downstream = {"a": {"class_names": ["zebra", "mouse"]}, "b": {"class_names": ["zebra"]}}
    table = build_concept_table(release, downstream)
    assert (table["name"] == "zebra").sum() == 1
    row = table.set_index("name").loc["zebra"]
    assert row["sources"] == ["a:zero_shot", "b:zero_shot"]
    assert table.set_index("name").loc["mouse", "sources"] == ["rel1:zero_shot", "a:zero_shot"]
    assert len(table) == 5


def test_class_names_file_comments_and_base_dir(tmp_path, release):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "classes.txt").write_text(
        "# header comment\n\nzebra\n  red panda   # inline comment\n\tC#\n   # indented comment\nkiwi\n"
    )
    assert read_class_names_file(tmp_path / "sub" / "classes.txt") == ["zebra", "red panda", "C#", "kiwi"]
    table = build_concept_table(release, {"d": {"class_names_file": "sub/classes.txt"}}, base_dir=tmp_path)
    assert table["name"].tolist()[4:] == ["C#", "kiwi", "red panda", "zebra"]


def test_table_round_trips_through_parquet(tmp_path, release):
    table = build_concept_table(release, {"d": {"class_names": ["zebra"]}})
    path = schemas.write_table(table, schemas.CONCEPT_TABLE, tmp_path / "concepts.parquet")
    back = schemas.read_table(path, schemas.CONCEPT_TABLE)
    assert [list(v) for v in back["lemmas"]] == table["lemmas"].tolist()


def test_real_release_ids_preserved(tidy_tables):
    path = tidy_tables / "concepts.parquet"  # the release tidied from its local copy (skipped without one)
    release = schemas.read_table(path, schemas.CONCEPTS)
    table = build_concept_table(release, {"new": {"class_names": ["dog", "a surely new concept"]}})
    assert len(release) == 4029 and len(table) == 4030
    assert table["name"].iloc[:4029].tolist() == release.sort_values("concept_id")["name"].tolist()
    assert table["name"].iloc[-1] == "a surely new concept"
    assert "new:zero_shot" in table.set_index("name").loc["dog", "sources"]


# ------------------------------------------------------------------------------- retrieval concepts


def test_extract_with_fake_nlp_min_images_and_cutoff():
    pairs = [
        ("i1", "dogs on the beach"),
        ("i2", "a dog in the park"),
        ("i3", "dog dog dog"),
        ("i1", "dogs again dogs"),  # same image: counted once
        ("i2", ""),  # blank: skipped, does not use up a caption slot
        ("i2", "kites"),
        ("i3", "kite over Paris"),
        ("i1", "kite"),
        ("i1", "third caption"),
        ("i1", "mice"),  # i1's 5th caption: beyond captions_per_image=3
        ("i2", "mice"),
        ("i3", "mice"),
    ]
    nlp = FakeNLP()
    out = extract_caption_concepts(pairs, min_images=2, captions_per_image=3, noun_extractor="spacy", nlp=nlp)
    assert list(out.columns) == ["name", "n_images"]
    assert out["n_images"].dtype == np.int64
    got = dict(zip(out["name"], out["n_images"]))
    assert got == {"dog": 3, "kite": 3, "mouse": 2}  # beach, park, paris: one image each
    assert out["name"].tolist() == ["dog", "kite", "mouse"]  # n_images descending, then name
    assert nlp.calls == 1
    out = extract_caption_concepts(pairs, min_images=1, captions_per_image=3, noun_extractor="spacy", nlp=nlp)
    got = dict(zip(out["name"], out["n_images"]))
    assert got["paris"] == 1 and got["beach"] == 1 and "again" not in got  # PROPN lower-cased, verbs not
    out = extract_caption_concepts(pairs, min_images=3, captions_per_image=2, noun_extractor="spacy", nlp=nlp)
    assert dict(zip(out["name"], out["n_images"])) == {"dog": 3}  # i1's kite is its 3rd caption


def test_extract_with_lemmas_extractor_over_extracts():
    pairs = [
        ("a", "Two mice are sitting on the tables."),
        ("b", "THE MICE AND 3 TABLES"),
        ("c", "a mouse is sitting at 10pm"),
    ]
    out = extract_caption_concepts(pairs, min_images=2, captions_per_image=5, noun_extractor="lemmas")
    got = dict(zip(out["name"], out["n_images"]))
    assert got == {"mouse": 3, "sit": 2, "table": 2}  # "sit": no part-of-speech filter
    out = extract_caption_concepts(pairs, min_images=1, captions_per_image=5, noun_extractor="lemmas")
    words = set(out["name"])
    assert not words & {"two", "the", "are", "and", "on", "at", "is"}  # stop words
    assert "10pm" not in words and "3" not in words  # not alphabetic


def test_retrieval_entry_builds_concepts(tmp_path, release):
    rows = [(f"img{i}", c) for i in range(4) for c in ("dogs on the beach", "a kite in the park")]
    rows += [("img0", "mice")]
    entry = {"captions": _write_captions(tmp_path / "caps.tsv", rows), "min_images": 2}
    downstream = {"ret": entry, "cls": {"class_names": ["kite"]}}
    table = build_concept_table(release, downstream, nlp=FakeNLP()).set_index("name")
    assert table.loc["dog", "sources"] == ["rel1:zero_shot", "ret:retrieval"]
    assert table.loc["kite", "sources"] == ["ret:retrieval", "cls:zero_shot"]
    assert table.loc["beach", "sources"] == ["ret:retrieval"]
    assert "mouse" in table.index and "ret:retrieval" not in table.loc["mouse", "sources"]  # one image only
    assert table.reset_index()["name"].tolist()[4:] == ["beach", "kite", "park"]


def test_retrieval_with_lemmas_and_class_names_in_one_entry(tmp_path, release):
    rows = [(f"i{i}", "Two zebras near the water") for i in range(3)]
    entry = {
        "class_names": ["okapi"],
        "captions": _write_captions(tmp_path / "c.tsv", rows),
        "min_images": 3,
        "noun_extractor": "lemmas",
    }
    table = build_concept_table(release, {"d": entry}).set_index("name")
    assert table.loc["zebra", "sources"] == ["d:retrieval"]
    assert table.loc["water", "sources"] == ["d:retrieval"]
    assert table.loc["okapi", "sources"] == ["d:zero_shot"]


# ---------------------------------------------------------------------------------------- errors

_K = "concepts.downstream.d"


def _caps(tmp_path: Path, **over) -> dict:
    config = _write_captions(tmp_path / "caps.tsv", [("i", "a dog")])
    config.update(over)
    return {k: v for k, v in config.items() if v is not None}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"class_names": ["a"], "colour": 1}, f"{_K}.colour: unknown key"),
        ({}, f"{_K}: no concepts: give class_names, class_names_file or captions"),
        ({"class_names_file": "nope/classes.txt"}, f"{_K}.class_names_file: file not found: "),
        ({"class_names": ["a"], "class_names_file": "x.txt"}, f"{_K}: give class_names or class_names_file"),
        ({"class_names": "dog"}, f"{_K}.class_names: input should be a valid list"),
        ({"class_names": []}, f"{_K}.class_names: list should have at least 1 item"),
        ({"class_names": ["a", " "]}, f"{_K}.class_names[1]: expected a non-empty string, got ' '"),
        ({"class_names": ["a"], "min_images": 3}, f"{_K}.min_images: only applies with captions"),
        ({"captions": "CAPS", "min_images": 0}, f"{_K}.min_images: input should be greater than or equal to 1, got 0"),
        ({"captions": "CAPS", "min_images": True}, f"{_K}.min_images: input should be a valid integer, got True"),
        ({"captions": "CAPS", "min_images": 2.5}, f"{_K}.min_images: input should be a valid integer, got 2.5"),
        (
            {"captions": "CAPS", "captions_per_image": -1},
            f"{_K}.captions_per_image: input should be greater than or equal to 1, got -1",
        ),
        ({"captions": "CAPS", "noun_extractor": "bert"}, f"{_K}.noun_extractor: 'bert' is not one of spacy, lemmas"),
        ({"captions": "CAPS", "spacy_model": ""}, f"{_K}.spacy_model: string should have at least 1 character"),
        ({"captions": ["a.tsv"]}, f"{_K}.captions: input should be a valid dictionary"),
    ],
)
def test_entry_errors_name_the_key(tmp_path, release, entry, message):
    entry = {k: (_caps(tmp_path) if v == "CAPS" else v) for k, v in entry.items()}
    with pytest.raises(ConfigError) as err:
        build_concept_table(release, {"d": entry}, nlp=FakeNLP(), base_dir=tmp_path)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"key_column": None}, f"{_K}.captions.key_column: required for format 'tsv'"),
        ({"format": "xml"}, f"{_K}.captions.format: 'xml' is not one of tsv, csv, parquet, wds, txt"),
        ({"colour": "red"}, f"{_K}.captions.colour: unknown key"),
        ({"paths": "missing.tsv"}, f"{_K}.captions.paths: file not found: "),
        ({"paths": "none-*.tsv"}, f"{_K}.captions.paths: pattern"),
        ({"key_column": "image"}, f"{_K}.captions.key_column: column 'image' not in the header"),
    ],
)
def test_caption_source_errors_name_the_key(tmp_path, release, over, message):
    entry = {"captions": _caps(tmp_path, **over), "noun_extractor": "lemmas"}
    with pytest.raises(ConfigError) as err:
        build_concept_table(release, {"d": entry}, base_dir=tmp_path)
    assert str(err.value).startswith(message), str(err.value)


def test_top_level_errors(tmp_path, release):
    with pytest.raises(ConfigError, match=r"^concepts\.downstream: expected a mapping"):
        build_concept_table(release, [{"class_names": ["a"]}])
    with pytest.raises(ConfigError, match=r"^concepts\.downstream: dataset name 'a:b'"):
        build_concept_table(release, {"a:b": {"class_names": ["x"]}})
    with pytest.raises(ConfigError, match=r"^concepts\.downstream\.d: input should be a valid dictionary"):
        build_concept_table(release, {"d": ["x"]})
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(ConfigError, match=r"^concepts\.downstream\.d\.class_names_file: .* holds no class names"):
        build_concept_table(release, {"d": {"class_names_file": str(tmp_path / "empty.txt")}})


def test_every_entry_is_checked_before_any_extraction(tmp_path, release):
    nlp = FakeNLP()
    downstream = {"good": {"captions": _caps(tmp_path)}, "bad": {"class_names_file": str(tmp_path / "no.txt")}}
    with pytest.raises(ConfigError, match=r"^concepts\.downstream\.bad\.class_names_file: file not found"):
        build_concept_table(release, downstream, nlp=nlp)
    assert nlp.calls == 0


def test_missing_spacy_model_says_how_to_fix(tmp_path, release):
    entry = {"captions": _caps(tmp_path), "spacy_model": "no_such_pipeline_xyz"}
    with pytest.raises(ConfigError) as err:
        build_concept_table(release, {"d": entry})
    message = str(err.value)
    assert message.startswith(f"{_K}.noun_extractor: ")
    assert "python -m spacy download no_such_pipeline_xyz" in message
    assert "noun_extractor: lemmas" in message
    with pytest.raises(ConfigError, match="python -m spacy download no_such_pipeline_xyz"):
        extract_caption_concepts(
            [("i", "a dog")],
            min_images=1,
            captions_per_image=5,
            noun_extractor="spacy",
            spacy_model="no_such_pipeline_xyz",
        )


def test_default_spacy_model_message_when_not_installed():
    import spacy.util

    if spacy.util.is_package("en_core_web_lg"):
        pytest.skip("en_core_web_lg is installed")
    with pytest.raises(ConfigError, match=r"python -m spacy download en_core_web_lg"):
        extract_caption_concepts([("i", "a dog")], min_images=1, captions_per_image=5, noun_extractor="spacy")


def test_extract_option_errors():
    with pytest.raises(ConfigError, match=r"^min_images: expected an integer >= 1"):
        extract_caption_concepts([], min_images=0, captions_per_image=5, noun_extractor="lemmas")
    with pytest.raises(ConfigError, match=r"^noun_extractor: expected one of"):
        extract_caption_concepts([], min_images=1, captions_per_image=5, noun_extractor="nouns")


def test_without_the_release_the_table_holds_the_downstream_concepts_alone():
    table = build_concept_table(None, {"toy": {"class_names": ["zebra", "hot dog", "mouse"]}})
    assert table["concept_id"].tolist() == [0, 1, 2]
    assert table["name"].tolist() == ["hot dog", "mouse", "zebra"]
    assert all(sources == ["toy:zero_shot"] for sources in table["sources"])
    # the entry's `data` key (the folder DVC tracks) is accepted and not read
    with_data = build_concept_table(None, {"toy": {"data": "anywhere", "class_names": ["mouse"]}})
    assert with_data["name"].tolist() == ["mouse"]


def test_retrieval_extraction_decodes_entities_and_markup():
    # issue 12: retrieval-caption concepts see the caption as the search does (entities, tags, format chars)
    pairs = [
        ("a", "&lt;b&gt;dogs&lt;/b&gt; on the beach"),
        ("b", "ki\u00adtes &amp;amp; dogs"),
        ("c", "salt &amp; mice"),
    ]
    out = extract_caption_concepts(pairs, min_images=1, captions_per_image=5, noun_extractor="spacy", nlp=FakeNLP())
    assert dict(zip(out["name"], out["n_images"])) == {"dog": 2, "beach": 1, "kite": 1, "mouse": 1}
    out = extract_caption_concepts(pairs, min_images=1, captions_per_image=5, noun_extractor="lemmas")
    assert not set(out["name"]) & {"amp", "lt", "gt", "b"} and {"dog", "kite", "salt"} <= set(out["name"])
