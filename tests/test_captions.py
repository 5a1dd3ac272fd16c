"""Caption readers: one test per format, sample ids, bad input and configuration errors."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.shards import ConfigError, Shard, make_sample_ids, split_sample_ids
from helpers.text.captions import (
    CaptionSource,
    ShardReadError,
    ShardStats,
    check_source,
    iter_tar_samples,
    list_shards,
    read_shard,
)


def read_all(source: CaptionSource, shard: Shard):
    stats = ShardStats(shard.index, shard.path)
    ids, caps, keys = [], [], []
    for batch in read_shard(source, shard, stats):
        ids.extend(batch.sample_ids.tolist())
        caps.extend(batch.captions)
        keys.extend(batch.keys or [None] * len(batch.captions))
    return ids, caps, keys, stats


def write_tar(path, samples, truncate_to=None):
    """samples: list of (key, {ext: bytes})."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.write_bytes(data[:truncate_to] if truncate_to else data)
    return path


# --------------------------------------------------------------------------------------- sample ids


def test_sample_ids_layout():
    ids = make_sample_ids(3, np.array([0, 1, 2**32 - 1]))
    assert ids.dtype == np.int64
    assert ids.tolist() == [3 << 32, (3 << 32) | 1, (3 << 32) | (2**32 - 1)]
    shard, pos = split_sample_ids(ids)
    assert shard.tolist() == [3, 3, 3] and pos.tolist() == [0, 1, 2**32 - 1]
    assert make_sample_ids(2**31 - 1, 5) > 0
    with pytest.raises(ValueError):
        make_sample_ids(2**31, 0)


# ------------------------------------------------------------------------------------------ formats


