"""Loading open_clip models for evaluation: by name and pretrained tag, from a local checkpoint, or from a custom config."""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from helpers.devices import PRECISIONS, autocast
from helpers.evaluation.specs import (
    CKPT_SUFFIXES,
    SCHEMA_PREFIXES,
    EntryReader,
    file_sha256,
)
from helpers.params import ConfigError, validate
from helpers.params.evaluation import OpenClipModel

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
        """Autocast for fp16/bf16 on a GPU (:func:`helpers.devices.autocast`); a no-op context otherwise."""
        if not str(self.device).startswith("cuda"):
            return nullcontext()
        return autocast(self.device, self.precision)

    def identity(self) -> dict[str, Any]:
        """What the embedding cache compares: key, fingerprint and effective precision."""
        return {"key": self.key, "precision": self.precision, **self.fingerprint}


def default_model_key(name: str, pretrained: str) -> str:
    """The release's key style: ``backbone{name}_pretrained{tag or checkpoint file stem}``."""
    tag = Path(pretrained).stem if looks_like_path(pretrained) else pretrained
    return f"backbone{name}_pretrained{tag}"


def looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith(CKPT_SUFFIXES) or Path(value).expanduser().is_file()


def _check_named_model(
    section: EntryReader, name: str, model_config: Path | None, weights: dict[str, Any], open_clip: Any
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
        weights["model_config_sha256"] = file_sha256(model_config)
    elif open_clip.get_model_config(name) is None:
        raise section.error(
            "name", f"unknown open_clip model {name!r} (see open_clip.list_models(), or give model_config)"
        )
    pretrained = section.get_str("pretrained", required=True)
    path = Path(pretrained).expanduser()
    if path.is_file():
        pretrained = str(path)
        weights["checkpoint_sha256"] = file_sha256(path)
        weights["checkpoint_bytes"] = path.stat().st_size
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            what = "checkpoint file does not exist" if looks_like_path(pretrained) else "is not a pretrained tag"
            raise section.error(
                "pretrained", f"{pretrained!r}: {what} of {name!r} (tags: {', '.join(tags) or 'none'}; or a local file)"
            )
        weights["pretrained_tag"] = pretrained
    return pretrained, section.get_str("key", default_model_key(name, pretrained))


def _check_schema_model(
    section: EntryReader, name: str, model_config: Path | None, weights: dict[str, Any]
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
        weights["config_sha256"] = file_sha256(folder / "open_clip_config.json")
        weights["weight_files"] = [[p.name, p.stat().st_size] for p in files]
    else:
        weights["hf_hub"] = name  # the repository's current revision; pin it through the Hugging Face cache
    return None, key


#: how torch.load says that weights_only=True cannot read a file (pickled objects, TorchScript archives)
WEIGHTS_ONLY_REFUSAL = "weights_only"
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def untrusted_checkpoint_error(section: EntryReader, field_name: str, err: BaseException) -> ConfigError:
    """The error for a checkpoint that ``torch.load(weights_only=True)`` refuses, naming the entry's key and
    the ``trusted`` option (PyTorch >= 2.6 loads with ``weights_only=True``; open_clip passes its
    ``weights_only`` argument to ``torch.load``).

    A training checkpoint usually holds more than tensors (an ``argparse.Namespace`` of its arguments, numpy
    scalars for the epoch or loss); only a full unpickle, which can run code from the file, reads those.
    """
    found = _UNSUPPORTED_GLOBAL.search(str(err))
    if found:
        what = f"it holds a pickled {found.group(1)} (not tensors only)"
    elif "TorchScript" in str(err):
        what = "it is a TorchScript archive"
    else:
        what = str(err).strip().splitlines()[0][:200]
    return section.error(
        field_name,
        f"torch.load(weights_only=True) refuses {section.spec.get(field_name)!r}: {what}. If you trust this file, "
        f"set {section.prefix}.trusted: true to load it with weights_only=False (which can run code from the "
        "file); or save its tensors alone (e.g. torch.save(checkpoint['state_dict'], path), or safetensors)",
    )


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


def load_model(
    spec: Mapping[str, Any], device: str = "cpu", precision: str = "fp32", *, prefix: str | None = None
) -> LoadedModel:
    """Build an open_clip model from a ``evaluation.models`` entry (keys in the module docstring).

    The one open_clip loader of the package: the ``open_clip`` tagger backend loads its model here too.
    The checks run before any weights are read, so a typo fails in a second, not after a download. Errors
    name ``evaluation.models.<key>.<field>``, or ``<prefix>.<field>`` when ``prefix`` says where the entry
    sits in params.yaml (``image_corpora.<name>.tagger``).
    """
    import open_clip

    label = spec.get("key") if isinstance(spec, Mapping) else None
    if not label and isinstance(spec, Mapping):
        label = spec.get("name") or (Path(str(spec["model_config"])).stem if spec.get("model_config") else "?")
    where = prefix or f"evaluation.models.{label}"
    checked = validate(OpenClipModel, dict(spec) if isinstance(spec, Mapping) else spec, where)
    section = EntryReader(where, spec)
    if precision not in PRECISIONS:
        raise ConfigError(f"evaluation.settings.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")

    model_config = section.existing_path("model_config")
    name = section.get_str("name", model_config.stem if model_config is not None else None, required=True)
    weights: dict[str, Any] = {"name": name, "open_clip_version": open_clip.__version__}
    if name.startswith(SCHEMA_PREFIXES):
        pretrained, key = _check_schema_model(section, name, model_config, weights)
    else:
        pretrained, key = _check_named_model(section, name, model_config, weights, open_clip)
    section.prefix = prefix or f"evaluation.models.{key}"

    quick_gelu = checked.quick_gelu
    pp: dict[str, Any] = {}
    for field_name in ("image_mean", "image_std"):  # three numbers each (checked by OpenClipModel)
        value = getattr(checked, field_name)
        if value is not None:
            pp[field_name] = tuple(float(v) for v in value)
    for field_name in ("image_interpolation", "image_resize_mode"):
        if getattr(checked, field_name) is not None:
            pp[field_name] = getattr(checked, field_name)
    weights.update({"quick_gelu": quick_gelu, **{k: list(v) if isinstance(v, tuple) else v for k, v in pp.items()}})

    weights_only = not checked.trusted
    if checked.trusted and not str(pretrained or "").endswith(".safetensors"):
        warnings.warn(
            f"{section.prefix}.trusted is true: loading {pretrained or name!r} with torch.load(weights_only=False), "
            "which runs any code the file holds; keep it only for a file you trust",
            stacklevel=2,
        )
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
            weights_only=weights_only,
            **pp,
        )
    except pickle.UnpicklingError as err:  # torch.load(weights_only=True) met a pickled object
        raise untrusted_checkpoint_error(section, "name" if pretrained is None else "pretrained", err) from err
    except (RuntimeError, FileNotFoundError, ValueError, OSError) as err:
        if weights_only and WEIGHTS_ONLY_REFUSAL in str(err):  # a TorchScript archive
            raise untrusted_checkpoint_error(section, "name" if pretrained is None else "pretrained", err) from err
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
