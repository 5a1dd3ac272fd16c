"""Plant near-duplicates of downstream test images into a synthetic world's pretraining corpus, with ground truth.

Why: the similarity control must be shown to find test-set leakage where it is known. With the world spec's
``leak_rate > 0`` (``helpers.synthetic.world.WorldSpec``), ``generate_world`` calls ``plant_near_duplicates``
after writing the test sets: a seeded ``leak_rate`` fraction of pretraining samples is replaced by a
*near-duplicate* of a classification test image of one of ``leaked_classes`` classes, seeded-chosen among the
rarest quarter of concepts (:func:`rare_pool`) -- a
small crop (``LEAK_CROP``), a colour jitter of brightness, contrast and saturation (``LEAK_JITTER``) and a
JPEG re-encoding (quality ``LEAK_QUALITY``) -- with a caption mentioning that class. Image and caption truth
are rewritten for those samples (they show and mention exactly the leaked class), the concept table's
``shown_count`` / ``mentioned_count`` are recomputed, and ``truth/leaks.parquet`` flags every planted sample::

    sample_id int64, concept_id int32, test_image str (relative to the classification folder),
    crop float64 (kept side fraction), brightness/contrast/saturation float64, quality int32

Off by default (``leak_rate = 0``): the world is then byte-identical to one generated without this module.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageEnhance

from helpers.synthetic.render import rng_stream
from helpers.synthetic.samples import tar_member

LEAK_CROP = (0.92, 0.98)  # kept fraction of each side
LEAK_JITTER = 0.15  # brightness, contrast and saturation factors in [1 - j, 1 + j]
LEAK_QUALITY = (60, 90)


def near_duplicate(image: Image.Image, rng: np.random.Generator, size: int | None = None) -> tuple[bytes, dict]:
    """A near-duplicate of ``image`` as JPEG bytes (crop, colour jitter, re-encoding), and what was done.

    ``size``: output side in pixels (default the input's width). Deterministic given ``rng``.
    """
    image = image.convert("RGB")
    w, h = image.size
    crop = float(rng.uniform(*LEAK_CROP))
    cw, ch = max(1, round(w * crop)), max(1, round(h * crop))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = image.crop((x0, y0, x0 + cw, y0 + ch)).resize((size or w, size or h), Image.Resampling.BICUBIC)
    factors = {}
    for name, enhancer in (("brightness", ImageEnhance.Brightness), ("contrast", ImageEnhance.Contrast),
                           ("saturation", ImageEnhance.Color)):  # fmt: skip
        factors[name] = float(rng.uniform(1 - LEAK_JITTER, 1 + LEAK_JITTER))
        out = enhancer(out).enhance(factors[name])
    quality = int(rng.integers(LEAK_QUALITY[0], LEAK_QUALITY[1] + 1))
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), {"crop": crop, **factors, "quality": quality}


def _replace_pairs(path: Path, leaked: dict[int, int]) -> pa.Table:
    """A truth pair table with the leaked samples' rows replaced by (sample, leaked concept), sorted."""
    table = pq.read_table(path)
    ids = pa.array(np.fromiter(leaked, dtype=np.int64))
    kept = table.filter(pc.invert(pc.is_in(table["sample_id"], value_set=ids)))
    sid = np.concatenate([kept["sample_id"].to_numpy(), np.fromiter(leaked.keys(), np.int64)])
    cid = np.concatenate([kept["concept_id"].to_numpy(), np.fromiter(leaked.values(), np.int32)]).astype(np.int32)
    order = np.lexsort((cid, sid))
    return pa.table({"sample_id": pa.array(sid[order], pa.int64()), "concept_id": pa.array(cid[order], pa.int32())})


def rare_pool(shown_count: np.ndarray, leaked_classes: int) -> np.ndarray:
    """Concept ids the leaked classes are drawn from: the ``max(leaked_classes, ceil(k / 4))`` rarest by true
    image count (ties by id), shape ``(n,)``, ascending count.

    Why the rare ones: the study's worry is a test set leaking into pretraining data for concepts that are
    otherwise rare, so that their zero-shot score looks higher than their frequency predicts (Sec. 3 and the
    sample-similarity control of Udandarao et al. 2024). A few hundred near-duplicates move a rare concept's
    count by a decade or more, but a frequent one's by a few percent, where pruning and retraining could show
    nothing.
    """
    counts = np.asarray(shown_count)
    n = min(len(counts), max(int(leaked_classes), -(-len(counts) // 4)))
    return np.lexsort((np.arange(len(counts)), counts))[:n]


def plant_near_duplicates(
    world_dir: str | os.PathLike,
    *,
    concept_names: Sequence[str],
    n_samples: int,
    leak_rate: float,
    leaked_classes: int,
    image_size: int,
    seed: int,
    classification_root: str | os.PathLike,
) -> dict:
    """Replace ``round(leak_rate * n_samples)`` pretraining samples by near-duplicates of test images.

    Reads ``classification_root/<class_folder>/*.png`` (the world's classification set) and rewrites
    ``world_dir/pretrain/*.tar`` and ``world_dir/truth/*`` in place (module docstring). Returns
    ``{"n_leaked", "leaked_classes" (names), "leaks" (path of truth/leaks.parquet)}``. Raises ``ValueError``
    when a leaked class has no test image.
    """
    from helpers.synthetic.world import CaptionWriter, folder_name  # here: world imports this module lazily

    world, root = Path(world_dir), Path(classification_root)
    rng = rng_stream(seed, "leak")
    k = len(concept_names)
    shown_before = pq.read_table(world / "truth" / "concepts.parquet")["shown_count"].to_numpy()
    pool = rare_pool(shown_before, leaked_classes)
    classes = sorted(int(c) for c in rng.choice(pool, size=min(leaked_classes, len(pool)), replace=False))
    tests = {c: sorted((root / folder_name(concept_names[c])).glob("*.png")) for c in classes}
    empty = [concept_names[c] for c, files in tests.items() if not files]
    if empty:
        raise ValueError(f"synthetic.leaked_classes: no test images to leak for {empty} under {root}")
    n_leak = min(n_samples, round(leak_rate * n_samples))
    chosen = np.sort(rng.choice(n_samples, size=n_leak, replace=False))
    writer = CaptionWriter(list(concept_names), rng_stream(seed, "leak-captions"))
    shards = sorted((world / "pretrain").glob("*.tar"))
    sizes = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            sizes.append(len({m.name.partition(".")[0] for m in tar.getmembers()}))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    rows: dict[str, list] = {k_: [] for k_ in ("sample_id", "concept_id", "test_image", "crop", "brightness",
                                                "contrast", "saturation", "quality")}  # fmt: skip
    leaked: dict[int, int] = {}
    by_shard: dict[int, dict[int, tuple[bytes, str, str]]] = {}
    for i, flat in enumerate(chosen):
        shard = int(np.searchsorted(starts, flat, side="right") - 1)
        pos = int(flat - starts[shard])
        c = classes[i % len(classes)]
        source = tests[c][int(rng.integers(len(tests[c])))]
        with Image.open(source) as img:
            data, how = near_duplicate(img, rng, image_size)
        caption = writer.caption([c], [1])
        sample_id = (shard << 32) | pos
        leaked[sample_id] = c
        by_shard.setdefault(shard, {})[pos] = (data, caption, f"{shard:05d}{pos:04d}")
        for key, value in (("sample_id", sample_id), ("concept_id", c),
                           ("test_image", source.relative_to(root).as_posix()), *how.items()):  # fmt: skip
            rows[key].append(value)
    for shard, replace in by_shard.items():
        _rewrite_tar(shards[shard], {key: (data, caption) for data, caption, key in replace.values()})
    truth = world / "truth"
    for name in ("image_concepts", "caption_concepts"):
        pq.write_table(_replace_pairs(truth / f"{name}.parquet", leaked), truth / f"{name}.parquet")
    concepts = pq.read_table(truth / "concepts.parquet")
    shown = np.bincount(pq.read_table(truth / "image_concepts.parquet")["concept_id"].to_numpy(), minlength=k)
    mentioned = np.bincount(pq.read_table(truth / "caption_concepts.parquet")["concept_id"].to_numpy(), minlength=k)
    concepts = concepts.set_column(concepts.schema.get_field_index("shown_count"), "shown_count",
                                   pa.array(shown.astype(np.int64)))  # fmt: skip
    concepts = concepts.set_column(concepts.schema.get_field_index("mentioned_count"), "mentioned_count",
                                   pa.array(mentioned.astype(np.int64)))  # fmt: skip
    pq.write_table(concepts, truth / "concepts.parquet")
    leaks = pa.table({
        "sample_id": pa.array(rows["sample_id"], pa.int64()), "concept_id": pa.array(rows["concept_id"], pa.int32()),
        "test_image": pa.array(rows["test_image"], pa.string()),
        **{k_: pa.array(rows[k_], pa.float64()) for k_ in ("crop", "brightness", "contrast", "saturation")},
        "quality": pa.array(rows["quality"], pa.int32()),
    })  # fmt: skip
    pq.write_table(leaks, truth / "leaks.parquet")
    return {
        "n_leaked": n_leak,
        "leaked_classes": [concept_names[c] for c in classes],
        "leaks": str(truth / "leaks.parquet"),
    }


def _rewrite_tar(path: Path, replace: dict[str, tuple[bytes, str]]) -> None:
    """Rewrite one tar with the jpg/txt/json members of the ``replace`` keys swapped, order kept."""
    import json

    members: list[tuple[str, bytes]] = []
    with tarfile.open(path) as tar:
        for member in tar:
            data = tar.extractfile(member).read() if member.isfile() else b""
            key, _, ext = member.name.partition(".")
            if key in replace:
                image, caption = replace[key]
                if ext == "jpg":
                    data = image
                elif ext == "txt":
                    data = caption.encode("utf-8")
                elif ext == "json":
                    data = json.dumps({"caption": caption, "key": key}, ensure_ascii=False).encode("utf-8")
            members.append((member.name, data))
    tmp = path.with_name(f".{path.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            tar_member(tar, name, data)
    os.replace(tmp, path)


__all__ = ["LEAK_CROP", "LEAK_JITTER", "LEAK_QUALITY", "near_duplicate", "plant_near_duplicates"]
