"""RAM++ (Recognize Anything Plus, Huang et al. 2023) as an image tagger -- the tagger of the paper.

A thin adapter over the ``recognize-anything`` package (import name ``ram``): the package builds the
model (``ram.models.ram_plus``, Swin-L at 384x384), its preprocessing (``ram.get_transform``) and the
open-set label embeddings (``ram.utils.build_openset_llm_label_embedding``); this module only computes
*probabilities*, which the package does not expose.

Why the probabilities are computed here
    The package's inference helpers (``ram.inference_ram_openset`` / ``RAM_plus.generate_tag_openset``)
    return tag strings above a threshold. The study needs the probability itself (counts at thresholds
    0.5-0.7 from one pass), so :meth:`RamPlusTagger.scores` runs the same computation as RAM++'s
    ``generate_tag`` through the model's own modules and stops at the sigmoid:

    1. ``image_embeds = image_proj(visual_encoder(x))``; the first token, L2-normalised, is the image's
       global embedding ``g``.
    2. Each concept has several description embeddings ``e_{c,k}`` (CLIP text embeddings of its LLM
       descriptions). They are mixed per image with weights ``softmax_k(exp(reweight_scale) * g . e_{c,k})``
       -- RAM++'s "multi-grained text supervision".
    3. The mixed embedding goes through ``relu(wordvec_proj(.))`` into the ``tagging_head`` (a BERT whose
       layers only cross-attend to ``image_embeds``, ``mode='tagging'``), then ``fc`` gives one logit.
    4. ``p = sigmoid(logit)`` -- what RAM++ compares with its class thresholds (0.7 in the paper).

    Two differences in form, not in result: RAM++ needs every concept to have the same number of
    descriptions (it reshapes one flat matrix); here descriptions are padded per concept and masked out
    of the softmax, so concepts with 23 and 51 descriptions (the release's ImageNet-Sketch and CIFAR files)
    can be mixed. And concepts are processed in chunks of ``concept_chunk``: the tagging head has no
    self-attention between concept queries, so each concept's logit is independent of the others and
    chunking bounds memory without changing a score.

Label embeddings
    From the ``descriptions`` given to :func:`helpers.images.backends.build_tagger` (concept -> list of
    strings, e.g. the release's ``gpt_descriptions/*.json``) and/or the config key ``descriptions``
    (JSON files). A concept without descriptions gets ``fallback_template`` (default
    ``"a photo of a {c}."``, the first description of every release entry). The package encodes them with
    OpenAI CLIP ViT-B/16 (the ``clip`` package). ``label_embedding_cache`` (a folder) keeps the result
    (``torch.save`` of tensors, read back with ``weights_only=True``) keyed by a hash of the concept list
    and descriptions, so later runs need neither CLIP nor its download.

Installation: a separate environment
    ``recognize-anything`` pins ``timm==0.4.12``, ``fairscale==0.4.4`` and OpenAI's ``clip`` (from git),
    while this compendium's ``open_clip_torch`` needs ``timm>=1.0``: they cannot share an environment.
    So the image-tagging stage runs with ``backend: rampp`` in its own one::

        python3.11 -m venv .venv-rampp
        .venv-rampp/bin/pip install torch torchvision            # the build for your CUDA
        .venv-rampp/bin/pip install "git+https://github.com/xinyu1205/recognize-anything.git" \\
            "transformers>=4.25.1,<4.56"                        # newer transformers break ram/models/bert.py
        .venv-rampp/bin/pip install --no-deps -e .               # this package, without open_clip / timm>=1
        .venv-rampp/bin/pip install numpy pandas pyarrow PyYAML tqdm pillow   # versions: requirements.txt
        # + papermill ipykernel if the stage runs as a notebook

    and the image-tags stage's command is run with ``.venv-rampp/bin/python``. The weights
    (``ram_plus_swin_large_14m.pth``) are downloaded by hand from the RAM++ model page on the Hugging Face
    hub and given as ``checkpoint``. Nothing in this module imports ``open_clip``.

    First use downloads two more things: the ``bert-base-uncased`` tokenizer (``ram_plus`` builds it with
    ``BertTokenizer.from_pretrained``, into the Hugging Face cache) and the CLIP ViT-B/16 weights (into
    ``~/.cache/clip``) for the label embeddings. On offline compute nodes run once on a machine with
    network, with the same cache locations (``HF_HOME``, home directory) shared::

        .venv-rampp/bin/python -c "from transformers import BertTokenizer as B; B.from_pretrained('bert-base-uncased')"
        .venv-rampp/bin/python -c "import clip; clip.load('ViT-B/16', device='cpu')"

    then set ``HF_HUB_OFFLINE=1`` on the nodes; with a filled ``label_embedding_cache`` CLIP is not
    needed at all. The package loads the checkpoint with a plain ``torch.load``; on torch >= 2.6 that
    means ``weights_only=True``.

Config keys (an ``image_corpora.<name>.tagger`` entry; the model: :mod:`helpers.params.images`)::

    backend: rampp
    checkpoint: /models/ram_plus_swin_large_14m.pth   # required
    vit: swin_l                     # swin_l (the released RAM++) | swin_b
    image_size: 384                 # 384 (the released checkpoint) | 224
    descriptions: null              # JSON description file(s), e.g. gpt_descriptions/*.json
    fallback_template: "a photo of a {c}."
    label_embedding_cache: null     # a folder for the CLIP label embeddings
    concept_chunk: 1024             # concepts per tagging-head pass (memory bound, no effect on scores)
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from helpers.images.backends import (
    PREFIX,
    TaggerEntry,
    check_concepts,
    concepts_digest,
    descriptions_from_config,
    file_sha256,
    json_digest,
    match_descriptions,
    state_dict_sha256,
)
from helpers.images.taggers import check_batch
from helpers.params import ConfigError
from helpers.params.images import DEFAULT_CONCEPT_CHUNK

VITS = ("swin_l", "swin_b")
IMAGE_SIZES = (384, 224)
EMBEDDING_ENCODER = "ram.utils.build_openset_llm_label_embedding (OpenAI CLIP ViT-B/16)"

#: label embeddings built in this process, by key: every worker process builds its tagger from the factory,
#: and a driver that also tags (serial executor) should not encode 200k descriptions twice
_EMBEDDINGS: dict[str, torch.Tensor] = {}

INSTALL_HELP = (
    "the `rampp` tagger needs the recognize-anything package (`import ram`), which cannot share this "
    "environment with open_clip (it pins timm==0.4.12). Run the image-tagging stage in its own environment: "
    "`python3.11 -m venv .venv-rampp && .venv-rampp/bin/pip install torch torchvision "
    "'git+https://github.com/xinyu1205/recognize-anything.git' 'transformers>=4.25.1,<4.56' && "
    ".venv-rampp/bin/pip install --no-deps -e . && .venv-rampp/bin/pip install numpy pandas pyarrow PyYAML "
    "tqdm pillow`, then run the stage with .venv-rampp/bin/python (details: helpers/images/tagger_rampp.py); "
    "or choose backend: open_clip"
)


@dataclass(frozen=True)
class RamApi:
    """The three entry points of the ``ram`` package the adapter uses."""

    ram_plus: Callable[..., torch.nn.Module]
    build_openset_llm_label_embedding: Callable[[list[dict[str, list[str]]]], tuple[torch.Tensor, list[str]]]
    get_transform: Callable[..., Callable[[Image.Image], torch.Tensor]]
    version: str | None


def import_ram(where: str = PREFIX) -> RamApi:
    """The ``ram`` package's API, or a ConfigError (naming ``<where>.backend``) saying how to install it."""
    try:
        import ram  # noqa: F401
        from ram import get_transform
        from ram.models import ram_plus
        from ram.utils import build_openset_llm_label_embedding
    except ImportError as err:
        raise ConfigError(f"{where}.backend: {INSTALL_HELP} (import failed: {err})") from err
    try:
        from importlib.metadata import version

        ram_version: str | None = version("ram")
    except Exception:  # noqa: BLE001 -- a source checkout has no distribution metadata
        ram_version = None
    return RamApi(ram_plus, build_openset_llm_label_embedding, get_transform, ram_version)


