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
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
STAGES = list(DVC["stages"])


def _body(name: str) -> dict:
    """A stage's definition (the `do` block of a foreach stage)."""
    spec = DVC["stages"][name]
    return spec["do"] if "foreach" in spec else spec


def _item_name(name: str) -> str | None:
    cmd = _body(name)["cmd"].split()
    return cmd[cmd.index("--item") + 1] if "--item" in cmd else None


def _calls() -> list[str]:
    """How each stage is invoked: `name`, or `name@key` for every key of a foreach stage's collection."""
    calls = []
    for name, spec in DVC["stages"].items():
        if "foreach" in spec:
            collection = spec["foreach"].strip("${} ")
            calls.extend(f"{name}@{key}" for key in config.get(PARAMS, collection))
        else:
            calls.append(name)
    return calls


CALLS = _calls()
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))

# Variables a parameters cell may define that are not stage parameters: display knobs with a default that
# only the notebook uses (rows shown, the report's title).
NOTEBOOK_ONLY_PARAMETERS = {"show_rows", "title"}


@pytest.fixture(autouse=True)
def _run_from_the_repository(monkeypatch):
    monkeypatch.delenv("FDP_ROOT", raising=False)
    monkeypatch.delenv("FDP_WORKDIR", raising=False)
    monkeypatch.chdir(REPO_ROOT)


def _declared_keys(call: str) -> list[str]:
    name, _, key = call.partition("@")
    keys = []
    for entry in _body(name).get("params", []) or []:
        keys.extend(entry if isinstance(entry, dict) else [entry])
    return [k.replace("${key}", key).replace("${item}", key) for k in keys]


def _expected_parameter_names(call: str) -> list[str]:
    name, _, key = call.partition("@")
    names = []
    for dotted in _declared_keys(call):
        if key and dotted.endswith("." + key):
            names += [_item_name(name), f"{_item_name(name)}_name"]
        else:
            names.append(dotted.split(".")[-1])
    return names


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


def _stage_parameters(call: str, params=None) -> dict:
    return stage.stage_parameters(call, params, item=_item_name(call.partition("@")[0]))


def _notebook_parameter_names(name: str) -> set[str]:
    cells = _parameters_cells(stage.notebook_for(name))
    assert len(cells) == 1
    return _assigned_names(cells[0].source)


def test_dvc_yaml_has_stages():
    assert len(STAGES) >= 10
    assert "import_release" in STAGES and "report" in STAGES


@pytest.mark.parametrize("name", STAGES)
def test_stage_cmd_runs_its_own_notebook(name):
    if "foreach" in DVC["stages"][name]:
        assert _body(name)["cmd"].split() == ["python", "-m", "helpers.stage", f"{name}@${{key}}", "--item",
                                              _item_name(name)]
    else:
        assert DVC["stages"][name]["cmd"].split() == ["python", "-m", "helpers.stage", name]


@pytest.mark.parametrize("name", STAGES)
def test_notebook_for_finds_exactly_one_notebook_listed_in_the_stage_deps(name):
    notebook = stage.notebook_for(name)
    assert notebook.is_file()
    assert notebook.parent == (REPO_ROOT / "notebooks").resolve()
    assert notebook.name[:2].isdigit() and notebook.name[2:] == f"_{name}.ipynb"
    assert f"notebooks/{notebook.name}" in _body(name).get("deps", [])


@pytest.mark.parametrize("name", CALLS)
def test_stage_parameters_are_exactly_the_leaf_names_of_the_declared_params(name, params):
    got = _stage_parameters(name)
    assert list(got) == _expected_parameter_names(name)
    item = _item_name(name.partition("@")[0])
    for key, parameter in zip(_declared_keys(name), [n for n in got if not n.endswith("_name") or n[:-5] != item]):
        assert got[parameter] == config.get(params, key), f"{parameter} != params.yaml {key}"


@pytest.mark.parametrize("name", CALLS)
def test_every_stage_parameter_is_assigned_in_the_notebooks_parameters_cell(name):
    expected = set(_stage_parameters(name))
    assigned = _notebook_parameter_names(name)
    missing = expected - assigned
    assert not missing, f"{stage.notebook_for(name).name}: parameters cell lacks {sorted(missing)}"


@pytest.mark.parametrize("name", CALLS)
def test_parameters_cell_defines_only_stage_parameters_or_display_knobs(name):
    extra = _notebook_parameter_names(name) - set(_stage_parameters(name)) - NOTEBOOK_ONLY_PARAMETERS
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


def test_a_foreach_stage_gets_its_item_and_the_items_name(params):
    call = next(c for c in CALLS if "@" in c)
    name, _, key = call.partition("@")
    item = _item_name(name)
    got = stage.stage_parameters(call, item=item)
    assert got[f"{item}_name"] == key
    assert got[item] == config.get(params, f"{DVC['stages'][name]['foreach'].strip('${} ')}.{key}")


def test_a_foreach_stage_called_without_its_key_exits():
    name = next(n for n in STAGES if "foreach" in DVC["stages"][n])
    with pytest.raises(SystemExit, match="foreach"):
        stage.stage_spec(name)


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
