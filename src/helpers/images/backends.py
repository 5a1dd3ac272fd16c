"""Image-tagger backends and the factory the image-search stage calls with ``image_search.tagger``.

Every backend implements the :class:`helpers.images.taggers.Tagger` protocol, so the stage never needs to know
which one runs. Three backends exist, each in its own module so that importing this factory does not
import a backend's heavy or conflicting dependencies (``open_clip`` and the RAM++ package ``ram`` cannot
live in the same environment, see :mod:`helpers.images.tagger_rampp`):

``open_clip`` (:mod:`helpers.images.tagger_openclip`)
    Zero-shot multi-label tagging with any open_clip model: prompt-ensemble text embeddings and a
    documented calibration of cosine similarities into probabilities.
``trained`` (:mod:`helpers.images.tagger_trained`)
    A compact CNN with sigmoid outputs, trained here on a labelled image set (images plus the concepts
    each shows); for synthetic corpora or domains where a labelled sample exists.
``rampp`` (:mod:`helpers.images.tagger_rampp`)
    A thin adapter for RAM++ (the tagger of the paper, thresholded at 0.7 there), open-set label
    embeddings from per-concept LLM descriptions. Runs in its own environment.

Config (the ``image_search.tagger`` section of params.yaml), keys common to all backends:

``backend``
    ``open_clip`` | ``trained`` | ``rampp`` (required).
``image_size``
    Optional; when given it must equal the model's input size, otherwise :class:`ConfigError` -- a
    wrong resolution would silently degrade every score, so the stage fails before reading any image.

The remaining keys are backend-specific and documented in each module. Unknown keys, missing required
keys and wrong types raise :class:`helpers.shards.ConfigError` whose message starts with the full key,
e.g. ``image_search.tagger.calibration.tau: expected a number > 0, got -1``.

This module also holds the small utilities shared by the backends (config reading, hashing for
fingerprints, description files), so every backend reports errors and fingerprints the same way.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from helpers.hashing import sha256_chunks, sha256_file, sha256_json
from helpers.images.taggers import Tagger
from helpers.shards import ConfigError

#: where the tagger config sits in params.yaml; every error message starts with ``PREFIX.<key>``
PREFIX = "image_search.tagger"
BACKENDS = ("open_clip", "trained", "rampp")
#: keys every backend accepts
COMMON_KEYS = ("backend", "image_size")

_MISSING = object()

__all__ = [
    "BACKENDS",
    "ConfigError",
    "PREFIX",
    "build_tagger",
    "concepts_digest",
    "file_sha256",
    "load_descriptions",
    "match_descriptions",
    "state_dict_sha256",
]


# ------------------------------------------------------------------------------------------- factory


def build_tagger(
    config: Mapping[str, Any],
    concepts: Sequence[str],
    *,
    descriptions: Mapping[str, list[str]] | None = None,
) -> Tagger:
    """The tagger that ``config`` (the ``image_search.tagger`` section) describes, scoring ``concepts``.

    ``concepts`` fixes the score columns: column ``j`` of ``tagger.scores(...)`` is ``concepts[j]``.
    ``descriptions`` maps a concept to description strings (the release's ``gpt_descriptions``); the
    ``rampp`` backend builds its open-set label embeddings from them and ``open_clip`` can add them to its
    prompts (``use_descriptions: true``); ``trained`` ignores them.

    Raises :class:`ConfigError` naming ``image_search.tagger.<key>`` for an unknown backend and for
    unknown, missing or ill-typed keys, before any model is loaded where possible.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"{PREFIX}: expected a mapping with at least `backend`, got {type(config).__name__}")
    concepts = check_concepts(concepts)
    backend = config.get("backend", _MISSING)
    if backend is _MISSING or backend is None:
        raise ConfigError(f"{PREFIX}.backend: missing (expected one of {', '.join(BACKENDS)})")
    if backend not in BACKENDS:
        raise ConfigError(f"{PREFIX}.backend: unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    # Imported here, not at the top: each backend module imports its own heavy dependencies.
    if backend == "open_clip":
        from helpers.images import tagger_openclip as module
    elif backend == "trained":
        from helpers.images import tagger_trained as module
    else:
        from helpers.images import tagger_rampp as module
    section = ConfigSection(config, PREFIX)
    section.seen.add("backend")
    return module.from_config(section, concepts, descriptions=descriptions)


# ------------------------------------------------------------------------------------ config reading


class ConfigSection:
    """Read a config mapping key by key, with errors that name the full key, and reject unknown keys.

    Backends call the typed getters for every key they know, then :meth:`finish`, which raises for any
    key nobody asked for (a typo such as ``tempreature`` must not be silently ignored).
    """

    def __init__(self, data: Mapping[str, Any], prefix: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{prefix}: expected a mapping, got {type(data).__name__}")
        self.data = data
        self.prefix = prefix
        self.seen: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.prefix}.{key}"

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {message}")

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self.seen.add(key)
        if key in self.data and self.data[key] is not None:
            return self.data[key]
        if default is _MISSING:
            raise self.error(key, "missing")
        return default

    def has(self, key: str) -> bool:
        self.seen.add(key)
        return self.data.get(key) is not None

    def get_str(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"expected a non-empty string, got {value!r}")
        return value

    def get_choice(self, key: str, choices: Sequence[str], default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def get_int(self, key: str, default: Any = _MISSING, *, minimum: int = 1) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"expected an integer >= {minimum}, got {value!r}")
        return int(value)

    def get_float(self, key: str, default: Any = _MISSING, *, positive: bool = False) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(key, f"expected a number, got {value!r}")
        if positive and value <= 0:
            raise self.error(key, f"expected a number > 0, got {value!r}")
        return float(value)

    def get_bool(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def get_str_list(self, key: str, default: Any = _MISSING) -> Any:
        """A list of non-empty strings; a single string counts as a one-element list."""
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, str):
            value = [value]
        ok = isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v.strip() for v in value)
        if not ok:
            raise self.error(key, f"expected a non-empty list of strings, got {value!r}")
        return list(value)

    def get_path(self, key: str, default: Any = _MISSING, *, must_exist: bool = True) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise self.error(key, f"expected a file path, got {value!r}")
        path = Path(value).expanduser()
        if must_exist and not path.is_file():
            raise self.error(key, f"file {str(path)!r} does not exist")
        return path

    def section(self, key: str) -> ConfigSection:
        """A nested mapping (an absent or null one reads as empty)."""
        value = self.raw(key, {})
        return ConfigSection(value, self.where(key))

    def finish(self, allowed_note: str = "") -> None:
        unknown = sorted(set(map(str, self.data)) - self.seen)
        if unknown:
            known = ", ".join(sorted(self.seen))
            raise self.error(unknown[0], f"unknown key{allowed_note} (known keys: {known})")


