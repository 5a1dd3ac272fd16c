"""Shared pieces of the evaluation package: constants, digests, spec sections and template checks."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from helpers.hashing import sha256_file, sha256_json
from helpers.params import ConfigError
from helpers.text.encodings import EncodingError, read_text_file, split_lines

CACHE_VERSION = 1
PROMPT_SETS = ("class", "simple", "ensemble")
DEFAULT_KS = (1, 5, 10)
OVERALL = "__all__"  # the ``concept`` of an overall row
NO_PROMPT = "-"  # the ``prompt`` of a retrieval row
PLACEHOLDER = "{c}"
SIMPLE_TEMPLATE = "A photo of a {c}."
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
DATASET_FORMATS = ("imagefolder", "wds", "torchvision", "parquet")
TASKS = ("zero_shot", "retrieval")
ANNOTATION_KEYS = ("labels", "class_names", "captions", "task")  # dataset fingerprint parts images ignore
SCHEMA_PREFIXES = ("hf-hub:", "local-dir:")
CKPT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
RELEASE_METRIC = re.compile(r"^(?P<direction>i2t|t2i)_k=(?P<k>\d+)$")


# ============================================================================================ helpers


# the package's one hashing helper, under the names the evaluation modules use
digest = sha256_json
file_sha256 = sha256_file


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-blank lines of a text file, stripped (class names, concept lists).

    UTF-8 (a byte-order mark dropped) or UTF-16/32 with a byte-order mark; lines end at ``\n`` or
    ``\r\n`` only (``helpers.text.encodings``). Raises ``ConfigError`` naming the file otherwise.
    """
    try:
        text = read_text_file(path)
    except EncodingError as err:
        raise ConfigError(str(err)) from err
    return [line.strip() for line in split_lines(text) if line.strip()]


class EntryReader:
    """Reads an entry already checked by its params model, with errors naming ``evaluation.<kind>.<entry>.<key>``
    for what only the disk can tell (a missing folder, a file without class names)."""

    def __init__(self, prefix: str, spec: Mapping[str, Any]) -> None:
        self.prefix = prefix
        self.spec = spec

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


def check_templates(section: EntryReader, templates: Sequence[str] | None) -> tuple[str, ...] | None:
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
