"""A synthetic pretraining world with known ground truth, to validate the frequency pipeline end to end.

Why: on a real corpus (LAION, CC-3M) nobody knows which concepts an image really shows or how often a
caption lies, so the text search, the image tagger and the log-linear fit can only be checked against
each other. Here every quantity the pipeline estimates is known by construction:

* how often each concept is *shown* (``truth/image_concepts.parquet``) and *mentioned*
  (``truth/caption_concepts.parquet``), with concept frequencies following a chosen law -- ``zipf``
  (long-tailed like web data; the rarest concepts get very few samples) or ``log_uniform`` (log10 of the
  target counts spread evenly over ``decades``, so every frequency decade is populated, which is what a
  log-linear fit needs);
* the image--text misalignment: with probability ``misalignment_rate`` a caption also mentions a concept
  the image does not show, with probability ``omission_rate`` it leaves out one that it shows, and with
  probability ``full_misalignment_rate`` it names *only* concepts the image does not show (as many as it
  shows, drawn by the frequency law among the absent ones) -- the kind of sample the study's misalignment
  degree counts (``truth/samples.parquet`` flags every sample).

Images are tiny procedurally drawn scenes: every concept has a fixed visual signature (a shape, a stripe
texture of a given frequency and orientation, a two-colour palette) drawn at a random position, rotation
and scale over a random noise/gradient background, so a small CLIP or tagger can learn them, but not
from a single pixel. Captions are templated English that the ``phrase`` text search must find: articles,
numbers with (irregular) plurals when several instances are drawn, adjectives that are no concept,
varied word order, multi-word names written with spaces, hyphens or underscores, and varied case.

Layout written by ``generate_world(spec, out_dir)``::

    pretrain/{i:05d}.tar               webdataset shards: KEY.jpg, KEY.txt (caption), KEY.json {caption, key}
    truth/concepts.parquet             concept_id, name, target_frequency, shown_count, mentioned_count
    truth/image_concepts.parquet       sample_id int64, concept_id int32   (concepts SHOWN)
    truth/caption_concepts.parquet     sample_id int64, concept_id int32   (concepts MENTIONED)
    truth/samples.parquet              sample_id, key, misaligned, omitted, fully_misaligned
    downstream/classification/         classes.txt (names in id order) + <name_with_underscores>/*.png
    downstream/retrieval/{i:05d}.tar   KEY.jpg, KEY.txt (5 captions, one per line), KEY.json
    downstream/retrieval/truth.parquet sample_id, concept_id (concepts shown)
    tagger/images/*.png + labels.csv   columns image, concepts (names joined by '|')
    audit/images/KEY.jpg + labels.csv  audit_images corpus samples (their shard JPEGs) with the concepts shown
    world.json                         the spec and the returned description

Sample ids follow ``helpers.text.captions``: ``(shard_index << 32) | position`` and keys
``f"{shard:05d}{position:04d}"``. Everything depends only on the spec (numpy PCG64 streams derived from
``seed`` with ``SeedSequence``; tar members carry no time stamps), so a seed reproduces the world byte
for byte under the same Pillow. The downstream sets and the tagger split use their own streams, so they
are independent draws from the same visual world (their writers: :mod:`helpers.synthetic.downstream`).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from helpers.params import ConfigError, validate
from helpers.params.study import Synthetic
from helpers.synthetic.render import Renderer, make_signatures, rng_stream
from helpers.synthetic.samples import tar_member

MAX_PER_SHARD = 10_000  # keys are f"{shard:05d}{position:04d}"
FREQUENCY_LAWS = ("zipf", "log_uniform")
# Pillow's names for JPEG chroma subsampling. The world's default is 4:4:4: at 32 px, 4:2:0 halves the colour
# resolution to 16 px, mixes the two colours of a striped object into grey and takes away the very cue that
# tells concepts apart (measured: README, synthetic world). Web images are large enough for 4:2:0 to cost little.
JPEG_SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")

# Built-in concept names, ordered so that every prefix mixes irregular plurals, multi-word names and
# regular nouns. No name's words are a sub-phrase of another name ("dog" would be inside "hot dog"), and
# every plural below lemmatises back to its singular under spaCy's lookup table (checked by the tests):
# "people" or "calves" would not, so "person" and "calf" are left out.
CONCEPT_NAMES: tuple[str, ...] = (
    "mouse", "fire truck", "goose", "cat", "child", "teddy bear", "wolf", "horse", "knife", "hot dog",
    "woman", "elephant", "tooth", "traffic light", "sheep", "giraffe", "fish", "stop sign", "deer", "bicycle",
    "ox", "ice cream", "cactus", "airplane", "fox", "school bus", "man", "apple", "box", "cell phone",
    "foot", "banana", "tennis racket", "butterfly", "sea otter", "strawberry", "polar bear", "guitar",
    "paper lantern", "umbrella", "snow leopard", "kite", "coffee mug", "pumpkin", "espresso machine", "zebra",
    "puppy", "volcano", "potato", "tomato", "cherry", "peach", "bench", "dress", "brush", "baby", "pony",
    "louse", "scarf", "loaf", "hoof", "rabbit", "owl", "penguin", "turtle", "frog", "camel", "lion",
    "tiger", "monkey", "spider", "snail", "crab", "octopus", "dolphin", "whale", "shark", "mushroom",
    "pineapple", "donut", "muffin", "race car", "lamp", "ladder", "hammer", "candle", "kettle", "bucket",
    "tractor", "helicopter", "rocket", "anchor", "drum", "tent", "windmill", "lighthouse", "balloon",
    "toothbrush", "violin", "piano",
)  # fmt: skip

IRREGULAR_PLURALS: dict[str, str] = {
    "mouse": "mice", "goose": "geese", "child": "children", "wolf": "wolves", "knife": "knives",
    "woman": "women", "man": "men", "tooth": "teeth", "foot": "feet", "ox": "oxen", "cactus": "cacti",
    "sheep": "sheep", "fish": "fish", "deer": "deer", "louse": "lice", "scarf": "scarves", "loaf": "loaves",
    "hoof": "hooves", "volcano": "volcanoes", "potato": "potatoes", "tomato": "tomatoes",
}  # fmt: skip

ADJECTIVES = ("small", "large", "tiny", "big", "shiny", "striped", "fuzzy", "old", "new", "plastic",
              "wooden", "colourful", "bright", "dark", "cute", "funny")  # fmt: skip
NUMBERS = ("two", "three", "a few", "several", "a pair of", "2", "3", "some")
ONE = ("a photo of {x}", "{X}.", "Close-up of {x}", "an image showing {x}", "{x} on a plain background",
       "picture of {x} - stock image", "{X} in the scene", "there is {x} here", "my {x} #photography")  # fmt: skip
MANY = ("a photo of {x}", "{X} together.", "an image showing {x}", "{x} in one picture", "Scene with {x}",
        "there are {x} here")  # fmt: skip

# ------------------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class WorldSpec:
    """Everything that determines a synthetic world (the ``synthetic:`` section of ``params.yaml``).

    ``n_samples`` pretraining images carry 1..``max_concepts_per_image`` concepts each (uniform); which
    concepts is drawn without replacement with probabilities proportional to the frequency law's weights:
    ``zipf``: weight of rank r is ``r ** -zipf_exponent``; ``log_uniform``: log10 weights evenly spaced over
    ``[0, decades]``. The rank order of the concepts is a seeded permutation. ``target_frequency`` is the
    weight scaled to the expected total number of shown concepts.

    ``full_misalignment_rate`` is the share of captions that name only concepts their image does not show
    (the paper's "misaligned" sample, sec. 3 / app. misalignment degree); it is drawn from its own random
    stream, so ``0`` reproduces a world without it byte for byte, and such a sample is neither
    ``misaligned`` nor ``omitted`` (those flags describe captions that still name a shown concept).
    """

    n_concepts: int = 40
    frequency_law: str = "log_uniform"
    zipf_exponent: float = 1.0
    decades: float = 3.0
    n_samples: int = 20_000
    max_concepts_per_image: int = 3
    image_size: int = 32
    misalignment_rate: float = 0.05
    omission_rate: float = 0.05
    full_misalignment_rate: float = 0.05
    seed: int = 0
    shard_size: int = 5_000
    downstream_per_class: int = 20
    retrieval_images: int = 200
    captions_per_image: int = 5
    tagger_images: int = 1_000
    audit_images: int = 0
    jpeg_quality: int = 90
    jpeg_subsampling: str = "4:4:4"
    leak_rate: float = 0.0
    leaked_classes: int = 0

    def __post_init__(self) -> None:
        def fail(key: str, why: str) -> None:
            raise ConfigError(f"synthetic.{key}: {why}")

        def integer(key: str, low: int, high: int | None = None) -> None:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                fail(key, f"expected an integer, got {value!r}")
            if value < low or (high is not None and value > high):
                fail(key, f"expected {low}..{high if high is not None else 'inf'}, got {value}")

        integer("n_concepts", 1, len(CONCEPT_NAMES))
        if self.frequency_law not in FREQUENCY_LAWS:
            fail("frequency_law", f"{self.frequency_law!r} is not one of {', '.join(FREQUENCY_LAWS)}")
        for key in ("zipf_exponent", "decades"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                fail(key, f"expected a non-negative number, got {value!r}")
        integer("n_samples", 1)
        integer("max_concepts_per_image", 1, self.n_concepts)
        integer("image_size", 8, 1024)
        for key in ("misalignment_rate", "omission_rate", "full_misalignment_rate"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                fail(key, f"expected a rate in [0, 1], got {value!r}")
        integer("seed", 0)
        integer("shard_size", 1, MAX_PER_SHARD)
        integer("downstream_per_class", 0)
        integer("retrieval_images", 0)
        integer("captions_per_image", 1)
        integer("tagger_images", 0)
        integer("audit_images", 0)
        integer("jpeg_quality", 1, 100)
        if self.jpeg_subsampling not in JPEG_SUBSAMPLINGS:
            fail("jpeg_subsampling", f"{self.jpeg_subsampling!r} is not one of {', '.join(JPEG_SUBSAMPLINGS)}")
        if (
            isinstance(self.leak_rate, bool)
            or not isinstance(self.leak_rate, (int, float))
            or not 0 <= self.leak_rate <= 1
        ):
            fail("leak_rate", f"expected a rate in [0, 1], got {self.leak_rate!r}")
        integer("leaked_classes", 0, self.n_concepts)
        if self.leak_rate > 0 and (self.leaked_classes == 0 or self.downstream_per_class == 0):
            fail("leaked_classes", "leak_rate > 0 needs leaked_classes >= 1 and downstream_per_class >= 1")

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> WorldSpec:
        """Build from a params mapping (the ``synthetic:`` section); unknown keys are a ``ConfigError``."""
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"synthetic.{unknown[0]}: unknown key (expected one of {', '.join(sorted(known))})")
        return cls(**params)

    @property
    def concept_names(self) -> list[str]:
        return list(CONCEPT_NAMES[: self.n_concepts])

    def weights(self) -> np.ndarray:
        """Per-concept sampling weights (sum 1), in concept-id order (rank order permuted by the seed)."""
        k = self.n_concepts
        ranks = np.arange(1, k + 1, dtype=np.float64)
        if self.frequency_law == "zipf":
            by_rank = ranks**-self.zipf_exponent
        else:  # highest first: 10**decades ... 10**0
            by_rank = 10.0 ** np.linspace(self.decades, 0.0, k) if k > 1 else np.ones(1)
        order = rng_stream(self.seed, "ranks").permutation(k)  # order[c] = rank index of concept c
        weights = by_rank[order]
        return weights / weights.sum()


def plural(name: str) -> str:
    """Plural of a concept name: the last word inflected (irregular table first, then spelling rules)."""
    *head, last = name.split()
    if last in IRREGULAR_PLURALS:
        word = IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        word = last + "es"
    elif last.endswith("y") and last[-2:-1] not in tuple("aeiou"):
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return " ".join([*head, word])


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


class CaptionWriter:
    """Renders a caption mentioning given concepts, in varied but matchable English."""

    def __init__(self, names: Sequence[str], rng: np.random.Generator) -> None:
        self.names = list(names)
        self.rng = rng

    def _pick(self, options: Sequence[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def spell(self, text: str) -> str:
        """Multi-word names joined by space (mostly), hyphen or underscore; sometimes title/upper case."""
        words = text.split()
        if len(words) > 1:
            text = str(self.rng.choice([" ", " ", " ", "-", "_"])).join(words)
        u = self.rng.random()
        return text.upper() if u < 0.05 else text.title() if u < 0.12 else text

    def phrase(self, concept: int, count: int) -> str:
        """'a fuzzy goose', 'two geese', 'several small fire-trucks' (plural iff several are drawn)."""
        name = self.names[concept]
        adjective = f"{self._pick(ADJECTIVES)} " if self.rng.random() < 0.35 else ""
        if count > 1:
            return f"{self._pick(NUMBERS)} {adjective}{self.spell(plural(name))}"
        noun = f"{adjective}{self.spell(name)}"
        return f"{_article(noun)} {noun}" if self.rng.random() < 0.85 else noun

    def caption(self, concepts: Sequence[int], counts: Sequence[int]) -> str:
        if not concepts:
            return self._pick(("an abstract pattern", "a photo", "Untitled image", "nothing to see here"))
        parts = [self.phrase(c, n) for c, n in zip(concepts, counts)]
        if len(parts) == 1:
            listed = parts[0]
        else:
            joiner = self._pick((" and ", " with ", " next to "))
            listed = ", ".join(parts[:-1]) + joiner + parts[-1] if joiner == " and " else joiner.join(parts)
        several = len(parts) > 1 or counts[0] > 1
        text = self._pick(MANY if several else ONE).format(x=listed, X=listed[:1].upper() + listed[1:])
        return text


# --------------------------------------------------------------------------------------- writing


def _encode(image: Image.Image, fmt: str, quality: int = 90, subsampling: str = "4:4:4") -> bytes:
    """``image`` as PNG or JPEG bytes (JPEG at ``quality`` with chroma ``subsampling``, Pillow's names)."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    else:
        image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _draw_concepts(
    rng: np.random.Generator, weights: np.ndarray, n_images: int, max_per_image: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Concepts per image: a uniform count 1..max, then weighted sampling without replacement.

    Gumbel top-k (argsort of log-weight + Gumbel noise) draws a weighted sample without replacement for
    all images at once; the order of the top-k is random, which also gives the captions' word order.
    """
    n_per = rng.integers(1, max_per_image + 1, size=n_images)
    keys = np.log(weights)[None, :] + rng.gumbel(size=(n_images, len(weights)))
    top = np.argsort(-keys, axis=1)[:, :max_per_image]
    return [top[i, : n_per[i]] for i in range(n_images)], n_per


MAX_OBJECTS = 4  # per scene: more would be drawn so small at 32 px that their stripes and outline blur away


def _instances(rng: np.random.Generator, n: int) -> list[int]:
    """How many copies of a concept a scene draws: mostly one, sometimes 2-3 (then the caption is plural).

    A scene holds at most ``max(MAX_OBJECTS, n)`` objects: extra copies are taken back from the concept with the
    most until it fits (the draws stay the same, so a scene's concepts do not depend on the cap).
    """
    counts = [1 if rng.random() < 0.7 else int(rng.integers(2, 4)) for _ in range(n)]
    while sum(counts) > max(MAX_OBJECTS, n):
        counts[int(np.argmax(counts))] -= 1
    return counts


def _absent_concepts(rng: np.random.Generator, weights: np.ndarray, shown: Sequence[int]) -> list[int]:
    """As many concepts as ``shown`` holds (at most the absent ones), none shown, drawn by ``weights``."""
    absent = np.setdiff1d(np.arange(len(weights)), np.asarray(shown, dtype=np.int64))
    n = min(len(shown), len(absent))
    p = weights[absent] / weights[absent].sum()
    return [int(c) for c in rng.choice(absent, size=n, replace=False, p=p)]


def _pairs_table(sample_ids: list[int], concept_ids: list[int]) -> pa.Table:
    sid = np.asarray(sample_ids, dtype=np.int64)
    cid = np.asarray(concept_ids, dtype=np.int32)
    order = np.lexsort((cid, sid))
    return pa.table({"sample_id": pa.array(sid[order], pa.int64()), "concept_id": pa.array(cid[order], pa.int32())})


def _clear(folder: Path, pattern: str) -> None:
    """Remove files of an earlier call (a smaller world would otherwise leave stale files behind)."""
    if folder.is_dir():
        for old in folder.glob(pattern):
            if old.is_file():
                old.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def folder_name(name: str) -> str:
    """Class folder name: the concept name with underscores for spaces."""
    return name.replace(" ", "_")


def generate_world(
    spec: WorldSpec | Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    downstream_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Write a synthetic world under ``out_dir`` (layout in the module docstring) and describe it.

    ``downstream_dir`` (default ``out_dir/downstream``) receives the ``classification`` and ``retrieval``
    test sets, so a pipeline can keep evaluation data apart from the pretraining corpus.

    Returns ``{"spec", "out_dir", "concepts", "pretrain": {"source", "n_samples", "n_shards"},
    "truth": {concepts, image_concepts, caption_concepts, samples}, "downstream": {"classification",
    "retrieval"}, "tagger", "audit" (when audit_images > 0), "counts"}`` (also saved as ``world.json``).
    ``pretrain.source`` and ``downstream.retrieval.source`` are ``CaptionSource.from_config`` mappings (``{"format": "wds",
    "paths": ..., "text_ext": "txt"}``), usable as corpus entries. Paths are absolute.
    """
    if not isinstance(spec, WorldSpec):
        spec = WorldSpec.from_params(spec)
    out = Path(out_dir).resolve()
    names = spec.concept_names
    k = spec.n_concepts
    weights = spec.weights()
    renderer = Renderer(make_signatures(k, spec.seed), spec.image_size)

    # ---- pretraining corpus
    rng = rng_stream(spec.seed, "pretrain")
    shown, n_per = _draw_concepts(rng, weights, spec.n_samples, spec.max_concepts_per_image)
    target = weights * float(n_per.mean() if spec.n_samples else 0) * spec.n_samples
    writer = CaptionWriter(names, rng_stream(spec.seed, "captions"))
    n_shards = math.ceil(spec.n_samples / spec.shard_size)
    pre_dir = out / "pretrain"
    _clear(pre_dir, "*.tar")
    img_pairs: tuple[list[int], list[int]] = ([], [])
    cap_pairs: tuple[list[int], list[int]] = ([], [])
    full_rng = rng_stream(spec.seed, "full_misalignment")
    sample_rows: dict[str, list] = {"sample_id": [], "key": [], "misaligned": [], "omitted": [], "fully_misaligned": []}
    bar = tqdm(total=spec.n_samples, desc="synthetic pretrain", unit="img", disable=not progress)
    index = 0
    for shard in range(n_shards):
        size = min(spec.shard_size, spec.n_samples - index)
        with tarfile.open(pre_dir / f"{shard:05d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for pos in range(size):
                concepts = [int(c) for c in shown[index]]
                counts = _instances(rng, len(concepts))
                image = renderer.draw(concepts, counts, rng)
                mentioned, m_counts = list(concepts), list(counts)
                omitted = bool(rng.random() < spec.omission_rate)
                if omitted:
                    drop = int(rng.integers(len(mentioned)))
                    del mentioned[drop], m_counts[drop]
                misaligned = bool(rng.random() < spec.misalignment_rate) and k > len(concepts)
                if misaligned:
                    absent = np.setdiff1d(np.arange(k), concepts)
                    at = int(rng.integers(len(mentioned) + 1))
                    mentioned.insert(at, int(rng.choice(absent)))
                    m_counts.insert(at, 1)
                fully = bool(full_rng.random() < spec.full_misalignment_rate) and k > len(concepts)
                if fully:  # the caption names only absent concepts; the draws above are kept for the stream
                    mentioned = _absent_concepts(full_rng, weights, concepts)
                    m_counts = list(counts[: len(mentioned)])
                    misaligned = omitted = False
                caption = writer.caption(mentioned, m_counts)
                key = f"{shard:05d}{pos:04d}"
                sample_id = (shard << 32) | pos
                tar_member(tar, f"{key}.jpg", _encode(image, "JPEG", spec.jpeg_quality, spec.jpeg_subsampling))
                tar_member(tar, f"{key}.txt", caption.encode("utf-8"))
                meta = {"caption": caption, "key": key}
                tar_member(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
                for c in concepts:
                    img_pairs[0].append(sample_id), img_pairs[1].append(c)
                for c in mentioned:
                    cap_pairs[0].append(sample_id), cap_pairs[1].append(c)
                for col, value in zip(sample_rows, (sample_id, key, misaligned, omitted, fully)):
                    sample_rows[col].append(value)
                index += 1
                bar.update()
    bar.close()

    truth_dir = out / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    image_table = _pairs_table(*img_pairs)
    caption_table = _pairs_table(*cap_pairs)
    shown_count = np.bincount(np.asarray(img_pairs[1], dtype=np.int64), minlength=k)
    mentioned_count = np.bincount(np.asarray(cap_pairs[1], dtype=np.int64), minlength=k)
    concepts_table = pa.table(
        {
            "concept_id": pa.array(np.arange(k, dtype=np.int32)),
            "name": pa.array(names, pa.string()),
            "target_frequency": pa.array(target, pa.float64()),
            "shown_count": pa.array(shown_count.astype(np.int64)),
            "mentioned_count": pa.array(mentioned_count.astype(np.int64)),
        }
    )
    samples_table = pa.table(
        {
            "sample_id": pa.array(sample_rows["sample_id"], pa.int64()),
            "key": pa.array(sample_rows["key"], pa.string()),
            "misaligned": pa.array(sample_rows["misaligned"], pa.bool_()),
            "omitted": pa.array(sample_rows["omitted"], pa.bool_()),
            "fully_misaligned": pa.array(sample_rows["fully_misaligned"], pa.bool_()),
        }
    )
    truth = {
        "concepts": truth_dir / "concepts.parquet",
        "image_concepts": truth_dir / "image_concepts.parquet",
        "caption_concepts": truth_dir / "caption_concepts.parquet",
        "samples": truth_dir / "samples.parquet",
    }
    for name, table in (
        ("concepts", concepts_table),
        ("image_concepts", image_table),
        ("caption_concepts", caption_table),
        ("samples", samples_table),
    ):
        pq.write_table(table, truth[name])

    from helpers.synthetic.downstream import (  # here: downstream imports this module's helpers
        write_classification,
        write_corpus_audit,
        write_retrieval,
        write_tagger,
    )

    downstream = Path(downstream_dir).resolve() if downstream_dir is not None else out / "downstream"
    classification = write_classification(spec, renderer, downstream / "classification", progress)
    retrieval = write_retrieval(spec, renderer, downstream / "retrieval", progress)
    tagger = write_tagger(spec, renderer, out / "tagger", progress)
    leak = None
    if spec.leak_rate > 0:  # near-duplicates of test images planted into the corpus (helpers.controls.leak)
        from helpers.controls.leak import plant_near_duplicates

        leak = plant_near_duplicates(
            out, concept_names=names, n_samples=spec.n_samples, leak_rate=spec.leak_rate,
            leaked_classes=spec.leaked_classes, image_size=spec.image_size, seed=spec.seed,
            classification_root=classification["root"],
        )  # fmt: skip

    # after the leaks: the audit's images and labels are the corpus's final ones
    audit = write_corpus_audit(spec, out, out / "audit", progress) if spec.audit_images > 0 else None
    if audit is None and (out / "audit").is_dir():  # an earlier call's audit would no longer match the corpus
        shutil.rmtree(out / "audit")

    last = f"{max(n_shards - 1, 0):05d}"
    spec_dict = asdict(spec)
    if spec.audit_images == 0:  # off: world.json stays as it was before the audit option existed
        spec_dict.pop("audit_images")
    if spec.leak_rate == 0:  # off: world.json stays as it was before the leak option existed
        spec_dict.pop("leak_rate"), spec_dict.pop("leaked_classes")
    result = {
        "spec": spec_dict,
        "out_dir": str(out),
        "concepts": names,
        "pretrain": {
            "source": {"format": "wds", "paths": (pre_dir / f"{{00000..{last}}}.tar").as_posix(), "text_ext": "txt"},
            "n_samples": spec.n_samples,
            "n_shards": n_shards,
        },
        "truth": {key: str(path) for key, path in truth.items()},
        "downstream": {"classification": classification, "retrieval": retrieval},
        "tagger": tagger,
        **({"audit": audit} if audit is not None else {}),
        "counts": {
            "samples": spec.n_samples,
            "shown_pairs": image_table.num_rows,
            "mentioned_pairs": caption_table.num_rows,
            "misaligned": int(sum(sample_rows["misaligned"])),
            "omitted": int(sum(sample_rows["omitted"])),
            "fully_misaligned": int(sum(sample_rows["fully_misaligned"])),
        },
    }
    if leak is not None:
        result["leak"] = leak
    (out / "world.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


# ------------------------------------------------------------------------------------------- stage


def spec_from_params(section: Mapping[str, Any] | Synthetic) -> WorldSpec:
    """The WorldSpec of params ``synthetic``: ``world`` overridden by ``sizes[size]`` (``default`` or ``ci``).

    A size holds what scales the run (concepts, samples, test-set sizes); ``world`` holds what does not
    (frequency law, misalignment rates, image size, seed), so switching sizes keeps the world's nature.
    The section is checked by :class:`helpers.params.study.Synthetic` (errors name ``synthetic.<key>``).
    """
    spec = validate(Synthetic, section, "synthetic")
    if spec.size not in spec.sizes:
        raise ConfigError(f"synthetic.size: {spec.size!r} is not one of the sizes ({', '.join(spec.sizes) or 'none'})")
    return WorldSpec.from_params({**spec.world.given(), **spec.sizes[spec.size].given()})


def example_samples(world_dir: str | os.PathLike, n: int = 8) -> list[tuple[Image.Image, str]]:
    """The first ``n`` pretraining samples of a world (image, caption), for showing what the corpus holds."""
    first = sorted((Path(world_dir) / "pretrain").glob("*.tar"))
    out: list[tuple[Image.Image, str]] = []
    if not first:
        return out
    with tarfile.open(first[0]) as tar:
        members: dict[str, dict[str, bytes]] = {}
        for member in tar:
            key, _, ext = member.name.partition(".")
            if ext in ("jpg", "txt"):
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
            done = [k for k, v in members.items() if len(v) == 2]
            if len(done) >= n:
                break
    for key in sorted(members)[:n]:
        files = members[key]
        if len(files) == 2:
            image = Image.open(io.BytesIO(files["jpg"])).convert("RGB")
            out.append((image, files["txt"].decode("utf-8")))
    return out
