"""Params of per-concept evaluation: ``evaluation.settings``, ``.models`` and ``.datasets``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from helpers.params.base import (
    DVC_PATH_DOC,
    TRUSTED_DOC,
    Name,
    NonEmptyStr,
    NonNegativeInt,
    PositiveInt,
    Precision,
    Section,
)

PROMPT_SETS = ("class", "simple", "ensemble")
ImageExt = Literal["jpg", "jpeg", "png", "webp"]
Prompt = Literal["class", "simple", "ensemble"]
Task = Literal["zero_shot", "retrieval"]


class EvaluationSettings(Section):
    """``evaluation.settings``: shared by every model x dataset run."""

    cache_dir: str | None = Field(None, description="image/text embeddings per (model, dataset), reused")
    device: str | None = Field(None, description="null = cuda when available")
    precision: Precision = "fp32"
    batch_size: PositiveInt = 64
    num_workers: NonNegativeInt = 0
    prompts: Annotated[list[Prompt], Field(min_length=1)] = list(PROMPT_SETS)
    ks: Annotated[list[PositiveInt], Field(min_length=1)] = [1, 5, 10]


class OpenClipModel(Section):
    """An open_clip model (``evaluation.models.<key>``; also the open_clip tagger's model keys).

    ``name`` + ``pretrained`` tag (downloaded), ``name`` + ``pretrained`` checkpoint path, ``model_config``
    (a custom architecture JSON; ``name`` defaults to its stem) + ``pretrained``, or ``name: hf-hub:<repo>`` /
    ``local-dir:<folder>`` alone.
    """

    name: NonEmptyStr | None = None
    pretrained: NonEmptyStr | None = None
    model_config_file: NonEmptyStr | None = Field(None, alias="model_config")
    key: NonEmptyStr | None = Field(None, description="the release model key (default: derived from name)")
    quick_gelu: bool = False
    image_mean: Annotated[list[float], Field(min_length=3, max_length=3)] | None = None
    image_std: Annotated[list[float], Field(min_length=3, max_length=3)] | None = None
    image_interpolation: NonEmptyStr | None = None
    image_resize_mode: NonEmptyStr | None = None
    cache_dir: str | None = None
    trusted: bool = Field(False, description=TRUSTED_DOC)
    weights: str | None = Field(None, description=DVC_PATH_DOC)

    model_config = {**Section.model_config, "populate_by_name": True, "protected_namespaces": ()}

    @model_validator(mode="after")
    def _named(self) -> OpenClipModel:
        if self.name is None and self.model_config_file is None:
            raise ValueError("give name (an open_clip model) or model_config (a custom model JSON)")
        return self


def _only_for(task: str, value: Any, info: ValidationInfo) -> Any:
    """A key that applies to one task only: refused when the entry's ``task`` is the other."""
    if value is not None and info.data.get("task", "zero_shot") != task:
        raise ValueError(f"only used with task: {task}")
    return value


class _Dataset(Section):
    task: Task = "zero_shot"
    data: str | None = Field(None, description=DVC_PATH_DOC)
    class_names: Annotated[list[NonEmptyStr], Field(min_length=1)] | dict[str, NonEmptyStr] | None = Field(
        None, description="the class names in label order, or {folder: name} for an imagefolder"
    )
    class_names_file: NonEmptyStr | None = None
    templates: Annotated[list[NonEmptyStr], Field(min_length=1)] | None = Field(
        None, description="the ensemble prompts (default: OpenAI CLIP's 80 ImageNet templates)"
    )

    @field_validator("class_names")
    @classmethod
    def _names_zero_shot(cls, value: Any, info: ValidationInfo) -> Any:
        return _only_for("zero_shot", value, info)

    @field_validator("class_names_file")
    @classmethod
    def _one_names_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("class_names") is not None:
            raise ValueError("give class_names or class_names_file, not both")
        return _only_for("zero_shot", value, info)

    @field_validator("templates")
    @classmethod
    def _placeholders(cls, templates: list[str] | None) -> list[str] | None:
        bad = [t for t in templates or [] if "{c}" not in t and "{}" not in t]
        if bad:
            raise ValueError(f"template {bad[0]!r} has no placeholder {{c}} (or {{}})")
        return templates


class ImageFolderDataset(_Dataset):
    """``format: imagefolder``: one sub-folder per class (``_`` read as a space)."""

    task: Literal["zero_shot"] = "zero_shot"
    format: Literal["imagefolder"]
    root: NonEmptyStr


class TorchvisionDataset(_Dataset):
    """``format: torchvision``: a ``torchvision.datasets`` class, never downloaded."""

    task: Literal["zero_shot"] = "zero_shot"
    format: Literal["torchvision"]
    name: NonEmptyStr
    root: NonEmptyStr
    split: NonEmptyStr | None = None


class WdsDataset(_Dataset):
    """``format: wds``: webdataset tars; labels (zero-shot) or captions (retrieval) per sample."""

    format: Literal["wds"]
    paths: NonEmptyStr | list[NonEmptyStr]
    image_ext: ImageExt | list[ImageExt] = ["jpg", "jpeg", "png", "webp"]
    label_key: NonEmptyStr = Field("cls", description="zero-shot: the file extension holding the label")
    caption_ext: NonEmptyStr = Field("txt", description="retrieval: the file extension holding the captions")
    max_captions: PositiveInt | None = None
    concepts: Annotated[list[NonEmptyStr], Field(min_length=1)] | None = None
    concepts_file: NonEmptyStr | None = None

    @field_validator("label_key")
    @classmethod
    def _label_zero_shot(cls, value: str, info: ValidationInfo) -> str:
        return _only_for("zero_shot", value, info)

    @field_validator("caption_ext", "max_captions", "concepts")
    @classmethod
    def _retrieval_only(cls, value: Any, info: ValidationInfo) -> Any:
        return _only_for("retrieval", value, info)

    @field_validator("concepts_file")
    @classmethod
    def _one_concepts_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("concepts") is not None:
            raise ValueError("give concepts or concepts_file, not both")
        return _only_for("retrieval", value, info)


class ParquetDataset(_Dataset):
    """``format: parquet``: one row per image, encoded image bytes and a label (a class index or name).

    The layout of Hugging Face image datasets (an ``image`` struct with ``bytes``) reads as is, so a published
    benchmark such as Let It Wag! exported to Parquet evaluates without conversion."""

    task: Literal["zero_shot"] = "zero_shot"
    format: Literal["parquet"]
    paths: NonEmptyStr | list[NonEmptyStr] = Field(description="a Parquet file, glob or folder, or a list of them")
    image_column: NonEmptyStr = Field("image", description="image bytes, or a struct with a 'bytes' field")
    label_column: NonEmptyStr = Field("label", description="class index (into the class names) or class name")


Dataset = Annotated[
    ImageFolderDataset | WdsDataset | TorchvisionDataset | ParquetDataset, Field(discriminator="format")
]


class EvaluationRun(Section):
    """``evaluation.runs.<run>``: one model on one dataset (stage ``evaluate@<run>``).

    DVC cannot look up an entry by another entry's key, so a run restates the DVC paths of its model and
    dataset; the check refuses a run whose paths differ from theirs."""

    model: NonEmptyStr = Field(description="an evaluation.models entry")
    dataset: NonEmptyStr = Field(description="an evaluation.datasets entry")
    weights: NonEmptyStr = Field(description="the model's `weights` path (what this stage depends on)")
    data: NonEmptyStr = Field(description="the dataset's `data` path (what this stage depends on)")


class Evaluation(Section):
    """``evaluation``: models, datasets, and the (model, dataset) runs that are evaluated (``evaluate@<run>``)."""

    settings: EvaluationSettings = EvaluationSettings()
    models: dict[Name, OpenClipModel] = {}
    datasets: dict[Name, Dataset] = {}
    runs: dict[Name, EvaluationRun] = {}
