"""The synthetic world's test sets and labelled tagger split (written by ``world.generate_world``).

Each set is an independent draw from the same visual world (its own ``rng_stream`` of the seed), so the
layout and bytes are those :mod:`helpers.synthetic.world` documents:

    downstream/classification/         classes.txt (names in id order) + <name_with_underscores>/*.png
    downstream/retrieval/{i:05d}.tar   KEY.jpg, KEY.txt (5 captions, one per line), KEY.json
    downstream/retrieval/truth.parquet sample_id, concept_id (concepts shown)
    tagger/images/*.png + labels.csv   columns image, concepts (names joined by '|')
    audit/images/KEY.jpg + labels.csv  a seeded sample of the pretraining corpus (its JPEG bytes as in the
                                       shards, after any planted leaks), labelled with the concepts shown:
                                       columns image, concepts, sample_id
"""

from __future__ import annotations

import csv
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from helpers.synthetic.render import Renderer, rng_stream
from helpers.synthetic.samples import tar_member
from helpers.synthetic.world import (
    CaptionWriter,
    WorldSpec,
    _clear,
    _draw_concepts,
    _encode,
    _instances,
    _pairs_table,
    folder_name,
)
from helpers.text.tars import iter_tar_samples


def write_classification(spec: WorldSpec, renderer: Renderer, folder: Path, progress: bool) -> dict:
    """Balanced single-concept test set: ``downstream_per_class`` PNGs per concept, one folder per class."""
    rng = rng_stream(spec.seed, "classification")
    names = spec.concept_names
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    total = spec.downstream_per_class * len(names)
    bar = tqdm(total=total, desc="synthetic classification", unit="img", disable=not progress)
    for c, name in enumerate(names):
        sub = folder / folder_name(name)
        _clear(sub, "*.png")
        for j in range(spec.downstream_per_class):
            image = renderer.draw([c], _instances(rng, 1), rng)
            (sub / f"{j:05d}.png").write_bytes(_encode(image, "PNG"))
            bar.update()
    bar.close()
    return {
        "root": str(folder),
        "classes_file": str(folder / "classes.txt"),
        "n_classes": len(names),
        "per_class": spec.downstream_per_class,
        "n_images": total,
    }


def write_retrieval(spec: WorldSpec, renderer: Renderer, folder: Path, progress: bool) -> dict:
    """Retrieval set: wds shards with ``captions_per_image`` faithful captions per image (one per line).

    Concepts are drawn uniformly (not with the pretraining law), so rare concepts are represented too.
    """
    rng = rng_stream(spec.seed, "retrieval")
    writer = CaptionWriter(spec.concept_names, rng_stream(spec.seed, "retrieval-captions"))
    k = spec.n_concepts
    uniform = np.full(k, 1.0 / k)
    shown, _ = _draw_concepts(rng, uniform, spec.retrieval_images, spec.max_concepts_per_image)
    _clear(folder, "*.tar")
    n_shards = max(1, math.ceil(spec.retrieval_images / spec.shard_size))
    pairs: tuple[list[int], list[int]] = ([], [])
    index = 0
    bar = tqdm(total=spec.retrieval_images, desc="synthetic retrieval", unit="img", disable=not progress)
    for shard in range(n_shards):
        size = min(spec.shard_size, spec.retrieval_images - index)
        with tarfile.open(folder / f"{shard:05d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for pos in range(size):
                concepts = [int(c) for c in shown[index]]
                counts = _instances(rng, len(concepts))
                image = renderer.draw(concepts, counts, rng)
                captions = []
                for _ in range(spec.captions_per_image):
                    order = rng.permutation(len(concepts))
                    captions.append(writer.caption([concepts[i] for i in order], [counts[i] for i in order]))
                key = f"{shard:05d}{pos:04d}"
                tar_member(tar, f"{key}.jpg", _encode(image, "JPEG", spec.jpeg_quality, spec.jpeg_subsampling))
                tar_member(tar, f"{key}.txt", "\n".join(captions).encode("utf-8"))
                meta = {"captions": captions, "key": key, "concepts": [spec.concept_names[c] for c in concepts]}
                tar_member(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
                for c in concepts:
                    pairs[0].append((shard << 32) | pos), pairs[1].append(c)
                index += 1
                bar.update()
    bar.close()
    pq.write_table(_pairs_table(*pairs), folder / "truth.parquet")
    last = f"{n_shards - 1:05d}"
    return {
        "source": {"format": "wds", "paths": (folder / f"{{00000..{last}}}.tar").as_posix(), "text_ext": "txt"},
        "n_shards": n_shards,
        "truth": str(folder / "truth.parquet"),
        "n_images": spec.retrieval_images,
        "captions_per_image": spec.captions_per_image,
    }


def write_tagger(spec: WorldSpec, renderer: Renderer, folder: Path, progress: bool) -> dict:
    """Labelled split for an image tagger: PNGs with their shown concepts (uniform concept draw)."""
    rng = rng_stream(spec.seed, "tagger")
    names = spec.concept_names
    k = spec.n_concepts
    shown, _ = _draw_concepts(rng, np.full(k, 1.0 / k), spec.tagger_images, spec.max_concepts_per_image)
    images = folder / "images"
    _clear(images, "*.png")
    rows = []
    for i in tqdm(range(spec.tagger_images), desc="synthetic tagger", unit="img", disable=not progress):
        concepts = [int(c) for c in shown[i]]
        image = renderer.draw(concepts, _instances(rng, len(concepts)), rng)
        name = f"{i:06d}.png"
        (images / name).write_bytes(_encode(image, "PNG"))
        rows.append((f"images/{name}", "|".join(names[c] for c in sorted(concepts))))
    labels = folder / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "concepts"])
        w.writerows(rows)
    return {"root": str(folder), "labels": str(labels), "n_images": spec.tagger_images}


