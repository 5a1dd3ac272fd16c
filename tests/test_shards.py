"""Sharded, resumable execution: outputs, resume, failures, executors, and the caption search on top."""

from __future__ import annotations

import json
import os
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.shards import (
    ConfigError,
    IncompleteRunError,
    Shard,
    ShardChunk,
    ShardResult,
    make_sample_ids,
    merge_counts,
    run_report,
    run_shards,
)
from helpers.text.captions import CaptionSource
from helpers.text.matching import match_captions
from helpers.text.search import run_text_search, text_counts

# ------------------------------------------------------------------------- a toy shard function
# A shard file is JSON: a list of samples, each the list of concept ids found in it. "BOOM" raises,
# "CONFIG" raises a ConfigError, a missing file is reported in the stats (data-level error).


def toy_shard(shard: Shard):
    if not os.path.exists(shard.path):
        return {"records": 0, "error": f"missing shard: {shard.path}"}
    text = Path(shard.path).read_text()
    if text == "BOOM":
        raise RuntimeError("cannot parse")
    if text == "CONFIG":
        raise ConfigError("caption_column: no such column")
    samples = json.loads(text)
    for start in range(0, len(samples), 2):  # two samples per chunk
        rows, concepts = [], []
        for pos in range(start, min(start + 2, len(samples))):
            for c in samples[pos]:
                rows.append(pos)
                concepts.append(c)
        yield ShardChunk(make_sample_ids(shard.index, np.array(rows, dtype=np.int64)), np.array(concepts))
    return {"records": len(samples)}


def toy_result(shard: Shard) -> ShardResult:
    samples = json.loads(Path(shard.path).read_text())
    rows = [p for p, s in enumerate(samples) for _ in s]
    return ShardResult(
        make_sample_ids(shard.index, np.array(rows, dtype=np.int64)),
        np.array([c for s in samples for c in s]),
        {"records": len(samples)},
    )


def make_corpus(folder: Path, shards_samples):
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, samples in enumerate(shards_samples):
        path = folder / f"{i:05d}.json"
        if samples is not None:
            path.write_text(samples if isinstance(samples, str) else json.dumps(samples))
        shards.append(Shard(i, str(path)))
    return shards


CORPUS = [[[0, 1], [1], [1, 1, 2], []], [[2], [0]], [[1], [1]]]
EXPECTED = {0: 2, 1: 5, 2: 2}  # distinct samples per concept


def counts_dict(df):
    return {int(c): int(n) for c, n in zip(df["concept_id"], df["count"]) if n}


def hit_files(out: Path):
    return {p.name: pq.read_table(p).to_pydict() for p in sorted((out / "shards").glob("*.parquet"))}


# ------------------------------------------------------------------------------------------ tests


def test_run_merge_and_layout(tmp_path):
    shards = make_corpus(tmp_path / "c", CORPUS)
    out = tmp_path / "out"
    result = run_shards(shards, toy_shard, out, fingerprint={"v": 1}, n_concepts=4, executor="serial", progress=False)
    assert result.ok and result.processed == [0, 1, 2] and result.skipped == []
    for i in range(3):
        for suffix in ("hits.parquet", "stats.json", "done.json"):
            assert (out / "shards" / f"{i:06d}.{suffix}").exists()
    table = pq.read_table(out / "shards" / "000000.hits.parquet")
    assert table.schema.field("sample_id").type == "int64" and table.schema.field("concept_id").type == "int32"
    counts = merge_counts(out)
    assert counts["concept_id"].tolist() == [0, 1, 2, 3] and counts["count"].tolist() == [2, 5, 2, 0]
    assert str(counts["concept_id"].dtype) == "int32"
    report = run_report(out)
    assert report["ok"] == 3 and report["totals"]["records"] == 8 and not report["failed"]
    # the non-streaming form gives the same result
    out2 = tmp_path / "out2"
    run_shards(shards, toy_result, out2, fingerprint={"v": 1}, n_concepts=4, executor="serial", progress=False)
    assert counts_dict(merge_counts(out2)) == EXPECTED