class RamPlusTagger:
    """A :class:`helpers.images.taggers.Tagger` over a RAM++ model and per-concept description embeddings."""

    backend = "rampp"

    def __init__(
        self,
        model: torch.nn.Module,
        transform: Callable[[Image.Image], torch.Tensor],
        concepts: Sequence[str],
        label_embeddings: Sequence[torch.Tensor],
        *,
        image_size: int,
        concept_chunk: int = DEFAULT_CONCEPT_CHUNK,
        identity: Mapping[str, Any] | None = None,
    ) -> None:
        self.concepts = check_concepts(concepts)
        if len(label_embeddings) != len(self.concepts):
            raise ValueError(f"{len(label_embeddings)} label embeddings for {len(self.concepts)} concepts")
        if any(e.ndim != 2 or e.shape[0] == 0 for e in label_embeddings):
            raise ValueError("every concept needs a (n_descriptions >= 1, dim) label embedding")
        dims = {int(e.shape[1]) for e in label_embeddings}
        proj_dim = getattr(getattr(model, "image_proj", None), "out_features", None)
        if len(dims) != 1 or (proj_dim is not None and dims != {proj_dim}):
            raise ValueError(f"label embedding sizes {sorted(dims)} do not match the model's image_proj ({proj_dim})")
        self.model = model.eval()
        self._transform = transform
        self.image_size = int(image_size)
        self.concept_chunk = int(concept_chunk)
        self.identity = dict(identity or {})
        # Pad descriptions per concept; the mask keeps padding out of the softmax.
        n_max = max(int(e.shape[0]) for e in label_embeddings)
        dim = dims.pop()
        self._embed = torch.zeros(len(self.concepts), n_max, dim)
        self._mask = torch.zeros(len(self.concepts), n_max, dtype=torch.bool)
        for j, emb in enumerate(label_embeddings):
            self._embed[j, : emb.shape[0]] = emb.float()
            self._mask[j, : emb.shape[0]] = True
        self._embed_sha256 = state_dict_sha256({"embed": self._embed, "mask": self._mask})
        self._device = next(model.parameters()).device
        self.to(self._device)

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """RAM's own preprocessing (``ram.get_transform``): RGB, squash-resize, ImageNet normalisation."""
        return self._transform

    def to(self, device: str | torch.device) -> RamPlusTagger:
        self._device = torch.device(device)
        self.model.to(self._device)
        self._embed = self._embed.to(self._device)
        self._mask = self._mask.to(self._device)
        return self

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """RAM++'s per-concept sigmoid probabilities (B, C), float32 on the CPU (see the module docstring)."""
        check_batch(images, self.image_size)
        model = self.model
        images = images.to(self._device)
        image_embeds = model.image_proj(model.visual_encoder(images))  # (B, T, dim)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self._device)
        glob = F.normalize(image_embeds[:, 0, :].float(), dim=-1)  # (B, dim)
        scale = model.reweight_scale.exp().float()
        out = []
        for start in range(0, len(self.concepts), self.concept_chunk):
            embed = self._embed[start : start + self.concept_chunk]  # (c, n, dim)
            mask = self._mask[start : start + self.concept_chunk]  # (c, n)
            sims = scale * torch.einsum("bd,cnd->bcn", glob, embed)
            weights = torch.softmax(sims.masked_fill(~mask[None], float("-inf")), dim=-1)
            mixed = torch.einsum("bcn,cnd->bcd", weights, embed).to(image_embeds.dtype)
            queries = F.relu(model.wordvec_proj(mixed))
            hidden = model.tagging_head(
                encoder_embeds=queries,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_atts,
                return_dict=False,
                mode="tagging",
            )[0]
            out.append(torch.sigmoid(model.fc(hidden).squeeze(-1).float()))
        return torch.cat(out, dim=1).cpu()

    def fingerprint(self) -> dict[str, Any]:
        ident = dict(self.identity)
        checkpoint = ident.pop("checkpoint", None)
        if checkpoint is not None and "checkpoint_sha256" not in self.identity:
            self.identity["checkpoint_sha256"] = file_sha256(checkpoint)  # once; multi-GB files take seconds
        ident["checkpoint_sha256"] = self.identity.get("checkpoint_sha256")
        return json.loads(
            json.dumps(
                {
                    "backend": self.backend,
                    **ident,
                    "image_size": self.image_size,
                    "label_embeddings_sha256": self._embed_sha256,
                    "n_concepts": len(self.concepts),
                    "concepts_sha256": concepts_digest(self.concepts),
                },
                default=str,
            )
        )


