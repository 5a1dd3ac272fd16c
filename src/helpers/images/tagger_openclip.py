"""Zero-shot multi-label tagging with any open_clip model (the ``open_clip`` tagger backend).

CLIP models are trained for *choosing* among captions, not for saying whether each of thousands of
concepts is visible. To tag, every concept gets a text embedding and every image a cosine similarity to
it; the similarities are then turned into per-concept probabilities by a calibration. Both steps are
spelled out here because the counts of the frequency study depend on them.

Text embeddings (prompt ensemble)
    For concept ``c`` (underscores read as spaces) each template in ``templates`` (default
    :data:`DEFAULT_TEMPLATES`, the placeholder is ``{c}``) gives a prompt; with ``use_descriptions: true``
    the concept's descriptions (e.g. the release's GPT descriptions) are added as further prompts. The
    L2-normalised prompt embeddings are averaged and normalised again (Radford et al. 2021's ensembling),
    which reduces the sensitivity to one phrasing.

Calibration (documented choice)
    With ``s_c(x)`` the cosine similarity of image ``x`` and concept ``c``::

        p_c(x) = sigmoid((s_c(x) - mu_c(x) - margin) / tau)

    ``mu_c`` is a *background* similarity that removes a bias cosine similarities are known to have, and
    ``margin`` and ``tau`` are global -- the same for every concept -- on purpose: a per-concept scale or
    quantile would equalise how often concepts are tagged, and concept frequency is exactly what the
    study measures. Two background modes (``calibration.mode``):

    ``concepts`` (default, needs no images)
        ``mu_c(x)`` = the mean similarity of ``x`` to the *other* concepts' text embeddings. It removes
        the per-image bias (some images are close to every prompt), needs no reference data, and stays in
        the image-text similarity scale (text-text similarities would not: CLIP's modality gap). It
        depends on the concept list (part of the fingerprint) and needs a broad one (tens of concepts or
        more): with a handful of concepts that often co-occur, the background includes present concepts.
    ``reference``
        ``mu_c`` = the mean of ``s_c`` over a reference set of generic images (``reference_images``: a
        glob or list of files, the first ``max_reference_images`` in sorted order -- e.g. a random sample
        of the corpus). It removes the per-concept bias (some prompts are close to every image: hubness),
        and an image's score no longer depends on the other concepts. Computed once, on the tagger's device.

    ``margin`` (default 0.05) is how far above the background an image must lie to score 0.5 and ``tau``
    (default 0.01) the width of the transition, both in cosine units. The defaults are heuristics for
    CLIP ViT-B models (a depicted concept typically lies 0.08-0.12 above the background, noise rarely
    more than 0.03). ``tau: model`` takes the model's own temperature, 1 / its learned logit scale (0.01 for
    OpenAI's ViT-B, whose scale sits at the clamp of 100): a small CLIP trained briefly learns a lower scale
    (about 14 on the synthetic world), and there tau 0.01 pushes most scores to 0 or 1, so no threshold
    between them separates anything (README, synthetic world); since the stage stores every probability above a floor and sweeps thresholds later,
    check the threshold against a small labelled sample of your corpus.

Config keys (an ``image_corpora.<name>.tagger`` entry; the model: :mod:`helpers.params.images`)::

    backend: open_clip
    name: ViT-B-32                  # open_clip model name ('hf-hub:org/repo' and 'local-dir:/path' work too)
    pretrained: laion2b_s34b_b79k   # a pretrained tag (downloads once) or a local checkpoint file path
    model_config: null              # a JSON model config for a custom architecture; registered under its
                                    # file name (name defaults to the file's stem)
    image_size: 224                 # optional check against the model's input size
    quick_gelu: false               # as for evaluation.models (OpenAI-trained weights need true)
    cache_dir: null                 # open_clip's download cache
    trusted: false                  # true: load a checkpoint torch.load(weights_only=True) refuses (a file you trust)
    weights: null                   # the path DVC tracks as this entry's input (not read here)
    templates: ["a photo of a {c}.", ...]
    use_descriptions: false         # add the concept descriptions to the prompts
    descriptions: null              # JSON file(s) of descriptions (see tagger_backends.load_descriptions)
    text_batch_size: 256
    calibration: {mode: concepts, margin: 0.05, tau: 0.01, reference_images: null, max_reference_images: 1000}

The model is loaded by :func:`helpers.evaluation.models.load_model`, the package's one open_clip loader
(fp32 weights; ``image_search.precision`` autocasts the forward pass). A checkpoint path goes to open_clip,
which loads it with ``torch.load(weights_only=True)``; a file that needs a full unpickle (a training checkpoint
holding an ``argparse.Namespace``) is refused with an error naming ``trusted``, as for ``evaluation.models``.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from helpers.images.backends import (
    TaggerEntry,
    check_concepts,
    check_image_size,
    concepts_digest,
    descriptions_from_config,
    file_sha256,
    json_digest,
    match_descriptions,
)
from helpers.images.taggers import check_batch
from helpers.params.images import DEFAULT_MARGIN, DEFAULT_TAU, DEFAULT_TEMPLATES

PLACEHOLDER = "{c}"
CALIBRATION_MODES = ("concepts", "reference")
#: the keys that say which open_clip model to load (those of an ``evaluation.models`` entry)
LOADER_KEYS = ("name", "pretrained", "model_config", "quick_gelu", "cache_dir")


@dataclass(frozen=True)
class Calibration:
    """How cosine similarities become probabilities (see the module docstring)."""

    mode: str = "concepts"
    margin: float = DEFAULT_MARGIN
    tau: float = DEFAULT_TAU
    #: reference images (sorted paths) for ``mode="reference"``
    reference_images: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in CALIBRATION_MODES:
            raise ValueError(f"calibration mode must be one of {CALIBRATION_MODES}, got {self.mode!r}")
        if not self.tau > 0:
            raise ValueError(f"calibration tau must be > 0, got {self.tau}")
        if self.mode == "reference" and not self.reference_images:
            raise ValueError("calibration mode 'reference' needs reference images")


def _tau(tau: float | str, model: Any) -> float:
    """``tau`` as a number: ``"model"`` is the model's own temperature, 1 / its learned logit scale."""
    if tau != "model":
        return float(tau)
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        raise ValueError("calibration tau 'model' needs a CLIP with a logit_scale; give tau as a number")
    return 1.0 / float(torch.as_tensor(scale).detach().float().exp())


