"""Let It Wag! builder: concept selection, filtering steps, the webdataset output read back by evaluation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from helpers.controls import embed, wag
from helpers.evaluation.datasets import load_dataset
from helpers.shards import ConfigError


def pattern(seed: int, size: int = 64) -> Image.Image:
    """A distinct image per seed (random rectangles on a random background)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.integers(0, size - 8, 2)
        x1, y1 = np.array([x0, y0]) + rng.integers(6, size // 2, 2)
        draw.rectangle([int(x0), int(y0), int(x1), int(y1)], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def save(image: Image.Image, path: Path, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


# ----------------------------------------------------------------------------------- selection


def test_select_concepts_least_frequent_with_enough_images():
    counts = pd.DataFrame(
        {
            "concept": ["Cat", "dog", "snow_leopard", "axolotl", "okapi", "cat"],
            "count": [900, 800, 3, 1, 2, 900],
            "method": ["m"] * 5 + ["other"],
        }  # fmt: skip
    )
    got = wag.select_concepts(counts, 2, min_images=5, candidates={"axolotl": 2, "okapi": 9, "snow leopard": 7},
                              where={"method": "m"})  # fmt: skip
    assert got["concept"].tolist() == ["okapi", "snow leopard"]  # axolotl is rarer but has too few images
    assert got["rank"].tolist() == [1, 2] and got["count"].tolist() == [2, 3]
    assert wag.select_concepts(counts, 1, where={"method": "m"})["concept"].tolist() == ["axolotl"]
    with pytest.raises(ConfigError, match=r"let_it_wag\.where\.pretrain"):
        wag.select_concepts(counts, 2, where={"pretrain": "x"})
    with pytest.raises(ConfigError, match=r"let_it_wag\.n_concepts"):
        wag.select_concepts(counts, 0)
    with pytest.raises(ConfigError, match=r"let_it_wag\.min_images"):
        wag.select_concepts(counts, 2, min_images=3)


def test_release_overlap_with_the_published_classes(release_copy):
    from helpers.release import tidy

    published = wag.read_class_list(release_copy / "let_it_wag_datasets" / "let_it_wag_class_list.txt")
    assert len(published) >= 289 and "acadian flycatcher" in published
    counts = tidy.frequencies(release_copy, progress=False)
    where = {"pretrain": "laion400m", "method": "integrated_tlemmatized_i0.7"}  # the study's matched counts
    selection = wag.select_concepts(counts, 290, where=where)
    overlap = wag.release_overlap(selection["concept"], published)
    assert overlap["n_selected"] == len(selection) == 290
    assert selection["count"].is_monotonic_increasing
    rest = counts[(counts["pretrain"] == "laion400m") & (counts["method"] == where["method"])]
    assert selection["count"].max() <= rest["count"].quantile(0.5)  # the rare end of the distribution
    assert 0 < overlap["n_overlap"] <= 290  # reported, not asserted to a number: it depends on the count type
    assert set(overlap["overlap"]) <= set(published)


# ----------------------------------------------------------------------------------- building


@pytest.fixture
def candidates(tmp_path) -> dict:
    """cat: 6 distinct + 2 near-copies + 1 corrupt; dog: 5 distinct; emu: 1 image (too few)."""
    root = tmp_path / "images"
    for i in range(6):
        save(pattern(i), root / "cat" / f"{i}.png")
    save(pattern(0).resize((60, 60)), root / "cat" / "copy0.png")
    save(pattern(1), root / "cat" / "copy1.jpg", "JPEG")
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    for i in range(5):
        save(pattern(100 + i), root / "dog" / f"{i}.jpg", "JPEG")
    save(pattern(200), root / "emu" / "0.png")
    return wag.folder_candidates(root, ["cat", "dog", "emu", "yak"])


def test_build_filters_counts_and_writes_an_evaluation_dataset(candidates, tmp_path):
    assert candidates["yak"] == [] and len(candidates["cat"]) == 9
    result = wag.build_let_it_wag(candidates, tmp_path / "out", min_images=3, seed=1)
    assert result["classes"] == ["cat", "dog"]
    assert set(result["dropped"]) == {"emu", "yak"}
    sheet = json.loads(Path(result["datasheet"]).read_text())
    assert sheet["per_class"]["cat"] == {"candidates": 9, "decodable": 8, "phash_dedup": 6, "corpus_dedup": 6,
                                         "outliers": 6, "min_images": 6, "balanced": 5}  # fmt: skip
    assert sheet["corrupt_skipped"] == {"cat": 1}
    assert sheet["per_class"]["dog"]["balanced"] == 5
    ds = load_dataset(result["dataset"], lambda im: torch.zeros(3, 4, 4), name="wag")
    assert ds.class_names == ["cat", "dog"] and ds.n == 10
    assert np.bincount(ds.labels).tolist() == [5, 5]
    wag.build_let_it_wag(candidates, tmp_path / "again", min_images=3, seed=1)
    assert (tmp_path / "out" / "00000.tar").read_bytes() == (tmp_path / "again" / "00000.tar").read_bytes()


def test_corpus_near_duplicates_are_removed(candidates, tmp_path):
    corpus = tmp_path / "corpus.tar"
    import tarfile

    with tarfile.open(corpus, "w") as tar:
        for i, image in enumerate([pattern(2), pattern(103), pattern(999)]):
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=95)
            info = tarfile.TarInfo(f"{i:04d}.jpg")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    embedder = embed.PixelEmbedder()
    embed.embed_corpus({"paths": str(corpus)}, embedder, tmp_path / "emb", progress=False)
    result = wag.build_let_it_wag(candidates, tmp_path / "out", min_images=3, corpus_embed_dir=tmp_path / "emb",
                                  corpus_embedder=embedder)  # fmt: skip
    sheet = json.loads(Path(result["datasheet"]).read_text())["per_class"]
    assert sheet["cat"]["corpus_dedup"] == 5 and sheet["dog"]["corpus_dedup"] == 4
    with pytest.raises(ConfigError, match=r"let_it_wag\.corpus_dedup\.threshold: .*\[-1, 1\]"):
        wag.build_let_it_wag(candidates, tmp_path / "x", corpus_embed_dir=tmp_path / "emb", corpus_embedder=embedder,
                             corpus_threshold=1.5)  # fmt: skip


def test_outlier_threshold_is_checked_and_applied(candidates, tmp_path):
    import open_clip

    from helpers.evaluation.models import load_model

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
              "head_width": 16}, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
              "layers": 1}}  # fmt: skip
    path = tmp_path / "wag-tiny-vit.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    torch.save(open_clip.create_model("wag-tiny-vit").state_dict(), tmp_path / "w.pt")
    model = load_model({"model_config": str(path), "pretrained": str(tmp_path / "w.pt")})
    with pytest.raises(ConfigError, match=r"let_it_wag\.outliers\.threshold"):
        wag.build_let_it_wag(candidates, tmp_path / "x", outlier_model=model, outlier_threshold=-3)
    keep_all = wag.build_let_it_wag(candidates, tmp_path / "a", min_images=3, outlier_model=model,
                                    outlier_threshold=-1.0)  # fmt: skip
    assert keep_all["classes"] == ["cat", "dog"]
    with pytest.raises(ValueError, match="no class has"):
        wag.build_let_it_wag(candidates, tmp_path / "b", min_images=3, outlier_model=model, outlier_threshold=1.0)


def test_phash_dedup_uses_the_studys_distance():
    a = pattern(7)
    images = [a, a.resize((50, 50)), pattern(8)]
    assert wag.phash_dedup(images).tolist() == [0, 2]
    assert wag.phash_dedup(images, max_distance=-1).tolist() == [0, 1, 2]
