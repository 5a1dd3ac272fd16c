"""Label-shift correction of a trained tagger's probabilities: the concept priors of the corpus it tags.

Why: a tagger trained on a labelled split learns that split's prevalence of every concept into its output
biases. When the corpus shows a concept far more (or less) often than the split did -- the synthetic world's
split draws concepts uniformly, its corpus over three decades of frequency -- the tagger under-calls the
frequent concepts and over-calls the rare ones, and its counts carry the split's prior rather than the
corpus's. This is label shift (prior probability shift): the look of a concept is the same, only how often it
appears differs.

The correction is that of Saerens, Latinne & Decaestecker (2002, "Adjusting the outputs of a classifier to new
a priori probabilities: a simple procedure", Neural Computation 14(1)), applied to every concept as its own
yes/no problem (a multi-label tagger's sigmoid outputs): with ``pi`` the concept's training prevalence and
``pi'`` its prevalence in the corpus, Bayes' rule turns a probability ``p`` into::

    logit(p') = logit(p) + logit(pi') - logit(pi)

``pi'`` is unknown; EM estimates it from the tagger's own probabilities on unlabelled corpus images: start at
``pi' = pi``, adjust every probability, set ``pi'`` to the mean adjusted probability, repeat until it settles.
It needs no labels, only a sample of the corpus scored in full (probabilities below any storage floor too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from helpers.images.taggers import Tagger

#: priors are kept inside [EPS, 1 - EPS] so a concept never seen (or always seen) stays finite in logit space
EPS = 1e-5


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def shift_probabilities(probs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``sigmoid(logit(probs) + offsets)``: (N, C) probabilities moved by (C,) logit offsets (float64)."""
    z = _logit(np.asarray(probs, dtype=np.float64)) + np.asarray(offsets, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class PriorEstimate:
    """The EM result: per-concept priors and the logit offsets that move the tagger onto the corpus."""

    train_prior: np.ndarray  # (C,) the tagger's training prevalence
    corpus_prior: np.ndarray  # (C,) the estimated corpus prevalence
    iterations: int
    converged: bool

    @property
    def offsets(self) -> np.ndarray:
        """(C,) ``logit(corpus_prior) - logit(train_prior)``."""
        return _logit(self.corpus_prior) - _logit(self.train_prior)


def em_priors(probs: np.ndarray, train_prior: np.ndarray, *, max_iter: int = 200, tol: float = 1e-6) -> PriorEstimate:
    """Estimate the corpus prior of every concept by EM (Saerens et al. 2002), each concept a binary problem.

    Args:
        probs: (N, C) the tagger's probabilities on N unlabelled corpus images (all of them, none floored).
        train_prior: (C,) each concept's prevalence in the tagger's training split, in (0, 1).
        max_iter: EM steps at most.
        tol: stop when no prior moves by more than this.

    Returns:
        A :class:`PriorEstimate`; ``converged`` is False when ``max_iter`` ran out first.

    Raises:
        ValueError: shapes disagree, there are no images, or a value is not a finite probability.
    """
    probs = np.asarray(probs, dtype=np.float64)
    train = np.asarray(train_prior, dtype=np.float64)
    if probs.ndim != 2 or train.shape != (probs.shape[1],):
        raise ValueError(
            f"probs must be (images, concepts) and train_prior (concepts,), got {probs.shape}, {train.shape}"
        )
    if len(probs) == 0:
        raise ValueError("no images to estimate the corpus priors from")
    for name, values in (("probs", probs), ("train_prior", train)):
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError(f"{name} must be finite probabilities in [0, 1]")
    train = np.clip(train, EPS, 1 - EPS)
    base = _logit(probs) - _logit(train)  # the tagger's evidence, without its training prior
    prior = train.copy()
    for step in range(1, max_iter + 1):
        adjusted = 1.0 / (1.0 + np.exp(-(base + _logit(prior))))
        new = np.clip(adjusted.mean(axis=0), EPS, 1 - EPS)
        moved = float(np.abs(new - prior).max())
        prior = new
        if moved < tol:
            return PriorEstimate(train, prior, step, True)
    return PriorEstimate(train, prior, max_iter, False)


class PriorShiftedTagger:
    """A :class:`helpers.images.taggers.Tagger` whose probabilities are moved by per-concept logit offsets.

    ``offsets[j]`` applies to column ``j`` of the wrapped tagger (its concept order); the fingerprint records
    them, so a run with other offsets is another run.
    """

    def __init__(self, tagger: Tagger, offsets: Sequence[float] | np.ndarray) -> None:
        offsets = np.asarray(offsets, dtype=np.float64)
        if offsets.shape != (len(tagger.concepts),) or not np.isfinite(offsets).all():
            raise ValueError(f"need one finite offset per concept ({len(tagger.concepts)}), got shape {offsets.shape}")
        self.tagger = tagger
        self.offsets = offsets
        self._offsets = torch.from_numpy(offsets.astype(np.float32))

    @property
    def concepts(self) -> list[str]:
        return self.tagger.concepts

    @property
    def image_size(self) -> int:
        return self.tagger.image_size

    @property
    def backend(self) -> str:
        return self.tagger.backend

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return self.tagger.transform()

    def to(self, device: str | torch.device) -> PriorShiftedTagger:
        self.tagger = self.tagger.to(device)
        return self

    def channels_last(self) -> None:
        """Put the wrapped tagger's network in channels_last, as the image search does for a bare tagger."""
        from helpers.images.search import _channels_last  # imported here: search imports the stage modules

        _channels_last(self.tagger)

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C) float32 probabilities on the CPU, shifted in logit space."""
        p = self.tagger.scores(images).double().clamp(EPS, 1 - EPS)
        z = torch.log(p) - torch.log1p(-p) + self._offsets.double()
        return torch.sigmoid(z).float()

    def fingerprint(self) -> dict[str, Any]:
        return {
            **self.tagger.fingerprint(),
            "prior_shift": {"method": "em", "offsets": [round(float(x), 6) for x in self.offsets]},
        }


def shifted_tagger(factory: Callable[[], Tagger], offsets: Sequence[float]) -> PriorShiftedTagger:
    """``factory()`` wrapped in a :class:`PriorShiftedTagger` (a picklable factory with ``functools.partial``)."""
    return PriorShiftedTagger(factory(), np.asarray(offsets, dtype=np.float64))


def training_prior(tagger: Any) -> np.ndarray:
    """(C,) training prevalence of each of a trained tagger's score columns (``tagger.concepts``); NaN where unknown.

    Read from the tagger's training record (``n_images``, ``positives_per_concept`` in the order of its
    ``model_concepts``). A column the network has no output for (``unknown_concepts: zero``) is NaN: it is left
    unshifted. Raises ValueError for a tagger without such a record (only the ``trained`` backend has one).
    """
    record = getattr(tagger, "training", None) or {}
    model_concepts = list(getattr(tagger, "model_concepts", []))
    try:
        n_images = int(record["n_images"])
        positives = [int(x) for x in record["positives_per_concept"]]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"the tagger has no training record with per-concept positives ({error}); "
            "prior_shift needs a tagger of the `trained` backend"
        ) from error
    if n_images < 1 or len(positives) != len(model_concepts):
        raise ValueError("the tagger's training record does not match its concepts")
    columns = getattr(tagger, "_columns", None)
    index = list(range(len(model_concepts))) if columns is None else [int(i) for i in columns]
    return np.array([positives[i] / n_images if i >= 0 else np.nan for i in index], dtype=np.float64)


def sample_corpus_images(source: Any, n_images: int) -> tuple[list[Image.Image], list[str]]:
    """Up to ``n_images`` decoded images of an image source, spread evenly over its shards (shard order).

    Returns the images and the skips (``"<tar>: <key>: <reason>"``): an undecodable image or a damaged tar is
    counted and reported, never fatal -- the estimate only needs a sample.
    """
    from helpers.images.sources import iter_shard_images, list_image_shards
    from helpers.text.tars import ShardReadError

    shards = list_image_shards(source)
    if not shards:
        return [], []
    per_shard = -(-n_images // len(shards))
    images: list[Image.Image] = []
    skipped: list[str] = []
    for shard in shards:
        taken = 0
        try:
            for _, key, image, error in iter_shard_images(shard.path, source.image_ext):
                if image is None:
                    skipped.append(f"{shard.path}: {key}: {error}")
                    continue
                images.append(image)
                taken += 1
                if taken >= per_shard or len(images) >= n_images:
                    break
        except ShardReadError as error:
            skipped.append(f"{shard.path}: {error}")
        if len(images) >= n_images:
            break
    return images, skipped


def estimate_prior_shift(
    tagger: Tagger,
    images: Sequence[Image.Image],
    *,
    batch_size: int = 256,
    device: str = "cpu",
    max_iter: int = 200,
    tol: float = 1e-6,
) -> PriorEstimate:
    """Score ``images`` with a trained ``tagger`` and estimate its corpus priors by :func:`em_priors`.

    Columns the tagger has no output for keep their prior (offset 0). Raises ValueError without images or
    without a training record (see :func:`training_prior`).
    """
    if not images:
        raise ValueError("no corpus image could be read for the prior estimate")
    train = training_prior(tagger)
    transform = tagger.transform()
    tagger.to(device)
    parts = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(im) for im in images[start : start + batch_size]])
            parts.append(tagger.scores(batch.to(device)).float().cpu().numpy())
    probs = np.concatenate(parts).astype(np.float64)
    known = np.isfinite(train)
    corpus = np.full(len(train), 0.5)
    train_out = np.where(known, train, 0.5)
    iterations, converged = 0, True
    if known.any():
        fit = em_priors(probs[:, known], train[known], max_iter=max_iter, tol=tol)
        corpus[known] = fit.corpus_prior
        train_out[known] = fit.train_prior
        iterations, converged = fit.iterations, fit.converged
    return PriorEstimate(train_out, corpus, iterations, converged)


@dataclass(frozen=True)
class CorpusPriorShift:
    """A corpus's fitted prior shift: the estimate, how many images it used and what was skipped."""

    estimate: PriorEstimate
    n_images: int
    skipped: list[str]

    def table(self, concept_ids: np.ndarray) -> pd.DataFrame:
        """One row per concept (PRIOR_SHIFT_SCHEMA): training prior, estimated corpus prior, logit offset."""
        return pd.DataFrame(
            {
                "concept_id": np.asarray(concept_ids, dtype=np.int32),
                "train_prior": self.estimate.train_prior,
                "corpus_prior": self.estimate.corpus_prior,
                "offset": self.estimate.offsets,
            }
        )

    def summary(self) -> dict[str, Any]:
        return {
            "method": "em (Saerens et al. 2002)",
            "n_images": self.n_images,
            "iterations": self.estimate.iterations,
            "converged": self.estimate.converged,
            "n_skipped": len(self.skipped),
            "skipped": self.skipped[:20],
        }


