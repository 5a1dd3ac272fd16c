"""Tidy tables from the release: strict file-name parsing, schema checks, and the real release's tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.errors
import pytest

from helpers import schemas
from helpers.naming import NORMALISATION_VERSION, concept_key
from helpers.release import tidy
from helpers.release.tidy import ReleaseFormatError, parse_counts_filename

ALL_METHODS = {
    "lemmatized",
    "lowercased",
    "rampp0.5",
    "rampp0.55",
    "rampp0.6",
    "rampp0.65",
    "rampp0.7",
    "integrated_tlemmatized_i0.5",
    "integrated_tlemmatized_i0.6",
    "integrated_tlemmatized_i0.7",
}


# --- parse_counts_filename --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar10_cc3m_lemmatized_search_counts.json", ("cifar10", "cc3m", "lemmatized", "text", None)),
        ("cifar10_cc3m_lowercased_search_counts.json", ("cifar10", "cc3m", "lowercased", "text", None)),
        ("cifar10_cc3m_rampp0.7_search_counts.json", ("cifar10", "cc3m", "rampp0.7", "image", 0.7)),
        ("dtd_yfcc15m_rampp0.55_search_counts.json", ("dtd", "yfcc15m", "rampp0.55", "image", 0.55)),
        (
            "imagenet-sketch_cc12m_integrated_tlemmatized_i0.5_search_counts.json",
            ("imagenet-sketch", "cc12m", "integrated_tlemmatized_i0.5", "matched", 0.5),
        ),
        (
            "cub_laion200m_train_test_sim_normalized_rampp0.7_search_counts.json",
            ("cub", "laion200m_train_test_sim_normalized", "rampp0.7", "image", 0.7),
        ),
        (
            "t2i_laion_aesthetics_integrated_tlemmatized_i0.7_search_counts.json",
            ("t2i", "laion_aesthetics", "integrated_tlemmatized_i0.7", "matched", 0.7),
        ),
        (
            "t2icoco_laion_aesthetics_lemmatized_search_counts.json",
            ("t2icoco", "laion_aesthetics", "lemmatized", "text", None),
        ),
        ("imagenet-r_laion400m_lowercased_search_counts.json", ("imagenet-r", "laion400m", "lowercased", "text", None)),
    ],
)
def test_parse_counts_filename(name, expected):
    assert parse_counts_filename(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "cifar10_cc3m_lemmatized.json",  # wrong suffix
        "cifar10_cc3m_lemmatized_search_counts.txt",
        "cifar10_cc3m_stemmed_search_counts.json",  # unknown method
        "cifar10_cc3m_rampp_search_counts.json",  # threshold missing
        "cifar10_cc3m_rampp7_search_counts.json",  # threshold not d.dd
        "cifar10_cc3m_integrated_tlemmatized_search_counts.json",
        "cc3m_lemmatized_search_counts.json",  # no downstream/pretrain split
        "_cc3m_lemmatized_search_counts.json",  # empty downstream
        "lemmatized_search_counts.json",
        "_search_counts.json",
        "cifar10_cc3m_lemmatized_search_counts.json.bak",
    ],
)
def test_parse_counts_filename_rejects_bad_names(name):
    with pytest.raises(ReleaseFormatError) as err:
        parse_counts_filename(name)
    assert name in str(err.value)


def test_release_format_error_is_a_value_error():
    assert issubclass(ReleaseFormatError, ValueError)


# --- a small fake release ---------------------------------------------------------------------------------


def _write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def make_fake_release(root: Path) -> Path:
    """The smallest folder with the release's layout that ``build_all`` accepts."""
    sc = root / "search_counts"
    _write_json(sc / "cifar10_cc3m_lemmatized_search_counts.json", {"airplane": 10, "cat": 0})
    _write_json(sc / "cifar10_cc3m_rampp0.7_search_counts.json", {"airplane": 3, "cat": 1})
    _write_json(sc / "coco_cc3m_integrated_tlemmatized_i0.7_search_counts.json", {"dog": 2})
    zs = {"m1": {"full": 55.0, "classwise": {"plane": 90.0, "cat": 20.0}}}
    _write_json(root / "zero_shot_evaluations" / "cifar10_class_results.json", zs)
    ir = {"m1": {"full": 10.0, "classwise": {"great_white_shark": 12.5}}}
    _write_json(root / "zero_shot_evaluations" / "imagenet-r_class_results.json", ir)
    _write_json(
        root / "zero_shot_evaluations" / "imagenet_ensemble_results.json",
        {"m1": {"full": 61.5, "classwise": {"tench": 61.5}}},
    )
    _write_json(
        root / "retrieval_evaluations" / "coco_i2t_k=5_results.json",
        {"m1": {"full": 0.5, "conceptwise": {"dog": 0.25}}},
    )
    _write_json(
        root / "t2i_evaluations" / "t2i_human_align.json",
        {"g1": {"full": 3.0, "classwise": {"dog": [1, 2, 3], "cat": 4}}},
    )
    _write_json(
        root / "misalignment_metrics" / "cc3m_misalignment_degree.json",
        {
            "misalignment_counts": 7,
            "misalignment_degree (percent); extracted dataset size": 0.1,
            "misalignment_degree (percent); fixed conservative dataset size": 0.2,
        },
    )
    _write_json(
        root / "let_it_wag_datasets" / "evaluations" / "let_it_wag_ensemble_results.json",
        {"m1": {"full": 40.0, "classwise": {"okapi": 40.0}}},
    )
    for rel in tidy.CONCEPT_LISTS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
    (root / next(iter(tidy.CONCEPT_LISTS))).write_text("dog\n\n  zebra crossing  \n")
    return root


