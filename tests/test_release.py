"""Importing the authors' release: manifest, local copy, verification and failure modes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import urllib.error
from pathlib import Path

import pytest

from helpers.release import importer as release
from helpers.release.importer import LOCAL_COPY_ENV, ManifestEntry, ReleaseError

EXPECTED_MISSING_OPTIONAL = {
    "gpt_descriptions/birdsnap_descriptions.json",
    "gpt_descriptions/caltech256_descriptions.json",
    "gpt_descriptions/imagenet_descriptions.json",
    "gpt_descriptions/rampp_overall.json",
    "gpt_descriptions/retrieval_descriptions.json",
    "gpt_descriptions/sun397_descriptions.json",
    "t2i_evaluations/t2i_exp_aesthetics.json",
    "t2i_evaluations/t2i_exp_clip.json",
    "t2i_evaluations/t2i_max_aesthetics.json",
    "t2i_evaluations/t2i_max_clip.json",
}


@pytest.fixture(autouse=True)
def _no_local_copy_env(monkeypatch):
    """A user's FDP_RELEASE_LOCAL_COPY would override the local_copy these tests pass explicitly."""
    monkeypatch.delenv(LOCAL_COPY_ENV, raising=False)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(path: str, data: bytes | None, required: bool = True, checksum: bool = True) -> ManifestEntry:
    return ManifestEntry(
        path=path,
        sha256=_sha(data) if (checksum and data is not None) else "",
        size=len(data) if data is not None else None,
        required=required,
    )


def _write_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def _fake_release(tmp_path: Path, monkeypatch, entries: list[ManifestEntry], files: dict[str, bytes]) -> Path:
    """A local copy holding ``files`` and a manifest listing ``entries``."""
    monkeypatch.setattr(release, "load_manifest", lambda: list(entries))
    return _write_files(tmp_path / "copy", files)


def _import(dest: Path, local_copy, **kw):
    kw.setdefault("repo", "owner/repo")
    kw.setdefault("commit", "0" * 40)
    return release.import_release(dest, local_copy=local_copy, workers=2, progress=False, **kw)


def _assert_nothing_written(dest: Path):
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".partial").exists(), "staging folder left behind"


GOOD_JSON = b'{"cat": 3, "dog": 0}'
LICENSE = b"MIT License\n"


# --- manifest ---------------------------------------------------------------------------------------------


def test_manifest_lists_896_files():
    assert len(release.load_manifest()) == 896


def test_manifest_paths_are_unique_relative_posix_paths():
    paths = [e.path for e in release.load_manifest()]
    assert len(set(paths)) == len(paths)
    assert all(not p.startswith("/") and "\\" not in p and ".." not in p.split("/") for p in paths)


def test_manifest_required_and_optional_split():
    manifest = release.load_manifest()
    required = [e for e in manifest if e.required]
    optional = [e for e in manifest if not e.required]
    assert len(required) == 885
    assert len(optional) == 11


def test_every_required_manifest_file_has_a_sha256_and_size():
    for entry in release.load_manifest():
        if entry.required:
            assert len(entry.sha256) == 64 and all(c in "0123456789abcdef" for c in entry.sha256), entry.path
            assert entry.size is not None and entry.size > 0, entry.path


def test_optional_files_without_checksum_are_the_ten_missing_upstream():
    unknown = {e.path for e in release.load_manifest() if not e.required and not e.sha256}
    assert unknown == EXPECTED_MISSING_OPTIONAL


def test_manifest_includes_the_derived_openclip_table_as_optional():
    (entry,) = [e for e in release.load_manifest() if e.path == release.EXTRA_IMAGENET_FILE]
    assert not entry.required and entry.sha256


# --- import of the real release from the local copy -------------------------------------------------------