def concept_descriptions(
    concepts: Sequence[str], descriptions: Mapping[str, Sequence[str]] | None, fallback_template: str
) -> tuple[list[list[str]], int]:
    """Each concept's description list (the fallback prompt where none is given), and how many fell back."""
    matched = match_descriptions(concepts, descriptions)
    out: list[list[str]] = []
    n_fallback = 0
    for concept, desc in zip(concepts, matched):
        if desc is None:
            n_fallback += 1
            desc = [fallback_template.replace("{c}", " ".join(concept.replace("_", " ").split()))]
        out.append(desc)
    return out, n_fallback


def label_embeddings(
    api: RamApi,
    concepts: Sequence[str],
    descriptions: Sequence[Sequence[str]],
    cache_dir: str | os.PathLike | None = None,
) -> list[torch.Tensor]:
    """Per-concept (n_descriptions, dim) CLIP embeddings of the descriptions, via the package.

    Kept per process, and in ``cache_dir`` when given (tensors only, read with ``weights_only=True``).
    """
    key = json_digest({"encoder": EMBEDDING_ENCODER, "concepts": list(concepts), "descriptions": descriptions})
    counts = [len(d) for d in descriptions]
    cache = Path(cache_dir) / f"rampp_label_embeddings_{key[:32]}.pt" if cache_dir is not None else None
    if key in _EMBEDDINGS:
        flat = _EMBEDDINGS[key]
    elif cache is not None and cache.is_file():
        stored = torch.load(cache, map_location="cpu", weights_only=True)
        flat, stored_counts = stored["embeddings"], stored["counts"].tolist()
        if stored_counts != counts or flat.shape[0] != sum(counts):
            raise ValueError(f"{cache} does not match the concepts' descriptions; delete it")
    else:
        llm_tag_des = [{c: list(d)} for c, d in zip(concepts, descriptions)]
        flat, categories = api.build_openset_llm_label_embedding(llm_tag_des)
        flat = flat.detach().float().cpu()
        if list(categories) != list(concepts) or flat.shape[0] != sum(counts):
            raise RuntimeError("build_openset_llm_label_embedding returned other categories or counts than asked")
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{uuid.uuid4().hex}.tmp")
            torch.save({"embeddings": flat, "counts": torch.tensor(counts, dtype=torch.long)}, tmp)
            os.replace(tmp, cache)
    _EMBEDDINGS[key] = flat
    return list(torch.split(flat, counts, dim=0))


