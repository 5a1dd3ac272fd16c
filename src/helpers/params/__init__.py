"""The typed parameter layer: pydantic models of params.yaml, section by section, and its checks.

* :class:`Params` and the section models (``helpers.params.text``, ``.images``, ``.evaluation``, ``.study``)
  state every key, its type, its default and its range once; engines take these models.
* :func:`check` / :func:`check_file` return every error of a params mapping or file as
  ``full.key.path: message`` lines; the stage runner calls :func:`require_valid` before any stage works.
* :class:`ConfigError` is the one error type for bad params.
* ``python -m helpers.params check [PATH]`` and ``python -m helpers.params schema [OUT]`` (JSON Schema for
  editors: params.yaml points at params.schema.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from helpers.params.errors import ConfigError, validate, validate_union
from helpers.params.root import Params, check, concept_table_error, looks_like_path

__all__ = [
    "ConfigError",
    "Params",
    "check",
    "check_file",
    "concept_table_error",
    "get",
    "json_schema",
    "load_params",
    "load_yaml",
    "looks_like_path",
    "require_valid",
    "validate",
    "validate_union",
]


def load_yaml(path: str | Path) -> dict:
    """A YAML file holding a mapping (``yaml.safe_load``); anything else is a :class:`ConfigError` naming it."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping at the top level")
    return data


def load_params(path: str | Path | None = None) -> dict:
    """params.yaml (of the project root unless ``path``) as a plain dict, unchecked."""
    from helpers import paths

    return load_yaml(path or paths.params_file())


def get(params: dict, dotted_key: str) -> Any:
    """``get(params, "analysis.zero_shot.n_edges")``; a missing key raises :class:`ConfigError` naming it."""
    node: Any = params
    walked = []
    for part in dotted_key.split("."):
        walked.append(part)
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{'.'.join(walked)}: missing from params.yaml (needed: '{dotted_key}')")
        node = node[part]
    return node


def check_file(path: str | Path | None = None, *, dvc_file: str | Path | None = None, files: bool = True) -> list[str]:
    """Every error of a params file (default: the project's params.yaml), one line each.

    Outputs of the stages in ``dvc_file`` (default: dvc.yaml beside the params file) are exempt from the
    file-existence checks.
    """
    from helpers import paths

    path = Path(path) if path is not None else paths.params_file()
    try:
        data = load_yaml(path)
    except ConfigError as err:
        return [str(err)]
    dvc_path = Path(dvc_file) if dvc_file is not None else path.parent / "dvc.yaml"
    dvc = load_yaml(dvc_path) if dvc_path.is_file() else {}
    return check(data, dvc=dvc, files=files)


def require_valid(path: str | Path | None = None) -> None:
    """Raise :class:`ConfigError` with every error of the params file, or return when it is valid."""
    errors = check_file(path)
    if errors:
        where = path or "params.yaml"
        raise ConfigError(f"{where}: {len(errors)} error(s)\n" + "\n".join(errors))


def json_schema() -> str:
    """The JSON Schema of params.yaml (what ``python -m helpers.params schema`` writes), as text."""
    schema = Params.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "params.yaml of the frequency-determines-performance compendium"
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
