"""Training data and losses of the ``trained`` tagger (:mod:`helpers.images.tagger_trained`).

Decoding the labelled images once, the eight flips/90-degree rotations (objects drawn at any rotation), an
optional JPEG round trip (for a JPEG corpus tagged by a tagger trained on PNGs: at small sizes 4:2:0 chroma
subsampling smears colour and fine texture) and a multi-label loss per concept. What mattered for the synthetic
world's tagger is measured in the README ("The synthetic world": the supervised tagger).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

ImageLike = Image.Image | str | os.PathLike
LOSSES = ("bce", "asl", "focal")
DEFAULT_JPEG_QUALITY = (60, 95)


def _load_rgb(item: ImageLike) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    with Image.open(item) as img:
        return img.convert("RGB")


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    """``image`` encoded as JPEG at ``quality`` (Pillow, 4:2:0 chroma) and decoded again, as RGB."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


class LabelledImages(Dataset):
    """Images (decoded once into memory) with their multi-hot targets.

    With ``jpeg_quality = (low, high)`` each draw re-encodes the image as JPEG at a quality drawn uniformly
    from that range with probability ``jpeg_p``: the corpora a tagger tags are JPEG (web data, webdataset
    shards) while labelled sets are often PNG, and at small sizes 4:2:0 chroma subsampling smears exactly
    the colour and fine texture a small network keys on. Draws use ``seed`` and the item's epoch count, so
    a run repeats with ``num_workers=0``.
    """

    def __init__(
        self,
        images: Sequence[ImageLike],
        targets: torch.Tensor,
        transform: Callable,
        *,
        jpeg_quality: tuple[int, int] | None = None,
        jpeg_p: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.images = [_load_rgb(item) for item in images]
        self.targets = targets
        self.transform = transform
        self.jpeg_quality = jpeg_quality
        self.jpeg_p = float(jpeg_p)
        self.rng = np.random.default_rng(seed)
        # Without the random JPEG round trip an image transforms the same way every epoch: do it once (the
        # per-epoch resize/to-tensor of every image was a seventh of the synthetic tagger's training time).
        self._cached: list[torch.Tensor] | None = None
        if jpeg_quality is None or self.jpeg_p <= 0:
            self._cached = [transform(image) for image in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cached is not None:
            return self._cached[index], self.targets[index]
        image = self.images[index]
        if self.jpeg_quality is not None and self.rng.random() < self.jpeg_p:
            low, high = self.jpeg_quality
            image = jpeg_roundtrip(image, int(self.rng.integers(low, high + 1)))
        return self.transform(image), self.targets[index]


def dihedral(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of a (B, C, H, W) batch under a random one of the 8 flips/90-degree rotations.

    Label-preserving for objects drawn at any rotation (the synthetic world, aerial or microscopy images);
    set ``augment`` off for data where orientation carries meaning (text, digits).
    """
    k = torch.randint(0, 4, (batch.shape[0],), generator=generator)
    flip = torch.rand(batch.shape[0], generator=generator) < 0.5
    out = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    for turns in range(1, 4):
        chosen = k == turns
        if chosen.any():
            out[chosen] = torch.rot90(out[chosen], turns, dims=(-2, -1))
    return out


def multilabel_loss(logits: torch.Tensor, target: torch.Tensor, loss: str = "bce") -> torch.Tensor:
    """Mean per-(image, concept) multi-label loss of (B, C) logits against 0/1 targets.

    ``bce``: binary cross-entropy. ``asl``: the asymmetric loss of Ridnik et al. (ICCV 2021, "Asymmetric Loss
    For Multi-Label Classification") with their defaults gamma_neg=4, gamma_pos=0, probability margin 0.05:
    easy negatives (most of the C-1 absent concepts) are down-weighted, so the rare positives dominate.
    ``focal``: focal loss (Lin et al. 2017), gamma=2 on both sides.
    """
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    if loss == "asl":
        gamma_pos, gamma_neg, margin = 0.0, 4.0, 0.05
        p_neg = (p - margin).clamp(min=0)
    elif loss == "focal":
        gamma_pos, gamma_neg, p_neg = 2.0, 2.0, p
    else:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    pos = target * torch.log(p.clamp(min=1e-8)) * (1 - p) ** gamma_pos
    neg = (1 - target) * torch.log((1 - p_neg).clamp(min=1e-8)) * p_neg**gamma_neg
    return -(pos + neg).mean()


def multi_hot(labels: Sequence[Sequence[str]], concepts: Sequence[str]) -> torch.Tensor:
    """(N, C) float targets; a label outside ``concepts`` raises ValueError (a typo must not vanish)."""
    index = {c: j for j, c in enumerate(concepts)}
    targets = torch.zeros(len(labels), len(concepts), dtype=torch.float32)
    unknown: set[str] = set()
    for i, row in enumerate(labels):
        if isinstance(row, str):
            raise ValueError(f"labels[{i}] is a string; expected a list of concepts")
        for concept in row:
            j = index.get(concept)
            if j is None:
                unknown.add(concept)
            else:
                targets[i, j] = 1.0
    if unknown:
        raise ValueError(f"labels name concepts not in the concept list: {sorted(unknown)[:10]!r}")
    return targets


def read_labels(
    path: str | os.PathLike,
    *,
    image_column: str = "image",
    concepts_column: str = "concepts",
    separator: str = "|",
    image_root: str | os.PathLike | None = None,
) -> tuple[list[Path], list[list[str]]]:
    """Image paths and concept lists from a Parquet or CSV/TSV labels table (one row per image)."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        table = pd.read_parquet(path)
    elif suffix in (".csv", ".tsv", ".txt"):
        table = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False, dtype=str)
    else:
        raise ValueError(f"{path}: expected a .parquet, .csv or .tsv labels file")
    for column in (image_column, concepts_column):
        if column not in table.columns:
            raise KeyError(f"{path}: no column {column!r} (columns: {list(table.columns)})")
    root = Path(image_root) if image_root is not None else path.parent
    images = [p if p.is_absolute() else root / p for p in (Path(str(v)) for v in table[image_column])]
    labels: list[list[str]] = []
    for value in table[concepts_column]:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            items: list[str] = []
        elif isinstance(value, str):
            items = value.split(separator)
        elif isinstance(value, (list, tuple, np.ndarray)):
            items = [str(v) for v in value]
        else:
            raise ValueError(f"{path}: concepts must be a list or a {separator!r}-separated string, got {value!r}")
        labels.append([s.strip() for s in items if s and s.strip()])
    return images, labels
