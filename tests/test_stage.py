"""helpers.stage and the stage graph: dvc.yaml, params.yaml and the notebooks must not drift apart."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import nbformat
import pytest
import yaml

from helpers import params as params_lib
from helpers import stage

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


def _notebook_stage(name: str) -> str:
    """The stage whose notebook ``name`` runs (``--notebook``), else ``name`` itself."""
    cmd = _body(name)["cmd"].split()
    return cmd[cmd.index("--notebook") + 1] if "--notebook" in cmd else name


def _foreach_entry(name: str, key: str):
    """The entry of a foreach stage's collection that ``name@key`` runs."""
    collection = params_lib.get(PARAMS, DVC["stages"][name]["foreach"].strip("${} "))
    return collection[key] if isinstance(collection, dict) else key


def _item_fields(call: str) -> dict[str, str]:
    """``${item.<field>}`` placeholders of a stage's params -> their keys (matrix axes or foreach entry fields)."""
    plain, matrix = _split_call(call)
    if matrix:
        return matrix
    name, _, key = plain.partition("@")
    entry = _foreach_entry(name, key) if key else None
    raw = [k for e in _body(name).get("params", []) or [] for k in (e if isinstance(e, dict) else [e])]
    fields = [t.rsplit("${item.", 1)[1][:-1] for t in raw if "${item." in t]
    return {f: str(entry[f]) for f in fields}


def _matrix_axes(name: str) -> dict[str, list[str]]:
    spec = DVC["stages"][name]
    return {axis: list(params_lib.get(PARAMS, ref.strip("${} "))) for axis, ref in spec.get("matrix", {}).items()}


def _calls() -> list[str]:
    """How each stage is invoked: `name`, `name@key` for every key of a foreach stage's collection, or
    `name#axis=key,axis=key` for every combination of a matrix stage's axes."""
    import itertools

    calls = []
    for name, spec in DVC["stages"].items():
        if "foreach" in spec:
            collection = spec["foreach"].strip("${} ")
            calls.extend(f"{name}@{key}" for key in params_lib.get(PARAMS, collection))
        elif "matrix" in spec:
            axes = _matrix_axes(name)
            for combo in itertools.product(*axes.values()):
                calls.append(name + "#" + ",".join(f"{a}={k}" for a, k in zip(axes, combo)))
        else:
            calls.append(name)
    return calls


def _split_call(call: str) -> tuple[str, dict[str, str] | None]:
    """(stage call without matrix part, matrix mapping or None)."""
    if "#" not in call:
        return call, None
    name, _, combo = call.partition("#")
    return name, dict(part.split("=", 1) for part in combo.split(","))


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
    call, matrix = _split_call(call)
    name, _, key = call.partition("@")
    keys = []
    for entry in _body(name).get("params", []) or []:
        keys.extend(entry if isinstance(entry, dict) else [entry])
    keys = [k.replace("${key}", key).replace("${item}", key) for k in keys]
    for axis, value in _item_fields(call).items():
        keys = [k.replace(f"${{item.{axis}}}", value) for k in keys]
    return keys


def _expected_parameter_names(call: str) -> list[str]:
    plain, matrix = _split_call(call)
    name, _, key = plain.partition("@")
    raw = [k for entry in _body(name).get("params", []) or [] for k in (entry if isinstance(entry, dict) else [entry])]
    names = []
    for template, dotted in zip(raw, _declared_keys(call)):
        axis = next((a for a in _item_fields(call) if template.endswith(f"${{item.{a}}}")), None)
        if axis is not None:
            names += [axis, f"{axis}_name"]
        elif key and dotted.endswith("." + key):
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
    plain, matrix = _split_call(call)
    return stage.stage_parameters(plain, params, item=_item_name(plain.partition("@")[0]), matrix=matrix)


def _notebook_parameter_names(name: str) -> set[str]:
    cells = _parameters_cells(stage.notebook_for(_notebook_stage(_split_call(name)[0].partition("@")[0])))
    assert len(cells) == 1
    return _assigned_names(cells[0].source)


