"""How well does the world's trained CLIP separate shown from absent concepts, whatever the threshold?

The calibrated open_clip tagger misses its precision/recall target (README, synthetic world). This measures the
limit the scores themselves set: the CLIP's cosine similarities (no sigmoid, so nothing saturates) on corpus
images against the world's truth, under the score transforms a tagger could use:

* ``raw``: the cosine similarity of image and concept;
* ``image_centred``: minus the image's mean similarity to the other concepts (the tagger's ``concepts`` mode);
* ``softmax``: a softmax over concepts at the model's logit scale.

For each: the median per-concept ROC AUC (scikit-learn) and the most frequent concepts' AUCs, and the pair-level
precision/recall of per-concept thresholds fitted (``helpers.images.calibration.fit_thresholds``, target
precision 0.8; a concept that cannot reach it is never tagged) on the labelled split, on the labelled split at
each concept's caption prevalence in the corpus (``prevalence`` of ``fit_thresholds``: the stage's
``audit.prevalence: captions``), and -- an oracle no deployment has -- on the first half of the corpus images,
scored on the second half. Where the world has its corpus audit (``audit/``, ``synthetic.audit_images``), also
the stage's rule for the CLIP tagger: ``mode="pooled"`` thresholds (``--target``, 5 folds) fitted on the audit
and scored on the corpus images.

    python benchmarks/clip_tagger_separability.py --world data/raw/synthetic \
        --model data/models/synthetic-clip [--corpus-images 4000] [--target 0.82]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from helpers.images.backends import build_tagger
from helpers.images.calibration import fit_thresholds
from helpers.images.tagger_data import read_labels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tagger import corpus_images  # noqa: E402 -- the benchmark folder is not a package

TEMPLATES = ["a photo of {c}", "an image showing {c}"]


def similarities(tagger, images: list[Image.Image], batch: int = 256) -> np.ndarray:
    """(N, C) cosine similarities of ``images`` and the tagger's concepts."""
    transform = tagger.transform()
    out = [
        tagger.similarities(torch.stack([transform(im) for im in images[s : s + batch]])).cpu().numpy()
        for s in range(0, len(images), batch)
    ]
    return np.concatenate(out)


def transforms(s: np.ndarray, logit_scale: float) -> dict[str, np.ndarray]:
    others = (s.sum(1, keepdims=True) - s) / (s.shape[1] - 1)
    z = s * logit_scale
    z = np.exp(z - z.max(1, keepdims=True))
    return {"raw": s, "image_centred": s - others, "softmax": z / z.sum(1, keepdims=True)}


def micro(scores: np.ndarray, truth: np.ndarray, cuts: np.ndarray) -> tuple[float, float]:
    tagged = scores >= cuts[None, :]
    tp = int((tagged & truth).sum())
    return tp / max(int(tagged.sum()), 1), tp / max(int(truth.sum()), 1)


def fitted_cuts(
    scores: np.ndarray, labels: np.ndarray, lo: float, hi: float, prevalence: np.ndarray | None = None
) -> np.ndarray:
    """Per-concept thresholds for precision 0.8 in the original score units (never-tag when unreachable)."""
    unit = (scores - lo) / (hi - lo)
    fit = fit_thresholds(
        np.clip(unit, 0, 1), labels, target_precision=0.8, default=1.0, min_positives=3, prevalence=prevalence
    )
    cuts = fit["threshold"].to_numpy() * (hi - lo) + lo
    return np.where(fit["fallback"].to_numpy(), np.inf, cuts)


def _truth(labels: list[list[str]], names: list[str]) -> np.ndarray:
    index = {c: j for j, c in enumerate(names)}
    truth = np.zeros((len(labels), len(names)), bool)
    for i, row in enumerate(labels):
        truth[i, [index[c] for c in row]] = True
    return truth


