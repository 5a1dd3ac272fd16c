"""Params of the release analysis and the synthetic world: ``release``, ``analysis``, ``figures``,
``synthetic``, ``clip_training``, ``synthetic_validation``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from helpers.params.base import NonEmptyStr, NonNegativeInt, PositiveInt, Probability, Section

Bins = Annotated[list[int | None], Field(min_length=2, max_length=2, description="[start, stop] as a Python slice")]


class OpenClipResults(Section):
    """open_clip's published results table (ImageNet accuracy of Let It Wag! models)."""

    repo: NonEmptyStr
    commit: NonEmptyStr
    results_path: NonEmptyStr
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Release(Section):
    """``release``: the authors' artifacts this compendium analyses."""

    repo: NonEmptyStr
    commit: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
    local_copy: str | None = Field(None, description="a local clone; FDP_RELEASE_LOCAL_COPY overrides it")
    download_workers: PositiveInt = 8
    openclip: OpenClipResults


class Pretrain(Section):
    label: NonEmptyStr
    models: Annotated[list[NonEmptyStr], Field(min_length=1)]
    plotted_bins: Bins


class ZeroShot(Section):
    datasets: list[NonEmptyStr]
    text_excluded_datasets: list[NonEmptyStr] = []
    n_edges: Annotated[int, Field(ge=2)] = 12
    prompts: Annotated[list[Literal["class", "simple", "ensemble"]], Field(min_length=1)]
    count_types: list[NonEmptyStr]
    pretrains: dict[str, Pretrain]


class Retrieval(Section):
    datasets: list[NonEmptyStr]
    n_edges: Annotated[int, Field(ge=2)]
    plotted_bins: Bins
    metrics: list[Annotated[str, Field(pattern=r"^(i2t|t2i)_k=\d+$")]]
    count_types: list[NonEmptyStr]


class T2I(Section):
    datasets: list[NonEmptyStr]
    pretrain: NonEmptyStr
    n_edges: Annotated[int, Field(ge=2)]
    plotted_bins: Bins
    min_prompts: PositiveInt = 6
    count_types: list[NonEmptyStr]


class Analysis(Section):
    """``analysis``: the authors' binned statistic and the concept-level statistics."""

    bootstrap_resamples: NonNegativeInt = 1000
    seed: NonNegativeInt = 0
    bin_sensitivity: list[Annotated[int, Field(ge=2)]] = []
    missing: Literal["raise", "drop"] = Field(
        "raise", description="NaN counts or scores: raise naming the rows, or drop them and count them in the notes"
    )
    zero_shot: ZeroShot
    retrieval: Retrieval
    t2i: T2I


class Figures(Section):
    dpi: PositiveInt = 150
    zero_shot_count_types: list[NonEmptyStr]
    retrieval_count_type: NonEmptyStr
    threshold_pretrains: list[NonEmptyStr]
    let_it_wag_split: float = 50.0


class World(Section):
    """``synthetic.world`` / ``synthetic.sizes.<size>``: fields of :class:`helpers.synthetic.world.WorldSpec`.

    Every field is optional here; the WorldSpec's own defaults and range checks apply.
    """

    n_concepts: PositiveInt | None = None
    frequency_law: Literal["log_uniform", "zipf"] | None = None
    zipf_exponent: Annotated[float, Field(ge=0)] | None = None
    decades: Annotated[float, Field(ge=0)] | None = None
    n_samples: PositiveInt | None = None
    max_concepts_per_image: PositiveInt | None = None
    image_size: Annotated[int, Field(ge=8, le=1024)] | None = None
    misalignment_rate: Probability | None = None
    full_misalignment_rate: Probability | None = Field(
        None, description="captions naming only concepts the image does not show (the true misalignment degree)"
    )
    omission_rate: Probability | None = None
    seed: NonNegativeInt | None = None
    shard_size: PositiveInt | None = None
    downstream_per_class: NonNegativeInt | None = None
    retrieval_images: NonNegativeInt | None = None
    captions_per_image: PositiveInt | None = None
    tagger_images: NonNegativeInt | None = None
    audit_images: NonNegativeInt | None = Field(
        None, description="corpus samples copied out with their true concepts: a labelled audit of the corpus itself"
    )
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] | None = None
    jpeg_subsampling: Literal["4:4:4", "4:2:2", "4:2:0"] | None = Field(
        None, description="JPEG chroma subsampling of the corpus images (4:2:0 greys out fine stripes at 32 px)"
    )
    leak_rate: Probability | None = Field(
        None,
        description="share of pretraining samples that are near-duplicates of test images (the similarity control)",
    )
    leaked_classes: NonNegativeInt | None = Field(
        None, description="how many test classes the leaks come from (drawn among the rarest quarter of concepts)"
    )

    def given(self) -> dict:
        """The fields the params set (the rest take WorldSpec's defaults)."""
        return self.model_dump(exclude_none=True)