def test_resume_skips_done_shards_and_recovers_from_a_crash(tmp_path):
    shards = make_corpus(tmp_path / "c", CORPUS)
    out = tmp_path / "out"
    run_shards(shards, toy_shard, out, fingerprint={"v": 1}, executor="serial", progress=False)
    before = hit_files(out)
    again = run_shards(shards, toy_shard, out, fingerprint={"v": 1}, executor="serial", progress=False)
    assert again.processed == [] and again.skipped == [0, 1, 2]
    # a crash while shard 1 was written: no completion record, a stale temporary file
    (out / "shards" / "000001.done.json").unlink()
    (out / "shards" / ".000001.hits.parquet.tmp-dead").write_bytes(b"partial")
    (out / "shards" / "000001.hits.parquet").write_bytes(b"garbage")
    resumed = run_shards(shards, toy_shard, out, fingerprint={"v": 1}, executor="serial", progress=False)
    assert resumed.processed == [1] and resumed.skipped == [0, 2]
    assert hit_files(out) == before
    assert not list((out / "shards").glob(".*tmp*"))
    assert counts_dict(merge_counts(out)) == EXPECTED


def test_interrupted_run_resumes_to_identical_results(tmp_path):
    shards = make_corpus(tmp_path / "c", CORPUS)
    reference = tmp_path / "ref"
    run_shards(shards, toy_shard, reference, fingerprint={"v": 1}, executor="serial", progress=False)

    calls = []

    def interrupted(shard):
        calls.append(shard.index)
        if len(calls) == 2:
            raise KeyboardInterrupt  # not an error of the shard: the run itself stops
        return toy_shard(shard)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_shards(shards, interrupted, out, fingerprint={"v": 1}, executor="serial", progress=False)
    with pytest.raises(IncompleteRunError, match="not done"):
        merge_counts(out)
    resumed = run_shards(shards, toy_shard, out, fingerprint={"v": 1}, executor="serial", progress=False)
    assert resumed.skipped == [0] and resumed.processed == [1, 2]
    assert hit_files(out) == hit_files(reference)


def test_changed_configuration_is_refused(tmp_path):
    shards = make_corpus(tmp_path / "c", CORPUS)
    out = tmp_path / "out"
    run_shards(shards, toy_shard, out, fingerprint={"concepts": "a"}, executor="serial", progress=False)
    with pytest.raises(ConfigError, match="concepts"):
        run_shards(shards, toy_shard, out, fingerprint={"concepts": "b"}, executor="serial", progress=False)
    # another shard list is no reason to refuse: each shard's record says what it was made from
    fewer = run_shards(shards[:2], toy_shard, out, fingerprint={"concepts": "a"}, executor="serial", progress=False)
    assert fewer.skipped == [0, 1] and fewer.processed == [] and not (out / "shards" / "000002.done.json").exists()
    more = run_shards(shards, toy_shard, out, fingerprint={"concepts": "a"}, executor="serial", progress=False)
    assert more.skipped == [0, 1] and more.processed == [2] and more.reasons == {2: "new"}
    redo = run_shards(
        shards, toy_shard, out, fingerprint={"concepts": "b"}, executor="serial", overwrite=True, progress=False
    )
    assert redo.processed == [0, 1, 2]
    with pytest.raises(ConfigError, match="executor"):
        run_shards(shards, toy_shard, out, fingerprint={"concepts": "b"}, executor="dask", progress=False)


def test_failures_are_recorded_reported_and_retried(tmp_path):
    shards = make_corpus(tmp_path / "c", [CORPUS[0], "BOOM", None, CORPUS[2]])
    out = tmp_path / "out"
    result = run_shards(shards, toy_shard, out, fingerprint={}, executor="serial", progress=False)
    assert set(result.failed) == {1, 2}
    assert "RuntimeError: cannot parse" in result.failed[1] and "missing shard" in result.failed[2]
    report = run_report(out)
    assert [f["shard"] for f in report["failed"]] == [1, 2] and report["ok"] == 2
    assert "traceback" in json.loads((out / "shards" / "000001.stats.json").read_text())
    with pytest.raises(IncompleteRunError, match="failed"):
        merge_counts(out)
    assert counts_dict(merge_counts(out, allow_failed=True)) == {0: 1, 1: 5, 2: 1}
    # fix the corpus: a rerun retries exactly the failed shards
    Path(shards[1].path).write_text(json.dumps(CORPUS[1]))
    Path(shards[2].path).write_text("[]")
    rerun = run_shards(shards, toy_shard, out, fingerprint={}, executor="serial", progress=False)
    assert rerun.processed == [1, 2] and rerun.ok
    assert counts_dict(merge_counts(out)) == EXPECTED