def prompts_for(concept: str, templates: Sequence[str], descriptions: Sequence[str] | None = None) -> list[str]:
    """The prompts whose embeddings are averaged into ``concept``'s text embedding."""
    name = " ".join(concept.replace("_", " ").split())
    prompts = [t.replace(PLACEHOLDER, name) for t in templates]
    prompts.extend(descriptions or ())
    return prompts


class OpenClipTagger:
    """A :class:`helpers.images.taggers.Tagger` over an open_clip model (see the module docstring for the maths).

    Text embeddings and the reference background are computed lazily, on the device the tagger is on
    when first needed (thousands of concepts times several prompts is slow on a CPU), and kept.
    """

    backend = "open_clip"

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        concepts: Sequence[str],
        *,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        descriptions: Sequence[Sequence[str] | None] | None = None,
        calibration: Calibration = Calibration(),
        text_batch_size: int = 256,
        weights_id: Mapping[str, Any] | None = None,
    ) -> None:
        self.concepts = check_concepts(concepts)
        if not templates or not all(PLACEHOLDER in t for t in templates):
            raise ValueError(f"every template needs the placeholder {PLACEHOLDER}, got {list(templates)!r}")
        if calibration.mode == "concepts" and len(self.concepts) < 2:
            raise ValueError("calibration mode 'concepts' needs at least 2 concepts; use mode 'reference'")
        if descriptions is not None and len(descriptions) != len(self.concepts):
            raise ValueError("descriptions must have one entry (or None) per concept")
        self.model = model.eval()
        self._preprocess = preprocess
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self.descriptions = list(descriptions) if descriptions is not None else [None] * len(self.concepts)
        self.calibration = calibration
        self.text_batch_size = int(text_batch_size)
        self.weights_id = dict(weights_id or {})
        self.image_size = _square_size(getattr(model.visual, "image_size", None))
        self._device = next(model.parameters()).device
        self._dtype = next(model.visual.parameters()).dtype
        self._text: torch.Tensor | None = None  # (C, D), float32, normalised
        self._background: torch.Tensor | None = None  # (C,), reference mode only
        self._fingerprint: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------- Tagger protocol

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """open_clip's evaluation preprocessing (resize, centre crop, normalise): a picklable Compose."""
        return self._preprocess

    def to(self, device: str | torch.device) -> OpenClipTagger:
        self._device = torch.device(device)
        self.model.to(self._device)
        if self._text is not None:
            self._text = self._text.to(self._device)
        if self._background is not None:
            self._background = self._background.to(self._device)
        return self

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities (B, C), float32 on the CPU."""
        sims = self.similarities(images)
        logits = (sims - self.background(sims) - self.calibration.margin) / self.calibration.tau
        return torch.sigmoid(logits).float().cpu()

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            import open_clip

            cal = asdict(self.calibration)
            refs = cal.pop("reference_images")
            if refs:
                cal["reference_images_sha256"] = json_digest([[Path(p).name, file_sha256(p)] for p in refs])
                cal["n_reference_images"] = len(refs)
            self._fingerprint = {
                "backend": self.backend,
                "weights": {k: (str(v) if isinstance(v, Path) else v) for k, v in self.weights_id.items()},
                "open_clip_version": open_clip.__version__,
                "image_size": self.image_size,
                "precision": str(self._dtype).removeprefix("torch."),
                "templates": list(self.templates),
                "descriptions_sha256": json_digest(self.descriptions),
                "n_concepts_with_descriptions": sum(d is not None for d in self.descriptions),
                "calibration": cal,
                "n_concepts": len(self.concepts),
                "concepts_sha256": concepts_digest(self.concepts),
            }
        return json.loads(json.dumps(self._fingerprint))

    # ----------------------------------------------------------------------------- the pieces

    @torch.no_grad()
    def text_embeddings(self) -> torch.Tensor:
        """(C, D) float32 unit vectors: the normalised mean of each concept's normalised prompt embeddings."""
        if self._text is None:
            with torch.autocast(device_type=self._device.type, enabled=False):
                self._text = self._encode_prompts()
        return self._text

    def _encode_prompts(self) -> torch.Tensor:
        """Encode every prompt in batches and average per concept (index_add of unit vectors)."""
        prompts: list[str] = []
        owner: list[int] = []
        for j, (concept, desc) in enumerate(zip(self.concepts, self.descriptions)):
            batch = prompts_for(concept, self.templates, desc)
            prompts.extend(batch)
            owner.extend([j] * len(batch))
        sums: torch.Tensor | None = None
        steps = range(0, len(prompts), self.text_batch_size)
        for start in tqdm(steps, desc="text embeddings", disable=len(steps) < 20, leave=False):
            tokens = self.tokenizer(prompts[start : start + self.text_batch_size]).to(self._device)
            emb = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            if sums is None:
                sums = torch.zeros(len(self.concepts), emb.shape[1], device=self._device)
            index = torch.tensor(owner[start : start + self.text_batch_size], device=self._device)
            sums.index_add_(0, index, emb)
        assert sums is not None
        return F.normalize(sums, dim=-1)

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) float32 unit vectors for a batch from :meth:`transform`."""
        check_batch(images, self.image_size)
        feats = self.model.encode_image(images.to(self._device, dtype=self._dtype))
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def similarities(self, images: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (B, C) of images and concepts, on the tagger's device.

        The image tower follows the caller's autocast (the runner's ``precision``); the text embeddings
        and the product are computed in float32 with autocast off: with ``tau = 0.01`` a half-precision
        cosine error of 1e-3 would already move probabilities by a few percent.
        """
        image = self.image_embeddings(images)
        with torch.autocast(device_type=image.device.type, enabled=False):
            return image.float() @ self.text_embeddings().T

    def background(self, sims: torch.Tensor) -> torch.Tensor:
        """``mu_c(x)`` of the calibration, broadcastable to ``sims`` (B, C)."""
        if self.calibration.mode == "concepts":
            n = sims.shape[1]
            return (sims.sum(dim=1, keepdim=True) - sims) / (n - 1)
        return self.reference_background()[None, :]

    @torch.no_grad()
    def reference_background(self, batch_size: int = 64) -> torch.Tensor:
        """(C,) mean similarity of each concept over the reference images (``reference`` mode)."""
        if self._background is None:
            paths = self.calibration.reference_images
            transform = self.transform()
            total = torch.zeros(len(self.concepts), device=self._device)
            for start in tqdm(range(0, len(paths), batch_size), desc="reference images", leave=False):
                batch = []
                for path in paths[start : start + batch_size]:
                    with Image.open(path) as img:
                        batch.append(transform(img.convert("RGB")))
                total += self.similarities(torch.stack(batch)).sum(dim=0)
            self._background = total / len(paths)
        return self._background


