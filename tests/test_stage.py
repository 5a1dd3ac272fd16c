"""helpers.stage and the stage graph: dvc.yaml, params.yaml and the notebooks must not drift apart."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
import yaml

from helpers import config, stage

REPO_ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
STAGES = list(DVC["stages"])
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))

# Variables a parameters cell may define that are not stage parameters: display knobs with a default that
# only the notebook uses (rows shown, the report's title).
NOTEBOOK_ONLY_PARAMETERS = {"show_rows", "title"}


@pytest.fixture(autouse=True)
def _run_from_the_repository(monkeypatch):
    monkeypatch.delenv("FDP_ROOT", raising=False)
    monkeypatch.delenv("FDP_WORKDIR", raising=False)
    monkeypatch.chdir(REPO_ROOT)


def _declared_keys(name: str) -> list[str]:
    keys = []
    for entry in DVC["stages"][name].get("params", []) or []:
        keys.extend(entry if isinstance(entry, dict) else [entry])
    return keys


def _parameters_cells(notebook: Path) -> list:
    nb = nbformat.read(notebook, as_version=4)
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def _assigned_names(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(source).body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name):
                    names.add(sub.id)
    return names


def _notebook_parameter_names(name: str) -> set[str]:
    cells = _parameters_cells(stage.notebook_for(name))
    assert len(cells) == 1
    return _assigned_names(cells[0].source)


def test_dvc_yaml_has_stages():
    assert len(STAGES) >= 10
    assert "import_release" in STAGES and "report" in STAGES


@pytest.mark.parametrize("name", STAGES)
def test_stage_cmd_runs_its_own_notebook(name):
    assert DVC["stages"][name]["cmd"].split() == ["python", "-m", "helpers.stage", name]


@pytest.mark.parametrize("name", STAGES)
def test_notebook_for_finds_exactly_one_notebook_listed_in_the_stage_deps(name):
    notebook = stage.notebook_for(name)
    assert notebook.is_file()
    assert notebook.parent == (REPO_ROOT / "notebooks").resolve()
    assert notebook.name[:2].isdigit() and notebook.name[2:] == f"_{name}.ipynb"
    assert f"notebooks/{notebook.name}" in DVC["stages"][name].get("deps", [])


@pytest.mark.parametrize("name", STAGES)
def test_stage_parameters_are_exactly_the_leaf_names_of_the_declared_params(name, params):
    keys = _declared_keys(name)
    got = stage.stage_parameters(name)
    assert list(got) == [k.split(".")[-1] for k in keys]
    for key in keys:
        assert got[key.split(".")[-1]] == config.get(params, key)


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_parameter_is_assigned_in_the_notebooks_parameters_cell(name):
    expected = set(stage.stage_parameters(name))
    assigned = _notebook_parameter_names(name)
    missing = expected - assigned
    assert not missing, f"{stage.notebook_for(name).name}: parameters cell lacks {sorted(missing)}"


@pytest.mark.parametrize("name", STAGES)
def test_parameters_cell_defines_only_stage_parameters_or_display_knobs(name):
    extra = _notebook_parameter_names(name) - set(stage.stage_parameters(name)) - NOTEBOOK_ONLY_PARAMETERS
    assert not extra, (
        f"{stage.notebook_for(name).name}: parameters cell defines {sorted(extra)}, which dvc.yaml's "
        f"stage '{name}' does not pass; add them to its params or to NOTEBOOK_ONLY_PARAMETERS"
    )


def test_stage_parameters_uses_the_given_params_instead_of_params_yaml(params):
    import copy

    changed = copy.deepcopy(params)
    changed["figures"]["dpi"] = 42
    assert stage.stage_parameters("let_it_wag", changed)["dpi"] == 42


def test_stage_parameters_missing_key_names_it(params):
    import copy

    broken = copy.deepcopy(params)
    del broken["figures"]["let_it_wag_split"]
    with pytest.raises(config.ParamsError, match="figures.let_it_wag_split"):
        stage.stage_parameters("let_it_wag", broken)


def test_unknown_stage_exits_with_a_message_listing_the_stages():
    with pytest.raises(SystemExit) as err:
        stage.stage_spec("no_such_stage")
    message = str(err.value.code)
    assert "no_such_stage" in message
    for name in STAGES:
        assert name in message


def test_unknown_stage_parameters_exit_too():
    with pytest.raises(SystemExit, match="no_such_stage"):
        stage.stage_parameters("no_such_stage")


def test_notebook_for_an_unknown_stage_exits_saying_none_was_found():
    with pytest.raises(SystemExit, match="found 0"):
        stage.notebook_for("no_such_stage")


def test_every_notebook_belongs_to_a_stage():
    assert NOTEBOOKS
    for notebook in NOTEBOOKS:
        name = notebook.stem[3:]
        assert notebook.stem[:2].isdigit() and notebook.stem[2] == "_", notebook.name
        assert name in STAGES, f"{notebook.name} has no stage '{name}' in dvc.yaml"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_exactly_one_parameters_cell_of_plain_code(notebook):
    cells = _parameters_cells(notebook)
    assert len(cells) == 1, f"{notebook.name}: {len(cells)} cells tagged 'parameters'"
    assert cells[0].cell_type == "code"
    _assigned_names(cells[0].source)  # parses


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_no_committed_outputs_or_execution_counts(notebook):
    nb = nbformat.read(notebook, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{notebook.name}: cells {dirty} have outputs or execution counts"
