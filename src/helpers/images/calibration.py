"""Per-concept tagger thresholds fitted on a labelled audit split.

One global threshold (the paper's RAM++ 0.7) treats every concept alike, but a tagger's scores are not
calibrated per concept: a zero-shot open_clip tagger over-tags some concepts and under-tags others. Given a
tagger's probabilities on audit samples with known labels (the synthetic world's tagger split, or a few hundred
images a user labels), each concept gets the threshold that

* ``mode="precision"``: reaches ``target_precision`` with the highest recall, on at least ``min_positives`` true
  positives (so one lucky top score does not count as precision 1), or
* ``mode="f1"``: maximises F1, or
* ``mode="pooled"``: together with every other concept's, maximises the true positives of the whole corpus at
  a *pooled* precision of ``target_precision`` (what the image counts' precision and recall measure): each
  concept takes the cut maximising ``TP - lambda FP``, i.e. it is tagged down to where its local precision
  falls to ``lambda / (1 + lambda)``, and one ``lambda`` for all is chosen by k-fold cross-validation on the audit
  so that the held-out pooled precision meets the target (:func:`fit_pooled_thresholds`),

computed exactly from the sorted scores (every distinct score is a candidate cut; a sample is positive when
``prob >= threshold``, as in ``helpers.images.search.image_counts``). A concept with fewer than
``min_positives`` labelled positives, or whose precision target is unreachable, keeps ``default`` (the global
threshold) and is flagged, so nothing is fitted on noise silently.

The fitted table (one row per concept id) is what the image-count stage reads as per-concept thresholds; counts
at the global thresholds stay available beside them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from tqdm.auto import tqdm

from helpers.images.taggers import Tagger
from helpers.naming import concept_key
from helpers.schemas import read_arrow

CalibrationMode = Literal["precision", "f1", "pooled"]
MODES: tuple[CalibrationMode, ...] = ("precision", "f1", "pooled")
UNREACHABLE = ("default", "best")  # fit_thresholds: a precision target no cut reaches
THRESHOLDS_SCHEMA = pa.schema(
    [
        ("concept_id", pa.int32()),
        ("threshold", pa.float64()),
        ("precision", pa.float64()),
        ("recall", pa.float64()),
        ("f1", pa.float64()),
        ("n_positives", pa.int64()),
        ("fallback", pa.bool_()),
    ]
)


@dataclass
class AuditScores:
    """A tagger's probabilities on a labelled audit split (see ``audit_scores``)."""

    probs: np.ndarray  # (M, C) float32
    labels: np.ndarray  # (M, C) bool
    skipped: list[str] = field(default_factory=list)  # files that did not decode, with the reason
    unknown_labels: list[str] = field(default_factory=list)  # label names that are not tagger concepts


