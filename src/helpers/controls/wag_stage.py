"""The Let It Wag! builder as one stage: params ``let_it_wag`` -> concept selection, candidates, the test set.

Udandarao et al. 2024, Sec. 6: a test set of the concepts the counts say are rarest. ``build_from_params``
reads any counts table (a corpus's ``frequencies.parquet``, ``text_counts.parquet`` or the release's tidy
counts), selects the ``n_concepts`` least frequent of one count type (``where``) that have at least
``min_images`` candidates, gathers the candidates -- a folder per concept (``images.root``), URL lists
downloaded with img2dataset in its own environment (``images.urls``, ``helpers.controls.download``) or, for a
synthetic world, freshly rendered single-concept scenes from the world's own renderer (``images.world``;
seeded, never the world's test images) -- and filters and writes them with ``wag.build_let_it_wag``.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from helpers import paths, schemas
from helpers.controls import download
from helpers.controls.embed import make_embedder
from helpers.controls.wag import (
    build_let_it_wag,
    folder_candidates,
    normalise_concept,
    release_overlap,
    select_concepts,
)
from helpers.evaluation.models import load_model
from helpers.evaluation.pair import resolve_spec_paths
from helpers.params import ConfigError, validate
from helpers.params.controls import LetItWag
from helpers.synthetic.render import Renderer, make_signatures, rng_stream
from helpers.synthetic.world import WorldSpec, folder_name

PREFIX = "let_it_wag"


def world_spec(world_dir: str | os.PathLike) -> WorldSpec:
    """The spec a synthetic world was generated with (its ``world.json``); a missing file names the key."""
    path = Path(world_dir) / "world.json"
    if not path.is_file():
        raise ConfigError(f"{PREFIX}.images.world: {path} not found (run the synthetic_world stage)")
    return WorldSpec.from_params(json.loads(path.read_text(encoding="utf-8"))["spec"])


def render_world_candidates(
    world_dir: str | os.PathLike, concepts: list[str], per_concept: int, seed: int, out_root: str | os.PathLike
) -> dict[str, list[Path]]:
    """``per_concept`` new single-concept scenes (PNG) of each concept drawn by the world's renderer.

    Seeded by ``seed`` and the concept's name, in a random stream of its own (not the test sets' stream), so
    the candidates are new images of the world's concepts. Written to ``out_root/<concept folder>/``.
    Raises ``ConfigError`` naming ``let_it_wag.images.world`` for a concept the world does not have.
    """
    spec = world_spec(world_dir)
    names = spec.concept_names
    unknown = [c for c in concepts if c not in names]
    if unknown:
        raise ConfigError(f"{PREFIX}.images.world: concepts {unknown[:5]} are not in the world ({world_dir})")
    renderer = Renderer(make_signatures(len(names), spec.seed), spec.image_size)
    root = Path(out_root)
    for concept in concepts:
        folder = root / folder_name(concept)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        rng = rng_stream(seed, f"let-it-wag/{concept}")
        for j in range(per_concept):
            image = renderer.draw([names.index(concept)], [1], rng)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            (folder / f"{j:05d}.png").write_bytes(buffer.getvalue())
    return folder_candidates(root, concepts)


def read_counts(path: str | os.PathLike) -> pd.DataFrame:
    """A counts table (Parquet) with ``concept`` (or ``name``) and ``count`` columns."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{PREFIX}.counts: {path} not found")
    return pd.read_parquet(path)


def _source(spec: LetItWag) -> str:
    return str(spec.images.world or spec.images.root or (spec.images.urls.lists if spec.images.urls else ""))


def _check_selection(selection: pd.DataFrame, spec: LetItWag) -> None:
    if selection.empty:
        raise ConfigError(
            f"{PREFIX}.counts: no concept of {spec.counts} (where {spec.where}) has >= {spec.min_images} candidate "
            f"images in {_source(spec)}"
        )


def _add_to_datasheet(path: str | os.PathLike, key: str, value: Any) -> None:
    """Add ``key`` to the datasheet ``wag.build_let_it_wag`` wrote."""
    sheet = json.loads(Path(path).read_text(encoding="utf-8"))
    sheet[key] = value
    Path(path).write_text(json.dumps(sheet, indent=1) + "\n", encoding="utf-8")


def selection_shortfall(selection: pd.DataFrame, spec: LetItWag) -> str | None:
    """Why fewer than ``n_concepts`` concepts were selected (a message naming the key), or ``None``.

    Only concepts with at least ``min_images`` candidates are eligible, so a corpus with few rare concepts
    that have images yields a smaller set; that is reported, not silent.
    """
    if len(selection) >= spec.n_concepts:
        return None
    return (
        f"{PREFIX}.n_concepts: only {len(selection)} of {spec.n_concepts} concepts of {spec.counts} "
        f"(where {spec.where}) have >= {spec.min_images} candidate images in {_source(spec)}; the set has "
        f"{len(selection)} classes"
    )