class Synthetic(Section):
    """``synthetic``: the synthetic world (:mod:`helpers.synthetic.world`)."""

    out_dir: NonEmptyStr = "data/raw/synthetic"
    downstream_dir: NonEmptyStr = "data/eval/synthetic"
    world: World = World()
    sizes: dict[str, World] = Field({}, description="named sizes; the chosen one's keys override `world`")
    size: NonEmptyStr = Field("default", validate_default=True, description="a key of `sizes`")

    @field_validator("size")
    @classmethod
    def _size_known(cls, size: str, info: ValidationInfo) -> str:
        sizes = info.data.get("sizes")
        if sizes is not None and size not in sizes:
            raise ValueError(f"{size!r} is not one of the sizes ({', '.join(sizes) or 'none'})")
        return size


class ClipModel(Section):
    """``clip_training.model``: arguments of :func:`helpers.synthetic.clip_training.tiny_clip_config`.

    Every field is optional here; ``tiny_clip_config``'s own defaults apply.
    """

    image_size: PositiveInt | None = None
    embed_dim: PositiveInt | None = None
    vision_width: PositiveInt | None = None
    vision_layers: PositiveInt | None = None
    vision_heads: PositiveInt | None = None
    patch_size: PositiveInt | None = None
    text_width: PositiveInt | None = None
    text_layers: PositiveInt | None = None
    text_heads: PositiveInt | None = None
    context_length: PositiveInt | None = None
    vocab_size: PositiveInt | None = None

    def given(self) -> dict:
        """The fields the params set (the rest take tiny_clip_config's defaults)."""
        return self.model_dump(exclude_none=True)


class ClipTraining(Section):
    """``clip_training``: the small CLIP trained on the synthetic world (:mod:`helpers.synthetic.clip_training`)."""

    data: str | None = Field(None, description="the path DVC tracks as this stage's input; not read by the code")
    shards: NonEmptyStr | list[NonEmptyStr]
    out_dir: NonEmptyStr
    model: ClipModel = ClipModel()
    epochs: PositiveInt
    batch_size: PositiveInt
    lr: float = Field(gt=0)
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    warmup_steps: NonNegativeInt = 0
    seed: NonNegativeInt = 0
    device: NonEmptyStr = "cpu"
    num_threads: PositiveInt | None = None
    num_workers: NonNegativeInt = 0
    max_samples: PositiveInt | None = None
    augment: bool = True
    cache_images: bool = Field(
        False, description="keep decoded images in memory after the first epoch (num_workers 0; ~3 KB per 32 px image)"
    )

    @model_validator(mode="after")
    def _cache_in_process(self) -> ClipTraining:
        if self.cache_images and self.num_workers:
            raise ValueError("cache_images keeps decoded images in the training process: set num_workers to 0")
        return self


class CorrectedFits(Section):
    """``synthetic_validation.corrected_fits``: concept-level fits on raw, audit-corrected and true counts
    (:mod:`helpers.synthetic.corrected`)."""

    model: NonEmptyStr = Field(description="an evaluation.models key: whose per-concept zero-shot scores are fitted")
    datasets: Annotated[list[NonEmptyStr], Field(min_length=1)] = Field(
        description="evaluation.datasets entries (zero-shot classification) evaluated with that model"
    )
    prompt: Literal["class", "simple", "ensemble"] = "ensemble"
    audit_samples: PositiveInt = Field(
        500,
        description="pretraining samples drawn (seeded) as an audit of every tagger: their truth from the world, "
        "their tagger scores from the image search",
    )
    audit_seed: NonNegativeInt = 0
    resamples: NonNegativeInt = Field(1000, description="bootstrap resamples over audit samples (0: no interval)")
    seed: NonNegativeInt = 0
    zero_rule: Literal["to_one", "dropped"] = Field("to_one", description="zero counts: log10(1) = 0, or left out")
    prior: Literal["jeffreys", "pooled"] = Field(
        "pooled",
        description="smoothing of the audit's per-concept rates: toward 0.5 (Jeffreys), or toward the pooled rates",
    )


class SyntheticValidation(Section):
    """``synthetic_validation``: the world's estimates against its truth (:mod:`helpers.synthetic.validation`)."""

    world: NonEmptyStr
    corpus: NonEmptyStr = Field(description="the caption side: a corpora entry")
    image_corpora: Annotated[list[NonEmptyStr], Field(min_length=1)] = Field(
        description="image_corpora entries, each tagger scored against the truth"
    )
    threshold: Probability = 0.7
    thresholds: list[Probability] = Field(
        [], description="further global thresholds, one precision/recall row each (the P/R curve); >= prob_floor"
    )
    calibrated: dict[NonEmptyStr, NonEmptyStr] = Field(
        {},
        description="image corpus -> its per-concept threshold table (helpers.images.calibration), scored as "
        "threshold_label 'calibrated'",
    )
    corrected_fits: CorrectedFits | None = Field(
        None, description="fits on audit-corrected counts beside raw and true ones (null: none)"
    )
