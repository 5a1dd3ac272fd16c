"""The control stages' library: pruned shards, leak recall, refits per threshold, the Let It Wag! builder from params."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.analysis import letitwag
from helpers.controls import pipeline, retrain, wag_stage
from helpers.images.sources import ImageSource
from helpers.params import ConfigError
from helpers.synthetic.world import generate_world
from helpers.text.tars import iter_tar_samples


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, keys):
    with tarfile.open(path, "w") as tar:
        for key in keys:
            for ext, data in (("jpg", _png((len(key), 0, 0))), ("txt", key.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_pruned_shards_drop_exactly_the_removed_samples(tmp_path):
    (tmp_path / "in").mkdir()
    _tar(tmp_path / "in" / "00000.tar", ["a", "b", "c"])
    _tar(tmp_path / "in" / "00001.tar", ["d", "e"])
    source = ImageSource.from_config({"paths": str(tmp_path / "in" / "*.tar")})
    removed = np.array([(0 << 32) | 1, (1 << 32) | 0, (1 << 32) | 1], np.int64)  # b, d, e
    stats = retrain.write_pruned_shards(source, removed, tmp_path / "out")
    assert stats["kept"] == 2 and stats["removed"] == 3
    kept = [s.key for p in sorted(stats["shards"]) for s in iter_tar_samples(p)]
    assert kept == ["a", "c"]
    first = next(iter_tar_samples(stats["shards"][0]))
    assert set(first.files) == {"jpg", "txt"} and first.files["txt"] == b"a"


def test_leak_recall_counts_found_and_clean_dropped(tmp_path):
    sim = pd.DataFrame({"sample_id": np.arange(6, dtype=np.int64), "max_sim": [0.99, 0.97, 0.5, 0.96, 0.2, 0.1]})
    pd.DataFrame({"sample_id": np.array([0, 1, 2], np.int64)}).to_parquet(tmp_path / "leaks.parquet")
    table = pipeline.leak_recall(sim, tmp_path / "leaks.parquet", [0.95, 0.98]).set_index("similarity_threshold")
    assert table.loc[0.95, "leaked_found"] == 2 and table.loc[0.95, "clean_dropped"] == 1
    assert table.loc[0.95, "recall"] == pytest.approx(2 / 3) and table.loc[0.95, "clean_dropped_fraction"] == 1 / 3
    assert table.loc[0.98, "leaked_found"] == 1 and table.loc[0.98, "clean_dropped"] == 0


def test_refit_gives_one_fit_per_threshold_and_count_type():
    concepts = [f"c{i}" for i in range(12)]
    counts = (10 ** np.linspace(0, 4, 12)).astype(int)
    rows = []
    for cut, factor in ((0.9, 0.5), (1.0, 1.0)):
        for method, threshold in (("text", np.nan), ("matched", 0.7)):
            rows.append(pd.DataFrame({"similarity_threshold": cut, "concept": concepts, "method": method,
                                      "threshold": threshold, "count": counts * int(2 * factor) // 2}))  # fmt: skip
    scores = pd.DataFrame({"dataset": "d", "prompt": "class", "concept": concepts, "score": 10 * np.log10(counts) + 5})
    fits = pipeline.refit(pd.concat(rows, ignore_index=True), scores, resamples=20)
    to_one = fits[fits["zero_rule"] == "to_one"]
    assert sorted(set(zip(to_one["similarity_threshold"], to_one["count_type"]))) == [
        (0.9, "matched@0.7"), (0.9, "text"), (1.0, "matched@0.7"), (1.0, "text")]  # fmt: skip
    full = to_one[to_one["similarity_threshold"] == 1.0]
    assert np.allclose(full["slope_per_decade"], 10.0) and np.allclose(full["concept_pearson_r"], 1.0)


def test_named_counts_refuse_unknown_concepts(tmp_path):
    pd.DataFrame({"concept_id": np.array([0, 1], np.int32), "concept": ["a", "b"]}).to_parquet(tmp_path / "f.parquet")
    counts = pd.DataFrame({"concept_id": np.array([0, 2], np.int32), "count": [1, 2]})
    with pytest.raises(ValueError, match="concept ids \\[2\\]"):
        pipeline.named_counts(counts, tmp_path / "f.parquet")
    with pytest.raises(FileNotFoundError, match="image_search"):
        pipeline.named_counts(counts, tmp_path / "missing.parquet")


def test_leaked_class_table_predicts_from_the_clean_fit(tmp_path):
    pd.DataFrame({"concept_id": np.arange(5, dtype=np.int32), "name": list("abcde")}).to_parquet(tmp_path / "c.parquet")
    pd.DataFrame({"sample_id": [7], "concept_id": np.array([4], np.int32)}).to_parquet(tmp_path / "l.parquet")
    counts = pd.DataFrame({"concept": list("abcde"), "count": [1, 10, 100, 1000, 10]})
    after = pd.DataFrame({"concept": list("abcde"), "score": [10.0, 20.0, 30.0, 40.0, 22.0]})
    before = after.assign(score=[10.0, 20.0, 30.0, 40.0, 90.0])
    table = retrain.leaked_class_table(before, after, counts, tmp_path / "l.parquet", tmp_path / "c.parquet")
    row = table.set_index("concept").loc["e"]
    assert bool(row["leaked"]) and row["predicted"] == pytest.approx(20.0)
    assert row["accuracy_before"] == 90.0 and row["accuracy_after"] == 22.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    spec = {"n_concepts": 6, "n_samples": 60, "shard_size": 60, "downstream_per_class": 2, "retrieval_images": 2,
            "tagger_images": 2}  # fmt: skip
    return generate_world(spec, tmp_path_factory.mktemp("world"), progress=False)


def test_let_it_wag_from_a_world_picks_the_rarest_and_renders_new_images(world, tmp_path):
    names = world["concepts"]
    counts = pd.DataFrame({"concept": names, "count": np.arange(len(names))[::-1] * 10, "method": "matched"})
    counts.to_parquet(tmp_path / "counts.parquet")
    section = {"counts": str(tmp_path / "counts.parquet"), "where": {"method": "matched"}, "n_concepts": 2,
               "min_images": 3, "per_class": 4, "images": {"world": world["out_dir"], "per_concept": 6},
               "out_dir": str(tmp_path / "liw")}  # fmt: skip
    result = wag_stage.build_from_params(section)
    assert result["selection"]["concept"].tolist() == [names[-1].lower(), names[-2].lower()]
    assert len(result["classes"]) == 2 and (tmp_path / "liw" / "classes.txt").is_file()
    sheet = result["counts"].pivot_table(index="class", columns="step", values="n", aggfunc="last")
    assert (sheet["candidates"] == 6).all() and (sheet["balanced"] <= 4).all()
    again = wag_stage.render_world_candidates(world["out_dir"], [names[-1]], 2, 0, tmp_path / "again")
    first = (tmp_path / "liw_candidates" / again[names[-1]][0].parent.name / "00000.png").read_bytes()
    assert again[names[-1]][0].read_bytes() == first  # seeded


def test_let_it_wag_with_too_few_eligible_concepts_reports_the_shortfall(world, tmp_path):
    names = world["concepts"]
    counts = pd.DataFrame({"concept": names[:2], "count": [3, 5], "method": "matched"})  # 2 concepts counted
    counts.to_parquet(tmp_path / "counts.parquet")
    section = {"counts": str(tmp_path / "counts.parquet"), "n_concepts": 4, "min_images": 2, "per_class": 2,
               "images": {"world": world["out_dir"], "per_concept": 3}, "out_dir": str(tmp_path / "liw")}  # fmt: skip
    with pytest.warns(UserWarning, match=r"let_it_wag\.n_concepts: only 2 of 4 concepts"):
        result = wag_stage.build_from_params(section)
    assert len(result["selection"]) == 2 and "only 2 of 4" in result["shortfall"]
    assert "only 2 of 4" in json.loads(Path(result["datasheet"]).read_text())["shortfall"]
    full = wag_stage.build_from_params({**section, "n_concepts": 2, "out_dir": str(tmp_path / "liw2")})
    assert "shortfall" not in full


def test_let_it_wag_params_errors_name_the_key(world, tmp_path):
    pd.DataFrame({"concept": ["x"], "count": [1]}).to_parquet(tmp_path / "c.parquet")
    base = {"counts": str(tmp_path / "c.parquet"), "n_concepts": 1, "images": {"world": world["out_dir"]},
            "out_dir": str(tmp_path / "liw")}  # fmt: skip
    with pytest.raises(ConfigError, match=r"let_it_wag\.counts: no concept of .* has >= 1 candidate"):
        wag_stage.build_from_params(base)
    with pytest.raises(ConfigError, match=r"let_it_wag\.images\.world: concepts \['x'\]"):
        wag_stage.render_world_candidates(world["out_dir"], ["x"], 1, 0, tmp_path / "r")
    with pytest.raises(ConfigError, match=r"let_it_wag\.counts"):
        wag_stage.build_from_params({**base, "counts": str(tmp_path / "none.parquet")})
    with pytest.raises(ConfigError, match=r"let_it_wag\.n_concepts"):
        wag_stage.build_from_params({**base, "n_concepts": 0})


def test_user_models_skip_missing_evaluations_and_report_them(tmp_path):
    table, skipped = letitwag.user_models(tmp_path, ["m"], "liw", "ref")
    assert table.empty and len(skipped) == 1 and "m:" in skipped[0]