def _square_size(size: Any) -> int:
    if isinstance(size, int):
        return size
    if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    raise ValueError(f"the model's input size {size!r} is not square; the tagger interface needs a square one")


def reference_paths(entry: TaggerEntry, patterns: list[str], limit: int) -> tuple[str, ...]:
    """The sorted reference image files a glob/list expands to (the first ``limit``)."""
    found: set[str] = set()
    for pattern in patterns:
        pattern = str(Path(pattern).expanduser())
        matches = glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else [pattern]
        found.update(m for m in matches if Path(m).is_file())
    if not found:
        raise entry.error("calibration.reference_images", f"no image files match {patterns!r}")
    return tuple(sorted(found)[:limit])


def from_config(
    entry: TaggerEntry, concepts: Sequence[str], *, descriptions: Mapping[str, list[str]] | None = None
) -> OpenClipTagger:
    """Build an :class:`OpenClipTagger` from an ``image_corpora.<name>.tagger`` entry (keys in the module doc)."""
    cfg = entry.config
    loader_spec = {
        "name": cfg.name,
        "pretrained": cfg.pretrained,
        "model_config": cfg.model_config_file,
        "quick_gelu": cfg.quick_gelu,
        "cache_dir": cfg.cache_dir,
        "trusted": cfg.trusted or None,
    }
    loader_spec = {k: v for k, v in loader_spec.items() if v is not None}
    templates = list(cfg.templates)
    descriptions = descriptions_from_config(entry, descriptions)
    cal = cfg.calibration
    if cal.mode == "reference":
        patterns = [cal.reference_images] if isinstance(cal.reference_images, str) else list(cal.reference_images)
        refs = reference_paths(entry, patterns, cal.max_reference_images)
    else:
        if len(concepts) < 2:
            raise entry.error("calibration.mode", "'concepts' needs at least 2 concepts; use mode 'reference'")
        refs = ()

    # the one open_clip loader (helpers.evaluation.models): by name + pretrained tag, a local checkpoint, a
    # custom model_config JSON, or hf-hub:/local-dir:; fp32 weights on the CPU (the runner moves the model and
    # autocasts with image_search.precision)
    from helpers.evaluation.models import load_model

    name = loader_spec.get("name") or Path(str(loader_spec.get("model_config", "?"))).stem
    loaded = load_model({**loader_spec, "key": f"open_clip-tagger-{name}"}, device="cpu", prefix=entry.prefix)
    model, preprocess, tokenizer = loaded.model, loaded.preprocess, loaded.tokenizer
    weights_id: dict[str, Any] = dict(loaded.fingerprint)
    try:
        model_size = _square_size(getattr(model.visual, "image_size", None))
    except ValueError as err:
        raise entry.error("name", str(err)) from err
    check_image_size(entry, model_size)

    concept_desc = match_descriptions(concepts, descriptions) if cfg.use_descriptions else None
    return OpenClipTagger(
        model,
        preprocess,
        tokenizer,
        concepts,
        templates=templates,
        descriptions=concept_desc,
        calibration=Calibration(mode=cal.mode, margin=cal.margin, tau=_tau(cal.tau, model), reference_images=refs),
        text_batch_size=cfg.text_batch_size,
        weights_id=weights_id,
    )
