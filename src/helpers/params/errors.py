"""The one error type for bad params, and pydantic errors rewritten as ``full.key.path: message`` lines."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

#: the tag values of the discriminated unions; pydantic puts the chosen tag into an error's location
UNION_TAGS = frozenset({"trained", "open_clip", "rampp", "imagefolder", "wds", "torchvision", "parquet", "pixel"})


class ConfigError(ValueError):
    """A params entry is wrong: unknown, missing, ill-typed, out of range or pointing nowhere.

    The message starts with the full key path (``image_corpora.my_cc3m.tagger.checkpoint: file not found``);
    when several entries are wrong, it holds one such line per error.
    """


def _join(prefix: str, loc: Sequence[Any]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


def _strip_tags(loc: tuple, first: int = 1) -> tuple:
    """Drop the union tag pydantic inserts after a union-typed field (``tagger.trained.checkpoint``).

    ``first``: the first position a tag may sit at (0 when the validated value is itself a union)."""
    return tuple(p for i, p in enumerate(loc) if not (i >= first and isinstance(p, str) and p in UNION_TAGS))


def _unwrap(annotation: Any, tag: str | None = None) -> Any:
    """The model class a (possibly Optional / Annotated / union) annotation leads to, ``None`` if none."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0], tag)
    if origin in (typing.Union, types.UnionType):
        models = [_unwrap(a, tag) for a in typing.get_args(annotation)]
        models = [m for m in models if m is not None]
        if tag is not None:
            tagged = [m for m in models if tag in getattr(m, "model_fields", {}) or _tag_of(m) == tag]
            tagged = [m for m in models if _tag_of(m) == tag] or tagged
            if tagged:
                return tagged[0]
        return models[0] if len(models) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _tag_of(model: type[BaseModel]) -> str | None:
    for name in ("backend", "format"):
        field = model.model_fields.get(name)
        if field is not None and typing.get_origin(field.annotation) is typing.Literal:
            args = typing.get_args(field.annotation)
            if len(args) == 1:
                return args[0]
    return None


def known_keys(model: type[BaseModel], loc: Sequence[Any]) -> list[str] | None:
    """The keys allowed at ``loc`` (a pydantic location, tags included) below ``model``; ``None`` if unknown."""
    current: Any = model
    parts = list(loc)
    i = 0
    while i < len(parts):
        if current is None:
            return None
        part = parts[i]
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            annotation = field.annotation
            nxt = parts[i + 1] if i + 1 < len(parts) else None
            tag = nxt if isinstance(nxt, str) and nxt in UNION_TAGS else None
            container = _container(annotation)
            if container is not None:  # dict[str, X] / list[X]: skip the key or index
                current = _unwrap(container, parts[i + 2] if i + 2 < len(parts) else None)
                i += 2
                if isinstance(current, type) and i < len(parts) and parts[i] in UNION_TAGS:
                    i += 1
                continue
            current = _unwrap(annotation, tag)
            i += 2 if tag else 1
            continue
        return None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return None


def _container(annotation: Any) -> Any:
    """The value type of a dict/list annotation (through Optional), else ``None``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _container(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            inner = _container(arg)
            if inner is not None:
                return inner
        return None
    if origin in (dict, Mapping):
        return typing.get_args(annotation)[1]
    if origin in (list, Sequence):
        return typing.get_args(annotation)[0]
    return None


def _message(error: Mapping[str, Any], model: type[BaseModel] | None) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        known = known_keys(model, error["loc"][:-1]) if isinstance(model, type) else None
        if not known:
            return "unknown key"
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown key{hint} (known: {', '.join(known)})"
    if kind == "missing":
        return "missing"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"{value!r} is not one of {expected}"
    if kind == "union_tag_invalid":
        expected = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"{ctx.get('tag')!r} is not one of {expected}"
    if kind == "union_tag_not_found":
        return "missing (which kind of entry this is)"
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = message[:1].lower() + message[1:]
    shown = kind.endswith(("_type", "_parsing")) or kind in _SHOW_VALUE
    return f"{message}, got {value!r}" if shown else message


#: error kinds whose message reads better with the offending value
_SHOW_VALUE = frozenset(
    {"greater_than_equal", "less_than_equal", "greater_than", "less_than", "too_short", "too_long",
     "string_pattern_mismatch", "string_too_short", "string_too_long"}
)  # fmt: skip


def error_lines(
    err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None, *, union: bool = False
) -> list[str]:
    """One ``full.key.path: message`` line per pydantic error (``prefix`` is the section's own key path).

    ``union``: the validated value was a discriminated union itself (its tag leads every location)."""
    lines = []
    for error in err.errors():
        loc = tuple(error["loc"])
        if loc and loc[-1] == "[key]":  # a mapping key that is not a valid name: name it, not its value
            loc = loc[:-1]
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):  # name the tag's own key
            loc = (*loc, str((error.get("ctx") or {}).get("discriminator", "")).strip("'"))
        where = _join(prefix, _strip_tags(loc, 0 if union else 1)) or "(top level)"
        line = f"{where}: {_message(error, model)}"
        if line not in lines:
            lines.append(line)
    return lines


def validate(model: type[M], data: Any, prefix: str) -> M:
    """``data`` (a params section, or an already-validated model) as ``model``.

    Raises :class:`ConfigError` listing every error, each line starting with ``prefix`` + the key path.
    """
    if isinstance(data, model):
        return data
    if isinstance(data, BaseModel):
        data = data.model_dump(exclude_unset=True)
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise ConfigError("\n".join(error_lines(err, prefix, model))) from None


def validate_union(annotation: Any, data: Any, prefix: str) -> Any:
    """``data`` as one model of the discriminated union ``annotation`` (a tagger, an evaluation dataset).

    Raises :class:`ConfigError` listing every error, each line starting with ``prefix`` + the key path.
    """
    if isinstance(data, BaseModel):
        return data
    try:
        return _adapter(annotation).validate_python(data if data is not None else {})
    except ValidationError as err:
        lines = error_lines(err, prefix, None, union=True)
        raise ConfigError("\n".join(lines)) from None


_ADAPTERS: dict[int, Any] = {}


def _adapter(annotation: Any) -> Any:
    from pydantic import TypeAdapter

    key = id(annotation)
    if key not in _ADAPTERS:
        _ADAPTERS[key] = TypeAdapter(annotation)
    return _ADAPTERS[key]
