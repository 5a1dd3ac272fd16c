"""Train a tiny CLIP from scratch on a webdataset corpus, on CPU, reproducibly.

Why: the paper's claim is that a concept's zero-shot performance grows log-linearly with its pretraining
frequency. Besides re-analysing the authors' released models we train our own small CLIP on a synthetic
corpus whose concept frequencies we control, and evaluate it per concept with ``helpers.evaluation``. The
model must therefore load through ``helpers.evaluation.models.load_model`` with
``{model_config: <json>, pretrained: <checkpoint.pt>}``: the checkpoint is a plain open_clip state dict
(``torch.save(model.state_dict())``, readable with ``torch.load(weights_only=True)``, no pickled objects)
and the architecture is an open_clip JSON config registered under the file's stem.

What training does (the standard CLIP recipe, scaled down):

* the model is ``open_clip.create_model_and_transforms(<config stem>)`` with random weights (seeded);
* data: the ``.txt`` caption and the image (``jpg``/``jpeg``/``png``/``webp``) of each sample, streamed
  from the tar shards with ``helpers.text.captions.iter_tar_samples`` (the grouping the whole project uses);
  images decoded with PIL and transformed with open_clip's train preprocess for the config's image size
  (``RandomResizedCrop(scale=(0.9, 1))``: light augmentation; ``augment=False`` uses the eval transform),
  captions tokenized with the config's open_clip tokenizer. A sample whose image cannot be decoded, or that
  lacks an image or a caption, is skipped and counted (``TrainResult.skipped``), never a crash; a shard
  that is damaged part way keeps the samples before the damage (counted in ``shard_errors``);
* data order: per epoch, the shard order and a shuffle buffer are permuted by numpy generators seeded with
  ``(seed, epoch)`` (and the worker's index), so the order depends only on the arguments. With
  ``num_workers > 0`` sample ``i`` of the epoch's stream goes to worker ``i % num_workers`` and the
  DataLoader interleaves the workers' batches in a fixed round-robin order;
* loss: ``open_clip.ClipLoss`` (symmetric InfoNCE over the batch, learnable temperature; the logit scale
  is clamped to ``ln 100`` after each step, as open_clip's trainer does). A config with ``init_logit_bias``
  (open_clip's SigLIP models; Zhai et al. 2023 start it at -10 with ``init_logit_scale`` ln 10) trains with
  open_clip's ``SigLipLoss`` instead: a sigmoid per image-caption pair, with a learnable bias (keep "siglip"
  out of the config's file name: open_clip then takes the SigLIP tokenizer from the Hugging Face Hub by name);
* optimiser: AdamW without weight decay on gains, biases, embeddings-of-one-dimension and the logit scale
  (open_clip's rule: parameters with fewer than two dimensions), a linear warmup over ``warmup_steps`` and a
  cosine decay to zero over the remaining steps. The number of steps is planned from a first, cheap pass
  over the shards that counts samples without decoding images (``max_samples`` caps it);
* seeding: ``random``, ``numpy`` and ``torch`` are seeded; on CPU with a fixed thread count two runs with
  the same arguments give identical loss histories (checked by the tests).

Outputs in ``out_dir``: ``checkpoint.pt`` (the state dict), ``training.json`` (the config, seed, settings,
per-step and per-epoch losses, sample counts, seconds) and ``loss_curve.csv`` (one row per step: step,
epoch, lr, loss).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from helpers.devices import resolve_device
from helpers.params import ConfigError, validate
from helpers.params.study import ClipTraining
from helpers.paths import resolve as resolve_path
from helpers.text.captions import (
    CaptionSource,
    ShardReadError,
    iter_tar_samples,
    list_shards,
)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSION = "txt"
DEFAULT_SHUFFLE_BUFFER = 2048
MAX_LOGIT_SCALE = math.log(100.0)
CHECKPOINT_NAME = "checkpoint.pt"
SUMMARY_NAME = "training.json"
LOSS_CURVE_NAME = "loss_curve.csv"


# =========================================================================================== config


def tiny_clip_config(
    image_size: int = 32,
    embed_dim: int = 64,
    *,
    vision_width: int = 64,
    vision_layers: int = 4,
    vision_heads: int = 2,
    patch_size: int = 4,
    text_width: int = 64,
    text_layers: int = 4,
    text_heads: int = 2,
    context_length: int = 16,
    vocab_size: int = 49408,
) -> dict[str, Any]:
    """A tiny open_clip ViT config (a dict in open_clip's JSON schema), 3.6M parameters by default.

    Why these defaults: 32x32 images with 4x4 patches give 64 tokens; width 64 and 4 layers per tower
    (~0.2M parameters each) train one epoch over 15k samples in about half a minute on 2 CPU cores (width
    128 takes ~5x as long: ~170 s), so a ``dvc repro`` of ~10 epochs fits in minutes. The text tower keeps
    open_clip's BPE vocabulary (49,408 tokens; ``open_clip.get_tokenizer`` builds the tokenizer from this
    config, so the vocabulary must match it), whose embedding table (``vocab_size * text_width`` = 3.2M)
    dominates the parameter count but costs only a lookup per token. ``context_length`` 16 holds short
    captions ("a photo of two red dogs"); the tokenizer truncates longer ones (keeping end-of-text).
    """
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    for width, heads, what in ((vision_width, vision_heads, "vision"), (text_width, text_heads, "text")):
        if width % heads:
            raise ValueError(f"{what} width {width} is not a multiple of its heads {heads}")
    return {
        "embed_dim": int(embed_dim),
        "vision_cfg": {
            "image_size": int(image_size),
            "layers": int(vision_layers),
            "width": int(vision_width),
            "head_width": int(vision_width // vision_heads),
            "patch_size": int(patch_size),
        },
        "text_cfg": {
            "context_length": int(context_length),
            "vocab_size": int(vocab_size),
            "width": int(text_width),
            "heads": int(text_heads),
            "layers": int(text_layers),
        },
    }


def write_model_config(path: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write ``config`` as the JSON file ``open_clip.add_model_config`` registers (under the file's stem).

    The stem becomes the model's open_clip name, so it must not contain characters open_clip treats as a
    schema (``hf-hub:``/``local-dir:``). Written with sorted keys so identical configs give identical files
    (DVC hashes them).
    """
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"{path}: an open_clip model config must be a .json file")
    if not all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError("an open_clip model config needs embed_dim, vision_cfg and text_cfg")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def _register_config(model_config_path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """Register the JSON config with open_clip (once) and return (model name, config)."""
    import open_clip

    path = Path(model_config_path)
    config = json.loads(path.read_text())
    if open_clip.get_model_config(path.stem) != config:
        open_clip.add_model_config(path)
    return path.stem, config


# =========================================================================================== data


@dataclass
class DataStats:
    """What the data stream read: usable samples, skipped ones by reason, damaged shards."""

    samples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    shard_errors: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def merge(self, other: DataStats) -> None:
        self.samples += other.samples
        for reason, n in other.skipped.items():
            self.skip(reason, n)
        self.shard_errors.update(other.shard_errors)


def count_samples(shard_paths: Sequence[str]) -> list[int]:
    """Samples per shard (records with a caption file and an image file), without decoding anything.

    Why: the cosine schedule needs the number of steps up front; reading only tar headers (the bytes of
    other files are skipped) is cheap next to decoding and training.
    """
    counts = []
    for path in shard_paths:
        n = 0
        try:
            for sample in iter_tar_samples(path, set()):
                if TEXT_EXTENSION in sample.files and any(e in sample.files for e in IMAGE_EXTENSIONS):
                    n += 1
        except ShardReadError:
            pass  # counted up to the damage; the training stream records the error
        except FileNotFoundError:
            pass
        counts.append(n)
    return counts


_Loaded = tuple[Any, "str | None", "str | None"]  # (PIL RGB image | None, caption | None, skip reason | None)


class _ShardStream(IterableDataset):
    """Batches of (images, tokens) streamed from tar shards in a seeded order (see the module docstring).

    Batching happens here, not in the DataLoader, so that skipped samples never shorten a batch and their
    count travels with the batch back from worker processes.
    """

    def __init__(
        self,
        shard_paths: Sequence[str],
        limits: Sequence[int | None],
        transform: Any,
        tokenizer: Any,
        batch_size: int,
        seed: int,
        shuffle_buffer: int,
        cache: bool = False,
    ) -> None:
        self.shard_paths = list(shard_paths)
        self.limits = list(limits)
        self.transform = transform
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0
        # shard index -> (its loaded samples in tar order, its read error): filled in the first epoch when caching
        self._cache: dict[int, tuple[list[_Loaded], str | None]] | None = {} if cache else None
        self._tokens: dict[str, torch.Tensor] = {}  # caption -> its tokens, with the cache

    def _tokenize(self, captions: list[str]) -> torch.Tensor:
        """(B, context) tokens; with the cache each distinct caption is tokenized once (the tokenizer is per text)."""
        if self._cache is None:
            return self.tokenizer(captions)
        new = [c for c in dict.fromkeys(captions) if c not in self._tokens]
        if new:
            self._tokens.update(zip(new, self.tokenizer(new)))
        return torch.stack([self._tokens[c] for c in captions])

    @staticmethod
    def _load(sample: Any) -> _Loaded:
        """(RGB image, caption, None), or (None, None, the reason it is skipped)."""
        from PIL import Image, UnidentifiedImageError

        text = sample.files.get(TEXT_EXTENSION)
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample.files), None)
        if text is None or ext is None:
            return None, None, "no_caption" if text is None else "no_image"
        caption = text.decode("utf-8", errors="replace").strip()
        if not caption:
            return None, None, "empty_caption"
        try:
            with Image.open(io.BytesIO(sample.files[ext])) as img:
                img.load()
                return img.convert("RGB"), caption, None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):  # PIL's errors for bad bytes
            return None, None, "bad_image"

    def _decode(self, loaded: _Loaded, stats: DataStats) -> tuple[torch.Tensor, str] | None:
        image, caption, reason = loaded
        if reason is not None or image is None or caption is None:
            stats.skip(reason or "bad_image")
            return None
        try:
            return self.transform(image), caption
        except (OSError, ValueError):
            stats.skip("bad_image")
            return None

    def _shard(self, shard: int) -> Iterator[Any]:
        """The raw samples of one shard, up to its limit (raises the reader's errors)."""
        path, limit = self.shard_paths[shard], self.limits[shard]
        taken = 0
        for sample in iter_tar_samples(path, {TEXT_EXTENSION, *IMAGE_EXTENSIONS}):
            if limit is not None and taken >= limit:
                break
            if TEXT_EXTENSION in sample.files and any(e in sample.files for e in IMAGE_EXTENSIONS):
                taken += 1  # the same samples every epoch, whatever the worker split
            yield sample

    @staticmethod
    def _error(err: Exception) -> str:
        return f"missing: {err}" if isinstance(err, FileNotFoundError) else str(err)

    def _loaded(self, worker: int, n_workers: int, stats: DataStats) -> Iterator[_Loaded]:
        """This worker's share of the epoch's samples, loaded, shards in the epoch's seeded order.

        With the cache (one process only) a shard is read and decoded once, in the first epoch that reaches it,
        and replayed from memory after: the same samples, skips and shard errors in the same order, so the
        augmentation and the run are the same as without it.
        """
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shard_paths))
        if self._cache is not None and n_workers == 1:
            for shard in order:
                if shard not in self._cache:
                    entries: list[_Loaded] = []
                    error = None
                    try:
                        for sample in self._shard(shard):
                            entries.append(self._load(sample))
                    except (ShardReadError, FileNotFoundError) as err:
                        error = self._error(err)
                    self._cache[shard] = (entries, error)
                entries, error = self._cache[shard]
                yield from entries
                if error is not None:
                    stats.shard_errors[self.shard_paths[shard]] = error
            return
        index = 0
        for shard in order:
            try:
                for sample in self._shard(shard):
                    if index % n_workers == worker:
                        yield self._load(sample)
                    index += 1
            except (ShardReadError, FileNotFoundError) as err:
                if worker == 0:
                    stats.shard_errors[self.shard_paths[shard]] = self._error(err)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, worker])
        torch.manual_seed(self.seed * 1_000_003 + self.epoch * 1_009 + worker)  # augmentation draws
        stats = DataStats()
        buffer: list[tuple[torch.Tensor, str]] = []
        batch: list[tuple[torch.Tensor, str]] = []

        def emit() -> dict[str, Any]:
            nonlocal stats
            images = torch.stack([b[0] for b in batch])
            tokens = self._tokenize([b[1] for b in batch])
            out = {"images": images, "tokens": tokens, "stats": stats}
            stats = DataStats()
            return out

        for loaded in self._loaded(worker, n_workers, stats):
            decoded = self._decode(loaded, stats)
            if decoded is None:
                continue
            stats.samples += 1
            if len(buffer) < self.shuffle_buffer:
                buffer.append(decoded)
                continue
            j = int(rng.integers(len(buffer)))
            batch.append(buffer[j])
            buffer[j] = decoded
            if len(batch) == self.batch_size:
                yield emit()
                batch = []
        for j in rng.permutation(len(buffer)):
            batch.append(buffer[j])
            if len(batch) == self.batch_size:
                yield emit()
                batch = []
        if len(batch) >= 2:  # a contrastive batch needs negatives; a single left-over sample is dropped
            yield emit()
        else:
            if batch:
                stats.skip("dropped_last", len(batch))
                stats.samples -= len(batch)
            yield {"images": None, "tokens": None, "stats": stats}  # the stats of the tail still count


