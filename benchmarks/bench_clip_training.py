"""Where a training step of the world's tiny CLIP goes, and what the optimiser and precision options change.

Times one step (forward, symmetric InfoNCE loss, backward, AdamW update) of the CLIP that ``clip_training``
builds (``helpers.synthetic.clip_training.tiny_clip_config`` at the params' model settings) on a random batch,
no data loading, for:

* ``unfused``: AdamW's default multi-tensor update (the baseline, measured in the same run);
* ``fused``: ``AdamW(fused=True)``, what ``train_clip`` uses on CPU and CUDA;
* ``fused_bf16``: the same under ``torch.autocast`` in bfloat16.

It also prints the forward time of each tower and the optimiser step alone (the 49,408-token embedding table
is nine tenths of the parameters, so the update touches 3.2M values per step whatever the caption length)::

    python benchmarks/bench_clip_training.py [--batch-size 128] [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
import yaml

from helpers.synthetic.clip_training import build_model, tiny_clip_config, write_model_config


def timed(fn: Callable[[], None], steps: int) -> float:
    """Mean milliseconds of ``fn`` over ``steps`` calls, after two warm-up calls."""
    fn()
    fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--batch-size", type=int, default=None, help="default: clip_training.batch_size")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    section = yaml.safe_load(args.params.read_text())["clip_training"]
    batch_size = args.batch_size or int(section["batch_size"])
    config = tiny_clip_config(**section.get("model", {}))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_model_config(Path(tmp) / "bench-clip.json", config)
        model, _, _, tokenizer = build_model(path, seed=0)
    size = config["vision_cfg"]["image_size"]
    images = torch.randn(batch_size, 3, size, size)
    tokens = tokenizer(["a photo of two red foxes and a school bus"] * batch_size)
    loss_fn = open_clip.ClipLoss()
    print(f"batch {batch_size}, {args.threads} threads, load {tuple(round(x, 2) for x in os.getloadavg())}")
    print(
        f"parameters {sum(p.numel() for p in model.parameters()):,}; token embedding {model.token_embedding.weight.numel():,}"
    )

    results = {}
    for variant in ("unfused", "fused", "fused_bf16"):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=variant != "unfused" or None)
        bf16 = variant.endswith("bf16")

        def step(optimizer: torch.optim.Optimizer = optimizer, bf16: bool = bf16) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                image_features, text_features, logit_scale = model(images, tokens)[:3]
            loss = loss_fn(image_features.float(), text_features.float(), logit_scale.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        results[variant] = timed(step, args.steps)
        if variant == "unfused":
            with torch.no_grad():
                print(f"  image tower forward {timed(lambda: model.encode_image(images), args.steps):7.1f} ms")
                print(f"  text tower forward  {timed(lambda: model.encode_text(tokens), args.steps):7.1f} ms")
        print(f"  optimiser step alone ({variant}) {timed(optimizer.step, args.steps):7.1f} ms")
    base = results["unfused"]
    for variant, ms in results.items():
        print(f"{variant:>11}: {ms:7.1f} ms/step  {batch_size / ms * 1000:7.0f} samples/s  x{base / ms:.2f} of unfused")


if __name__ == "__main__":
    main()
