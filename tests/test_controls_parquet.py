"""The generic Parquet image-dataset format of ``evaluation.datasets`` (``format: parquet``)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from helpers.evaluation.datasets import load_dataset
from helpers.shards import ConfigError

COLOURS = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]


def png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def mean_colour(image: Image.Image) -> torch.Tensor:
    return torch.tensor(np.asarray(image, dtype=np.float32).mean(axis=(0, 1)))


def images_of(ds) -> dict[int, torch.Tensor]:
    return dict(iter(ds.images))


def test_hugging_face_style_struct_column_and_name_labels(tmp_path):
    rows = [(0, "red"), (2, "blue"), (1, "green"), (0, "red")]
    image = pa.array([{"bytes": png(COLOURS[c]), "path": f"{i}.png"} for i, (c, _) in enumerate(rows)])
    pq.write_table(pa.table({"image": image, "label": [c for c, _ in rows]}), tmp_path / "a.parquet", row_group_size=2)
    pq.write_table(pa.table({"image": pa.array([{"bytes": png(COLOURS[1]), "path": "x"}]), "label": [1]}),
                   tmp_path / "b.parquet")  # fmt: skip
    spec = {"format": "parquet", "paths": str(tmp_path), "class_names": ["red", "green", "blue"]}
    ds = load_dataset(spec, mean_colour, name="wag")
    assert ds.n == 5 and ds.labels.tolist() == [0, 2, 1, 0, 1] and ds.class_names == ["red", "green", "blue"]
    got = images_of(ds)
    for i, label in enumerate(ds.labels):
        assert int(got[i].argmax()) == label


def test_binary_column_string_labels_and_skips(tmp_path):
    table = pa.table(
        {
            "jpg": pa.array([png(COLOURS[0]), None, png(COLOURS[2]), png(COLOURS[1])], pa.binary()),
            "cls": ["red", "green", None, "green"],
        }
    )
    pq.write_table(table, tmp_path / "x.parquet")
    spec = {"format": "parquet", "paths": str(tmp_path / "*.parquet"), "image_column": "jpg", "label_column": "cls",
            "class_names": ["red", "green", "blue"]}  # fmt: skip
    with pytest.warns(UserWarning, match="left out rows"):
        ds = load_dataset(spec, mean_colour, name="p")
    assert ds.labels.tolist() == [0, 1] and ds.stats == {"samples": 4, "no_image": 1, "no_annotation": 1, "kept": 2}


def test_errors_name_the_key(tmp_path):
    pq.write_table(pa.table({"image": pa.array([png(COLOURS[0])]), "label": [5]}), tmp_path / "x.parquet")
    base = {"format": "parquet", "paths": str(tmp_path / "x.parquet"), "class_names": ["a", "b"]}
    with pytest.raises(ConfigError, match=r"evaluation\.datasets\.d\.label_column: .*no column 'lbl'"):
        load_dataset({**base, "label_column": "lbl"}, mean_colour, name="d")
    with pytest.raises(ConfigError, match=r"evaluation\.datasets\.d\.paths: no Parquet file"):
        load_dataset({**base, "paths": str(tmp_path / "none*.parquet")}, mean_colour, name="d")
    with pytest.raises(ConfigError, match=r"evaluation\.datasets\.d\.class_names: missing"):
        load_dataset({"format": "parquet", "paths": str(tmp_path)}, mean_colour, name="d")
    with pytest.raises(ConfigError, match=r"evaluation\.datasets\.d\.label_key: unknown key"):
        load_dataset({**base, "label_key": "cls"}, mean_colour, name="d")
    with pytest.raises(ValueError, match="label 5, outside 0..1"):
        load_dataset(base, mean_colour, name="d")
    (tmp_path / "bad.parquet").write_bytes(b"nope")
    with pytest.raises(ConfigError, match=r"paths: .*bad\.parquet: not a readable Parquet"):
        load_dataset({**base, "paths": str(tmp_path / "bad.parquet")}, mean_colour, name="d")
