"""Params of the image side: ``taggers``, ``image_search`` and ``image_corpora`` (tagger backends)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from helpers.params.base import (
    DVC_PATH_DOC,
    TRUSTED_DOC,
    NonEmptyStr,
    NonNegativeInt,
    PositiveInt,
    Precision,
    Probability,
    Section,
)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
PLACEHOLDER = "{c}"
#: the open_clip tagger's prompts when ``templates`` is not given: a subset of CLIP's ImageNet templates that
#: reads well for objects and scenes
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a picture of a {c}.",
    "a photo of the {c}.",
    "an image of a {c}.",
    "a close-up photo of a {c}.",
    "a photo of many {c}.",
)


#: defaults of the backends, stated here once (the backends import them)
DEFAULT_WIDTHS: tuple[int, ...] = (32, 64, 128, 256)  # trained: channels per conv block
DEFAULT_MARGIN = 0.05  # open_clip calibration
DEFAULT_TAU = 0.01
DEFAULT_MAX_REFERENCE_IMAGES = 1000
DEFAULT_FALLBACK = "a photo of a {c}."  # rampp: the description of a concept without one
DEFAULT_CONCEPT_CHUNK = 1024


def _templates_ok(templates: list[str] | None) -> list[str] | None:
    bad = [t for t in templates or [] if PLACEHOLDER not in t]
    if bad:
        raise ValueError(f"every template needs the placeholder {PLACEHOLDER}, got {bad[0]!r}")
    return templates


class TaggerTraining(Section):
    """``taggers.<name>``: a labelled image set and the ``trained`` tagger trained on it (stage train_tagger)."""

    data: str | None = Field(None, description=DVC_PATH_DOC)
    labels: NonEmptyStr = Field(description="CSV of image paths and their concepts")
    checkpoint: NonEmptyStr = Field(description="where the trained tagger is written")
    image_size: PositiveInt = 32
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    lr: float = Field(1e-3, gt=0)
    seed: NonNegativeInt = 0
    loss: Literal["bce", "asl", "focal"] = Field(
        "bce", description="multi-label loss (asl: asymmetric loss, Ridnik 2021)"
    )
    augment: bool = Field(True, description="random flips / 90-degree rotations")
    jpeg_quality: Annotated[list[Annotated[int, Field(ge=1, le=100)]], Field(min_length=2, max_length=2)] | None = (
        Field([60, 95], description="[low, high] JPEG re-encoding quality in training (the corpus is JPEG); null: off")
    )
    jpeg_p: Probability = Field(0.5, description="share of training images re-encoded as JPEG")
    widths: list[PositiveInt] = Field(list(DEFAULT_WIDTHS), min_length=1, description="channels per conv block")
    pools: NonNegativeInt | None = Field(
        None, description="the last this many conv blocks end in a 2x2 max-pool; null: every block"
    )
    global_pool: Literal["avg", "max", "avgmax"] = Field(
        "avg", description="how the last feature map becomes one vector: mean, max or both concatenated"
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: train under bfloat16 autocast (faster on CPUs with AMX/AVX512-BF16 and on GPUs)"
    )

    @field_validator("jpeg_quality")
    @classmethod
    def _ordered(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"expected [low, high] with low <= high, got {value}")
        return value

    @model_validator(mode="after")
    def _pools_fit(self) -> TaggerTraining:
        pools = len(self.widths) if self.pools is None else self.pools
        if pools > len(self.widths):
            raise ValueError(f"pools must be <= {len(self.widths)} (the number of conv blocks), got {pools}")
        if self.image_size < 2**pools:
            raise ValueError(f"image_size must be >= {2**pools} for {pools} pooling blocks")
        return self


class InlineTraining(Section):
    """``tagger.train`` of a ``trained`` backend: train in the stage instead of loading a checkpoint."""

    labels: NonEmptyStr
    image_root: str | None = None
    image_column: NonEmptyStr = "image"
    concepts_column: NonEmptyStr = "concepts"
    separator: NonEmptyStr = "|"
    image_size: PositiveInt = 64
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 64
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = 1e-4
    widths: list[PositiveInt] = Field(list(DEFAULT_WIDTHS), min_length=1, description="channels per conv block")
    seed: NonNegativeInt = 0
    loss: Literal["bce", "asl", "focal"] = "bce"
    augment: bool = True
    device: NonEmptyStr = "auto"
    num_workers: NonNegativeInt = 0

    @model_validator(mode="after")
    def _size_fits_blocks(self) -> InlineTraining:
        if self.image_size < 2 ** len(self.widths):
            raise ValueError(f"image_size must be >= {2 ** len(self.widths)} for {len(self.widths)} pooling blocks")
        return self


class TrainedTagger(Section):
    """``backend: trained``: the compact CNN of :mod:`helpers.images.tagger_trained`."""

    backend: Literal["trained"]
    train: InlineTraining | None = Field(None, description="train in the stage instead of loading a checkpoint")
    checkpoint: NonEmptyStr | None = Field(None, validate_default=True, description="the tagger's weights file")
    unknown_concepts: Literal["error", "zero"] = "error"
    image_size: PositiveInt | None = None
    weights: str | None = Field(None, description=DVC_PATH_DOC)

    @field_validator("checkpoint")
    @classmethod
    def _weights_from_somewhere(cls, checkpoint: str | None, info: ValidationInfo) -> str | None:
        if checkpoint is None and info.data.get("train") is None:
            raise ValueError("missing (a trained tagger's weights file, or give `train`)")
        return checkpoint


class Calibration(Section):
    """How the open_clip tagger turns cosine similarities into probabilities (see tagger_openclip)."""

    mode: Literal["concepts", "reference"] = "concepts"
    margin: float = DEFAULT_MARGIN
    tau: float | Literal["model"] = Field(
        DEFAULT_TAU, description="sigmoid width in cosine units; 'model': 1 / the CLIP's learned logit scale"
    )
    max_reference_images: PositiveInt = DEFAULT_MAX_REFERENCE_IMAGES
    reference_images: NonEmptyStr | list[NonEmptyStr] | None = Field(None, validate_default=True)

    @field_validator("tau", mode="before")
    @classmethod
    def _tau(cls, value: Any) -> Any:
        if value == "model":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"expected a number > 0 or 'model', got {value!r}")
        return float(value)

    @field_validator("reference_images")
    @classmethod
    def _references(cls, value: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        mode = info.data.get("mode")
        if mode == "reference" and value is None:
            raise ValueError("missing (mode 'reference' needs reference images)")
        if mode == "concepts" and value is not None:
            raise ValueError("only used with mode 'reference'")
        return value


class OpenClipTagger(Section):
    """``backend: open_clip``: any open_clip model as a zero-shot multi-label tagger.

    The model is named like an ``evaluation.models`` entry (:func:`helpers.evaluation.models.load_model`):
    ``name`` + ``pretrained`` (a tag or a checkpoint path), or ``model_config`` (a custom JSON) + ``pretrained``.
    """

    backend: Literal["open_clip"]
    model_config_file: NonEmptyStr | None = Field(None, alias="model_config", description="a custom model JSON")
    name: NonEmptyStr | None = Field(
        None, validate_default=True, description="open_clip architecture (default: model_config's file stem)"
    )
    pretrained: NonEmptyStr | None = Field(None, description="a pretrained tag or a checkpoint file")
    quick_gelu: bool = False
    cache_dir: str | None = None
    trusted: bool = Field(False, description=TRUSTED_DOC)
    templates: Annotated[list[NonEmptyStr], Field(min_length=1)] = list(DEFAULT_TEMPLATES)
    use_descriptions: bool = False
    descriptions: NonEmptyStr | list[NonEmptyStr] | None = None
    text_batch_size: PositiveInt = 256
    calibration: Calibration = Calibration()
    image_size: PositiveInt | None = None
    weights: str | None = Field(None, description=DVC_PATH_DOC)

    model_config = {**Section.model_config, "populate_by_name": True, "protected_namespaces": ()}

    @field_validator("name")
    @classmethod
    def _named(cls, name: str | None, info: ValidationInfo) -> str | None:
        if name is None and info.data.get("model_config_file") is None:
            raise ValueError("missing (an open_clip model name, or give `model_config`)")
        return name

    @field_validator("templates")
    @classmethod
    def _templates(cls, templates: list[str]) -> list[str]:
        return _templates_ok(templates)


class RamppTagger(Section):
    """``backend: rampp``: RAM++ (:mod:`helpers.images.tagger_rampp`), in its own environment."""

    backend: Literal["rampp"]
    checkpoint: NonEmptyStr
    vit: Literal["swin_l", "swin_b"] = "swin_l"
    image_size: Literal[384, 224] = 384
    fallback_template: NonEmptyStr = DEFAULT_FALLBACK
    label_embedding_cache: str | None = None
    concept_chunk: PositiveInt = DEFAULT_CONCEPT_CHUNK
    descriptions: NonEmptyStr | list[NonEmptyStr] | None = None
    weights: str | None = Field(None, description=DVC_PATH_DOC)

    @field_validator("fallback_template")
    @classmethod
    def _placeholder(cls, template: str) -> str:
        if PLACEHOLDER not in template:
            raise ValueError(f"needs the placeholder {PLACEHOLDER}")
        return template


Tagger = Annotated[TrainedTagger | OpenClipTagger | RamppTagger, Field(discriminator="backend")]


class ImageSource(Section):
    """``images``: a corpus' images as webdataset tars (:class:`helpers.images.sources.ImageSource`)."""

    format: Literal["wds"] = "wds"
    paths: NonEmptyStr | list[NonEmptyStr]
    image_ext: Literal["jpg", "jpeg", "png", "webp"] | list[Literal["jpg", "jpeg", "png", "webp"]] = ["jpg"]


