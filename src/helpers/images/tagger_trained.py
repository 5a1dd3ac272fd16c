"""A compact CNN multi-label tagger trained on a labelled image set (the ``trained`` tagger backend).

Why: where no pretrained tagger fits -- the synthetic world of this compendium, or a domain where a
labelled sample of the corpus exists -- a small network trained on images plus "the concepts each image
shows" is a tagger whose errors can be measured. It is deliberately plain: four conv blocks
(3x3 conv, batch norm, ReLU, 2x2 max-pool), global average pooling, dropout and one linear layer with a
sigmoid per concept, trained with binary cross-entropy (each concept an independent yes/no, as tagging
is multi-label). The output biases start at the log-odds of each concept's training prevalence, so
training does not begin by unlearning a 50 % prior on rare concepts.

Files: :meth:`TrainedTagger.save` writes the state dict (tensors only, ``torch.save``) and a JSON sidecar
``<path>.json`` with the concepts, input size, architecture, normalisation, the weights' SHA-256 and the
training record. No Python object is pickled; :func:`load_trained_tagger` reads the weights with
``torch.load(weights_only=True)`` and refuses weights whose hash the sidecar does not list.

Config keys (an ``image_corpora.<name>.tagger`` entry; the model: :mod:`helpers.params.images`)::

    backend: trained
    checkpoint: models/tagger.pt    # the trained tagger (with models/tagger.pt.json beside it)
    unknown_concepts: error         # error | zero: concepts the tagger was not trained on
    image_size: 64                  # optional check
    train:                          # optional: train the tagger when `checkpoint` does not exist yet
      labels: data/raw/labels.parquet   # Parquet or CSV/TSV: one row per image
      image_column: image               # image path (relative paths resolve against image_root)
      concepts_column: concepts         # a list column, or a string of concepts joined by `separator`
      separator: "|"
      image_root: null                  # default: the labels file's folder
      image_size: 64
      epochs: 20
      batch_size: 64
      lr: 0.001
      weight_decay: 0.0001
      widths: [32, 64, 128, 256]
      seed: 0
      loss: bce                         # bce | asl | focal (helpers.images.tagger_data.multilabel_loss)
      augment: true                     # flips/90-degree rotations and a JPEG round trip (tagger_data)
      device: auto                      # auto | cpu | cuda | cuda:1 ...
      num_workers: 0

With ``train`` and an existing ``checkpoint`` the checkpoint is used if it was trained from the same
labels file (SHA-256) and settings; otherwise a ConfigError asks to delete it or to point elsewhere,
rather than silently overwriting it. Concepts of the stage that no labelled image shows cannot be
learned: they are the "unknown" concepts ``unknown_concepts`` is about (``zero`` scores them 0, i.e.
never counted -- say so in any result that uses it).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T
from tqdm.auto import tqdm

from helpers.devices import autocast, resolve_device
from helpers.images.backends import (
    TaggerEntry,
    check_concepts,
    check_image_size,
    concepts_digest,
    file_sha256,
    json_digest,
    normalise_name,
    state_dict_sha256,
)
from helpers.images.tagger_data import (
    DEFAULT_JPEG_QUALITY,
    LOSSES,
    LabelledImages,
    dihedral,
    multi_hot,
    multilabel_loss,
    read_labels,
)
from helpers.images.taggers import check_batch
from helpers.params.images import DEFAULT_WIDTHS

FORMAT = "helpers.trained_tagger"
FORMAT_VERSION = 1
DEFAULT_DROPOUT = 0.1
NORM_MEAN = (0.5, 0.5, 0.5)
NORM_STD = (0.5, 0.5, 0.5)
UNKNOWN_POLICIES = ("error", "zero")
GLOBAL_POOLS = ("avg", "max", "avgmax")

ImageLike = Image.Image | str | os.PathLike


# ------------------------------------------------------------------------------------------- model


class TaggerCNN(nn.Module):
    """Conv blocks (one per entry of ``widths``), a global pool, dropout, linear: one logit per concept.

    Each block is 3x3 conv, batch norm, ReLU; the last ``pools`` blocks end in a 2x2 max-pool (default:
    every block), so the last feature map is ``image_size / 2**pools`` px a side, and the first
    ``len(widths) - pools`` blocks see the image at full resolution (fine stripes and edges of small
    objects survive into the features instead of being pooled away after one convolution). ``global_pool`` reduces it
    to one vector: ``avg`` (the mean over positions), ``max`` (the strongest position: an object present
    anywhere, however small, is not diluted by the background) or ``avgmax`` (both, concatenated: the
    head sees 2 x the last width).
    """

    def __init__(
        self,
        n_outputs: int,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        dropout: float = DEFAULT_DROPOUT,
        *,
        pools: int | None = None,
        global_pool: str = "avg",
    ):
        super().__init__()
        pools = len(widths) if pools is None else int(pools)
        if not 0 <= pools <= len(widths):
            raise ValueError(f"pools must be between 0 and {len(widths)} (the number of blocks), got {pools}")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        self.pools = pools
        self.global_pool = global_pool
        layers: list[nn.Module] = []
        channels = 3
        for index, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if index >= len(widths) - pools:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels * (2 if global_pool == "avgmax" else 1), n_outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)
        if self.global_pool == "avg":
            pooled = features.mean(dim=(2, 3))
        elif self.global_pool == "max":
            pooled = features.amax(dim=(2, 3))
        else:
            pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.head(self.dropout(pooled))


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def make_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Squash-resize to ``image_size``, to tensor, normalise to [-1, 1]: a picklable torchvision Compose."""
    return T.Compose(
        [
            _to_rgb,
            T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.ToTensor(),
            T.Normalize(NORM_MEAN, NORM_STD),
        ]
    )


