"""Benchmark of the image search (``helpers.images.search``) against a naive one-image-at-a-time baseline.

Generates a webdataset tar of N 256x256 JPEGs (seeded: smooth colour fields with noise and shapes, so the
files are photo-sized, ~10-20 kB), builds a tiny open_clip ViT tagger locally (ViT-Ti/16-like image tower,
a 2-layer text tower, random weights, no download; concepts are embedded once with open_clip's bundled
tokenizer) and reports, on this machine:

* decode only: the DataLoader pipeline of ``imagesearch.ShardImages`` (JPEG decode + open_clip's 224 px
  preprocessing in worker processes, batches by block) without a model -- the decoding ceiling;
* model only: ``Tagger.scores`` on an already decoded batch, repeated -- the model ceiling;
* the pipeline: ``run_image_search`` (serial executor, decode workers, batches), with the shard's
  ``seconds_wait_decode`` / ``seconds_model`` split;
* the naive baseline in the same run: for each sample, decode, preprocess and score it alone, no workers,
  no batching; and the largest difference between its probabilities and the pipeline's.

``--swin-fp16`` additionally runs a Swin-L/384 backbone (timm ``swin_large_patch4_window12_384``, random
weights) at fp16 with channels_last on CUDA over the same tar decoded at 384 px, and says whether the GPU or
the decoding is the bottleneck; without a GPU it prints "unmeasured: no GPU".

    python benchmarks/bench_imagesearch.py [--n 2000] [--batch-size 64] [--workers 0 1 2] [--swin-fp16]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from helpers.images.search import run_image_search
from helpers.images.sources import ShardImages, decode_image
from helpers.shards import read_shard_stats
from helpers.text.captions import iter_tar_samples

# ------------------------------------------------------------------------------------------ data


def synthetic_jpeg(rng: np.random.Generator, size: int = 256) -> bytes:
    """A photo-like JPEG: a smooth colour field, noise and a few shapes (compresses like a real photo)."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(x * rng.uniform(1, 6) + rng.uniform(0, 6)) for _ in range(3)], axis=-1)
    base = (base * 0.5 + 0.5) * rng.uniform(60, 200) + rng.normal(0, 12, (size, size, 3))
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.integers(0, size - 40, 2)
        w, h = rng.integers(20, 120, 2)
        draw.ellipse([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_tar(path: Path, n: int, seed: int = 0) -> int:
    """A webdataset tar with a .txt and a .jpg per sample; returns its size in bytes."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w") as tar:
        for i in tqdm(range(n), desc="generate", unit="img", leave=False):
            for ext, data in (("txt", f"sample {i}".encode()), ("jpg", synthetic_jpeg(rng))):
                info = tarfile.TarInfo(f"{i:08d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path.stat().st_size


# ------------------------------------------------------------------------------------- the tagger


class TinyClipTagger:
    """A Tagger over a tiny open_clip ViT with random weights: prob = sigmoid((cos - 0.1) / 0.02).

    Built in memory (``open_clip.CLIP`` with explicit tower configs), so nothing is downloaded; the numbers
    measure the pipeline, not tagging quality.
    """

    backend = "open_clip_tiny"

    def __init__(self, n_concepts: int = 1000, seed: int = 0) -> None:
        import open_clip

        torch.manual_seed(seed)
        self.seed = seed
        self.model = open_clip.CLIP(
            embed_dim=256,
            vision_cfg=open_clip.CLIPVisionCfg(image_size=224, patch_size=16, width=192, layers=6, head_width=64),
            text_cfg=open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=256, heads=4, layers=2),
        ).eval()
        self.image_size = 224
        self.concepts = [f"concept number {i}" for i in range(n_concepts)]
        self._transform = open_clip.image_transform(224, is_train=False)
        with torch.inference_mode():
            text = self.model.encode_text(open_clip.tokenize([f"a photo of a {c}." for c in self.concepts]))
            self.text = torch.nn.functional.normalize(text, dim=-1)

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return self._transform

    def to(self, device: str | torch.device) -> TinyClipTagger:
        self.model.to(device)
        self.text = self.text.to(device)
        return self

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.nn.functional.normalize(self.model.encode_image(images), dim=-1)
        return torch.sigmoid((features @ self.text.T - 0.1) / 0.02).float().cpu()

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.backend, "seed": self.seed, "n_concepts": len(self.concepts)}


def tiny_clip_tagger() -> TinyClipTagger:
    return TinyClipTagger()


class SwinTagger:
    """Swin-L/384 (timm, random weights) with a 1000-way sigmoid head, at 384 px."""

    backend = "swin_large_384"

    def __init__(self) -> None:
        import timm
        from timm.data import create_transform, resolve_data_config

        self.model = timm.create_model("swin_large_patch4_window12_384", pretrained=False).eval()
        self.image_size = 384
        self.concepts = [f"class {i}" for i in range(self.model.num_classes)]
        self._transform = create_transform(**resolve_data_config({}, model=self.model))

    def transform(self):
        return self._transform

    def to(self, device):
        self.model.to(device)
        return self

    def channels_last(self) -> None:
        self.model.to(memory_format=torch.channels_last)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(images).float()).cpu()

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.backend, "weights": "random"}


# ------------------------------------------------------------------------------------ measurements


def decode_only(path: str, transform, batch_size: int, workers: int) -> float:
    """Images/s of the decode pipeline alone (the DataLoader over ShardImages, no model)."""
    loader = DataLoader(ShardImages(path, ("jpg",), transform, batch_size), batch_size=None, num_workers=workers)
    started, n = time.perf_counter(), 0
    for item in loader:
        if not item["end"]:
            n += len(item["positions"])
    return n / (time.perf_counter() - started)


def model_only(
    tagger, batch_size: int, device: str, repeats: int, precision: str = "fp32", channels_last: bool = False
) -> float:
    """Images/s of ``Tagger.scores`` on one decoded batch (after a warm-up call)."""
    x = torch.randn(batch_size, 3, tagger.image_size, tagger.image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    ctx = (
        (lambda: torch.autocast(device.split(":")[0], dtype=dtype))
        if dtype
        else (lambda: torch.autocast(device.split(":")[0], enabled=False))
    )
    with torch.inference_mode(), ctx():
        tagger.scores(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            tagger.scores(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return repeats * batch_size / (time.perf_counter() - started)


def pipeline(
    folder: Path,
    out: Path,
    factory,
    *,
    batch_size: int,
    workers: int,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool | None = None,
    threads: int | None = None,
) -> dict:
    """``run_image_search`` on the tar; images/s and the shard's decode-wait / model split."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = run_image_search(
        {"paths": str(folder / "*.tar")},
        factory,
        out,
        {
            "prob_floor": 0.5,
            "batch_size": batch_size,
            "num_workers": workers,
            "device": device,
            "precision": precision,
            "channels_last": channels_last,
            "torch_threads": threads,
            "executor": "serial",
        },
        progress=False,
    )
    total = time.perf_counter() - started
    assert result.ok, result.failed
    stats = read_shard_stats(out, 0)
    seconds = result.records[0]["seconds"]  # the shard's wall time, without building the model
    return {
        "images": stats["images"],
        "seconds": seconds,
        "images_per_s": stats["images"] / seconds,
        "setup_s": total - seconds,
        "wait_decode_s": stats["seconds_wait_decode"],
        "model_s": stats["seconds_model"],
        "decode_cpu_s": stats["seconds_decode_cpu"],
    }


def naive(path: str, tagger, limit: int | None) -> tuple[float, dict[int, np.ndarray], float, float]:
    """One image at a time, in this process: decode, preprocess, score. (images/s, probs, decode s, model s)."""
    transform = tagger.transform()
    probs, t_decode, t_model = {}, 0.0, 0.0
    started = time.perf_counter()
    with torch.inference_mode():
        for sample in iter_tar_samples(path, {"jpg"}):
            if limit is not None and sample.position >= limit:
                break
            t0 = time.perf_counter()
            x = transform(decode_image(sample.files["jpg"]))[None]
            t1 = time.perf_counter()
            probs[sample.position] = tagger.scores(x)[0].numpy()
            t_model += time.perf_counter() - t1
            t_decode += t1 - t0
    return len(probs) / (time.perf_counter() - started), probs, t_decode, t_model


def max_prob_difference(out: Path, reference: dict[int, np.ndarray], floor: float = 0.5) -> tuple[float, int]:
    """Largest |p_pipeline - p_naive| over the stored pairs, and pairs whose side of the floor differs."""
    table = pq.read_table(next((out / "shards").glob("*.scores.parquet"))).to_pandas()
    table = table[table["sample_id"].isin(list(reference))]
    diff = max((abs(p - reference[s][c]) for s, c, p in table.itertuples(index=False)), default=0.0)
    stored = set(zip(table["sample_id"], table["concept_id"]))
    naive_pairs = {(s, c) for s, p in reference.items() for c in np.flatnonzero(p >= np.float32(floor))}
    return float(diff), len(stored ^ naive_pairs)


# ------------------------------------------------------------------------------------------ main


def best_of(fn: Callable[[], float], k: int) -> float:
    """The best of ``k`` throughput measurements (a shared machine is noisy; the best is the least disturbed)."""
    return max(fn() for _ in range(max(k, 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="images in the generated tar")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="decode-only and model-only timings: best of this many")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader decode workers to try")
    parser.add_argument("--baseline-n", type=int, default=None, help="images for the naive baseline (default all)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default torch's)")
    parser.add_argument("--swin-fp16", action="store_true", help="also time Swin-L/384 at fp16 on CUDA")
    parser.add_argument("--swin-batch-size", type=int, default=128)
    parser.add_argument("--swin-workers", type=int, default=None, help="decode workers for Swin (default: cores - 1)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the tar goes (default: a temp folder)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="bench_imagesearch_")) if args.workdir is None else args.workdir
    folder = tmp / "tars"
    folder.mkdir(parents=True, exist_ok=True)
    tar_path = folder / "00000.tar"
    size = write_tar(tar_path, args.n)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads, CUDA: {torch.cuda.is_available()}"
    )
    print(f"data: {args.n} JPEGs 256x256 in one tar, {size / args.n / 1024:.1f} kB per sample")

    tagger = TinyClipTagger()
    n_params = sum(p.numel() for p in tagger.model.visual.parameters())
    print(
        f"tagger: tiny open_clip ViT (image tower {n_params / 1e6:.1f} M params, 224 px, "
        f"{len(tagger.concepts)} concepts), CPU fp32, batch {args.batch_size}\n"
    )

    for w in args.workers:
        rate = best_of(lambda w=w: decode_only(str(tar_path), tagger.transform(), args.batch_size, w), args.repeats)
        print(f"decode only, {w} workers:  {rate:8.1f} images/s")
    for bs in sorted({1, 8, 32, 64, args.batch_size}):
        rate = best_of(lambda bs=bs: model_only(tagger, bs, "cpu", max(2, 256 // bs)), args.repeats)
        print(f"model only, batch {bs:3d}:  {rate:8.1f} images/s")
    print()

    runs = {}
    for w in args.workers:
        r = runs[w] = pipeline(
            folder, tmp / f"out_w{w}", tiny_clip_tagger, batch_size=args.batch_size, workers=w, threads=args.threads
        )
        print(
            f"pipeline, {w} workers: {r['images_per_s']:8.1f} images/s ({r['images']} images in {r['seconds']:.1f} s "
            f"+ {r['setup_s']:.1f} s model build; "
            f"waiting for decoded batches {r['wait_decode_s']:.1f} s, model {r['model_s']:.1f} s, "
            f"decode CPU time in workers {r['decode_cpu_s']:.1f} s)"
        )

    rate, reference, t_decode, t_model = naive(str(tar_path), tagger, args.baseline_n)
    print(
        f"\nnaive baseline (1 image at a time, no workers): {rate:8.1f} images/s "
        f"({len(reference)} images; decode+preprocess {t_decode:.1f} s, model {t_model:.1f} s)"
    )
    print(
        f"  where time goes: {100 * t_decode / (t_decode + t_model):.0f}% decoding+preprocessing, "
        f"{100 * t_model / (t_decode + t_model):.0f}% model"
    )
    best_w = max(runs, key=lambda w: runs[w]["images_per_s"])
    top = runs[best_w]
    print(f"speed-up of the pipeline ({best_w} workers) over the naive baseline: {top['images_per_s'] / rate:.2f}x")
    diff, flipped = max_prob_difference(tmp / f"out_w{best_w}", reference)
    print(f"batched vs one-at-a-time probabilities: max |diff| {diff:.2e}, pairs on different sides of 0.5: {flipped}")
    waited = top["wait_decode_s"] / max(top["seconds"], 1e-9)
    print(
        f"where time goes (pipeline, {best_w} workers): {100 * top['model_s'] / top['seconds']:.0f}% of the wall time "
        f"in the model, {100 * waited:.0f}% waiting for decoded batches; decoding itself took "
        f"{top['decode_cpu_s']:.1f} s of CPU time ({100 * top['decode_cpu_s'] / max(top['decode_cpu_s'] + top['model_s'], 1e-9):.0f}% "
        f"of decode + model time)"
    )

    print()
    if not args.swin_fp16:
        print("Swin-L/384 fp16: not requested (--swin-fp16)")
    elif not torch.cuda.is_available():
        print("Swin-L/384 fp16: unmeasured: no GPU")
    else:
        swin_bench(folder, tmp, args)
    if args.workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)


def swin_bench(folder: Path, tmp: Path, args: argparse.Namespace) -> None:
    """Swin-L/384 at fp16 + channels_last on CUDA over the same tar: GPU ceiling, decode ceiling, pipeline."""
    workers = args.swin_workers if args.swin_workers is not None else max((os.cpu_count() or 2) - 1, 1)
    swin = SwinTagger().to("cuda")
    swin.channels_last()
    gpu = model_only(swin, args.swin_batch_size, "cuda", 20, precision="fp16", channels_last=True)
    dec = decode_only(str(folder / "00000.tar"), swin.transform(), args.swin_batch_size, workers)
    run = pipeline(
        folder,
        tmp / "out_swin",
        SwinTagger,
        batch_size=args.swin_batch_size,
        workers=workers,
        device="cuda",
        precision="fp16",
        channels_last=True,
    )
    bottleneck = "GPU (model)" if gpu < dec else "decoding (CPU)"
    print(f"Swin-L/384 fp16 channels_last on {torch.cuda.get_device_name()}:")
    print(f"  GPU only, batch {args.swin_batch_size}: {gpu:8.1f} images/s")
    print(f"  decode only at 384 px, {workers} workers: {dec:8.1f} images/s")
    print(
        f"  pipeline: {run['images_per_s']:8.1f} images/s (waiting for decoding {run['wait_decode_s']:.1f} s, "
        f"model {run['model_s']:.1f} s)"
    )
    print(f"  bottleneck: {bottleneck}")


if __name__ == "__main__":
    main()