@pytest.fixture
def fake_release(tmp_path) -> Path:
    return make_fake_release(tmp_path / "release")


def test_build_all_on_fake_release(fake_release, tmp_path):
    out = tmp_path / "tables"
    written = tidy.build_all(fake_release, out, progress=False)
    assert set(written) == {
        "frequencies",
        "zero_shot",
        "retrieval",
        "t2i",
        "overall",
        "misalignment",
        "let_it_wag",
        "imagenet_accuracy",
        "concepts",
    }
    assert all(p.exists() for p in written.values())
    assert (out / "NORMALISATION_VERSION").read_text().strip() == str(NORMALISATION_VERSION)

    freq = tidy.load(out, "frequencies")
    assert len(freq) == 5
    assert set(freq["kind"]) == {"text", "image", "matched"}
    assert freq.loc[freq["kind"] == "text", "threshold"].isna().all()
    assert set(freq.loc[freq["kind"] != "text", "threshold"]) == {0.7}

    zs = tidy.load(out, "zero_shot")
    plane = zs[(zs["dataset"] == "cifar10") & (zs["class_name"] == "plane")]
    assert plane["concept"].tolist() == ["airplane"]
    shark = zs[zs["dataset"] == "imagenet-r"]
    assert shark["concept"].tolist() == ["great white shark"]

    t2i = tidy.load(out, "t2i").sort_values(["concept", "prompt_index"])
    assert t2i[["concept", "prompt_index", "score"]].values.tolist() == [
        ["cat", 0, 4.0],
        ["dog", 0, 1.0],
        ["dog", 1, 2.0],
        ["dog", 2, 3.0],
    ]

    ret = tidy.load(out, "retrieval")
    assert ret[["dataset", "direction", "k", "concept", "recall"]].values.tolist() == [["coco", "i2t", 5, "dog", 0.25]]

    overall = tidy.load(out, "overall")
    assert set(overall["task"]) == {"zero_shot", "retrieval", "t2i", "let_it_wag"}
    assert overall.query("task == 'retrieval'")["variant"].tolist() == ["i2t_k=5"]

    imagenet = tidy.load(out, "imagenet_accuracy")
    assert imagenet[["model", "imagenet_top1"]].values.tolist() == [["m1", 61.5]]

    concepts = tidy.load(out, "concepts")
    assert concepts["name"].tolist() == sorted(
        ["airplane", "cat", "great white shark", "tench", "dog", "zebra crossing"]
    )
    assert concepts["concept_id"].tolist() == list(range(6))
    row = concepts.set_index("name").loc["dog"]
    assert list(row["sources"]) == ["ram_tag_list_for_retrieval_tasks_non_overlapping_with_zs_concepts:retrieval"]


def test_imagenet_accuracy_is_completed_by_openclip_table_without_overriding(fake_release, tmp_path):
    extra = fake_release / "extra" / "openclip_imagenet_accuracy.csv"
    extra.parent.mkdir()
    extra.write_text("model_key,imagenet_top1,source\nm1,99.00,open_clip\nm2,70.25,open_clip\n")
    zs, zs_overall = tidy.zero_shot(fake_release)
    table = tidy.imagenet_accuracy(fake_release, zs_overall).set_index("model")
    assert table.loc["m1", "imagenet_top1"] == 61.5  # the release's own evaluation wins
    assert table.loc["m2", "imagenet_top1"] == 70.25
    assert table.loc["m2", "source"] == "open_clip"


