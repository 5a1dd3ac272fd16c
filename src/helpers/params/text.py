"""Params of the caption side: ``samples``, ``concepts``, ``text_search`` and ``corpora``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from helpers.params.base import DVC_PATH_DOC, Name, NonEmptyStr, NonNegativeInt, PositiveInt, Section

CAPTION_FORMATS = ("tsv", "csv", "parquet", "wds", "txt")
#: the release's tidy concept table: concepts with their release metadata, not a table to search
RELEASE_CONCEPT_TABLE = "data/processed/release/concepts.parquet"
#: downstream keys that configure the noun extraction from retrieval captions
RETRIEVAL_KEYS = ("min_images", "captions_per_image", "noun_extractor", "spacy_model")


class Captions(Section):
    """How to read a corpus' captions (:class:`helpers.text.captions.CaptionSource`).

    Defaults by format are applied by ``CaptionSource``: tsv ``caption_column=0, header=False``; csv and
    parquet ``caption_column="caption"`` (csv ``header=True``); wds ``text_ext="txt"``.
    """

    format: Literal["tsv", "csv", "parquet", "wds", "txt"]
    paths: NonEmptyStr | list[NonEmptyStr] = Field(description="a path, pattern ({00000..00331}, *) or a list")
    caption_column: str | NonNegativeInt | None = None
    key_column: str | NonNegativeInt | None = None
    header: bool | None = None
    n_columns: PositiveInt | None = None
    delimiter: str | None = Field(None, min_length=1, max_length=1)
    text_ext: Literal["txt", "json"] = "txt"
    caption_key: NonEmptyStr = "caption"
    max_caption_chars: PositiveInt = 4096
    batch_size: PositiveInt = 8192
    decode: Literal["none", "url"] = Field("none", description="url: decode percent-escapes and '+' (YFCC)")


#: stands for a retrieval key given without captions (see ``Downstream``)
_STRAY = object()


class Samples(Section):
    """The generated sample corpora (:mod:`helpers.synthetic.samples`)."""

    n_captions: PositiveInt = 3000
    n_shards: PositiveInt = 3
    seed: NonNegativeInt = 0


class Downstream(Section):
    """One downstream dataset whose concepts join the concept table (:mod:`helpers.text.concepts`)."""

    data: str | None = Field(None, description=DVC_PATH_DOC)
    class_names: list[NonEmptyStr] | None = Field(None, min_length=1)
    class_names_file: NonEmptyStr | None = None
    captions: Captions | None = None
    min_images: PositiveInt = 10
    captions_per_image: PositiveInt = 5
    noun_extractor: Literal["spacy", "lemmas"] = "spacy"
    spacy_model: NonEmptyStr = "en_core_web_lg"

    @model_validator(mode="after")
    def _one_source(self) -> Downstream:
        if self.class_names is not None and self.class_names_file is not None:
            raise ValueError("give class_names or class_names_file, not both")
        if self.class_names is None and self.class_names_file is None and self.captions is None:
            raise ValueError("no concepts: give class_names, class_names_file or captions")
        return self

    @model_validator(mode="before")
    @classmethod
    def _mark_stray(cls, data: Any) -> Any:
        """Mark retrieval keys given without captions, so that each is reported under its own key."""
        if isinstance(data, dict) and data.get("captions") is None:
            return {k: (_STRAY if k in RETRIEVAL_KEYS else v) for k, v in data.items()}
        return data

    @field_validator(*RETRIEVAL_KEYS, mode="before")
    @classmethod
    def _with_captions(cls, value: Any) -> Any:
        if value is _STRAY:
            raise ValueError("only applies with captions (no captions given)")
        return value


class Concepts(Section):
    """``concepts``: the downstream datasets added to the release's concepts."""

    downstream: dict[Name, Downstream] = {}


class TextSearch(Section):
    """``text_search``: how every corpus' captions are searched (:mod:`helpers.text.search`)."""

    mode: Literal["phrase", "bag", "paper"] = "phrase"
    unknown_words: Literal["drop", "zero"] | None = Field(None, description="bag/paper modes; null = drop")
    executor: Literal["process", "ray", "serial"] = "process"
    workers: PositiveInt | None = Field(None, description="process pool size; null = all cores")
    ray_address: str | None = None
    allow_failed_shards: bool = False


class Corpus(Section):
    """``corpora.<name>``: a corpus whose captions are searched."""

    data: str | None = Field(None, description=DVC_PATH_DOC)
    concepts: NonEmptyStr = Field(
        description="the concept table to search: data/processed/concepts.parquet (stage concepts) or "
        "data/processed/concept_tables/<name>.parquet (stage downstream_concepts@<name>)"
    )
    captions: Captions
