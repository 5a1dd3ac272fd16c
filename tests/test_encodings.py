"""Issue 12 items 4, 6, 7: URL-encoded captions, file encodings (BOM, UTF-16/32), line splitting."""

from __future__ import annotations

import gzip
import io
import tarfile

import pandas as pd
import pytest
from PIL import Image

from helpers.evaluation import datasets
from helpers.evaluation.specs import read_lines
from helpers.shards import ConfigError, Shard
from helpers.text.captions import CaptionSource, ShardStats, read_shard
from helpers.text.concepts import build_concept_table, read_class_names_file
from helpers.text.encodings import decode_bytes, sniff_bom, split_lines, url_decode
from helpers.text.matching import match_captions
from helpers.text.search import run_text_search

UTF8_BOM = b"\xef\xbb\xbf"
WIDE = ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"]
BOM_OF = {
    "utf-16-le": b"\xff\xfe",
    "utf-16-be": b"\xfe\xff",
    "utf-32-le": b"\xff\xfe\x00\x00",
    "utf-32-be": b"\x00\x00\xfe\xff",
}


def read_all(source: CaptionSource, path) -> tuple[list, ShardStats]:
    stats = ShardStats(0, str(path))
    captions = [c for batch in read_shard(source, Shard(0, str(path)), stats) for c in batch.captions]
    return captions, stats


# ---------------------------------------------------------------------------------- 4. URL decoding


def test_issue_url_example(tmp_path):
    path = tmp_path / "yfcc.txt"
    path.write_text("hot%20dog%2Cketchup+and+mustard\nplain caption\n", encoding="utf-8")
    captions, stats = read_all(CaptionSource(format="txt", paths=str(path), decode="url"), path)
    assert captions == ["hot dog,ketchup and mustard", "plain caption"]
    assert match_captions(captions[:1], ["hot dog", "ketchup", "mustard", "dog"]) == [
        ["hot dog", "ketchup", "mustard", "dog"]
    ]
    # without the option the caption is read as written (and "hot%20dog" is not "hot dog")
    raw, _ = read_all(CaptionSource(format="txt", paths=str(path)), path)
    assert raw[0] == "hot%20dog%2Cketchup+and+mustard"
    assert match_captions(raw[:1], ["hot dog"]) == [[]]


@pytest.mark.parametrize(
    ("encoded", "decoded", "invalid"),
    [
        ("caf%C3%A9+au+lait", "café au lait", False),  # UTF-8 percent-escapes
        ("100%25+cotton", "100% cotton", False),
        ("a%2Bb", "a+b", False),  # an escaped plus stays a plus
        ("bad%FFbyte", "bad\ufffdbyte", True),  # invalid UTF-8 after decoding: counted
        ("50% off", "50% off", False),  # a lone % is kept
        ("no escapes", "no escapes", False),
    ],
)
def test_url_decode_kinds(encoded, decoded, invalid):
    assert url_decode(encoded) == (decoded, invalid)


def test_url_decode_in_every_format_and_counted(tmp_path):
    tsv = tmp_path / "a.tsv"
    tsv.write_bytes(b"url\tcaption\nx\tred+fox%21\ny\tbad%FF\n")
    captions, stats = read_all(
        CaptionSource(format="tsv", paths=str(tsv), header=True, caption_column="caption", decode="url"), tsv
    )
    assert captions == ["red fox!", "bad\ufffd"] and stats.invalid_utf8 == 1 and stats.captions == 2
    with pytest.raises(ConfigError, match=r"^decode: expected one of none, url, got 'base64'"):
        CaptionSource.from_config({"format": "txt", "paths": "x.txt", "decode": "base64"})


# ---------------------------------------------------------------------------------- 6. encodings


CAPTIONS = ["tench in a net", "a hot dog"]


def _files(tmp_path, prefix: bytes, encoding: str = "utf-8", gz: bool = False):
    """(format, source, path) for tsv/csv/txt shards holding CAPTIONS with ``prefix`` bytes first."""

    def write(name, text):
        path = tmp_path / (name + (".gz" if gz else ""))
        data = prefix + text.encode(encoding)
        path.write_bytes(gzip.compress(data) if gz else data)
        return path

    tsv = write("c.tsv", "caption\tkey\n" + "".join(f"{c}\t{i}\n" for i, c in enumerate(CAPTIONS)))
    csv_ = write("c.csv", "caption,key\r\n" + "".join(f'"{c}",{i}\r\n' for i, c in enumerate(CAPTIONS)))
    txt = write("c.txt", "".join(c + "\r\n" for c in CAPTIONS))
    return [
        ("tsv", CaptionSource(format="tsv", paths=str(tsv), header=True, caption_column="caption"), tsv),
        ("csv", CaptionSource(format="csv", paths=str(csv_), caption_column="caption", key_column="key"), csv_),
        ("txt", CaptionSource(format="txt", paths=str(txt)), txt),
    ]