def from_config(
    entry: TaggerEntry, concepts: Sequence[str], *, descriptions: Mapping[str, list[str]] | None = None
) -> RamPlusTagger:
    """Build a :class:`RamPlusTagger` from an ``image_corpora.<name>.tagger`` entry (keys in the module doc)."""
    cfg = entry.config
    checkpoint = entry.existing_file("checkpoint", cfg.checkpoint)
    vit, image_size, fallback = cfg.vit, cfg.image_size, cfg.fallback_template
    cache_dir, chunk = cfg.label_embedding_cache, cfg.concept_chunk
    descriptions = descriptions_from_config(entry, descriptions)

    api = import_ram(entry.prefix)
    per_concept, n_fallback = concept_descriptions(concepts, descriptions, fallback)
    try:
        model = api.ram_plus(pretrained=str(checkpoint), image_size=image_size, vit=vit)
    except (RuntimeError, OSError, KeyError, ValueError) as err:
        raise entry.error(
            "checkpoint",
            f"RAM++ could not be built from {str(checkpoint)!r}: {err} (offline? the bert-base-uncased tokenizer "
            "must be in the Hugging Face cache, see helpers/images/tagger_rampp.py)",
        ) from err
    embeddings = label_embeddings(api, concepts, per_concept, Path(cache_dir).expanduser() if cache_dir else None)
    identity = {
        "checkpoint": str(checkpoint),
        "checkpoint_bytes": checkpoint.stat().st_size,
        "vit": vit,
        "ram_version": api.version,
        "label_encoder": EMBEDDING_ENCODER,
        "descriptions_sha256": json_digest(per_concept),
        "n_concepts_fallback_description": n_fallback,
        "fallback_template": fallback,
    }
    return RamPlusTagger(
        model,
        api.get_transform(image_size=image_size),
        concepts,
        embeddings,
        image_size=image_size,
        concept_chunk=chunk,
        identity=identity,
    )
