"""Image-side search: batch tagging of webdataset tars with a deterministic fake tagger.

The fake tagger scores a concept from the image's mean colour (a fixed random projection and a sigmoid),
computed row by row so a sample's probabilities do not depend on the batch it is in. The tars hold tiny
solid-colour JPEGs (colour chosen by the sample's number) and a caption naming the sample, so a probability
can be traced back to its sample and compared with the caption side's sample id.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from helpers.images.search import image_counts, run_image_search, tagged_ids
from helpers.images.sources import ImageSource, decode_image, image_source
from helpers.images.taggers import Tagger
from helpers.shards import (
    ConfigError,
    merge_counts,
    read_shard_stats,
    run_report,
    split_sample_ids,
)
from helpers.text.captions import CaptionSource, ShardStats, list_shards, read_shard

N_CONCEPTS = 6

# --------------------------------------------------------------------------------------- fake tagger


class MeanColourTransform:
    """PIL -> CHW float tensor in [0, 1] at ``size`` px (picklable: it runs in DataLoader workers)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class FakeTagger:
    """Deterministic Tagger: prob = sigmoid(w . (mean colour - 0.5) + b), per image, in float64."""

    backend = "fake"

    def __init__(self, n_concepts: int = N_CONCEPTS, image_size: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.concepts = [f"concept{i}" for i in range(n_concepts)]
        self.image_size = image_size
        self.seed = seed
        self.weight = torch.tensor(rng.normal(0.0, 6.0, (3, n_concepts)), dtype=torch.float64)
        self.bias = torch.tensor(rng.normal(0.0, 1.0, n_concepts), dtype=torch.float64)

    def transform(self):
        return MeanColourTransform(self.image_size)

    def to(self, device):
        self.weight, self.bias = self.weight.to(device), self.bias.to(device)
        return self

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.to(torch.float64).mean(dim=(2, 3)) - 0.5  # (B, 3)
        logits = (mean[:, :, None] * self.weight[None]).sum(dim=1) + self.bias  # row-wise: batch invariant
        return torch.sigmoid(logits).to(torch.float32).cpu()

    def fingerprint(self) -> dict:
        return {"backend": "fake", "seed": self.seed, "n": len(self.concepts), "image_size": self.image_size}


def fake_tagger() -> FakeTagger:
    """The picklable zero-argument factory the runs get."""
    return FakeTagger()


def fake_tagger_16px() -> FakeTagger:
    return FakeTagger(image_size=16)


class CountingFactory:
    """A factory that notes the process id of every model it builds (one line per build) in ``log``."""

    def __init__(self, log: Path) -> None:
        self.log = str(log)

    def __call__(self) -> FakeTagger:
        with open(self.log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return FakeTagger()

    def builds(self) -> list[int]:
        return [int(line) for line in Path(self.log).read_text().split()]


def direct_probs(data: bytes, tagger: FakeTagger | None = None) -> np.ndarray:
    """Reference: one image decoded and scored on its own."""
    tagger = tagger or FakeTagger()
    x = tagger.transform()(decode_image(data))[None]
    return tagger.scores(x)[0].numpy()


# ------------------------------------------------------------------------------------------ tars


def colour(i: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(1000 + i)
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def image_bytes(i: int, fmt: str = "JPEG", size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour(i)).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def clean_samples(start: int, n: int) -> list[tuple[str, dict[str, bytes]]]:
    return [(f"{i:06d}", {"txt": f"sample {i}".encode(), "jpg": image_bytes(i)}) for i in range(start, start + n)]


def make_corpus(folder: Path, sizes=(7, 5), start: int = 0) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for s, n in enumerate(sizes):
        write_tar(folder / f"{s:05d}.tar", clean_samples(start, n))
        start += n
    return str(folder / "*.tar")


def run(source, out_dir, **kw):
    """run_image_search with the ``image_search`` settings in ``kw`` (serial, batch 4 unless given)."""
    factory = kw.pop("factory", fake_tagger)
    options = {k: kw.pop(k) for k in ("retry_failed", "overwrite", "progress") if k in kw}
    options.setdefault("progress", False)
    settings = {"executor": "serial", "batch_size": 4, **kw}
    return run_image_search(source, factory, out_dir, settings, **options)


def read(out_dir: Path, name: str) -> dict[int, dict]:
    """Every shard's table ``name`` as {shard: {column: list}}."""
    out = {}
    for f in sorted((Path(out_dir) / "shards").glob(f"*.{name}.parquet")):
        out[int(f.name.split(".")[0])] = pq.read_table(f).to_pydict()
    return out


def stats_of(out_dir: Path, shard: int) -> dict:
    return {k: v for k, v in read_shard_stats(out_dir, shard).items() if not k.startswith("seconds")}


# ------------------------------------------------------------------------------------------ tests


def test_fake_tagger_implements_protocol():
    assert isinstance(FakeTagger(), Tagger)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="^colour"):
        ImageSource.from_config({"paths": "x.tar", "colour": 1})
    with pytest.raises(ConfigError, match="^paths"):
        ImageSource.from_config({"format": "wds"})
    with pytest.raises(ConfigError, match="^format"):
        ImageSource.from_config({"paths": "x.tar", "format": "tsv"})
    with pytest.raises(ConfigError, match="^image_ext"):
        ImageSource.from_config({"paths": "x.tar", "image_ext": ["jpg", "gif"]})
    assert ImageSource.from_config({"paths": "x.tar", "image_ext": [".JPG", "png"]}).image_ext == ("jpg", "png")
    with pytest.raises(ConfigError, match=r"^image_corpora\.c\.images\.image_ext"):
        image_source("c", {"images": {"paths": "x.tar", "image_ext": 3}}, base=tmp_path)
    assert image_source("c", {"images": {"paths": "a/x.tar"}}, base=tmp_path).paths == (str(tmp_path / "a/x.tar"),)
    pattern = make_corpus(tmp_path / "c", sizes=(2,))
    with pytest.raises(ConfigError, match=r"^image_search\.batchsize: unknown key; did you mean 'batch_size'"):
        run(ImageSource(pattern), tmp_path / "o", batchsize=3)
    with pytest.raises(ConfigError, match=r"^image_search\.prob_floor: input should be less than or equal to 1"):
        run(ImageSource(pattern), tmp_path / "o", prob_floor=1.5)
    with pytest.raises(ConfigError, match=r"^image_search\.precision: 'fp8' is not one of fp32, bf16, fp16"):
        run(ImageSource(pattern), tmp_path / "o", precision="fp8")
    assert not (tmp_path / "o").exists()  # refused before any work


def test_image_size_mismatch_fails_fast(tmp_path):
    pattern = make_corpus(tmp_path / "c", sizes=(2,))
    with pytest.raises(ConfigError, match=r"image_size: params ask for 16 px .* expects 8 px"):
        run({"paths": pattern}, tmp_path / "o", image_size=16)
    assert not (tmp_path / "o").exists()  # nothing started
    run({"paths": pattern}, tmp_path / "o", image_size=16, factory=fake_tagger_16px)


def test_scores_equal_direct_tagging(tmp_path):
    """Every stored probability is the tagger's on that image alone; hits are the pairs at the floor."""
    folder = tmp_path / "c"
    folder.mkdir()
    samples = clean_samples(0, 9)
    samples[3] = (samples[3][0], {"txt": b"png", "png": image_bytes(3, "PNG")})  # a png among jpgs
    samples[5] = (samples[5][0], {"txt": b"both", "webp": image_bytes(99, "WEBP"), "jpg": image_bytes(5)})
    write_tar(folder / "a.tar", samples)
    result = run({"paths": str(folder / "a.tar"), "image_ext": ["jpg", "png", "webp"]}, tmp_path / "o", prob_floor=0.3)
    assert result.ok and result.processed == [0]
    scores, hits, tagged = (
        read(tmp_path / "o", "scores")[0],
        read(tmp_path / "o", "hits")[0],
        read(tmp_path / "o", "tagged")[0],
    )
    assert tagged["sample_id"] == list(range(9))
    expected = []
    for position, (_, files) in enumerate(samples):
        data = files["jpg"] if "jpg" in files else files["png"]  # jpg preferred over webp for sample 5
        probs = direct_probs(data)
        expected += [(position, c, p) for c, p in enumerate(probs) if p >= np.float32(0.3)]
    assert list(zip(scores["sample_id"], scores["concept_id"], scores["prob"])) == [
        (s, c, pytest.approx(p, abs=0)) for s, c, p in expected
    ]
    assert list(zip(hits["sample_id"], hits["concept_id"])) == [(s, c) for s, c, _ in expected]
    assert len(expected) > 9  # the example is not degenerate
    assert stats_of(tmp_path / "o", 0) == {
        "shard": 0,
        "path": str(folder / "a.tar"),
        "records": 9,
        "images": 9,
        "corrupt": 0,
        "missing_image": 0,
        "truncated_tar": 0,
        "error": None,
    }


def test_bad_images_and_truncated_tar_counted_and_aligned_with_captions(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    samples = clean_samples(0, 10)
    good = image_bytes(2)
    samples[2] = (samples[2][0], {"txt": b"sample 2", "jpg": good[: len(good) // 2]})  # truncated JPEG
    samples[4] = (samples[4][0], {"txt": b"sample 4", "jpg": b"not an image at all"})  # garbage bytes
    samples[6] = (samples[6][0], {"txt": b"sample 6"})  # no image
    samples[7] = (samples[7][0], {"txt": b"sample 7", "jpg": b""})  # empty file
    write_tar(folder / "00000.tar", samples)
    whole = write_tar(folder / "00001.tar", clean_samples(100, 8)).read_bytes()
    # cut inside the 6th sample's jpg data: 5 complete samples survive on the image side
    offset = whole.index(image_bytes(105)) + 100
    (folder / "00001.tar").write_bytes(whole[:offset])
    pattern = str(folder / "*.tar")
    out = tmp_path / "o"
    result = run({"paths": pattern}, out, prob_floor=0.0, batch_size=3)
    assert result.failed.keys() == {1} and "truncated" in result.failed[1]
    s0, s1 = stats_of(out, 0), stats_of(out, 1)
    assert (s0["records"], s0["images"], s0["corrupt"], s0["missing_image"], s0["truncated_tar"]) == (10, 6, 3, 1, 0)
    assert (s1["records"], s1["images"], s1["truncated_tar"]) == (5, 5, 1) and "truncated" in s1["error"]
    # the caption side of the same tars: same shard indices, and every tagged id is the same sample there
    captions = CaptionSource(format="wds", paths=pattern)
    assert [s.path for s in list_shards(captions)] == [r["path"] for r in result.records]
    caption_of = {}
    for shard in list_shards(captions):
        for batch in read_shard(captions, shard, ShardStats(shard.index, shard.path)):
            caption_of.update(zip(batch.sample_ids.tolist(), batch.captions))
    ids0, ids1 = tagged_ids(out, 0), tagged_ids(out, 1)
    assert split_sample_ids(ids0)[1].tolist() == [0, 1, 3, 5, 8, 9]
    assert split_sample_ids(ids1)[1].tolist() == [0, 1, 2, 3, 4]
    scores = {**read(out, "scores")}
    for _shard, table in scores.items():
        for sid, c, p in zip(table["sample_id"], table["concept_id"], table["prob"]):
            number = int(caption_of[sid].split()[1])  # the caption names the sample the image was made for
            assert p == direct_probs(image_bytes(number))[c]
    assert len(scores[0]["sample_id"]) == 6 * N_CONCEPTS  # floor 0: every concept of every tagged image
    report = run_report(out)
    assert report["totals"]["corrupt"] == 3 and report["totals"]["truncated_tar"] == 1
    # a failed (truncated) shard is left out of the counts unless asked for
    with pytest.raises(Exception, match="failed"):
        image_counts(out, 0.5)
    assert image_counts(out, 0.0, allow_failed=True)["count"].tolist() == [11] * N_CONCEPTS


def test_missing_shard_is_reported(tmp_path):
    pattern = make_corpus(tmp_path / "c", sizes=(3,))
    source = {"paths": [pattern.replace("*", "00000"), str(tmp_path / "c" / "00001.tar")]}
    result = run(source, tmp_path / "o")
    assert result.failed.keys() == {1} and "missing shard" in result.failed[1]


def test_threshold_sweep_equals_retagging(tmp_path):
    pattern = make_corpus(tmp_path / "c", sizes=(9, 6, 4))
    low = run({"paths": pattern}, tmp_path / "low", prob_floor=0.2)
    assert low.ok
    thresholds = [0.2, 0.5, 0.7, 0.93]
    swept = image_counts(tmp_path / "low", thresholds)
    assert list(swept.columns) == ["concept_id", "threshold", "count"]
    assert len(swept) == len(thresholds) * N_CONCEPTS
    assert swept["count"].sum() > 0
    for t in thresholds:
        direct = run({"paths": pattern}, tmp_path / f"t{t}", prob_floor=t)
        assert direct.ok
        expected = merge_counts(tmp_path / f"t{t}")["count"].tolist()  # the hits of a run at floor t
        got = swept[swept["threshold"] == t].sort_values("concept_id")["count"].tolist()
        assert got == expected
        assert image_counts(tmp_path / f"t{t}", t)["count"].tolist() == expected
    with pytest.raises(ConfigError, match=r"0\.1 is below the prob_floor 0\.2"):
        image_counts(tmp_path / "low", [0.5, 0.1])


def test_model_built_once_per_process(tmp_path):
    pattern = make_corpus(tmp_path / "c", sizes=(3, 3, 3, 3))
    counting = CountingFactory(tmp_path / "builds.txt")
    assert run({"paths": pattern}, tmp_path / "o", factory=counting, num_workers=2).ok
    assert counting.builds() == [os.getpid()]  # serial: the driver's model serves every shard


def test_resume_recomputes_nothing_and_gives_identical_results(tmp_path):
    pattern = make_corpus(tmp_path / "c", sizes=(5, 4, 3))
    out = tmp_path / "o"
    first = run({"paths": pattern}, out, prob_floor=0.4)
    assert first.processed == [0, 1, 2]
    before = {name: read(out, name) for name in ("scores", "hits", "tagged")}
    mtimes = {f.name: f.stat().st_mtime_ns for f in (out / "shards").iterdir()}
    second = run({"paths": pattern}, out, prob_floor=0.4, batch_size=2)  # batch size is not in the fingerprint
    assert second.processed == [] and second.skipped == [0, 1, 2]
    assert {f.name: f.stat().st_mtime_ns for f in (out / "shards").iterdir()} == mtimes
    # an interrupted run: shard 1 lost its completion record -> only it is redone, results identical
    (out / "shards" / "000001.done.json").unlink()
    third = run({"paths": pattern}, out, prob_floor=0.4)
    assert third.processed == [1] and third.skipped == [0, 2]
    assert {name: read(out, name) for name in ("scores", "hits", "tagged")} == before
    with pytest.raises(ConfigError, match="different configuration.*prob_floor"):
        run({"paths": pattern}, out, prob_floor=0.5)


def test_replaced_appended_edited_renamed_tars_give_a_clean_runs_counts(tmp_path):
    """Issue 10, case 1 on the image side: a replaced tar's counts and records move on a rerun."""
    folder = tmp_path / "c"
    make_corpus(folder, sizes=(5, 4, 3, 2))
    pattern = str(folder / "*.tar")
    out = tmp_path / "o"
    assert run({"paths": pattern}, out, prob_floor=0.4).processed == [0, 1, 2, 3]
    write_tar(folder / "00000.tar", clean_samples(100, 6))  # replaced: other images, more of them
    write_tar(folder / "00001.tar", clean_samples(5, 4) + clean_samples(200, 2))  # appended samples
    samples = clean_samples(9, 3)
    samples[1] = (samples[1][0], {"txt": b"edited", "jpg": image_bytes(300)})  # one image edited in place
    stat = (folder / "00002.tar").stat()
    write_tar(folder / "00002.tar", samples)
    os.utime(folder / "00002.tar", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.rename(folder / "00003.tar", folder / "00009.tar")
    resumed = run({"paths": pattern}, out, prob_floor=0.4, overwrite=True)
    assert resumed.processed == [0, 1, 2, 3] and resumed.skipped == []
    assert resumed.reasons == {0: "input changed", 1: "input changed", 2: "input changed", 3: "path changed"}
    clean = run({"paths": pattern}, tmp_path / "clean", prob_floor=0.4)
    assert clean.ok
    for name in ("scores", "hits", "tagged"):
        assert read(out, name) == read(tmp_path / "clean", name)
    assert [stats_of(out, i)["records"] for i in range(4)] == [6, 6, 3, 2]
    assert image_counts(out, [0.4, 0.7]).equals(image_counts(tmp_path / "clean", [0.4, 0.7]))
    again = run({"paths": pattern}, out, prob_floor=0.4)
    assert again.processed == [] and again.skipped == [0, 1, 2, 3]


def test_dataloader_workers_and_process_pool_give_identical_results(tmp_path):
    folder = tmp_path / "c"
    pattern = make_corpus(folder, sizes=(23, 11))
    samples = clean_samples(50, 9)
    samples[4] = (samples[4][0], {"txt": b"x", "jpg": b"garbage"})
    write_tar(folder / "00002.tar", samples)
    base = run({"paths": pattern}, tmp_path / "w0", prob_floor=0.3, num_workers=0, batch_size=3)
    par = run({"paths": pattern}, tmp_path / "w2", prob_floor=0.3, num_workers=2, batch_size=3)
    counting = CountingFactory(tmp_path / "builds.txt")
    pool = run(
        {"paths": pattern},
        tmp_path / "p2",
        prob_floor=0.3,
        executor="process",
        workers=2,
        batch_size=3,
        factory=counting,
    )
    assert base.ok and par.ok and pool.ok and pool.processed == [0, 1, 2]
    builds = counting.builds()  # the driver once, then each pool process at most once (3 shards, 2 processes)
    assert builds[0] == os.getpid() and len(builds) == len(set(builds)) <= 3
    for name in ("scores", "hits", "tagged"):
        assert read(tmp_path / "w2", name) == read(tmp_path / "w0", name)
        assert read(tmp_path / "p2", name) == read(tmp_path / "w0", name)
    for shard in range(3):
        assert stats_of(tmp_path / "w2", shard) == stats_of(tmp_path / "w0", shard)
    assert stats_of(tmp_path / "w2", 2)["corrupt"] == 1


def test_ray_actor_pool(tmp_path):
    ray = pytest.importorskip("ray")
    pattern = make_corpus(tmp_path / "c", sizes=(6, 5, 4))
    serial = run({"paths": pattern}, tmp_path / "serial", prob_floor=0.3)
    assert serial.ok
    here = str(Path(__file__).resolve().parent)  # actors unpickle the fake tagger from this module
    pythonpath = os.pathsep.join([here, *[p for p in sys.path if p.endswith("src")]])
    if ray.is_initialized():  # a Ray left by another test would not see this module
        ray.shutdown()
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )
    try:
        counting = CountingFactory(tmp_path / "builds.txt")
        result = run(
            {"paths": pattern}, tmp_path / "ray", prob_floor=0.3, executor="ray", ray_num_actors=2, factory=counting
        )
        assert result.ok and result.processed == [0, 1, 2]
        builds = counting.builds()  # the driver, then one model per actor
        assert builds[0] == os.getpid() and len(builds) == len(set(builds)) == 3
        again = run({"paths": pattern}, tmp_path / "ray", prob_floor=0.3, executor="ray")
        assert again.processed == [] and again.skipped == [0, 1, 2]
    finally:
        ray.shutdown()
    for name in ("scores", "hits", "tagged"):
        assert read(tmp_path / "ray", name) == read(tmp_path / "serial", name)
    pd_ray = image_counts(tmp_path / "ray", [0.3, 0.6])
    assert pd_ray.equals(image_counts(tmp_path / "serial", [0.3, 0.6]))
    assert json.loads((tmp_path / "ray" / "run.json").read_text())["fingerprint"]["prob_floor"] == 0.3
