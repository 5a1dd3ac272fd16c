"""Schemas of every table the compendium writes, checked on write and on read.

Tables are Parquet files; a table that does not match its schema is refused with pandera's report
of the failing column and rows, so a malformed input never reaches an analysis silently.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pandera.pandas as pa

COUNT_KINDS = ["text", "image", "matched"]
#: a corpus's count types: COUNT_KINDS at global thresholds, and image / matched at per-concept thresholds
#: fitted on an audit split (``helpers.images.frequencies.CALIBRATED_METHODS``)
CORPUS_COUNT_METHODS = [*COUNT_KINDS, "image_calibrated", "matched_calibrated"]

_str = pa.Column(str)
_nonneg_int = pa.Column("int64", pa.Check.ge(0))

FREQUENCIES = pa.DataFrameSchema(
    {
        "downstream": _str,
        "pretrain": _str,
        "method": _str,
        "kind": pa.Column(str, pa.Check.isin(COUNT_KINDS)),
        "threshold": pa.Column(float, pa.Check.in_range(0.0, 1.0), nullable=True),
        "concept": _str,
        "count": _nonneg_int,
    },
    unique=["downstream", "pretrain", "method", "concept"],
    strict=True,
    name="frequencies",
)

ZERO_SHOT = pa.DataFrameSchema(
    {
        "dataset": _str,
        "prompt": pa.Column(str, pa.Check.isin(["class", "simple", "ensemble"])),
        "model": _str,
        "class_name": _str,
        "concept": _str,
        "accuracy": pa.Column(float, pa.Check.in_range(0.0, 100.0)),
    },
    unique=["dataset", "prompt", "model", "class_name"],
    strict=True,
    name="zero_shot",
)

OVERALL = pa.DataFrameSchema(
    {
        "task": _str,
        "dataset": _str,
        "variant": _str,
        "model": _str,
        "value": pa.Column(float),
    },
    unique=["task", "dataset", "variant", "model"],
    strict=True,
    name="overall",
)

RETRIEVAL = pa.DataFrameSchema(
    {
        "dataset": _str,
        "direction": pa.Column(str, pa.Check.isin(["i2t", "t2i"])),
        "k": pa.Column("int64", pa.Check.gt(0)),
        "model": _str,
        "concept": _str,
        "recall": pa.Column(float, pa.Check.in_range(0.0, 1.0)),
    },
    unique=["dataset", "direction", "k", "model", "concept"],
    strict=True,
    name="retrieval",
)

T2I = pa.DataFrameSchema(
    {
        "metric": _str,
        "model": _str,
        "concept": _str,
        "prompt_index": pa.Column("int64", pa.Check.ge(0)),
        "score": pa.Column(float, nullable=False),
    },
    unique=["metric", "model", "concept", "prompt_index"],
    strict=True,
    name="t2i",
)

MISALIGNMENT = pa.DataFrameSchema(
    {
        "pretrain": _str,
        "misaligned_samples": _nonneg_int,
        "degree_extracted_size": pa.Column(float, pa.Check.in_range(0.0, 1.0)),
        "degree_fixed_size": pa.Column(float, pa.Check.in_range(0.0, 1.0)),
    },
    unique=["pretrain"],
    strict=True,
    name="misalignment",
)

LET_IT_WAG = pa.DataFrameSchema(
    {
        "model": _str,
        "class_name": _str,
        "accuracy": pa.Column(float, pa.Check.in_range(0.0, 100.0)),
    },
    unique=["model", "class_name"],
    strict=True,
    name="let_it_wag",
)

#: Let It Wag! candidates downloaded from URL lists (helpers.controls.download): per class the URLs listed, the
#: images downloaded, and the counted skips by img2dataset's status, with the first error message seen
LET_IT_WAG_DOWNLOAD = pa.DataFrameSchema(
    {
        "class": _str,
        "urls": _nonneg_int,
        "downloaded": _nonneg_int,
        "failed_download": _nonneg_int,
        "failed_decode": _nonneg_int,
        "first_error": pa.Column(str, nullable=True),
    },
    unique=["class"],
    strict=True,
    name="let_it_wag_download",
)

IMAGENET_ACCURACY = pa.DataFrameSchema(
    {
        "model": _str,
        "imagenet_top1": pa.Column(float, pa.Check.in_range(0.0, 100.0)),
        "source": _str,
    },
    unique=["model"],
    strict=True,
    name="imagenet_accuracy",
)

CONCEPTS = pa.DataFrameSchema(
    {
        "concept_id": pa.Column("int32", pa.Check.ge(0), unique=True),
        "name": pa.Column(str, unique=True),
        "key": _str,
        "sources": pa.Column(object),
    },
    strict=True,
    name="concepts",
)

FITS = pa.DataFrameSchema(
    {
        "task": pa.Column(str, pa.Check.isin(["zero_shot", "retrieval", "t2i"])),
        "pretrain": _str,
        "model": _str,
        "prompt": _str,
        "count_type": _str,
        "metric": _str,
        "zero_rule": pa.Column(str, pa.Check.isin(["to_one", "dropped"])),
        "n_rows": _nonneg_int,
        "n_bins_plotted": _nonneg_int,
        "binned_r": pa.Column(float, nullable=True),
        "binned_p": pa.Column(float, nullable=True),
        "concept_pearson_r": pa.Column(float, nullable=True),
        "concept_pearson_p": pa.Column(float, nullable=True),
        "concept_spearman_r": pa.Column(float, nullable=True),
        "concept_spearman_p": pa.Column(float, nullable=True),
        "slope_per_decade": pa.Column(float, nullable=True),
        "slope_ci_low": pa.Column(float, nullable=True),
        "slope_ci_high": pa.Column(float, nullable=True),
        "intercept": pa.Column(float, nullable=True),
    },
    unique=["task", "pretrain", "model", "prompt", "count_type", "metric", "zero_rule"],
    strict=True,
    name="log_linear_fits",
)


def write_table(df: pd.DataFrame, schema: pa.DataFrameSchema, path: Path) -> Path:
    """Validate ``df`` against ``schema`` and write it as Parquet (atomically)."""
    validated = schema.validate(df, lazy=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    validated.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def read_table(path: Path, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Read a Parquet table and check it against ``schema``."""
    if not Path(path).exists():
        raise FileNotFoundError(f"Table {path} does not exist; run the stage that writes it (`dvc repro`).")
    return schema.validate(pd.read_parquet(path), lazy=True)


