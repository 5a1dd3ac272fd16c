"""Turn the release's JSON files into tidy, schema-checked tables.

Every parser takes the imported release folder and returns a long-format DataFrame; ``build_all``
writes them all as Parquet. File names are parsed strictly: a file that does not follow the release's
naming is reported by name instead of being skipped silently.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from helpers import schemas
from helpers.naming import NORMALISATION_VERSION, concept_key, release_name
from helpers.text.encodings import read_text_file, split_lines

COUNTS_SUFFIX = "_search_counts.json"
_METHOD = re.compile(
    r"_(?P<method>lowercased|lemmatized|rampp(?P<t_img>\d\.\d+)|integrated_tlemmatized_i(?P<t_int>\d\.\d+))$"
)
_ZERO_SHOT_FILE = re.compile(r"^(?P<dataset>[^_]+)_(?P<prompt>class|simple|ensemble)_results\.json$")
_RETRIEVAL_FILE = re.compile(r"^(?P<dataset>[^_]+)_(?P<direction>i2t|t2i)_k=(?P<k>\d+)_results\.json$")
_T2I_FILE = re.compile(r"^t2i_(?P<metric>.+)\.json$")

# Concept lists that complete the 4,029 concepts, with the task each belongs to.
CONCEPT_LISTS = {
    "ram_model/ram/data/ram_tag_list_for_retrieval_tasks_non_overlapping_with_zs_concepts.txt": "retrieval",
    "ram_model/ram/data/ram_tag_list_for_t2i_tasks_non_overlapping_with_zs_concepts.txt": "t2i",
    "ram_model/ram/data/ram_tag_list_for_updated_t2i_tasks_non_overlapping_with_previous_concepts.txt": "t2i",
}


class ReleaseFormatError(ValueError):
    """A release file does not have the expected name or structure."""


def _load_json(path: Path):
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReleaseFormatError(f"Corrupt JSON in {path}: {err}") from err


def _checked_counts(path: Path, counts: object) -> dict[str, int]:
    """A {concept: count} mapping whose counts are non-negative integers (not floats, strings or booleans)."""
    if not isinstance(counts, dict):
        raise ReleaseFormatError(f"{path.name}: expected a {{concept: count}} object")
    bad = {k: v for k, v in counts.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
    if bad:
        example = next(iter(bad.items()))
        raise ReleaseFormatError(f"{path.name}: {len(bad)} counts are not non-negative integers, e.g. {example!r}")
    return counts


def parse_counts_filename(name: str) -> tuple[str, str, str, str, float | None]:
    """``{downstream}_{pretrain}_{method}_search_counts.json`` -> (downstream, pretrain, method, kind, threshold)."""
    if not name.endswith(COUNTS_SUFFIX):
        raise ReleaseFormatError(f"{name}: not a search-count file (expected suffix {COUNTS_SUFFIX})")
    stem = name[: -len(COUNTS_SUFFIX)]
    match = _METHOD.search(stem)
    downstream, _, pretrain = stem[: match.start()].partition("_") if match else ("", "", "")
    if not match or not downstream or not pretrain:
        raise ReleaseFormatError(f"{name}: cannot parse as {{downstream}}_{{pretrain}}_{{method}}{COUNTS_SUFFIX}")
    method = match["method"]
    if match["t_img"]:
        return downstream, pretrain, method, "image", float(match["t_img"])
    if match["t_int"]:
        return downstream, pretrain, method, "matched", float(match["t_int"])
    return downstream, pretrain, method, "text", None


def frequencies(release: Path, progress: bool = True) -> pd.DataFrame:
    """All concept counts: downstream, pretrain, method, kind, threshold, concept, count."""
    frames = []
    files = sorted((release / "search_counts").glob(f"*{COUNTS_SUFFIX}"))
    if not files:
        raise ReleaseFormatError(f"No search-count files in {release / 'search_counts'}")
    for path in tqdm(files, desc="search counts", disable=not progress):
        downstream, pretrain, method, kind, threshold = parse_counts_filename(path.name)
        counts = _checked_counts(path, _load_json(path))
        frames.append(
            pd.DataFrame(
                {
                    "downstream": downstream,
                    "pretrain": pretrain,
                    "method": method,
                    "kind": kind,
                    "threshold": threshold,
                    "concept": list(counts.keys()),
                    "count": pd.array(list(counts.values()), dtype="int64"),
                }
            )
        )
    df = pd.concat(frames, ignore_index=True)
    df["threshold"] = df["threshold"].astype(float)
    return df


def _model_entries(path: Path, inner: str) -> dict:
    data = _load_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, dict) and inner in v for v in data.values()):
        raise ReleaseFormatError(f"{path.name}: expected {{model: {{'full': x, '{inner}': {{...}}}}}}")
    return data


def zero_shot(release: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-class zero-shot accuracy (percent) and the overall accuracies."""
    rows, overall = [], []
    for path in sorted((release / "zero_shot_evaluations").glob("*_results.json")):
        match = _ZERO_SHOT_FILE.match(path.name)
        if not match:
            raise ReleaseFormatError(f"{path.name}: expected {{dataset}}_{{class|simple|ensemble}}_results.json")
        dataset, prompt = match["dataset"], match["prompt"]
        for model, entry in _model_entries(path, "classwise").items():
            overall.append(("zero_shot", dataset, prompt, model, float(entry["full"])))
            for class_name, acc in entry["classwise"].items():
                rows.append((dataset, prompt, model, class_name, release_name(dataset, class_name), float(acc)))
    df = pd.DataFrame(rows, columns=["dataset", "prompt", "model", "class_name", "concept", "accuracy"])
    return df, pd.DataFrame(overall, columns=["task", "dataset", "variant", "model", "value"])


