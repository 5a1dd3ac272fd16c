"""Which settings make the supervised tagger of the synthetic world work: variants measured against the truth.

Trains the ``trained`` tagger (:func:`helpers.images.tagger_trained.train_tagger`) in several variants on the
world's labelled tagger split minus a held-out part, and measures each at the operating threshold (0.7, the
paper's) and at 0.5:

* ``heldout``: pair-level precision/recall on the held-out PNGs of the tagger split (never trained on);
* ``corpus``: the same on pretraining images (JPEG, log-uniform concept frequencies, near-duplicates of the
  classification set planted by the leak control) against ``truth/image_concepts.parquet``;

plus the training seconds and the last epoch's training loss. Needs a generated world (stage
``synthetic_world``, or ``helpers.synthetic.world.generate_world``)::

    python benchmarks/bench_tagger.py --world data/raw/synthetic [--variants base pools3_max ...]
        [--holdout 800] [--corpus-images 4000] [--train-images N --epochs E] [--out results.json]

``--variants`` names entries of ``VARIANTS`` (each a set of ``train_tagger`` keyword arguments over
``BASE``). Timings depend on the machine's load: the script prints ``os.getloadavg()`` before and after.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from helpers.images.tagger_data import read_labels
from helpers.images.tagger_trained import TrainedTagger, train_tagger

THRESHOLDS = (0.5, 0.7)
# The settings of params.yaml taggers.synthetic before this benchmark (bce, 4 pools, mean pool, 20 epochs).
BASE: dict[str, Any] = {
    "image_size": 32,
    "epochs": 20,
    "batch_size": 64,
    "lr": 0.005,
    "loss": "bce",
    "augment": True,
    "jpeg_quality": (60, 95),
    "jpeg_p": 0.5,
    "seed": 0,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "max": {"global_pool": "max"},
    "avgmax": {"global_pool": "avgmax"},
    "pools3": {"pools": 3},
    "pools3_max": {"pools": 3, "global_pool": "max"},
    "pools2_max": {"pools": 2, "global_pool": "max"},
    # the first block at full resolution, half the channels: about the base's multiply-adds
    "narrow_pools3_max": {"widths": (16, 32, 64, 128), "pools": 3, "global_pool": "max"},
    "narrow_pools3": {"widths": (16, 32, 64, 128), "pools": 3},
    "narrow_pools3_max_asl": {"widths": (16, 32, 64, 128), "pools": 3, "global_pool": "max", "loss": "asl"},
    "narrow_pools3_max_epochs40": {"widths": (16, 32, 64, 128), "pools": 3, "global_pool": "max", "epochs": 40},
    # the defaults of params.yaml taggers.synthetic since the world's corpus is 4:4:4 JPEG, and variants of them
    "default": {"widths": (16, 32, 64, 128), "pools": 3, "global_pool": "max", "epochs": 40},
    "default_no_jpeg": {
        "widths": (16, 32, 64, 128),
        "pools": 3,
        "global_pool": "max",
        "epochs": 40,
        "jpeg_quality": None,
    },
    "default_no_jpeg_lr01": {
        "widths": (16, 32, 64, 128),
        "pools": 3,
        "global_pool": "max",
        "epochs": 40,
        "jpeg_quality": None,
        "lr": 0.01,
    },
    # the defaults since the world places objects with little overlap (params.yaml taggers.synthetic)
    "placed": {"widths": (16, 32, 64, 128), "pools": 3, "global_pool": "max", "epochs": 20, "jpeg_quality": None},
    "placed_bf16": {
        "widths": (16, 32, 64, 128),
        "pools": 3,
        "global_pool": "max",
        "epochs": 20,
        "jpeg_quality": None,
        "precision": "bf16",
    },
    "asl": {"loss": "asl"},
    "max_asl": {"global_pool": "max", "loss": "asl"},
    "lr1e-3": {"lr": 0.001},
    "epochs40": {"epochs": 40},
    "max_epochs40": {"global_pool": "max", "epochs": 40},
    "upsample64": {"image_size": 64},
    "no_jpeg": {"jpeg_quality": None},
}


def split(n: int, holdout: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a seeded random ``holdout`` of ``n`` images is held out."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[holdout:]), np.sort(order[:holdout])


def corpus_images(world: Path, limit: int) -> tuple[list[Image.Image], list[int]]:
    """The first ``limit`` pretraining images (decoded JPEGs) and their sample ids, in tar order."""
    images, ids = [], []
    for shard_index, shard in enumerate(sorted((world / "pretrain").glob("*.tar"))):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext != "jpg":
                    continue
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
                    images.append(img.convert("RGB"))
                ids.append((shard_index << 32) | int(key[5:]))
                if len(images) >= limit:
                    return images, ids
    return images, ids


def score(tagger: TrainedTagger, images: list[Image.Image], batch: int = 256) -> np.ndarray:
    """(N, C) probabilities of ``tagger`` for PIL ``images``."""
    transform = tagger.transform()
    out = []
    for start in range(0, len(images), batch):
        out.append(tagger.scores(torch.stack([transform(im) for im in images[start : start + batch]])).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(tagger.concepts)), np.float32)


def precision_recall(probs: np.ndarray, truth: np.ndarray, threshold: float) -> tuple[float, float]:
    """Pair-level (image, concept) precision and recall of ``probs >= threshold`` against 0/1 ``truth``."""
    est = probs >= np.float32(threshold)
    tp = int((est & truth).sum())
    return tp / max(int(est.sum()), 1), tp / max(int(truth.sum()), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", default="data/raw/synthetic", type=Path)
    parser.add_argument("--variants", nargs="+", default=["base"], choices=sorted(VARIANTS))
    parser.add_argument("--holdout", type=int, default=800)
    parser.add_argument("--corpus-images", type=int, default=4000)
    parser.add_argument("--train-images", type=int, default=None, help="train on this many (screening runs)")
    parser.add_argument("--epochs", type=int, default=None, help="override every variant's epochs (screening)")
    parser.add_argument("--out", type=Path, default=None, help="append one JSON line per variant")
    args = parser.parse_args()

    paths, labels = read_labels(args.world / "tagger" / "labels.csv")
    names = pd.read_parquet(args.world / "truth" / "concepts.parquet")["name"].tolist()
    index = {c: j for j, c in enumerate(names)}
    train_idx, held_idx = split(len(paths), args.holdout)
    train_idx = train_idx[: args.train_images]
    with_images = [Image.open(p).convert("RGB") for p in paths]
    held_truth = np.zeros((len(held_idx), len(names)), bool)
    for row, i in enumerate(held_idx):
        held_truth[row, [index[c] for c in labels[i]]] = True
    corpus, ids = corpus_images(args.world, args.corpus_images)
    pairs = pd.read_parquet(args.world / "truth" / "image_concepts.parquet")
    position = {sid: r for r, sid in enumerate(ids)}
    pairs = pairs[pairs["sample_id"].isin(position)]
    corpus_truth = np.zeros((len(ids), len(names)), bool)
    corpus_truth[pairs["sample_id"].map(position).to_numpy(), pairs["concept_id"].to_numpy()] = True
    print(f"train {len(train_idx)}, held out {len(held_idx)}, corpus {len(ids)} images; load {os.getloadavg()}")

    for name in args.variants:
        settings = {**BASE, **VARIANTS[name]}
        if args.epochs is not None:
            settings["epochs"] = args.epochs
        start = time.perf_counter()
        tagger = train_tagger(
            [with_images[i] for i in train_idx], [labels[i] for i in train_idx], names, progress=False, **settings
        )
        seconds = time.perf_counter() - start
        row: dict[str, Any] = {
            "variant": name,
            "n_train": len(train_idx),
            "epochs": settings["epochs"],
            "train_s": round(seconds, 1),
            "final_loss": round(tagger.loss_history[-1], 4),
            "load": [round(x, 2) for x in os.getloadavg()],
        }
        for part, images, truth in (
            ("heldout", [with_images[i] for i in held_idx], held_truth),
            ("corpus", corpus, corpus_truth),
        ):
            probs = score(tagger, images)
            for t in THRESHOLDS:
                p, r = precision_recall(probs, truth, t)
                row[f"{part}_P@{t}"], row[f"{part}_R@{t}"] = round(p, 3), round(r, 3)
        print(json.dumps(row), flush=True)
        if args.out is not None:
            with args.out.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({**row, "settings": {k: v for k, v in settings.items()}}) + "\n")


if __name__ == "__main__":
    main()
