"""Sample corpora: the same captions in every format, read back identically; a downstream entry that builds."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from helpers.naming import concept_key
from helpers.synthetic.samples import (
    FORMATS,
    write_sample_corpus,
    write_sample_downstream,
)
from helpers.text.captions import CaptionSource, ShardStats, list_shards, read_shard
from helpers.text.concepts import build_concept_table
from helpers.text.matching import match_captions

N_CAPTIONS, N_SHARDS = 600, 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("samples")
    return base, write_sample_corpus(base / "corpus", n_captions=N_CAPTIONS, n_shards=N_SHARDS, relative_to=base)


def _read(config: dict, base: Path) -> tuple[list[tuple[int, str | None, str | None]], list[ShardStats]]:
    """(sample_id, caption, key) of every record, and the stats of every shard."""
    config = dict(config, paths=str(base / config["paths"]))
    source = CaptionSource.from_config(config)
    records, stats = [], []
    for shard in list_shards(source):
        st = ShardStats(shard.index, shard.path)
        for batch in read_shard(source, shard, st):
            keys = batch.keys or [None] * len(batch.captions)
            records += list(zip(batch.sample_ids.tolist(), batch.captions, keys))
        stats.append(st)
    return records, stats


def test_configs_are_relative_caption_sources(corpus):
    _, result = corpus
    assert set(result) == {*FORMATS, "expected"}
    assert result["tsv"] == {
        "format": "tsv",
        "paths": "corpus/tsv/part-{00000..00002}.tsv",
        "header": True,
        "caption_column": "caption",
    }
    assert result["wds"]["paths"] == "corpus/wds/{00000..00002}.tar"
    for fmt in FORMATS:
        CaptionSource.from_config(result[fmt])  # every one is a valid config


def test_every_format_reads_back_the_same_records(corpus):
    base, result = corpus
    expected = result["expected"]
    read = {fmt: _read(result[fmt], base) for fmt in FORMATS}
    tsv_records, tsv_stats = read["tsv"]
    # the malformed TSV row is the last line of shard 0: one extra record there, without a caption
    assert sum(s.records for s in tsv_stats) == expected["records"] + 1
    assert [s.malformed for s in tsv_stats] == [1, 0, 0]
    shard0_end = expected["records_per_shard"][0]
    assert tsv_records[shard0_end][0] == shard0_end and tsv_records[shard0_end][1] is None
    del tsv_records[shard0_end]

    reference = [(sid, cap) for sid, cap, _ in read["txt"][0]]
    assert len(reference) == expected["records"]
    for fmt in FORMATS:
        records, stats = read[fmt]
        assert [(sid, cap) for sid, cap, _ in records] == reference, fmt  # same ids, captions, order
        assert [s.records - s.malformed for s in stats] == expected["records_per_shard"], fmt
        assert sum(s.captions for s in stats) == expected["non_empty"], fmt
        assert sum(s.empty for s in stats) == expected["empty"], fmt
        assert sum(s.truncated for s in stats) == expected["long"], fmt  # > 10k chars, cut to 4,096
        assert all(s.error is None and s.invalid_utf8 == 0 for s in stats), fmt
        if fmt != "tsv":
            assert sum(s.malformed for s in stats) == 0, fmt

    captions = [cap for _, cap in reference]
    positions = expected["positions"]
    assert captions[positions["empty"]] is None
    assert captions[positions["punctuation_only"]] and not re.search(r"\w", captions[positions["punctuation_only"]])
    assert len(captions[positions["long"]]) == 4096 and expected["long_chars"] > 10_000
    assert all("\t" not in c and "\n" not in c for c in captions if c)


def test_sample_keys_and_ids_follow_shard_and_position(corpus):
    base, result = corpus
    records, _ = _read(result["wds"], base)
    sizes = result["expected"]["records_per_shard"]
    expected_keys = [f"{i:05d}{j:04d}" for i, n in enumerate(sizes) for j in range(n)]
    assert [key for _, _, key in records] == expected_keys
    assert [sid for sid, _, _ in records] == [(i << 32) | j for i, n in enumerate(sizes) for j in range(n)]


def test_wds_tar_has_jpg_txt_json_per_key(corpus):
    base, result = corpus
    path = base / result["wds"]["paths"].replace("{00000..00002}", "00001")
    files: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            files.setdefault(key, {})[ext] = tar.extractfile(member).read()
    assert len(files) == result["expected"]["records_per_shard"][1]
    import json

    for key, group in files.items():
        assert set(group) == {"jpg", "txt", "json"}, key
        meta = json.loads(group["json"])
        assert meta["key"] == key and meta["caption"] == group["txt"].decode("utf-8")
    first = next(iter(files.values()))
    with Image.open(io.BytesIO(first["jpg"])) as image:
        image.load()
        assert image.format == "JPEG" and image.size == (8, 8)


def test_mentions_are_long_tailed_and_match_the_text_search(tmp_path):
    names = ["mouse", "goose", "child", "hot dog", "teddy bear", "wolf", "knife", "zebra"]
    result = write_sample_corpus(tmp_path, n_captions=400, n_shards=1, seed=3, concept_names=names)
    mentions = result["expected"]["mentions"]
    assert set(mentions) == set(names)
    counts = sorted(mentions.values(), reverse=True)
    assert counts[0] >= 4 * max(counts[-1], 1)  # Zipf-like
    captions = (tmp_path / "txt" / "part-00000.txt").read_text(encoding="utf-8").splitlines()
    text = " ".join(captions)
    assert re.search(r"\bmice\b", text, re.I) and re.search(r"\bgeese\b", text, re.I)
    assert re.search(r"hot[-_]dog", text, re.I) and re.search(r"\b[A-Z]{3,}\b", text)  # separators, case
    # the names share no word, so the phrase matcher finds exactly the intended mentions
    found = match_captions(captions, names, mode="phrase")
    assert {n: sum(n in hits for hits in found) for n in names} == mentions


def test_deterministic_for_a_seed(tmp_path):
    a = write_sample_corpus(tmp_path / "a", n_captions=80, n_shards=2, seed=7)
    b = write_sample_corpus(tmp_path / "b", n_captions=80, n_shards=2, seed=7)
    c = write_sample_corpus(tmp_path / "c", n_captions=80, n_shards=2, seed=8)
    assert a["expected"] == b["expected"]
    assert a["expected"] != c["expected"]  # another seed, other captions
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 8
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a" / "txt" / "part-00000.txt").read_bytes() != (
        tmp_path / "c" / "txt" / "part-00000.txt"
    ).read_bytes()


def test_rewrite_with_fewer_shards_leaves_no_stale_files(tmp_path):
    write_sample_corpus(tmp_path, n_captions=30, n_shards=3)
    write_sample_corpus(tmp_path, n_captions=30, n_shards=1)
    assert sorted(p.name for p in (tmp_path / "tsv").iterdir()) == ["part-00000.tsv"]


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="n_captions"):
        write_sample_corpus(tmp_path, n_captions=2)
    with pytest.raises(ValueError, match="n_shards"):
        write_sample_corpus(tmp_path, n_shards=0)
    with pytest.raises(ValueError, match="concept_names"):
        write_sample_corpus(tmp_path, concept_names=["dog", "dog"])
    with pytest.raises(ValueError, match="use more shards"):
        write_sample_corpus(tmp_path, n_captions=20_002, n_shards=2)


def test_downstream_entry_builds_a_concept_table(tmp_path):
    entry = write_sample_downstream(tmp_path / "down", relative_to=tmp_path)
    assert entry["noun_extractor"] == "lemmas" and entry["min_images"] == 3
    assert entry["class_names_file"] == "down/classes.txt"
    captions = pd.read_csv(tmp_path / "down" / "retrieval_captions.tsv", sep="\t")
    assert list(captions.columns) == ["image_id", "caption"]
    assert captions["image_id"].nunique() == 60 and (captions.groupby("image_id").size() == 5).all()

    names = ["dog", "surfboard", "airplane"]
    release = pd.DataFrame(
        {
            "concept_id": pd.array(range(3), dtype="int32"),
            "name": names,
            "key": [concept_key(n) for n in names],
            "sources": [["rel:zero_shot"]] * 3,
        }
    )
    table = build_concept_table(release, {"sample": entry}, base_dir=tmp_path).set_index("name")
    assert table.loc["airplane", "sources"] == ["rel:zero_shot"]
    assert table.loc["dog", "sources"] == ["rel:zero_shot", "sample:zero_shot", "sample:retrieval"]
    assert table.loc["surfboard", "sources"] == ["rel:zero_shot", "sample:retrieval"]
    class_rows = table[table["sources"].map(lambda s: "sample:zero_shot" in s)]
    assert len(class_rows) == 20 and {"Hot Dog", "fire_truck", "tuk-tuk", "axolotl"} <= set(class_rows.index)
    assert table.loc["fire_truck", "lemmas"] == ["fire", "truck"]
    retrieval = set(table[table["sources"].map(lambda s: "sample:retrieval" in s)].index)
    assert {"train", "park", "beach"} <= retrieval
    assert not retrieval & {"the", "a", "is", "there", "two"}
    # the same seed writes the same files
    again = write_sample_downstream(tmp_path / "again", relative_to=tmp_path)
    for name in ("classes.txt", "retrieval_captions.tsv"):
        assert (tmp_path / "down" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    assert again["captions"]["key_column"] == "image_id"