# =========================================================================================== training


@dataclass
class TrainResult:
    """What ``train_clip`` produced: files, losses (per step and per epoch means), time and data counts."""

    checkpoint_path: Path
    model_config_path: Path
    summary_path: Path
    loss_curve_path: Path
    step_losses: list[float]
    epoch_losses: list[float]
    seconds: float
    n_samples: int  # usable samples per epoch (the last epoch's count)
    skipped: dict[str, int]
    shard_errors: dict[str, str]
    n_params: int
    model: Any = field(default=None, repr=False)  # the trained open_clip model, in eval mode

    @property
    def loss_history(self) -> dict[str, list[float]]:
        return {"step": self.step_losses, "epoch": self.epoch_losses}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (why: model init, augmentation and data order must all repeat)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds libraries that draw from the global state)
    torch.manual_seed(seed)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's rule: no weight decay on gains, biases and the logit scale (parameters with ndim < 2)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def cosine_lr(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor: linear warmup to 1 over ``warmup_steps``, then cosine decay to 0 at the end."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    rest = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / rest)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_model(model_config_path: str | os.PathLike, seed: int, device: str = "cpu") -> tuple[Any, Any, Any, Any]:
    """(model, train transform, eval transform, tokenizer) for the config, weights initialised from ``seed``."""
    import open_clip

    name, _ = _register_config(model_config_path)
    seed_everything(seed)
    model, train_tf, eval_tf = open_clip.create_model_and_transforms(name, pretrained=None, device=device)
    tokenizer = open_clip.get_tokenizer(name)
    return model, train_tf, eval_tf, tokenizer


