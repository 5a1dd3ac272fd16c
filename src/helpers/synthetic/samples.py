"""Deterministic small sample corpora: the offline default inputs of ``dvc repro`` and the notebooks' tests.

``write_sample_corpus`` writes one set of synthetic captions in every caption format the pipeline reads
(``tsv``, ``parquet``, ``wds`` webdataset tars as img2dataset writes them, ``txt``) and returns, per format,
the ``CaptionSource`` config that reads it -- exactly what a corpus entry of ``params.yaml`` looks like --
plus an ``expected`` record of what was written, so tests can check the readers' per-shard stats.

The captions are templated English ("a photo of two dogs on the beach", "Close-up of a red apple.") that
mention concepts drawn with a Zipf-like frequency (long-tailed counts), in the spellings a real corpus has:
regular and irregular plurals (mice, geese, children, wolves, knives), multi-word names written with spaces,
hyphens or underscores, and upper/title case. A few edge cases are written on purpose: an empty caption,
a caption of punctuation only, a caption longer than 10,000 characters (the readers truncate it) and, in
the TSV only, one malformed row (three fields under a two-column header) -- the last line of the first
shard, so every other record has the same sample id in every format.

``write_sample_downstream`` writes a small downstream dataset (20 class names and a 5-captions-per-image
retrieval set) and returns its ``concepts.downstream`` entry (see ``helpers.text.concepts``).

Everything depends only on the arguments (numpy's PCG64 generator seeded with ``seed``; tar members and
JPEGs carry no time stamps), so two calls with the same arguments write identical files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

MAX_PER_SHARD = 10_000  # keys are f"{shard:05d}{position:04d}"
LONG_CAPTION_MIN_CHARS = 10_000
ZIPF_EXPONENT = 1.1
FORMATS = ("tsv", "parquet", "wds", "txt")

DEFAULT_CONCEPTS: tuple[str, ...] = (
    "dog", "cat", "bird", "horse", "cow", "sheep", "elephant", "bear", "zebra", "giraffe",
    "mouse", "goose", "child", "wolf", "knife", "person", "woman", "man", "fish", "deer",
    "car", "bus", "truck", "bicycle", "motorcycle", "airplane", "train", "boat", "fire truck", "school bus",
    "apple", "banana", "orange", "pizza", "sandwich", "hot dog", "cake", "broccoli", "carrot", "ice cream",
    "chair", "couch", "bed", "clock", "vase", "book", "laptop", "cell phone", "teddy bear", "umbrella",
    "bench", "kite", "bottle", "cup", "bowl", "tennis racket", "traffic light", "stop sign", "golden retriever",
    "butterfly", "strawberry", "tooth",
)  # fmt: skip

IRREGULAR_PLURALS = {
    "mouse": "mice", "goose": "geese", "child": "children", "wolf": "wolves", "knife": "knives",
    "person": "people", "woman": "women", "man": "men", "tooth": "teeth", "foot": "feet", "sheep": "sheep",
    "fish": "fish", "deer": "deer", "ox": "oxen", "leaf": "leaves", "wife": "wives", "life": "lives",
    "shelf": "shelves", "loaf": "loaves", "cactus": "cacti", "louse": "lice",
}  # fmt: skip

# Scene words and modifiers: none of them is (a word of) a default concept.
PLACES = (
    "on the beach", "in a park", "on the street", "in the kitchen", "at night", "in the snow", "near a lake",
    "in a field", "on a sunny day", "in the living room", "at the zoo", "on a wooden floor",
    "under a blue sky", "in the garden", "", "",
)  # fmt: skip
ADJECTIVES = ("red", "small", "large", "old", "young", "wooden", "white", "black", "brown", "cute", "happy", "little")
NUMBERS = ("two", "three", "four", "five", "several", "many", "a few", "a group of", "2", "3")

# {a} = article + adjective? + singular, {s} singular, {p} plural, {n} number; "2" marks a second concept.
ONE_CONCEPT = (
    "a photo of {a} {place}",
    "Close-up of {a}.",
    "{A} {place}.",
    "{a} {place}, stock photo",
    "Picture of {a} - high resolution image",
    "vintage illustration of {a}",
    "{n} {p} {place}",
    "a photo of {n} {p} {place}",
    "{P} {place}, stock photo",
    "Group of {p} {place}.",
    "my {s} {place} #photography",
    "{S} for sale",
)
# rarer captions with non-ASCII characters (NFKC/case folding and emoji in the readers and matchers)
ONE_CONCEPT_RARE = ("café terrace with {a}", "cute {s} \U0001f60d")
RARE_SHARE = 0.03
TWO_CONCEPTS = (
    "{a} and {a2} {place}",
    "{n} {p} next to {a2}",
    "A photo of {a} with {n2} {p2}.",
    "{P} and {p2} {place}",
)
PUNCTUATION_ONLY = "!!! ... ??? --- *** ,,, ;;"
FILLER = " and then again"


def _plural(word: str) -> str:
    """English plural of one word: irregular table first, then the spelling rules."""
    lower = word.lower()
    if lower in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[lower]
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if lower.endswith("y") and len(lower) > 1 and lower[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


class _Writer:
    """Renders captions: concept spellings, templates, and the record of intended mentions."""

    def __init__(self, rng: np.random.Generator, names: Sequence[str]) -> None:
        self.rng = rng
        self.names = list(names)
        order = rng.permutation(len(self.names))  # which concept is frequent depends on the seed
        weights = np.zeros(len(self.names))
        weights[order] = 1.0 / np.arange(1, len(self.names) + 1) ** ZIPF_EXPONENT
        self.p = weights / weights.sum()

    def pick(self, k: int) -> list[int]:
        return [int(i) for i in self.rng.choice(len(self.names), size=k, replace=False, p=self.p)]

    def spell(self, name: str, plural: bool) -> str:
        """One spelling of ``name``: plural or not, words joined by space/hyphen/underscore, some case."""
        words = name.split()
        if plural:
            words[-1] = _plural(words[-1])
        sep = " " if len(words) == 1 else str(self.rng.choice([" ", " ", " ", "-", "_"]))
        text = sep.join(words)
        case = self.rng.random()
        if case < 0.08:
            return text.upper()
        if case < 0.16:
            return text.title()
        return text

    def choice(self, options: Sequence[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def caption(self) -> tuple[str, list[int]]:
        """A caption and the indices of the concepts it mentions, in order."""
        two = len(self.names) > 1 and self.rng.random() < 0.25
        concepts = self.pick(2 if two else 1)
        if two:
            template = self.choice(TWO_CONCEPTS)
        else:
            template = self.choice(ONE_CONCEPT_RARE if self.rng.random() < RARE_SHARE else ONE_CONCEPT)
        slots = {"place": self.choice(PLACES)}
        for suffix, index in zip(("", "2"), concepts):
            name = self.names[index]
            singular, plural = self.spell(name, False), self.spell(name, True)
            noun = f"{self.choice(ADJECTIVES)} {singular}" if self.rng.random() < 0.4 else singular
            slots |= {
                f"s{suffix}": singular,
                f"p{suffix}": plural,
                f"a{suffix}": f"{_article(noun)} {noun}",
                f"n{suffix}": self.choice(NUMBERS),
            }
        slots |= {"A": slots["a"][:1].upper() + slots["a"][1:], "S": slots["s"].upper(), "P": slots["p"].capitalize()}
        text = " ".join(template.format(**slots).split())  # an empty place leaves no double space
        text = text.replace(" ,", ",").replace(" .", ".")
        return text, concepts


def _shard_sizes(n: int, n_shards: int) -> list[int]:
    return [n // n_shards + (1 if i < n % n_shards else 0) for i in range(n_shards)]


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    """A tiny valid 8x8 JPEG of one colour (deterministic bytes for a given Pillow)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _colour(concept: int | None) -> tuple[int, int, int]:
    """Image colour keyed to the caption's first concept (grey for none): a toy signal for the image side."""
    if concept is None:
        return (128, 128, 128)
    return ((concept * 67 + 40) % 256, (concept * 151 + 90) % 256, (concept * 29 + 170) % 256)


def tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add ``data`` as ``name`` with fixed metadata, so generated tars are byte-identical across runs."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _config_path(folder: Path, pattern: str, relative_to: str | os.PathLike | None) -> str:
    folder = folder.resolve()
    if relative_to is not None:
        folder = Path(os.path.relpath(folder, Path(relative_to).resolve()))
    return (folder / pattern).as_posix()


def _clear(folder: Path, suffix: str) -> None:
    """Remove shards of an earlier call (a smaller n_shards would otherwise leave stale files behind)."""
    if folder.is_dir():
        for old in folder.glob(f"*{suffix}"):
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def write_sample_corpus(
    out_dir: str | os.PathLike,
    *,
    n_captions: int = 2000,
    n_shards: int = 2,
    seed: int = 0,
    concept_names: Sequence[str] | None = None,
    relative_to: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, dict]:
    """Write the same ``n_captions`` captions, split into ``n_shards`` shards, in every caption format.

    Layout under ``out_dir`` (``i`` = shard, ``j`` = position in the shard, sample key ``f"{i:05d}{j:04d}"``)::

        tsv/part-{i:05d}.tsv         header "caption<TAB>url"; + one malformed row at the end of shard 0
        parquet/part-{i:05d}.parquet columns caption, url (string)
        wds/{i:05d}.tar              per sample KEY.jpg (8x8), KEY.txt (caption), KEY.json {caption, key, url}
        txt/part-{i:05d}.txt         one caption per line

    Returns ``{"tsv": config, "parquet": config, "wds": config, "txt": config, "expected": {...}}``: each
    config is a ``CaptionSource.from_config`` mapping with a brace pattern of the shard paths (relative to
    ``relative_to`` when given, else absolute). ``expected`` holds the counts a reader must report:
    ``records`` (per format, not counting the malformed TSV row), ``records_per_shard``, ``empty``,
    ``punctuation_only``, ``long`` (captions over ``LONG_CAPTION_MIN_CHARS``), ``long_chars``,
    ``tsv_malformed`` (and ``tsv_malformed_shard``), ``non_empty``, the edge cases' ``positions`` (global
    record index) and ``mentions``: per concept name, the number of captions written to mention it (the
    generator's intent; a matcher may legitimately find more, e.g. "dog" inside "hot dog").
    """
    names = list(DEFAULT_CONCEPTS if concept_names is None else concept_names)
    if not names or any(not isinstance(n, str) or not n.split() for n in names):
        raise ValueError("concept_names: expected a non-empty list of non-blank names")
    if len(set(names)) != len(names):
        raise ValueError("concept_names: names must be distinct")
    if not isinstance(n_shards, int) or n_shards < 1:
        raise ValueError(f"n_shards: expected a positive integer, got {n_shards!r}")
    if not isinstance(n_captions, int) or n_captions < max(3, n_shards):
        raise ValueError(f"n_captions: expected at least max(3, n_shards) captions, got {n_captions!r}")
    sizes = _shard_sizes(n_captions, n_shards)
    if max(sizes) > MAX_PER_SHARD:
        raise ValueError(f"{max(sizes)} captions per shard exceed {MAX_PER_SHARD}: use more shards")

    rng = np.random.default_rng(seed)
    writer = _Writer(rng, names)
    captions: list[str] = []
    mentioned: list[list[int]] = []
    for _ in range(n_captions):
        text, concepts = writer.caption()
        captions.append(text)
        mentioned.append(concepts)
    empty_at, punct_at, long_at = (int(i) for i in rng.choice(n_captions, size=3, replace=False))
    captions[empty_at], mentioned[empty_at] = "", []
    captions[punct_at], mentioned[punct_at] = PUNCTUATION_ONLY, []
    head = captions[long_at]
    repeats = (LONG_CAPTION_MIN_CHARS - len(head)) // len(FILLER) + 10
    captions[long_at] = head + FILLER * repeats  # concepts only in the head, which survives truncation
    mentions = dict.fromkeys(names, 0)
    for concepts in mentioned:
        for c in concepts:
            mentions[names[c]] += 1

    out_dir = Path(out_dir)
    folders = {fmt: out_dir / fmt for fmt in FORMATS}
    for fmt, suffix in (("tsv", ".tsv"), ("parquet", ".parquet"), ("wds", ".tar"), ("txt", ".txt")):
        _clear(folders[fmt], suffix)
    start = 0
    for i, size in enumerate(tqdm(sizes, desc="sample shards", unit="shard", disable=not progress)):
        shard = captions[start : start + size]
        keys = [f"{i:05d}{j:04d}" for j in range(size)]
        urls = [f"https://example.com/sample/{key}.jpg" for key in keys]
        rows = "".join(f"{c}\t{u}\n" for c, u in zip(shard, urls))
        if i == 0:
            rows += f"a malformed row with three fields\t{urls[-1]}\textra field\n"
        (folders["tsv"] / f"part-{i:05d}.tsv").write_text("caption\turl\n" + rows, encoding="utf-8")
        table = pa.table({"caption": pa.array(shard, pa.string()), "url": pa.array(urls, pa.string())})
        pq.write_table(table, folders["parquet"] / f"part-{i:05d}.parquet")
        (folders["txt"] / f"part-{i:05d}.txt").write_text("".join(f"{c}\n" for c in shard), encoding="utf-8")
        with tarfile.open(folders["wds"] / f"{i:05d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for j, (key, caption, url) in enumerate(zip(keys, shard, urls)):
                first = mentioned[start + j][0] if mentioned[start + j] else None
                tar_member(tar, f"{key}.jpg", _jpeg(_colour(first)))
                tar_member(tar, f"{key}.txt", caption.encode("utf-8"))
                meta = {"caption": caption, "key": key, "url": url}
                tar_member(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
        start += size

    last = f"{n_shards - 1:05d}"
    result: dict[str, dict] = {
        "tsv": {
            "format": "tsv",
            "paths": _config_path(folders["tsv"], f"part-{{00000..{last}}}.tsv", relative_to),
            "header": True,
            "caption_column": "caption",
        },
        "parquet": {
            "format": "parquet",
            "paths": _config_path(folders["parquet"], f"part-{{00000..{last}}}.parquet", relative_to),
            "caption_column": "caption",
        },
        "wds": {
            "format": "wds",
            "paths": _config_path(folders["wds"], f"{{00000..{last}}}.tar", relative_to),
            "text_ext": "txt",
        },
        "txt": {"format": "txt", "paths": _config_path(folders["txt"], f"part-{{00000..{last}}}.txt", relative_to)},
    }
    result["expected"] = {
        "seed": seed,
        "records": n_captions,
        "records_per_shard": sizes,
        "non_empty": n_captions - 1,
        "empty": 1,
        "punctuation_only": 1,
        "long": 1,
        "long_chars": len(captions[long_at]),
        "tsv_malformed": 1,
        "tsv_malformed_shard": 0,
        "positions": {"empty": empty_at, "punctuation_only": punct_at, "long": long_at},
        "mentions": mentions,
    }
    return result


# ------------------------------------------------------------------------------------- downstream

SAMPLE_CLASSES = (
    "dog", "cat", "golden retriever", "Hot Dog", "fire_truck", "mouse", "red panda", "pangolin",
    "espresso machine", "axolotl", "snow leopard", "teddy bear", "quokka", "paper lantern", "tuk-tuk",
    "bonsai tree", "sea otter", "stop sign", "kettle", "narwhal",
)  # fmt: skip
RETRIEVAL_SUBJECTS = (
    "dog", "cat", "man", "woman", "child", "horse", "bicycle", "pizza", "kite", "surfboard", "train", "giraffe",
)  # fmt: skip
RETRIEVAL_TEMPLATES = (
    "A {s} {place}.",
    "a {adj} {s} standing {place}",
    "Two {p} and a {s2} {place}.",
    "There is a {s} next to a {s2}.",
    "A close up of a {s} with a {s2} {place}",
    "The {s} is {place} near a {s2}.",
)
RETRIEVAL_PLACES = (
    "on the beach", "in a park", "on the street", "in the kitchen", "near a lake", "in a field",
    "in the garden", "at the station",
)  # fmt: skip


def write_sample_downstream(
    out_dir: str | os.PathLike, *, seed: int = 0, relative_to: str | os.PathLike | None = None
) -> dict:
    """A small downstream dataset: ``classes.txt`` (20 names) and ``retrieval_captions.tsv``.

    ``classes.txt`` has a comment header, a blank line and an inline comment (exercising the reader), and
    names spelled as real datasets spell them (``Hot Dog``, ``fire_truck``, ``tuk-tuk``).
    ``retrieval_captions.tsv`` (columns ``image_id``, ``caption``) has 5 captions for each of 60 images,
    each about one subject plus scene words. Returns the ``concepts.downstream`` entry for it: the class
    file, the caption source (``key_column: image_id``), ``min_images: 3``, ``captions_per_image: 5`` and
    ``noun_extractor: lemmas`` (runs offline, without a trained spaCy pipeline). Paths are relative to
    ``relative_to`` when given, else absolute.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = ["# sample downstream classes (helpers.synthetic.samples.write_sample_downstream)", ""]
    lines += [f"{name}  # an amphibian" if name == "axolotl" else name for name in SAMPLE_CLASSES]
    (out_dir / "classes.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    rows = ["image_id\tcaption"]
    for image in range(60):
        subject = RETRIEVAL_SUBJECTS[int(rng.integers(len(RETRIEVAL_SUBJECTS)))]
        for _ in range(5):
            other = RETRIEVAL_SUBJECTS[int(rng.integers(len(RETRIEVAL_SUBJECTS)))]
            template = RETRIEVAL_TEMPLATES[int(rng.integers(len(RETRIEVAL_TEMPLATES)))]
            caption = template.format(
                s=subject,
                p=_plural(subject),
                s2=other,
                adj=ADJECTIVES[int(rng.integers(len(ADJECTIVES)))],
                place=RETRIEVAL_PLACES[int(rng.integers(len(RETRIEVAL_PLACES)))],
            )
            rows.append(f"img_{image:04d}\t{caption}")
    (out_dir / "retrieval_captions.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")

    def where(name: str) -> str:
        return _config_path(out_dir, name, relative_to)

    return {
        "class_names_file": where("classes.txt"),
        "captions": {
            "format": "tsv",
            "paths": where("retrieval_captions.tsv"),
            "header": True,
            "caption_column": "caption",
            "key_column": "image_id",
        },
        "min_images": 3,
        "captions_per_image": 5,
        "noun_extractor": "lemmas",
    }


def write_sample_tagger_set(
    out_dir: str | os.PathLike,
    *,
    n_per_concept: int = 6,
    seed: int = 0,
    concept_names: Sequence[str] | None = None,
    relative_to: str | os.PathLike | None = None,
) -> dict:
    """A labelled image set for the ``trained`` tagger backend, drawn like the sample corpus' images.

    Every concept gets ``n_per_concept`` 8x8 images of its colour (as ``write_sample_corpus`` colours the
    image of a caption whose first concept it is), with small per-image noise so the images differ, plus
    grey images labelled with no concept. Writes ``images/*.png`` and ``labels.csv`` (columns ``image``,
    ``concepts``; concepts joined by ``|``) and returns the ``train`` mapping of a ``trained`` tagger config.
    """
    from PIL import Image

    names = list(DEFAULT_CONCEPTS if concept_names is None else concept_names)
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for stale in images.glob("*.png"):
        stale.unlink()
    rng = np.random.default_rng(seed)
    rows = []
    for index, name in enumerate([None, *names]):
        colour = np.array(_colour(None if name is None else index - 1), dtype=float)
        for k in range(n_per_concept):
            pixels = np.clip(colour + rng.normal(0, 6, size=(8, 8, 3)), 0, 255).astype(np.uint8)
            file = images / f"{index:03d}_{k:02d}.png"
            Image.fromarray(pixels, "RGB").save(file)
            rows.append((file.relative_to(out).as_posix(), "" if name is None else name))
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "concepts"])
        writer.writerows(rows)
    # image paths in labels.csv are relative to its folder, where the trained backend looks by default
    return {"labels": _config_path(out, "labels.csv", relative_to)}
