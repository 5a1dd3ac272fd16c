"""Compare the RAM++ adapter with the recognize-anything package's own inference (run in the RAM++ environment).

Run by ``tests/test_rampp_package.py`` with the RAM++ environment's python (``FDP_RAMPP_PYTHON``), never
imported by the main test suite. It builds RAM++ (Swin-L, 384 px) with random weights, offline:

* the ``bert-base-uncased`` tokenizer ``ram_plus`` loads is a BERT WordPiece vocabulary of the real size
  (30,522 entries, special tokens at BERT's ids) generated here into a Hugging Face cache folder, read with
  ``HF_HUB_OFFLINE=1`` -- RAM++'s tagging path never tokenizes text, only the embedding table's size matters;
* ``clip.load("ViT-B/16")`` (the label-embedding encoder) returns a randomly initialised ViT-B/16 CLIP of the
  released shape, so the package's own ``build_openset_llm_label_embedding`` runs unchanged around it.

Checks, on the same images: per-concept probabilities (the package's logits, caught by a hook on ``model.fc``
inside ``generate_tag`` / ``generate_tag_openset``, vs :meth:`RamPlusTagger.scores`), the tag strings (order
included) the package returns vs the adapter's probabilities above the package's class thresholds, and the
open-set label embeddings (:func:`label_embeddings`, also through its cache file). Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

VOCAB_SIZE = 30522  # bert-base-uncased
SNAPSHOT = "0" * 40


def offline_tokenizer_cache(root: Path) -> None:
    """A Hugging Face hub cache holding a generated ``bert-base-uncased`` vocabulary (no network)."""
    repo = root / "models--bert-base-uncased"
    snap = repo / "snapshots" / SNAPSHOT
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    special = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    words = "a photo of the cat dog tree car person".split()
    vocab = []
    for i in range(VOCAB_SIZE):
        if i in special:
            vocab.append(special[i])
        elif i < 999:
            vocab.append(f"[unused{i}]")
        elif i - 999 < len(words):
            vocab.append(words[i - 999])
        else:
            vocab.append(f"tok{i}")
    (snap / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (snap / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))


def main() -> None:
    cache = Path(tempfile.mkdtemp(prefix="rampp-check-"))
    offline_tokenizer_cache(cache / "hub")
    os.environ.update(HF_HUB_CACHE=str(cache / "hub"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

    import numpy as np
    import ram.utils.openset_utils as openset_utils
    import torch
    from PIL import Image
    from torch import nn

    from helpers.images import tagger_rampp

    torch.manual_seed(0)

    def random_clip(name: str, device: str = "cpu", jit: bool = False):  # noqa: ARG001 -- clip.load's signature
        from clip.model import CLIP

        model = CLIP(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12)  # ViT-B/16's shape
        generator = torch.Generator().manual_seed(1)  # every load gives the same "pretrained" weights
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
        return model.float().eval(), None

    openset_utils.clip.load = random_clip

    api = tagger_rampp.import_ram()
    model = api.ram_plus(pretrained="", image_size=384, vit="swin_l").eval()
    with torch.no_grad():  # RAM++ leaves label_embed at zero until weights are loaded: give it values
        model.label_embed.normal_(0, 0.05)
        model.reweight_scale.fill_(float(np.log(1 / 0.07)))
    transform = api.get_transform(image_size=384)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((300, 400), (384, 384), (500, 250))
    ]
    batch = torch.stack([transform(im) for im in images])

    caught: list[torch.Tensor] = []
    hook = model.fc.register_forward_hook(lambda _m, _i, out: caught.append(out.detach().squeeze(-1).clone()))

    def package_run(openset: bool) -> tuple[list[str], torch.Tensor]:
        caught.clear()
        with torch.no_grad():
            tags = model.generate_tag_openset(batch) if openset else model.generate_tag(batch)[0]
        return list(tags), torch.sigmoid(caught[-1].float())

    def split_thresholds(probs: torch.Tensor) -> torch.Tensor:
        """Per concept, the middle image's probability moved up or down at random by 1e-3 (far above the float
        error): that image gets a random half of the tags, so the tag lists test selection and order."""
        signs = torch.where(torch.rand(probs.shape[1], generator=torch.Generator().manual_seed(2)) < 0.5, -1.0, 1.0)
        return probs[1] + 1e-3 * signs

    def adapter_tags(probs: torch.Tensor, names, thresholds: torch.Tensor, deleted) -> list[str]:
        keep = probs > thresholds
        keep[:, list(deleted)] = False
        return [" | ".join(str(names[j]) for j in torch.nonzero(row).flatten().tolist()) for row in keep]

    report: dict[str, object] = {"torch": torch.__version__, "ram": api.version}

    # ---- closed set: the 4,585 built-in tags and their 51 description embeddings each
    names = [str(t) for t in model.tag_list]
    _, probe = package_run(openset=False)
    model.class_threshold = split_thresholds(probe)
    package_tags, package_probs = package_run(openset=False)
    per_class = model.label_embed.detach().view(model.num_class, -1, model.label_embed.shape[1])
    tagger = tagger_rampp.RamPlusTagger(model, transform, names, list(per_class), image_size=384, concept_chunk=1000)
    probs = tagger.scores(batch)
    report["closed_max_abs_diff"] = float((probs - package_probs).abs().max())
    report["closed_tags_equal"] = (
        adapter_tags(probs, names, model.class_threshold, model.delete_tag_index) == package_tags
    )
    report["closed_n_tags"] = [len(t.split(" | ")) if t else 0 for t in package_tags]

    # ---- open set: descriptions -> CLIP embeddings by the package, through the adapter's label_embeddings
    concepts = ["snow leopard", "fire truck", "teddy bear", "espresso machine", "paper lantern"]
    descriptions = [[f"a photo of a {c}.", f"a {c} in the wild.", f"a close-up of a {c}."] for c in concepts]
    ours = tagger_rampp.label_embeddings(api, concepts, descriptions, cache / "embeddings")
    (stored,) = (cache / "embeddings").glob("rampp_label_embeddings_*.pt")
    cached = torch.load(stored, map_location="cpu", weights_only=True)["embeddings"]
    flat, categories = openset_utils.build_openset_llm_label_embedding([{c: d} for c, d in zip(concepts, descriptions)])
    report["openset_categories_equal"] = list(categories) == concepts
    report["openset_embedding_max_abs_diff"] = float((torch.cat(ours) - flat.float()).abs().max())
    report["openset_cache_max_abs_diff"] = float((cached - torch.cat(ours)).abs().max())
    model.tag_list = np.array(concepts)
    model.label_embed = nn.Parameter(flat.float())
    model.num_class = len(concepts)
    model.delete_tag_index = []
    model.class_threshold = torch.full((len(concepts),), 0.5)
    _, probe = package_run(openset=True)
    model.class_threshold = split_thresholds(probe)
    package_tags, package_probs = package_run(openset=True)
    tagger = tagger_rampp.RamPlusTagger(model, transform, concepts, ours, image_size=384)
    probs = tagger.scores(batch)
    report["openset_max_abs_diff"] = float((probs - package_probs).abs().max())
    report["openset_tags_equal"] = adapter_tags(probs, concepts, model.class_threshold, []) == package_tags
    report["openset_package_tags"] = package_tags
    hook.remove()
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
