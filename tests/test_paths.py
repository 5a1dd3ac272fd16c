"""helpers.paths: finding the project root and redirecting outputs with FDP_WORKDIR."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import paths


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("FDP_ROOT", raising=False)
    monkeypatch.delenv("FDP_WORKDIR", raising=False)
    return monkeypatch


def _markers(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for marker in paths.ROOT_MARKERS:
        (folder / marker).write_text("")
    return folder


def test_project_root_found_from_the_notebooks_subfolder(clean_env, repo_root):
    clean_env.chdir(repo_root / "notebooks")
    assert paths.project_root() == repo_root.resolve()


def test_project_root_walks_up_from_an_explicit_start(clean_env, tmp_path):
    root = _markers(tmp_path / "proj")
    deep = root / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert paths.project_root(deep) == root.resolve()


def test_project_root_needs_both_markers(clean_env, tmp_path, repo_root):
    half = tmp_path / "half"
    half.mkdir()
    (half / "dvc.yaml").write_text("")  # no params.yaml: not a root; falls back to the source checkout
    assert paths.project_root(half) == repo_root.resolve()


def test_fdp_root_overrides_the_search(clean_env, tmp_path, repo_root):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean_env.setenv("FDP_ROOT", str(elsewhere))
    clean_env.chdir(repo_root)
    assert paths.project_root() == elsewhere.resolve()
    assert paths.params_file() == elsewhere.resolve() / "params.yaml"
    assert paths.notebooks_dir() == elsewhere.resolve() / "notebooks"
    assert paths.reports_dir() == elsewhere.resolve() / "reports"  # workdir defaults to the root


def test_without_fdp_workdir_outputs_live_under_the_root(clean_env, repo_root):
    clean_env.chdir(repo_root)
    root = repo_root.resolve()
    assert paths.workdir() == root
    assert paths.raw_dir() == root / "data" / "raw"
    assert paths.reports_dir() == root / "reports"


def test_fdp_workdir_redirects_data_and_reports_but_not_inputs(clean_env, tmp_path, repo_root):
    work = tmp_path / "work"
    clean_env.setenv("FDP_WORKDIR", str(work))
    clean_env.chdir(repo_root / "notebooks")
    w, root = work.resolve(), repo_root.resolve()

    assert paths.workdir() == w
    assert paths.raw_dir() == w / "data" / "raw"
    assert paths.interim_dir() == w / "data" / "interim"
    assert paths.processed_dir() == w / "data" / "processed"
    assert paths.release_dir() == w / "data" / "raw" / "release"
    assert paths.release_tables_dir() == w / "data" / "processed" / "release"
    assert paths.reports_dir() == w / "reports"
    assert paths.figures_dir() == w / "reports" / "figures"
    assert paths.figures_dir("long_tail") == w / "reports" / "figures" / "long_tail"
    assert paths.tables_dir() == w / "reports" / "tables"
    assert paths.plots_data_dir() == w / "reports" / "plots"

    # Inputs stay in the project.
    assert paths.project_root() == root
    assert paths.notebooks_dir() == root / "notebooks"
    assert paths.params_file() == root / "params.yaml"
    assert not work.exists()  # resolving paths creates nothing


def test_ensure_creates_nested_folders_and_is_idempotent(tmp_path):
    target = tmp_path / "x" / "y" / "z"
    assert paths.ensure(target) == target and target.is_dir()
    assert paths.ensure(target) == target


def test_no_markers_and_no_package_fallback_raises_file_not_found(clean_env, tmp_path):
    nowhere = tmp_path / "no" / "markers" / "here"
    nowhere.mkdir(parents=True)
    if any(all((f / m).exists() for m in paths.ROOT_MARKERS) for f in (nowhere, *nowhere.parents)):
        pytest.skip("a folder above the temporary directory looks like a project root")
    fake_module = tmp_path / "site" / "pkg" / "helpers" / "paths.py"  # parents[2] has no markers
    clean_env.setattr(paths, "__file__", str(fake_module))
    clean_env.chdir(nowhere)
    with pytest.raises(FileNotFoundError, match="FDP_ROOT") as err:
        paths.project_root()
    assert str(nowhere.resolve()) in str(err.value)


def test_package_fallback_finds_the_source_checkout_from_an_unrelated_folder(clean_env, tmp_path, repo_root):
    nowhere = tmp_path / "unrelated"
    nowhere.mkdir()
    if any(all((f / m).exists() for m in paths.ROOT_MARKERS) for f in (nowhere, *nowhere.parents)):
        pytest.skip("a folder above the temporary directory looks like a project root")
    clean_env.chdir(nowhere)
    assert paths.project_root() == repo_root.resolve()


def test_resolve_takes_relative_params_paths_against_the_work_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FDP_WORKDIR", str(tmp_path))
    assert paths.resolve("data/x.pt") == str(tmp_path / "data/x.pt")
    assert paths.resolve(["a", "/abs/b"], tmp_path / "base") == [str(tmp_path / "base" / "a"), "/abs/b"]
    assert paths.resolve("~/m.pt").startswith(str(Path.home()))
    assert paths.resolve(None) is None
