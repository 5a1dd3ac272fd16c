"""Benchmark of the caption search (``helpers.text.search``, ``phrase`` mode) against a spaCy baseline.

Generates N realistic captions (seeded, templated English mentioning the study's concepts, with regular
and irregular plurals, hyphenated and underscored multi-word names, mixed case and punctuation) and
matches them against the concept names, on one core:

* ``phrase`` mode: the library's compiled matcher (a whole-word scan over batches of normalised captions);
* baseline: spaCy ``blank("en")`` + the lookup lemmatiser (``spacy-lookups-data``) via ``nlp.pipe``, then a
  per-concept set intersection (a concept is a candidate when all its lemmas are in the caption's lemma
  set; multi-word concepts must then occur as a contiguous lemma run). The baseline is fed the normalised
  captions (``normalise_caption``), the library's lemma table (noun lemmas first) and concept terms
  (plural concept words literal), so that both sides implement the same matching semantics and their
  hits can be compared caption by caption.

Reports captions/s per core for both, their ratio, peak memory, and whether the hits are identical on the
baseline's sample. Concepts come from the tidy concepts table (``--concepts concepts.parquet``, a ``name``
column) or from the authors' release folder (``--release DIR``: ``ram_model/ram/data/*.txt`` and
``zero_shot_evaluations/*_class_results.json``).

    python benchmarks/bench_textsearch.py --release PATH/TO/RELEASE [--n 1000000] [--baseline-n 50000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import resource
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from helpers.naming import concept_key, release_name
from helpers.text.matching import (
    MATCH_SEMANTICS_VERSION,
    TextMatcher,
    concept_match_terms,
    lemma_lookup,
    normalise_caption,
)
from helpers.text.normalise import LITERAL

# ------------------------------------------------------------------------------------------ concepts


def concepts_from_table(path: Path) -> list[str]:
    table = pd.read_parquet(path)
    if "name" not in table.columns:
        sys.exit(f"--concepts: {path} has no 'name' column")
    if "concept_id" in table.columns:
        table = table.sort_values("concept_id")
    return table["name"].astype(str).tolist()


def concepts_from_release(release: Path) -> list[str]:
    """The study's concepts: zero-shot class names (count-file spelling) plus the RAM concept lists."""
    names: set[str] = set()
    class_files = sorted((release / "zero_shot_evaluations").glob("*_class_results.json"))
    tag_files = sorted((release / "ram_model" / "ram" / "data").glob("*.txt"))
    if not class_files or not tag_files:
        sys.exit(f"--release: {release} lacks zero_shot_evaluations/*_class_results.json or ram_model/ram/data/*.txt")
    for path in class_files:
        dataset = path.name[: -len("_class_results.json")]
        for entry in json.loads(path.read_text()).values():
            names.update(release_name(dataset, c) for c in entry["classwise"])
    for path in tag_files:
        names.update(line.strip() for line in path.read_text().splitlines() if line.strip())
    return sorted(names)


# ------------------------------------------------------------------------------------------ captions

_OPENERS = [
    "",
    "",
    "",
    "a photo of ",
    "close-up of ",
    "Stock Photo - ",
    "image of ",
    "Vintage postcard: ",
    "illustration of ",
    "My ",
    "Our new ",
    "the ",
    "A picture of ",
    "HD wallpaper: ",
    "Free Stock Photo of ",
]
_ADJ = [
    "",
    "",
    "",
    "old ",
    "beautiful ",
    "small ",
    "large ",
    "red ",
    "vintage ",
    "cute ",
    "wooden ",
    "young ",
    "happy ",
    "modern ",
    "wild ",
    "funny ",
    "white ",
    "little ",
]
_SETTINGS = [
    "",
    "",
    " on a wooden table",
    " in the garden",
    " at the beach",
    " on white background",
    " near the river",
    " in a city street at night",
    " with a blue sky",
    " in the snow",
    " at sunset",
    " in the kitchen",
    " for sale",
    " on display at the museum",
    " in the park, 2019",
    " - high quality",
    " | stock image",
    " on the grass",
    " in front of the house",
    " (watercolor)",
]
_TEMPLATES = [
    "{open}{adj}{c}{setting}",
    "{open}{adj}{c}{setting}",
    "{open}two {cs}{setting}",
    "{open}{adj}{c} and {a} {c2}{setting}",
    "{open}{cs} playing with {a} {c2}{setting}",
    "{C}{setting}. Photo by John Smith",
    "how to draw {a} {c} step by step",
    "{open}{adj}{c} next to the {c2}, {year}",
    "three {cs} and some {c2s}{setting}",
    "Men's {c} T-shirt, size XL - blue",
    "{open}{c}{setting} #travel #{tag}",
    "{open}a {adj}{c}",
    "a person walks past {a} {c2} during the festival in the city centre",
    "actor attends the premiere of the film with {a} {c}",
    "{C} - {adj}{c2} Royalty Free Stock Images & Photos, 1024x768",
    "the view from our hotel room: {cs} as far as the eye can see!",
    "Beautiful {adj}{c} close up, shallow depth of field, selective focus{setting}",
    "{year} vintage {c} for sale on ebay, great condition (see photos)",
    "a group of {c2s} standing around {a} {c} in a large room",
    "DIY {c}: easy tutorial with free printable pattern",
]