def check_image_size(section: ConfigSection, model_size: int) -> None:
    """Fail fast when params.yaml's ``image_size`` differs from the model's input size."""
    wanted = section.get_int("image_size", None)
    if wanted is not None and wanted != model_size:
        raise section.error(
            "image_size",
            f"{wanted} does not match the model's input size {model_size}; set image_size: {model_size} "
            "(or remove the key) -- images are resized to what the model was trained on",
        )


def check_concepts(concepts: Sequence[str]) -> list[str]:
    """The concept list as a list of distinct, non-empty strings (a duplicate would make columns ambiguous)."""
    if isinstance(concepts, str) or not isinstance(concepts, Iterable):
        raise ValueError(f"concepts must be a sequence of strings, got {type(concepts).__name__}")
    concepts = list(concepts)
    if not concepts:
        raise ValueError("concepts: empty concept list")
    bad = [c for c in concepts if not isinstance(c, str) or not c.strip()]
    if bad:
        raise ValueError(f"concepts: expected non-empty strings, got {bad[:3]!r}")
    seen: set[str] = set()
    dupes = [c for c in concepts if c in seen or seen.add(c)]  # type: ignore[func-returns-value]
    if dupes:
        raise ValueError(f"concepts: duplicate names {sorted(set(dupes))[:5]!r}")
    return concepts


