"""Matched counts and misalignment: a hand-computed example, and brute force on real tars."""

from __future__ import annotations

import functools
import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from PIL import Image

from helpers.images.frequencies import frequency_table, matched_counts, misalignment
from helpers.images.search import SCORES_SCHEMA, image_counts, run_image_search
from helpers.images.sources import decode_image
from helpers.shards import (
    ConfigError,
    IncompleteRunError,
    Shard,
    ShardResult,
    make_sample_ids,
    run_shards,
)
from helpers.text.captions import CaptionSource, list_shards, read_shard
from helpers.text.matching import match_captions
from helpers.text.search import run_text_search, text_counts

# ------------------------------------------------------------------------- hand-built shard outputs
#
# Four concepts, two shards (5 + 3 samples). Text concepts and image probabilities per sample:
#
#   sample   text     image probs (floor 0.3)       at t=0.3      at t=0.5
#   0/0      {0,1}    c0 .9, c2 .4                  {0,2}  match  {0}    match
#   0/1      {2}      c1 .6                         {1}    MIS    {1}    MIS
#   0/2      {}       c0 .8                         {0}    -      {0}    -
#   0/3      {3}      c3 .45                        {3}    match  {}     -
#   0/4      {0}      (tagged, nothing >= .3)       {}     -      {}     -
#   1/0      {1}      c1 .55, c2 .95                {1,2}  match  {1,2}  match
#   1/1      {2,3}    c0 .35                        {0}    MIS    {}     -
#   1/2      {}       c3 .7                         {3}    -      {3}    -
#
# t=0.3: text&image = 5 samples, misaligned 2 -> 2/5 extracted, 2/8 fixed; matched c0..c3 = 1,1,0,1
# t=0.5: text&image = 3 samples, misaligned 1 -> 1/3 extracted, 1/8 fixed; matched c0..c3 = 1,1,0,0

TEXT = {0: (5, [(0, 0), (0, 1), (1, 2), (3, 3), (4, 0)]), 1: (3, [(0, 1), (1, 2), (1, 3)])}
IMAGE = {
    0: (5, [(0, 0, 0.9), (0, 2, 0.4), (1, 1, 0.6), (2, 0, 0.8), (3, 3, 0.45)], [0, 1, 2, 3, 4]),
    1: (3, [(0, 1, 0.55), (0, 2, 0.95), (1, 0, 0.35), (2, 3, 0.7)], [0, 1, 2]),
}
N = 4


def text_shard(shard: Shard, *, data) -> ShardResult:
    records, pairs = data[shard.index]
    ids = make_sample_ids(shard.index, np.array([p for p, _ in pairs], dtype=np.int64))
    return ShardResult(ids, np.array([c for _, c in pairs], np.int32), stats={"records": records})


def image_shard(shard: Shard, *, data) -> ShardResult:
    records, rows, tagged = data[shard.index]
    ids = make_sample_ids(shard.index, np.array([r[0] for r in rows], dtype=np.int64))
    concepts = np.array([r[1] for r in rows], np.int32)
    scores = pa.table(
        {"sample_id": ids, "concept_id": concepts, "prob": np.array([r[2] for r in rows], np.float32)},
        schema=SCORES_SCHEMA,
    )
    tagged_ids = pa.table({"sample_id": make_sample_ids(shard.index, np.array(tagged, dtype=np.int64))})
    return ShardResult(ids, concepts, stats={"records": records}, extra={"scores": scores, "tagged": tagged_ids})


def build(tmp_path: Path, text=TEXT, image=IMAGE, floor: float = 0.3, n_text: int = N) -> tuple[Path, Path]:
    shards = [Shard(i, f"shard{i}.tar") for i in sorted(image)]
    text_shards = [Shard(i, f"shard{i}.tar") for i in sorted(text)]
    tdir, idir = tmp_path / "text", tmp_path / "image"
    run_shards(
        text_shards,
        functools.partial(text_shard, data=text),
        tdir,
        fingerprint={"kind": "text_search"},
        n_concepts=n_text,
        executor="serial",
        progress=False,
    )
    run_shards(
        shards,
        functools.partial(image_shard, data=image),
        idir,
        fingerprint={"kind": "image_search", "prob_floor": floor},
        n_concepts=N,
        executor="serial",
        progress=False,
    )
    return tdir, idir


def counts_of(table: pd.DataFrame, t: float) -> list[int]:
    return table[table["threshold"] == t].sort_values("concept_id")["count"].tolist()


# ------------------------------------------------------------------------------------------ tests


def test_hand_built_matched_counts(tmp_path):
    tdir, idir = build(tmp_path)
    matched = matched_counts(tdir, idir, [0.3, 0.5])
    assert list(matched.columns) == ["concept_id", "threshold", "count"]
    assert matched.dtypes.astype(str).tolist() == ["int32", "float64", "int64"]
    assert counts_of(matched, 0.3) == [1, 1, 0, 1]
    assert counts_of(matched, 0.5) == [1, 1, 0, 0]
    image = image_counts(idir, [0.3, 0.5])
    assert counts_of(image, 0.3) == [3, 2, 2, 2]
    assert counts_of(image, 0.5) == [2, 2, 1, 1]
    assert (matched["count"].to_numpy() <= image["count"].to_numpy()).all()


