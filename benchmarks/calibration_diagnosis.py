"""Why does (or does not) a tagger's calibrated operating point reach a precision/recall target in the world?

Reads what the stages wrote in a work folder (``synthetic_world``, ``text_search@synthetic``,
``image_search@<corpus>`` of a corpus with an ``audit`` entry) and refits the per-concept thresholds
(``helpers.images.calibration.fit_thresholds``) under variations, scoring each against the world's truth as
``synthetic_validation`` does (pair-level precision and recall of the image and matched estimates):

* the selection mode: target precision 0.8 / 0.9, or maximum F1;
* the audit's size: random subsets of the labelled split (per-concept positives shrink with it);
* the audit's source: the labelled split (PNG images outside the corpus) against pretraining samples drawn
  from the corpus itself (JPEG, labelled by the world's truth; these samples are also scored, a small
  overlap noted in the output).

Nothing is tagged again: the audit split's scores are ``calibration/audit.parquet`` and the corpus's are the
image search's stored probabilities (>= its ``prob_floor``).

    FDP_WORKDIR=<work folder> python benchmarks/calibration_diagnosis.py [--corpus synthetic_clip]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from helpers import paths
from helpers.images.audit import audit_path, read_audit
from helpers.images.calibration import fit_thresholds
from helpers.images.search import image_search_dir, stored_floor
from helpers.synthetic.corrected_report import corpus_audit
from helpers.synthetic.validation import _flag_union, _true_pairs, _world_concepts, _world_ids, estimated_pairs
from helpers.text import corpora


def score(text_dir, image_dir, cuts, concepts, world_names, truth) -> dict:
    """Pair-level image and matched precision/recall of per-concept ``cuts`` (table ids) against the truth."""
    pairs = _flag_union(estimated_pairs(text_dir, image_dir, cuts, concepts, world_names), truth)
    out = {}
    for name, est, true in (
        ("image", pairs["in_image"], pairs["shown"]),
        ("matched", pairs["in_image"] & pairs["in_text"], pairs["shown"] & pairs["mentioned"]),
    ):
        tp = int((est & true).sum())
        out[f"{name}_P"] = tp / max(int(est.sum()), 1)
        out[f"{name}_R"] = tp / max(int(true.sum()), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="synthetic_clip", help="image_corpora entry with an audit split")
    parser.add_argument("--caption-corpus", default="synthetic")
    parser.add_argument("--world", default="data/raw/synthetic")
    parser.add_argument("--default", type=float, default=0.7, help="threshold of concepts that cannot be fitted")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    world = paths.workdir() / args.world
    world_names = _world_concepts(world)["name"].tolist()
    text_dir, image_dir = corpora.text_search_dir(args.caption_corpus), image_search_dir(args.corpus)
    concepts = corpora.searched_concepts(args.caption_corpus)
    floor = stored_floor(image_dir)
    truth = _true_pairs(world)
    probs, labels, ids = read_audit(audit_path(args.corpus))
    n_table = len(concepts)

    def table_cuts(fitted: pd.DataFrame, ids: np.ndarray) -> np.ndarray:
        cuts = np.full(n_table, args.default)
        cuts[ids] = fitted["threshold"].to_numpy()
        return cuts

    rows = []

    def run(source: str, n_audit: int, p: np.ndarray, y: np.ndarray, ids: np.ndarray, mode: str, target: float):
        fitted = fit_thresholds(
            p, y, mode=mode, target_precision=target, default=args.default, floor=floor, concept_ids=ids
        )
        measured = score(text_dir, image_dir, table_cuts(fitted, ids), concepts, world_names, truth)
        positives = y.sum(axis=0)
        rows.append({
            "audit": source, "n_audit": n_audit, "mode": mode if mode == "f1" else f"precision>={target:g}",
            "min_positives_per_concept": int(positives.min()), "median_positives": float(np.median(positives)),
            "fallback": int(fitted["fallback"].sum()), "audit_P_mean": float(fitted["precision"].mean()),
            "audit_R_mean": float(fitted["recall"].mean()), **measured,
        })  # fmt: skip
        print(rows[-1], flush=True)

    for mode, target in (("precision", 0.8), ("precision", 0.9), ("f1", 0.8)):
        run("labelled_split", len(probs), probs, labels, ids, mode, target)
    rng = np.random.default_rng(args.seed)
    for n in (250, 1000):
        pick = np.sort(rng.choice(len(probs), size=min(n, len(probs)), replace=False))
        run("labelled_split", len(pick), probs[pick], labels[pick], ids, "precision", 0.8)
    # the corpus's own samples as the audit (world ids -> table ids: the world's table is 1:1)
    world_of_table = _world_ids(concepts, world_names, n_table)
    table_of_world = np.array([int(np.flatnonzero(world_of_table == w)[0]) for w in range(len(world_names))])
    for n in (500, 2000):
        audit = corpus_audit(world, text_dir, image_dir, concepts, n, seed=args.seed)
        for mode, target in (("precision", 0.8), ("f1", 0.8)):
            run("corpus_sample", n, audit.probs, audit.labels, table_of_world, mode, target)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.round(3).to_string(index=False))
    print(f"({time.perf_counter() - started:.0f} s; corpus_sample audits are also part of the scored corpus)")


if __name__ == "__main__":
    main()
