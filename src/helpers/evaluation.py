"""Evaluate open_clip models ourselves: zero-shot classification and image-text retrieval, per concept.

Why this module exists
    The study relates a model's *per-concept* performance to the concept's pretraining frequency. The
    release ships those numbers for its models only; to add models or datasets we must produce the same
    numbers, in the same files, so that ``helpers.tidy`` and every analysis downstream read them unchanged.
    Everything here is a library; the stage that runs it over ``params.yaml``'s ``evaluation`` section is
    wired elsewhere.

Public API::

    load_model(spec, device="cpu", precision="fp32") -> LoadedModel(model, preprocess, tokenizer, key, ...)
    load_dataset(spec, preprocess, *, name=None) -> EvalDataset(name, images, labels, class_names, captions, ...)
    model_specs(section) / dataset_specs(section)   # the ``models`` / ``datasets`` mappings, keys filled in
    image_embeddings(model, dataset, cache_dir=...) -> (N, D) float32, L2-normalised, cached
    class_embeddings(model, class_names, prompt_set, ...) -> (C, D) the zero-shot classifier, cached
    caption_embeddings(model, dataset, ...) -> (M, D), cached
    zero_shot_eval(model, dataset, prompt_set | [prompt sets], ...) -> tidy DataFrame
    retrieval_eval(model, dataset, concepts=None, ks=(1, 5, 10), ...) -> tidy DataFrame
    similarity_ranks(sim, correct) / recall_table(...)   # the retrieval definitions, on arrays
    to_release_json(df, out_dir) -> written paths       # the release's exact JSON files
    write_evaluations(df, path) / read_evaluations(path) # the tidy Parquet, checked by ``EVALUATIONS``

``params.yaml`` (the lead engineer wires the stage; this is the shape the helpers read)::

    evaluation:
      cache_dir: data/interim/evaluation/embeddings   # image/text embedding cache (.npy + .json)
      device: cuda                                    # cpu | cuda | cuda:1
      precision: fp16                                 # fp32 | fp16 | bf16 (autocast, GPU only)
      batch_size: 256
      num_workers: 8
      prompts: [class, simple, ensemble]
      models:                                         # key = the release-style model key
        backboneViT-B-16_pretrainedlaion400m:
          {name: ViT-B-16, pretrained: laion400m_e32}            # a tag: needs network or the HF cache
        backboneViT-B-16_pretrainedcc3m:
          {name: ViT-B-16, pretrained: models/cc3m_vitb16.pt}    # a local checkpoint: always works
        backboneRN50_pretrainedcc12m: {name: RN50-quickgelu, pretrained: cc12m}
        backbonemy-vit_pretrainedmine:
          {model_config: configs/my-vit.json, pretrained: models/mine.pt}   # name = the config's stem
      datasets:                                       # key = the dataset name (no underscores: see below)
        cifar10: {format: torchvision, name: CIFAR10, root: data/raw/torchvision, split: test}
        imagenet: {format: imagefolder, root: data/raw/imagenet/val, class_names_file: data/raw/imagenet/classes.txt}
        pets: {format: wds, paths: "data/raw/pets/test-{000..003}.tar", label_key: cls,
               class_names_file: data/raw/pets/classes.txt, templates: ["a photo of a {c}, a type of pet."]}
        coco: {format: wds, paths: "data/raw/coco/test-{000..009}.tar", task: retrieval, caption_ext: txt,
               concepts_file: data/processed/concepts/coco_concepts.txt}

Models (``load_model``)
    ``name`` (an open_clip model name; with ``model_config`` it defaults to the config file's stem, the name
    open_clip registers it under), ``pretrained`` (a tag of that model -- downloaded by open_clip, so it
    needs the network or a filled Hugging Face cache -- or a local checkpoint file, loaded by open_clip
    with ``torch.load(weights_only=True)``), ``model_config`` (a JSON open_clip config for a custom
    architecture), ``key`` (default ``backbone{name}_pretrained{tag or file stem}``, the release's key
    style), and optionally ``quick_gelu`` (set it for checkpoints trained with QuickGELU: loading them
    without it gives silently wrong features), ``image_mean`` / ``image_std`` / ``image_interpolation`` /
    ``image_resize_mode`` (preprocessing of a checkpoint whose statistics open_clip cannot know) and
    ``cache_dir`` (open_clip's download cache). ``name: hf-hub:org/repo`` (downloaded) and
    ``name: local-dir:/folder`` (an open_clip_config.json and weights, offline) bring their own config and
    weights: no ``pretrained``, and ``key`` is required. open_clip must confirm that weights were loaded
    (``create_model_from_pretrained``), so a model never runs with random weights. Half precision runs as
    CUDA autocast over fp32 weights; on a CPU the model runs in fp32 and a warning says so. A wrong entry
    raises ``ConfigError`` naming ``evaluation.models.<key>.<field>``.

    Note on the release's keys: the authors name models by *pretraining set*, not tag
    (``backboneViT-B-16_pretrainedlaion400m`` for the tag ``laion400m_e32``), so give ``key`` (the
    ``models`` mapping key) to land in the same rows. Their CC-3M/CC-12M/YFCC-15M/SynthCI ViT-B-16 models
    are SLIP checkpoints with a SLIP model class and ImageNet normalisation; they load here only once
    converted to an open_clip state dict (with ``image_mean``/``image_std`` set accordingly).

Datasets (``load_dataset``)
    ``imagefolder``  ``root``: one sub-folder per class (sorted folder order = label order); class names are
                     the folder names with underscores read as spaces, unless ``class_names`` (a list in
                     sorted folder order, or a ``{folder: name}`` mapping) or ``class_names_file`` (one
                     name per line, sorted folder order) is given.
    ``wds``          ``paths``: tar shards (brace patterns, globs, folders, lists, as in ``helpers.captions``),
                     ``image_ext`` (default ``[jpg, jpeg, png, webp]``: the first one a sample has).
                     Zero-shot (``task: zero_shot``, the default): ``label_key`` (default ``cls``: the file
                     extension holding an integer label or a class name) and ``class_names`` or
                     ``class_names_file``. Retrieval (``task: retrieval``): ``caption_ext`` (default ``txt``),
                     one caption per non-empty line, ``max_captions`` (keep the first n per image; the
                     authors used 5 for COCO) and optionally ``concepts`` / ``concepts_file``, the
                     concepts whose per-concept recall is reported. One metadata pass reads labels and
                     captions up front (image bytes are skipped, not decoded); samples without an image
                     or without a label/caption are left out with a warning.
    ``torchvision``  ``name`` (a ``torchvision.datasets`` class, e.g. ``CIFAR10``), ``root``, ``split``
                     (``test`` by default; classes with a ``train`` flag get ``train = split == "train"``),
                     always ``download=False`` (a missing dataset is a ``ConfigError`` naming ``root``).
                     Class names come from the dataset's ``classes`` unless given.
    Any format takes ``templates``: the ensemble templates of this dataset (see below). A wrong entry
    raises ``ConfigError`` naming ``evaluation.datasets.<name>.<field>``. Dataset names become release file
    names ``{dataset}_{prompt}_results.json``, which ``helpers.tidy`` splits on the first underscore, so
    ``to_release_json`` refuses names containing ``_`` (use ``-``: ``imagenet-sketch``).

Prompt sets
    ``class`` = ``"{c}"``, ``simple`` = ``"A photo of a {c}."``, ``ensemble`` = a template list per dataset.
    Default ensemble: the 80 ImageNet templates of OpenAI's CLIP, as open_clip ships them
    (``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``; :func:`openai_imagenet_templates`),
    for every dataset. The authors used per-dataset lists: those of OpenAI's CLIP repository
    (``notebooks/Prompt_Engineering_for_ImageNet.ipynb`` and ``data/prompts.md``, one list per
    dataset) as collected in the authors' ``src/zero_shot_templates.py``. To reproduce them exactly,
    paste a dataset's list into its ``templates:`` entry in ``params.yaml``; ``{c}`` and ``{}`` are both
    accepted as the placeholder, so CLIP's strings can be pasted as they are. The classifier of a class is
    the mean of its L2-normalised prompt embeddings, normalised again (Radford et al. 2021).

Embedding cache (``cache_dir``)
    ``{cache_dir}/{model_key}/images/{dataset}.npy`` (float32, L2-normalised, dataset order) and
    ``{cache_dir}/{model_key}/text/{dataset}.{prompt_set}.npy`` (``captions`` for retrieval), each with a
    JSON sidecar ``.json`` holding the model key and fingerprint (weights digest, open_clip version,
    precision, preprocessing), the dataset's image fingerprint (file names and sizes, sample keys; not
    labels or class names, which do not change an image embedding), the prompts' digest, ``n`` and
    ``dim``. An array is reused only when its sidecar matches exactly, so evaluating class, simple and
    ensemble prompts computes the images once; anything else recomputes and overwrites (``refresh=True``
    forces it). Written with ``np.save`` (no pickle) to a temporary name and
    renamed. The dataset fingerprint uses file names and sizes, not contents (hashing ImageNet on every
    run would cost more than the embeddings): replacing an image by one of the same size needs ``refresh``.

Metrics (tidy columns ``model, dataset, task, prompt, concept, metric, value, n``)
    Zero-shot: ``metric = "top1"``, ``value`` in percent, per class (``concept`` = class name, ``n`` = its
    images) and overall (``concept = OVERALL``: accuracy over all images, not the mean over classes -- the
    release's ``full``). Ties between classes go to the first class (``argmax``).
    Retrieval: ``metric = "i2t_k=1"`` etc., ``value`` a fraction, ``prompt = "-"``. A query succeeds at k when
    a correct item is among the k best; an image's correct items are all its captions (any of them counts),
    a caption's is its image. Ties are counted *against* the model: the rank of a query is the number of
    wrong items scoring at least as high as its best correct one, so a model that scores everything alike
    gets no credit (the authors' argsort breaks ties arbitrarily; with real embeddings ties are rare).
    Per concept (``textsearch.match_captions`` with the given concepts, ``phrase`` mode by default), as
    the authors defined it: the t2i queries are the captions mentioning the concept, the i2t queries the images any of
    whose captions mentions it; ``n`` = number of queries, concepts with no query are left out.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from helpers import schemas
from helpers.captions import CaptionSource, iter_tar_samples, list_shards
from helpers.paths import resolve as resolve_path
from helpers.shards import ConfigError

CACHE_VERSION = 1
PROMPT_SETS = ("class", "simple", "ensemble")
PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_KS = (1, 5, 10)
OVERALL = "__all__"  # the ``concept`` of an overall row
NO_PROMPT = "-"  # the ``prompt`` of a retrieval row
PLACEHOLDER = "{c}"
SIMPLE_TEMPLATE = "A photo of a {c}."
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
DATASET_FORMATS = ("imagefolder", "wds", "torchvision")
TASKS = ("zero_shot", "retrieval")
MODEL_KEYS = (
    "name", "pretrained", "model_config", "key", "quick_gelu", "image_mean", "image_std",
    "image_interpolation", "image_resize_mode", "cache_dir",
)  # fmt: skip
DATASET_KEYS = {
    "imagefolder": ("format", "root", "class_names", "class_names_file", "templates", "task"),
    "wds": (
        "format", "paths", "task", "image_ext", "label_key", "class_names", "class_names_file", "caption_ext",
        "max_captions", "concepts", "concepts_file", "templates",
    ),
    "torchvision": ("format", "name", "root", "split", "class_names", "class_names_file", "templates", "task"),
}  # fmt: skip
ANNOTATION_KEYS = ("labels", "class_names", "captions", "task")  # dataset fingerprint parts images ignore
SCHEMA_PREFIXES = ("hf-hub:", "local-dir:")
_CKPT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
_RELEASE_METRIC = re.compile(r"^(?P<direction>i2t|t2i)_k=(?P<k>\d+)$")


# ============================================================================================ helpers


def _digest(obj: Any) -> str:
    """sha256 of a JSON-serialisable object in canonical form (the key of every fingerprint)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def _file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _read_lines(path: str | os.PathLike) -> list[str]:
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