# ------------------------------------------------------------------------------------------- tagger


class TrainedTagger:
    """A :class:`helpers.images.taggers.Tagger` over a :class:`TaggerCNN`.

    ``model_concepts`` are the concepts the network has outputs for; ``concepts`` the score columns asked
    for (by default the same). :meth:`with_concepts` maps one onto the other by name.
    """

    backend = "trained"

    def __init__(
        self,
        model: TaggerCNN,
        model_concepts: Sequence[str],
        image_size: int,
        *,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        dropout: float = DEFAULT_DROPOUT,
        loss_history: Sequence[float] = (),
        training: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.model_concepts = check_concepts(model_concepts)
        if model.head.out_features != len(self.model_concepts):
            raise ValueError(f"model has {model.head.out_features} outputs for {len(self.model_concepts)} concepts")
        self.image_size = int(image_size)
        self.widths = [int(w) for w in widths]
        self.dropout = float(dropout)
        self.loss_history = [float(x) for x in loss_history]
        self.training = dict(training or {})
        self.concepts: list[str] = list(self.model_concepts)
        self.unknown_concepts = "error"
        self._columns: torch.Tensor | None = None  # model output index per concept, -1 = unknown
        self._device = next(model.parameters()).device
        self._state_sha256: str | None = None

    # ----------------------------------------------------------------------------- Tagger protocol

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return make_transform(self.image_size)

    def to(self, device: str | torch.device) -> TrainedTagger:
        self._device = torch.device(device)
        self.model.to(self._device)
        return self

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities (B, C), float32 on the CPU; unknown concepts (policy ``zero``) score 0."""
        check_batch(images, self.image_size)
        self.model.eval()
        probs = torch.sigmoid(self.model(images.to(self._device, dtype=torch.float32))).float().cpu()
        if self._columns is None:
            return probs
        out = torch.zeros(probs.shape[0], len(self.concepts), dtype=torch.float32)
        known = self._columns >= 0
        out[:, known] = probs[:, self._columns[known]]
        return out

    def fingerprint(self) -> dict[str, Any]:
        if self._state_sha256 is None:
            self._state_sha256 = state_dict_sha256(self.model.state_dict())
        return {
            "backend": self.backend,
            "weights_sha256": self._state_sha256,
            "arch": self.arch(),
            "image_size": self.image_size,
            "normalisation": {"mean": list(NORM_MEAN), "std": list(NORM_STD)},
            "model_concepts_sha256": concepts_digest(self.model_concepts),
            "unknown_concepts": self.unknown_concepts,
            "n_concepts": len(self.concepts),
            "n_unknown_concepts": 0 if self._columns is None else int((self._columns < 0).sum()),
            "concepts_sha256": concepts_digest(self.concepts),
        }

    # ----------------------------------------------------------------------------- the rest

    def arch(self) -> dict[str, Any]:
        return {
            "name": "TaggerCNN",
            "widths": self.widths,
            "dropout": self.dropout,
            "in_channels": 3,
            "pools": self.model.pools,
            "global_pool": self.model.global_pool,
        }

    def with_concepts(self, concepts: Sequence[str], unknown_concepts: str = "error") -> TrainedTagger:
        """A tagger (sharing this one's network) whose score columns are ``concepts``.

        Names match exactly first, then leniently (case, ``_`` vs space). Concepts the network has no
        output for raise ValueError (``unknown_concepts="error"``) or score 0 (``"zero"``).
        """
        if unknown_concepts not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown_concepts must be one of {UNKNOWN_POLICIES}, got {unknown_concepts!r}")
        concepts = check_concepts(concepts)
        exact = {c: i for i, c in enumerate(self.model_concepts)}
        lenient: dict[str, int] = {}
        for i, c in enumerate(self.model_concepts):
            lenient.setdefault(normalise_name(c), i)
        columns = [exact.get(c, lenient.get(normalise_name(c), -1)) for c in concepts]
        missing = [c for c, i in zip(concepts, columns) if i < 0]
        if missing and unknown_concepts == "error":
            raise ValueError(
                f"{len(missing)} of {len(concepts)} concepts are not among the {len(self.model_concepts)} the "
                f"tagger was trained on (e.g. {missing[:5]!r}); train it on them, or accept that they score 0 "
                "with unknown_concepts: zero"
            )
        other = TrainedTagger(
            self.model,
            self.model_concepts,
            self.image_size,
            widths=self.widths,
            dropout=self.dropout,
            loss_history=self.loss_history,
            training=self.training,
        )
        other._device = self._device
        other._state_sha256 = self._state_sha256
        other.concepts = concepts
        other.unknown_concepts = unknown_concepts
        if columns != list(range(len(self.model_concepts))):
            other._columns = torch.tensor(columns, dtype=torch.long)
        return other

    def save(self, path: str | os.PathLike) -> Path:
        """Write the state dict to ``path`` and the JSON sidecar to ``<path>.json`` (atomically, weights first)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        sidecar = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "concepts": self.model_concepts,
            "image_size": self.image_size,
            "arch": self.arch(),
            "normalisation": {"mean": list(NORM_MEAN), "std": list(NORM_STD)},
            "weights_sha256": file_sha256(path),
            "state_sha256": state_dict_sha256(state),
            "loss_history": self.loss_history,
            "training": self.training,
        }
        side = sidecar_path(path)
        tmp = side.with_name(f".{side.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(sidecar, indent=1, ensure_ascii=False))
        os.replace(tmp, side)
        return path


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of a weights file: ``<path>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def load_trained_tagger(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> TrainedTagger:
    """Load a tagger written by :meth:`TrainedTagger.save` (weights via ``torch.load(weights_only=True)``)."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trained tagger weights {path} do not exist")
    if not side.is_file():
        raise FileNotFoundError(f"trained tagger sidecar {side} does not exist (save() writes both)")
    meta = json.loads(side.read_text())
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{side} is not a {FORMAT} v{FORMAT_VERSION} sidecar")
    if file_sha256(path) != meta.get("weights_sha256"):
        raise ValueError(f"{path} does not hold the weights {side} describes (SHA-256 differs); save again")
    arch = meta["arch"]
    if arch.get("name") != "TaggerCNN":
        raise ValueError(f"{side}: unknown architecture {arch.get('name')!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors")
    model = TaggerCNN(  # sidecars written before `pools` / `global_pool` existed: every block pooled, mean
        len(meta["concepts"]),
        arch["widths"],
        arch["dropout"],
        pools=arch.get("pools"),
        global_pool=arch.get("global_pool", "avg"),
    )
    model.load_state_dict(state, strict=True)
    tagger = TrainedTagger(
        model,
        meta["concepts"],
        meta["image_size"],
        widths=arch["widths"],
        dropout=arch["dropout"],
        loss_history=meta.get("loss_history", ()),
        training=meta.get("training"),
    )
    return tagger.to(resolve_device(device))


# ------------------------------------------------------------------------------------------- training


def train_tagger(
    images: Sequence[ImageLike],
    labels: Sequence[Sequence[str]],
    concepts: Sequence[str],
    *,
    image_size: int = 64,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    dropout: float = DEFAULT_DROPOUT,
    pools: int | None = None,
    global_pool: str = "avg",
    augment: bool = True,
    loss: str = "bce",
    jpeg_quality: tuple[int, int] | None = DEFAULT_JPEG_QUALITY,
    jpeg_p: float = 0.5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    num_workers: int = 0,
    progress: bool = True,
    training_record: Mapping[str, Any] | None = None,
) -> TrainedTagger:
    """Train a :class:`TaggerCNN` on ``images`` (PIL images or paths) labelled with the concepts they show.

    ``labels[i]`` lists the concepts image ``i`` shows (any order, may be empty). AdamW with a cosine
    learning-rate decay and a per-concept multi-label ``loss`` (:func:`multilabel_loss`: ``bce``, ``asl``,
    ``focal``). ``widths``, ``dropout``, ``pools`` (None: every block) and ``global_pool`` shape the
    :class:`TaggerCNN`. With ``augment``: a random flip / 90-degree rotation per image (:func:`dihedral`) and, with
    probability ``jpeg_p``, a JPEG round trip at a quality drawn from ``jpeg_quality`` (``None``: never).
    Images are decoded once into memory. Training runs in channels-last memory layout (oneDNN's fast
    convolution path on CPUs, tensor cores on GPUs; the saved weights are in the usual layout). ``precision``
    ``bf16`` trains under ``torch.autocast`` in bfloat16 (the loss in float32): on CPUs with AMX or
    AVX512-BF16, and on GPUs, about twice as fast (``benchmarks/bench_tagger.py``); elsewhere slower. Seeded: the same inputs and seed give the same weights on the same
    device and library versions. The returned tagger's ``loss_history`` holds the mean training loss of
    every epoch. Raises ValueError for mismatched or empty inputs and unknown options.
    """
    concepts = check_concepts(concepts)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label lists")
    if not images:
        raise ValueError("no training images")
    n_pools = len(widths) if pools is None else int(pools)
    if epochs < 1 or batch_size < 1 or image_size < 2**n_pools:
        raise ValueError("epochs and batch_size must be >= 1 and image_size >= 2**pools (pools: len(widths))")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if precision not in ("fp32", "bf16"):  # helpers.devices.PRECISIONS less fp16, which would need a GradScaler
        raise ValueError(f"precision must be one of ('fp32', 'bf16'), got {precision!r}")
    if jpeg_quality is not None and not 1 <= jpeg_quality[0] <= jpeg_quality[1] <= 100:
        raise ValueError(f"jpeg_quality must be (low, high) with 1 <= low <= high <= 100, got {jpeg_quality!r}")
    targets = multi_hot(labels, concepts)
    device = resolve_device(device)
    torch.manual_seed(seed)
    model = TaggerCNN(len(concepts), widths, dropout, pools=n_pools, global_pool=global_pool)
    with torch.no_grad():  # start at the training prevalence of each concept
        prevalence = targets.mean(dim=0).clamp(1e-3, 1 - 1e-3)
        model.head.bias.copy_(torch.log(prevalence / (1 - prevalence)))
    model.to(device, memory_format=torch.channels_last)

    dataset = LabelledImages(
        images,
        targets,
        make_transform(image_size),
        jpeg_quality=tuple(jpeg_quality) if augment and jpeg_quality is not None else None,
        jpeg_p=jpeg_p,
        seed=seed + 2,
    )
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=num_workers)
    flip_gen = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total_steps = epochs * math.ceil(len(dataset) / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    history: list[float] = []
    bar = tqdm(range(epochs), desc="training tagger", unit="epoch", disable=not progress)
    for _ in bar:
        model.train()
        total, count = 0.0, 0
        for batch, target in loader:
            if augment:
                batch = dihedral(batch, flip_gen)
            batch = batch.to(device).contiguous(memory_format=torch.channels_last)
            target = target.to(device)
            with autocast(device, precision):
                logits = model(batch)
            value = multilabel_loss(logits.float(), target, loss)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            scheduler.step()
            total += value.item() * batch.shape[0]
            count += batch.shape[0]
        history.append(total / count)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    model.to(memory_format=torch.contiguous_format).eval()
    record = {
        "n_images": len(dataset),
        "positives_per_concept": [int(x) for x in targets.sum(dim=0).tolist()],
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "augment": augment,
        "loss": loss,
        "jpeg_quality": list(jpeg_quality) if augment and jpeg_quality is not None else None,
        "jpeg_p": jpeg_p,
        "seed": seed,
        "device": str(device),
        "precision": precision,
        "torch_version": torch.__version__,
        **dict(training_record or {}),
    }
    return TrainedTagger(
        model, concepts, image_size, widths=widths, dropout=dropout, loss_history=history, training=record
    )


# ------------------------------------------------------------------------------------------- config


def from_config(
    entry: TaggerEntry, concepts: Sequence[str], *, descriptions: Mapping[str, list[str]] | None = None
) -> TrainedTagger:
    """Load (or train, then save) the tagger an ``image_corpora.<name>.tagger`` entry describes."""
    del descriptions  # a trained tagger learns from labelled images, not from descriptions
    cfg = entry.config
    if cfg.train is not None:
        checkpoint = Path(cfg.checkpoint).expanduser() if cfg.checkpoint is not None else None
    else:
        checkpoint = entry.existing_file("checkpoint", cfg.checkpoint)
    train = _read_train_section(entry, cfg.train) if cfg.train is not None else None

    if train is not None and (checkpoint is None or not checkpoint.is_file()):
        tagger = _train_from_config(entry, train, concepts)
        if checkpoint is not None:
            tagger.save(checkpoint)
    else:
        assert checkpoint is not None
        try:
            tagger = load_trained_tagger(checkpoint)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise entry.error("checkpoint", f"cannot load {str(checkpoint)!r}: {err}") from err
        if train is not None and tagger.training.get("config_sha256") != train["config_sha256"]:
            raise entry.error(
                "checkpoint",
                f"{str(checkpoint)!r} was trained from other labels or settings than `train` gives; delete it "
                "to retrain, or point `checkpoint` to a new file",
            )
    check_image_size(entry, tagger.image_size)
    try:
        return tagger.with_concepts(concepts, cfg.unknown_concepts)
    except ValueError as err:
        raise entry.error("checkpoint", str(err)) from err


def _read_train_section(entry: TaggerEntry, train: Any) -> dict[str, Any]:
    """The checked ``train`` block (:class:`helpers.params.images.InlineTraining`) as training arguments."""
    labels = entry.existing_file("train.labels", train.labels)
    settings = {
        "image_column": train.image_column,
        "concepts_column": train.concepts_column,
        "separator": train.separator,
        "image_size": train.image_size,
        "epochs": train.epochs,
        "batch_size": train.batch_size,
        "lr": float(train.lr),
        "weight_decay": float(train.weight_decay),
        "widths": list(train.widths),
        "seed": train.seed,
        "loss": train.loss,
        "augment": train.augment,
    }
    return {
        "labels": labels,
        "image_root": Path(train.image_root).expanduser() if train.image_root else None,
        "settings": settings,
        "device": train.device,
        "num_workers": train.num_workers,
        "config_sha256": json_digest({"labels_sha256": file_sha256(labels), **settings}),
    }


def _train_from_config(entry: TaggerEntry, train: dict[str, Any], concepts: Sequence[str]) -> TrainedTagger:
    settings = train["settings"]
    try:
        images, labels = read_labels(
            train["labels"],
            image_column=settings["image_column"],
            concepts_column=settings["concepts_column"],
            separator=settings["separator"],
            image_root=train["image_root"],
        )
    except (KeyError, ValueError, OSError) as err:
        raise entry.error("train.labels", str(err)) from err
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise entry.error("train.labels", f"{len(missing)} image files do not exist, e.g. {str(missing[0])!r}")
    # Map label names onto the stage's concept names; train only on concepts some image shows.
    by_name = {normalise_name(c): c for c in reversed(list(concepts))}
    mapped = [[by_name[n] for n in (normalise_name(x) for x in row) if n in by_name] for row in labels]
    shown = {c for row in mapped for c in row}
    trained = [c for c in concepts if c in shown]
    if not trained:
        raise entry.error("train.labels", "no labelled image shows any concept of the concept list")
    try:
        device = resolve_device(train["device"])
    except RuntimeError as err:
        raise entry.error("train.device", str(err)) from err
    return train_tagger(
        images,
        [sorted(set(row)) for row in mapped],
        trained,
        image_size=settings["image_size"],
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        weight_decay=settings["weight_decay"],
        widths=settings["widths"],
        seed=settings["seed"],
        loss=settings["loss"],
        augment=settings["augment"],
        device=device,
        num_workers=train["num_workers"],
        training_record={"config_sha256": train["config_sha256"], "labels": str(train["labels"])},
    )
