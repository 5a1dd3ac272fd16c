"""Per-concept metrics: zero-shot top-1 accuracy per class, and retrieval recall@k per concept."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from helpers.evaluation.classnames import describe_repeats, repeated_names
from helpers.evaluation.datasets import EvalDataset, prompt_templates
from helpers.evaluation.embeddings import (
    caption_embeddings,
    class_embeddings,
    image_embeddings,
)
from helpers.evaluation.models import LoadedModel
from helpers.evaluation.specs import DEFAULT_KS, NO_PROMPT, OVERALL, PROMPT_SETS

# ========================================================================================== zero-shot


def zero_shot_scores(
    image_emb: np.ndarray, labels: np.ndarray, classifier: np.ndarray, class_names: Sequence[str]
) -> tuple[pd.DataFrame, float]:
    """Per-class top-1 accuracy in percent (``concept, value, n``; classes without images left out) and overall."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(image_emb):
        raise ValueError(f"{len(labels)} labels for {len(image_emb)} image embeddings")
    pred = np.argmax(image_emb @ classifier.T, axis=1)
    correct = pred == labels
    n = np.bincount(labels, minlength=len(class_names))
    hits = np.bincount(labels, weights=correct, minlength=len(class_names))
    present = n > 0
    df = pd.DataFrame(
        {
            "concept": np.asarray(class_names, dtype=object)[present],
            "value": 100.0 * hits[present] / n[present],
            "n": n[present].astype(np.int64),
        }
    )
    return df, float(100.0 * correct.mean())


def zero_shot_eval(
    model: LoadedModel,
    dataset: EvalDataset,
    prompt_set: str | Sequence[str] = PROMPT_SETS,
    *,
    templates: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    text_batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    refresh: bool = False,
) -> pd.DataFrame:
    """Zero-shot top-1 per class and overall, for one or several prompt sets (images embedded once).

    ``templates`` overrides the ensemble list (default: the dataset's ``templates``, else CLIP's ImageNet
    ones). Returns the tidy columns (see the module docstring), value in percent.
    """
    if dataset.labels is None or dataset.class_names is None:
        raise ValueError(f"{dataset.name}: not a zero-shot dataset (no labels/class names)")
    repeats = repeated_names(dataset.class_names)
    if repeats:  # one prompt and one result row per name: checked before any image is embedded
        raise ValueError(f"{dataset.name}: class names repeat: {describe_repeats(repeats)}")
    sets = [prompt_set] if isinstance(prompt_set, str) else list(prompt_set)
    for p in sets:
        prompt_templates(p, ())  # validates the name
    images = image_embeddings(
        model, dataset, cache_dir=cache_dir, batch_size=batch_size, num_workers=num_workers, progress=progress,
        refresh=refresh,
    )  # fmt: skip
    frames = []
    for p in sets:
        classifier = class_embeddings(
            model, dataset.class_names, p, templates=templates or dataset.templates, dataset_name=dataset.name,
            cache_dir=cache_dir, batch_size=text_batch_size, progress=progress, refresh=refresh,
        )  # fmt: skip
        per_class, overall = zero_shot_scores(images, dataset.labels, classifier, dataset.class_names)
        per_class = pd.concat(
            [per_class, pd.DataFrame({"concept": [OVERALL], "value": [overall], "n": [len(dataset.labels)]})],
            ignore_index=True,
        )
        per_class.insert(0, "prompt", p)
        frames.append(per_class)
    df = pd.concat(frames, ignore_index=True)
    return _tidy(df, model.key, dataset.name, "zero_shot", metric="top1")


def _tidy(df: pd.DataFrame, model: str, dataset: str, task: str, metric: str | None = None) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "model": model,
            "dataset": dataset,
            "task": task,
            "prompt": df["prompt"].astype(str),
            "concept": df["concept"].astype(str),
            "metric": df["metric"].astype(str) if metric is None else metric,
            "value": df["value"].astype(float),
            "n": df["n"].astype(np.int64),
        }
    )
    return out.reset_index(drop=True)


# ========================================================================================== retrieval