def test_tsv_cc3m_style(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(
        b"A dog on a beach\thttp://a/1.jpg\n"
        b"\thttp://a/2.jpg\n"  # empty caption
        b"no url field at all\n"  # still has column 0: read
        b"caf\xe9 au lait\thttp://a/4.jpg\n"  # invalid UTF-8 (latin-1 byte)
        b"two\tcats\thttp://a/5.jpg\r\n"  # a tab inside the caption: more fields than the header-less width
    )
    source = CaptionSource("tsv", str(path))
    (shard,) = list_shards(source)
    ids, caps, _, stats = read_all(source, shard)
    assert ids == make_sample_ids(0, np.arange(5)).tolist()
    assert caps == ["A dog on a beach", None, "no url field at all", "caf\ufffd au lait", "two"]
    assert (stats.records, stats.captions, stats.empty, stats.invalid_utf8, stats.malformed) == (5, 4, 1, 1, 0)
    # with the expected width given, short and long rows are malformed but keep their positions
    ids, caps, _, stats = read_all(CaptionSource("tsv", str(path), n_columns=2), shard)
    assert caps == ["A dog on a beach", None, None, "caf\ufffd au lait", None]
    assert stats.malformed == 2 and stats.records == 5 and len(ids) == 5


def test_tsv_with_header_and_named_columns(tmp_path):
    path = tmp_path / "meta.tsv.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"key\tcaption\turl\n0001\ta red car\tu1\n0002\tbroken row\n0003\ta blue bus\tu3\n")
    source = CaptionSource("tsv", str(path), header=True, caption_column="caption", key_column="key")
    ids, caps, keys, stats = read_all(source, Shard(7, str(path)))
    assert caps == ["a red car", None, "a blue bus"]
    assert keys == ["0001", None, "0003"]
    assert ids == make_sample_ids(7, np.arange(3)).tolist()
    assert stats.malformed == 1 and stats.records == 3
    with pytest.raises(ConfigError, match="caption_column"):
        read_all(CaptionSource("tsv", str(path), header=True, caption_column="TEXT"), Shard(0, str(path)))


def test_csv_quoted_multiline_and_bad_rows(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(
        b"caption,url\n"
        b'"a dog, running",u1\n'
        b'"line one\nline two",u2\n'
        b"\n"  # blank line: a malformed record
        b"only one field\n"
        b'"bad \xff byte",u5\n'
        b'"",u6\n'
    )
    source = CaptionSource("csv", str(path))
    ids, caps, _, stats = read_all(source, Shard(0, str(path)))
    assert caps == ["a dog, running", "line one\nline two", None, None, "bad \ufffd byte", None]
    assert (stats.records, stats.captions, stats.malformed, stats.invalid_utf8, stats.empty) == (6, 3, 2, 1, 1)
    assert ids == list(range(6))


def test_parquet_laion_style(tmp_path):
    path = tmp_path / "part-00000.parquet"
    table = pa.table(
        {
            "URL": ["u0", "u1", "u2", "u3"],
            "TEXT": ["A cat on a mat", None, "", "x" * 10_000],
            "key": ["000000000", "000000001", "000000002", "000000003"],
            "similarity": [0.3, 0.4, 0.5, 0.6],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    source = CaptionSource(
        "parquet", str(path), caption_column="TEXT", key_column="key", max_caption_chars=100, batch_size=3
    )
    ids, caps, keys, stats = read_all(source, Shard(1, str(path)))
    assert caps == ["A cat on a mat", None, None, "x" * 100]
    assert keys == ["000000000", "000000001", "000000002", "000000003"]
    assert ids == make_sample_ids(1, np.arange(4)).tolist()
    assert (stats.captions, stats.empty, stats.truncated) == (2, 2, 1)
    with pytest.raises(ConfigError, match="caption_column"):
        read_all(CaptionSource("parquet", str(path)), Shard(0, str(path)))  # no "caption" column
    with pytest.raises(ConfigError, match="caption_column"):
        read_all(CaptionSource("parquet", str(path), caption_column="similarity"), Shard(0, str(path)))


def test_parquet_binary_captions_and_damage(tmp_path):
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"caption": pa.array([b"ok", b"bad \xc3", None], pa.binary())}), path)
    _, caps, _, stats = read_all(CaptionSource("parquet", str(path)), Shard(0, str(path)))
    assert caps == ["ok", "bad \ufffd", None] and stats.invalid_utf8 == 1
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    _, caps, _, stats = read_all(CaptionSource("parquet", str(broken)), Shard(0, str(broken)))
    assert caps == [] and "Parquet" in stats.error


def test_webdataset_txt_and_json(tmp_path):
    samples = [
        (
            "000000000",
            {
                "jpg": b"\xff\xd8jpeg",
                "txt": b"A Dog",
                "json": json.dumps({"caption": "A Dog", "key": "000000000"}).encode(),
            },
        ),
        ("000000001", {"jpg": b"\xff\xd8jpeg", "json": b"{not json"}),  # no .txt; broken .json
        ("000000002", {"txt": b"caf\xe9", "json": json.dumps({"caption": None}).encode()}),
        ("sub/000000003", {"jpg": b"x", "txt": b"   ", "json": json.dumps({"caption": "three"}).encode()}),
    ]
    path = write_tar(tmp_path / "00000.tar", samples)
    ids, caps, keys, stats = read_all(CaptionSource("wds", str(path)), Shard(2, str(path)))
    assert keys == ["000000000", "000000001", "000000002", "sub/000000003"]
    assert caps == ["A Dog", None, "caf\ufffd", None]
    assert ids == make_sample_ids(2, np.arange(4)).tolist()
    assert (stats.records, stats.captions, stats.empty, stats.invalid_utf8) == (4, 2, 2, 1)
    ids, caps, keys, stats = read_all(CaptionSource("wds", str(path), text_ext="json"), Shard(2, str(path)))
    assert caps == ["A Dog", None, None, "three"]
    assert (stats.malformed, stats.empty) == (1, 1)


def test_webdataset_truncated_tar_keeps_complete_samples(tmp_path):
    samples = [(f"{i:09d}", {"jpg": bytes(3000), "txt": f"caption {i}".encode()}) for i in range(6)]
    full = write_tar(tmp_path / "full.tar", samples)
    size = len(full.read_bytes())
    cut = write_tar(tmp_path / "cut.tar", samples, truncate_to=size // 2)
    ids, caps, keys, stats = read_all(CaptionSource("wds", str(cut)), Shard(0, str(cut)))
    assert stats.error and "truncated" in stats.error
    assert 0 < len(caps) < 6
    assert caps == [f"caption {i}" for i in range(len(caps))]
    assert ids == list(range(len(caps)))  # positions as in the intact tar
    # the image side groups samples with the same function: identical positions and keys
    positions = []
    with pytest.raises(ShardReadError, match="truncated"):
        for sample in iter_tar_samples(str(cut)):
            positions.append((sample.position, sample.key))
    assert positions == list(zip(range(len(caps)), keys))


def test_tar_grouping_rules(tmp_path):
    samples = [
        ("a", {"jpg": b"1", "txt": b"first"}),
        ("a", {"txt": b"again"}),  # the same key again, with a repeated extension: a new sample
        ("__index__", {}),
    ]
    path = write_tar(tmp_path / "g.tar", samples)
    with tarfile.open(path, "a") as tar:  # a metadata file and a file without extension
        for name in ("__meta__", "README"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    got = [(s.position, s.key, sorted(s.files)) for s in iter_tar_samples(str(path))]
    assert got == [(0, "a", ["jpg", "txt"]), (1, "a", ["txt"])]
    only_txt = list(iter_tar_samples(str(path), {"txt"}))
    assert only_txt[0].files == {"jpg": b"", "txt": b"first"}


def test_plain_text(tmp_path):
    path = tmp_path / "caps.txt"
    path.write_bytes(b"first caption\r\n\nthird \xff\n" + b"y" * 1_000_000 + b"\nlast")
    ids, caps, _, stats = read_all(CaptionSource("txt", str(path)), Shard(0, str(path)))
    assert caps[:3] == ["first caption", None, "third \ufffd"]
    assert caps[3] == "y" * 4096 and caps[4] == "last"
    assert (stats.records, stats.captions, stats.empty, stats.invalid_utf8, stats.truncated) == (5, 4, 1, 1, 1)


def test_one_megabyte_caption_in_tsv_and_csv(tmp_path):
    big = "z" * (1 << 20)
    tsv = tmp_path / "big.tsv"
    tsv.write_text(f"{big}\tu\nsmall\tu\n")
    csv_path = tmp_path / "big.csv"
    csv_path.write_text(f"caption\n{big}\nsmall\n")
    for source in (
        CaptionSource("tsv", str(tsv), max_caption_chars=1000),
        CaptionSource("csv", str(csv_path), max_caption_chars=1000),
    ):
        _, caps, _, stats = read_all(source, Shard(0, source.paths[0]))
        assert caps == ["z" * 1000, "small"] and stats.truncated == 1 and stats.malformed == 0


# --------------------------------------------------------------------------------- shard lists


def test_missing_shard_is_reported_not_skipped(tmp_path):
    (tmp_path / "00000.txt").write_text("a\n")
    (tmp_path / "00002.txt").write_text("b\n")
    source = CaptionSource("txt", str(tmp_path / "{00000..00002}.txt"))
    shards = list_shards(source)
    assert [s.path.rsplit("/", 1)[1] for s in shards] == ["00000.txt", "00001.txt", "00002.txt"]
    assert [s.index for s in shards] == [0, 1, 2]
    ids, caps, _, stats = read_all(source, shards[1])
    assert caps == [] and "missing" in stats.error
    ids, caps, _, _ = read_all(source, shards[2])
    assert ids == [2 << 32]  # the missing shard keeps its index


def test_shard_listing(tmp_path):
    for name in ("b.parquet", "a.parquet", "notes.json"):
        (tmp_path / name).write_text("")
    assert [s.path for s in list_shards(CaptionSource("parquet", str(tmp_path)))] == [
        str(tmp_path / "a.parquet"),
        str(tmp_path / "b.parquet"),
    ]
    assert [
        s.path
        for s in list_shards(CaptionSource("parquet", [str(tmp_path / "b.parquet"), str(tmp_path / "*.parquet")]))
    ] == [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    with pytest.raises(ConfigError, match="paths"):
        list_shards(CaptionSource("parquet", str(tmp_path / "*.tar")))
    assert len(list_shards(CaptionSource("wds", str(tmp_path / "shard-{0..3}-{x,y}.tar")))) == 8


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="^format"):
        CaptionSource("xml", "x")
    with pytest.raises(ConfigError, match="^paths"):
        CaptionSource("tsv", [])
    with pytest.raises(ConfigError, match="caption_column"):
        CaptionSource("tsv", "x", caption_column="caption")  # a name needs a header
    with pytest.raises(ConfigError, match="text_ext"):
        CaptionSource("wds", "x", text_ext="caption")
    with pytest.raises(ConfigError, match="max_caption_chars"):
        CaptionSource("txt", "x", max_caption_chars=0)
    with pytest.raises(ConfigError, match="caption_colum"):
        CaptionSource.from_config({"format": "tsv", "paths": "x", "caption_colum": 1})
    with pytest.raises(ConfigError, match="format"):
        CaptionSource.from_config({"paths": "x"})
    source = CaptionSource.from_config({"format": "csv", "paths": ["a.csv"], "caption_column": "TEXT"})
    assert source.header is True and source.paths == ("a.csv",)
    json.dumps(source.to_config())


def test_check_source_fails_fast(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"TEXT": ["a"]}), path)
    with pytest.raises(ConfigError, match="caption_column"):
        check_source(CaptionSource("parquet", [str(tmp_path / "missing.parquet"), str(path)]))
    check_source(CaptionSource("parquet", str(path), caption_column="TEXT"))


def test_empty_files(tmp_path):
    for fmt, header in (("tsv", True), ("csv", True), ("tsv", False), ("txt", None)):
        path = tmp_path / f"empty.{fmt}"
        path.write_bytes(b"")
        ids, caps, _, stats = read_all(CaptionSource(fmt, str(path), header=header), Shard(0, str(path)))
        assert caps == [] and stats.records == 0
        assert (stats.error is not None) == bool(header), (fmt, header, stats.error)