class _Section:
    """Error messages that name the config key: ``evaluation.<kind>.<entry>.<field>``."""

    def __init__(self, prefix: str, spec: Mapping[str, Any], known: Sequence[str]) -> None:
        self.prefix = prefix
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{prefix}: expected a mapping of settings, got {type(spec).__name__}")
        self.spec = spec
        unknown = sorted(set(spec) - set(known))
        if unknown:
            raise self.error(unknown[0], f"unknown key (known: {', '.join(sorted(known))})")

    def error(self, field_name: str, message: str) -> ConfigError:
        return ConfigError(f"{self.prefix}.{field_name}: {message}")

    def get_str(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        value = self.spec.get(key, default)
        if value is None:
            if required:
                raise self.error(key, "missing")
            return None
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise self.error(key, f"expected a non-empty string, got {value!r}")
        return os.fspath(value)

    def str_list(self, key: str) -> list[str] | None:
        value = self.spec.get(key)
        if value is None:
            return None
        if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected a list of strings, got {value!r}")
        if not value:
            raise self.error(key, "is empty")
        return list(value)

    def existing_path(self, key: str, *, required: bool = False, kind: str = "file") -> Path | None:
        value = self.get_str(key, required=required)
        if value is None:
            return None
        path = Path(value).expanduser()
        ok = path.is_dir() if kind == "folder" else path.is_file()
        if not ok:
            raise self.error(key, f"{kind} {value!r} does not exist")
        return path


def _check_templates(section: _Section, templates: Sequence[str] | None) -> tuple[str, ...] | None:
    """Templates with ``{c}``; CLIP's ``{}`` placeholder is accepted and converted."""
    if templates is None:
        return None
    out = []
    for t in templates:
        if PLACEHOLDER not in t and "{}" in t:
            t = t.replace("{}", PLACEHOLDER)
        if PLACEHOLDER not in t:
            raise section.error("templates", f"template {t!r} has no placeholder {{c}} (or {{}})")
        out.append(t)
    return tuple(out)


# ============================================================================================= models


@dataclass
class LoadedModel:
    """A model ready to embed: the open_clip module, its eval preprocessing and tokenizer, its release key.

    ``fingerprint`` identifies the weights and everything else that changes an embedding; the cache
    compares it. ``precision`` is the effective one (fp32 on a CPU whatever was asked).
    """

    model: Any
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    key: str
    device: str = "cpu"
    precision: str = "fp32"
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def autocast(self):
        """CUDA autocast for fp16/bf16; a no-op context otherwise."""
        if self.precision == "fp32" or not str(self.device).startswith("cuda"):
            return nullcontext()
        return torch.autocast("cuda", dtype=torch.float16 if self.precision == "fp16" else torch.bfloat16)

    def identity(self) -> dict[str, Any]:
        """What the embedding cache compares: key, fingerprint and effective precision."""
        return {"key": self.key, "precision": self.precision, **self.fingerprint}


def default_model_key(name: str, pretrained: str) -> str:
    """The release's key style: ``backbone{name}_pretrained{tag or checkpoint file stem}``."""
    tag = Path(pretrained).stem if _looks_like_path(pretrained) else pretrained
    return f"backbone{name}_pretrained{tag}"


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith(_CKPT_SUFFIXES) or Path(value).expanduser().is_file()


def _check_named_model(
    section: _Section, name: str, model_config: Path | None, weights: dict[str, Any], open_clip: Any
) -> tuple[str, str]:
    """A built-in or ``model_config`` architecture with a tag or checkpoint file: (pretrained, key)."""
    if model_config is not None:
        if name != model_config.stem:
            raise section.error(
                "name",
                f"{name!r} differs from {model_config.stem!r}, the name open_clip registers `model_config` under",
            )
        try:
            cfg = json.loads(model_config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise section.error("model_config", f"not valid JSON: {err}") from err
        if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise section.error("model_config", "an open_clip model config needs embed_dim, vision_cfg and text_cfg")
        if open_clip.get_model_config(name) != cfg:
            open_clip.add_model_config(model_config)
        weights["model_config_sha256"] = _file_sha256(model_config)
    elif open_clip.get_model_config(name) is None:
        raise section.error(
            "name", f"unknown open_clip model {name!r} (see open_clip.list_models(), or give model_config)"
        )
    pretrained = section.get_str("pretrained", required=True)
    path = Path(pretrained).expanduser()
    if path.is_file():
        pretrained = str(path)
        weights["checkpoint_sha256"] = _file_sha256(path)
        weights["checkpoint_bytes"] = path.stat().st_size
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            what = "checkpoint file does not exist" if _looks_like_path(pretrained) else "is not a pretrained tag"
            raise section.error(
                "pretrained", f"{pretrained!r}: {what} of {name!r} (tags: {', '.join(tags) or 'none'}; or a local file)"
            )
        weights["pretrained_tag"] = pretrained
    return pretrained, section.get_str("key", default_model_key(name, pretrained))


def _check_schema_model(
    section: _Section, name: str, model_config: Path | None, weights: dict[str, Any]
) -> tuple[None, str]:
    """``hf-hub:org/repo`` or ``local-dir:/path``: config and weights come with the name; the key is required."""
    for field_name, value in (("model_config", model_config), ("pretrained", section.spec.get("pretrained"))):
        if value is not None:
            raise section.error(field_name, f"not used with {name!r} (its config and weights come with it); remove it")
    key = section.get_str("key", required=True)
    if name.startswith("local-dir:"):
        folder = Path(name.removeprefix("local-dir:")).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise section.error("name", f"{str(folder)!r} holds no open_clip_config.json")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".pth"))
        if not files:
            raise section.error("name", f"{str(folder)!r} holds no weights (*.safetensors, *.bin, *.pth)")
        weights["config_sha256"] = _file_sha256(folder / "open_clip_config.json")
        weights["weight_files"] = [[p.name, p.stat().st_size] for p in files]
    else:
        weights["hf_hub"] = name  # the repository's current revision; pin it through the Hugging Face cache
    return None, key


