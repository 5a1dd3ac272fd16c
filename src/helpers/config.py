"""The one place that reads params.yaml, and the checks that give clear errors for wrong entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from helpers import paths


class ParamsError(ValueError):
    """A params.yaml entry is missing or has the wrong type; the message names the key."""


def load_yaml(path: Path) -> dict:
    with open(path) as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping at the top level")
    return data


def load_params(path: Path | None = None) -> dict:
    """params.yaml as a dict."""
    return load_yaml(path or paths.params_file())


def get(params: dict, dotted_key: str) -> Any:
    """``get(params, "analysis.zero_shot.n_edges")``; a missing key raises ParamsError naming it."""
    node: Any = params
    walked = []
    for part in dotted_key.split("."):
        walked.append(part)
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"params.yaml has no key '{'.'.join(walked)}' (needed: '{dotted_key}')")
        node = node[part]
    return node


def require(value: Any, key: str, expected: type | tuple[type, ...], *, allow_none: bool = False) -> Any:
    """Check a parameter's type, naming the key in the error."""
    if value is None and allow_none:
        return value
    expected_types = expected if isinstance(expected, tuple) else (expected,)
    bool_wanted = bool in expected_types
    if not isinstance(value, expected) or (isinstance(value, bool) and not bool_wanted):
        names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
        raise ParamsError(f"params.yaml key '{key}' must be {names}, got {value!r}")
    return value


def require_choice(value: Any, key: str, choices: list | tuple | set) -> Any:
    if value not in choices:
        raise ParamsError(
            f"params.yaml key '{key}' must be one of [{', '.join(sorted(map(repr, choices)))}], got {value!r}"
        )
    return value
