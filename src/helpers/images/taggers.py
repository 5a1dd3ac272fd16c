"""Image taggers: the interface every backend implements (RAM++, open_clip, a trained multi-label CNN).

A tagger scores every concept of a concept list on a batch of images with a probability in [0, 1]. The
image-search stage only talks to this interface, so backends are interchangeable in params.yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image


@runtime_checkable
class Tagger(Protocol):
    """What the image-search stage needs from a backend."""

    #: backend name as written in params.yaml (``rampp``, ``open_clip``, ``trained``)
    backend: str
    #: the concepts scored, in concept-id order (column j of ``scores`` is concept j)
    concepts: Sequence[str]
    #: the square input size the model expects; a mismatch with params fails fast
    image_size: int

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """A picklable PIL -> CHW float tensor transform (it runs in DataLoader worker processes)."""

    def to(self, device: str | torch.device) -> Tagger:
        """Move the model to ``device`` (returns self)."""

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities, shape (batch, len(concepts)), float32 on the CPU, for a batch from ``transform``."""

    def fingerprint(self) -> dict[str, Any]:
        """Everything the scores depend on (weights id, concept list hash, calibration), JSON-serialisable."""


def check_batch(images: torch.Tensor, image_size: int) -> None:
    """Refuse a batch that ``transform()`` did not produce (wrong size or layout), with a clear message."""
    if images.ndim != 4 or images.shape[1:] != (3, image_size, image_size):
        raise ValueError(
            f"expected a batch of shape (B, 3, {image_size}, {image_size}) from transform(), got {tuple(images.shape)}"
        )