def test_import_from_local_copy_succeeds_and_reports_missing_optional(release_copy, params, tmp_path):
    dest = tmp_path / "release"
    report = _import(dest, release_copy, repo=params["release"]["repo"], commit=params["release"]["commit"])
    assert set(report.missing_optional) == EXPECTED_MISSING_OPTIONAL
    assert len(report.missing_optional) == 10
    assert report.unverified == []
    assert len(report.copied) == 896 - 10
    assert report.commit == params["release"]["commit"]
    # The destination holds exactly the copied files plus the report, and no staging folder remains.
    on_disk = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert on_disk == set(report.copied) | {release.REPORT_NAME}
    assert not (tmp_path / "release.partial").exists()
    saved = release.read_import_report(dest)
    assert saved["n_files"] == 886
    assert set(saved["missing_optional"]) == EXPECTED_MISSING_OPTIONAL
    assert saved["commit"] == params["release"]["commit"]


def test_imported_files_match_the_manifest_checksums(imported_release):
    for entry in release.load_manifest():
        path = imported_release / entry.path
        if entry.path in EXPECTED_MISSING_OPTIONAL:
            assert not path.exists()
        elif entry.sha256:
            assert _sha(path.read_bytes()) == entry.sha256, entry.path


def test_released_openclip_table_covers_the_model_map(imported_release):
    from importlib import resources

    model_map = resources.files("helpers.data").joinpath("openclip_imagenet_map.csv").read_text()
    mapped = {row["model_key"] for row in csv.DictReader(io.StringIO(model_map))}
    table = (imported_release / release.EXTRA_IMAGENET_FILE).read_text()
    keys = {row["model_key"] for row in csv.DictReader(io.StringIO(table))}
    assert keys == mapped


# --- resolve_local_copy -----------------------------------------------------------------------------------


def test_resolve_local_copy_none_without_param_or_env():
    assert release.resolve_local_copy(None) is None
    assert release.resolve_local_copy("") is None


def test_resolve_local_copy_uses_param(tmp_path):
    assert release.resolve_local_copy(tmp_path) == tmp_path
    assert release.resolve_local_copy(str(tmp_path)) == tmp_path


def test_resolve_local_copy_env_var_beats_param(tmp_path, monkeypatch):
    from_env, from_param = tmp_path / "env", tmp_path / "param"
    from_env.mkdir()
    from_param.mkdir()
    monkeypatch.setenv(LOCAL_COPY_ENV, str(from_env))
    assert release.resolve_local_copy(from_param) == from_env
    assert release.resolve_local_copy(None) == from_env