@pytest.mark.parametrize("gz", [False, True])
def test_utf8_bom_accepted_by_every_caption_reader(tmp_path, gz):
    for fmt, source, path in _files(tmp_path, UTF8_BOM, gz=gz):
        captions, stats = read_all(source, path)
        assert captions == CAPTIONS, fmt
        assert stats.error is None and stats.invalid_utf8 == 0, fmt


@pytest.mark.parametrize("encoding", WIDE)
def test_wide_shards_refused_naming_file_and_encoding(tmp_path, encoding):
    for fmt, source, path in _files(tmp_path, BOM_OF[encoding], encoding=encoding):
        captions, stats = read_all(source, path)
        assert captions == [], fmt
        assert stats.error is not None and str(path) in stats.error and encoding.upper() in stats.error, fmt


def test_utf16_corpus_is_a_failed_shard_not_zero_counts(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes("a photo of a dog\n".encode("utf-16"))  # with its BOM, as Windows tools write it
    result = run_text_search(
        CaptionSource(format="txt", paths=str(path)), ["dog"], tmp_path / "out", executor="serial", progress=False
    )
    assert not result.ok and "UTF-16" in result.failed[0]


def test_wds_caption_files_with_bom_are_decoded():
    for data in [UTF8_BOM + b"a dog", "a dog".encode("utf-16"), b"\xff\xfe\x00\x00" + "a dog".encode("utf-32-le")]:
        assert decode_bytes(data, "x.txt") == "a dog"
    assert sniff_bom(b"\xff\xfe\x00\x00") == ("utf-32-le", 4)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32", "utf-16-be"])
def test_class_name_files_in_any_bom_encoding(tmp_path, encoding):
    path = tmp_path / "classes.txt"
    data = "tench\r\ngoldfish\r\n# comment\r\ngreat white shark\r\n".encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    path.write_bytes(data)
    assert read_class_names_file(path) == ["tench", "goldfish", "great white shark"]
    assert read_lines(path) == ["tench", "goldfish", "# comment", "great white shark"]


def test_bom_class_file_gives_one_concept(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_bytes(UTF8_BOM + b"tench\ngoldfish\n")
    table = build_concept_table(None, {"fish": {"class_names": ["tench"]}, "more": {"class_names_file": str(path)}})
    assert table["name"].tolist() == ["goldfish", "tench"]


def test_undecodable_class_files_name_the_file(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"class_names_file: .*latin1\.txt: not valid UTF-8"):
        read_class_names_file(bad)
    with pytest.raises(ConfigError, match=r"latin1\.txt: not valid UTF-8"):
        read_lines(bad)
    odd = tmp_path / "odd16.txt"
    odd.write_bytes(b"\xff\xfe" + b"a\x00b")  # odd length: truncated UTF-16
    with pytest.raises(ConfigError, match=r"odd16\.txt: not valid UTF-16-LE"):
        read_class_names_file(odd)


# ---------------------------------------------------------------------------------- 7. line splitting


def test_split_lines_is_the_readers_rule(tmp_path):
    text = "one\u2028still one\r\ntwo\x0cstill two\x85\nthree\rstill three\n"
    assert split_lines(text) == ["one\u2028still one", "two\x0cstill two\x85", "three\rstill three"]
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode("utf-8"))
    captions, _ = read_all(CaptionSource(format="txt", paths=str(path)), path)
    assert captions == split_lines(text)
    assert read_lines(path) == [line.strip() for line in split_lines(text)]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_retrieval_captions_split_like_the_readers(tmp_path):
    samples = {
        "a": "A dog\u2028on the grass.\r\nTwo dogs\x0cplaying.\r\n".encode(),
        "b": UTF8_BOM + "A cat\x85asleep.\nA kitten.".encode(),
        "c": "A red panda.\nA panda eating.\n".encode("utf-16"),
    }
    path = tmp_path / "coco.tar"
    with tarfile.open(path, "w") as tar:
        for key, txt in samples.items():
            for ext, data in (("png", _png()), ("txt", txt)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    ds = datasets.load_dataset({"format": "wds", "paths": str(path), "task": "retrieval"}, lambda im: im, name="coco")
    assert ds.captions == [
        ["A dog\u2028on the grass.", "Two dogs\x0cplaying."],
        ["A cat\x85asleep.", "A kitten."],
        ["A red panda.", "A panda eating."],
    ]


def test_release_concept_lists_accept_bom_and_crlf(tmp_path):
    from helpers.release import tidy

    for i, rel_path in enumerate(tidy.CONCEPT_LISTS):
        path = tmp_path / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        data = f"tench\r\nshared {i}\r\n".encode("utf-8-sig" if i % 2 == 0 else "utf-16")
        path.write_bytes(data)
    scores = pd.DataFrame({"dataset": ["imagenet"], "concept": ["tench"]})
    table = tidy.concepts(tmp_path, scores)
    assert "\ufefftench" not in set(table["name"]) and not any("\r" in n for n in table["name"])
    assert table["name"].tolist() == sorted({"tench"} | {f"shared {i}" for i in range(len(tidy.CONCEPT_LISTS))})
