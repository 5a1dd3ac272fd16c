"""Sample-similarity control: max-similarity search, the per-shard corpus runs, pruned counts, planted leaks.

The leak test uses the deterministic ``PixelEmbedder`` (no model weights here); the open_clip path is
checked with a tiny open_clip ViT of random weights saved to a local checkpoint.
"""

from __future__ import annotations

import functools
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from helpers.controls import embed, leak, pruning, similarity
from helpers.images.frequencies import matched_counts
from helpers.images.search import SCORES_SCHEMA, image_counts
from helpers.shards import ConfigError, IncompleteRunError, Shard, ShardResult, make_sample_ids, run_shards
from helpers.synthetic.world import WorldSpec, generate_world
from helpers.text.search import text_counts

# ------------------------------------------------------------------------------------- search


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_search_matches_brute_force_in_small_chunks():
    rng = np.random.default_rng(0)
    q, t = unit(rng.normal(size=(300, 16))), unit(rng.normal(size=(50, 16)))
    settings = similarity.SearchSettings(method="exact", memory_bytes=4 * 50 * 7)  # 7 rows per chunk
    best, arg = similarity.max_similarity(q, t, settings)
    full = q @ t.T
    np.testing.assert_array_equal(arg, full.argmax(1))
    np.testing.assert_allclose(best, full.max(1), rtol=1e-6)


def test_faiss_search_finds_near_duplicates_and_never_overestimates():
    rng = np.random.default_rng(1)
    t = unit(rng.normal(size=(3000, 32)))
    q = unit(rng.normal(size=(2000, 32)))
    planted = rng.choice(2000, 200, replace=False)
    source = rng.choice(3000, 200, replace=False)
    q[planted] = unit(t[source] + 0.05 * rng.normal(size=(200, 32)))  # cosine ~0.96
    settings = similarity.SearchSettings(method="faiss")
    searcher = similarity.MaxSimilarity(t, settings)
    assert searcher.method == "faiss"
    best, arg = searcher(q)
    exact = q @ t.T
    assert np.all(best <= exact.max(1) + 1e-5)
    np.testing.assert_allclose(best, exact[np.arange(len(q)), arg], rtol=1e-5, atol=1e-6)
    assert np.mean(arg[planted] == source) >= 0.99


def test_auto_method_and_bad_input():
    t = unit(np.random.default_rng(2).normal(size=(10, 8)))
    assert similarity.MaxSimilarity(t).method == "exact"
    assert similarity.MaxSimilarity(t, similarity.SearchSettings(exact_max_test=5)).method == "faiss"
    with pytest.raises(ConfigError, match=r"controls\.similarity\.search\.method"):
        similarity.SearchSettings(method="annoy")
    with pytest.raises(ConfigError, match=r"controls\.similarity\.search\.nprob"):
        similarity.SearchSettings.from_config({"nprob": 3})
    with pytest.raises(ValueError, match="query dim"):
        similarity.max_similarity(np.ones((2, 4), np.float32), t)
    with pytest.raises(ValueError, match="NaN"):
        similarity.max_similarity(np.full((2, 8), np.nan, np.float32), t)


@pytest.mark.parametrize("bad", [1.5, -1.01, "0.9", True, [0.5, 2.0]])
def test_thresholds_outside_minus_one_one_are_refused(bad):
    with pytest.raises(ConfigError, match=r"controls\.similarity\.thresholds: .*\[-1, 1\]"):
        pruning.check_similarity_thresholds(bad, "controls.similarity.thresholds")


# ------------------------------------------------------------------------- pruned counts (hand-built)

# two shards (5 + 3 samples), 4 concepts: text pairs (position, concept), image rows (position, concept, prob)
TEXT = {0: (5, [(0, 0), (0, 1), (1, 2), (3, 3), (4, 0)]), 1: (3, [(0, 1), (1, 2), (1, 3)])}
IMAGE = {
    0: (5, [(0, 0, 0.9), (0, 2, 0.4), (1, 1, 0.6), (2, 0, 0.8), (3, 3, 0.45)]),
    1: (3, [(0, 1, 0.55), (0, 2, 0.95), (1, 0, 0.35), (2, 3, 0.7)]),
}
# max similarity per (shard, position); position 0/4 has no embedding (kept whatever the threshold)
SIM = {0: [(0, 0.97), (1, 0.2), (2, 0.85), (3, -0.3)], 1: [(0, 0.5), (1, 0.91), (2, 0.1)]}


