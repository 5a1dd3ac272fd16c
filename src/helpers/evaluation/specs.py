"""Shared pieces of the evaluation package: constants, digests, spec sections and template checks."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from helpers.shards import ConfigError

CACHE_VERSION = 1
PROMPT_SETS = ("class", "simple", "ensemble")
PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_KS = (1, 5, 10)
OVERALL = "__all__"  # the ``concept`` of an overall row
NO_PROMPT = "-"  # the ``prompt`` of a retrieval row
PLACEHOLDER = "{c}"
SIMPLE_TEMPLATE = "A photo of a {c}."
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
DATASET_FORMATS = ("imagefolder", "wds", "torchvision", "parquet")
TASKS = ("zero_shot", "retrieval")
MODEL_KEYS = (
    "name", "pretrained", "model_config", "key", "quick_gelu", "image_mean", "image_std",
    "image_interpolation", "image_resize_mode", "cache_dir",
)  # fmt: skip
DATASET_KEYS = {
    "imagefolder": ("format", "root", "class_names", "class_names_file", "templates", "task"),
    "wds": (
        "format", "paths", "task", "image_ext", "label_key", "class_names", "class_names_file", "caption_ext",
        "max_captions", "concepts", "concepts_file", "templates",
    ),
    "torchvision": ("format", "name", "root", "split", "class_names", "class_names_file", "templates", "task"),
    "parquet": (
        "format", "paths", "image_column", "label_column", "class_names", "class_names_file", "templates", "task",
    ),
}  # fmt: skip
ANNOTATION_KEYS = ("labels", "class_names", "captions", "task")  # dataset fingerprint parts images ignore
SCHEMA_PREFIXES = ("hf-hub:", "local-dir:")
CKPT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
RELEASE_METRIC = re.compile(r"^(?P<direction>i2t|t2i)_k=(?P<k>\d+)$")


# ============================================================================================ helpers


def digest(obj: Any) -> str:
    """sha256 of a JSON-serialisable object in canonical form (the key of every fingerprint)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_lines(path: str | os.PathLike) -> list[str]:
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


class Section:
    """Error messages that name the config key: ``evaluation.<kind>.<entry>.<field>``."""

    def __init__(self, prefix: str, spec: Mapping[str, Any], known: Sequence[str]) -> None:
        self.prefix = prefix
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{prefix}: expected a mapping of settings, got {type(spec).__name__}")
        self.spec = spec
        unknown = sorted(set(spec) - set(known))
        if unknown:
            raise self.error(unknown[0], f"unknown key (known: {', '.join(sorted(known))})")

    def error(self, field_name: str, message: str) -> ConfigError:
        return ConfigError(f"{self.prefix}.{field_name}: {message}")

    def get_str(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        value = self.spec.get(key, default)
        if value is None:
            if required:
                raise self.error(key, "missing")
            return None
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise self.error(key, f"expected a non-empty string, got {value!r}")
        return os.fspath(value)

    def str_list(self, key: str) -> list[str] | None:
        value = self.spec.get(key)
        if value is None:
            return None
        if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected a list of strings, got {value!r}")
        if not value:
            raise self.error(key, "is empty")
        return list(value)

    def existing_path(self, key: str, *, required: bool = False, kind: str = "file") -> Path | None:
        value = self.get_str(key, required=required)
        if value is None:
            return None
        path = Path(value).expanduser()
        ok = path.is_dir() if kind == "folder" else path.is_file()
        if not ok:
            raise self.error(key, f"{kind} {value!r} does not exist")
        return path


def check_templates(section: Section, templates: Sequence[str] | None) -> tuple[str, ...] | None:
    """Templates with ``{c}``; CLIP's ``{}`` placeholder is accepted and converted."""
    if templates is None:
        return None
    out = []
    for t in templates:
        if PLACEHOLDER not in t and "{}" in t:
            t = t.replace("{}", PLACEHOLDER)
        if PLACEHOLDER not in t:
            raise section.error("templates", f"template {t!r} has no placeholder {{c}} (or {{}})")
        out.append(t)
    return tuple(out)