def test_hand_built_misalignment(tmp_path):
    tdir, idir = build(tmp_path)
    table = misalignment(tdir, idir, [0.3, 0.5])
    assert list(table.columns) == ["threshold", "n_text_and_image", "n_misaligned", "degree_extracted", "degree_fixed"]
    assert table["threshold"].tolist() == [0.3, 0.5]
    assert table["n_text_and_image"].tolist() == [5, 3]
    assert table["n_misaligned"].tolist() == [2, 1]
    assert table["degree_extracted"].tolist() == pytest.approx([2 / 5, 1 / 3])
    assert table["degree_fixed"].tolist() == pytest.approx([2 / 8, 1 / 8])  # 8 records read
    assert table.attrs["n_samples_total"] == 8
    given = misalignment(tdir, idir, [0.5], n_samples_total=100)
    assert given["degree_fixed"].tolist() == pytest.approx([1 / 100])
    # nothing above 0.99: no sample has an image concept, the extracted degree is undefined
    empty = misalignment(tdir, idir, 0.99)
    assert empty["n_text_and_image"].tolist() == [0] and math.isnan(empty["degree_extracted"].iloc[0])
    assert empty["degree_fixed"].tolist() == [0.0]


def test_hand_built_frequency_table(tmp_path):
    tdir, idir = build(tmp_path)
    names = ["dog", "cat", "tree", "car"]
    table = frequency_table("toy", tdir, idir, [0.3, 0.5], names)
    assert list(table.columns) == ["corpus", "concept_id", "concept", "method", "threshold", "count"]
    assert len(table) == N * (1 + 2 + 2)
    assert set(table["corpus"]) == {"toy"}
    text = table[table["method"] == "text"]
    assert text["threshold"].isna().all() and text["count"].tolist() == [2, 2, 2, 2]
    assert text["concept"].tolist() == names
    for method, t, expected in [
        ("image", 0.3, [3, 2, 2, 2]),
        ("image", 0.5, [2, 2, 1, 1]),
        ("matched", 0.3, [1, 1, 0, 1]),
        ("matched", 0.5, [1, 1, 0, 0]),
    ]:
        assert counts_of(table[table["method"] == method], t) == expected
    as_table = pd.DataFrame({"concept_id": [3, 2, 1, 0], "name": names[::-1]})
    assert frequency_table("toy", tdir, idir, [0.3, 0.5], as_table).equals(table)
    with pytest.raises(ValueError, match="concept ids 0..3"):
        frequency_table("toy", tdir, idir, [0.3], names[:3])


def test_errors(tmp_path):
    tdir, idir = build(tmp_path / "a")
    with pytest.raises(ConfigError, match=r"0\.2 is below the prob_floor 0\.3"):
        matched_counts(tdir, idir, [0.5, 0.2])
    with pytest.raises(ConfigError, match="below the prob_floor"):
        misalignment(tdir, idir, 0.1)
    # the sides read different numbers of records of a shard: ids would not align
    text = {0: (6, TEXT[0][1]), 1: TEXT[1]}
    tdir2, idir2 = build(tmp_path / "b", text=text)
    with pytest.raises(ValueError, match="shard 0: the caption side read 6 records .* image side 5"):
        matched_counts(tdir2, idir2, 0.5)
    tdir3, idir3 = build(tmp_path / "c", text={0: TEXT[0]})
    with pytest.raises(ValueError, match="different shard lists"):
        misalignment(tdir3, idir3, 0.5)
    tdir4, idir4 = build(tmp_path / "d", n_text=5)
    with pytest.raises(ValueError, match="5 concepts and the image run 4"):
        matched_counts(tdir4, idir4, 0.5)
    (idir / "shards" / "000001.done.json").unlink()
    with pytest.raises(IncompleteRunError, match="not done"):
        matched_counts(tdir, idir, 0.5)


# ----------------------------------------------------------------------- end to end on real tars

CONCEPTS = ["dog", "cat", "red car", "tree", "polar bear", "boat"]
WORDS = ["a dog", "two cats", "the red car", "a tree", "a bear", "boats", "a car", "nothing here"]


class ColourTransform:
    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.resize((self.size, self.size))
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class ColourTagger:
    """A deterministic fake tagger over ``CONCEPTS``: prob from the mean colour, row by row."""

    backend = "fake"
    concepts = CONCEPTS
    image_size = 8

    def __init__(self) -> None:
        rng = np.random.default_rng(7)
        self.weight = torch.tensor(rng.normal(0.0, 6.0, (3, len(CONCEPTS))), dtype=torch.float64)

    def transform(self):
        return ColourTransform(self.image_size)

    def to(self, device):
        return self

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.to(torch.float64).mean(dim=(2, 3)) - 0.5
        return torch.sigmoid((mean[:, :, None] * self.weight[None]).sum(dim=1)).to(torch.float32)

    def fingerprint(self) -> dict:
        return {"backend": "fake", "seed": 7}