def _text_shard(shard: Shard, *, data) -> ShardResult:
    records, pairs = data[shard.index]
    ids = make_sample_ids(shard.index, np.array([p for p, _ in pairs], dtype=np.int64))
    return ShardResult(ids, np.array([c for _, c in pairs], np.int32), stats={"records": records})


def _image_shard(shard: Shard, *, data) -> ShardResult:
    records, rows = data[shard.index]
    ids = make_sample_ids(shard.index, np.array([r[0] for r in rows], dtype=np.int64))
    concepts = np.array([r[1] for r in rows], np.int32)
    probs = np.array([r[2] for r in rows], np.float32)
    scores = pa.table({"sample_id": ids, "concept_id": concepts, "prob": probs}, schema=SCORES_SCHEMA)
    return ShardResult(ids, concepts, stats={"records": records}, extra={"scores": scores})


def _sim_shard(shard: Shard, *, data) -> ShardResult:
    rows = data[shard.index]
    table = pa.table(
        {
            "sample_id": make_sample_ids(shard.index, np.array([p for p, _ in rows], np.int64)),
            "max_sim": np.array([s for _, s in rows], np.float32),
            "argmax_test_id": np.zeros(len(rows), np.int64),
        },
        schema=similarity.SIM_SCHEMA,
    )
    return ShardResult(np.zeros(0, np.int64), np.zeros(0, np.int32), extra={similarity.SIM_TABLE: table})


def build_runs(folder: Path, text=TEXT, image=IMAGE) -> tuple[Path, Path]:
    shards = [Shard(i, f"s{i}.tar") for i in sorted(image)]
    kw = {"executor": "serial", "progress": False, "n_concepts": 4}
    run_shards(shards, functools.partial(_text_shard, data=text), folder / "text",
               fingerprint={"kind": "text_search"}, **kw)  # fmt: skip
    run_shards(shards, functools.partial(_image_shard, data=image), folder / "image",
               fingerprint={"kind": "image_search", "prob_floor": 0.3}, **kw)  # fmt: skip
    return folder / "text", folder / "image"


def build_sim(folder: Path, sim=SIM) -> Path:
    shards = [Shard(i, f"s{i}.parquet") for i in sorted(sim)]
    run_shards(shards, functools.partial(_sim_shard, data=sim), folder / "sim",
               fingerprint={"kind": "similarity"}, executor="serial", progress=False)  # fmt: skip
    return folder / "sim"


def reference_counts(folder: Path, removed: set[tuple[int, int]], tags) -> dict:
    """Counts of runs rebuilt from the data without the removed samples (the oracle)."""
    text = {s: (n, [p for p in pairs if (s, p[0]) not in removed]) for s, (n, pairs) in TEXT.items()}
    image = {s: (n, [r for r in rows if (s, r[0]) not in removed]) for s, (n, rows) in IMAGE.items()}
    tdir, idir = build_runs(folder, text, image)
    out = {("text", None): text_counts(tdir)["count"].tolist()}
    for t in tags:
        ic = image_counts(idir, [t])
        out[("image", t)] = ic["count"].tolist()
        out[("matched", t)] = matched_counts(tdir, idir, [t])["count"].tolist()
    return out


@pytest.mark.parametrize("cut", [1.0, 0.9, 0.8, 0.0])
def test_pruned_counts_equal_counts_of_the_pruned_corpus(tmp_path, cut):
    tdir, idir = build_runs(tmp_path / "full")
    sdir = build_sim(tmp_path)
    tags = [0.3, 0.5]
    counts, summary = pruning.pruned_counts(sdir, tdir, idir, [cut], tags)
    removed = {(s, p) for s, rows in SIM.items() for p, v in rows if np.float32(v) > np.float32(cut)}
    expected = reference_counts(tmp_path / f"ref{cut}", removed, tags)
    for (method, t), values in expected.items():
        rows = counts[
            (counts["method"] == method) & (counts["threshold"].isna() if t is None else counts["threshold"] == t)
        ]
        assert rows.sort_values("concept_id")["count"].tolist() == values, (method, t)
    assert summary["n_removed"].tolist() == [len(removed)]
    assert summary["n_embedded"].tolist() == [7]


def test_pruned_counts_need_complete_runs(tmp_path):
    tdir, idir = build_runs(tmp_path)
    sdir = build_sim(tmp_path)
    (sdir / "shards" / "000001.done.json").unlink()
    with pytest.raises(IncompleteRunError):
        pruning.pruned_counts(sdir, tdir, idir, [0.9], [0.5])
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        pruning.pruned_counts(sdir, tdir, idir, [1.2], [0.5])


# --------------------------------------------------------------------------- corpus runs and leaks