def _surface_index() -> dict[str, list[str]]:
    forms: dict[str, list[str]] = {}
    for surface, lemma in lemma_lookup().items():
        if surface.isalpha() and surface.islower():
            forms.setdefault(lemma, []).append(surface)
    return forms


def _plural(word: str, forms: dict[str, list[str]]) -> str:
    """A plural of the last word: the lookup table's irregular form when it has one (mice), else +s/es."""
    irregular = [f for f in forms.get(word, []) if not f.endswith(("ing", "ed")) and f != word + "s"]
    if irregular and random.random() < 0.8:
        return sorted(irregular)[0]
    if word.endswith("s"):  # already plural-looking (glasses, shorts): leave it
        return word
    if word.endswith(("x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _spelling(name: str, rng: random.Random) -> str:
    """How a caption writes a concept: mostly plain words, sometimes hyphenated, Title Case or underscored."""
    words = concept_key(name).split()
    roll = rng.random()
    if roll < 0.6:
        return " ".join(words)
    if roll < 0.75 and len(words) > 1:
        return "-".join(words[:2]) + (" " + " ".join(words[2:]) if len(words) > 2 else "")
    if roll < 0.9:
        return " ".join(w.capitalize() for w in words)
    return name


def generate_captions(concepts: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` seeded, templated captions; concepts drawn from a Zipf-like (long-tailed) distribution."""
    rng = random.Random(seed)
    random.seed(seed)
    forms = _surface_index()
    order = np.random.default_rng(seed).permutation(len(concepts))
    weights = 1.0 / np.arange(1, len(concepts) + 1) ** 0.9
    picks = np.random.default_rng(seed + 1).choice(order, size=2 * n, p=weights / weights.sum()).tolist()
    tags = ["nature", "love", "art", "summer", "photography", "instagood", "dog", "food"]
    # web alt-text is not all ASCII: curly quotes, dashes, accents, emoji, the odd non-Latin word
    flourishes = [
        " \u2014 caf\u00e9 terrace",
        " \U0001f60d",
        "\u2019s favourite",
        " \u201cna\u00efve\u201d art",
        " \u2116 1",
        " \u00e0 Paris",
        " \u6771\u4eac",
        " \u2022 ON SALE \u2022",
        " &amp; more",  # HTML entities, as LAION alt-texts carry them
        " Caf&eacute; &quot;Le Chat&quot;",
    ]
    out = []
    for i in tqdm(range(n), desc="captions", unit_scale=True, mininterval=1.0):
        c1, c2 = concepts[picks[2 * i]], concepts[picks[2 * i + 1]]
        s1, s2 = _spelling(c1, rng), _spelling(c2, rng)
        w1, w2 = s1.rsplit(" ", 1), s2.rsplit(" ", 1)
        p1 = (w1[0] + " " if len(w1) > 1 else "") + _plural(w1[-1].lower(), forms)
        p2 = (w2[0] + " " if len(w2) > 1 else "") + _plural(w2[-1].lower(), forms)
        out.append(
            rng.choice(_TEMPLATES).format(
                open=rng.choice(_OPENERS),
                adj=rng.choice(_ADJ),
                setting=rng.choice(_SETTINGS),
                c=s1,
                C=s1.upper() if rng.random() < 0.3 else s1,
                cs=p1,
                c2=s2,
                c2s=p2,
                a="an" if s2[:1].lower() in "aeiou" else "a",
                year=rng.randint(1950, 2023),
                tag=rng.choice(tags),
            )
            + (rng.choice(flourishes) if rng.random() < 0.1 else "")
        )
    return out


# ------------------------------------------------------------------------------------------ baseline


class SpacyBaseline:
    """spaCy blank English + lookup lemmatiser, then per-concept set intersection (+ contiguity).

    ``tokenizer="default"`` keeps spaCy's English tokenizer rules, which re-split a few already
    normalised words (e.g. "h3t" -> "h3", "t"; "cannot" -> "can", "not"); ``"whitespace"`` uses spaCy's
    rule-free tokenizer, i.e. exactly the words of the normalised caption, for an exact comparison.
    """

    def __init__(self, concepts: list[str], tokenizer: str = "default") -> None:
        import spacy
        from spacy.tokenizer import Tokenizer

        self.nlp = spacy.blank("en")
        if tokenizer == "whitespace":
            self.nlp.tokenizer = Tokenizer(self.nlp.vocab)
        lemmatizer = self.nlp.add_pipe("lemmatizer", config={"mode": "lookup"})
        self.nlp.initialize()  # loads the lookup table from spacy-lookups-data
        # the same lemma table as the library (noun lemmas first, keys normalised), so hits compare
        lemmatizer.lookups.remove_table("lemma_lookup")
        lemmatizer.lookups.add_table("lemma_lookup", dict(lemma_lookup()))
        # concept terms: lemmas, and LITERAL-prefixed plural nouns that match only themselves
        self.sequences = [concept_match_terms(name) for name in concepts]
        self.sets = [frozenset(s) for s in self.sequences]
        self.by_word: dict[str, list[int]] = {}
        for i, words in enumerate(self.sets):
            for w in words:
                self.by_word.setdefault(w, []).append(i)
        self.vocab = frozenset(self.by_word)

    @staticmethod
    def _contiguous(seq: tuple[str, ...], lemmas: list[str], literal: list[str]) -> bool:
        k = len(seq)
        return any(
            all(t in (lemmas[j + i], literal[j + i]) for i, t in enumerate(seq)) for j in range(len(lemmas) - k + 1)
        )

    def match(self, captions: list[str]) -> list[set[int]]:
        texts = (normalise_caption(c) for c in captions)
        out = []
        for doc in self.nlp.pipe(texts, batch_size=1000):
            lemmas = [t.lemma_ for t in doc]
            literal = [LITERAL + t.text for t in doc]
            lemma_set = set(lemmas) | set(literal)
            found = set()
            for w in lemma_set & self.vocab:
                for c in self.by_word[w]:
                    if c not in found and self.sets[c] <= lemma_set:
                        if len(self.sequences[c]) == 1 or self._contiguous(self.sequences[c], lemmas, literal):
                            found.add(c)
            out.append(found)
        return out


# -------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--concepts", type=Path, help="tidy concepts table (Parquet with a 'name' column)")
    source.add_argument("--release", type=Path, help="the authors' release folder")
    parser.add_argument("--n", type=int, default=1_000_000, help="captions to generate (default 1,000,000)")
    parser.add_argument("--baseline-n", type=int, default=50_000, help="captions for the baseline (default 50,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the phrase pass (best is kept)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    concepts = concepts_from_table(args.concepts) if args.concepts else concepts_from_release(args.release)
    print(f"{len(concepts)} concepts; generating {args.n:,} captions (seed {args.seed})")
    captions = generate_captions(concepts, args.n, args.seed)
    print(f"mean caption length {np.mean([len(c) for c in captions]):.1f} characters; e.g.")
    for c in captions[:6]:
        print("   ", c)

    t0 = time.perf_counter()
    matcher = TextMatcher(concepts, "phrase")
    compile_s = time.perf_counter() - t0
    print(f"phrase matcher: {matcher.n_patterns:,} surface patterns, compiled in {compile_s:.2f} s")

    timings = []
    for _ in range(args.repeats):
        gc.collect()
        t0 = time.perf_counter()
        hits = matcher.find(captions)
        timings.append(time.perf_counter() - t0)
    phrase_s = min(timings)
    phrase_rate = args.n / phrase_s
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    # working memory of a streaming search (what a shard worker holds): batch by batch, hits discarded
    tracemalloc.start()
    for start in range(0, min(args.n, 200_000), matcher.batch_size):
        matcher.find(captions[start : start + matcher.batch_size])
    stream_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    # and of one in-memory find over everything (input excluded, output arrays included)
    tracemalloc.start()
    matcher.find(captions)
    find_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    nb = min(args.baseline_n, args.n)
    ours: list[set[int]] = [set() for _ in range(nb)]
    in_sample = hits.caption_index < nb
    for row, concept in zip(hits.caption_index[in_sample].tolist(), hits.concept_index[in_sample].tolist()):
        ours[row].add(concept)
    baselines = {}
    for tokenizer in ("default", "whitespace"):
        print(f"baseline: spaCy blank('en') ({tokenizer} tokenizer) + lookup lemmatizer on {nb:,} captions")
        baseline = SpacyBaseline(concepts, tokenizer)
        t0 = time.perf_counter()
        found = baseline.match(captions[:nb])
        seconds = time.perf_counter() - t0
        baselines[tokenizer] = {
            "seconds": seconds,
            "rate": nb / seconds,
            "differing": [i for i in range(nb) if ours[i] != found[i]],
            "found": found,
        }
    base_s, base_rate = baselines["default"]["seconds"], baselines["default"]["rate"]
    differing = baselines["whitespace"]["differing"]
    identical = not differing

    figures = {
        "match_semantics_version": MATCH_SEMANTICS_VERSION,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "concepts": len(concepts),
        "captions": args.n,
        "mean_caption_chars": float(np.mean([len(c) for c in captions])),
        "hits_per_caption": len(hits.caption_index) / args.n,
        "captions_with_hits": float(np.unique(hits.caption_index).size / args.n),
        "phrase_compile_s": compile_s,
        "phrase_seconds": phrase_s,
        "phrase_captions_per_s_per_core": phrase_rate,
        "baseline_captions": nb,
        "baseline_seconds": base_s,
        "baseline_captions_per_s_per_core": base_rate,
        "speedup": phrase_rate / base_rate,
        "baseline_whitespace_tokenizer_captions_per_s_per_core": baselines["whitespace"]["rate"],
        "speedup_vs_whitespace_tokenizer_baseline": phrase_rate / baselines["whitespace"]["rate"],
        "differing_captions_vs_default_tokenizer_baseline": len(baselines["default"]["differing"]),
        "peak_rss_mib": rss_mib,
        "streaming_peak_tracemalloc_mib": stream_peak,
        "find_all_peak_tracemalloc_mib": find_peak,
        "hits_identical_on_baseline_sample": identical,
        "differing_captions": len(differing),
    }
    ws = baselines["whitespace"]
    print()
    print(f"{'':30s}{'phrase (this library)':>24s}{'spaCy baseline':>18s}{'spaCy baseline':>18s}")
    print(f"{'':30s}{'':>24s}{'(default tok.)':>18s}{'(whitespace tok.)':>18s}")
    print(f"{'captions':30s}{args.n:>24,}{nb:>18,}{nb:>18,}")
    print(f"{'seconds (1 core)':30s}{phrase_s:>24.2f}{base_s:>18.2f}{ws['seconds']:>18.2f}")
    print(f"{'captions/s per core':30s}{phrase_rate:>24,.0f}{base_rate:>18,.0f}{ws['rate']:>18,.0f}")
    print(
        f"speed-up: {phrase_rate / base_rate:.1f}x (vs whitespace-tokenised: {phrase_rate / ws['rate']:.1f}x); "
        f"hits per caption: {figures['hits_per_caption']:.2f}"
    )
    print(f"peak RSS of the process (captions in memory included): {rss_mib:,.0f} MiB")
    print(f"peak traced memory: streaming batches {stream_peak:.1f} MiB; one find() over all: {find_peak:.1f} MiB")
    print(
        f"hits identical to the whitespace-tokenised baseline on {nb:,} captions: {'yes' if identical else 'NO'}"
        + ("" if identical else f" ({len(differing)} differ)")
    )
    n_default = len(baselines["default"]["differing"])
    print(
        f"captions whose hits differ from the default-tokenizer baseline: {n_default:,} "
        "(its English rules re-split some normalised words)"
    )
    for label, rows in (("whitespace", differing), ("default", baselines["default"]["differing"])):
        for i in rows[:3]:
            print(
                f"    [{label}] {captions[i]!r}: phrase {sorted(concepts[c] for c in ours[i])} "
                f"vs baseline {sorted(concepts[c] for c in baselines[label]['found'][i])}"
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