def _curve(
    probs: np.ndarray, labels: np.ndarray, n_pos: int, n_neg: int, prevalence: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (distinct scores, descending) with TP, precision, recall and F1 at ``prob >= t``.

    ``n_pos`` / ``n_neg``: the concept's labelled positives and negatives over the whole audit (``probs`` may
    hold only the scores at or above the floor). With ``prevalence`` the precision is the one expected where
    the concept has that prevalence: ``TPR pi / (TPR pi + FPR (1 - pi))`` (Bayes' rule; the audit's true and
    false positive rates carry over to another prevalence, its precision does not).
    """
    if len(probs) == 0:  # no audit score at or above the floor: no candidate cut
        empty = np.zeros(0, dtype=float)
        return empty, np.zeros(0, dtype=np.int64), empty, empty, empty
    order = np.argsort(-probs, kind="stable")
    p, y = probs[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[np.flatnonzero(p[1:] != p[:-1]), len(p) - 1]  # last index of each run of equal scores
    tp, fp, thresholds = tp[last], fp[last], p[last]
    recall = tp / n_pos if n_pos else np.zeros(len(tp), dtype=float)
    if prevalence is None:
        precision = tp / (tp + fp)
    else:
        fpr = fp / n_neg if n_neg else np.zeros(len(fp), dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            hits = recall * prevalence
            precision = np.where(hits + fpr > 0, hits / (hits + fpr * (1 - prevalence)), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp > 0, 2 * precision * recall / (precision + recall), 0.0)
    return thresholds, tp, precision, recall, f1


def _check_ids(concept_ids: np.ndarray | None, n_concepts: int) -> np.ndarray:
    """(C,) distinct integer concept ids (default 0..C-1); ValueError otherwise."""
    if concept_ids is None:
        return np.arange(n_concepts)
    ids = np.asarray(concept_ids)
    if len(ids) != n_concepts:
        raise ValueError(f"concept_ids has {len(ids)} entries for {n_concepts} concepts")
    if ids.dtype.kind not in "iu":
        raise ValueError(f"concept_ids must be integers, got {ids.dtype}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("concept_ids repeat")
    return ids


def _check_settings(target_precision: float, floor: float, min_positives: int) -> None:
    if isinstance(target_precision, bool) or not isinstance(target_precision, (int, float, np.floating)):
        raise ValueError(f"target_precision must be a number in (0, 1], got {target_precision!r}")
    if not 0 < target_precision <= 1:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
    if isinstance(floor, bool) or not isinstance(floor, (int, float, np.floating)) or not 0 <= floor <= 1:
        raise ValueError(f"floor must be a number in [0, 1], got {floor!r}")
    if isinstance(min_positives, bool) or not isinstance(min_positives, (int, np.integer)) or min_positives < 1:
        raise ValueError(f"min_positives must be a positive integer, got {min_positives!r}")


def _check_audit(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float probabilities and bool labels of one shape; ValueError otherwise.

    Labels must be bool or 0/1: casting -1, NaN or "no" to bool would read them as "shows the concept".
    """
    try:
        probs = np.asarray(probs, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"probs must be numbers: {error}") from None
    labels = np.asarray(labels)
    if labels.dtype != bool:
        if labels.dtype.kind not in "iuf" or not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be boolean or 0/1 (whether each audit sample shows each concept)")
        labels = labels.astype(bool)
    if probs.shape != labels.shape or probs.ndim != 2:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must be (samples, concepts) of one shape")
    if probs.size and (not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1):
        raise ValueError("probs must be finite probabilities in [0, 1]")
    return probs, labels


