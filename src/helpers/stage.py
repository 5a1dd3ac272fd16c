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
import copy
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

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


#: Keys naming the one file or folder DVC tracks for an entry's weights or data. dvc.yaml interpolates them into
#: the deps of the entry's own stage (``${item.tagger.weights}``, ``${item.weights}``), so a stage reruns for its
#: own inputs only. The runner checks that the path covers every file the entry reads (else DVC would miss a
#: change) and does not pass the key on: no engine reads it. Pattern (``*`` = any key) -> (key, path keys).
TRACKED: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {
    ("image_corpora", "*", "tagger"): ("weights", ("checkpoint", "pretrained", "model_config")),
    ("evaluation", "models", "*"): ("weights", ("pretrained", "model_config")),
    ("evaluation", "datasets", "*"): ("data", ("root", "paths", "class_names_file", "concepts_file")),
}

_GLOB_CHARS = "*?[{"


def _local_paths(value: Any) -> list[str]:
    """The literal folder part of each path-like string in ``value`` (a tag such as ``laion400m_e32`` is none)."""
    out = []
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str) and ("/" in v or Path(v).suffix):
            cut = min((v.index(c) for c in _GLOB_CHARS if c in v), default=len(v))
            out.append(v[:cut].rsplit("/", 1)[0] if cut < len(v) else v)
    return out


def _check_tracked(where: str, entry: dict, key: str, path_keys: tuple[str, ...], declared: str | None) -> None:
    """``entry[key]`` (or the foreach item's ``declared`` path) must cover each local path the entry reads."""
    tracked = entry.get(key)
    if declared is not None and tracked is not None and tracked != declared:
        raise SystemExit(f"{where}.{key}: {tracked} differs from the stage's tracked path {declared}; make them equal")
    tracked = declared if declared is not None else tracked
    if tracked is None:
        return
    for name in path_keys:
        for path in _local_paths(entry.get(name)):
            if not paths.covers(str(tracked), path):
                raise SystemExit(
                    f"{where}.{name}: {path} is outside {key} ({tracked}), the path DVC tracks for this entry; "
                    f"set {key} to a folder holding both, so a change to it reruns the stage"
                )


def _tracked_entries(dotted: str, value: Any) -> list[tuple[str, dict, str, tuple[str, ...]]]:
    """(key path, entry, tracked key, path keys) of each ``TRACKED`` entry inside ``value`` (at ``dotted``)."""
    parts = dotted.split(".")
    found = []
    for pattern, (key, path_keys) in TRACKED.items():
        if len(parts) > len(pattern) or any(p not in ("*", q) for p, q in zip(pattern, parts)):
            continue
        nodes = [(dotted, value)]
        for step in pattern[len(parts) :]:
            nodes = [
                (f"{where}.{k}", child)
                for where, node in nodes
                if isinstance(node, dict)
                for k, child in node.items()
                if step in ("*", k)
            ]
        found.extend((where, node, key, path_keys) for where, node in nodes if isinstance(node, dict))
    return found


def without_tracked(dotted: str, value: Any, item: dict | None) -> Any:
    """``value`` with every ``TRACKED`` key checked and removed (a copy; params stay as read)."""
    value = copy.deepcopy(value)
    for where, entry, key, path_keys in _tracked_entries(dotted, value):
        declared = item.get(key) if isinstance(item, dict) and key in item and entry is not item else None
        _check_tracked(where, entry, key, path_keys, declared)
        entry.pop(key, None)
    return value


def _foreach_item(stage: str, params: dict) -> Any:
    """The entry of a foreach stage's collection that ``name@key`` runs (None for other stages)."""
    if "@" not in stage:
        return None
    name, key = stage.split("@", 1)
    collection = params_lib.load_yaml(paths.project_root() / "dvc.yaml")["stages"][name]["foreach"]
    if isinstance(collection, str) and collection.startswith("${") and collection.endswith("}"):
        entries = params_lib.get(params, collection[2:-1].strip())
        return entries.get(key) if isinstance(entries, dict) else key
    return key