def model_specs(section: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``evaluation.models`` mapping with each entry's ``key`` filled in from its mapping key."""
    models = section.get("models") if isinstance(section, Mapping) else None
    if not isinstance(models, Mapping) or not models:
        raise ConfigError("evaluation.models: expected a non-empty mapping {model_key: {name, pretrained, ...}}")
    out = {}
    for key, spec in models.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"evaluation.models.{key}: expected a mapping of settings")
        if "key" in spec and spec["key"] != key:
            raise ConfigError(f"evaluation.models.{key}.key: {spec['key']!r} differs from the entry's name {key!r}")
        out[str(key)] = {**spec, "key": str(key)}
    return out


def load_model(spec: Mapping[str, Any], device: str = "cpu", precision: str = "fp32") -> LoadedModel:
    """Build an open_clip model from a ``evaluation.models`` entry (keys in the module docstring).

    The checks run before any weights are read, so a typo fails in a second, not after a download.
    """
    import open_clip

    label = spec.get("key") if isinstance(spec, Mapping) else None
    if not label and isinstance(spec, Mapping):
        label = spec.get("name") or (Path(str(spec["model_config"])).stem if spec.get("model_config") else "?")
    section = _Section(f"evaluation.models.{label}", spec, MODEL_KEYS)
    if precision not in PRECISIONS:
        raise section.error("precision", f"expected one of {', '.join(PRECISIONS)}, got {precision!r}")

    model_config = section.existing_path("model_config")
    name = section.get_str("name", model_config.stem if model_config is not None else None, required=True)
    weights: dict[str, Any] = {"name": name, "open_clip_version": open_clip.__version__}
    if name.startswith(SCHEMA_PREFIXES):
        pretrained, key = _check_schema_model(section, name, model_config, weights)
    else:
        pretrained, key = _check_named_model(section, name, model_config, weights, open_clip)
    section.prefix = f"evaluation.models.{key}"

    quick_gelu = spec.get("quick_gelu", False)
    if not isinstance(quick_gelu, bool):
        raise section.error("quick_gelu", f"expected true or false, got {quick_gelu!r}")
    pp: dict[str, Any] = {}
    for field_name in ("image_mean", "image_std"):
        value = spec.get(field_name)
        if value is not None:
            numbers = isinstance(value, Sequence) and all(isinstance(v, (int, float)) for v in value)
            if not numbers or len(value) != 3:
                raise section.error(field_name, f"expected three numbers, got {value!r}")
            pp[field_name] = tuple(float(v) for v in value)
    for field_name in ("image_interpolation", "image_resize_mode"):
        if spec.get(field_name) is not None:
            pp[field_name] = section.get_str(field_name)
    weights.update({"quick_gelu": quick_gelu, **{k: list(v) if isinstance(v, tuple) else v for k, v in pp.items()}})

    effective = precision
    if precision != "fp32" and not str(device).startswith("cuda"):
        warnings.warn(f"{key}: precision {precision} needs a GPU (autocast); running in fp32 on {device}", stacklevel=2)
        effective = "fp32"
    try:  # create_model_from_pretrained refuses to return a model whose weights were not loaded
        model, preprocess = open_clip.create_model_from_pretrained(
            name,
            pretrained=pretrained,
            precision="fp32",  # half precision is autocast at inference, over fp32 weights
            device=device,
            force_quick_gelu=quick_gelu,
            cache_dir=section.get_str("cache_dir"),
            weights_only=True,
            **pp,
        )
    except (RuntimeError, FileNotFoundError, ValueError, OSError) as err:
        remote = "pretrained_tag" in weights or name.startswith("hf-hub:")
        hint = " (downloaded: needs the network or the Hugging Face cache)" if remote else ""
        message = f"open_clip could not load {name!r} with {pretrained!r}{hint}: {err}"
        raise section.error("name" if pretrained is None else "pretrained", message) from err
    model.eval()
    tokenizer = open_clip.get_tokenizer(name, cache_dir=section.get_str("cache_dir"))
    # the config, not repr(preprocess): a repr may hold memory addresses, which would defeat the cache
    pp_cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None)
    weights["preprocess"] = dict(pp_cfg) if pp_cfg else re.sub(r" at 0x[0-9a-fA-F]+", "", repr(preprocess))
    return LoadedModel(model, preprocess, tokenizer, key, str(device), effective, weights)


# =========================================================================================== datasets


@dataclass
class EvalDataset:
    """A downstream dataset: images (a torch Dataset yielding ``(index, tensor)``) and their annotations.

    Zero-shot datasets have ``labels`` (int64, one per image) and ``class_names``; retrieval datasets have
    ``captions`` (one list of captions per image) and optionally ``concepts``. ``fingerprint`` identifies
    the data for the embedding cache. ``images`` yields the dataset index with each tensor so that batches
    may arrive in any order (several loader workers over tar shards).
    """

    name: str
    images: Dataset
    n: int
    task: str = "zero_shot"
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    captions: list[list[str]] | None = None
    concepts: list[str] | None = None
    templates: tuple[str, ...] | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.n

    def image_fingerprint(self) -> dict[str, Any]:
        """The part of ``fingerprint`` that identifies the images (the image cache's key).

        Labels, class names and captions do not change an image embedding, so renaming a class or fixing
        a caption reuses the cached images.
        """
        return {k: v for k, v in self.fingerprint.items() if k not in ANNOTATION_KEYS}