def fit_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    mode: CalibrationMode = "precision",
    target_precision: float = 0.9,
    default: float = 0.7,
    floor: float = 0.0,
    min_positives: int = 5,
    concept_ids: np.ndarray | None = None,
    prevalence: np.ndarray | None = None,
    unreachable: str = "default",
    folds: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Fit one threshold per concept on an audit split.

    Args:
        probs: (N, C) float tagger probabilities of the audit samples.
        labels: (N, C) bool, whether each audit sample shows each concept.
        mode: ``precision`` (lowest threshold meeting ``target_precision``), ``f1`` (maximum F1) or ``pooled``
            (the corpus's pooled precision meets ``target_precision`` at the most true positives:
            :func:`fit_pooled_thresholds`, which ``default`` and ``unreachable`` do not concern).
        target_precision: in (0, 1], for ``mode="precision"`` and ``mode="pooled"``.
        default: the threshold of concepts that cannot be fitted (the global operating threshold).
        floor: thresholds are never below this (the run's stored probability floor: lower scores were not kept).
        min_positives: concepts with fewer labelled positives keep ``default``.
        concept_ids: (C,) ids written in the table (default 0..C-1).
        prevalence: (C,) each concept's share of the images of the corpus the thresholds are for. Precision
            depends on prevalence and an audit's rarely matches the corpus's (a labelled split drawn uniformly,
            a corpus spread over decades), so with it precision is computed at that prevalence from the
            audit's true and false positive rates (label shift, as in Saerens et al. 2002) instead of on the
            audit as it is. ``None``: the audit's own precision.
        unreachable: ``mode="precision"``, a concept with enough positives whose target no cut reaches:
            ``default`` keeps ``default``; ``best`` takes the cut of highest precision (resting on at least
            ``min_positives`` true positives; ties: the higher recall). Both are flagged ``fallback``. Where a
            global threshold over-tags (a zero-shot tagger on rare concepts), ``best`` keeps the concept's
            count small instead of flooding it with false positives.
        folds, seed: ``mode="pooled"``: the cross-validation folds (>= 2) and the seed of their draw.

    Returns:
        DataFrame with THRESHOLDS_SCHEMA's columns; precision/recall/f1 are the audit's at the chosen threshold
        (precision and F1 at ``prevalence`` when given).

    Raises:
        ValueError: shapes differ or are not 2-D, a probability is outside [0, 1] or NaN, or a setting is out of range.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "pooled":  # `default` and `unreachable` do not concern it
        return fit_pooled_thresholds(
            probs, labels, target_precision=target_precision, floor=floor, min_positives=min_positives,
            concept_ids=concept_ids, prevalence=prevalence, folds=folds, seed=seed,
        )  # fmt: skip
    probs, labels = _check_audit(probs, labels)
    _check_settings(target_precision, floor, min_positives)
    if unreachable not in UNREACHABLE:
        raise ValueError(f"unreachable must be one of {', '.join(UNREACHABLE)}, got {unreachable!r}")
    if not 0 <= floor <= default <= 1:
        raise ValueError(f"need 0 <= floor ({floor}) <= default ({default}) <= 1")
    n_concepts = probs.shape[1]
    ids = _check_ids(concept_ids, n_concepts)
    prevalence = _check_prevalence(prevalence, n_concepts)
    rows = []
    for c in range(n_concepts):
        y, p = labels[:, c], probs[:, c]
        n_pos = int(y.sum())
        chosen = None
        if n_pos >= min_positives:
            keep = p >= floor
            pi = None if prevalence is None else float(prevalence[c])
            t, tp, prec, rec, f1 = _curve(p[keep], y[keep], n_pos, len(y) - n_pos, pi)
            if mode == "precision":
                # a cut resting on fewer than min_positives true positives is noise (one lucky top score)
                ok = np.flatnonzero((prec >= target_precision) & (tp >= min_positives))
                if len(ok):
                    i = ok[np.argmax(rec[ok])]  # highest recall among cuts meeting the target
                    chosen = (t[i], prec[i], rec[i], f1[i])
                elif unreachable == "best" and (tp >= min_positives).any():
                    ok = np.flatnonzero(tp >= min_positives)
                    i = ok[np.lexsort((-rec[ok], -prec[ok]))[0]]  # highest precision, then highest recall
                    rows.append((int(ids[c]), float(t[i]), float(prec[i]), float(rec[i]), float(f1[i]), n_pos, True))
                    continue
            elif len(t):
                i = int(np.argmax(f1))
                chosen = (t[i], prec[i], rec[i], f1[i])
        if chosen is None:
            pred = p >= default
            tp = int((pred & y).sum())
            rec = tp / n_pos if n_pos else float("nan")
            if prevalence is not None and n_pos and len(y) > n_pos:
                fpr, pi = int((pred & ~y).sum()) / (len(y) - n_pos), float(prevalence[c])
                prec = rec * pi / (rec * pi + fpr * (1 - pi)) if rec * pi + fpr > 0 else float("nan")
            else:
                prec = tp / pred.sum() if pred.sum() else float("nan")
            f1 = 2 * prec * rec / (prec + rec) if tp else 0.0
            rows.append((int(ids[c]), float(default), prec, rec, f1, n_pos, True))
        else:
            rows.append((int(ids[c]), float(chosen[0]), *(float(v) for v in chosen[1:]), n_pos, False))
    return pd.DataFrame(rows, columns=THRESHOLDS_SCHEMA.names).astype({"concept_id": "int32", "n_positives": "int64"})


#: mode "pooled": the local precisions q searched; a concept is tagged down to where its audit precision at the
#: margin falls to q, i.e. it maximises TP - lambda FP with lambda = q / (1 - q)
POOLED_LOCAL_PRECISIONS = np.round(np.linspace(0.02, 0.99, 98), 4)


def _check_prevalence(prevalence: np.ndarray | None, n_concepts: int) -> np.ndarray | None:
    if prevalence is None:
        return None
    prevalence = np.asarray(prevalence, dtype=float)
    if prevalence.shape != (n_concepts,):
        raise ValueError(f"prevalence must hold one finite value per concept ({n_concepts}), got {prevalence.shape}")
    if not np.isfinite(prevalence).all():
        raise ValueError(
            f"prevalence must hold one finite value per concept: {int((~np.isfinite(prevalence)).sum())} are not"
        )
    if (prevalence < 0).any() or (prevalence > 1).any():
        raise ValueError("prevalence must lie in [0, 1]")
    return prevalence


def _pair_weights(labels: np.ndarray, prevalence: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(C,) weights of an audit positive and an audit negative of each concept, in corpus images.

    Without ``prevalence`` the audit is taken as a sample of the corpus: every pair weighs 1. With it, concept
    c's positives stand for ``pi_c / n_pos`` of the corpus's images each and its negatives for
    ``(1 - pi_c) / n_neg`` (label shift: the audit's true and false positive rates carry over, its mix does not).
    """
    n = labels.shape[0]
    if prevalence is None:
        ones = np.ones(labels.shape[1])
        return ones, ones
    n_pos = labels.sum(0).astype(float)
    n_neg = n - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        w_pos = np.where(n_pos > 0, prevalence / n_pos, 0.0)
        w_neg = np.where(n_neg > 0, (1 - prevalence) / n_neg, 0.0)
    return w_pos, w_neg


def _pooled_cuts(
    probs: np.ndarray, labels: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray, lambdas: np.ndarray, floor: float
) -> np.ndarray:
    """(L, C) for each lambda, each concept's cut maximising weighted ``TP - lambda FP`` on this audit.

    Candidates: every distinct audit score >= ``floor`` and the cut just above the concept's top audit score
    (tags nothing the audit saw; chosen on ties, so a concept is tagged only where that gains). Thresholds lie in
    [0, 1], so a concept whose audit scores reach exactly 1.0 (a saturated sigmoid) cannot be switched off: its
    highest cut, 1.0, still tags those samples and is counted so.
    """
    cuts = np.empty((len(lambdas), probs.shape[1]))
    for c in range(probs.shape[1]):
        p, y = probs[:, c], labels[:, c]
        top = float(p.max()) if len(p) else floor
        keep = p >= floor
        order = np.argsort(-p[keep], kind="stable")
        ps, ys = p[keep][order], y[keep][order]
        last = np.r_[np.flatnonzero(ps[1:] != ps[:-1]), len(ps) - 1] if len(ps) else np.zeros(0, dtype=np.int64)
        t, tp, fp = ps[last], np.cumsum(ys * w_pos[c])[last], np.cumsum(~ys * w_neg[c])[last]
        if top < 1:  # the cut that tags nothing the audit saw
            t = np.r_[max(floor, float(np.nextafter(top, np.inf))), t]
            tp, fp = np.r_[0.0, tp], np.r_[0.0, fp]
        cuts[:, c] = t[np.argmax(tp[None, :] - lambdas[:, None] * fp[None, :], axis=1)]
    return cuts


def _pooled_counts(
    probs: np.ndarray, labels: np.ndarray, cuts: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray
) -> tuple[float, float]:
    """Weighted (true positives, tagged) over every concept at per-concept ``cuts`` (C,)."""
    tagged = probs >= cuts[None, :]
    tp = float(((tagged & labels) * w_pos[None, :]).sum())
    fp = float(((tagged & ~labels) * w_neg[None, :]).sum())
    return tp, tp + fp


def fit_pooled_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    target_precision: float = 0.8,
    floor: float = 0.0,
    min_positives: int = 5,
    concept_ids: np.ndarray | None = None,
    prevalence: np.ndarray | None = None,
    folds: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-concept thresholds at which the *pooled* precision over all concepts meets ``target_precision``.

    Image counts are judged pooled: precision and recall over every (image, concept) pair, which frequent
    concepts dominate. Holding every concept to the target (``mode="precision"``) wastes recall there and
    cannot be met by rare ones. Maximising the corpus's true positives subject to a pooled precision is a
    Lagrangian problem (Neyman-Pearson per concept): each concept takes the cut maximising ``TP - lambda FP``,
    i.e. is tagged down to where its marginal precision falls to ``q = lambda / (1 + lambda)``, one ``q`` for all.

    ``q`` is chosen by ``folds``-fold cross-validation over the audit samples (seeded): cuts fitted on the other
    folds, pooled precision and true positives counted on the held-out one, summed; the ``q`` with the most
    held-out true positives whose held-out pooled precision meets the target (cuts fitted and judged on the
    same samples are optimistic: each concept's cut lands just below a positive). Where no ``q`` meets it, the
    most precise one. The cuts are then fitted on the whole audit at that ``q``.

    An audit drawn from the corpus itself (``prevalence=None``) is what this is for; an audit with another
    concept mix (a labelled split drawn uniformly) needs each concept's corpus ``prevalence``, which weights
    its positives and negatives (:func:`_pair_weights`).

    Args:
        probs: (N, C) tagger probabilities of the audit samples.
        labels: (N, C) bool, whether each audit sample shows each concept.
        target_precision: in (0, 1], the pooled precision to meet.
        floor: no threshold below this (the run's stored probability floor).
        min_positives: concepts with fewer audit positives are flagged ``fallback`` (their cut rests on
            little evidence); they are fitted like the rest.
        concept_ids: (C,) ids written in the table (default 0..C-1).
        prevalence: (C,) each concept's share of the corpus's images, or ``None`` (the audit is a corpus sample).
        folds: cross-validation folds, >= 2 and <= N.
        seed: seed of the fold draw.

    Returns:
        DataFrame with THRESHOLDS_SCHEMA's columns (precision and F1 weighted by ``prevalence`` when given);
        ``attrs["pooled"]``: ``{"local_precision", "cv_precision", "cv_recall", "folds"}``.

    Raises:
        ValueError: shapes differ, probabilities are not in [0, 1], or a setting is out of range.
    """
    probs, labels = _check_audit(probs, labels)
    _check_settings(target_precision, floor, min_positives)
    n, n_concepts = probs.shape
    if n < 2:
        raise ValueError(f"mode 'pooled' needs at least 2 audit samples, got {n}")
    if n_concepts < 1:
        raise ValueError("mode 'pooled' needs at least one concept")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or not 2 <= folds <= n:
        raise ValueError(f"folds must be an integer in 2..{n} (the audit's samples), got {folds!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    ids = _check_ids(concept_ids, n_concepts)
    prevalence = _check_prevalence(prevalence, n_concepts)
    w_pos, w_neg = _pair_weights(labels, prevalence)
    q = POOLED_LOCAL_PRECISIONS
    lambdas = q / (1 - q)
    fold = np.random.default_rng(seed).permutation(n) % folds
    held_tp = np.zeros(len(q))
    held_tagged = np.zeros(len(q))
    for k in range(folds):
        train, held = fold != k, fold == k
        cuts = _pooled_cuts(probs[train], labels[train], w_pos, w_neg, lambdas, floor)
        for j in range(len(q)):
            tp, tagged = _pooled_counts(probs[held], labels[held], cuts[j], w_pos, w_neg)
            held_tp[j] += tp
            held_tagged[j] += tagged
    with np.errstate(divide="ignore", invalid="ignore"):
        cv_precision = np.where(held_tagged > 0, held_tp / held_tagged, 0.0)
    ok = np.flatnonzero(cv_precision >= target_precision)
    j = int(ok[np.argmax(held_tp[ok])]) if len(ok) else int(np.argmax(cv_precision))
    cuts = _pooled_cuts(probs, labels, w_pos, w_neg, lambdas[j : j + 1], floor)[0]
    total_pos = float((labels * w_pos[None, :]).sum())
    rows = []
    tagged = probs >= cuts[None, :]
    for c in range(n_concepts):
        y = labels[:, c]
        n_pos = int(y.sum())
        tp, fp = int((tagged[:, c] & y).sum()), int((tagged[:, c] & ~y).sum())
        tp_w, fp_w = tp * w_pos[c], fp * w_neg[c]
        precision = tp_w / (tp_w + fp_w) if tp_w + fp_w > 0 else float("nan")
        recall = tp / n_pos if n_pos else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        rows.append((int(ids[c]), float(cuts[c]), precision, recall, f1, n_pos, n_pos < min_positives))
    table = pd.DataFrame(rows, columns=THRESHOLDS_SCHEMA.names).astype({"concept_id": "int32", "n_positives": "int64"})
    table.attrs["pooled"] = {
        "local_precision": float(q[j]),
        "cv_precision": float(cv_precision[j]),
        "cv_recall": float(held_tp[j] / total_pos) if total_pos > 0 else float("nan"),
        "folds": int(folds),
    }
    return table


def write_thresholds(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a fitted threshold table as Parquet (schema-checked)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(table, schema=THRESHOLDS_SCHEMA, preserve_index=False), path)
    return path


def read_thresholds(path: str | os.PathLike) -> pd.DataFrame:
    """Read a threshold table; a file without the expected columns is refused naming it.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: its columns or types differ from THRESHOLDS_SCHEMA, thresholds are outside [0, 1], or a
            concept id repeats.
    """
    df = read_arrow(
        path,
        THRESHOLDS_SCHEMA,
        what="a threshold table",
        missing_hint="per-concept threshold table not found (fit it on an audit split first)",
    )
    if ((df["threshold"] < 0) | (df["threshold"] > 1)).any():
        raise ValueError(f"{path}: thresholds must lie in [0, 1]")
    if df["concept_id"].duplicated().any():
        raise ValueError(f"{path}: concept ids repeat")
    return df


def thresholds_for(table: pd.DataFrame, concept_ids: np.ndarray, default: float) -> np.ndarray:
    """Per-concept thresholds aligned to ``concept_ids`` (concepts missing from the table get ``default``)."""
    lookup = dict(zip(table["concept_id"].astype(int), table["threshold"].astype(float)))
    return np.array([lookup.get(int(c), default) for c in concept_ids], dtype=float)


def audit_scores(
    tagger: Tagger,
    images: Sequence[str | os.PathLike],
    labels: Sequence[Sequence[str]],
    *,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = False,
) -> AuditScores:
    """Score a labelled audit split with a tagger: the inputs of ``fit_thresholds`` and of count correction.

    Args:
        tagger: any backend of ``helpers.images.taggers.Tagger`` (its ``concepts`` fix the column order).
        images: N image files.
        labels: N lists of the concept names each image shows (matched to the tagger's concepts by
            ``helpers.naming.concept_key``, so case and punctuation do not matter).
        batch_size: images per forward pass.
        device: torch device of the forward pass.
        progress: show a progress bar.

    Returns:
        AuditScores: probs (M, C) float32 and labels (M, C) bool for the M images that decoded; the files that
        did not decode (a counted, reported skip) and the label names that are not tagger concepts.

    Raises:
        ValueError: ``images`` and ``labels`` differ in length, or no image decoded.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} audit images but {len(labels)} label lists")
    index = {concept_key(c): j for j, c in enumerate(tagger.concepts)}
    transform = tagger.transform()
    tagger.to(device)
    probs: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    skipped: list[str] = []
    unknown: set[str] = set()
    batch: list[torch.Tensor] = []
    batch_rows: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            with torch.inference_mode():
                probs.append(tagger.scores(torch.stack(batch).to(device)).float().cpu().numpy())
            rows.extend(batch_rows)
            batch.clear()
            batch_rows.clear()

    for path, names in tqdm(zip(images, labels), total=len(images), desc="scoring audit split", disable=not progress):
        try:
            with Image.open(path) as image:
                tensor = transform(image.convert("RGB"))
        except (OSError, ValueError) as error:  # missing, truncated or undecodable: counted and reported
            skipped.append(f"{path}: {error}")
            continue
        row = np.zeros(len(tagger.concepts), dtype=bool)
        for name in names:
            j = index.get(concept_key(name))
            if j is None:
                unknown.add(name)
            else:
                row[j] = True
        batch.append(tensor)
        batch_rows.append(row)
        if len(batch) >= batch_size:
            flush()
    flush()
    if not rows:
        raise ValueError(f"none of the {len(images)} audit images could be read ({skipped[:3]} ...)")
    return AuditScores(np.concatenate(probs), np.stack(rows), skipped, sorted(unknown))
