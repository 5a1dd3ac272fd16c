"""helpers.hashing: the one hashing helper, and the cheap content fingerprint resumed runs rely on."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from helpers.hashing import file_fingerprint, sha256_bytes, sha256_chunks, sha256_file, sha256_json


def test_hashes_agree_with_hashlib(tmp_path):
    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_bytes(data) == sha256_file(tmp_path / "f", chunk_bytes=999) == expected
    assert sha256_chunks([data[:3], data[3:]]) == expected


def test_json_hash_is_canonical_and_refuses_unhashable_objects():
    assert sha256_json({"a": 1, "b": [np.int64(2), 0.5]}) == sha256_json({"b": [2, np.float64(0.5)], "a": 1})
    assert sha256_json({"p": Path("x/y")}) == sha256_json({"p": "x/y"})
    assert sha256_json("é") != sha256_json("e")
    with pytest.raises(TypeError, match="object"):
        sha256_json({"x": object()})  # a repr with a memory address would make keys unstable


@pytest.mark.parametrize("size", [10, 2 * 4096, 2 * 4096 + 1, 50_000])
def test_fingerprint_sees_every_kind_of_change(tmp_path, size):
    path = tmp_path / "f"
    data = bytearray(os.urandom(size))
    path.write_bytes(data)
    stat = path.stat()
    base = file_fingerprint(path, edge_bytes=4096)
    assert file_fingerprint(path, edge_bytes=4096) == base
    # same size, same mtime, one byte changed at either end
    for where in (0, size - 1):
        changed = bytearray(data)
        changed[where] ^= 0xFF
        path.write_bytes(changed)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert file_fingerprint(path, edge_bytes=4096) != base
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_fingerprint(path, edge_bytes=4096) == base
    with open(path, "ab") as fh:  # appended
        fh.write(b"x")
    assert file_fingerprint(path, edge_bytes=4096) != base
    path.write_bytes(data[:-1])  # cut
    assert file_fingerprint(path, edge_bytes=4096) != base
    assert file_fingerprint(tmp_path / "missing") is None
    # without the mtime: a copy elsewhere has the same fingerprint
    path.write_bytes(data)
    copy = tmp_path / "copy"
    copy.write_bytes(data)
    os.utime(copy, ns=(1, 1))
    assert file_fingerprint(copy, 4096, with_mtime=False) == file_fingerprint(path, 4096, with_mtime=False)
    assert "sha256" in base if size <= 2 * 4096 else "edges_sha256" in base