def test_config_error_aborts_the_run(tmp_path):
    shards = make_corpus(tmp_path / "c", [CORPUS[0], "CONFIG", CORPUS[1]])
    with pytest.raises(ConfigError, match="caption_column"):
        run_shards(shards, toy_shard, tmp_path / "out", fingerprint={}, executor="serial", progress=False)
    with pytest.raises(ConfigError, match="caption_column"):
        run_shards(shards, toy_shard, tmp_path / "out2", fingerprint={}, executor="process", workers=2, progress=False)


def test_process_pool_matches_serial(tmp_path):
    corpus = [[[i % 5, (i * 7) % 5] for i in range(k * 10)] for k in range(1, 6)]
    shards = make_corpus(tmp_path / "c", corpus)
    run_shards(shards, toy_shard, tmp_path / "serial", fingerprint={}, n_concepts=5, executor="serial", progress=False)
    result = run_shards(
        shards,
        toy_shard,
        tmp_path / "pool",
        fingerprint={},
        n_concepts=5,
        executor="process",
        workers=2,
        progress=False,
    )
    assert result.ok and result.processed == [0, 1, 2, 3, 4]
    assert hit_files(tmp_path / "pool") == hit_files(tmp_path / "serial")


def test_ray_executor(tmp_path):
    ray = pytest.importorskip("ray")
    captions = ["two dogs", "a hot dog", "mice", None, "a cat and a dog"] * 4
    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i:05d}.txt").write_text("\n".join(c or "" for c in captions[i::3]) + "\n")
    source = CaptionSource("txt", str(folder / "*.txt"))
    concepts = ["dog", "hot dog", "mouse", "cat"]
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        result = run_text_search(source, concepts, tmp_path / "ray", executor="ray", progress=False)
    finally:
        ray.shutdown()
    assert result.ok and result.processed == [0, 1, 2]
    run_text_search(source, concepts, tmp_path / "serial", executor="serial", progress=False)
    assert hit_files(tmp_path / "ray") == hit_files(tmp_path / "serial")
    assert counts_dict(text_counts(tmp_path / "ray")) == {0: 12, 1: 4, 2: 4, 3: 4}


def test_merge_memory_does_not_grow_with_the_number_of_shards(tmp_path):
    def peak(n_shards):
        shards = make_corpus(tmp_path / f"c{n_shards}", [[[j % 50, (j + 1) % 50] for j in range(20_000)]] * n_shards)
        out = tmp_path / f"o{n_shards}"
        run_shards(shards, toy_result, out, fingerprint={}, n_concepts=50, executor="serial", progress=False)
        tracemalloc.start()
        counts = merge_counts(out)
        size = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert counts["count"].sum() == 2 * 20_000 * n_shards
        return size

    assert peak(8) < 1.5 * peak(2)


# ----------------------------------------------------------------- the caption search, sharded


WORDS = ["dog", "dogs", "hot", "mice", "cat", "cats", "polar", "bear", "red", "car", "the", "a", "unicorn"]
CONCEPTS = ["dog", "hot dog", "mouse", "cat", "polar bear", "bear", "red car", "unicorn horn", "dragon"]


def write_txt_shards(folder: Path, captions, cuts):
    folder.mkdir(parents=True, exist_ok=True)
    bounds = [0, *sorted(cuts), len(captions)]
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        (folder / f"{i:05d}.txt").write_text("".join(f"{c}\n" for c in captions[lo:hi]))
    return CaptionSource("txt", str(folder / "*.txt"), batch_size=3)


def in_memory_counts(captions, mode, unknown_words=None):
    found = match_captions(captions, CONCEPTS, mode=mode, unknown_words=unknown_words)
    tally = Counter(name for names in found for name in names)
    return {i: tally[name] for i, name in enumerate(CONCEPTS) if tally[name]}