def train_clip(
    shard_paths: Sequence[str | os.PathLike],
    model_config_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    seed: int,
    device: str = "cpu",
    num_workers: int = 0,
    max_samples: int | None = None,
    progress: bool = True,
    augment: bool = True,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    num_threads: int | None = None,
    cache_images: bool = False,
) -> TrainResult:
    """Train the config's CLIP from scratch on the shards and save it (see the module docstring).

    ``shard_paths`` are webdataset tars (sorted here, so the caller's order does not matter);
    ``max_samples`` caps the samples read per epoch (those with a caption and an image file, the first ones
    in sorted shard order, the same every epoch; one whose image then fails to decode counts against the
    cap); ``num_threads`` sets ``torch.set_num_threads`` for the run (restored afterwards). ``cache_images``
    keeps every decoded image (and its caption) in memory after the first epoch, so later epochs skip reading
    the tars, decoding and tokenizing (the augmentation still runs per epoch; the run is the same as without it). It needs
    ``num_workers=0`` and memory for the decoded corpus (about 3 KB per 32 px image: 50 MB for the synthetic
    world's 16,000); in a 3-epoch A/B on the world it took 149 s against 175 s (README, synthetic world).
    """
    if epochs < 1 or batch_size < 2:
        raise ValueError("epochs must be >= 1 and batch_size >= 2 (a contrastive batch needs negatives)")
    if cache_images and num_workers:
        raise ValueError("cache_images keeps the decoded images in this process: it needs num_workers 0")
    import open_clip
    from open_clip.loss import SigLipLoss

    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        paths = sorted(os.fspath(p) for p in shard_paths)
        if not paths:
            raise ValueError("no shard paths given")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        config_path = Path(model_config_path)
        name, config = _register_config(config_path)

        counts = count_samples(paths)
        limits: list[int | None] = [None] * len(paths)
        if max_samples is not None:
            left = int(max_samples)
            for i, c in enumerate(counts):
                limits[i] = min(c, left)
                left -= limits[i]
        planned = sum(c if lim is None else lim for c, lim in zip(counts, limits))
        if planned < 2:
            raise ValueError(f"the shards hold {planned} samples with an image and a caption; need at least 2")
        steps_per_epoch = max(1, planned // batch_size + (1 if planned % batch_size >= 2 else 0))
        total_steps = steps_per_epoch * epochs

        device = resolve_device(device)  # "auto"/None: cuda when available
        model, train_tf, eval_tf, tokenizer = build_model(config_path, seed, device)
        n_params = sum(p.numel() for p in model.parameters())
        dataset = _ShardStream(
            paths, limits, train_tf if augment else eval_tf, tokenizer, batch_size, seed, shuffle_buffer,
            cache=cache_images,
        )  # fmt: skip
        siglip = config.get("init_logit_bias") is not None
        loss_fn = SigLipLoss() if siglip else open_clip.ClipLoss()
        # fused: one kernel for the whole update; the unfused step was a tenth of a CPU step, most of it the
        # 49,408-token embedding table (benchmarks/bench_clip_training.py)
        fused = torch.device(device).type in ("cpu", "cuda")
        optimizer = torch.optim.AdamW(
            _param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=fused or None
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, total_steps, warmup_steps))

        step_losses: list[float] = []
        epoch_losses: list[float] = []
        rows: list[tuple[int, int, float, float]] = []
        epoch_stats = DataStats()
        all_errors: dict[str, str] = {}
        skipped_total: dict[str, int] = {}
        step = 0
        bar = tqdm(total=total_steps, desc="train CLIP", unit="step", disable=not progress)
        for epoch in range(epochs):
            dataset.epoch = epoch
            epoch_stats = DataStats()
            generator = torch.Generator().manual_seed(seed + epoch)
            loader = DataLoader(
                dataset,
                batch_size=None,
                num_workers=num_workers,
                generator=generator,
                persistent_workers=False,
            )
            model.train()
            losses = []
            for batch in loader:
                epoch_stats.merge(batch["stats"])
                if batch["images"] is None:
                    continue
                images = batch["images"].to(device, non_blocking=True)
                tokens = batch["tokens"].to(device, non_blocking=True)
                outputs = model(images, tokens)  # image, text features, logit scale (+ logit bias: SigLIP)
                loss = loss_fn(*outputs[: 4 if siglip else 3])
                step_lr = optimizer.param_groups[1]["lr"]  # the rate this step is taken with
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
                value = float(loss.detach())
                losses.append(value)
                step_losses.append(value)
                rows.append((step, epoch, step_lr, value))
                step += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{value:.4f}")
            epoch_losses.append(float(np.mean(losses)) if losses else float("nan"))
            all_errors.update(epoch_stats.shard_errors)
            skipped_total = dict(epoch_stats.skipped)  # per epoch: every epoch reads the same samples
        bar.close()
        model.eval()

        checkpoint = out / CHECKPOINT_NAME
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, checkpoint)
        seconds = time.perf_counter() - start
        with (out / LOSS_CURVE_NAME).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "epoch", "lr", "loss"])
            writer.writerows(rows)
        result = TrainResult(
            checkpoint_path=checkpoint,
            model_config_path=config_path,
            summary_path=out / SUMMARY_NAME,
            loss_curve_path=out / LOSS_CURVE_NAME,
            step_losses=step_losses,
            epoch_losses=epoch_losses,
            seconds=seconds,
            n_samples=epoch_stats.samples,
            skipped=skipped_total,
            shard_errors=all_errors,
            n_params=n_params,
            model=model,
        )
        summary = {
            "model_name": name,
            "model_config": config,
            "model_config_path": str(config_path),
            "n_params": n_params,
            "shards": paths,
            "settings": {
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "weight_decay": weight_decay,
                "warmup_steps": warmup_steps,
                "seed": seed,
                "device": device,
                "num_workers": num_workers,
                "max_samples": max_samples,
                "augment": augment,
                "shuffle_buffer": shuffle_buffer,
                "cache_images": cache_images,
                "num_threads": torch.get_num_threads(),
            },
            "steps": step,
            "planned_steps": total_steps,
            "n_samples": epoch_stats.samples,
            "skipped_per_epoch": skipped_total,
            "shard_errors": all_errors,
            "loss_history": {"step": step_losses, "epoch": epoch_losses},
            "seconds": seconds,
            "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
        }
        result.summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        return result
    finally:
        torch.set_num_threads(previous_threads)