def test_dvc_yaml_has_stages():
    assert len(STAGES) >= 10
    assert "import_release" in STAGES and "report" in STAGES


@pytest.mark.parametrize("name", STAGES)
def test_stage_cmd_runs_its_own_notebook(name):
    shared = ["--notebook", _notebook_stage(name)] if _notebook_stage(name) != name else []
    if "foreach" in DVC["stages"][name]:
        # --item names the notebook parameter of a params entry ending in ${key}; entries ending in
        # ${item.<field>} are found by the runner itself
        item = _item_name(name)
        params = [k for e in _body(name).get("params", []) or [] for k in (e if isinstance(e, dict) else [e])]
        assert bool(item) == any(k.endswith(("${key}", "${item}")) for k in params)
        assert _body(name)["cmd"].split() == [
            "python",
            "-m",
            "helpers.stage",
            f"{name}@${{key}}",
            *(["--item", item] if item else []),
            *shared,
        ]
    elif "matrix" in DVC["stages"][name]:
        axes = [f"{a}=${{item.{a}}}" for a in DVC["stages"][name]["matrix"]]
        assert DVC["stages"][name]["cmd"].split() == [
            "python",
            "-m",
            "helpers.stage",
            name,
            *[t for a in axes for t in ("--matrix", a)],
            *shared,
        ]
    else:
        assert DVC["stages"][name]["cmd"].split() == ["python", "-m", "helpers.stage", name, *shared]


@pytest.mark.parametrize("name", STAGES)
def test_notebook_for_finds_exactly_one_notebook_listed_in_the_stage_deps(name):
    notebook = stage.notebook_for(_notebook_stage(name))
    assert notebook.is_file()
    assert notebook.parent == (REPO_ROOT / "notebooks").resolve()
    assert notebook.name[:2].isdigit() and notebook.name[2:] == f"_{_notebook_stage(name)}.ipynb"
    assert f"notebooks/{notebook.name}" in _body(name).get("deps", [])


@pytest.mark.parametrize("name", CALLS)
def test_stage_parameters_are_exactly_the_leaf_names_of_the_declared_params(name, params):
    got = _stage_parameters(name)
    assert list(got) == _expected_parameter_names(name)
    plain, matrix = _split_call(name)
    item_names = {f"{_item_name(plain.partition('@')[0])}_name", *(f"{a}_name" for a in _item_fields(name))}
    stage_name, _, key = plain.partition("@")
    entry = _foreach_entry(stage_name, key) if key else None
    for dotted, parameter in zip(_declared_keys(name), [n for n in got if n not in item_names]):
        expected = stage.without_tracked(dotted, params_lib.get(params, dotted), entry)
        assert got[parameter] == expected, f"{parameter} != params.yaml {dotted}"


@pytest.mark.parametrize("name", CALLS)
def test_every_stage_parameter_is_assigned_in_the_notebooks_parameters_cell(name):
    expected = set(_stage_parameters(name))
    assigned = _notebook_parameter_names(name)
    missing = expected - assigned
    assert not missing, f"{stage.notebook_for(name).name}: parameters cell lacks {sorted(missing)}"


def _shared_notebook_parameters(name: str) -> set[str]:
    """Parameters of the other stages that run the same notebook (``--notebook``)."""
    own = _notebook_stage(_split_call(name)[0].partition("@")[0])
    return {
        p
        for call in CALLS
        if _notebook_stage(_split_call(call)[0].partition("@")[0]) == own
        for p in _stage_parameters(call)
    }


@pytest.mark.parametrize("name", CALLS)
def test_parameters_cell_defines_only_stage_parameters_or_display_knobs(name):
    extra = _notebook_parameter_names(name) - _shared_notebook_parameters(name) - NOTEBOOK_ONLY_PARAMETERS
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
    with pytest.raises(params_lib.ConfigError, match="figures.let_it_wag_split"):
        stage.stage_parameters("let_it_wag", broken)