def retrieval(release: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-concept retrieval recall@k (fraction) and the overall recalls."""
    rows, overall = [], []
    for path in sorted((release / "retrieval_evaluations").glob("*_results.json")):
        match = _RETRIEVAL_FILE.match(path.name)
        if not match:
            raise ReleaseFormatError(f"{path.name}: expected {{dataset}}_{{i2t|t2i}}_k={{k}}_results.json")
        dataset, direction, k = match["dataset"], match["direction"], int(match["k"])
        for model, entry in _model_entries(path, "conceptwise").items():
            overall.append(("retrieval", dataset, f"{direction}_k={k}", model, float(entry["full"])))
            for concept, recall in entry["conceptwise"].items():
                rows.append((dataset, direction, k, model, concept, float(recall)))
    df = pd.DataFrame(rows, columns=["dataset", "direction", "k", "model", "concept", "recall"])
    df["k"] = df["k"].astype("int64")
    return df, pd.DataFrame(overall, columns=["task", "dataset", "variant", "model", "value"])


def t2i(release: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-prompt text-to-image scores per concept, for every released metric."""
    rows, overall = [], []
    for path in sorted((release / "t2i_evaluations").glob("t2i_*.json")):
        metric = _T2I_FILE.match(path.name)["metric"]
        for model, entry in _model_entries(path, "classwise").items():
            overall.append(("t2i", "t2i", metric, model, float(entry["full"])))
            for concept, scores in entry["classwise"].items():
                scores = scores if isinstance(scores, list) else [scores]
                rows.extend((metric, model, concept, i, float(s)) for i, s in enumerate(scores))
    df = pd.DataFrame(rows, columns=["metric", "model", "concept", "prompt_index", "score"])
    df["prompt_index"] = df["prompt_index"].astype("int64")
    return df, pd.DataFrame(overall, columns=["task", "dataset", "variant", "model", "value"])


def misalignment(release: Path) -> pd.DataFrame:
    """Misalignment degree per pretraining set (the release labels these fractions "percent")."""
    rows = []
    for path in sorted((release / "misalignment_metrics").glob("*_misalignment_degree.json")):
        data = _load_json(path)
        pretrain = path.name[: -len("_misalignment_degree.json")]
        try:
            rows.append(
                (
                    pretrain,
                    int(data["misalignment_counts"]),
                    float(data["misalignment_degree (percent); extracted dataset size"]),
                    float(data["misalignment_degree (percent); fixed conservative dataset size"]),
                )
            )
        except KeyError as err:
            raise ReleaseFormatError(f"{path.name}: missing key {err}") from err
    return pd.DataFrame(rows, columns=["pretrain", "misaligned_samples", "degree_extracted_size", "degree_fixed_size"])


def let_it_wag(release: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-class Let It Wag! accuracy of the 40 models, and their overall accuracy."""
    path = release / "let_it_wag_datasets" / "evaluations" / "let_it_wag_ensemble_results.json"
    rows, overall = [], []
    for model, entry in _model_entries(path, "classwise").items():
        overall.append(("let_it_wag", "let_it_wag", "ensemble", model, float(entry["full"])))
        rows.extend((model, c, float(a)) for c, a in entry["classwise"].items())
    return (
        pd.DataFrame(rows, columns=["model", "class_name", "accuracy"]),
        pd.DataFrame(overall, columns=["task", "dataset", "variant", "model", "value"]),
    )


def imagenet_accuracy(release: Path, zero_shot_overall: pd.DataFrame) -> pd.DataFrame:
    """ImageNet top-1 per model: the release's ensemble-prompt evaluation, completed by open_clip's table."""
    own = zero_shot_overall.query("dataset == 'imagenet' and variant == 'ensemble'")
    table = pd.DataFrame(
        {"model": own["model"], "imagenet_top1": own["value"], "source": "release zero_shot_evaluations (ensemble)"}
    )
    extra = release / "extra" / "openclip_imagenet_accuracy.csv"
    if extra.exists():
        more = pd.read_csv(extra).rename(columns={"model_key": "model"})
        more = more[~more["model"].isin(table["model"])]
        table = pd.concat([table, more[["model", "imagenet_top1", "source"]]], ignore_index=True)
    return table.reset_index(drop=True)


def concepts(release: Path, zero_shot_scores: pd.DataFrame) -> pd.DataFrame:
    """The unified concept table: one row per distinct release name.

    Zero-shot class names come from the evaluation files of the 19 classification datasets, spelled as
    the count files spell them (``naming.release_name``); the retrieval and text-to-image lists complete
    the set. With the release at the pinned commit this gives the study's 4,029 concepts.
    """
    sources: dict[str, set[str]] = {}
    for dataset, names in zero_shot_scores.groupby("dataset")["concept"]:
        for name in names.unique():
            sources.setdefault(name, set()).add(f"{dataset}:zero_shot")
    for rel_path, task in CONCEPT_LISTS.items():
        path = release / rel_path
        for line in split_lines(read_text_file(path)):  # a BOM or CRLF from an editor changes no name
            if line.strip():
                sources.setdefault(line.strip(), set()).add(f"{Path(rel_path).stem}:{task}")
    names = sorted(sources)
    return pd.DataFrame(
        {
            "concept_id": pd.array(range(len(names)), dtype="int32"),
            "name": names,
            "key": [concept_key(n) for n in names],
            "sources": [sorted(sources[n]) for n in names],
        }
    )


def build_all(release: Path, out_dir: Path, progress: bool = True) -> dict[str, Path]:
    """Parse the whole release and write every tidy table to ``out_dir``; returns name -> path."""
    freq = frequencies(release, progress=progress)
    zs, zs_overall = zero_shot(release)
    ret, ret_overall = retrieval(release)
    t2i_scores, t2i_overall = t2i(release)
    liw, liw_overall = let_it_wag(release)
    tables = {
        "frequencies": (freq, schemas.FREQUENCIES),
        "zero_shot": (zs, schemas.ZERO_SHOT),
        "retrieval": (ret, schemas.RETRIEVAL),
        "t2i": (t2i_scores, schemas.T2I),
        "overall": (pd.concat([zs_overall, ret_overall, t2i_overall, liw_overall], ignore_index=True), schemas.OVERALL),
        "misalignment": (misalignment(release), schemas.MISALIGNMENT),
        "let_it_wag": (liw, schemas.LET_IT_WAG),
        "imagenet_accuracy": (imagenet_accuracy(release, zs_overall), schemas.IMAGENET_ACCURACY),
        "concepts": (concepts(release, zs), schemas.CONCEPTS),
    }
    written = {
        name: schemas.write_table(df, schema, out_dir / f"{name}.parquet") for name, (df, schema) in tables.items()
    }
    (out_dir / "NORMALISATION_VERSION").write_text(f"{NORMALISATION_VERSION}\n")
    return written


def load(out_dir: Path, name: str) -> pd.DataFrame:
    """Read one tidy table back, schema-checked."""
    schema = {
        "frequencies": schemas.FREQUENCIES,
        "zero_shot": schemas.ZERO_SHOT,
        "retrieval": schemas.RETRIEVAL,
        "t2i": schemas.T2I,
        "overall": schemas.OVERALL,
        "misalignment": schemas.MISALIGNMENT,
        "let_it_wag": schemas.LET_IT_WAG,
        "imagenet_accuracy": schemas.IMAGENET_ACCURACY,
        "concepts": schemas.CONCEPTS,
    }[name]
    return schemas.read_table(out_dir / f"{name}.parquet", schema)