def result_dict(result: TrainResult) -> dict[str, Any]:
    """A JSON-ready view of a ``TrainResult`` (paths as strings, the model left out)."""
    out = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "model"}
    return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


# ============================================================================================== stage


def train_from_params(
    section: Mapping[str, Any] | ClipTraining, base: str | os.PathLike, *, progress: bool = True
) -> TrainResult:
    """Train the CLIP that params ``clip_training`` describes (paths relative to ``base``, the work folder).

    The section is checked by :class:`helpers.params.study.ClipTraining` (errors name ``clip_training.<key>``).
    The model config (``tiny_clip_config(**section.model)``) is written to ``<out_dir>/<out_dir name>.json``,
    so open_clip registers the model under the output folder's name; evaluation and the open_clip tagger
    load it from there with ``checkpoint.pt``.
    """
    spec = validate(ClipTraining, section, "clip_training")
    base = Path(base)
    raw = spec.shards
    patterns = [raw] if isinstance(raw, str) else list(raw)
    patterns = resolve_path(patterns, base)
    try:
        shards = [s.path for s in list_shards(CaptionSource(format="wds", paths=patterns))]
    except ConfigError as err:
        raise ConfigError(f"clip_training.shards: {err}") from err
    if not shards:
        raise ConfigError(f"clip_training.shards: no tar shards match {raw!r}")
    out_dir = Path(resolve_path(spec.out_dir, base))
    try:
        config = tiny_clip_config(**spec.model.given())
    except (TypeError, ValueError) as err:
        raise ConfigError(f"clip_training.model: {err}") from err
    config_path = write_model_config(out_dir / f"{out_dir.name}.json", config)
    return train_clip(
        shards, config_path, out_dir, epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr,
        weight_decay=spec.weight_decay, warmup_steps=spec.warmup_steps, seed=spec.seed, device=spec.device,
        num_workers=spec.num_workers, max_samples=spec.max_samples, augment=spec.augment,
        num_threads=spec.num_threads, cache_images=spec.cache_images, progress=progress,
    )  # fmt: skip