def jpeg(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), tuple(int(v) for v in rgb)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def make_tars(folder: Path, sizes=(14, 9), seed: int = 3) -> str:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for s, n in enumerate(sizes):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(n):
                files = {"txt": " and ".join(rng.choice(WORDS, size=rng.integers(1, 3))).encode()}
                if i % 7 != 5:  # some samples without an image
                    files["jpg"] = jpeg(rng.integers(0, 256, 3))
                else:
                    files["txt"] = b"a dog under a tree"
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{s}{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / "*.tar")


def brute_force(pattern: str, thresholds, mode: str = "phrase", **options) -> tuple[dict, dict, int]:
    """Per-sample text and image concept sets straight from the tars, and the matched/misalignment figures."""
    source = CaptionSource(format="wds", paths=pattern)
    ids, captions = [], []
    for shard in list_shards(source):
        for batch in read_shard(source, shard):
            ids += batch.sample_ids.tolist()
            captions += batch.captions
    text = {
        i: {CONCEPTS.index(c) for c in found}
        for i, found in zip(ids, match_captions(captions, CONCEPTS, mode, **options))
    }
    tagger = ColourTagger()
    probs = {}
    for shard in list_shards(source):
        with tarfile.open(shard.path) as tar:
            members = tar.getmembers()
            jpgs = {m.name.split(".")[0]: tar.extractfile(m).read() for m in members if m.name.endswith(".jpg")}
            keys = list(dict.fromkeys(m.name.split(".")[0] for m in members))
        for position, key in enumerate(keys):
            if key in jpgs:
                x = tagger.transform()(decode_image(jpgs[key]))[None]
                probs[int(make_sample_ids(shard.index, position))] = tagger.scores(x)[0].numpy()
    matched, mis = {}, {}
    for t in thresholds:
        image = {i: set(np.flatnonzero(p >= np.float32(t)).tolist()) for i, p in probs.items()}
        counts = np.zeros(len(CONCEPTS), dtype=int)
        both = misaligned = 0
        for i in ids:
            tc, ic = text[i], image.get(i, set())
            for c in tc & ic:
                counts[c] += 1
            if tc and ic:
                both += 1
                misaligned += not (tc & ic)
        matched[t] = counts.tolist()
        mis[t] = (both, misaligned)
    return matched, mis, len(ids)


@pytest.mark.parametrize("mode,unknown_words", [("phrase", None), ("bag", "drop")])
def test_end_to_end_against_brute_force(tmp_path, mode, unknown_words):
    """Text search + image search on the same tars; 'bag'+'drop' exercises the corpus-level word rule
    ("polar" occurs in no caption, so "polar bear" is searched as "bear")."""
    pattern = make_tars(tmp_path / "tars")
    tdir, idir = tmp_path / "text", tmp_path / "image"
    run_text_search(
        {"format": "wds", "paths": pattern},
        CONCEPTS,
        tdir,
        mode=mode,
        unknown_words=unknown_words,
        executor="serial",
        progress=False,
    )
    run_image_search(
        {"paths": pattern},
        ColourTagger,
        idir,
        {"prob_floor": 0.2, "batch_size": 4, "executor": "serial"},
        progress=False,
    )
    thresholds = [0.2, 0.5, 0.8]
    options = {"unknown_words": unknown_words} if unknown_words else {}
    matched, mis, n_records = brute_force(pattern, [0.0, *thresholds], mode, **options)
    got = matched_counts(tdir, idir, thresholds)
    for t in thresholds:
        assert counts_of(got, t) == matched[t]
    table = misalignment(tdir, idir, thresholds)
    assert list(zip(table["n_text_and_image"], table["n_misaligned"])) == [mis[t] for t in thresholds]
    assert table.attrs["n_samples_total"] == n_records == 23
    assert table["degree_fixed"].tolist() == pytest.approx([mis[t][1] / 23 for t in thresholds])
    assert table["degree_extracted"].tolist() == pytest.approx([m / b for b, m in (mis[t] for t in thresholds)])
    assert sum(m for _, m in mis.values()) > 0 and sum(sum(c) for c in matched.values()) > 0  # not degenerate
    # at floor 0 every tagged image has every concept: matched = the text hits of the samples with an image,
    # which checks the text side of the join sample by sample (drop mode included)
    run_image_search(
        {"paths": pattern}, ColourTagger, tmp_path / "all", {"prob_floor": 0.0, "executor": "serial"}, progress=False
    )
    assert matched_counts(tdir, tmp_path / "all", 0.0)["count"].tolist() == matched[0.0]
    text = text_counts(tdir)["count"].to_numpy()
    assert (np.asarray(matched[0.0]) <= text).all() and (np.asarray(matched[0.0]) < text).any()
    if unknown_words == "drop":
        assert matched[0.0][CONCEPTS.index("polar bear")] > 0