def fit_corpus_prior_shift(
    key: str,
    settings: Any,
    factory: Callable[[], Tagger],
    source: Any,
    *,
    batch_size: int = 256,
    device: str = "cpu",
) -> CorpusPriorShift:
    """Fit the prior shift of an image corpus (``settings``: :class:`helpers.params.images.PriorShift`).

    ``key`` is the params key (``image_corpora.<name>.prior_shift``) errors name. Raises ConfigError when no
    corpus image decodes or the tagger has no training record.
    """
    from helpers.params import ConfigError

    images, skipped = sample_corpus_images(source, int(settings.images))
    tagger = factory()
    try:
        estimate = estimate_prior_shift(
            tagger,
            images,
            batch_size=batch_size,
            device=device,
            max_iter=int(settings.max_iter),
            tol=float(settings.tol),
        )
    except ValueError as error:
        raise ConfigError(f"{key}: {error}" + (f" (skipped: {skipped[:3]})" if skipped else "")) from error
    return CorpusPriorShift(estimate, len(images), skipped)


__all__ = [
    "CorpusPriorShift",
    "fit_corpus_prior_shift",
    "PriorEstimate",
    "PriorShiftedTagger",
    "em_priors",
    "estimate_prior_shift",
    "sample_corpus_images",
    "shift_probabilities",
    "shifted_tagger",
    "training_prior",
]