def url_candidates(
    spec: LetItWag, counts: pd.DataFrame, out_dir: Path, base: Path
) -> tuple[pd.DataFrame, dict[str, list[Path]], pd.DataFrame]:
    """Select concepts by their number of listed URLs, then download only theirs with img2dataset.

    The download environment is checked (``download.find_python``) before anything is read or fetched.
    Class names are normalised (``wag.normalise_concept``), as for a folder per concept. Images go to
    ``<out_dir>_candidates`` (replaced). Returns (selection, class -> image paths, the
    ``schemas.LET_IT_WAG_DOWNLOAD`` table of downloads and counted skips per class).
    """
    urls_spec = spec.images.urls
    python = download.find_python(urls_spec.python)
    lists = paths.resolve(urls_spec.lists, base)
    urls = download.read_url_lists(lists, urls_spec.url_column, urls_spec.class_column)
    listed = urls["class"].map(normalise_concept).value_counts().to_dict()
    selection = select_concepts(counts, spec.n_concepts, min_images=spec.min_images, candidates=listed,
                                where=spec.where)  # fmt: skip
    _check_selection(selection, spec)
    chosen = selection["concept"].tolist()
    urls = urls.assign(**{"class": urls["class"].map(normalise_concept)})
    settings = urls_spec.model_dump(include={"output_format", "encode_format", "image_size", "threads", "processes",
                                             "timeout", "retries"})  # fmt: skip
    found, skips = download.download_candidates(urls, chosen, out_dir.parent / f"{out_dir.name}_candidates", python,
                                                settings)  # fmt: skip
    return selection, {c: found[c] for c in chosen}, skips


def build_from_params(
    section: Mapping[str, Any] | LetItWag,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    base: str | os.PathLike | None = None,
    published: list[str] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Select, gather, filter and write the test set of params ``let_it_wag`` (``models``: evaluation.models).

    Returns ``wag.build_let_it_wag``'s result plus ``selection`` (rank, concept, count, candidates) and, with
    ``published`` (the release's class list), ``overlap`` (``wag.release_overlap``); where fewer than
    ``n_concepts`` concepts had enough candidates, ``shortfall`` (:func:`selection_shortfall`, also warned and
    in the datasheet); from URL lists also
    ``downloads`` (per class: URLs, downloaded, failed downloads and undecodable images -- counted skips, also
    in ``out_dir/downloads.parquet`` and the datasheet). The download environment, the embedder of
    ``corpus_dedup`` and the ``outliers`` model are loaded before any image is read.
    """
    spec = validate(LetItWag, section, PREFIX)
    base = Path(base) if base is not None else paths.workdir()
    models = {k: resolve_spec_paths(v, "model", base) for k, v in (models or {}).items()}
    counts = read_counts(paths.resolve(spec.counts, base))
    out_dir = Path(paths.resolve(spec.out_dir, base))
    embedder = outlier_model = downloads = None
    if spec.corpus_dedup is not None:
        embedder = make_embedder(spec.corpus_dedup.embedder, models, device, key=f"{PREFIX}.corpus_dedup.embedder")
    if spec.outliers is not None:
        if spec.outliers.model not in models:
            raise ConfigError(f"{PREFIX}.outliers.model: {spec.outliers.model!r} is not an entry of evaluation.models")
        outlier_model = load_model(models[spec.outliers.model], device)
    if spec.images.world is not None:
        world = paths.resolve(spec.images.world, base)
        have = dict.fromkeys(world_spec(world).concept_names, spec.images.per_concept)
        selection = select_concepts(counts, spec.n_concepts, min_images=spec.min_images, candidates=have,
                                    where=spec.where)  # fmt: skip
        _check_selection(selection, spec)
        world_names = {n.lower(): n for n in have}
        chosen = [world_names.get(c, c) for c in selection["concept"]]
        candidates = render_world_candidates(world, chosen, spec.images.per_concept, spec.images.seed,
                                             out_dir.parent / f"{out_dir.name}_candidates")  # fmt: skip
    elif spec.images.urls is not None:
        selection, candidates, downloads = url_candidates(spec, counts, out_dir, base)
    else:
        root = paths.resolve(spec.images.root, base)
        names = counts["concept" if "concept" in counts.columns else "name"].astype(str).unique().tolist()
        found = folder_candidates(root, names)
        selection = select_concepts(counts, spec.n_concepts, min_images=spec.min_images,
                                    candidates={k: len(v) for k, v in found.items()}, where=spec.where)  # fmt: skip
        _check_selection(selection, spec)
        by_norm = {k.lower(): v for k, v in found.items()}
        candidates = {c: by_norm.get(c, found.get(c, [])) for c in selection["concept"]}
    result = build_let_it_wag(
        candidates, out_dir, min_images=spec.min_images, per_class=spec.per_class, seed=spec.seed,
        phash_distance=spec.phash_distance,
        corpus_embed_dir=paths.resolve(spec.corpus_dedup.embeddings, base) if spec.corpus_dedup else None,
        corpus_embedder=embedder, corpus_threshold=spec.corpus_dedup.threshold if spec.corpus_dedup else None,
        outlier_model=outlier_model, outlier_threshold=spec.outliers.threshold if spec.outliers else None,
    )  # fmt: skip
    result["selection"] = selection
    shortfall = selection_shortfall(selection, spec)
    if shortfall is not None:  # reported in the result, the datasheet and as a warning (shown by the notebook)
        warnings.warn(shortfall, stacklevel=2)
        result["shortfall"] = shortfall
        _add_to_datasheet(result["datasheet"], "shortfall", shortfall)
    if downloads is not None:
        result["downloads"] = downloads
        schemas.write_table(downloads, schemas.LET_IT_WAG_DOWNLOAD, out_dir / "downloads.parquet")
        _add_to_datasheet(result["datasheet"], "downloads",
                          {r["class"]: {k: r[k] for k in ("urls", "downloaded", "failed_download", "failed_decode")}
                           for r in downloads.to_dict("records")})  # fmt: skip
    if published is not None:
        result["overlap"] = release_overlap(selection["concept"].tolist(), published)
    return result


__all__ = [
    "build_from_params",
    "read_counts",
    "render_world_candidates",
    "selection_shortfall",
    "url_candidates",
    "world_spec",
]
