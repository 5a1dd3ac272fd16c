"""Text-file encodings and line splitting shared by every text reader of the compendium.

* A UTF-8 byte-order mark (``EF BB BF``, as Excel and Notepad write it) is accepted and dropped
  everywhere: caption shards (tsv/csv/txt, also gzipped), class-name files, concept lists, retrieval
  caption files.
* UTF-16 and UTF-32 are recognised by their byte-order mark. Whole files read at once (class names,
  concept lists, retrieval captions) are decoded; streamed caption shards are refused with an error that
  names the file and the encoding (convert them once, e.g. ``iconv -f UTF-16 -t UTF-8``), so a shard in
  the wrong encoding is never counted as an empty ``ok`` shard.
* Lines end at ``\\n`` or ``\\r\\n`` only (``split_lines``), exactly as the streamed caption readers split
  them: U+2028, U+0085, form feeds and other characters that ``str.splitlines`` breaks at stay inside a
  line.

Public API::

    sniff_bom(head: bytes) -> (encoding | None, bom_length)
    decode_bytes(data, where) -> str                  # whole file: BOM-aware, strict; EncodingError
    decode_lenient(data) -> (str, invalid)            # one caption: BOM-aware, U+FFFD replacements
    url_decode(caption) -> (str, invalid)             # captions.decode: url
    read_text_file(path) -> str
    split_lines(text) -> list[str]
    skip_utf8_bom(stream, where) -> None              # streamed shards: drop a UTF-8 BOM, refuse UTF-16/32
"""

from __future__ import annotations

import os
import urllib.parse
from typing import IO

# longest first: the UTF-32 LE mark begins with the UTF-16 LE one
BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xfe\xff", "utf-16-be"),
    (b"\xff\xfe", "utf-16-le"),
)
_BOM_STARTS = tuple({bom[:1] for bom, _ in BOMS})


class EncodingError(ValueError):
    """A text file that is not UTF-8 (nor UTF-16/32 with a byte-order mark where those are read)."""


def sniff_bom(head: bytes) -> tuple[str | None, int]:
    """The encoding a byte-order mark at the start of ``head`` announces, and the mark's length.

    >>> sniff_bom(b"\\xef\\xbb\\xbfdog"), sniff_bom(b"\\xff\\xfed\\x00"), sniff_bom(b"dog")
    (('utf-8', 3), ('utf-16-le', 2), (None, 0))
    """
    if head[:1] in _BOM_STARTS:
        for bom, encoding in BOMS:
            if head.startswith(bom):
                return encoding, len(bom)
    return None, 0


def decode_bytes(data: bytes, where: str | os.PathLike) -> str:
    """The text of a whole file: UTF-8 (a BOM dropped), or UTF-16/UTF-32 announced by a BOM.

    Raises ``EncodingError`` naming ``where`` and the encoding when the bytes are not valid in it.
    """
    encoding, skip = sniff_bom(data)
    encoding = encoding or "utf-8"
    try:
        return data[skip:].decode(encoding)
    except UnicodeDecodeError as err:
        hint = "" if skip else " (no byte-order mark: expected UTF-8)"
        raise EncodingError(f"{os.fspath(where)}: not valid {encoding.upper()} text{hint}: {err}") from err


def decode_lenient(data: bytes) -> tuple[str, bool]:
    """One caption's bytes: BOM-aware like ``decode_bytes``, invalid bytes replaced by U+FFFD.

    Returns the text and whether bytes were invalid (the caption readers count those).
    """
    encoding, skip = sniff_bom(data[:4])
    encoding = encoding or "utf-8"
    try:
        return data[skip:].decode(encoding), False
    except UnicodeDecodeError:
        return data[skip:].decode(encoding, errors="replace"), True


def url_decode(caption: str) -> tuple[str, bool]:
    """``captions.decode: url``: percent-escapes decoded as UTF-8 and ``+`` read as a space
    (``urllib.parse.unquote_plus``), and whether the decoded bytes were invalid UTF-8 (then replaced).

    >>> url_decode("hot%20dog%2Cketchup+and+mustard")
    ('hot dog,ketchup and mustard', False)
    """
    if "%" not in caption and "+" not in caption:
        return caption, False
    return decode_lenient(urllib.parse.unquote_to_bytes(caption.replace("+", " ")))


def read_text_file(path: str | os.PathLike) -> str:
    """``decode_bytes`` of a file's contents (see there)."""
    with open(path, "rb") as fh:
        return decode_bytes(fh.read(), path)


def split_lines(text: str) -> list[str]:
    """Lines split at ``\\n`` and ``\\r\\n`` only, the caption readers' rule; no empty last line.

    >>> split_lines("a\\r\\nb\\u2028c\\x0cd\\n")
    ['a', 'b\\u2028c\\x0cd']
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def skip_utf8_bom(stream: IO[bytes], where: str | os.PathLike) -> None:
    """Drop a UTF-8 BOM at the start of a binary ``stream`` (must support ``peek``); refuse UTF-16/32.

    Raises ``EncodingError`` naming ``where`` and the encoding for a UTF-16/UTF-32 byte-order mark.
    """
    encoding, skip = sniff_bom(stream.peek(4)[:4])
    if encoding is None:
        return
    if encoding != "utf-8":
        raise EncodingError(
            f"{os.fspath(where)} is {encoding.upper()} text (byte-order mark); caption shards are read as "
            f"UTF-8: convert it first (e.g. iconv -f {encoding.upper()} -t UTF-8)"
        )
    stream.read(skip)