def write_corpus_audit(spec: WorldSpec, world: Path, folder: Path, progress: bool) -> dict:
    """A labelled audit drawn from the pretraining corpus itself: ``spec.audit_images`` samples (seeded, without
    replacement), their JPEGs copied byte for byte out of ``world/pretrain`` and labelled from ``world/truth``.

    What a researcher labels to calibrate a tagger on their own corpus (a few hundred of its images): unlike the
    tagger split, it has the corpus's concept mix, and a CLIP trained on the corpus has seen these images, as
    it has every image it tags. Call after the corpus and its truth are final (planted leaks included).
    """
    images = folder / "images"
    _clear(images, "*.jpg")
    n = min(spec.audit_images, spec.n_samples)
    drawn = np.sort(rng_stream(spec.seed, "audit").choice(spec.n_samples, size=n, replace=False))
    truth = pq.read_table(world / "truth" / "samples.parquet", columns=["sample_id", "key"]).to_pandas()
    chosen = truth.iloc[drawn]
    wanted = dict(zip(chosen["key"], chosen["sample_id"]))
    shown = pq.read_table(world / "truth" / "image_concepts.parquet").to_pandas()
    shown = shown[shown["sample_id"].isin(chosen["sample_id"])]
    by_sample = shown.groupby("sample_id")["concept_id"].apply(sorted).to_dict()
    found: dict[str, bytes] = {}
    for shard in tqdm(sorted((world / "pretrain").glob("*.tar")), desc="synthetic audit", disable=not progress):
        for sample in iter_tar_samples(str(shard), {"jpg"}):  # the grouping the image search reads them with
            if sample.key in wanted:
                found[sample.key] = sample.files["jpg"]
    missing = sorted(set(wanted) - set(found))
    if missing:  # the truth and the shards disagree: a bug, not bad input
        raise RuntimeError(f"{world / 'pretrain'}: audit samples {missing[:3]} have no image in the shards")
    names = spec.concept_names
    rows = []
    for key in sorted(wanted):
        (images / f"{key}.jpg").write_bytes(found[key])
        concepts = by_sample.get(int(wanted[key]), [])
        rows.append((f"images/{key}.jpg", "|".join(names[c] for c in concepts), int(wanted[key])))
    labels = folder / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "concepts", "sample_id"])
        w.writerows(rows)
    return {"root": str(folder), "labels": str(labels), "n_images": n}