@pytest.mark.parametrize(
    "rel_path",
    [
        "search_counts/cifar10_cc3m_lemmatized_search_counts.json",
        "zero_shot_evaluations/cifar10_class_results.json",
        "retrieval_evaluations/coco_i2t_k=5_results.json",
        "t2i_evaluations/t2i_human_align.json",
        "misalignment_metrics/cc3m_misalignment_degree.json",
        "let_it_wag_datasets/evaluations/let_it_wag_ensemble_results.json",
    ],
)
def test_corrupt_json_is_reported_naming_the_file(fake_release, tmp_path, rel_path):
    (fake_release / rel_path).write_text('{"truncated": ')
    with pytest.raises(ReleaseFormatError) as err:
        tidy.build_all(fake_release, tmp_path / "tables", progress=False)
    assert Path(rel_path).name in str(err.value)


def test_non_utf8_json_is_reported_as_release_format_error(fake_release, tmp_path):
    (fake_release / "search_counts" / "cifar10_cc3m_lemmatized_search_counts.json").write_bytes(
        b'{"cat": 1, "\xff": 2}'
    )
    with pytest.raises(ReleaseFormatError, match="cifar10_cc3m_lemmatized_search_counts.json"):
        tidy.frequencies(fake_release, progress=False)


@pytest.mark.parametrize("bad_count", [2.5, "3", True, None], ids=["fraction", "string", "bool", "null"])
def test_non_integer_count_is_refused_naming_the_file(fake_release, bad_count):
    name = "cifar10_cc3m_lemmatized_search_counts.json"
    _write_json(fake_release / "search_counts" / name, {"cat": bad_count, "dog": 4})
    with pytest.raises(ReleaseFormatError, match=name):
        tidy.frequencies(fake_release, progress=False)


def test_counts_file_that_is_not_an_object_is_refused(fake_release):
    _write_json(fake_release / "search_counts" / "cifar10_cc3m_lowercased_search_counts.json", [1, 2, 3])
    with pytest.raises(ReleaseFormatError, match="cifar10_cc3m_lowercased_search_counts.json"):
        tidy.frequencies(fake_release, progress=False)


def test_badly_named_counts_file_is_refused_not_skipped(fake_release):
    _write_json(fake_release / "search_counts" / "cifar10_cc3m_stemmed_search_counts.json", {"cat": 1})
    with pytest.raises(ReleaseFormatError, match="cifar10_cc3m_stemmed_search_counts.json"):
        tidy.frequencies(fake_release, progress=False)


def test_no_counts_files_is_refused(tmp_path):
    (tmp_path / "search_counts").mkdir()
    with pytest.raises(ReleaseFormatError, match="No search-count files"):
        tidy.frequencies(tmp_path, progress=False)


def test_badly_named_evaluation_files_are_refused(fake_release):
    _write_json(fake_release / "zero_shot_evaluations" / "cifar10_fancy_results.json", {})
    with pytest.raises(ReleaseFormatError, match="cifar10_fancy_results.json"):
        tidy.zero_shot(fake_release)
    _write_json(fake_release / "retrieval_evaluations" / "coco_x2y_k=5_results.json", {})
    with pytest.raises(ReleaseFormatError, match="coco_x2y_k=5_results.json"):
        tidy.retrieval(fake_release)


def test_evaluation_without_classwise_entry_is_refused(fake_release):
    _write_json(fake_release / "zero_shot_evaluations" / "cifar10_class_results.json", {"m1": {"full": 1.0}})
    with pytest.raises(ReleaseFormatError, match="cifar10_class_results.json"):
        tidy.zero_shot(fake_release)


def test_misalignment_file_missing_key_is_refused(fake_release):
    _write_json(fake_release / "misalignment_metrics" / "cc3m_misalignment_degree.json", {"misalignment_counts": 1})
    with pytest.raises(ReleaseFormatError, match="cc3m_misalignment_degree.json"):
        tidy.misalignment(fake_release)


def test_negative_count_in_release_is_refused_naming_the_file(fake_release, tmp_path):
    _write_json(fake_release / "search_counts" / "cifar10_cc3m_lemmatized_search_counts.json", {"cat": -1})
    with pytest.raises(ReleaseFormatError, match="cifar10_cc3m_lemmatized_search_counts.json"):
        tidy.build_all(fake_release, tmp_path / "tables", progress=False)