def test_a_foreach_stage_gets_its_item_and_the_items_name(params):
    call = next(c for c in CALLS if "@" in c)
    name, _, key = call.partition("@")
    item = _item_name(name)
    got = stage.stage_parameters(call, item=item)
    assert got[f"{item}_name"] == key
    assert got[item] == params_lib.get(params, f"{DVC['stages'][name]['foreach'].strip('${} ')}.{key}")


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
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, f"{notebook.name}: cells {dirty} have outputs or execution counts"


MATRIX_DVC = {
    "stages": {
        "grid": {
            "matrix": {"model": "${models}", "dataset": "${datasets}"},
            "cmd": "python -m helpers.stage grid --matrix model=${item.model} --matrix dataset=${item.dataset}",
            "params": ["models.${item.model}", "datasets.${item.dataset}", "shared"],
        }
    }
}
MATRIX_PARAMS = {"models": {"m1": {"a": 1}, "m2": {"a": 2}}, "datasets": {"d1": {"b": 1}}, "shared": 3}


@pytest.fixture
def matrix_project(tmp_path, monkeypatch):
    """A project whose dvc.yaml has one matrix stage (the runner still supports them)."""
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(MATRIX_DVC))
    monkeypatch.setenv("FDP_ROOT", str(tmp_path))
    return tmp_path


def test_a_matrix_stage_gets_each_axis_and_its_key(matrix_project):
    got = stage.stage_parameters("grid", MATRIX_PARAMS, matrix={"model": "m2", "dataset": "d1"})
    assert got == {"model": {"a": 2}, "model_name": "m2", "dataset": {"b": 1}, "dataset_name": "d1", "shared": 3}


def test_a_matrix_stage_without_all_its_axes_exits(matrix_project):
    with pytest.raises(SystemExit, match="--matrix"):
        stage.stage_parameters("grid", MATRIX_PARAMS, matrix={"model": "m1"})


def test_an_evaluate_run_gets_its_model_and_dataset_by_the_runs_fields(params):
    run, entry = next(iter(params["evaluation"]["runs"].items()))
    got = stage.stage_parameters(f"evaluate@{run}")
    assert got["model_name"] == entry["model"] and got["dataset_name"] == entry["dataset"]
    model = {k: v for k, v in params["evaluation"]["models"][entry["model"]].items() if k != "weights"}
    assert got["model"] == model
    assert "data" not in got["dataset"] and got["dataset"]["format"]


def test_tracked_weights_and_data_are_checked_and_not_passed_on(params):
    import copy

    got = stage.stage_parameters("image_search@synthetic_clip", item="image_corpus")
    assert "weights" not in got["image_corpus"]["tagger"]
    assert params["image_corpora"]["synthetic_clip"]["tagger"]["weights"]  # params stay as read
    broken = copy.deepcopy(params)
    broken["image_corpora"]["synthetic_clip"]["tagger"]["weights"] = "data/models/taggers"
    with pytest.raises(
        SystemExit, match=r"image_corpora.synthetic_clip.tagger.\w+: data/models/synthetic-clip/.* outside weights"
    ):
        stage.stage_parameters("image_search@synthetic_clip", broken, item="image_corpus")


def test_an_evaluate_run_whose_paths_differ_from_its_entries_exits(params):
    import copy

    run, entry = next(iter(params["evaluation"]["runs"].items()))
    broken = copy.deepcopy(params)
    broken["evaluation"]["runs"][run]["weights"] = "data/models/elsewhere"
    with pytest.raises(SystemExit, match=rf"evaluation.models.{entry['model']}.weights: .* differs"):
        stage.stage_parameters(f"evaluate@{run}", broken)
    broken = copy.deepcopy(params)
    del broken["evaluation"]["datasets"][entry["dataset"]]["data"]
    broken["evaluation"]["runs"][run]["data"] = "data/eval/elsewhere"
    with pytest.raises(SystemExit, match=rf"evaluation.datasets.{entry['dataset']}.\w+: .* outside data"):
        stage.stage_parameters(f"evaluate@{run}", broken)
    broken = copy.deepcopy(params)
    del broken["evaluation"]["runs"][run]["model"]
    with pytest.raises(SystemExit, match=r"foreach entry has no 'model'"):
        stage.stage_parameters(f"evaluate@{run}", broken)


