"""Evaluation datasets (imagefolder, webdataset, torchvision) and the prompt templates of zero-shot classification."""

from __future__ import annotations

import inspect
import io
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from helpers.evaluation.classnames import (
    HINT,
    class_names_from,
    folder_class_names,
    readable_class_names,
    require_unique,
)
from helpers.evaluation.specs import (
    ANNOTATION_KEYS,
    DATASET_FORMATS,
    FOLDER_IMAGE_SUFFIXES,
    IMAGE_EXTS,
    PLACEHOLDER,
    PROMPT_SETS,
    SIMPLE_TEMPLATE,
    TASKS,
    EntryReader,
    check_templates,
    digest,
    read_lines,
)
from helpers.hashing import file_fingerprint
from helpers.params import ConfigError, validate_union
from helpers.params.evaluation import Dataset as DatasetParams
from helpers.text.captions import CaptionSource, iter_tar_samples, list_shards
from helpers.text.encodings import decode_lenient, split_lines

# =========================================================================================== datasets


@dataclass
class EvalDataset:
    """A downstream dataset: images (a torch Dataset yielding ``(index, tensor)``) and their annotations.

    Zero-shot datasets have ``labels`` (int64, one per image) and ``class_names``; retrieval datasets have
    ``captions`` (one list of captions per image) and optionally ``concepts``. ``fingerprint`` identifies
    the data for the embedding cache. ``images`` yields the dataset index with each tensor so that batches
    may arrive in any order (several loader workers over tar shards).
    """

    name: str
    images: Dataset
    n: int
    task: str = "zero_shot"
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    captions: list[list[str]] | None = None
    concepts: list[str] | None = None
    templates: tuple[str, ...] | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.n

    def image_fingerprint(self) -> dict[str, Any]:
        """The part of ``fingerprint`` that identifies the images (the image cache's key).

        Labels, class names and captions do not change an image embedding, so renaming a class or fixing
        a caption reuses the cached images.
        """
        return {k: v for k, v in self.fingerprint.items() if k not in ANNOTATION_KEYS}