@pytest.fixture(scope="module")
def leaky_world(tmp_path_factory) -> dict:
    spec = {"n_concepts": 10, "n_samples": 3000, "shard_size": 1000, "downstream_per_class": 10,
            "retrieval_images": 10, "tagger_images": 10, "leak_rate": 0.04, "leaked_classes": 3}  # fmt: skip
    return generate_world(spec, tmp_path_factory.mktemp("world"), progress=False)


def test_leak_option_off_by_default_and_checked():
    assert WorldSpec().leak_rate == 0 and WorldSpec().leaked_classes == 0
    with pytest.raises(ConfigError, match=r"synthetic\.leak_rate"):
        WorldSpec(leak_rate=1.5)
    with pytest.raises(ConfigError, match=r"synthetic\.leaked_classes"):
        WorldSpec(leak_rate=0.1)


def test_leaked_classes_are_drawn_from_the_rarest_quarter(leaky_world, tmp_path):
    # the same world without leaks (same seed: identical before planting) gives the counts the draw saw
    spec = {**json.loads((Path(leaky_world["out_dir"]) / "world.json").read_text())["spec"], "leak_rate": 0.0}
    clean = generate_world({k: v for k, v in spec.items() if k in WorldSpec.__dataclass_fields__}, tmp_path,
                           progress=False)  # fmt: skip
    before = pq.read_table(clean["truth"]["concepts"]).to_pandas()
    names = before.set_index("name")["shown_count"]
    rarest = set(names.sort_values(kind="stable").index[:3])  # max(3 leaked, ceil(10 / 4)) = 3
    assert set(leaky_world["leak"]["leaked_classes"]) == rarest
    assert leak.rare_pool(np.array([5, 1, 9, 1, 7, 3, 8, 2]), 1).tolist() == [1, 3]  # ceil(8/4) = 2; ties by id
    assert leak.rare_pool(np.array([5, 1, 9]), 2).tolist() == [1, 0]


def test_leak_truth_is_consistent(leaky_world):
    leaks = pq.read_table(leaky_world["leak"]["leaks"]).to_pandas()
    assert len(leaks) == leaky_world["leak"]["n_leaked"] == 120
    assert leaks["sample_id"].is_unique
    shown = pq.read_table(leaky_world["truth"]["image_concepts"]).to_pandas()
    mine = shown[shown["sample_id"].isin(leaks["sample_id"])]
    assert sorted(mine["sample_id"]) == sorted(leaks["sample_id"])  # exactly one concept each: the leaked one
    assert (mine.set_index("sample_id")["concept_id"] == leaks.set_index("sample_id")["concept_id"]).all()
    concepts = pq.read_table(leaky_world["truth"]["concepts"]).to_pandas()
    assert concepts["shown_count"].tolist() == np.bincount(shown["concept_id"], minlength=10).tolist()
    assert "leak_rate" in json.loads((Path(leaky_world["out_dir"]) / "world.json").read_text())["spec"]


def test_control_finds_planted_duplicates_at_its_default_threshold(leaky_world, tmp_path):
    embedder = embed.PixelEmbedder()
    out = tmp_path / "emb"
    result = embed.embed_corpus({"paths": leaky_world["pretrain"]["source"]["paths"]}, embedder, out, progress=False)
    assert result.ok and len(result.processed) == 3
    again = embed.embed_corpus({"paths": leaky_world["pretrain"]["source"]["paths"]}, embedder, out, progress=False)
    assert again.skipped == [0, 1, 2] and not again.processed  # resumable: nothing redone
    root = leaky_world["downstream"]["classification"]["root"]
    test, table = embed.downstream_embeddings(embedder, {"cls": {"format": "imagefolder", "root": root}})
    assert test.shape == (100, 108) and table.num_rows == 100
    similarity.similarity_run(out, test, tmp_path / "sim", progress=False)
    sim = similarity.read_similarity(tmp_path / "sim").to_pandas()
    assert len(sim) == 3000
    leaks = pq.read_table(leaky_world["leak"]["leaks"]).to_pandas()
    planted = sim["sample_id"].isin(leaks["sample_id"])
    flagged = sim["max_sim"] > embedder.default_threshold
    recall, false_drop = flagged[planted].mean(), flagged[~planted].mean()
    assert recall >= 0.95, recall
    assert false_drop <= 0.01, false_drop
    # the argmax points at the very test image each duplicate was made from
    names = sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*.png"))
    hit = sim.set_index("sample_id").loc[leaks["sample_id"], "argmax_test_id"].to_numpy()
    assert np.mean(np.asarray(names)[hit] == leaks["test_image"].to_numpy()) >= 0.9