class Audit(Section):
    """``image_corpora.<name>.audit``: a labelled audit split on which per-concept thresholds are fitted.

    The images a user (or the synthetic world's tagger split) labelled with the concepts they show; the stage
    scores them with the corpus's tagger and fits one threshold per concept (:mod:`helpers.images.calibration`).
    It must not be the data a trained tagger learned from (its scores there are optimistic).
    """

    labels: NonEmptyStr = Field(description="Parquet or CSV/TSV: one row per audit image (under the entry's `data`)")
    image_column: NonEmptyStr = "image"
    concepts_column: NonEmptyStr = "concepts"
    separator: NonEmptyStr = "|"
    image_root: str | None = Field(None, description="default: the labels file's folder")
    mode: Literal["precision", "f1", "pooled"] = Field(
        "precision",
        description="each concept meets target_precision, maximises F1, or all together (pooled) meet it",
    )
    target_precision: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    folds: Annotated[int, Field(ge=2)] = Field(5, description="mode pooled: cross-validation folds over the audit")
    seed: NonNegativeInt = Field(0, description="mode pooled: seed of the folds")
    min_positives: PositiveInt = Field(
        5, description="fewer labelled positives: the concept keeps the global threshold"
    )
    default: Probability | None = Field(
        None, description="threshold of unfitted concepts (default: max image_search.thresholds)"
    )
    unreachable: Literal["default", "best"] = Field(
        "default",
        description="mode precision, target unreachable: keep `default`, or the highest-precision threshold",
    )
    prevalence: Literal["audit", "captions"] = Field(
        "audit",
        description="precision as on the audit, or at each concept's corpus prevalence from its caption count",
    )