# ------------------------------------------------------------------------------------ fingerprints


def concepts_digest(concepts: Sequence[str]) -> str:
    """SHA-256 of the ordered concept list (the order is the column order of the scores)."""
    return sha256_json(list(concepts))


# the package's one hashing helper, under the names the tagger modules use
json_digest = sha256_json
file_sha256 = sha256_file


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and values of a state dict's tensors.

    Unlike a file hash it identifies the weights themselves, so a tagger trained in memory and the same
    tagger saved and loaded again have the same fingerprint.
    """

    def chunks():
        for name in sorted(state_dict):
            tensor = state_dict[name].detach().cpu().contiguous()
            yield f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode()
            yield tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""

    return sha256_chunks(chunks())


# ------------------------------------------------------------------------------------ descriptions


def normalise_name(name: str) -> str:
    """A lenient match key for concept names: NFKC, case-folded, ``_`` as space, single spaces."""
    name = unicodedata.normalize("NFKC", name).replace("_", " ").casefold()
    return re.sub(r"\s+", " ", name).strip()


def load_descriptions(paths: str | Path | Sequence[str | Path]) -> dict[str, list[str]]:
    """Per-concept description lists from JSON files, in any of the three layouts in use.

    * the authors' release (``gpt_descriptions/*.json``): ``{concept: {concept: [str, ...]}}``;
    * RAM++'s ``llm_tag_des`` files: ``[{concept: [str, ...]}, ...]``;
    * a flat ``{concept: [str, ...]}``.

    With several files, the first file that describes a concept wins (deterministic, and the release
    describes a concept shared by two datasets the same way).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    merged: dict[str, list[str]] = {}
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        items: list[tuple[Any, Any]]
        if isinstance(data, list):
            items = [kv for entry in data if isinstance(entry, Mapping) for kv in entry.items()]
        elif isinstance(data, Mapping):
            items = list(data.items())
        else:
            raise ValueError(f"{path}: expected a JSON object or list, got {type(data).__name__}")
        for concept, value in items:
            if isinstance(value, Mapping):  # the release nests {concept: {concept: [...]}}
                value = [d for inner in value.values() for d in (inner if isinstance(inner, list) else [inner])]
            if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
                raise ValueError(f"{path}: descriptions of {concept!r} are not a list of strings")
            if value and concept not in merged:
                merged[str(concept)] = list(value)
    return merged


def match_descriptions(
    concepts: Sequence[str], descriptions: Mapping[str, Sequence[str]] | None
) -> list[list[str] | None]:
    """Each concept's descriptions (exact name first, then :func:`normalise_name`), ``None`` when absent."""
    if not descriptions:
        return [None] * len(concepts)
    lenient: dict[str, Sequence[str]] = {}
    for name, value in descriptions.items():
        lenient.setdefault(normalise_name(name), value)
    out: list[list[str] | None] = []
    for concept in concepts:
        value = descriptions.get(concept)
        if value is None:
            value = lenient.get(normalise_name(concept))
        if value is None:
            out.append(None)
            continue
        cleaned = [str(d) for d in value if str(d).strip()]
        out.append(cleaned or None)
    return out


def descriptions_from_config(
    section: ConfigSection, descriptions: Mapping[str, list[str]] | None
) -> Mapping[str, list[str]] | None:
    """The ``descriptions`` argument, completed by the JSON files of the config's ``descriptions`` key.

    The argument wins for concepts both describe: the stage passes what it resolved explicitly.
    """
    paths = section.get_str_list("descriptions", None)
    if paths is None:
        return descriptions
    for path in paths:
        if not Path(path).expanduser().is_file():
            raise section.error("descriptions", f"file {path!r} does not exist")
    try:
        loaded = load_descriptions([Path(p).expanduser() for p in paths])
    except (ValueError, json.JSONDecodeError) as err:
        raise section.error("descriptions", str(err)) from err
    loaded.update(descriptions or {})
    return loaded


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` means CUDA when available; anything else is passed to :class:`torch.device`."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