def similarity_ranks(sim: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Per query (row), the number of *wrong* items scoring at least as high as its best correct item.

    Recall@k of a query is ``rank < k``: some correct item is among the k best, ties counted against the
    model. Rows without a correct item get rank ``n_items`` (never a success).
    """
    sim = np.asarray(sim, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if sim.shape != correct.shape:
        raise ValueError(f"similarities {sim.shape} and correct mask {correct.shape} differ in shape")
    best = np.where(correct, sim, -np.inf).max(axis=1)
    ranks = ((sim >= best[:, None]) & ~correct).sum(axis=1)
    ranks[~correct.any(axis=1)] = sim.shape[1]
    return ranks.astype(np.int64)


def retrieval_ranks(
    image_emb: np.ndarray, caption_emb: np.ndarray, caption_image: np.ndarray, block: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """i2t ranks (one per image) and t2i ranks (one per caption) from embeddings, in blocks of queries.

    ``caption_image[j]`` is the image of caption ``j``. Blocks keep memory at ``block * n`` similarities
    (COCO's full 5k x 25k matrix would be 1 GB in float64).
    """
    caption_image = np.asarray(caption_image, dtype=np.int64)
    n_img = len(image_emb)
    i2t = np.empty(n_img, dtype=np.int64)
    for s in range(0, n_img, block):
        rows = np.arange(s, min(s + block, n_img))
        sim = image_emb[rows] @ caption_emb.T
        i2t[rows] = similarity_ranks(sim, caption_image[None, :] == rows[:, None])
    t2i = np.empty(len(caption_emb), dtype=np.int64)
    for s in range(0, len(caption_emb), block):
        rows = np.arange(s, min(s + block, len(caption_emb)))
        sim = caption_emb[rows] @ image_emb.T
        t2i[rows] = similarity_ranks(sim, np.arange(n_img)[None, :] == caption_image[rows, None])
    return i2t, t2i


def recall_table(
    i2t_ranks: np.ndarray,
    t2i_ranks: np.ndarray,
    caption_image: np.ndarray,
    caption_concepts: Sequence[Sequence[str]] | None = None,
    concepts: Sequence[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> pd.DataFrame:
    """Recall@k (fraction) overall and per concept: columns ``concept, metric, value, n``.

    ``caption_concepts[j]`` lists the concepts caption ``j`` mentions; an image's concepts are the union
    over its captions. ``concepts`` fixes the order of the per-concept rows (default: first appearance).
    """
    caption_image = np.asarray(caption_image, dtype=np.int64)
    i2t_ranks, t2i_ranks = np.asarray(i2t_ranks), np.asarray(t2i_ranks)
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = {OVERALL: (np.arange(len(i2t_ranks)), np.arange(len(t2i_ranks)))}
    if caption_concepts is not None:
        if len(caption_concepts) != len(t2i_ranks):
            raise ValueError(f"{len(caption_concepts)} caption concept lists for {len(t2i_ranks)} captions")
        by_concept: dict[str, list[int]] = {}
        for j, found in enumerate(caption_concepts):
            for c in dict.fromkeys(found):
                by_concept.setdefault(c, []).append(j)
        order = list(concepts) if concepts is not None else list(by_concept)
        for c in order:
            caps = np.asarray(by_concept.get(c, []), dtype=np.int64)
            if len(caps):
                groups[c] = (np.unique(caption_image[caps]), caps)
    rows = []
    for c, (imgs, caps) in groups.items():
        for direction, ranks, queries in (("i2t", i2t_ranks, imgs), ("t2i", t2i_ranks, caps)):
            for k in ks:
                value = float((ranks[queries] < k).mean()) if len(queries) else float("nan")
                rows.append((c, f"{direction}_k={int(k)}", value, len(queries)))
    return pd.DataFrame(rows, columns=["concept", "metric", "value", "n"])


def retrieval_eval(
    model: LoadedModel,
    dataset: EvalDataset,
    concepts: Sequence[str] | None = None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    match_mode: str = "phrase",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    text_batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    refresh: bool = False,
    **match_options: Any,
) -> pd.DataFrame:
    """Image-to-text and text-to-image recall@k, overall and per concept (tidy columns, value a fraction).

    ``concepts`` (default: the dataset's ``concepts``; none: overall only) are found in the captions with
    ``helpers.text.matching.match_captions(mode=match_mode, **match_options)``.
    """
    if dataset.captions is None:
        raise ValueError(f"{dataset.name}: not a retrieval dataset (no captions)")
    images = image_embeddings(
        model, dataset, cache_dir=cache_dir, batch_size=batch_size, num_workers=num_workers, progress=progress,
        refresh=refresh,
    )  # fmt: skip
    texts = caption_embeddings(
        model, dataset, cache_dir=cache_dir, batch_size=text_batch_size, progress=progress, refresh=refresh
    )
    caption_image = np.repeat(np.arange(dataset.n), [len(c) for c in dataset.captions])
    i2t, t2i = retrieval_ranks(images, texts, caption_image)
    concepts = list(concepts) if concepts is not None else dataset.concepts
    caption_concepts = None
    if concepts:
        from helpers.text.matching import match_captions

        flat = [c for caps in dataset.captions for c in caps]
        caption_concepts = match_captions(flat, concepts, mode=match_mode, **match_options)
    table = recall_table(i2t, t2i, caption_image, caption_concepts, concepts, ks)
    table.insert(0, "prompt", NO_PROMPT)
    return _tidy(table, model.key, dataset.name, "retrieval")