def stage_parameters(
    stage: str, params: dict | None = None, item: str | None = None, matrix: dict[str, str] | None = None
) -> dict:
    """Papermill parameters of ``stage``: one per params key it lists in dvc.yaml.

    For a foreach stage ``name@key``, the params entry ending in ``${key}`` (``${item}`` for a foreach over a
    list of names) is passed as ``item``, with the key itself as ``<item>_name``. An entry ending in
    ``${item.<field>}`` is passed as ``<field>``, with the key as ``<field>_name``: the key is ``matrix[field]``
    for a matrix stage (``--matrix field=key``), and the foreach entry's own ``field`` for a foreach stage over
    entries that name others (``evaluate@<run>`` with ``evaluation.runs.<run>.model``). ``TRACKED`` keys are
    checked and left out. Raises ``SystemExit`` with a message naming the stage or the params key.
    """
    params = params if params is not None else params_lib.load_params()
    key = stage.split("@", 1)[1] if "@" in stage else None
    spec = stage_spec(stage)
    declared = [d for entry in spec.get("params", []) for d in (list(entry) if isinstance(entry, dict) else [entry])]
    foreach_item = _foreach_item(stage, params)
    if "matrix" in spec:
        axes = list(spec["matrix"])
        if sorted(matrix or {}) != sorted(axes):
            raise SystemExit(f"Stage '{stage}': give --matrix for exactly its axes {axes}, got {sorted(matrix or {})}")
        fields = dict(matrix or {})
    else:
        if matrix:
            raise SystemExit(f"Stage '{stage}' is not a matrix stage; --matrix does not apply")
        fields = {}
        for dotted in declared:
            if dotted.endswith("}") and "${item." in dotted:
                field = dotted.rsplit("${item.", 1)[1][:-1]
                if not isinstance(foreach_item, dict) or field not in foreach_item:
                    raise SystemExit(f"Stage '{stage}': its foreach entry has no '{field}' (needed by params {dotted})")
                fields[field] = str(foreach_item[field])
    out: dict = {}
    for dotted in declared:
        field = next((a for a in fields if dotted.endswith(f"${{item.{a}}}")), None)
        if field is not None:
            resolved = dotted.replace(f"${{item.{field}}}", fields[field])
            out[field] = without_tracked(resolved, params_lib.get(params, resolved), foreach_item)
            out[f"{field}_name"] = fields[field]
            continue
        # foreach over a mapping names the entry ${key}; over a list of names, ${item}
        placeholder = next((p for p in ("${key}", "${item}") if dotted.endswith(p)), None)
        if key is not None and placeholder:
            if not item:
                raise SystemExit(f"Stage '{stage}': name the item's parameter with --item (e.g. --item corpus)")
            resolved = dotted.replace(placeholder, key)
            out[item] = without_tracked(resolved, params_lib.get(params, resolved), None)
            out[f"{item}_name"] = key
            continue
        name = dotted.split(".")[-1]
        if name in out:
            raise SystemExit(f"Stage '{stage}': two params end in '{name}'; rename one in params.yaml")
        out[name] = without_tracked(dotted, params_lib.get(params, dotted), None)
    return out


def notebook_for(stage: str) -> Path:
    stage = stage.split("@", 1)[0]
    matches = sorted(paths.notebooks_dir().glob(f"[0-9][0-9]_{stage}.ipynb"))
    if len(matches) != 1:
        raise SystemExit(f"Expected one notebook notebooks/NN_{stage}.ipynb for stage '{stage}', found {len(matches)}")
    return matches[0]


#: The kernel log lines silenced, both emitted by every successful stage and neither a fault:
#: - ipykernel (``IPKernelApp.init_sockets``) warns on every start that the kernel talks to papermill over TCP
#:   without CurveZMQ encryption; papermill's kernel is local and short-lived;
#: - jupyter_client's ``KernelManager.shutdown_kernel`` interrupts (SIGINT) the kernel before asking it to shut
#:   down, and ipykernel logs that interrupt as an error. A real interrupt of a stage stops papermill itself,
#:   which reports it.
#: Every other kernel message is kept.
KERNEL_TCP_WARNING = "Kernel is running over TCP without encryption"
KERNEL_SHUTDOWN_INTERRUPT = "KeyboardInterrupt caught in kernel"
KERNEL_SILENCED = (KERNEL_TCP_WARNING, KERNEL_SHUTDOWN_INTERRUPT)


class KernelNoiseFilter(logging.Filter):
    """Logging filter, installed in the stage's kernel, that drops only the lines of ``KERNEL_SILENCED``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(line in message for line in KERNEL_SILENCED)


def kernel_config() -> dict:
    """Traitlets config for the kernel: ``KernelNoiseFilter`` on the kernel app's console log handler."""
    # by its importable name: under ``python -m helpers.stage`` this module is ``__main__``, which the kernel
    # process cannot import
    dotted = f"helpers.stage.{KernelNoiseFilter.__qualname__}"
    logging_config = {
        "filters": {"no_kernel_noise": {"()": dotted}},
        "handlers": {"console": {"filters": ["no_kernel_noise"]}},
    }
    return {"IPKernelApp": {"logging_config": logging_config}}


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
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "kernel_config.json"
        config_file.write_text(json.dumps(kernel_config()))
        papermill.execute_notebook(
            str(notebook_path),
            str(out),
            parameters=parameters,
            cwd=str(paths.notebooks_dir()),
            progress_bar=False,
            extra_arguments=[f"--config={config_file}"],  # read by the kernel app (IPython's --config)
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