def _tar(path: Path, images: list[bytes | None]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, data in enumerate(images):
            if data is None:
                continue
            info = tarfile.TarInfo(f"{i:04d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_corrupt_images_are_counted_and_skipped(tmp_path):
    _tar(tmp_path / "a.tar", [_jpeg((255, 0, 0)), b"not an image", _jpeg((0, 0, 255))])
    res = embed.embed_corpus({"paths": str(tmp_path / "a.tar")}, embed.PixelEmbedder(4), tmp_path / "e", progress=False)
    stats = json.loads((tmp_path / "e" / "shards" / "000000.stats.json").read_text())
    assert res.ok and stats["records"] == 3 and stats["images"] == 2 and stats["corrupt"] == 1
    ids = [i for _, ids, _ in embed.iter_corpus_embeddings(tmp_path / "e") for i in ids]
    assert ids == [0, 2]


def test_embedder_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"controls\.similarity\.embedder\.kind"):
        embed.make_embedder({"kind": "dino"})
    with pytest.raises(ConfigError, match=r"controls\.similarity\.embedder\.size"):
        embed.make_embedder({"kind": "pixel", "size": 1})
    with pytest.raises(ConfigError, match=r"evaluation\.models\..*model_config"):
        embed.make_embedder({"kind": "open_clip", "model": {"key": "m", "model_config": "/no/such.json",
                                                            "pretrained": "x"}})  # fmt: skip


def test_open_clip_embedder_on_a_tiny_local_model(tmp_path):
    import open_clip

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
              "head_width": 16}, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
              "layers": 1}}  # fmt: skip
    path = tmp_path / "controls-tiny-vit.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    torch.save(open_clip.create_model("controls-tiny-vit").state_dict(), tmp_path / "w.pt")
    embedder = embed.make_embedder({"kind": "open_clip", "model": {"model_config": str(path),
                                                                   "pretrained": str(tmp_path / "w.pt")}})  # fmt: skip
    _tar(tmp_path / "a.tar", [_jpeg((255, 0, 0)), _jpeg((0, 255, 0))])
    embed.embed_corpus({"paths": str(tmp_path / "a.tar")}, embedder, tmp_path / "e", progress=False)
    ((_, ids, vecs),) = list(embed.iter_corpus_embeddings(tmp_path / "e"))
    direct = embed.embed_images(embedder, [Image.open(io.BytesIO(_jpeg(c))) for c in ((255, 0, 0), (0, 255, 0))])
    assert vecs.shape == (2, 16)
    np.testing.assert_allclose(vecs, direct, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_near_duplicate_is_deterministic():
    image = Image.new("RGB", (32, 32), (120, 30, 200))
    a = leak.near_duplicate(image, np.random.default_rng(5))
    b = leak.near_duplicate(image, np.random.default_rng(5))
    assert a == b and a[0][:2] == b"\xff\xd8"
    assert leak.LEAK_CROP[0] <= a[1]["crop"] <= leak.LEAK_CROP[1]


def test_unloadable_model_fails_before_any_shard_runs(tmp_path):
    _tar(tmp_path / "a.tar", [_jpeg((255, 0, 0))])
    bad = embed.OpenClipEmbedder({"key": "m", "model_config": str(tmp_path / "missing.json"), "pretrained": "x"})
    with pytest.raises(ConfigError, match=r"evaluation\.models\.m\.model_config"):
        embed.embed_corpus({"paths": str(tmp_path / "a.tar")}, bad, tmp_path / "e", progress=False)
    assert not (tmp_path / "e").exists()


def test_process_pool_gives_the_serial_embeddings(tmp_path):
    for s in range(2):
        _tar(tmp_path / f"{s}.tar", [_jpeg((60 * s + 40 * i, 100, 200 - 30 * i)) for i in range(4)])
    source = {"paths": str(tmp_path / "*.tar")}
    embedder = embed.PixelEmbedder(4)
    embed.embed_corpus(source, embedder, tmp_path / "serial", progress=False)
    embed.embed_corpus(source, embedder, tmp_path / "pool", executor="process", workers=2, progress=False)
    serial = [(ids.tolist(), vecs) for _, ids, vecs in embed.iter_corpus_embeddings(tmp_path / "serial")]
    pool = [(ids.tolist(), vecs) for _, ids, vecs in embed.iter_corpus_embeddings(tmp_path / "pool")]
    assert [ids for ids, _ in serial] == [ids for ids, _ in pool] == [[0, 1, 2, 3], [1 << 32 | i for i in range(4)]]
    for (_, a), (_, b) in zip(serial, pool):
        np.testing.assert_array_equal(a, b)
