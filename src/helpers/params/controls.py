"""Params of the study's two controls on a user's data: ``controls.similarity`` and ``let_it_wag``.

The one place their keys, types, defaults and ranges are stated (the controls library, ``helpers.controls``,
takes these models). Thresholds are cosine similarities and must lie in [-1, 1]. References to other
sections (``image_corpora``, ``evaluation.models``, ``evaluation.datasets``) are checked by
``helpers.params.root.check``; an open_clip embedder is *loaded* by ``helpers.controls.embed.make_embedder``
before any shard runs (a model that cannot be loaded fails there, naming its key).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from helpers.params.base import Name, NonEmptyStr, NonNegativeInt, PositiveInt, Precision, Probability, Section

#: a cosine-similarity threshold (Udandarao et al. 2024, Sec. 3: samples above it are removed)
Threshold = Annotated[float, Field(ge=-1.0, le=1.0, description="a cosine similarity in [-1, 1]")]


class PixelEmbedder(Section):
    """``kind: pixel``: a model-free thumbnail embedding that finds near-duplicates (``controls.embed``)."""

    kind: Literal["pixel"]
    size: Annotated[int, Field(ge=2, le=64)] = 6


class OpenClipEmbedder(Section):
    """``kind: open_clip``: the image encoder of an ``evaluation.models`` entry (the study used CLIP)."""

    kind: Literal["open_clip"]
    model: Name = Field(description="an evaluation.models entry")
    precision: Precision = "fp32"
    default_threshold: Threshold | None = Field(None, description="this embedder's default cut (else 0.95)")


Embedder = Annotated[PixelEmbedder | OpenClipEmbedder, Field(discriminator="kind")]


class Search(Section):
    """``controls.similarity.search``: how max similarity is searched (``controls.similarity.SearchSettings``)."""

    method: Literal["auto", "exact", "faiss"] = "auto"
    exact_max_test: PositiveInt = 2048
    nlist: PositiveInt | None = Field(None, description="IVF cells; null = sqrt(number of test images)")
    nprobe: PositiveInt = 4
    memory_bytes: PositiveInt = 256 << 20
    seed: NonNegativeInt = 0


class SimilarityControl(Section):
    """``controls.similarity``: remove pretraining samples too similar to a test image, recount, refit, retrain.

    ``corpus`` is an ``image_corpora`` entry: its images are embedded, and the stored hits of its image
    search and of its caption corpus's text search are recounted on the kept samples.
    """

    corpus: Name = Field(description="an image_corpora entry")
    datasets: Annotated[list[Name], Field(min_length=1)] = Field(description="evaluation.datasets entries")
    embedder: Embedder = PixelEmbedder(kind="pixel")
    thresholds: Annotated[list[Threshold], Field(min_length=1)] = Field(
        description="cuts: samples with max similarity above one are removed"
    )
    default_threshold: Threshold | None = Field(
        None, description="the cut for retraining and leak recall (null = the embedder's default)"
    )
    tag_thresholds: Annotated[list[Probability], Field(min_length=1)] = [0.7]
    search: Search = Search()
    batch_size: PositiveInt = 64
    model: Name | None = Field(None, description="the evaluation.models entry whose per-concept scores are refit")
    retrain: bool = Field(False, description="retrain clip_training's CLIP on the corpus pruned at the default cut")
    retrain_epochs: PositiveInt | None = Field(None, description="null = clip_training.epochs")
    leaks: str | None = Field(None, description="a planted-leak truth table (synthetic world: truth/leaks.parquet)")


class Controls(Section):
    """``controls``: the study's controls run on a user's corpus."""

    similarity: SimilarityControl | None = None


class WagUrls(Section):
    """``let_it_wag.images.urls``: URL lists downloaded with img2dataset in its own environment
    (``helpers.controls.download``; ``./run.sh img2dataset-env`` makes it)."""

    lists: NonEmptyStr | Annotated[list[NonEmptyStr], Field(min_length=1)] = Field(
        description="URL list file(s): .csv, .tsv or .parquet; a path, a glob, or a list of them"
    )
    url_column: NonEmptyStr = "url"
    class_column: NonEmptyStr = Field("concept", description="the concept (class) each URL shows")
    python: NonEmptyStr | None = Field(
        None, description="the download environment's python; null = $FDP_IMG2DATASET_PYTHON, else "
        ".venv-img2dataset/bin/python (relative paths: to the project root)",
    )  # fmt: skip
    output_format: Literal["files", "webdataset"] = "files"
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    image_size: PositiveInt | None = Field(None, description="cut the longer side to this; null = keep the size")
    threads: PositiveInt = 16
    processes: PositiveInt = 1
    timeout: PositiveInt = Field(10, description="seconds per URL")
    retries: NonNegativeInt = 0


class WagImages(Section):
    """``let_it_wag.images``: candidate images, from exactly one source: a folder per concept (``root``), URL
    lists downloaded with img2dataset (``urls``), or rendered by a synthetic world (``world``)."""

    root: NonEmptyStr | None = Field(None, description="a folder with one sub-folder per concept")
    urls: WagUrls | None = Field(None, description="URL lists (url and class columns) downloaded with img2dataset")
    world: NonEmptyStr | None = Field(None, description="a synthetic world folder whose renderer draws candidates")
    per_concept: PositiveInt = Field(40, description="candidates rendered per concept (world only)")
    seed: NonNegativeInt = 0

    @model_validator(mode="after")
    def _one_source(self) -> WagImages:
        if sum(v is not None for v in (self.root, self.urls, self.world)) != 1:
            raise ValueError(
                "give exactly one of root (a folder per concept), urls (URL lists) or world (a synthetic world)"
            )
        return self


class CorpusDedup(Section):
    """``let_it_wag.corpus_dedup``: drop candidates that are near-duplicates of a pretraining corpus."""

    embeddings: NonEmptyStr = Field(description="a corpus embedding run folder (controls.embed)")
    embedder: Embedder = PixelEmbedder(kind="pixel")
    threshold: Threshold | None = None


class Outliers(Section):
    """``let_it_wag.outliers``: drop images whose similarity to their class prompt is below ``threshold``."""

    model: Name = Field(description="an evaluation.models entry")
    threshold: Threshold


class LetItWag(Section):
    """``let_it_wag``: a Let It Wag!-style long-tail test set from any counts (``helpers.controls.wag``)."""

    counts: NonEmptyStr = Field(description="a counts table (Parquet) with concept (or name) and count columns")
    data: NonEmptyStr | None = Field(
        None,
        description="the folder DVC tracks for the candidates (the stage reruns when it changes): it must hold "
        "images.root, images.urls.lists or images.world; required in params.yaml (dvc.yaml names it)",
    )
    where: dict[str, str | int | float | bool] = Field({}, description="column -> value: one count type")
    n_concepts: PositiveInt
    min_images: PositiveInt = 1
    per_class: PositiveInt | None = Field(None, description="null = balance to the smallest class")
    seed: NonNegativeInt = 0
    images: WagImages
    phash_distance: NonNegativeInt = 10
    corpus_dedup: CorpusDedup | None = None
    outliers: Outliers | None = None
    out_dir: NonEmptyStr = "data/eval/let_it_wag"
    dataset: Name = Field("let-it-wag", description="the evaluation.datasets entry naming the built set")
    models: list[Name] = Field([], description="evaluation.models entries evaluated on the built set")
    reference: Name | None = Field(None, description="the evaluation.datasets entry on the x axis (the ImageNet role)")


__all__ = [
    "Controls", "CorpusDedup", "Embedder", "LetItWag", "OpenClipEmbedder", "Outliers", "PixelEmbedder", "Search",
    "SimilarityControl", "Threshold", "WagImages", "WagUrls",
]  # fmt: skip