def test_accuracy_above_100_in_release_fails_the_zero_shot_schema(fake_release, tmp_path):
    _write_json(
        fake_release / "zero_shot_evaluations" / "cifar10_class_results.json",
        {"m1": {"full": 1.0, "classwise": {"plane": 100.5}}},
    )
    with pytest.raises(pandera.errors.SchemaErrors):
        tidy.build_all(fake_release, tmp_path / "tables", progress=False)


# --- schemas: write_table / read_table --------------------------------------------------------------------


def _freq_frame(**overrides) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "downstream": ["cifar10", "cifar10"],
            "pretrain": ["cc3m", "cc3m"],
            "method": ["rampp0.7", "lemmatized"],
            "kind": ["image", "text"],
            "threshold": [0.7, np.nan],
            "concept": ["cat", "cat"],
            "count": pd.array([5, 0], dtype="int64"),
        }
    )
    for col, values in overrides.items():
        df[col] = values
    return df


def test_write_table_round_trips_a_valid_frame(tmp_path):
    path = schemas.write_table(_freq_frame(), schemas.FREQUENCIES, tmp_path / "sub" / "f.parquet")
    assert path == tmp_path / "sub" / "f.parquet"
    back = schemas.read_table(path, schemas.FREQUENCIES)
    assert back["count"].tolist() == [5, 0]
    assert math.isnan(back["threshold"].iloc[1])
    assert not (tmp_path / "sub" / "f.parquet.tmp").exists()


def test_write_table_rejects_negative_count(tmp_path):
    path = tmp_path / "f.parquet"
    with pytest.raises(pandera.errors.SchemaErrors) as err:
        schemas.write_table(_freq_frame(count=pd.array([5, -1], dtype="int64")), schemas.FREQUENCIES, path)
    assert "count" in str(err.value)
    assert not path.exists()


def test_write_table_rejects_an_unexpected_column(tmp_path):
    df = _freq_frame().assign(extra=1)
    with pytest.raises(pandera.errors.SchemaErrors, match="extra"):
        schemas.write_table(df, schemas.FREQUENCIES, tmp_path / "f.parquet")
    assert not (tmp_path / "f.parquet").exists()


def test_write_table_rejects_a_missing_column(tmp_path):
    with pytest.raises(pandera.errors.SchemaErrors, match="concept"):
        schemas.write_table(_freq_frame().drop(columns="concept"), schemas.FREQUENCIES, tmp_path / "f.parquet")


def test_write_table_rejects_a_wrongly_typed_column(tmp_path):
    df = _freq_frame(count=[5.5, 1.0])
    with pytest.raises(pandera.errors.SchemaErrors):
        schemas.write_table(df, schemas.FREQUENCIES, tmp_path / "f.parquet")


def test_write_table_rejects_a_duplicate_key(tmp_path):
    df = _freq_frame(method=["lemmatized", "lemmatized"], kind=["text", "text"], threshold=[np.nan, np.nan])
    with pytest.raises(pandera.errors.SchemaErrors):
        schemas.write_table(df, schemas.FREQUENCIES, tmp_path / "f.parquet")


def test_write_table_rejects_unknown_count_kind_and_threshold_out_of_range(tmp_path):
    with pytest.raises(pandera.errors.SchemaErrors, match="kind"):
        schemas.write_table(_freq_frame(kind=["image", "smell"]), schemas.FREQUENCIES, tmp_path / "f.parquet")
    with pytest.raises(pandera.errors.SchemaErrors, match="threshold"):
        schemas.write_table(_freq_frame(threshold=[1.5, np.nan]), schemas.FREQUENCIES, tmp_path / "f.parquet")


def test_concepts_schema_rejects_duplicate_names(tmp_path):
    df = pd.DataFrame(
        {
            "concept_id": pd.array([0, 1], dtype="int32"),
            "name": ["cat", "cat"],
            "key": ["cat", "cat"],
            "sources": [["a:zero_shot"], ["b:zero_shot"]],
        }
    )
    with pytest.raises(pandera.errors.SchemaErrors):
        schemas.write_table(df, schemas.CONCEPTS, tmp_path / "c.parquet")


def test_read_table_refuses_a_file_that_breaks_the_schema(tmp_path):
    path = tmp_path / "f.parquet"
    _freq_frame(count=pd.array([5, -1], dtype="int64")).to_parquet(path, index=False)
    with pytest.raises(pandera.errors.SchemaErrors):
        schemas.read_table(path, schemas.FREQUENCIES)


def test_read_table_of_missing_file_says_which_stage_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro"):
        schemas.read_table(tmp_path / "absent.parquet", schemas.FREQUENCIES)