def test_main_rejects_a_malformed_matrix_argument():
    with pytest.raises(SystemExit) as err:
        stage.main(["evaluate", "--matrix", "no-equals-sign"])
    assert err.value.code == 2  # argparse's usage error, before any stage runs


def test_the_kernel_filter_drops_only_the_tcp_warning_and_the_shutdown_interrupt():
    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("IPKernelApp", level, "", 0, message, (), None)

    keep = [
        logging.LogRecord("IPKernelApp", logging.WARNING, "", 0, "Kernel died %s", ("now",), None),
        record(logging.ERROR, "Exception in message handler:"),
        record(logging.ERROR, "KeyboardInterrupt"),  # not the shutdown line: kept
    ]
    drop = [
        record(logging.WARNING, stage.KERNEL_TCP_WARNING + ". All ..."),
        record(logging.ERROR, "KeyboardInterrupt caught in kernel."),  # ipykernel's two spellings
        record(logging.ERROR, "KeyboardInterrupt caught in kernel"),
    ]
    assert all(stage.KernelNoiseFilter().filter(r) for r in keep)
    assert not any(stage.KernelNoiseFilter().filter(r) for r in drop)


def test_a_stage_runs_its_notebook_without_the_kernels_noise(tmp_path, monkeypatch, capfd):
    """A one-stage project run by helpers.stage: the parameter arrives; the kernel's stderr has neither noise line."""
    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    nb.cells = [
        nbformat.v4.new_code_cell("value = 0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import logging, sys\nprint('value', value)\nprint('kernel stderr works', file=sys.stderr)"
        ),
    ]
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / "00_tiny.ipynb")
    dvc = {"stages": {"tiny": {"cmd": "python -m helpers.stage tiny", "params": ["tiny.value"]}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tiny": {"value": 7}}))
    monkeypatch.setenv("FDP_ROOT", str(tmp_path))
    # a toy params file, not the compendium's: its whole-file check is tested in test_params / the runner tests
    monkeypatch.setattr(stage.params_lib, "require_valid", lambda *a, **k: None)
    out = stage.run("tiny")
    executed = nbformat.read(out, as_version=4)
    assert "value 7" in "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    err = capfd.readouterr().err
    assert stage.KERNEL_TCP_WARNING not in err and stage.KERNEL_SHUTDOWN_INTERRUPT not in err


def test_the_kernel_filter_is_importable_by_the_kernel_process():
    """The kernel imports the filter by name in its own process: under ``python -m helpers.stage`` the runner
    module is ``__main__``, so the name must be the package path, not ``__module__``."""
    import importlib

    dotted = stage.kernel_config()["IPKernelApp"]["logging_config"]["filters"]["no_kernel_noise"]["()"]
    module, _, name = dotted.rpartition(".")
    assert module == "helpers.stage" and getattr(importlib.import_module(module), name) is stage.KernelNoiseFilter


def test_the_stage_command_runs_a_notebook_as_dvc_calls_it(tmp_path):
    """``python -m helpers.stage <stage>`` exactly as dvc.yaml's cmd runs it, in a subprocess."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "FDP_WORKDIR": str(tmp_path), "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, "-m", "helpers.stage", "sample_corpora"],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "reports" / "notebooks" / "12_sample_corpora.ipynb").exists()
    assert stage.KERNEL_TCP_WARNING not in done.stderr
    assert stage.KERNEL_SHUTDOWN_INTERRUPT not in done.stderr