def dataset_specs(section: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``evaluation.datasets`` mapping (name -> spec), checked to be a mapping of mappings."""
    datasets = section.get("datasets") if isinstance(section, Mapping) else None
    if not isinstance(datasets, Mapping) or not datasets:
        raise ConfigError("evaluation.datasets: expected a non-empty mapping {dataset_name: {format, ...}}")
    for name, spec in datasets.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"evaluation.datasets.{name}: expected a mapping of settings")
    return {str(k): dict(v) for k, v in datasets.items()}


def _open_rgb(data: bytes | str | os.PathLike, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image {what}: {err}") from err


class _FileImages(Dataset):
    """Image files, preprocessed on access."""

    def __init__(self, paths: Sequence[str], preprocess: Callable) -> None:
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, self.preprocess(_open_rgb(self.paths[i], self.paths[i]))


class _TorchvisionImages(Dataset):
    """A torchvision dataset whose ``transform`` is the model's preprocessing; yields (index, tensor)."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, self.base[i][0]


class _TarImages(IterableDataset):
    """Images of webdataset tars, streamed; loader worker ``w`` of ``W`` reads shards ``w, w+W, ...``.

    ``index[(shard, position)]`` is the dataset index of each kept sample (from the metadata pass).
    """

    def __init__(self, shards: Sequence[str], index: Mapping[tuple[int, int], tuple[int, str]], preprocess: Callable):
        self.shards, self.index, self.preprocess = list(shards), dict(index), preprocess
        self.n = len(self.index)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        exts = {ext for _, ext in self.index.values()}
        for s in range(worker, len(self.shards), n_workers):
            for sample in iter_tar_samples(self.shards[s], exts):
                entry = self.index.get((s, sample.position))
                if entry is not None:
                    i, ext = entry
                    what = f"{sample.key}.{ext} in {self.shards[s]}"
                    yield i, self.preprocess(_open_rgb(sample.files[ext], what))


def _class_names_from(
    section: _Section, spec: Mapping[str, Any], n_expected: int | None, folders: list[str] | None = None
) -> list[str] | None:
    """``class_names`` (list, or {folder: name} for imagefolder) or ``class_names_file``; None when neither."""
    given, file_ = spec.get("class_names"), section.existing_path("class_names_file")
    if given is not None and file_ is not None:
        raise section.error("class_names", "give class_names or class_names_file, not both")
    if file_ is not None:
        names = _read_lines(file_)
        key = "class_names_file"
    elif isinstance(given, Mapping) and folders is not None:
        missing = [f for f in folders if f not in given]
        if missing:
            raise section.error("class_names", f"no name for folder(s) {missing[:5]}")
        names, key = [str(given[f]) for f in folders], "class_names"
    elif given is not None:
        names, key = section.str_list("class_names"), "class_names"
    else:
        return None
    if len(set(names)) != len(names):
        raise section.error(key, "class names are not unique")
    if n_expected is not None and len(names) != n_expected:
        raise section.error(key, f"{len(names)} class names for {n_expected} classes")
    return names


def _fingerprint_files(paths: Iterable[str], root: str | None = None) -> list[list[Any]]:
    """(relative name, size) of each file: cheap and stable under copies (see the module docstring)."""
    out = []
    for p in paths:
        name = os.path.relpath(p, root) if root else os.path.basename(p)
        out.append([name.replace(os.sep, "/"), os.path.getsize(p) if os.path.exists(p) else None])
    return out


def load_dataset(spec: Mapping[str, Any], preprocess: Callable, *, name: str | None = None) -> EvalDataset:
    """Open a downstream dataset from an ``evaluation.datasets`` entry (formats in the module docstring)."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"evaluation.datasets.{name}: expected a mapping of settings")
    fmt = spec.get("format")
    label = name or "?"
    if fmt not in DATASET_FORMATS:
        raise ConfigError(
            f"evaluation.datasets.{label}.format: expected one of {', '.join(DATASET_FORMATS)}, got {fmt!r}"
        )
    section = _Section(f"evaluation.datasets.{label}", spec, DATASET_KEYS[fmt])
    task = spec.get("task", "zero_shot")
    if task not in TASKS or (task == "retrieval" and fmt != "wds"):
        allowed = TASKS if fmt == "wds" else ("zero_shot",)
        raise section.error("task", f"expected one of {', '.join(allowed)} for format {fmt}, got {task!r}")
    templates = _check_templates(section, section.str_list("templates"))
    if fmt == "imagefolder":
        ds = _load_imagefolder(section, spec, preprocess, name)
    elif fmt == "torchvision":
        ds = _load_torchvision(section, spec, preprocess, name)
    else:
        ds = _load_wds(section, spec, preprocess, name, task)
    ds.templates = templates
    ds.fingerprint["format"] = fmt
    return ds


def _load_imagefolder(
    section: _Section, spec: Mapping[str, Any], preprocess: Callable, name: str | None
) -> EvalDataset:
    root = section.existing_path("root", required=True, kind="folder")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise section.error("root", f"{str(root)!r} has no class sub-folders")
    from_folders = [f.replace("_", " ") for f in folders]
    class_names = _class_names_from(section, spec, len(folders), folders) or from_folders
    if class_names != from_folders and sorted(class_names) == sorted(from_folders):
        # The given names are exactly the folders' names in another order (e.g. a classes.txt in id order):
        # read by position they would label every folder with another folder's name, so match by name.
        warnings.warn(f"{section.prefix}: class names are the folder names in another order; matched by name, "
                      "not by position", stacklevel=3)
        class_names = from_folders
    paths, labels = [], []
    for label_i, folder in enumerate(folders):
        files = sorted(
            str(p) for p in (root / folder).rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_IMAGE_SUFFIXES
        )
        paths.extend(files)
        labels.extend([label_i] * len(files))
    if not paths:
        raise section.error("root", f"no image files under {str(root)!r}")
    labels_arr = np.asarray(labels, dtype=np.int64)
    fingerprint = {
        "files": _digest(_fingerprint_files(paths, str(root))),
        "labels": _digest(labels_arr.tolist()),
        "class_names": class_names,
    }
    return EvalDataset(
        name or root.name, _FileImages(paths, preprocess), len(paths), "zero_shot", labels_arr, class_names,
        fingerprint=fingerprint,
    )  # fmt: skip


def _torchvision_labels(base: Any) -> np.ndarray:
    """The labels without decoding images where the dataset exposes them (else one pass over it)."""
    for attr in ("targets", "_labels", "labels", "y", "_samples"):
        value = getattr(base, attr, None)
        if value is None:
            continue
        if attr == "_samples":
            value = [s[1] for s in value]
        arr = np.asarray(value)
        if arr.ndim == 1 and len(arr) == len(base) and np.issubdtype(arr.dtype, np.integer):
            return arr.astype(np.int64)
    transform, base.transform = base.transform, None
    try:
        return np.asarray([int(base[i][1]) for i in tqdm(range(len(base)), desc="labels", leave=False)], dtype=np.int64)
    finally:
        base.transform = transform


def _load_torchvision(
    section: _Section, spec: Mapping[str, Any], preprocess: Callable, name: str | None
) -> EvalDataset:
    import torchvision.datasets as tvd

    cls_name = section.get_str("name", required=True)
    cls = getattr(tvd, cls_name, None)
    if not inspect.isclass(cls):
        raise section.error("name", f"{cls_name!r} is not a torchvision.datasets class")
    root = section.get_str("root", required=True)
    split = section.get_str("split", "test")
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {"transform": preprocess}
    if "split" in params:
        kwargs["split"] = split
    elif "train" in params:
        if split not in ("train", "test"):
            raise section.error("split", f"{cls_name} has only train/test, got {split!r}")
        kwargs["train"] = split == "train"
    elif "split" in spec:
        raise section.error("split", f"{cls_name} has no splits; remove `split`")
    else:
        split = None
    if "download" in params:
        kwargs["download"] = False
    try:
        base = cls(root, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as err:
        raise section.error(
            "root", f"{cls_name} ({split}) is not in {root!r} and is never downloaded here; put it there first ({err})"
        ) from err
    except ValueError as err:
        raise section.error("split", f"{cls_name}: {err}") from err
    labels = _torchvision_labels(base)
    own = list(getattr(base, "classes", None) or []) or None
    n_classes = len(own) if own else int(labels.max()) + 1
    class_names = _class_names_from(section, spec, n_classes)
    if class_names is None:
        if own is None:
            raise section.error("class_names", f"{cls_name} has no `classes`; give class_names or class_names_file")
        class_names = [str(c) for c in own]
    fingerprint = {
        "torchvision": cls_name, "split": split, "n": len(base), "labels": _digest(labels.tolist()),
        "class_names": class_names,
    }  # fmt: skip
    return EvalDataset(
        name or cls_name.lower(), _TorchvisionImages(base), len(base), "zero_shot", labels, class_names,
        fingerprint=fingerprint,
    )  # fmt: skip


def _load_wds(
    section: _Section, spec: Mapping[str, Any], preprocess: Callable, name: str | None, task: str
) -> EvalDataset:
    paths = spec.get("paths")
    if paths is None:
        raise section.error("paths", "missing")
    try:
        shards = [s.path for s in list_shards(CaptionSource(format="wds", paths=paths))]
    except ConfigError as err:
        raise section.error("paths", str(err).removeprefix("paths: ")) from err
    missing = [p for p in shards if not os.path.isfile(p)]
    if missing:
        raise section.error("paths", f"{len(missing)} shard(s) missing, e.g. {missing[0]!r}")
    image_exts = spec.get("image_ext", list(IMAGE_EXTS))
    image_exts = [image_exts] if isinstance(image_exts, str) else image_exts
    if not image_exts or not all(isinstance(e, str) for e in image_exts):
        raise section.error("image_ext", f"expected an extension or a list of them, got {image_exts!r}")
    image_exts = [e.lower().lstrip(".") for e in image_exts]
    if task == "zero_shot":
        meta_ext = section.get_str("label_key", "cls").lower().lstrip(".")
        class_names = _class_names_from(section, spec, None)
        if class_names is None:
            raise section.error("class_names", "missing (give class_names or class_names_file)")
        for key in ("caption_ext", "max_captions", "concepts", "concepts_file"):
            if key in spec:
                raise section.error(key, "only used with task: retrieval")
    else:
        meta_ext = section.get_str("caption_ext", "txt").lower().lstrip(".")
        max_captions = spec.get("max_captions")
        positive = isinstance(max_captions, int) and not isinstance(max_captions, bool) and max_captions >= 1
        if max_captions is not None and not positive:
            raise section.error("max_captions", f"expected a positive integer, got {max_captions!r}")
        class_names = None
        for key in ("label_key", "class_names", "class_names_file"):
            if key in spec:
                raise section.error(key, "only used with task: zero_shot")

    index: dict[tuple[int, int], tuple[int, str]] = {}
    labels: list[int] = []
    captions: list[list[str]] = []
    keys: list[str] = []
    stats = {"samples": 0, "no_image": 0, "no_annotation": 0}
    lookup = {c: i for i, c in enumerate(class_names or [])}
    for s, shard in enumerate(tqdm(shards, desc="dataset metadata", leave=False, disable=len(shards) < 4)):
        for sample in iter_tar_samples(shard, {meta_ext}):
            stats["samples"] += 1
            ext = next((e for e in image_exts if e in sample.files), None)
            data = sample.files.get(meta_ext)
            if ext is None:
                stats["no_image"] += 1
                continue
            text = data.decode("utf-8", errors="replace").strip() if data is not None else ""
            if task == "zero_shot":
                if not text:
                    stats["no_annotation"] += 1
                    continue
                try:
                    label = int(text)
                except ValueError:
                    if text not in lookup:
                        raise ValueError(
                            f"{shard}: sample {sample.key!r} has label {text!r}, not an index or class name"
                        )
                    label = lookup[text]
                if not 0 <= label < len(lookup):
                    raise ValueError(f"{shard}: sample {sample.key!r} has label {label}, outside 0..{len(lookup) - 1}")
                labels.append(label)
            else:
                lines = [line.strip() for line in text.splitlines() if line.strip()]
                if not lines:
                    stats["no_annotation"] += 1
                    continue
                captions.append(lines[:max_captions])
            index[(s, sample.position)] = (len(keys), ext)
            keys.append(f"{s}/{sample.key}")
    if not keys:
        raise section.error("paths", f"no usable samples in {len(shards)} shard(s) ({stats})")
    if stats["no_image"] or stats["no_annotation"]:
        warnings.warn(f"{section.prefix}: left out samples without an image or {meta_ext} file: {stats}", stacklevel=3)
    stats["kept"] = len(keys)
    fingerprint: dict[str, Any] = {
        "shards": _digest(_fingerprint_files(shards)),
        "keys": _digest(keys),
        "image_ext": image_exts,
        "task": task,
    }
    concepts = None
    if task == "zero_shot":
        labels_arr = np.asarray(labels, dtype=np.int64)
        fingerprint.update(labels=_digest(labels_arr.tolist()), class_names=class_names)
    else:
        labels_arr = None
        fingerprint["captions"] = _digest(captions)
        given, file_ = section.str_list("concepts"), section.existing_path("concepts_file")
        if given is not None and file_ is not None:
            raise section.error("concepts", "give concepts or concepts_file, not both")
        concepts = given if given is not None else (_read_lines(file_) if file_ is not None else None)
    default_name = Path(shards[0]).parent.name or "wds"
    return EvalDataset(
        name or default_name, _TarImages(shards, index, preprocess), len(keys), task, labels_arr, class_names,
        captions if task == "retrieval" else None, concepts, fingerprint=fingerprint, stats=stats,
    )  # fmt: skip


# ============================================================================================ prompts


def openai_imagenet_templates() -> tuple[str, ...]:
    """The 80 ImageNet templates of OpenAI's CLIP, as open_clip ships them, with ``{c}`` placeholders.

    open_clip keeps them as lambdas (``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``); calling
    each with the placeholder itself gives the template string.
    """
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t(PLACEHOLDER) for t in OPENAI_IMAGENET_TEMPLATES)


def prompt_templates(prompt_set: str, templates: Sequence[str] | None = None) -> tuple[str, ...]:
    """The templates of a prompt set; ``templates`` overrides the ensemble (a dataset's own list)."""
    if prompt_set == "class":
        return (PLACEHOLDER,)
    if prompt_set == "simple":
        return (SIMPLE_TEMPLATE,)
    if prompt_set == "ensemble":
        return tuple(templates) if templates else openai_imagenet_templates()
    raise ValueError(f"unknown prompt set {prompt_set!r} (expected one of {', '.join(PROMPT_SETS)})")


def class_prompts(class_name: str, templates: Sequence[str]) -> list[str]:
    """The prompts of one class: each template with the class name in place of ``{c}``."""
    return [t.replace(PLACEHOLDER, class_name) for t in templates]


# ============================================================================================== cache


def _cache_files(cache_dir: str | os.PathLike, model_key: str, kind: str, stem: str) -> tuple[Path, Path]:
    base = Path(cache_dir) / model_key / kind / stem
    return base.with_name(base.name + ".npy"), base.with_name(base.name + ".json")


def _cache_load(npy: Path, sidecar: Path, expected: Mapping[str, Any]) -> np.ndarray | None:
    """The cached array when its sidecar matches ``expected`` exactly (and the array its n and dim)."""
    if not (npy.is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text())
        if {k: meta.get(k) for k in expected} != json.loads(json.dumps(dict(expected))):
            return None
        arr = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if arr.ndim != 2 or arr.shape != (meta.get("n"), meta.get("dim")) or arr.dtype != np.float32:
        return None
    return arr


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cache_save(npy: Path, sidecar: Path, arr: np.ndarray, meta: Mapping[str, Any]) -> None:
    """Array first, sidecar last: a sidecar always describes a complete array."""
    if sidecar.exists():
        sidecar.unlink()
    _atomic_write(npy, lambda fh: np.save(fh, arr, allow_pickle=False), "wb")
    full = {**meta, "n": int(arr.shape[0]), "dim": int(arr.shape[1]), "dtype": "float32"}
    _atomic_write(sidecar, lambda fh: fh.write(json.dumps(full, indent=1, sort_keys=True) + "\n"), "w")


def _cached(
    cache_dir: str | os.PathLike | None,
    model: LoadedModel,
    kind: str,
    stem: str,
    meta: dict[str, Any],
    compute: Callable[[], np.ndarray],
    refresh: bool,
) -> np.ndarray:
    if cache_dir is None:
        return compute()
    meta = {"cache_version": CACHE_VERSION, "kind": kind, "model_key": model.key, "model": model.identity(), **meta}
    npy, sidecar = _cache_files(cache_dir, model.key, kind, stem)
    if not refresh:
        hit = _cache_load(npy, sidecar, meta)
        if hit is not None:
            return hit
    arr = np.ascontiguousarray(compute(), dtype=np.float32)
    _cache_save(npy, sidecar, arr, meta)
    return arr


# ========================================================================================= embeddings


def _device_of(model: LoadedModel) -> torch.device:
    return torch.device(model.device)


@torch.no_grad()
def _embed_images(
    model: LoadedModel, dataset: EvalDataset, batch_size: int, num_workers: int, progress: bool
) -> np.ndarray:
    device = _device_of(model)
    if isinstance(model.model, torch.nn.Module):
        model.model.eval()
    loader = DataLoader(
        dataset.images,
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=False,
        pin_memory=device.type == "cuda",
    )
    out: np.ndarray | None = None
    seen = np.zeros(dataset.n, dtype=bool)
    bar = tqdm(total=dataset.n, desc=f"images {dataset.name} ({model.key})", unit="img", disable=not progress)
    for idx, batch in loader:
        with model.autocast():
            feats = model.model.encode_image(batch.to(device, non_blocking=True))
        feats = F.normalize(feats.float(), dim=-1).cpu().numpy()
        if out is None:
            out = np.empty((dataset.n, feats.shape[1]), dtype=np.float32)
        idx_np = idx.numpy()
        out[idx_np] = feats
        seen[idx_np] = True
        bar.update(len(idx_np))
    bar.close()
    if out is None or not seen.all():
        raise RuntimeError(f"{dataset.name}: {int((~seen).sum())} of {dataset.n} images were not embedded")
    return out


def image_embeddings(
    model: LoadedModel,
    dataset: EvalDataset,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    refresh: bool = False,
) -> np.ndarray:
    """(N, D) float32 unit vectors in dataset order, from the cache when model and data match."""
    meta = {"dataset": dataset.name, "dataset_fingerprint": _digest(dataset.image_fingerprint())}
    return _cached(
        cache_dir, model, "images", dataset.name, meta,
        lambda: _embed_images(model, dataset, batch_size, num_workers, progress), refresh,
    )  # fmt: skip


@torch.no_grad()
def _embed_texts(
    model: LoadedModel, texts: Sequence[str], owner: np.ndarray, n_out: int, batch_size: int, desc: str, progress: bool
) -> np.ndarray:
    """Mean of the L2-normalised embeddings of ``texts`` per ``owner`` row, normalised again."""
    device = _device_of(model)
    if isinstance(model.model, torch.nn.Module):
        model.model.eval()
    sums: torch.Tensor | None = None
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, leave=False):
        tokens = model.tokenizer(list(texts[start : start + batch_size])).to(device)
        with model.autocast():
            emb = model.model.encode_text(tokens)
        emb = F.normalize(emb.float(), dim=-1)
        if sums is None:
            sums = torch.zeros(n_out, emb.shape[1], device=emb.device)
        sums.index_add_(0, torch.as_tensor(owner[start : start + batch_size], device=emb.device), emb)
    if sums is None:
        raise ValueError(f"{desc}: no texts to embed")
    return F.normalize(sums, dim=-1).cpu().numpy().astype(np.float32)


def class_embeddings(
    model: LoadedModel,
    class_names: Sequence[str],
    prompt_set: str,
    *,
    templates: Sequence[str] | None = None,
    dataset_name: str = "classes",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    progress: bool = True,
    refresh: bool = False,
) -> np.ndarray:
    """The zero-shot classifier (C, D): per class, the normalised mean of its normalised prompt embeddings."""
    tmpl = prompt_templates(prompt_set, templates)
    prompts = [p for c in class_names for p in class_prompts(c, tmpl)]
    owner = np.repeat(np.arange(len(class_names)), len(tmpl))
    meta = {"dataset": dataset_name, "prompt_set": prompt_set, "prompts": _digest([list(class_names), list(tmpl)])}
    return _cached(
        cache_dir, model, "text", f"{dataset_name}.{prompt_set}", meta,
        lambda: _embed_texts(model, prompts, owner, len(class_names), batch_size, f"text {prompt_set}", progress),
        refresh,
    )  # fmt: skip


def caption_embeddings(
    model: LoadedModel,
    dataset: EvalDataset,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    progress: bool = True,
    refresh: bool = False,
) -> np.ndarray:
    """(M, D) unit vectors of every caption of a retrieval dataset, image by image in caption order."""
    if dataset.captions is None:
        raise ValueError(f"{dataset.name}: not a retrieval dataset (no captions)")
    flat = [c for caps in dataset.captions for c in caps]
    meta = {"dataset": dataset.name, "prompt_set": "captions", "prompts": _digest(dataset.captions)}
    return _cached(
        cache_dir, model, "text", f"{dataset.name}.captions", meta,
        lambda: _embed_texts(model, flat, np.arange(len(flat)), len(flat), batch_size, "text captions", progress),
        refresh,
    )  # fmt: skip


# ========================================================================================== zero-shot


def zero_shot_scores(
    image_emb: np.ndarray, labels: np.ndarray, classifier: np.ndarray, class_names: Sequence[str]
) -> tuple[pd.DataFrame, float]:
    """Per-class top-1 accuracy in percent (``concept, value, n``; classes without images left out) and overall."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(image_emb):
        raise ValueError(f"{len(labels)} labels for {len(image_emb)} image embeddings")
    pred = np.argmax(image_emb @ classifier.T, axis=1)
    correct = pred == labels
    n = np.bincount(labels, minlength=len(class_names))
    hits = np.bincount(labels, weights=correct, minlength=len(class_names))
    present = n > 0
    df = pd.DataFrame(
        {
            "concept": np.asarray(class_names, dtype=object)[present],
            "value": 100.0 * hits[present] / n[present],
            "n": n[present].astype(np.int64),
        }
    )
    return df, float(100.0 * correct.mean())


def zero_shot_eval(
    model: LoadedModel,
    dataset: EvalDataset,
    prompt_set: str | Sequence[str] = PROMPT_SETS,
    *,
    templates: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    text_batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    refresh: bool = False,
) -> pd.DataFrame:
    """Zero-shot top-1 per class and overall, for one or several prompt sets (images embedded once).

    ``templates`` overrides the ensemble list (default: the dataset's ``templates``, else CLIP's ImageNet
    ones). Returns the tidy columns (see the module docstring), value in percent.
    """
    if dataset.labels is None or dataset.class_names is None:
        raise ValueError(f"{dataset.name}: not a zero-shot dataset (no labels/class names)")
    sets = [prompt_set] if isinstance(prompt_set, str) else list(prompt_set)
    for p in sets:
        prompt_templates(p, ())  # validates the name
    images = image_embeddings(
        model, dataset, cache_dir=cache_dir, batch_size=batch_size, num_workers=num_workers, progress=progress,
        refresh=refresh,
    )  # fmt: skip
    frames = []
    for p in sets:
        classifier = class_embeddings(
            model, dataset.class_names, p, templates=templates or dataset.templates, dataset_name=dataset.name,
            cache_dir=cache_dir, batch_size=text_batch_size, progress=progress, refresh=refresh,
        )  # fmt: skip
        per_class, overall = zero_shot_scores(images, dataset.labels, classifier, dataset.class_names)
        per_class = pd.concat(
            [per_class, pd.DataFrame({"concept": [OVERALL], "value": [overall], "n": [len(dataset.labels)]})],
            ignore_index=True,
        )
        per_class.insert(0, "prompt", p)
        frames.append(per_class)
    df = pd.concat(frames, ignore_index=True)
    return _tidy(df, model.key, dataset.name, "zero_shot", metric="top1")


def _tidy(df: pd.DataFrame, model: str, dataset: str, task: str, metric: str | None = None) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "model": model,
            "dataset": dataset,
            "task": task,
            "prompt": df["prompt"].astype(str),
            "concept": df["concept"].astype(str),
            "metric": df["metric"].astype(str) if metric is None else metric,
            "value": df["value"].astype(float),
            "n": df["n"].astype(np.int64),
        }
    )
    return out.reset_index(drop=True)


# ========================================================================================== retrieval


def similarity_ranks(sim: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Per query (row), the number of *wrong* items scoring at least as high as its best correct item.

    Recall@k of a query is ``rank < k``: some correct item is among the k best, ties counted against the
    model. Rows without a correct item get rank ``n_items`` (never a success).
    """
    sim = np.asarray(sim, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if sim.shape != correct.shape:
        raise ValueError(f"similarities {sim.shape} and correct mask {correct.shape} differ in shape")
    best = np.where(correct, sim, -np.inf).max(axis=1)
    ranks = ((sim >= best[:, None]) & ~correct).sum(axis=1)
    ranks[~correct.any(axis=1)] = sim.shape[1]
    return ranks.astype(np.int64)


def retrieval_ranks(
    image_emb: np.ndarray, caption_emb: np.ndarray, caption_image: np.ndarray, block: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """i2t ranks (one per image) and t2i ranks (one per caption) from embeddings, in blocks of queries.

    ``caption_image[j]`` is the image of caption ``j``. Blocks keep memory at ``block * n`` similarities
    (COCO's full 5k x 25k matrix would be 1 GB in float64).
    """
    caption_image = np.asarray(caption_image, dtype=np.int64)
    n_img = len(image_emb)
    i2t = np.empty(n_img, dtype=np.int64)
    for s in range(0, n_img, block):
        rows = np.arange(s, min(s + block, n_img))
        sim = image_emb[rows] @ caption_emb.T
        i2t[rows] = similarity_ranks(sim, caption_image[None, :] == rows[:, None])
    t2i = np.empty(len(caption_emb), dtype=np.int64)
    for s in range(0, len(caption_emb), block):
        rows = np.arange(s, min(s + block, len(caption_emb)))
        sim = caption_emb[rows] @ image_emb.T
        t2i[rows] = similarity_ranks(sim, np.arange(n_img)[None, :] == caption_image[rows, None])
    return i2t, t2i


def recall_table(
    i2t_ranks: np.ndarray,
    t2i_ranks: np.ndarray,
    caption_image: np.ndarray,
    caption_concepts: Sequence[Sequence[str]] | None = None,
    concepts: Sequence[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> pd.DataFrame:
    """Recall@k (fraction) overall and per concept: columns ``concept, metric, value, n``.

    ``caption_concepts[j]`` lists the concepts caption ``j`` mentions; an image's concepts are the union
    over its captions. ``concepts`` fixes the order of the per-concept rows (default: first appearance).
    """
    caption_image = np.asarray(caption_image, dtype=np.int64)
    i2t_ranks, t2i_ranks = np.asarray(i2t_ranks), np.asarray(t2i_ranks)
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = {OVERALL: (np.arange(len(i2t_ranks)), np.arange(len(t2i_ranks)))}
    if caption_concepts is not None:
        if len(caption_concepts) != len(t2i_ranks):
            raise ValueError(f"{len(caption_concepts)} caption concept lists for {len(t2i_ranks)} captions")
        by_concept: dict[str, list[int]] = {}
        for j, found in enumerate(caption_concepts):
            for c in dict.fromkeys(found):
                by_concept.setdefault(c, []).append(j)
        order = list(concepts) if concepts is not None else list(by_concept)
        for c in order:
            caps = np.asarray(by_concept.get(c, []), dtype=np.int64)
            if len(caps):
                groups[c] = (np.unique(caption_image[caps]), caps)
    rows = []
    for c, (imgs, caps) in groups.items():
        for direction, ranks, queries in (("i2t", i2t_ranks, imgs), ("t2i", t2i_ranks, caps)):
            for k in ks:
                value = float((ranks[queries] < k).mean()) if len(queries) else float("nan")
                rows.append((c, f"{direction}_k={int(k)}", value, len(queries)))
    return pd.DataFrame(rows, columns=["concept", "metric", "value", "n"])


def retrieval_eval(
    model: LoadedModel,
    dataset: EvalDataset,
    concepts: Sequence[str] | None = None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    match_mode: str = "phrase",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    text_batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    refresh: bool = False,
    **match_options: Any,
) -> pd.DataFrame:
    """Image-to-text and text-to-image recall@k, overall and per concept (tidy columns, value a fraction).

    ``concepts`` (default: the dataset's ``concepts``; none: overall only) are found in the captions with
    ``helpers.textsearch.match_captions(mode=match_mode, **match_options)``.
    """
    if dataset.captions is None:
        raise ValueError(f"{dataset.name}: not a retrieval dataset (no captions)")
    images = image_embeddings(
        model, dataset, cache_dir=cache_dir, batch_size=batch_size, num_workers=num_workers, progress=progress,
        refresh=refresh,
    )  # fmt: skip
    texts = caption_embeddings(
        model, dataset, cache_dir=cache_dir, batch_size=text_batch_size, progress=progress, refresh=refresh
    )
    caption_image = np.repeat(np.arange(dataset.n), [len(c) for c in dataset.captions])
    i2t, t2i = retrieval_ranks(images, texts, caption_image)
    concepts = list(concepts) if concepts is not None else dataset.concepts
    caption_concepts = None
    if concepts:
        from helpers.textsearch import match_captions

        flat = [c for caps in dataset.captions for c in caps]
        caption_concepts = match_captions(flat, concepts, mode=match_mode, **match_options)
    table = recall_table(i2t, t2i, caption_image, caption_concepts, concepts, ks)
    table.insert(0, "prompt", NO_PROMPT)
    return _tidy(table, model.key, dataset.name, "retrieval")


# ============================================================================================ writers


def _value_in_range(df: pd.DataFrame) -> pd.Series:
    """Percent for zero-shot, fraction for retrieval."""
    upper = np.where(df["task"] == "zero_shot", 100.0, 1.0)
    return (df["value"] >= 0.0) & (df["value"] <= upper)


def _metric_fits_task(df: pd.DataFrame) -> pd.Series:
    zs = (df["task"] == "zero_shot") & (df["metric"] == "top1")
    ret = df["metric"].str.fullmatch(r"(i2t|t2i)_k=[1-9]\d*").fillna(False)
    ret = (df["task"] == "retrieval") & ret & (df["prompt"] == NO_PROMPT)
    return zs | ret


EVALUATIONS = pa.DataFrameSchema(
    {
        "model": pa.Column(str),
        "dataset": pa.Column(str),
        "task": pa.Column(str, pa.Check.isin(list(TASKS))),
        "prompt": pa.Column(str),
        "concept": pa.Column(str),
        "metric": pa.Column(str),
        "value": pa.Column(float),
        "n": pa.Column("int64", pa.Check.gt(0)),
    },
    checks=[
        pa.Check(_value_in_range, error="value out of range: percent for zero_shot, fraction for retrieval"),
        pa.Check(_metric_fits_task, error="metric does not fit the task (top1 / i2t_k=K, t2i_k=K with prompt '-')"),
    ],
    unique=["model", "dataset", "task", "prompt", "concept", "metric"],
    strict=True,
    name="evaluations",
)


def write_evaluations(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate against ``EVALUATIONS`` and write the tidy Parquet atomically."""
    return schemas.write_table(df, EVALUATIONS, Path(path))


def read_evaluations(path: str | os.PathLike) -> pd.DataFrame:
    """Read the tidy Parquet back, schema-checked."""
    return schemas.read_table(Path(path), EVALUATIONS)


def _overall(group: pd.DataFrame) -> float:
    """The ``OVERALL`` row's value; without one, the query-weighted mean of the per-concept rows."""
    row = group[group["concept"] == OVERALL]
    if len(row):
        return float(row["value"].iloc[0])
    return float(np.average(group["value"], weights=group["n"]))


def to_release_json(df: pd.DataFrame, out_dir: str | os.PathLike, *, merge: bool = False) -> list[Path]:
    """Write the release's JSON files under ``out_dir`` (a release-like root), one per dataset and variant.

    ``zero_shot_evaluations/{dataset}_{prompt}_results.json`` = ``{model: {"full": %, "classwise": {class: %}}}``
    and ``retrieval_evaluations/{dataset}_{i2t|t2i}_k={k}_results.json`` = ``{model: {"full": fraction,
    "conceptwise": {concept: fraction}}}``, so ``helpers.tidy.zero_shot`` / ``retrieval`` read them
    unchanged. ``merge=True`` keeps the other models already in an existing file (one model per run).
    """
    df = EVALUATIONS.validate(df, lazy=True)
    bad = sorted({d for d in df["dataset"] if "_" in d or not d})
    if bad:
        raise ValueError(f"dataset names {bad} contain '_': release file names split on it; use '-' instead")
    out_dir = Path(out_dir)
    written = []
    for (task, dataset, prompt, metric), group in df.groupby(["task", "dataset", "prompt", "metric"], sort=True):
        if task == "zero_shot":
            folder, fname, inner = "zero_shot_evaluations", f"{dataset}_{prompt}_results.json", "classwise"
        else:
            m = _RELEASE_METRIC.match(metric)
            folder, fname = "retrieval_evaluations", f"{dataset}_{m['direction']}_k={int(m['k'])}_results.json"
            inner = "conceptwise"
        path = out_dir / folder / fname
        data: dict[str, Any] = {}
        if merge and path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
        for model, rows in group.groupby("model", sort=True):
            per = rows[rows["concept"] != OVERALL]
            data[model] = {"full": _overall(rows), inner: dict(zip(per["concept"], per["value"].astype(float)))}
        _atomic_write(path, lambda fh, d=data: fh.write(json.dumps(d, indent=1, ensure_ascii=False) + "\n"), "w")
        written.append(path)
    return written


# ============================================================================================== stage

#: keys of ``evaluation.settings`` (shared by every model x dataset run)
SETTINGS_KEYS = ("cache_dir", "device", "precision", "batch_size", "num_workers", "prompts", "ks")
_MODEL_PATH_KEYS = ("model_config", "cache_dir")
_DATASET_PATH_KEYS = ("root", "paths", "class_names_file", "concepts_file")
EVALUATIONS_FILE = "evaluations.parquet"


def resolve_spec_paths(spec: Mapping[str, Any], kind: str, base: str | os.PathLike) -> dict[str, Any]:
    """A model or dataset entry with its relative file paths resolved against ``base`` (the work folder).

    Notebooks run in ``notebooks/``, so a path in params.yaml must not depend on the working directory. A
    model's ``pretrained`` is a path only when it looks like one (a tag such as ``laion2b_s34b_b79k`` is not).
    """
    base = Path(base)
    out = dict(spec)
    keys = _MODEL_PATH_KEYS if kind == "model" else _DATASET_PATH_KEYS
    for key in keys:
        if out.get(key) is not None:
            out[key] = resolve_path(out[key], base)
    pretrained = out.get("pretrained")
    if kind == "model" and isinstance(pretrained, str) and _looks_like_path(pretrained):
        out["pretrained"] = resolve_path(pretrained, base)
    return out


def _check_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(settings, Mapping):
        raise ConfigError(f"evaluation.settings: expected a mapping, got {settings!r}")
    unknown = sorted(set(settings) - set(SETTINGS_KEYS))
    if unknown:
        raise ConfigError(f"evaluation.settings: unknown key(s) {', '.join(unknown)} (known: {', '.join(SETTINGS_KEYS)})")
    out = {"device": None, "precision": "fp32", "batch_size": 64, "num_workers": 0, "prompts": list(PROMPT_SETS),
           "ks": list(DEFAULT_KS), "cache_dir": None, **settings}  # fmt: skip
    if isinstance(out["batch_size"], bool) or not isinstance(out["batch_size"], int) or out["batch_size"] < 1:
        raise ConfigError(f"evaluation.settings.batch_size: expected a positive integer, got {out['batch_size']!r}")
    if isinstance(out["num_workers"], bool) or not isinstance(out["num_workers"], int) or out["num_workers"] < 0:
        raise ConfigError(f"evaluation.settings.num_workers: expected an integer >= 0, got {out['num_workers']!r}")
    prompts = [out["prompts"]] if isinstance(out["prompts"], str) else list(out["prompts"] or [])
    bad = [p for p in prompts if p not in PROMPT_SETS]
    if not prompts or bad:
        raise ConfigError(f"evaluation.settings.prompts: expected some of {', '.join(PROMPT_SETS)}, got {out['prompts']!r}")
    out["prompts"] = prompts
    ks = out["ks"]
    if not isinstance(ks, Sequence) or not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ConfigError(f"evaluation.settings.ks: expected a list of positive integers, got {ks!r}")
    if out["device"] is None:
        out["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return out


def evaluate_pair(
    model_key: str,
    model_spec: Mapping[str, Any],
    dataset_name: str,
    dataset_spec: Mapping[str, Any],
    settings: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    base: str | os.PathLike,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate one ``evaluation.models`` entry on one ``evaluation.datasets`` entry and write the results.

    Zero-shot datasets get every prompt set of ``settings.prompts``, retrieval datasets recall@``ks``.
    ``out_dir`` receives ``evaluations.parquet`` (schema ``EVALUATIONS``) and the release's JSON files
    (``zero_shot_evaluations/`` or ``retrieval_evaluations/``), so ``helpers.tidy`` reads them unchanged.
    Relative paths in the entries and ``settings.cache_dir`` are resolved against ``base``.
    """
    settings = _check_settings(settings)
    if not isinstance(model_spec, Mapping):
        raise ConfigError(f"evaluation.models.{model_key}: expected a mapping of settings")
    model_spec = resolve_spec_paths({**model_spec, "key": model_key}, "model", base)
    dataset_spec = resolve_spec_paths(dataset_spec, "dataset", base)
    cache_dir = resolve_path(settings["cache_dir"], Path(base)) if settings["cache_dir"] else None
    model = load_model(model_spec, device=settings["device"], precision=settings["precision"])
    dataset = load_dataset(dataset_spec, model.preprocess, name=dataset_name)
    common = {"cache_dir": cache_dir, "batch_size": settings["batch_size"], "num_workers": settings["num_workers"],
              "progress": progress}  # fmt: skip
    if dataset.task == "zero_shot":
        df = zero_shot_eval(model, dataset, settings["prompts"], **common)
    else:
        df = retrieval_eval(model, dataset, ks=settings["ks"], **common)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_evaluations(df, out / EVALUATIONS_FILE)
    to_release_json(df, out)
    return df