# --- the real release --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tidy_tables) -> dict[str, pd.DataFrame]:
    names = [
        "frequencies",
        "zero_shot",
        "retrieval",
        "t2i",
        "overall",
        "misalignment",
        "let_it_wag",
        "imagenet_accuracy",
        "concepts",
    ]
    return {name: tidy.load(tidy_tables, name) for name in names}


def test_real_concepts_are_the_studys_4029_unique_names(real):
    concepts = real["concepts"]
    assert len(concepts) == 4029
    assert concepts["name"].is_unique
    assert concepts["concept_id"].tolist() == list(range(4029))
    assert concepts["name"].tolist() == sorted(concepts["name"])
    assert (concepts["key"] == concepts["name"].map(concept_key)).all()
    assert all(len(s) >= 1 for s in concepts["sources"])


def test_real_concepts_cover_every_zero_shot_concept(real):
    assert set(real["zero_shot"]["concept"]) <= set(real["concepts"]["name"])


def test_real_frequencies_have_expected_kinds_and_methods(real):
    freq = real["frequencies"]
    assert set(freq["kind"]) == {"text", "image", "matched"}
    assert set(freq["method"]) == ALL_METHODS
    by_kind = freq.groupby("kind")["method"].unique().map(set).to_dict()
    assert by_kind["text"] == {"lemmatized", "lowercased"}
    assert by_kind["image"] == {m for m in ALL_METHODS if m.startswith("rampp")}
    assert by_kind["matched"] == {m for m in ALL_METHODS if m.startswith("integrated")}
    assert freq.loc[freq["kind"] == "text", "threshold"].isna().all()
    assert sorted(freq["threshold"].dropna().unique()) == [0.5, 0.55, 0.6, 0.65, 0.7]
    assert set(freq["pretrain"]) == {
        "cc3m",
        "cc12m",
        "yfcc15m",
        "laion400m",
        "laion200m_train_test_sim_normalized",
        "synthci30m",
        "laion_aesthetics",
    }
    assert (freq["count"] >= 0).all()


def test_real_zero_shot_accuracy_is_a_percentage(real):
    zs = real["zero_shot"]
    assert zs["accuracy"].between(0, 100).all()
    assert zs["accuracy"].max() > 1.0  # percent, not a fraction
    assert set(zs["prompt"]) == {"class", "simple", "ensemble"}
    assert zs["dataset"].nunique() == 19


def test_real_cifar10_plane_maps_to_concept_airplane(real):
    zs = real["zero_shot"]
    cifar10 = zs[zs["dataset"] == "cifar10"]
    assert set(cifar10.loc[cifar10["class_name"] == "plane", "concept"]) == {"airplane"}
    assert "plane" not in set(cifar10["concept"])
    sources = real["concepts"].set_index("name")["sources"]
    assert "cifar10:zero_shot" in set(sources["airplane"])
    if "plane" in sources.index:  # another dataset may spell it "plane"; cifar10 must not
        assert "cifar10:zero_shot" not in set(sources["plane"])


def test_real_imagenet_r_classes_use_spaces(real):
    zs = real["zero_shot"]
    ir = zs[zs["dataset"] == "imagenet-r"]
    assert not ir["concept"].str.contains("_").any()
    assert set(ir.loc[ir["class_name"] == "great_white_shark", "concept"]) == {"great white shark"}


def test_real_retrieval_and_t2i_tables(real):
    ret = real["retrieval"]
    assert set(ret["dataset"]) == {"coco", "flickr"}
    assert set(ret["k"]) == {1, 5, 10}
    assert set(ret["direction"]) == {"i2t", "t2i"}
    assert ret["recall"].between(0, 1).all()
    t2i = real["t2i"]
    assert set(t2i["metric"]) == {"exp_lpips", "exp_psnr", "exp_ssim", "exp_uiqi", "human_aesthetics", "human_align"}
    assert t2i["model"].nunique() == 24


def test_real_overall_misalignment_and_let_it_wag(real):
    assert set(real["overall"]["task"]) == {"zero_shot", "retrieval", "t2i", "let_it_wag"}
    assert set(real["misalignment"]["pretrain"]) == {"cc3m", "cc12m", "yfcc15m", "laion400m", "laion_aesthetics"}
    assert real["let_it_wag"]["model"].nunique() == 40
    imagenet = real["imagenet_accuracy"]
    assert imagenet["model"].is_unique
    assert set(real["let_it_wag"]["model"]) <= set(imagenet["model"])


def test_real_tables_record_the_normalisation_version(tidy_tables):
    assert (tidy_tables / "NORMALISATION_VERSION").read_text().strip() == str(NORMALISATION_VERSION)