caption_lists = st.lists(st.lists(st.sampled_from(WORDS), max_size=6).map(" ".join), min_size=1, max_size=30)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    caption_lists,
    st.lists(st.integers(0, 30), max_size=4),
    st.randoms(),
    st.sampled_from([("phrase", None), ("bag", "zero"), ("bag", "drop")]),
)
def test_counts_invariant_under_shard_split_order_and_resume(captions, cuts, rnd, semantics):
    mode, unknown = semantics
    cuts = [min(c, len(captions)) for c in cuts]
    expected = in_memory_counts(captions, mode, unknown)
    shuffled = captions[:]
    rnd.shuffle(shuffled)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = write_txt_shards(tmp / "corpus", shuffled, cuts)
        out = tmp / "out"
        run_text_search(source, CONCEPTS, out, mode=mode, unknown_words=unknown, executor="serial", progress=False)
        assert counts_dict(text_counts(out)) == expected
        # resume after losing the completion records of some shards: identical files and counts
        before = hit_files(out)
        for done in sorted((out / "shards").glob("*.done.json")):
            if rnd.random() < 0.5:
                done.unlink()
        run_text_search(source, CONCEPTS, out, mode=mode, unknown_words=unknown, executor="serial", progress=False)
        assert hit_files(out) == before
        assert counts_dict(text_counts(out)) == expected


def test_drop_mode_uses_the_corpus_vocabulary_across_shards(tmp_path):
    # "unicorn" occurs only in shard 1, so in shard 0 "unicorn horn" must not be searched as "horn"
    # alone -- and "dragon" nowhere: with "drop" there is nothing left to search for it
    captions = ["a red horn", "unicorn", "a unicorn horn", "red horn"]
    concepts = ["unicorn horn", "red horn", "dragon"]
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "0.txt").write_text("a red horn\nred horn\n")
    (folder / "1.txt").write_text("unicorn\na unicorn horn\n")
    source = CaptionSource("txt", str(folder / "*.txt"))
    for unknown in ("drop", "zero"):
        run_text_search(
            source, concepts, tmp_path / unknown, mode="bag", unknown_words=unknown, executor="serial", progress=False
        )
        tally = Counter(
            n for names in match_captions(captions, concepts, mode="bag", unknown_words=unknown) for n in names
        )
        assert counts_dict(text_counts(tmp_path / unknown)) == {i: tally[c] for i, c in enumerate(concepts) if tally[c]}
    # a concept one of whose words is absent everywhere is searched with the others
    (folder / "1.txt").write_text("a blue horn\n")
    run_text_search(
        source, concepts, tmp_path / "drop2", mode="bag", unknown_words="drop", executor="serial", progress=False
    )
    assert counts_dict(text_counts(tmp_path / "drop2")) == {0: 3, 1: 2}


def test_text_search_end_to_end_webdataset(tmp_path):
    import io
    import tarfile

    def tar(path, items):
        with tarfile.open(path, "w") as t:
            for key, caption in items:
                for ext, data in (("jpg", b"\xff\xd8"), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))

    tar(tmp_path / "00000.tar", [("000000000", "Two mice"), ("000000001", "a hot-dog"), ("000000002", "")])
    tar(tmp_path / "00001.tar", [("000010000", "geese and a dog")])
    source = {"format": "wds", "paths": str(tmp_path / "{00000..00002}.tar")}  # shard 2 is missing
    result = run_text_search(
        source,
        ["mouse", "hot dog", "dog", "goose"],
        tmp_path / "out",
        keep_keys=True,
        executor="serial",
        progress=False,
    )
    assert result.failed == {2: f"missing shard: {tmp_path / '00002.tar'} does not exist"}
    counts = text_counts(tmp_path / "out", allow_failed=True)
    assert counts["count"].tolist() == [1, 1, 2, 1]
    keys = pq.read_table(tmp_path / "out" / "shards" / "000001.keys.parquet").to_pydict()
    assert keys == {"sample_id": [1 << 32], "key": ["000010000"]}
    report = run_report(tmp_path / "out")
    assert report["totals"]["records"] == 4 and report["totals"]["empty"] == 1
    assert report["failed"][0]["path"].endswith("00002.tar")
    with pytest.raises(IncompleteRunError):
        text_counts(tmp_path / "out")


