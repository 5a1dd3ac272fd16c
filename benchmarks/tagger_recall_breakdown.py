"""Where does a tagger miss on the synthetic world? Recall by concept frequency and by scene size.

Reads what the stages wrote in a work folder (``synthetic_world`` and ``image_search@<corpus>``: the stored
probabilities, which cover every threshold at or above the run's floor) and compares the tags at
``--threshold`` with the world's truth:

* per quarter of true concept frequency (rarest to most frequent): mean per-concept recall and the mean ratio of
  estimated to true count (a flat recall keeps the slope of accuracy on log count; README, synthetic world);
* per number of concepts an image shows: pair-level recall.

    python benchmarks/tagger_recall_breakdown.py --workdir . [--corpus synthetic] [--threshold 0.7]
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=".", type=Path)
    parser.add_argument("--corpus", default="synthetic", help="image_corpora entry tagged on the world")
    parser.add_argument("--world", default="data/raw/synthetic")
    parser.add_argument("--concepts", default="data/processed/concept_tables/synthetic.parquet")
    parser.add_argument("--threshold", type=float, default=0.7)
    args = parser.parse_args()

    root = args.workdir
    world = root / args.world
    shards = sorted(glob.glob(str(root / "data/interim/image_search" / args.corpus / "shards" / "*.scores.parquet")))
    if not shards:
        raise SystemExit(f"no stored scores for {args.corpus} under {root}: run image_search@{args.corpus} first")
    scores = pd.concat([pd.read_parquet(f) for f in shards])
    world_names = pd.read_parquet(world / "truth" / "concepts.parquet")["name"].tolist()
    table = pd.read_parquet(root / args.concepts)
    to_world = {int(r.concept_id): world_names.index(r.name) for r in table.itertuples() if r.name in world_names}
    tagged = scores[scores["prob"] >= args.threshold].assign(concept_id=lambda d: d["concept_id"].map(to_world))
    tagged = tagged.dropna(subset=["concept_id"]).astype({"concept_id": "int64"})[["sample_id", "concept_id"]]
    truth = pd.read_parquet(world / "truth" / "image_concepts.parquet").astype({"concept_id": "int64"})
    hits = truth.merge(tagged, on=["sample_id", "concept_id"])

    n_true = truth.groupby("concept_id").size()
    per_concept = pd.DataFrame(
        {
            "true": n_true,
            "recall": hits.groupby("concept_id").size().reindex(n_true.index, fill_value=0) / n_true,
            "count_ratio": tagged.groupby("concept_id").size().reindex(n_true.index, fill_value=0) / n_true,
        }
    )
    labels = ["rarest", "second", "third", "most frequent"]
    per_concept["quarter"] = pd.qcut(np.log10(per_concept["true"]), 4, labels=labels)
    print(f"{args.corpus} at threshold {args.threshold}: {len(hits)} of {len(truth)} shown pairs tagged")
    print(per_concept.groupby("quarter", observed=True)[["recall", "count_ratio"]].mean().round(3).to_string())

    shown = truth.groupby("sample_id").size().rename("n_shown")
    found = hits.groupby("sample_id").size().reindex(shown.index, fill_value=0)
    by_size = pd.DataFrame({"n_shown": shown, "found": found}).groupby("n_shown").sum()
    images = shown.groupby(shown).size()
    by_size["pair_recall"] = (by_size["found"] / (images * images.index)).round(3)
    print(by_size.assign(images=images)[["images", "pair_recall"]].to_string())


if __name__ == "__main__":
    main()