def dataset_specs(section: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``evaluation.datasets`` mapping (name -> spec), checked to be a mapping of mappings."""
    datasets = section.get("datasets") if isinstance(section, Mapping) else None
    if not isinstance(datasets, Mapping) or not datasets:
        raise ConfigError("evaluation.datasets: expected a non-empty mapping {dataset_name: {format, ...}}")
    for name, spec in datasets.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"evaluation.datasets.{name}: expected a mapping of settings")
    return {str(k): dict(v) for k, v in datasets.items()}


def _open_rgb(data: bytes | str | os.PathLike, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image {what}: {err}") from err


class _FileImages(Dataset):
    """Image files, preprocessed on access."""

    def __init__(self, paths: Sequence[str], preprocess: Callable) -> None:
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, self.preprocess(_open_rgb(self.paths[i], self.paths[i]))


class _TorchvisionImages(Dataset):
    """A torchvision dataset whose ``transform`` is the model's preprocessing; yields (index, tensor)."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, self.base[i][0]


class _TarImages(IterableDataset):
    """Images of webdataset tars, streamed; loader worker ``w`` of ``W`` reads shards ``w, w+W, ...``.

    ``index[(shard, position)]`` is the dataset index of each kept sample (from the metadata pass).
    """

    def __init__(self, shards: Sequence[str], index: Mapping[tuple[int, int], tuple[int, str]], preprocess: Callable):
        self.shards, self.index, self.preprocess = list(shards), dict(index), preprocess
        self.n = len(self.index)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        exts = {ext for _, ext in self.index.values()}
        for s in range(worker, len(self.shards), n_workers):
            for sample in iter_tar_samples(self.shards[s], exts):
                entry = self.index.get((s, sample.position))
                if entry is not None:
                    i, ext = entry
                    what = f"{sample.key}.{ext} in {self.shards[s]}"
                    yield i, self.preprocess(_open_rgb(sample.files[ext], what))


#: bytes hashed at each end of every dataset file for the image cache's key (whole files up to twice this)
DATASET_EDGE_BYTES = 1 << 12


def _fingerprint_files(paths: Iterable[str], root: str | None = None) -> list[list[Any]]:
    """(relative name, content fingerprint) of each file: size and SHA-256 of its first and last 4 KiB
    (``helpers.hashing.file_fingerprint`` without the mtime, so the key survives copying the dataset).

    A replaced or edited image changes its size or its hashed edges (JPEG/PNG headers and the end of the
    coded data), so the embedding cache does not serve stale vectors; reading 8 KiB per file costs far less
    than embedding it."""
    out = []
    for p in paths:
        name = os.path.relpath(p, root) if root else os.path.basename(p)
        out.append([name.replace(os.sep, "/"), file_fingerprint(p, DATASET_EDGE_BYTES, with_mtime=False)])
    return out


def load_dataset(spec: Mapping[str, Any], preprocess: Callable, *, name: str | None = None) -> EvalDataset:
    """Open a downstream dataset from an ``evaluation.datasets`` entry (formats in the module docstring)."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"evaluation.datasets.{name}: expected a mapping of settings")
    fmt = spec.get("format")
    label = name or "?"
    if fmt not in DATASET_FORMATS:
        raise ConfigError(
            f"evaluation.datasets.{label}.format: expected one of {', '.join(DATASET_FORMATS)}, got {fmt!r}"
        )
    validate_union(DatasetParams, dict(spec), f"evaluation.datasets.{label}")
    section = EntryReader(f"evaluation.datasets.{label}", spec)
    task = spec.get("task", "zero_shot")
    if task not in TASKS or (task == "retrieval" and fmt != "wds"):
        allowed = TASKS if fmt == "wds" else ("zero_shot",)
        raise section.error("task", f"expected one of {', '.join(allowed)} for format {fmt}, got {task!r}")
    templates = check_templates(section, section.str_list("templates"))
    if fmt == "imagefolder":
        ds = _load_imagefolder(section, spec, preprocess, name)
    elif fmt == "torchvision":
        ds = _load_torchvision(section, spec, preprocess, name)
    elif fmt == "parquet":
        ds = _load_parquet(section, spec, preprocess, name, task)
    else:
        ds = _load_wds(section, spec, preprocess, name, task)
    ds.templates = templates
    ds.fingerprint["format"] = fmt
    return ds


def _load_imagefolder(
    section: EntryReader, spec: Mapping[str, Any], preprocess: Callable, name: str | None
) -> EvalDataset:
    root = section.existing_path("root", required=True, kind="folder")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise section.error("root", f"{str(root)!r} has no class sub-folders")
    from_folders: list[str] | None = None
    try:  # folders differing only by '_' versus ' ' would share a name; WordNet ids are no names
        from_folders, source = folder_class_names(folders)
    except ValueError as err:
        source = str(err)
    class_names = class_names_from(section, spec, len(folders), folders)
    if class_names is None:
        if from_folders is None:
            raise section.error("class_names", f"{source}; {HINT}")
        require_unique(section, "class_names", from_folders, f"{source} of {str(root)!r}", HINT)
        class_names = from_folders
    if from_folders is not None and class_names != from_folders and sorted(class_names) == sorted(from_folders):
        # The given names are exactly the folders' names in another order (e.g. a classes.txt in id order):
        # read by position they would label every folder with another folder's name, so match by name.
        warnings.warn(
            f"{section.prefix}: class names are the folder names in another order; matched by name, not by position",
            stacklevel=3,
        )
        class_names = from_folders
    paths, labels = [], []
    for label_i, folder in enumerate(folders):
        files = sorted(
            str(p) for p in (root / folder).rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_IMAGE_SUFFIXES
        )
        paths.extend(files)
        labels.extend([label_i] * len(files))
    if not paths:
        raise section.error("root", f"no image files under {str(root)!r}")
    labels_arr = np.asarray(labels, dtype=np.int64)
    fingerprint = {
        "files": digest(_fingerprint_files(paths, str(root))),
        "labels": digest(labels_arr.tolist()),
        "class_names": class_names,
    }
    return EvalDataset(
        name or root.name, _FileImages(paths, preprocess), len(paths), "zero_shot", labels_arr, class_names,
        fingerprint=fingerprint,
    )  # fmt: skip


def _torchvision_labels(base: Any) -> np.ndarray:
    """The labels without decoding images where the dataset exposes them (else one pass over it)."""
    for attr in ("targets", "_labels", "labels", "y", "_samples"):
        value = getattr(base, attr, None)
        if value is None:
            continue
        if attr == "_samples":
            value = [s[1] for s in value]
        arr = np.asarray(value)
        if arr.ndim == 1 and len(arr) == len(base) and np.issubdtype(arr.dtype, np.integer):
            return arr.astype(np.int64)
    transform, base.transform = base.transform, None
    try:
        return np.asarray([int(base[i][1]) for i in tqdm(range(len(base)), desc="labels", leave=False)], dtype=np.int64)
    finally:
        base.transform = transform


def _load_torchvision(
    section: EntryReader, spec: Mapping[str, Any], preprocess: Callable, name: str | None
) -> EvalDataset:
    import torchvision.datasets as tvd

    cls_name = section.get_str("name", required=True)
    cls = getattr(tvd, cls_name, None)
    if not inspect.isclass(cls):
        raise section.error("name", f"{cls_name!r} is not a torchvision.datasets class")
    root = section.get_str("root", required=True)
    split = section.get_str("split", "test")
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {"transform": preprocess}
    if "split" in params:
        kwargs["split"] = split
    elif "train" in params:
        if split not in ("train", "test"):
            raise section.error("split", f"{cls_name} has only train/test, got {split!r}")
        kwargs["train"] = split == "train"
    elif "split" in spec:
        raise section.error("split", f"{cls_name} has no splits; remove `split`")
    else:
        split = None
    if "download" in params:
        kwargs["download"] = False
    try:
        base = cls(root, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as err:
        raise section.error(
            "root", f"{cls_name} ({split}) is not in {root!r} and is never downloaded here; put it there first ({err})"
        ) from err
    except ValueError as err:
        raise section.error("split", f"{cls_name}: {err}") from err
    labels = _torchvision_labels(base)
    own = list(getattr(base, "classes", None) or []) or None
    n_classes = len(own) if own else int(labels.max()) + 1
    class_names = class_names_from(section, spec, n_classes)
    if class_names is None:  # the dataset's own names, readable (synonym tuples) and one per class
        if own is None:
            raise section.error("class_names", f"{cls_name} has no `classes`; give class_names or class_names_file")
        try:
            class_names, source = readable_class_names(own, cls)
        except ValueError as err:
            raise section.error("class_names", f"{err}; {HINT}") from err
        require_unique(section, "class_names", class_names, source, HINT)
    fingerprint = {
        "torchvision": cls_name, "split": split, "n": len(base), "labels": digest(labels.tolist()),
        "class_names": class_names,
    }  # fmt: skip
    return EvalDataset(
        name or cls_name.lower(), _TorchvisionImages(base), len(base), "zero_shot", labels, class_names,
        fingerprint=fingerprint,
    )  # fmt: skip


def _load_wds(
    section: EntryReader, spec: Mapping[str, Any], preprocess: Callable, name: str | None, task: str
) -> EvalDataset:
    paths = spec.get("paths")
    if paths is None:
        raise section.error("paths", "missing")
    try:
        shards = [s.path for s in list_shards(CaptionSource(format="wds", paths=paths))]
    except ConfigError as err:
        raise section.error("paths", str(err).removeprefix("paths: ")) from err
    missing = [p for p in shards if not os.path.isfile(p)]
    if missing:
        raise section.error("paths", f"{len(missing)} shard(s) missing, e.g. {missing[0]!r}")
    image_exts = spec.get("image_ext", list(IMAGE_EXTS))
    image_exts = [image_exts] if isinstance(image_exts, str) else image_exts
    if not image_exts or not all(isinstance(e, str) for e in image_exts):
        raise section.error("image_ext", f"expected an extension or a list of them, got {image_exts!r}")
    image_exts = [e.lower().lstrip(".") for e in image_exts]
    if task == "zero_shot":
        meta_ext = section.get_str("label_key", "cls").lower().lstrip(".")
        class_names = class_names_from(section, spec, None)
        if class_names is None:
            raise section.error("class_names", "missing (give class_names or class_names_file)")
        for key in ("caption_ext", "max_captions", "concepts", "concepts_file"):
            if key in spec:
                raise section.error(key, "only used with task: retrieval")
    else:
        meta_ext = section.get_str("caption_ext", "txt").lower().lstrip(".")
        max_captions = spec.get("max_captions")
        positive = isinstance(max_captions, int) and not isinstance(max_captions, bool) and max_captions >= 1
        if max_captions is not None and not positive:
            raise section.error("max_captions", f"expected a positive integer, got {max_captions!r}")
        class_names = None
        for key in ("label_key", "class_names", "class_names_file"):
            if key in spec:
                raise section.error(key, "only used with task: zero_shot")

    index: dict[tuple[int, int], tuple[int, str]] = {}
    labels: list[int] = []
    captions: list[list[str]] = []
    keys: list[str] = []
    stats = {"samples": 0, "no_image": 0, "no_annotation": 0}
    lookup = {c: i for i, c in enumerate(class_names or [])}
    for s, shard in enumerate(tqdm(shards, desc="dataset metadata", leave=False, disable=len(shards) < 4)):
        for sample in iter_tar_samples(shard, {meta_ext}):
            stats["samples"] += 1
            ext = next((e for e in image_exts if e in sample.files), None)
            data = sample.files.get(meta_ext)
            if ext is None:
                stats["no_image"] += 1
                continue
            text = decode_lenient(data)[0].strip() if data is not None else ""
            if task == "zero_shot":
                if not text:
                    stats["no_annotation"] += 1
                    continue
                try:
                    label = int(text)
                except ValueError:
                    if text not in lookup:
                        raise ValueError(
                            f"{shard}: sample {sample.key!r} has label {text!r}, not an index or class name"
                        ) from None
                    label = lookup[text]
                if not 0 <= label < len(lookup):
                    raise ValueError(f"{shard}: sample {sample.key!r} has label {label}, outside 0..{len(lookup) - 1}")
                labels.append(label)
            else:
                # the caption readers' line rule: \n and \r\n only (not U+2028, U+0085, form feeds)
                lines = [line.strip() for line in split_lines(text) if line.strip()]
                if not lines:
                    stats["no_annotation"] += 1
                    continue
                captions.append(lines[:max_captions])
            index[(s, sample.position)] = (len(keys), ext)
            keys.append(f"{s}/{sample.key}")
    if not keys:
        raise section.error("paths", f"no usable samples in {len(shards)} shard(s) ({stats})")
    if stats["no_image"] or stats["no_annotation"]:
        warnings.warn(f"{section.prefix}: left out samples without an image or {meta_ext} file: {stats}", stacklevel=3)
    stats["kept"] = len(keys)
    fingerprint: dict[str, Any] = {
        "shards": digest(_fingerprint_files(shards)),
        "keys": digest(keys),
        "image_ext": image_exts,
        "task": task,
    }
    concepts = None
    if task == "zero_shot":
        labels_arr = np.asarray(labels, dtype=np.int64)
        fingerprint.update(labels=digest(labels_arr.tolist()), class_names=class_names)
    else:
        labels_arr = None
        fingerprint["captions"] = digest(captions)
        given, file_ = section.str_list("concepts"), section.existing_path("concepts_file")
        if given is not None and file_ is not None:
            raise section.error("concepts", "give concepts or concepts_file, not both")
        concepts = given if given is not None else (read_lines(file_) if file_ is not None else None)
    default_name = Path(shards[0]).parent.name or "wds"
    return EvalDataset(
        name or default_name, _TarImages(shards, index, preprocess), len(keys), task, labels_arr, class_names,
        captions if task == "retrieval" else None, concepts, fingerprint=fingerprint, stats=stats,
    )  # fmt: skip


class _ParquetImages(IterableDataset):
    """Images of Parquet files, streamed a row group at a time; loader worker ``w`` of ``W`` reads files
    ``w, w+W, ...``. ``index[(file, row)]`` is the dataset index of each kept row."""

    def __init__(self, files: Sequence[str], column: str, index: Mapping[tuple[int, int], int], preprocess: Callable):
        self.files, self.column, self.index, self.preprocess = list(files), column, dict(index), preprocess
        self.n = len(self.index)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        import pyarrow.parquet as pq

        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for f in range(worker, len(self.files), n_workers):
            row = 0
            for batch in pq.ParquetFile(self.files[f]).iter_batches(columns=[self.column], batch_size=256):
                for value in batch.column(0).to_pylist():
                    i = self.index.get((f, row))
                    if i is not None:
                        data = value["bytes"] if isinstance(value, dict) else value
                        yield i, self.preprocess(_open_rgb(data, f"row {row} of {self.files[f]}"))
                    row += 1


def _load_parquet(
    section: EntryReader, spec: Mapping[str, Any], preprocess: Callable, name: str | None, task: str
) -> EvalDataset:
    """``format: parquet``: one row per image, image bytes and a label column (keys in the package docstring)."""
    import glob

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if task != "zero_shot":
        raise section.error("task", "the parquet format holds zero-shot datasets only")
    raw = spec.get("paths")
    if raw is None:
        raise section.error("paths", "missing")
    patterns = [raw] if isinstance(raw, (str, os.PathLike)) else raw
    if (
        not isinstance(patterns, Sequence)
        or not patterns
        or not all(isinstance(p, (str, os.PathLike)) for p in patterns)
    ):
        raise section.error("paths", f"expected a path, glob or folder, or a list of them, got {raw!r}")
    files: list[str] = []
    for pattern in map(os.fspath, patterns):
        if os.path.isdir(pattern):
            files += sorted(str(p) for p in Path(pattern).rglob("*.parquet"))
        else:
            found = sorted(glob.glob(pattern))
            if not found:
                raise section.error("paths", f"no Parquet file matches {pattern!r}")
            files += found
    if not files:
        raise section.error("paths", f"no *.parquet files under {raw!r}")
    image_col = section.get_str("image_column", "image")
    label_col = section.get_str("label_column", "label")
    class_names = class_names_from(section, spec, None)
    if class_names is None:
        raise section.error("class_names", "missing (give class_names or class_names_file)")
    lookup = {c: i for i, c in enumerate(class_names)}
    index: dict[tuple[int, int], int] = {}
    labels: list[int] = []
    stats = {"samples": 0, "no_image": 0, "no_annotation": 0}
    for f, path in enumerate(files):
        try:
            meta = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises ArrowInvalid/OSError for a file that is no Parquet
            raise section.error("paths", f"{path}: not a readable Parquet file ({err})") from err
        columns = meta.schema_arrow.names
        for key, col in (("image_column", image_col), ("label_column", label_col)):
            if col not in columns:
                raise section.error(key, f"{path} has no column {col!r} (columns: {', '.join(columns)})")
        labels_of, nulls = [], []
        for batch in meta.iter_batches(columns=[label_col, image_col], batch_size=1024):  # bounded memory
            labels_of += batch.column(0).to_pylist()
            images = batch.column(1)
            missing = images.is_null()
            if pa.types.is_struct(images.type) and images.type.get_field_index("bytes") >= 0:  # HF Image feature
                missing = pc.or_(missing, images.field("bytes").is_null())
            nulls += missing.to_pylist()
        for row, value in enumerate(labels_of):
            stats["samples"] += 1
            if nulls[row]:
                stats["no_image"] += 1
                continue
            if value is None or (isinstance(value, str) and not value.strip()):
                stats["no_annotation"] += 1
                continue
            if isinstance(value, str) and value.strip() in lookup:
                label = lookup[value.strip()]
            else:
                try:
                    label = int(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{path}: row {row} has label {value!r}, not an index or class name") from None
            if not 0 <= label < len(class_names):
                raise ValueError(f"{path}: row {row} has label {label}, outside 0..{len(class_names) - 1}")
            index[(f, row)] = len(labels)
            labels.append(label)
    if not labels:
        raise section.error("paths", f"no usable rows in {len(files)} Parquet file(s) ({stats})")
    if stats["no_image"] or stats["no_annotation"]:
        warnings.warn(f"{section.prefix}: left out rows without an image or label: {stats}", stacklevel=3)
    stats["kept"] = len(labels)
    labels_arr = np.asarray(labels, dtype=np.int64)
    fingerprint = {
        "files": digest(_fingerprint_files(files)), "image_column": image_col, "rows": digest(sorted(index)),
        "labels": digest(labels_arr.tolist()), "class_names": class_names,
    }  # fmt: skip
    return EvalDataset(
        name or Path(files[0]).parent.name or "parquet", _ParquetImages(files, image_col, index, preprocess),
        len(labels), "zero_shot", labels_arr, class_names, fingerprint=fingerprint, stats=stats,
    )  # fmt: skip


# ============================================================================================ prompts


def openai_imagenet_templates() -> tuple[str, ...]:
    """The 80 ImageNet templates of OpenAI's CLIP, as open_clip ships them, with ``{c}`` placeholders.

    open_clip keeps them as lambdas (``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``); calling
    each with the placeholder itself gives the template string.
    """
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t(PLACEHOLDER) for t in OPENAI_IMAGENET_TEMPLATES)


def prompt_templates(prompt_set: str, templates: Sequence[str] | None = None) -> tuple[str, ...]:
    """The templates of a prompt set; ``templates`` overrides the ensemble (a dataset's own list)."""
    if prompt_set == "class":
        return (PLACEHOLDER,)
    if prompt_set == "simple":
        return (SIMPLE_TEMPLATE,)
    if prompt_set == "ensemble":
        return tuple(templates) if templates else openai_imagenet_templates()
    raise ValueError(f"unknown prompt set {prompt_set!r} (expected one of {', '.join(PROMPT_SETS)})")


def class_prompts(class_name: str, templates: Sequence[str]) -> list[str]:
    """The prompts of one class: each template with the class name in place of ``{c}``."""
    return [t.replace(PLACEHOLDER, class_name) for t in templates]
