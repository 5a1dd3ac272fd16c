"""Class names of zero-shot datasets: readable names for torchvision's synonym tuples, and one name per class.

A zero-shot classifier embeds a prompt per class name, and every per-class result (the release's
``classwise`` dict, the tidy ``concept`` column, the join with concept counts) is keyed by that name. So:

* torchvision datasets whose ``classes`` are tuples of synonyms (``ImageNet``: WordNet synonym sets such as
  ``('tench', 'Tinca tinca')``; ``Imagenette``) must not be turned into prompts with ``str(tuple)``. ImageNet
  gets the curated names of OpenAI's CLIP as open_clip ships them
  (``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``), with the two repeated names of that list made
  unique as the study's release names them (:data:`IMAGENET_STUDY_FIXES`); any other dataset with tuple
  classes gets the first synonym of each tuple (WordNet's head word).
* two classes with the same name would share one prompt and one result row (ImageNet's two ``crane``
  synsets under raw WordNet names: the second scores 0% and the results cannot be written). Repeated names
  are refused when the dataset is opened, listing them, whatever their source; a dataset entry's own
  ``class_names`` / ``class_names_file`` replace the derived names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from helpers.evaluation.specs import EntryReader, read_lines

#: torchvision dataset classes whose names come from a curated list: class name -> (module, attribute)
CURATED_CLASS_NAMES = {"ImageNet": ("open_clip.zero_shot_metadata", "IMAGENET_CLASSNAMES")}

#: open_clip's ImageNet list names two pairs of synsets alike (n03773504 and n04008634 both ``missile``;
#: n04355933 and n04356056 both ``sunglasses``). The study's release (its ImageNet count files and
#: ``zero_shot_evaluations/imagenet_*_results.json``, in label order) names the second ``missile``
#: ``projectile`` and the first ``sunglasses`` ``sunglass``: index -> (open_clip's name, the study's name).
IMAGENET_STUDY_FIXES = {744: ("missile", "projectile"), 836: ("sunglasses", "sunglass")}

#: an ImageNet class folder: a WordNet noun id (``n01440764``)
WORDNET_ID = re.compile(r"^n\d{8}$")
#: the number of ImageNet-1k classes: folders that are this many WordNet ids, sorted, are its label order
IMAGENET_CLASSES = 1000

HINT = "give class_names or class_names_file with one distinct name per class (label order)"


def repeated_names(names: Sequence[str]) -> dict[str, list[int]]:
    """Each name given to more than one class, with the (0-based) class indices that carry it."""
    where: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        where.setdefault(name, []).append(i)
    return {name: idx for name, idx in where.items() if len(idx) > 1}


def describe_repeats(repeats: Mapping[str, list[int]], *, limit: int = 10) -> str:
    """``'crane' (classes 134, 517), ...``: the repeated names for an error message (at most ``limit``)."""
    parts = [f"{name!r} (classes {', '.join(map(str, idx))})" for name, idx in list(repeats.items())[:limit]]
    more = f" and {len(repeats) - limit} more" if len(repeats) > limit else ""
    return ", ".join(parts) + more


def require_unique(section: EntryReader, key: str, names: Sequence[str], source: str, hint: str = "") -> None:
    """Raise ``ConfigError`` naming ``<entry>.<key>`` and every repeated name when two classes share a name."""
    repeats = repeated_names(names)
    if repeats:
        n = len(repeats)
        message = f"{source} gives {n} name{'s' if n > 1 else ''} to more than one class: {describe_repeats(repeats)}"
        raise section.error(key, message + (f"; {hint}" if hint else ""))


def curated_class_names(dataset_class: type | str) -> tuple[list[str], str] | None:
    """The curated names of a torchvision dataset class (or of a base class), and where they come from.

    ``ImageNet`` (and its subclasses): open_clip's ``IMAGENET_CLASSNAMES`` (1000 names in label order, the
    names OpenAI's CLIP evaluated with) with :data:`IMAGENET_STUDY_FIXES` applied. None for other datasets.
    Raises ``RuntimeError`` if the installed open_clip's list is not the one these fixes were written for.
    """
    bases = [dataset_class] if isinstance(dataset_class, str) else [c.__name__ for c in dataset_class.__mro__]
    key = next((b for b in bases if b in CURATED_CLASS_NAMES), None)
    if key is None:
        return None
    import importlib

    module_name, attr = CURATED_CLASS_NAMES[key]
    module = importlib.import_module(module_name)
    names = [str(n) for n in getattr(module, attr)]
    for i, (old, new) in IMAGENET_STUDY_FIXES.items():
        if len(names) != 1000 or names[i] != old:
            got = names[i] if i < len(names) else "nothing"
            raise RuntimeError(f"{module_name}.{attr}[{i}] is {got!r}, not {old!r}: this open_clip's list changed")
        names[i] = new
    version = getattr(importlib.import_module(module_name.split(".")[0]), "__version__", "?")
    return names, f"{module_name}.{attr} (open_clip {version}, study names at {sorted(IMAGENET_STUDY_FIXES)})"


def readable_class_names(classes: Sequence[Any], dataset_class: type | str) -> tuple[list[str], str]:
    """Prompt-ready names for a torchvision dataset's ``classes``, and a phrase saying where they come from.

    Curated names where :func:`curated_class_names` has them (checked to be one per class); otherwise a
    tuple or list of synonyms gives its first synonym (``('tench', 'Tinca tinca')`` -> ``tench``) and any
    other class its ``str``. Raises ``ValueError`` for an empty synonym tuple or a curated list of another
    length (the caller names the params key).
    """
    label = dataset_class if isinstance(dataset_class, str) else dataset_class.__name__
    tuples = any(isinstance(c, (tuple, list)) for c in classes)
    curated = curated_class_names(dataset_class) if tuples else None
    if curated is not None:
        names, source = curated
        if len(names) != len(classes):
            raise ValueError(f"{label} has {len(classes)} classes but {source} names {len(names)}")
        return names, source
    out = []
    for i, c in enumerate(classes):
        if isinstance(c, (tuple, list)):
            if not c or not str(c[0]).strip():
                raise ValueError(f"{label} class {i} has no name ({c!r})")
            out.append(str(c[0]).strip())
        else:
            out.append(str(c))
    return out, f"{label}.classes" + (" (first synonym of each)" if tuples else "")


def folder_class_names(folders: Sequence[str]) -> tuple[list[str], str]:
    """Class names of an imagefolder's sorted class folders, and a phrase saying where they come from.

    Folder names with ``_`` read as spaces; but 1000 folders named by WordNet ids (ImageNet and its variants
    such as ImageNet-Sketch: ``n01440764`` ...) are ImageNet's classes in label order and get the curated
    names of :func:`curated_class_names`, as torchvision's ``ImageNet`` does. Raises ``ValueError`` for
    another number of WordNet-id folders (a subset such as ImageNet-R's 200: which names they have needs
    a list the entry must give), rather than prompting with ``A photo of a n01440764.``.
    """
    if folders and all(WORDNET_ID.match(f) for f in folders):
        if len(folders) != IMAGENET_CLASSES:
            raise ValueError(
                f"the {len(folders)} folders are WordNet ids ({folders[0]}, ...), not class names; "
                f"only all {IMAGENET_CLASSES} of ImageNet are named without a list"
            )
        names, source = curated_class_names("ImageNet")  # type: ignore[misc]
        return names, f"{source} (the folders are ImageNet's {IMAGENET_CLASSES} WordNet ids)"
    return [f.replace("_", " ") for f in folders], "the folder names"


def class_names_from(
    section: EntryReader, spec: Mapping[str, Any], n_expected: int | None, folders: list[str] | None = None
) -> list[str] | None:
    """A dataset entry's own names: ``class_names`` (a list, or {folder: name} for an imagefolder) or
    ``class_names_file`` (one name per non-blank line). None when the entry gives neither.

    Raises ``ConfigError`` naming the key when both are given, a folder has no name, the count differs from
    ``n_expected``, or a name is repeated (listing every repeated name with its classes).
    """
    given, file_ = spec.get("class_names"), section.existing_path("class_names_file")
    if given is not None and file_ is not None:
        raise section.error("class_names", "give class_names or class_names_file, not both")
    if file_ is not None:
        names, key, source = read_lines(file_), "class_names_file", f"{os.fspath(file_)!r}"
    elif isinstance(given, Mapping) and folders is not None:
        missing = [f for f in folders if f not in given]
        if missing:
            raise section.error("class_names", f"no name for folder(s) {missing[:5]}")
        names, key, source = [str(given[f]) for f in folders], "class_names", "the list"
    elif given is not None:
        names, key, source = section.str_list("class_names"), "class_names", "the list"
    else:
        return None
    require_unique(section, key, names, source, "each class needs its own name")
    if n_expected is not None and len(names) != n_expected:
        raise section.error(key, f"{len(names)} class names for {n_expected} classes")
    return names
