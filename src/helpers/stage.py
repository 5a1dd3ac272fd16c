"""Run one DVC stage's notebook with papermill, passing it exactly the params the stage declares.

``python -m helpers.stage zero_shot_figures`` looks up the stage in dvc.yaml, reads the values of the
keys listed under its ``params:`` from params.yaml, and executes ``notebooks/NN_zero_shot_figures.ipynb``
into ``reports/notebooks/`` with one papermill parameter per key (named by the key's last part, e.g.
``analysis.zero_shot`` -> ``zero_shot``). So dvc.yaml is the single list of what a stage depends on, and
nested params (dicts, lists) reach the notebook intact, which papermill's ``-p`` on a command line can't do.

Stages fanned out with ``foreach`` (one per corpus, say) run as ``python -m helpers.stage text_search@cc3m
--item corpus``: the params entry that names the item (``corpora.${key}``) reaches the notebook as
``corpus``, and the item's key as ``corpus_name``; the executed copy is ``NN_text_search@cc3m.ipynb``.

Stages fanned out with ``matrix`` (models x datasets) name each axis: ``python -m helpers.stage
evaluate --matrix model=<key> --matrix dataset=<key>`` passes the params entry ending in ``${item.model}`` as
``model`` (and the key as ``model_name``), and so on for each axis. ``--notebook concepts`` runs another
stage's notebook (two stages that differ only in their dependencies share one notebook).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from helpers import params as params_lib
from helpers import paths


def stage_spec(stage: str) -> dict:
    """The stage's entry in dvc.yaml; for ``name@key`` the ``do`` block of the foreach stage ``name``.

    A ``matrix`` stage is called by its plain name (its axes come with ``--matrix``)."""
    dvc = params_lib.load_yaml(paths.project_root() / "dvc.yaml")
    stages = dvc.get("stages", {})
    name = stage.split("@", 1)[0]
    if name not in stages:
        raise SystemExit(f"dvc.yaml has no stage '{name}'. Stages: {', '.join(stages)}")
    spec = stages[name]
    if ("@" in stage) != ("foreach" in spec):
        raise SystemExit(
            f"Stage '{name}' {'is' if 'foreach' in spec else 'is not'} a foreach stage; "
            f"call it as {'name@key' if 'foreach' in spec else 'name'}"
        )
    return spec["do"] if "foreach" in spec else spec


def stage_parameters(
    stage: str, params: dict | None = None, item: str | None = None, matrix: dict[str, str] | None = None
) -> dict:
    """Papermill parameters of ``stage``: one per params key it lists in dvc.yaml.

    For a foreach stage ``name@key``, the params entry ending in ``${key}`` (``${item}`` for a foreach over a
    list of names) is passed as ``item``, with the key itself as ``<item>_name``. For a matrix stage,
    ``matrix`` maps each axis to its key: the entry ending in ``${item.<axis>}`` is passed as ``<axis>``,
    with the key as ``<axis>_name``.
    """
    params = params if params is not None else params_lib.load_params()
    key = stage.split("@", 1)[1] if "@" in stage else None
    spec = stage_spec(stage)
    axes = list(spec.get("matrix", {}))
    if sorted(matrix or {}) != sorted(axes):
        raise SystemExit(f"Stage '{stage}': give --matrix for exactly its axes {axes}, got {sorted(matrix or {})}")
    out: dict = {}
    for entry in spec.get("params", []):
        keys = list(entry) if isinstance(entry, dict) else [entry]
        for dotted in keys:
            axis = next((a for a in axes if dotted.endswith(f"${{item.{a}}}")), None)
            if axis is not None:
                out[axis] = params_lib.get(params, dotted.replace(f"${{item.{axis}}}", matrix[axis]))
                out[f"{axis}_name"] = matrix[axis]
                continue
            # foreach over a mapping names the entry ${key}; over a list of names, ${item}
            placeholder = next((p for p in ("${key}", "${item}") if dotted.endswith(p)), None)
            if key is not None and placeholder:
                if not item:
                    raise SystemExit(f"Stage '{stage}': name the item's parameter with --item (e.g. --item corpus)")
                out[item] = params_lib.get(params, dotted.replace(placeholder, key))
                out[f"{item}_name"] = key
                continue
            name = dotted.split(".")[-1]
            if name in out:
                raise SystemExit(f"Stage '{stage}': two params end in '{name}'; rename one in params.yaml")
            out[name] = params_lib.get(params, dotted)
    return out


def notebook_for(stage: str) -> Path:
    stage = stage.split("@", 1)[0]
    matches = sorted(paths.notebooks_dir().glob(f"[0-9][0-9]_{stage}.ipynb"))
    if len(matches) != 1:
        raise SystemExit(f"Expected one notebook notebooks/NN_{stage}.ipynb for stage '{stage}', found {len(matches)}")
    return matches[0]


def run(
    stage: str,
    item: str | None = None,
    extra: dict | None = None,
    matrix: dict[str, str] | None = None,
    notebook: str | None = None,
) -> Path:
    """Execute the stage's notebook (or the notebook of stage ``notebook``); returns the executed copy's path.

    The whole params.yaml is checked first (:func:`helpers.params.require_valid`): a typo anywhere stops the
    stage before it does any work, with every error named by its full key path.
    """
    import papermill

    params_lib.require_valid()

    parameters = {**stage_parameters(stage, item=item, matrix=matrix), **(extra or {})}
    name = stage.split("@", 1)[0]
    notebook_path = notebook_for(notebook or stage)
    if "@" in stage:
        suffix = f"@{stage.split('@', 1)[1]}"
    elif matrix:
        suffix = "@" + "-".join(matrix[a] for a in stage_spec(stage)["matrix"])
    else:
        suffix = ""
    if notebook and notebook != name:  # keep the stage's name on the executed copy
        suffix = f".{name}{suffix}"
    out = paths.ensure(paths.reports_dir() / "notebooks") / f"{notebook_path.stem}{suffix}.ipynb"
    papermill.execute_notebook(
        str(notebook_path), str(out), parameters=parameters, cwd=str(paths.notebooks_dir()), progress_bar=False
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", help="stage name in dvc.yaml (name@key for a foreach stage)")
    parser.add_argument("--item", help="foreach stages: the notebook parameter that receives the item")
    parser.add_argument(
        "--matrix",
        action="append",
        default=[],
        metavar="AXIS=KEY",
        help="matrix stages: one per axis, e.g. --matrix model=mymodel --matrix dataset=cifar10",
    )
    parser.add_argument("--notebook", help="run this stage's notebook instead (e.g. concepts)")
    args = parser.parse_args(argv)
    matrix = {}
    for pair in args.matrix:
        axis, sep, key = pair.partition("=")
        if not sep or not axis or not key:
            parser.error(f"--matrix expects AXIS=KEY, got {pair!r}")
        matrix[axis] = key
    try:
        out = run(args.stage, item=args.item, matrix=matrix or None, notebook=args.notebook)
    except params_lib.ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"executed {out.relative_to(paths.workdir())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