def separability(world: Path, model: Path, corpus_images_n: int = 4000, target: float = 0.82) -> dict:
    """The measures above for the CLIP in the folder ``model`` (``<name>.json`` + ``checkpoint.pt``).

    Returns ``{"images": (labelled split, corpus, shown pairs), <transform>: {auc_median, auc_frequent_min,
    auc_frequent_max, p_split, r_split, p_prevalence, r_prevalence, p_oracle, r_oracle[, p_pooled,
    r_pooled]}}`` (``*_pooled`` where the world has ``audit/``).
    """
    names = pd.read_parquet(world / "truth" / "concepts.parquet")["name"].tolist()
    config = {
        "backend": "open_clip",
        "model_config": str(model / f"{model.name}.json"),
        "pretrained": str(model / "checkpoint.pt"),
        "templates": TEMPLATES,
    }
    tagger = build_tagger(config, names)
    scale = float(tagger.model.logit_scale.exp().detach())
    paths, labels = read_labels(world / "tagger" / "labels.csv")
    split_truth = _truth(labels, names)
    split = transforms(similarities(tagger, [Image.open(p).convert("RGB") for p in paths]), scale)
    audit = None
    if (world / "audit" / "labels.csv").is_file():  # the world's corpus audit, as the stage calibrates on it
        audit_paths, audit_labels = read_labels(world / "audit" / "labels.csv")
        audit_scores = transforms(similarities(tagger, [Image.open(p).convert("RGB") for p in audit_paths]), scale)
        audit = (audit_scores, _truth(audit_labels, names))
    images, ids = corpus_images(world, corpus_images_n)
    position = {sid: r for r, sid in enumerate(ids)}
    pairs = pd.read_parquet(world / "truth" / "image_concepts.parquet")
    pairs = pairs[pairs["sample_id"].isin(position)]
    truth = np.zeros((len(ids), len(names)), bool)
    truth[pairs["sample_id"].map(position).to_numpy(), pairs["concept_id"].to_numpy()] = True
    corpus = transforms(similarities(tagger, images), scale)
    half = len(ids) // 2
    # each concept's share of the corpus's captions that mention it (the stage's `prevalence: captions`)
    mentions = pd.read_parquet(world / "truth" / "caption_concepts.parquet").drop_duplicates()
    n_samples = len(pd.read_parquet(world / "truth" / "samples.parquet"))
    prevalence = np.bincount(mentions["concept_id"].to_numpy(), minlength=len(names)) / n_samples
    frequent = np.argsort(-truth.mean(0))[:10]
    out: dict = {"images": (len(paths), len(ids), int(truth.sum()))}
    for name in corpus:
        a, b = split[name], corpus[name]
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        if audit is not None:
            lo, hi = min(lo, audit[0][name].min()), max(hi, audit[0][name].max())
        aucs = {c: roc_auc_score(truth[:, c], b[:, c]) for c in range(len(names)) if 0 < truth[:, c].sum() < len(b)}
        p_split, r_split = micro(b, truth, fitted_cuts(a, split_truth, lo, hi))
        p_prev, r_prev = micro(b, truth, fitted_cuts(a, split_truth, lo, hi, prevalence))
        p_oracle, r_oracle = micro(b[half:], truth[half:], fitted_cuts(b[:half], truth[:half], lo, hi))
        out[name] = {
            "auc_median": float(np.median(list(aucs.values()))),
            "auc_frequent_min": min(aucs[c] for c in frequent),
            "auc_frequent_max": max(aucs[c] for c in frequent),
            "p_split": p_split, "r_split": r_split, "p_prevalence": p_prev, "r_prevalence": r_prev,
            "p_oracle": p_oracle, "r_oracle": r_oracle,
        }  # fmt: skip
        if audit is not None:
            unit = np.clip((audit[0][name] - lo) / (hi - lo), 0, 1)
            fit = fit_thresholds(unit, audit[1], mode="pooled", target_precision=target)
            cuts = fit["threshold"].to_numpy() * (hi - lo) + lo
            out[name]["p_pooled"], out[name]["r_pooled"] = micro(b, truth, cuts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", default="data/raw/synthetic", type=Path)
    parser.add_argument("--model", default="data/models/synthetic-clip", type=Path)
    parser.add_argument("--corpus-images", type=int, default=4000)
    parser.add_argument("--target", type=float, default=0.82, help="pooled calibration's target precision")
    args = parser.parse_args()
    result = separability(args.world, args.model, args.corpus_images, args.target)
    n_split, n_corpus, n_pairs = result.pop("images")
    print(f"{n_split} labelled split images, {n_corpus} corpus images, {n_pairs} shown pairs")
    for name, m in result.items():
        print(
            f"{name:14s} median AUC {m['auc_median']:.3f}; ten most frequent "
            f"{m['auc_frequent_min']:.3f}-{m['auc_frequent_max']:.3f} | precision 0.8 fitted on "
            f"the labelled split: P {m['p_split']:.3f} R {m['r_split']:.3f} | the same at caption prevalence: "
            f"P {m['p_prevalence']:.3f} R {m['r_prevalence']:.3f} | on half the corpus (oracle): "
            f"P {m['p_oracle']:.3f} R {m['r_oracle']:.3f}"
            + (f" | pooled on the corpus audit: P {m['p_pooled']:.3f} R {m['r_pooled']:.3f}" if "p_pooled" in m else "")
        )


if __name__ == "__main__":
    main()