def test_paper_mode_sharded_equals_in_memory(tmp_path):
    from test_textsearch import FakeNLP

    nlp = FakeNLP()
    captions = ["Two dogs ran near the mice", "a red car", "Paris at night", "the hot sun", "children and geese"]
    concepts = ["dog", "Mice", "red_car", "paris", "hot dog", "goose child", "unicorn"]
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "0.txt").write_text("\n".join(captions[:2]) + "\n")
    (folder / "1.txt").write_text("\n".join(captions[2:]) + "\n")
    source = CaptionSource("txt", str(folder / "*.txt"))
    run_text_search(source, concepts, tmp_path / "out", mode="paper", nlp=nlp, executor="serial", progress=False)
    tally = Counter(n for names in match_captions(captions, concepts, mode="paper", nlp=nlp) for n in names)
    assert counts_dict(text_counts(tmp_path / "out")) == {i: tally[c] for i, c in enumerate(concepts) if tally[c]}
    assert counts_dict(text_counts(tmp_path / "out")) == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1}


# ------------------------------------------------------------------ results keyed by input content


def text_run(folder: Path, out: Path, concepts=("dog", "cat", "sofa")):
    source = CaptionSource("txt", str(folder / "*.txt"))
    result = run_text_search(source, list(concepts), out, executor="serial", overwrite=True, progress=False)
    return result, counts_dict(text_counts(out)), run_report(out)


def test_appended_caption_is_counted_issue_example(tmp_path):
    """Issue 10, case 1: append 'a cat and a dog' to a one-caption corpus; the counts must move."""
    folder = tmp_path / "c"
    folder.mkdir()
    shard = folder / "00000.txt"
    shard.write_text("A dog on a sofa\n")
    first, counts, report = text_run(folder, tmp_path / "out")
    assert counts == {0: 1, 2: 1} and report["totals"]["records"] == 1
    with open(shard, "a") as fh:
        fh.write("a cat and a dog\n")
    again, counts, report = text_run(folder, tmp_path / "out")
    assert again.processed == [0] and again.reasons == {0: "input changed"}
    assert counts == {0: 2, 1: 1, 2: 1} and report["totals"]["records"] == 2
    assert report["last_run"] == {"reused": 0, "rerun": 1, "rerun_reasons": {"input changed": 1}}