def test_resolve_local_copy_rejects_missing_folder_naming_its_origin(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    with pytest.raises(ReleaseError, match="params.yaml release.local_copy") as err:
        release.resolve_local_copy(missing)
    assert str(missing) in str(err.value)
    monkeypatch.setenv(LOCAL_COPY_ENV, str(missing))
    with pytest.raises(ReleaseError, match=r"\$FDP_RELEASE_LOCAL_COPY"):
        release.resolve_local_copy(None)


def test_import_uses_env_var_over_local_copy_param(tmp_path, monkeypatch):
    entries = [_entry("LICENSE", LICENSE)]
    monkeypatch.setattr(release, "load_manifest", lambda: entries)
    good = _write_files(tmp_path / "good", {"LICENSE": LICENSE})
    bad = _write_files(tmp_path / "bad", {"LICENSE": b"tampered"})
    monkeypatch.setenv(LOCAL_COPY_ENV, str(good))
    report = _import(tmp_path / "dest", bad)
    assert report.source == str(good)
    assert (tmp_path / "dest" / "LICENSE").read_bytes() == LICENSE


# --- verification failures on a small fake release --------------------------------------------------------


def test_fake_release_with_valid_files_imports(tmp_path, monkeypatch):
    entries = [
        _entry("LICENSE", LICENSE),
        _entry("search_counts/a_cc3m_lemmatized_search_counts.json", GOOD_JSON),
        _entry("gpt_descriptions/missing.json", None, required=False),
        _entry("t2i_evaluations/unknown_checksum.json", b"[1, 2]", required=False, checksum=False),
    ]
    files = {
        "LICENSE": LICENSE,
        "search_counts/a_cc3m_lemmatized_search_counts.json": GOOD_JSON,
        "t2i_evaluations/unknown_checksum.json": b"[1, 2]",
    }
    copy = _fake_release(tmp_path, monkeypatch, entries, files)
    report = _import(tmp_path / "dest", copy)
    assert report.missing_optional == ["gpt_descriptions/missing.json"]
    assert report.unverified == ["t2i_evaluations/unknown_checksum.json"]
    assert sorted(report.copied) == sorted(files)
    for rel, data in files.items():
        assert (tmp_path / "dest" / rel).read_bytes() == data


def test_checksum_mismatch_is_refused_naming_the_file(tmp_path, monkeypatch):
    path = "search_counts/a_cc3m_lemmatized_search_counts.json"
    entries = [_entry("LICENSE", LICENSE), _entry(path, GOOD_JSON)]
    copy = _fake_release(tmp_path, monkeypatch, entries, {"LICENSE": LICENSE, path: b'{"cat": 4, "dog": 0}'})
    dest = tmp_path / "dest"
    with pytest.raises(ReleaseError, match="Checksum mismatch") as err:
        _import(dest, copy)
    assert path in str(err.value)
    _assert_nothing_written(dest)


def test_corrupt_json_is_refused_naming_the_file(tmp_path, monkeypatch):
    path = "zero_shot_evaluations/cifar10_class_results.json"
    corrupt = b'{"model": {"full": 1.0, '  # truncated
    # The manifest checksum matches the corrupt bytes, so only the JSON parse can catch it.
    entries = [_entry("LICENSE", LICENSE), _entry(path, corrupt)]
    copy = _fake_release(tmp_path, monkeypatch, entries, {"LICENSE": LICENSE, path: corrupt})
    dest = tmp_path / "dest"
    with pytest.raises(ReleaseError, match="Corrupt JSON") as err:
        _import(dest, copy)
    assert path in str(err.value)
    _assert_nothing_written(dest)


def test_non_utf8_json_is_refused_as_corrupt(tmp_path, monkeypatch):
    path = "t2i_evaluations/bad.json"
    corrupt = b'{"a": "\xff\xfe"}'
    entries = [_entry(path, corrupt, required=False, checksum=False)]
    copy = _fake_release(tmp_path, monkeypatch, entries, {path: corrupt})
    with pytest.raises(ReleaseError, match="Corrupt JSON") as err:
        _import(tmp_path / "dest", copy)
    assert path in str(err.value)


def test_corrupt_optional_json_without_checksum_is_still_refused(tmp_path, monkeypatch):
    path = "gpt_descriptions/birdsnap_descriptions.json"
    entries = [_entry(path, b"", required=False, checksum=False)]
    copy = _fake_release(tmp_path, monkeypatch, entries, {path: b"not json"})
    with pytest.raises(ReleaseError, match="Corrupt JSON") as err:
        _import(tmp_path / "dest", copy)
    assert path in str(err.value)


def test_missing_required_file_is_refused_naming_it(tmp_path, monkeypatch):
    path = "search_counts/a_cc3m_lemmatized_search_counts.json"
    entries = [_entry("LICENSE", LICENSE), _entry(path, GOOD_JSON)]
    copy = _fake_release(tmp_path, monkeypatch, entries, {"LICENSE": LICENSE})
    dest = tmp_path / "dest"
    with pytest.raises(ReleaseError, match="Required release file") as err:
        _import(dest, copy)
    assert path in str(err.value)
    assert str(copy) in str(err.value)
    _assert_nothing_written(dest)


def test_missing_optional_file_is_tolerated_and_reported(tmp_path, monkeypatch):
    entries = [_entry("LICENSE", LICENSE), _entry("extra/openclip_imagenet_accuracy.csv", b"a,b\n", required=False)]
    copy = _fake_release(tmp_path, monkeypatch, entries, {"LICENSE": LICENSE})
    report = _import(tmp_path / "dest", copy)
    assert report.missing_optional == ["extra/openclip_imagenet_accuracy.csv"]
    assert release.read_import_report(tmp_path / "dest")["missing_optional"] == ["extra/openclip_imagenet_accuracy.csv"]
    assert not (tmp_path / "dest" / "extra").exists()


def test_failed_import_keeps_previous_destination_intact(tmp_path, monkeypatch):
    path = "search_counts/a_cc3m_lemmatized_search_counts.json"
    dest = tmp_path / "dest"
    _write_files(dest, {"OLD": b"previous good import"})
    entries = [_entry("LICENSE", LICENSE), _entry(path, GOOD_JSON)]
    copy = _fake_release(tmp_path, monkeypatch, entries, {"LICENSE": LICENSE, path: b"{}"})
    with pytest.raises(ReleaseError):
        _import(dest, copy)
    assert sorted(p.name for p in dest.iterdir()) == ["OLD"]
    assert (dest / "OLD").read_bytes() == b"previous good import"
    assert not (tmp_path / "dest.partial").exists()


def test_a_copy_damaged_while_staged_leaves_the_good_release_intact(tmp_path, monkeypatch):
    """Issue 10, case 5: a bad copy must never cost the good data/raw/release."""
    dest = tmp_path / "dest"
    _write_files(dest, {"LICENSE": LICENSE, "OLD": b"previous good import"})
    copy = _fake_release(tmp_path, monkeypatch, [_entry("LICENSE", LICENSE)], {"LICENSE": LICENSE})
    real_write = Path.write_bytes

    def short_write(self, data):  # a full disk: the staged file is cut short
        return real_write(self, data[: len(data) // 2])

    monkeypatch.setattr(Path, "write_bytes", short_write)
    with pytest.raises(ReleaseError, match="LICENSE differs from the manifest checksum"):
        _import(dest, copy)
    assert sorted(p.name for p in dest.iterdir()) == ["LICENSE", "OLD"] and (dest / "LICENSE").read_bytes() == LICENSE
    assert not (tmp_path / "dest.partial").exists() and not (tmp_path / "dest.previous").exists()


def test_swap_keeps_the_old_copy_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    dest, staging = tmp_path / "dest", tmp_path / "dest.partial"
    _write_files(dest, {"OLD": b"good"})
    _write_files(staging, {"NEW": b"new"})
    real_rename = Path.rename

    def failing_rename(self, target):
        if self == staging:
            raise OSError("disk gone")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="disk gone"):
        release.swap_in(staging, dest)
    assert (dest / "OLD").read_bytes() == b"good" and not (tmp_path / "dest.previous").exists()
    # a crash between the two renames leaves only <dest>.previous: the next swap restores it first
    monkeypatch.setattr(Path, "rename", real_rename)
    dest.rename(tmp_path / "dest.previous")
    release.swap_in(staging, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["NEW"] and not (tmp_path / "dest.previous").exists()


def test_dvc_keeps_the_release_folder_while_the_import_runs():
    """dvc repro deletes a stage's outputs before its command runs unless they are ``persist``."""
    import yaml

    stage = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]["import_release"]
    outs = {next(iter(o)) if isinstance(o, dict) else o: o for o in stage["outs"]}
    assert outs["data/raw/release"]["data/raw/release"]["persist"] is True


def test_successful_import_replaces_previous_destination(tmp_path, monkeypatch):
    dest = tmp_path / "dest"
    _write_files(dest, {"STALE": b"x"})
    copy = _fake_release(tmp_path, monkeypatch, [_entry("LICENSE", LICENSE)], {"LICENSE": LICENSE})
    _import(dest, copy)
    assert sorted(p.name for p in dest.iterdir()) == sorted(["LICENSE", release.REPORT_NAME])


def test_corrupting_one_real_release_file_is_refused(release_copy, tmp_path, monkeypatch):
    """A small copy of real release files (real checksums) with one JSON file damaged."""
    manifest = {e.path: e for e in release.load_manifest()}
    chosen = [
        "LICENSE",
        "misalignment_metrics/cc3m_misalignment_degree.json",
        "search_counts/cifar10_cc3m_lemmatized_search_counts.json",
    ]
    copy = tmp_path / "copy"
    for rel in chosen:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(release_copy / rel, copy / rel)
    monkeypatch.setattr(release, "load_manifest", lambda: [manifest[p] for p in chosen])
    assert len(_import(tmp_path / "ok", copy).copied) == 3  # intact copy imports

    damaged = copy / chosen[2]
    damaged.write_bytes(damaged.read_bytes()[:-5])  # truncated JSON
    with pytest.raises(ReleaseError) as err:
        _import(tmp_path / "dest", copy)
    assert chosen[2] in str(err.value)
    _assert_nothing_written(tmp_path / "dest")


# --- no local copy, no network ----------------------------------------------------------------------------


def _refuse_network(*args, **kwargs):
    raise urllib.error.URLError("network is unreachable (test)")


def test_no_network_without_local_copy_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(release.urllib.request, "urlopen", _refuse_network)
    dest = tmp_path / "dest"
    with pytest.raises(ReleaseError) as err:
        _import(dest, None, repo="bethgelab/frequency_determines_performance", commit="abc123")
    message = str(err.value)
    assert LOCAL_COPY_ENV in message
    assert "release.local_copy" in message
    assert "abc123" in message
    assert isinstance(err.value.__cause__, urllib.error.URLError)
    _assert_nothing_written(dest)


def test_no_network_via_download_helper_leaves_previous_destination(tmp_path, monkeypatch):
    monkeypatch.setattr(release, "_download", _refuse_network)
    dest = tmp_path / "dest"
    _write_files(dest, {"OLD": b"keep"})
    with pytest.raises(ReleaseError, match=LOCAL_COPY_ENV):
        _import(dest, None)
    assert (dest / "OLD").read_bytes() == b"keep"
    assert not (tmp_path / "dest.partial").exists()


def test_download_timeout_is_reported_as_no_network(tmp_path, monkeypatch):
    def timeout(*args, **kwargs):
        raise TimeoutError("timed out")

    monkeypatch.setattr(release, "_download", timeout)
    with pytest.raises(ReleaseError, match="release.local_copy"):
        _import(tmp_path / "dest", None)


def test_download_builds_pinned_urls_and_treats_404_as_missing(tmp_path, monkeypatch):
    entries = [_entry("LICENSE", LICENSE), _entry("gpt_descriptions/x.json", None, required=False)]
    monkeypatch.setattr(release, "load_manifest", lambda: entries)
    seen = []

    def fake_download(url, timeout=60.0):
        seen.append(url)
        return LICENSE if url.endswith("/LICENSE") else None

    monkeypatch.setattr(release, "_download", fake_download)
    report = _import(tmp_path / "dest", None, repo="o/r", commit="c0ffee")
    assert sorted(seen) == [
        "https://raw.githubusercontent.com/o/r/c0ffee/LICENSE",
        "https://raw.githubusercontent.com/o/r/c0ffee/gpt_descriptions/x.json",
    ]
    assert report.source == "github.com/o/r@c0ffee"
    assert report.missing_optional == ["gpt_descriptions/x.json"]


def test_download_helper_maps_http_404_to_none_and_reraises_others(monkeypatch):
    def raise_http(code):
        def urlopen(url, timeout=None):
            raise urllib.error.HTTPError(url, code, "error", hdrs=None, fp=None)

        return urlopen

    monkeypatch.setattr(release.urllib.request, "urlopen", raise_http(404))
    assert release._download("https://example.invalid/x") is None
    monkeypatch.setattr(release.urllib.request, "urlopen", raise_http(500))
    with pytest.raises(urllib.error.HTTPError):
        release._download("https://example.invalid/x")


def test_required_file_missing_upstream_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(release, "load_manifest", lambda: [_entry("LICENSE", LICENSE)])
    monkeypatch.setattr(release, "_download", lambda url, timeout=60.0: None)
    with pytest.raises(ReleaseError, match="Required release file LICENSE"):
        _import(tmp_path / "dest", None)


# --- open_clip ImageNet table -----------------------------------------------------------------------------

RESULTS_CSV = (
    "name,pretrained,ImageNet 1k,Cars\n"
    "RN50,openai,0.59816,0.5\n"
    "ViT-B-32,laion2b_s34b_b79k,0.6,0.9\n"
    "ViT-L-14,datacomp_xl_s13b_b90k,0.79209,0.9\n"
)


def test_derive_openclip_imagenet_table_formats_two_decimals():
    model_map = (
        "model_key,openclip_name,openclip_pretrained\n"
        "backboneRN50_pretrainedopenai,RN50,openai\n"
        "backboneViT-B-32_pretrainedlaion2b,ViT-B-32,laion2b_s34b_b79k\n"
        "backboneViT-L-14_pretraineddatacomp,ViT-L-14,datacomp_xl_s13b_b90k\n"
    )
    out = release.derive_openclip_imagenet_table(RESULTS_CSV, model_map).decode()
    source = "open_clip docs/openclip_classification_results.csv"
    assert out.splitlines() == [
        "model_key,imagenet_top1,source",
        f"backboneRN50_pretrainedopenai,59.82,{source}",
        f"backboneViT-B-32_pretrainedlaion2b,60.00,{source}",
        f"backboneViT-L-14_pretraineddatacomp,79.21,{source}",
    ]


def test_derive_openclip_imagenet_table_missing_row_is_refused():
    model_map = "model_key,openclip_name,openclip_pretrained\nmy_model,RN50,yfcc15m\n"
    with pytest.raises(ReleaseError, match="my_model") as err:
        release.derive_openclip_imagenet_table(RESULTS_CSV, model_map)
    assert "yfcc15m" in str(err.value)


def test_openclip_results_with_wrong_checksum_are_refused(monkeypatch):
    monkeypatch.setattr(release, "_download", lambda url, timeout=60.0: RESULTS_CSV.encode())
    openclip = {"repo": "mlfoundations/open_clip", "commit": "abc", "results_path": "docs/r.csv", "sha256": "0" * 64}
    with pytest.raises(ReleaseError, match="Checksum mismatch for open_clip"):
        release._fetch_extra_from_openclip(openclip)


def test_openclip_table_is_derived_when_downloading(monkeypatch):
    """With the checksum of the fake results table, the derived table covers the packaged model map."""
    from importlib import resources

    model_map = resources.files("helpers.data").joinpath("openclip_imagenet_map.csv").read_text()
    rows = [r for r in csv.DictReader(io.StringIO(model_map))]
    results = "name,pretrained,ImageNet 1k\n" + "".join(
        f"{r['openclip_name']},{r['openclip_pretrained']},0.5\n" for r in rows
    )
    monkeypatch.setattr(release, "_download", lambda url, timeout=60.0: results.encode())
    openclip = {"repo": "o/c", "commit": "abc", "results_path": "docs/r.csv", "sha256": _sha(results.encode())}
    table = release._fetch_extra_from_openclip(openclip).decode()
    derived = list(csv.DictReader(io.StringIO(table)))
    assert [d["model_key"] for d in derived] == [r["model_key"] for r in rows]
    assert {d["imagenet_top1"] for d in derived} == {"50.00"}


# --- small helpers ----------------------------------------------------------------------------------------


def test_verify_bytes_accepts_non_json_without_parsing():
    release.verify_bytes(_entry("ram_model/ram/data/list.txt", b"not json {"), b"not json {")


def test_import_report_to_dict_sorts_lists():
    report = release.ImportReport(
        source="s", commit="c", copied=["a", "b"], missing_optional=["z", "y"], unverified=["q", "p"]
    )
    assert report.to_dict() == {
        "source": "s",
        "commit": "c",
        "n_files": 2,
        "missing_optional": ["y", "z"],
        "unverified_optional": ["p", "q"],
    }
    json.dumps(report.to_dict())
