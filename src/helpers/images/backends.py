"""Image-tagger backends and the factory the image-search stage calls with ``image_corpora.<name>.tagger``.

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

Config (an ``image_corpora.<name>.tagger`` entry of params.yaml, see :mod:`helpers.params.images`), keys common to all backends:

``backend``
    ``open_clip`` | ``trained`` | ``rampp`` (required).
``image_size``
    Optional; when given it must equal the model's input size, otherwise :class:`ConfigError` -- a
    wrong resolution would silently degrade every score, so the stage fails before reading any image.

The remaining keys are backend-specific and documented in each module. Unknown keys, missing required
keys and wrong types raise :class:`helpers.shards.ConfigError` whose message starts with the full key,
e.g. ``image_corpora.my_cc3m.tagger.calibration.tau: input should be greater than 0, got -1``.

This module also holds the small utilities shared by the backends (config reading, hashing for
fingerprints, description files), so every backend reports errors and fingerprints the same way.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from helpers.hashing import sha256_chunks, sha256_file, sha256_json
from helpers.images.taggers import Tagger
from helpers.params import ConfigError, validate_union
from helpers.params.images import Tagger as TaggerParams

#: where a tagger config sits in params.yaml unless the caller says (``image_corpora.<name>.tagger``)
PREFIX = "tagger"
BACKENDS = ("open_clip", "trained", "rampp")

__all__ = [
    "BACKENDS",
    "ConfigError",
    "PREFIX",
    "TaggerEntry",
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
    prefix: str = PREFIX,
) -> Tagger:
    """The tagger that ``config`` (an ``image_corpora.<name>.tagger`` entry) describes, scoring ``concepts``.

    ``concepts`` fixes the score columns: column ``j`` of ``tagger.scores(...)`` is ``concepts[j]``.
    ``descriptions`` maps a concept to description strings (the release's ``gpt_descriptions``); the
    ``rampp`` backend builds its open-set label embeddings from them and ``open_clip`` can add them to its
    prompts (``use_descriptions: true``); ``trained`` ignores them.

    Raises :class:`ConfigError` naming ``<prefix>.<key>`` (``prefix``: where the config sits in params.yaml)
    for an unknown backend and for unknown, missing or ill-typed keys (checked by the models of
    :mod:`helpers.params.images`), before any model is loaded where possible.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping with at least `backend`, got {type(config).__name__}")
    concepts = check_concepts(concepts)
    checked = validate_union(TaggerParams, dict(config), prefix)
    backend = checked.backend
    # Imported here, not at the top: each backend module imports its own heavy dependencies.
    if backend == "open_clip":
        from helpers.images import tagger_openclip as module
    elif backend == "trained":
        from helpers.images import tagger_trained as module
    else:
        from helpers.images import tagger_rampp as module
    return module.from_config(TaggerEntry(checked, prefix), concepts, descriptions=descriptions)


# ------------------------------------------------------------------------------------ config reading


@dataclass(frozen=True)
class TaggerEntry:
    """A tagger config checked by its params model (:mod:`helpers.params.images`), and where it sits.

    Backends read ``config``'s attributes (keys, types, defaults and ranges are the model's) and report what
    only the disk or the model can tell with :meth:`error`, whose message starts with ``<prefix>.<key>``.
    """

    config: Any  # TrainedTagger | OpenClipTagger | RamppTagger (helpers.params.images)
    prefix: str = PREFIX

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.prefix}.{key}: {message}")

    def existing_file(self, key: str, value: str | Path) -> Path:
        """``value`` as a path (``~`` expanded); a :class:`ConfigError` naming ``key`` when it is no file."""
        path = Path(value).expanduser()
        if not path.is_file():
            raise self.error(key, f"file {str(path)!r} does not exist")
        return path


def check_image_size(entry: TaggerEntry, model_size: int) -> None:
    """Fail fast when params.yaml's ``image_size`` differs from the model's input size."""
    wanted = entry.config.image_size
    if wanted is not None and wanted != model_size:
        raise entry.error(
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
    entry: TaggerEntry, descriptions: Mapping[str, list[str]] | None
) -> Mapping[str, list[str]] | None:
    """The ``descriptions`` argument, completed by the JSON files of the config's ``descriptions`` key.

    The argument wins for concepts both describe: the stage passes what it resolved explicitly.
    """
    paths = entry.config.descriptions
    if paths is None:
        return descriptions
    paths = [paths] if isinstance(paths, str) else list(paths)
    for path in paths:
        if not Path(path).expanduser().is_file():
            raise entry.error("descriptions", f"file {path!r} does not exist")
    try:
        loaded = load_descriptions([Path(p).expanduser() for p in paths])
    except (ValueError, json.JSONDecodeError) as err:
        raise entry.error("descriptions", str(err)) from err
    loaded.update(descriptions or {})
    return loaded
