"""Webdataset tar framing: the samples of a tar, streamed, with truncation caught wherever it happens.

The one grouping of a tar's files into samples that the caption side (``helpers.text.captions``) and the
image side (``helpers.images.sources``) share, so both number a shard's samples identically.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field


class ShardReadError(Exception):
    """A shard cannot be read (further); recorded in the shard's stats, never raised to the caller."""


@dataclass
class TarSample:
    """One webdataset sample: its position in the tar, key, and files by (lower-case) extension."""

    position: int
    key: str
    files: dict[str, bytes] = field(default_factory=dict)


def _split_name(name: str) -> tuple[str, str] | None:
    """webdataset's key/extension split: key = path up to the first dot of the file name."""
    directory, _, base = name.rpartition("/")
    if "." not in base:
        return None
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)


class _StrictTarInfo(tarfile.TarInfo):
    """A ``TarInfo`` whose header reading refuses the truncations ``tarfile`` reads as a normal end.

    Python's ``tarfile`` ends an archive quietly at an empty or short header block and at a block with a
    bad checksum (``TarFile.next`` swallows ``EmptyHeaderError``, ``TruncatedHeaderError`` and
    ``InvalidHeaderError`` after the first member), so a tar cut at or inside a header reads as a shorter,
    healthy one. POSIX (pax / ustar, IEEE 1003.1) ends an archive with two zero blocks: here anything else
    raises ``ShardReadError``.
    """

    @classmethod
    def fromtarfile(cls, tarfile_obj):  # noqa: D102 - tarfile's hook, see the class docstring
        offset = tarfile_obj.fileobj.tell()
        buf = tarfile_obj.fileobj.read(tarfile.BLOCKSIZE)
        if len(buf) < tarfile.BLOCKSIZE:
            what = "no end-of-archive blocks" if not buf else f"a header cut after {len(buf)} bytes"
            raise ShardReadError(f"truncated tar: {what} at byte {offset}")
        if buf == _ZERO_BLOCK:
            second = tarfile_obj.fileobj.read(tarfile.BLOCKSIZE)
            if second != _ZERO_BLOCK:
                raise ShardReadError(
                    f"truncated tar: the end-of-archive at byte {offset} has one zero block, not two"
                    if len(second) < tarfile.BLOCKSIZE
                    else f"damaged tar: a zero block followed by data at byte {offset}"
                )
            raise tarfile.EOFHeaderError("end of file header")
        try:
            obj = cls.frombuf(buf, tarfile_obj.encoding, tarfile_obj.errors)
        except tarfile.HeaderError as err:
            raise ShardReadError(f"damaged tar: invalid header at byte {offset}: {err}") from err
        obj.offset = offset
        return obj._proc_member(tarfile_obj)


def iter_tar_samples(path: str, extensions: set[str] | None = None) -> Iterator[TarSample]:
    """Samples of a webdataset tar, streamed in file order (the grouping both caption and image sides use).

    Consecutive files with the same key form a sample; a repeated extension starts a new one (as
    webdataset does). Files without an extension and ``__*__`` metadata files are skipped. Only the
    ``extensions`` asked for are read into memory (all when None). A damaged or truncated tar raises
    ``ShardReadError`` after the samples completed before the damage; the sample being read is lost (its
    next file may have been cut off). Truncation is caught wherever it is: inside a member's data, inside or
    at a header, or in the end-of-archive blocks (a tar must end with two zero blocks; see
    ``_StrictTarInfo``).
    """
    position = 0
    current: TarSample | None = None
    try:
        with tarfile.open(path, mode="r|*", tarinfo=_StrictTarInfo) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                split = _split_name(member.name)
                base = member.name.rpartition("/")[2]
                if split is None or (base.startswith("__") and base.endswith("__")):
                    continue
                key, ext = split
                if current is None or key != current.key or ext in current.files:
                    if current is not None:
                        yield current
                        position += 1
                    current = TarSample(position, key)
                if extensions is None or ext in extensions:
                    data = tar.extractfile(member)
                    current.files[ext] = data.read() if data is not None else b""
                else:
                    current.files.setdefault(ext, b"")  # presence only; the bytes are skipped
            if current is not None:
                yield current
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise ShardReadError(f"damaged or truncated tar after {position} complete samples: {err}") from err


__all__ = ["ShardReadError", "TarSample", "iter_tar_samples"]
