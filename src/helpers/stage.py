"""Run one DVC stage's notebook with papermill, passing it exactly the params the stage declares.

``python -m helpers.stage zero_shot_figures`` looks up the stage in dvc.yaml, reads the values of the
keys listed under its ``params:`` from params.yaml, and executes ``notebooks/NN_zero_shot_figures.ipynb``
into ``reports/notebooks/`` with one papermill parameter per key (named by the key's last part, e.g.
``analysis.zero_shot`` -> ``zero_shot``). So dvc.yaml is the single list of what a stage depends on, and
nested params (dicts, lists) reach the notebook intact, which papermill's ``-p`` on a command line can't do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from helpers import config, paths


def stage_spec(stage: str) -> dict:
    dvc = config.load_yaml(paths.project_root() / "dvc.yaml")
    stages = dvc.get("stages", {})
    if stage not in stages:
        raise SystemExit(f"dvc.yaml has no stage '{stage}'. Stages: {', '.join(stages)}")
    return stages[stage]


def stage_parameters(stage: str, params: dict | None = None) -> dict:
    """Papermill parameters of ``stage``: one per params key it lists in dvc.yaml."""
    params = params if params is not None else config.load_params()
    out: dict = {}
    for entry in stage_spec(stage).get("params", []):
        keys = list(entry) if isinstance(entry, dict) else [entry]  # `- file.yaml: [keys]` form is not used here
        for key in keys:
            name = key.split(".")[-1]
            if name in out:
                raise SystemExit(f"Stage '{stage}': two params end in '{name}'; rename one in params.yaml")
            out[name] = config.get(params, key)
    return out


def notebook_for(stage: str) -> Path:
    matches = sorted(paths.notebooks_dir().glob(f"[0-9][0-9]_{stage}.ipynb"))
    if len(matches) != 1:
        raise SystemExit(f"Expected one notebook notebooks/NN_{stage}.ipynb for stage '{stage}', found {len(matches)}")
    return matches[0]


def run(stage: str, extra: dict | None = None) -> Path:
    """Execute the stage's notebook; returns the executed copy's path."""
    import papermill

    notebook = notebook_for(stage)
    parameters = {**stage_parameters(stage), **(extra or {})}
    out = paths.ensure(paths.reports_dir() / "notebooks") / notebook.name
    papermill.execute_notebook(
        str(notebook), str(out), parameters=parameters, cwd=str(paths.notebooks_dir()), progress_bar=False
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", help="stage name in dvc.yaml")
    args = parser.parse_args(argv)
    out = run(args.stage)
    print(f"executed {out.relative_to(paths.workdir())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
