"""The package's one hashing helper: SHA-256 of bytes, of a file, of a JSON-able object, and a cheap
content fingerprint of an input file.

Every cache key and run fingerprint of the package (shard runs, tagger and model identities, the evaluation
embedding cache) is built from these functions, so that "the same input" means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

#: bytes hashed at each end of a file by ``file_fingerprint``; files up to twice this are hashed whole
EDGE_BYTES = 1 << 16
_CHUNK = 1 << 22


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk_bytes: int = _CHUNK) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (a multi-GB checkpoint needs no memory).

    Raises ``FileNotFoundError`` / ``OSError`` naming the file when it cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_chunks(chunks: Iterable[bytes | bytearray | memoryview]) -> str:
    """Hex SHA-256 of the concatenation of ``chunks`` (streamed: nothing is joined in memory)."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def json_default(obj: Any) -> Any:
    """``json.dumps``'s ``default`` for numpy scalars/arrays, paths and sets; ``TypeError`` for the rest."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    raise TypeError(f"not JSON serialisable for hashing: {type(obj).__name__}")


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of ``obj`` (sorted keys, UTF-8 text kept, numpy scalars/arrays and paths
    converted); raises ``TypeError`` for anything else, so that no ``repr`` with a memory address slips in."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=json_default)


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of ``canonical_json(obj)``: equal for equal JSON values whatever their key order."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def file_fingerprint(
    path: str | os.PathLike, edge_bytes: int = EDGE_BYTES, *, with_mtime: bool = True
) -> dict[str, Any] | None:
    """A cheap fingerprint of a file's content: size, mtime (ns) and the SHA-256 of its head and tail.

    ``None`` when the file does not exist. ``with_mtime=False`` leaves the mtime out, for keys that must
    survive copying the data to another machine (the evaluation embedding cache); a mid-file edit that
    keeps the size is then seen only within the hashed edges. Files of at most ``2 * edge_bytes`` bytes are hashed whole
    (``"sha256"``); larger ones by their first and last ``edge_bytes`` (``"edges_sha256"``).

    Why not always a full hash: a resumed run fingerprints *every* shard of the corpus before deciding what
    to reuse, and reading terabytes of image tars for that would cost as much as the run. Why this is safe
    enough: any write to a file moves its mtime (the nanosecond one), an append or a cut changes its size
    and tail, and a replacement by another file (``cp -p``, ``rsync -t``, a DVC checkout of other data)
    changes its head, tail or size. What it cannot see is an edit in the middle of a large file that keeps
    its size and whose mtime was then set back by hand; delete the run folder after such surgery.
    """
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    size = stat.st_size
    out: dict[str, Any] = {"size": size, "mtime_ns": stat.st_mtime_ns} if with_mtime else {"size": size}
    with open(path, "rb") as handle:
        if size <= 2 * edge_bytes:
            out["sha256"] = sha256_bytes(handle.read())
        else:
            digest = hashlib.sha256(handle.read(edge_bytes))
            handle.seek(size - edge_bytes)
            digest.update(handle.read(edge_bytes))
            out["edges_sha256"] = digest.hexdigest()
    return out


__all__ = [
    "EDGE_BYTES",
    "canonical_json",
    "file_fingerprint",
    "json_default",
    "sha256_bytes",
    "sha256_chunks",
    "sha256_file",
    "sha256_json",
]