def test_edit_append_replace_rename_give_a_clean_runs_counts(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    lines = ["a dog", "a cat on a sofa", "two dogs", "a sofa", "cats and dogs", "nothing here"]
    for i in range(5):
        (folder / f"a{i}.txt").write_text("\n".join(lines[i:] + lines[:i]) + "\n")
    out = tmp_path / "out"
    first, _, _ = text_run(folder, out)
    assert first.processed == [0, 1, 2, 3, 4]
    # edit in place keeping size and mtime (only the content hash can tell), append, replace, rename
    a0 = folder / "a0.txt"
    stat = a0.stat()
    a0.write_text(a0.read_text().replace("a dog", "a cat", 1))
    os.utime(a0, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with open(folder / "a1.txt", "a") as fh:
        fh.write("a dog and a cat\n")
    replacement = tmp_path / "new.txt"
    replacement.write_text("sofa\nsofa\n")
    os.replace(replacement, folder / "a2.txt")
    os.rename(folder / "a4.txt", folder / "a5.txt")
    resumed, counts, report = text_run(folder, out)
    assert resumed.skipped == [3] and resumed.processed == [0, 1, 2, 4]
    assert resumed.reasons == {0: "input changed", 1: "input changed", 2: "input changed", 4: "path changed"}
    assert report["last_run"]["reused"] == 1 and report["last_run"]["rerun"] == 4
    clean, clean_counts, clean_report = text_run(folder, tmp_path / "clean")
    assert counts == clean_counts and report["totals"] == clean_report["totals"]
    assert hit_files(out) == hit_files(tmp_path / "clean")
    # a removed shard leaves the list and its records go with it
    (folder / "a5.txt").unlink()
    fewer, counts, _ = text_run(folder, out)
    assert fewer.processed == [] and not list((out / "shards").glob("000004.*"))
    assert counts == text_run(folder, tmp_path / "clean2")[1]


# ---------------------------------------------------- the Ray executor's logic, on an in-process fake Ray
# A real local Ray does not start in reasonable time on a small shared machine; test_ray_executor and
# test_imagesearch.py::test_ray_actor_pool run the real one where it does.


class PreparedToyShard:
    """A shard function with per-process state: ``prepare`` notes each call in a log file."""

    def __init__(self, log: Path) -> None:
        self.log = str(log)

    def prepare(self) -> None:
        with open(self.log, "a") as fh:
            fh.write("prepared\n")

    def __call__(self, shard: Shard):
        return toy_shard(shard)


def fake_ray(monkeypatch, cpus: float = 2.0, gpus: float = 0.0) -> dict:
    import pickle
    import sys
    import types

    seen: dict = {"options": [], "killed": 0}

    class RayTaskError(Exception):
        def __init__(self, cause):
            super().__init__(str(cause))
            self.cause = cause

    class Handle:
        def __init__(self, obj):
            self.obj = obj

        def __getattr__(self, name):
            return types.SimpleNamespace(remote=getattr(self.obj, name))

    def remote(**options):
        seen["options"].append(options)
        return lambda cls: types.SimpleNamespace(remote=lambda *args: Handle(cls(*args)))

    class ActorPool:
        def __init__(self, actors):
            self.actors = actors

        def map_unordered(self, fn, values):
            for i, value in enumerate(values):
                try:
                    yield fn(self.actors[i % len(self.actors)], value)
                except Exception as err:
                    raise RayTaskError(err) from err

    ray = types.ModuleType("ray")
    ray.is_initialized = lambda: True
    ray.cluster_resources = lambda: {"CPU": cpus, "GPU": gpus}
    ray.put = lambda obj: pickle.loads(pickle.dumps(obj))  # what travels must pickle
    ray.remote = remote
    ray.kill = lambda actor: seen.__setitem__("killed", seen["killed"] + 1)
    ray.exceptions = types.SimpleNamespace(RayTaskError=RayTaskError, RayActorError=RuntimeError)
    util = types.ModuleType("ray.util")
    util.ActorPool = ActorPool
    ray.util = util
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.util", util)
    return seen


def test_ray_actor_executor_prepares_once_per_actor_and_matches_serial(tmp_path, monkeypatch):
    corpus = [[[i % 5, (i * 3) % 5] for i in range(k * 4)] for k in range(1, 6)]
    shards = make_corpus(tmp_path / "c", corpus)
    seen = fake_ray(monkeypatch, cpus=2.0)
    fn = PreparedToyShard(tmp_path / "log")
    result = run_shards(shards, fn, tmp_path / "ray", fingerprint={}, n_concepts=5, executor="ray", progress=False)
    assert result.ok and result.processed == [0, 1, 2, 3, 4]
    assert Path(fn.log).read_text().split() == ["prepared"] * 2  # one actor per CPU, each prepared once
    assert seen["options"] == [{"num_cpus": 1.0, "num_gpus": 0.0, "max_restarts": 0}] and seen["killed"] == 2
    run_shards(shards, toy_shard, tmp_path / "serial", fingerprint={}, n_concepts=5, executor="serial", progress=False)
    assert hit_files(tmp_path / "ray") == hit_files(tmp_path / "serial")
    # resume rules are the runner's, whatever the executor
    again = run_shards(shards, fn, tmp_path / "ray", fingerprint={}, n_concepts=5, executor="ray", progress=False)
    assert again.processed == [] and len(Path(fn.log).read_text().split()) == 2
    # GPUs: one actor per GPU unless told otherwise
    seen = fake_ray(monkeypatch, cpus=16.0, gpus=3.0)
    run_shards(shards, fn, tmp_path / "gpu", fingerprint={}, executor="ray", progress=False)
    assert seen["options"][0]["num_gpus"] == 1.0 and seen["killed"] == 3


def test_ray_actor_executor_stops_on_a_config_error(tmp_path, monkeypatch):
    shards = make_corpus(tmp_path / "c", [CORPUS[0], "CONFIG"])
    fake_ray(monkeypatch)
    with pytest.raises(ConfigError, match="caption_column"):
        run_shards(shards, toy_shard, tmp_path / "out", fingerprint={}, executor="ray", progress=False)
    with pytest.raises(ConfigError, match="ray_num_actors"):
        run_shards(shards, toy_shard, tmp_path / "o2", fingerprint={}, executor="ray", ray_num_actors=0, progress=False)