class PriorShift(Section):
    """``image_corpora.<name>.prior_shift``: move a trained tagger onto the corpus's concept priors (label shift).

    EM (Saerens et al. 2002) estimates each concept's prevalence in the corpus from the tagger's probabilities
    on a sample of its images, and the tagger's logits are shifted from its training prevalence to that
    (:mod:`helpers.images.prior_shift`). Only for the ``trained`` backend, which records its training prevalence.
    """

    images: PositiveInt = Field(2000, description="corpus images scored in full for the estimate (spread over shards)")
    max_iter: PositiveInt = 200
    tol: Annotated[float, Field(gt=0.0)] = 1e-6


class ImageCorpus(Section):
    """``image_corpora.<name>``: the image side of a ``corpora`` entry, tagged by one tagger."""

    corpus: NonEmptyStr | None = Field(None, description="the corpora entry of the captions (default: this name)")
    data: str | None = Field(None, description=DVC_PATH_DOC)
    images: ImageSource
    tagger: Tagger
    audit: Audit | None = Field(None, description="fit per-concept thresholds on a labelled audit split")
    prior_shift: PriorShift | None = Field(
        None, description="trained taggers: shift the logits from the training split's priors to the corpus's (EM)"
    )

    @model_validator(mode="after")
    def _prior_shift_needs_trained(self) -> ImageCorpus:
        if self.prior_shift is not None and self.tagger.backend != "trained":
            raise ValueError(
                f"prior_shift needs a tagger of the `trained` backend (its training prevalence is recorded), "
                f"not {self.tagger.backend!r}"
            )
        return self


class ImageSearch(Section):
    """``image_search``: inference settings shared by every image corpus (:mod:`helpers.images.search`)."""

    prob_floor: Probability = Field(0.5, description="probabilities >= this are stored")
    thresholds: Annotated[list[Probability], Field(min_length=1)] = Field(
        [0.7], description="each in [0, 1] and >= prob_floor (the paper: 0.7; its ablation 0.5-0.7)"
    )
    image_size: PositiveInt | None = Field(None, description="checked against the tagger's input size")
    batch_size: PositiveInt = 64
    num_workers: NonNegativeInt = 0
    device: str | None = Field(None, description="null = cuda when available")
    precision: Precision = "fp32"
    channels_last: bool | None = Field(None, description="null = on CUDA")
    decode_draft: bool = False
    torch_threads: PositiveInt | None = None
    executor: Literal["serial", "process", "ray"] = "serial"
    workers: PositiveInt = 1
    ray_address: str | None = None
    ray_num_gpus: float | None = Field(None, ge=0)
    ray_num_cpus: float | None = Field(None, ge=0)
    ray_num_actors: PositiveInt | None = None
    allow_failed_shards: bool = False

    @field_validator("thresholds")
    @classmethod
    def _above_floor(cls, thresholds: list[float], info: ValidationInfo) -> list[float]:
        floor = info.data.get("prob_floor")
        low = [t for t in thresholds if floor is not None and t < floor]
        if low:
            raise ValueError(
                f"{low} below prob_floor {floor}: probabilities under the floor are not stored, so those counts "
                "would be wrong; lower prob_floor or drop them"
            )
        return thresholds
