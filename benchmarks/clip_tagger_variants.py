"""Which CLIP, trained on the synthetic world in the stage's budget, tags it best? Variants against the stage's own.

The calibrated open_clip tagger misses its target on the world (image P >= 0.8 at R >= 0.8; README, synthetic
world), and ``clip_tagger_separability.py`` shows the CLIP's scores, not the calibration, set the limit. This
trains other CLIPs on the same corpus with ``helpers.synthetic.clip_training.train_clip`` (the stage's settings
from ``params.yaml`` ``clip_training``: epochs, batch, learning rate, warmup, seed, image cache) and measures
each with ``clip_tagger_separability.separability`` (image-centred similarity, the tagger's ``concepts``
mode): median per-concept ROC AUC, pair-level P/R of per-concept thresholds for precision 0.8 fitted on the
labelled split at caption prevalence (what the stage does), and the oracle fitted on half the corpus.

Variants (``--variants``; ``vit`` is the stage's model, the baseline, measured in the same run):

* ``vit``: ``tiny_clip_config(**clip_training.model)``, the ViT with 4 px patches;
* ``vit_2x_epochs``: the same trained twice as long;
* ``vit_sigmoid``: the same with the sigmoid loss (``init_logit_bias`` -10, ``init_logit_scale`` ln 10:
  open_clip's SigLIP form, Zhai et al. 2023), whose pairwise loss does not make an image's concepts compete;
* ``resnet``: open_clip's ``ModifiedResNet`` (CLIP's RN50 form: 3-conv stem, attention pooling) with one
  bottleneck per stage, width 8, at 64 px (the 32 px image upsampled, so the stem's first stride-2 conv sees
  it at full resolution);
* ``timm_max``: timm's ``test_resnet`` trunk at 32 px with global max pooling (the supervised tagger's
  pooling: a small object anywhere is not averaged away), a linear projection.

::

    python benchmarks/clip_tagger_variants.py --world data/raw/synthetic [--variants vit resnet ...]
        [--epochs N] [--out /tmp/clip-variants]

Each variant trains from scratch (a few minutes at the default world size on 2 cores); its model stays in
``--out/<variant>``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from helpers.params import validate
from helpers.params.study import ClipTraining
from helpers.synthetic.clip_training import tiny_clip_config, train_clip, write_model_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clip_tagger_separability import separability  # noqa: E402 -- the benchmark folder is not a package


def variant_config(variant: str, base: dict) -> dict:
    """The open_clip model config of ``variant`` (module docstring), from the stage's ViT config ``base``."""
    config = copy.deepcopy(base)
    if variant in ("vit", "vit_2x_epochs"):
        return config
    if variant == "vit_sigmoid":
        return {**config, "init_logit_bias": -10.0, "init_logit_scale": math.log(10)}
    if variant == "resnet":
        config["vision_cfg"] = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32}
        return config
    if variant == "timm_max":
        config["vision_cfg"] = {
            "image_size": base["vision_cfg"]["image_size"],
            "timm_model_name": "test_resnet",
            "timm_model_pretrained": False,
            "timm_pool": "max",
            "timm_proj": "linear",
        }
        return config
    raise SystemExit(f"unknown variant {variant!r}; choose from vit vit_2x_epochs vit_sigmoid resnet timm_max")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--world", type=Path, default=Path("data/raw/synthetic"))
    parser.add_argument("--variants", nargs="+", default=["vit", "vit_2x_epochs", "vit_sigmoid", "resnet", "timm_max"])
    parser.add_argument("--epochs", type=int, default=None, help="default: clip_training.epochs")
    parser.add_argument("--corpus-images", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()

    # the project's typed params layer: a wrong key fails here, naming clip_training.<key>
    spec = validate(ClipTraining, yaml.safe_load(args.params.read_text())["clip_training"], "clip_training")
    base = tiny_clip_config(**spec.model.given())
    epochs = args.epochs or spec.epochs
    shards = sorted((args.world / "pretrain").glob("*.tar"))
    if not shards:
        raise SystemExit(f"{args.world / 'pretrain'}: no tar shards; generate the world first (stage synthetic_world)")
    out = args.out or Path(tempfile.mkdtemp(prefix="clip-variants-"))
    torch.set_num_threads(spec.num_threads or torch.get_num_threads())
    for variant in args.variants:
        folder = out / variant.replace("_", "-")  # the config's open_clip name: no "siglip" (a Hub tokenizer)
        config_path = write_model_config(folder / f"{folder.name}.json", variant_config(variant, base))
        start = time.perf_counter()
        run = train_clip(
            shards, config_path, folder, epochs=epochs * (2 if variant == "vit_2x_epochs" else 1),
            batch_size=spec.batch_size, lr=spec.lr, weight_decay=spec.weight_decay,
            warmup_steps=spec.warmup_steps, seed=spec.seed, cache_images=spec.cache_images, progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        m = separability(args.world, folder, args.corpus_images)["image_centred"]
        print(
            f"{variant:14s} {run.n_params / 1e6:.2f}M params, trained {seconds:.0f} s, last epoch loss "
            f"{run.epoch_losses[-1]:.3f} | median AUC {m['auc_median']:.3f} | calibrated (labelled split, caption "
            f"prevalence) P {m['p_prevalence']:.3f} R {m['r_prevalence']:.3f} | oracle P {m['p_oracle']:.3f} "
            f"R {m['r_oracle']:.3f}"
            + (f" | pooled (corpus audit) P {m['p_pooled']:.3f} R {m['r_pooled']:.3f}" if "p_pooled" in m else ""),
            flush=True,
        )
    print(f"\nmodels in {out}; {epochs} epochs over {len(shards)} shards")


if __name__ == "__main__":
    main()
