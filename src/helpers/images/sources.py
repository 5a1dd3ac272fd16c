"""Image shards of a corpus: the source description, decoding, and the batched shard dataset the taggers read."""

from __future__ import annotations

import io
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from helpers import paths
from helpers.shards import (
    ConfigError,
    Shard,
)
from helpers.text.captions import (
    CaptionSource,
    ShardReadError,
    iter_tar_samples,
    list_shards,
)

IMAGE_FORMATS = ("wds",)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class ImageSource:
    """Where the images of a corpus are: webdataset tars, grouped exactly like the caption side.

    ``paths``: one path or pattern, or a list (the conventions of ``CaptionSource.paths``: brace ranges,
    globs, folders). ``image_ext``: one extension or a list in order of preference; a sample's image is
    its file with the first extension of the list it has (case-insensitive, without the dot).
    """

    paths: tuple[str, ...]
    format: str = "wds"
    image_ext: tuple[str, ...] = ("jpg",)

    def __post_init__(self) -> None:
        if self.format not in IMAGE_FORMATS:
            raise ConfigError(
                f"format: unknown image format {self.format!r} (expected one of {', '.join(IMAGE_FORMATS)})"
            )
        raw = self.paths
        raw = (raw,) if isinstance(raw, (str, os.PathLike)) else tuple(raw) if isinstance(raw, (list, tuple)) else ()
        if not raw or not all(isinstance(p, (str, os.PathLike)) for p in raw):
            raise ConfigError(f"paths: expected a path, a pattern or a list of them, got {self.paths!r}")
        object.__setattr__(self, "paths", tuple(os.fspath(p) for p in raw))
        raw_ext = self.image_ext
        exts = (raw_ext,) if isinstance(raw_ext, str) else tuple(raw_ext) if isinstance(raw_ext, (list, tuple)) else ()
        if not exts or not all(isinstance(e, str) for e in exts):
            raise ConfigError(f"image_ext: expected an extension or a list of them, got {self.image_ext!r}")
        exts = tuple(dict.fromkeys(e.lower().lstrip(".") for e in exts))
        unknown = [e for e in exts if e not in IMAGE_EXTS]
        if unknown:
            raise ConfigError(f"image_ext: unsupported extension(s) {unknown} (supported: {', '.join(IMAGE_EXTS)})")
        object.__setattr__(self, "image_ext", exts)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ImageSource:
        """From a mapping (the ``images:`` block of a corpus entry); unknown keys are refused by name."""
        if not isinstance(config, Mapping):
            raise ConfigError(f"images: expected a mapping with 'paths', got {config!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"{', '.join(unknown)}: unknown image source key(s) (known: {', '.join(sorted(known))})")
        if "paths" not in config:
            raise ConfigError("paths: missing from the image source config")
        return cls(**dict(config))

    def to_config(self) -> dict:
        """JSON-serialisable description (part of the run fingerprint)."""
        out = asdict(self)
        out["paths"], out["image_ext"] = list(self.paths), list(self.image_ext)
        return out

    def caption_view(self) -> CaptionSource:
        """The same tars as a caption source, so the shard list is the one the caption side builds."""
        return CaptionSource(format="wds", paths=self.paths)


def list_image_shards(source: ImageSource) -> list[Shard]:
    """The corpus's shards, indexed exactly as ``helpers.text.captions.list_shards`` indexes the same paths."""
    return list_shards(source.caption_view())


def image_source(
    name: str, entry: Mapping[str, Any], base: Path | None = None, *, section: str = "image_corpora"
) -> ImageSource:
    """The ImageSource of corpus ``name`` (params ``<section>.<name>.images``); relative paths are resolved
    against the work folder. Errors name the params key (``<section>.<name>.images.<key>``)."""
    prefix = f"{section}.{name}.images"
    if not isinstance(entry, Mapping) or "images" not in entry:
        raise ConfigError(f"{prefix}: missing (how to read the corpus' images)")
    config = entry["images"]
    if not isinstance(config, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping with 'format' and 'paths', got {config!r}")
    config = dict(config)
    base = base or paths.workdir()
    if "paths" in config:
        raw = config["paths"]
        config["paths"] = paths.resolve([raw] if isinstance(raw, str) else list(raw or []), base)
    try:
        return ImageSource.from_config(config)
    except ConfigError as err:
        raise ConfigError(f"{prefix}.{err}") from err


# ------------------------------------------------------------------------------------- the dataset


def decode_image(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Decode image bytes to an RGB PIL image, fully (a truncated file raises instead of half-decoding).

    ``draft_size``: let the JPEG decoder scale down by 1/2, 1/4 or 1/8 while decoding, as long as both sides
    stay >= that size (much faster for large photos, slightly different pixels; off by default).
    """
    with Image.open(io.BytesIO(data)) as img:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        return img.convert("RGB")


def iter_shard_images(path: str, image_ext: Sequence[str]) -> Iterator[tuple[int, str, Image.Image | None, str]]:
    """``(position, key, image, error)`` for every sample of a webdataset tar that has an image file.

    The image is the sample's file with the first of ``image_ext`` it has, decoded by :func:`decode_image`; an
    undecodable one comes back as ``None`` with the reason in ``error`` (the caller counts or skips it). A damaged
    tar raises ``ShardReadError`` after the samples before the damage, as ``iter_tar_samples`` does.
    """
    for sample in iter_tar_samples(path, set(image_ext)):
        ext = next((e for e in image_ext if sample.files.get(e)), None)
        if ext is None:
            continue
        try:
            yield sample.position, sample.key, decode_image(sample.files[ext]), ""
        except Exception as error:  # noqa: BLE001 -- any undecodable image is the caller's counted skip
            yield sample.position, sample.key, None, f"{type(error).__name__}: {error}"


@dataclass
class _Block:
    """What a worker hands back for one block of consecutive positions (a batch)."""

    block: int
    positions: list[int] = field(default_factory=list)
    images: list[torch.Tensor] = field(default_factory=list)
    records: int = 0
    corrupt: int = 0
    missing: int = 0
    decode_s: float = 0.0

    def as_item(self) -> dict:
        images = torch.stack(self.images) if self.images else torch.empty(0)
        return {
            "end": False,
            "block": self.block,
            "positions": torch.tensor(self.positions, dtype=torch.int64),
            "images": images,
            "records": self.records,
            "corrupt": self.corrupt,
            "missing": self.missing,
            "decode_s": self.decode_s,
        }


class ShardImages(IterableDataset):
    """The decoded images of one webdataset shard, as blocks (batches) of consecutive positions.

    Every DataLoader worker streams the whole tar (reading bytes is cheap beside decoding) but decodes only
    its own blocks: block ``b`` (positions ``b * block_size ..``) belongs to worker ``b % num_workers``. So
    the split is deterministic, each block is one batch whatever the worker count, and the consumer restores
    order by block index. Items are dicts; the last item of every worker has ``end=True`` and carries the
    tar's error (a truncated tar), which every worker sees at the same position.
    """

    def __init__(
        self,
        path: str,
        image_ext: Sequence[str],
        transform: Callable[[Image.Image], torch.Tensor],
        block_size: int,
        draft_size: int | None = None,
    ) -> None:
        super().__init__()
        self.path, self.image_ext, self.transform = path, tuple(image_ext), transform
        self.block_size, self.draft_size = block_size, draft_size

    def _load(self, data: bytes) -> torch.Tensor | None:
        try:
            return self.transform(decode_image(data, self.draft_size))
        except Exception:  # any undecodable image (PIL raises OSError, SyntaxError, ValueError, ...)
            return None

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        current: _Block | None = None
        error = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # PIL's EXIF/palette chatter on web images
                for sample in iter_tar_samples(self.path, set(self.image_ext)):
                    block = sample.position // self.block_size
                    if block % n_workers != worker:
                        continue
                    if current is None or current.block != block:
                        if current is not None:
                            yield current.as_item()
                        current = _Block(block)
                    current.records += 1
                    ext = next((e for e in self.image_ext if e in sample.files), None)
                    if ext is None:
                        current.missing += 1
                        continue
                    started = time.perf_counter()
                    tensor = self._load(sample.files[ext])
                    current.decode_s += time.perf_counter() - started
                    if tensor is None:
                        current.corrupt += 1
                    else:
                        current.positions.append(sample.position)
                        current.images.append(tensor)
        except ShardReadError as err:
            error = str(err)
        if current is not None:
            yield current.as_item()
        yield {"end": True, "error": error}