def read_arrow(path: str | Path, schema, *, what: str, missing_hint: str) -> pd.DataFrame:
    """Read a Parquet file that must have exactly the pyarrow ``schema`` (metadata ignored), as a DataFrame.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it and adds ``missing_hint``).
        ValueError: its columns or types differ (the message names the file and calls it not a ``what``).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {missing_hint}")
    table = pq.read_table(path)
    if not table.schema.equals(schema, check_metadata=False):
        raise ValueError(f"{path}: not {what}; expected columns {schema.names}")
    return table.to_pandas()


def _is_str_list(value: object) -> bool:
    """A list of strings (a tuple or numpy array too: Parquet gives list columns back as arrays)."""
    if isinstance(value, str) or not hasattr(value, "__iter__") or isinstance(value, dict):
        return False
    return all(isinstance(v, str) for v in value)


# The unified concept table of the text-search stage (helpers.text.concepts.build_concept_table): the release's
# concepts with their ids, then any new downstream concepts; ids are the row positions 0..n-1.
CONCEPT_TABLE = pa.DataFrameSchema(
    {
        "concept_id": pa.Column("int32", pa.Check.ge(0), unique=True),
        "name": pa.Column(str, pa.Check(lambda s: s.str.len() > 0, error="empty name"), unique=True),
        "key": _str,
        "lemmas": pa.Column(object, pa.Check(_is_str_list, element_wise=True, error="not a list of strings")),
        "sources": pa.Column(
            object,
            pa.Check(
                lambda v: _is_str_list(v) and len(v) > 0, element_wise=True, error="not a non-empty list of strings"
            ),
        ),
    },
    checks=pa.Check(
        lambda df: bool((df["concept_id"].to_numpy() == range(len(df))).all()) if len(df) else True,
        error="concept_id is not 0..n-1 in row order",
    ),
    strict=True,
    name="concept_table",
)


PRIOR_SHIFT = pa.DataFrameSchema(
    {
        "concept_id": pa.Column("int32", pa.Check.ge(0), unique=True),
        "train_prior": pa.Column(float, pa.Check.in_range(0.0, 1.0)),
        "corpus_prior": pa.Column(float, pa.Check.in_range(0.0, 1.0)),
        "offset": pa.Column(float),
    },
    strict=True,
    name="prior_shift",
)
"""``image_search/<corpus>/prior_shift.parquet``: a trained tagger's label-shift correction (helpers.images.prior_shift)."""

CORPUS_FREQUENCIES = pa.DataFrameSchema(
    {
        "corpus": _str,
        "concept_id": pa.Column("int32", pa.Check.ge(0)),
        "concept": _str,
        "method": pa.Column(str, pa.Check.isin(CORPUS_COUNT_METHODS)),
        "threshold": pa.Column(float, pa.Check.in_range(0.0, 1.0), nullable=True),
        "count": _nonneg_int,
    },
    unique=["corpus", "concept_id", "method", "threshold"],
    strict=True,
    name="corpus_frequencies",
)
