"""Tests of helpers.synthetic.clip_training on a tiny generated webdataset corpus (coloured shapes, one caption each).

The model is a micro config (width 32, 2 layers) so the whole module runs in well under a minute on 2 CPU
cores; what is checked does not depend on size: the loss falls, a seed repeats a run exactly, the saved
state dict round-trips through ``torch.load(weights_only=True)`` and ``helpers.evaluation.models.load_model``, and
a corrupt image is skipped and counted.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.shards import ConfigError
from helpers.synthetic.clip_training import (
    cosine_lr,
    count_samples,
    tiny_clip_config,
    train_clip,
    write_model_config,
)

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (230, 210, 30)}
SHAPES = ("circle", "square", "triangle")
N_SAMPLES = 200
CORRUPT_KEY = "000000007"


def _shape_png(colour: str, shape: str, rng: np.random.Generator, size: int = 32) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    lo, hi = int(rng.integers(1, 8)), size - int(rng.integers(1, 8))
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse([lo, lo, hi, hi], fill=fill)
    elif shape == "square":
        draw.rectangle([lo, lo, hi, hi], fill=fill)
    else:
        draw.polygon([(size // 2, lo), (lo, hi), (hi, hi)], fill=fill)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shapes_corpus(folder: Path, n: int = N_SAMPLES, n_shards: int = 2, seed: int = 0) -> list[str]:
    """``n`` samples "a {colour} {shape}" (+ one extra sample whose image bytes are garbage) in tars."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(n_shards):
        path = folder / f"{shard:05d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for i in range(shard, n, n_shards):
                colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
                _member(tar, f"{i:09d}.png", _shape_png(colour, shape, rng))
                _member(tar, f"{i:09d}.txt", f"a {colour} {shape}".encode())
            if shard == 0:  # a corrupt image: skipped and counted
                _member(tar, f"{CORRUPT_KEY}x.jpg", b"\xff\xd8 this is not a jpeg")
                _member(tar, f"{CORRUPT_KEY}x.txt", b"a red circle")
        paths.append(str(path))
    return paths


def micro_config() -> dict:
    return tiny_clip_config(
        32,
        32,
        vision_width=32,
        vision_layers=2,
        vision_heads=2,
        patch_size=8,
        text_width=32,
        text_layers=2,
        text_heads=2,
        context_length=16,
    )


SETTINGS = dict(batch_size=50, lr=5e-3, weight_decay=0.1, warmup_steps=2, seed=0, progress=False, num_threads=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("clip_training")
    shards = write_shapes_corpus(root / "shards")
    config = write_model_config(root / "micro-clip-test.json", micro_config())
    return {"root": root, "shards": shards, "config": config}


@pytest.fixture(scope="module")
def trained(corpus: dict):
    return train_clip(corpus["shards"], corpus["config"], corpus["root"] / "run", epochs=6, **SETTINGS)


def test_config_is_valid_open_clip_json(tmp_path: Path) -> None:
    import open_clip

    path = write_model_config(tmp_path / "tiny-clip-x.json", tiny_clip_config())
    cfg = json.loads(path.read_text())
    assert cfg == tiny_clip_config()
    open_clip.add_model_config(path)
    assert open_clip.get_model_config("tiny-clip-x") == cfg
    with pytest.raises(ValueError):
        tiny_clip_config(image_size=30, patch_size=4)
    with pytest.raises(ValueError):
        write_model_config(tmp_path / "x.yaml", cfg)


def test_cosine_schedule() -> None:
    factors = [cosine_lr(s, 100, 10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert factors[-1] < 0.01


def test_loss_decreases_and_outputs(trained, corpus: dict) -> None:
    first, last = trained.epoch_losses[0], trained.epoch_losses[-1]
    assert last < first - 0.3, trained.epoch_losses
    assert len(trained.step_losses) == 6 * 4  # 200 samples / batch 50
    assert trained.n_samples == N_SAMPLES
    summary = json.loads(trained.summary_path.read_text())
    assert summary["settings"]["seed"] == 0 and summary["settings"]["epochs"] == 6
    assert summary["loss_history"]["epoch"] == trained.epoch_losses
    assert summary["model_config"] == micro_config()
    with trained.loss_curve_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in rows] == pytest.approx(trained.step_losses)
    assert float(rows[0]["lr"]) == pytest.approx(SETTINGS["lr"] / SETTINGS["warmup_steps"])  # warmup
    assert float(rows[1]["lr"]) == pytest.approx(SETTINGS["lr"])


def test_corrupt_image_is_skipped_and_counted(trained, corpus: dict) -> None:
    assert count_samples(corpus["shards"]) == [N_SAMPLES // 2 + 1, N_SAMPLES // 2]
    assert trained.skipped == {"bad_image": 1}
    assert trained.shard_errors == {}


def test_same_seed_same_history(corpus: dict, tmp_path: Path) -> None:
    kwargs = {**SETTINGS, "epochs": 2, "max_samples": 100}
    a = train_clip(corpus["shards"], corpus["config"], tmp_path / "a", **kwargs)
    b = train_clip(corpus["shards"], corpus["config"], tmp_path / "b", **kwargs)
    assert a.step_losses == b.step_losses and len(a.step_losses) == 4
    assert a.n_samples == 100
    sa, sb = torch.load(a.checkpoint_path, weights_only=True), torch.load(b.checkpoint_path, weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = train_clip(corpus["shards"], corpus["config"], tmp_path / "c", **{**kwargs, "seed": 1})
    assert c.step_losses != a.step_losses


def test_checkpoint_round_trip(trained) -> None:
    state = torch.load(trained.checkpoint_path, weights_only=True)
    own = trained.model.state_dict()
    assert state.keys() == own.keys()
    assert all(torch.equal(state[k], own[k]) for k in own)


def test_loads_through_evaluation(trained) -> None:
    from helpers.evaluation.models import load_model

    loaded = load_model({"model_config": str(trained.model_config_path), "pretrained": str(trained.checkpoint_path)})
    from PIL import Image

    images = torch.stack([loaded.preprocess(Image.new("RGB", (32, 32), colour)) for colour in COLOURS.values()])
    with torch.no_grad():
        expected = trained.model.encode_image(images)
        got = loaded.model.encode_image(images)
    assert torch.allclose(got, expected, atol=1e-6)
    tokens = loaded.tokenizer(["a red circle"])
    assert tokens.shape == (1, 16)


def test_worker_process_gives_the_same_run(corpus: dict, tmp_path: Path) -> None:
    """One DataLoader worker process streams the same batches (and skip counts) as the main process."""
    kwargs = {**SETTINGS, "epochs": 1, "max_samples": 150}
    a = train_clip(corpus["shards"], corpus["config"], tmp_path / "a", **kwargs)
    b = train_clip(corpus["shards"], corpus["config"], tmp_path / "b", num_workers=1, **kwargs)
    assert a.step_losses == b.step_losses
    assert a.n_samples == b.n_samples == 149  # the cap counts the corrupt sample (read, then skipped)
    assert a.skipped == b.skipped == {"bad_image": 1}


def test_train_from_params_writes_the_config_under_the_output_folders_name(corpus: dict, tmp_path: Path) -> None:
    """The stage's entry point: relative paths, the model config named after the output folder."""
    import shutil

    from helpers.synthetic.clip_training import train_from_params

    for shard in corpus["shards"]:
        (tmp_path / "shards").mkdir(exist_ok=True)
        shutil.copy(shard, tmp_path / "shards")
    section = {
        "shards": "shards/*.tar",
        "out_dir": "models/tiny-world-clip",
        "epochs": 1,
        "batch_size": 50,
        "lr": 5e-3,
        "seed": 0,
        "num_threads": 1,
        "model": {
            "image_size": 32,
            "embed_dim": 16,
            "vision_width": 32,
            "vision_layers": 1,
            "text_width": 32,
            "text_layers": 1,
            "patch_size": 8,
        },
    }
    result = train_from_params(section, tmp_path, progress=False)
    assert result.model_config_path == tmp_path / "models" / "tiny-world-clip" / "tiny-world-clip.json"
    assert result.checkpoint_path.exists() and len(result.epoch_losses) == 1
    with pytest.raises(ConfigError, match=r"^clip_training\.epoch: unknown key; did you mean .epochs."):
        train_from_params({**section, "epoch": 1}, tmp_path)
    with pytest.raises(ConfigError, match="clip_training.shards: .*matches no files"):
        train_from_params({**section, "shards": "nothing/*.tar"}, tmp_path)
    with pytest.raises(ConfigError, match="clip_training.model"):
        train_from_params({**section, "model": {"image_size": 30, "patch_size": 8}}, tmp_path)


def test_cached_images_give_the_same_run(corpus: dict, tmp_path: Path) -> None:
    """cache_images replays the first epoch's decoded samples: same losses, weights and skip counts; checked."""
    kwargs = {**SETTINGS, "epochs": 3, "max_samples": 150}
    a = train_clip(corpus["shards"], corpus["config"], tmp_path / "a", **kwargs)
    b = train_clip(corpus["shards"], corpus["config"], tmp_path / "b", cache_images=True, **kwargs)
    assert a.step_losses == b.step_losses and a.epoch_losses == b.epoch_losses
    assert a.n_samples == b.n_samples == 149 and a.skipped == b.skipped == {"bad_image": 1}
    sa, sb = torch.load(a.checkpoint_path, weights_only=True), torch.load(b.checkpoint_path, weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert json.loads(b.summary_path.read_text())["settings"]["cache_images"] is True
    with pytest.raises(ValueError, match="num_workers 0"):
        train_clip(corpus["shards"], corpus["config"], tmp_path / "c", cache_images=True, num_workers=1, **kwargs)


def test_cached_images_keep_a_damaged_shards_error_every_epoch(corpus: dict, tmp_path: Path) -> None:
    """A shard damaged part way: its samples before the damage are used and its error reported, cached or not."""
    damaged = tmp_path / "damaged.tar"
    data = Path(corpus["shards"][1]).read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    shards = [corpus["shards"][0], str(damaged)]
    kwargs = {**SETTINGS, "epochs": 2}
    a = train_clip(shards, corpus["config"], tmp_path / "a", **kwargs)
    b = train_clip(shards, corpus["config"], tmp_path / "b", cache_images=True, **kwargs)
    assert a.step_losses == b.step_losses and a.n_samples == b.n_samples
    assert a.shard_errors.keys() == b.shard_errors.keys() == {str(damaged)}


def test_cache_images_with_workers_is_refused_naming_the_section() -> None:
    from helpers.params import ConfigError, validate
    from helpers.params.study import ClipTraining

    section = {"shards": "x/*.tar", "out_dir": "m", "epochs": 1, "batch_size": 2, "lr": 0.1}
    assert validate(ClipTraining, {**section, "cache_images": True}, "clip_training").cache_images
    with pytest.raises(ConfigError, match=r"^clip_training: cache_images .* num_workers to 0"):
        validate(ClipTraining, {**section, "cache_images": True, "num_workers": 2}, "clip_training")


def test_a_config_with_a_logit_bias_trains_with_the_sigmoid_loss(corpus: dict, tmp_path: Path) -> None:
    """open_clip's SigLIP form: ``init_logit_bias`` in the config selects ``SigLipLoss``; the bias is learnt,
    saved and loaded back through evaluation, and the sigmoid loss (summed over the batch's pairs, so on another
    scale than InfoNCE's) falls."""
    import math

    from helpers.evaluation.models import load_model

    config = {**micro_config(), "init_logit_bias": -10.0, "init_logit_scale": math.log(10)}
    path = write_model_config(tmp_path / "micro-sigmoid-loss-test.json", config)
    run = train_clip(corpus["shards"], path, tmp_path / "run", epochs=4, **SETTINGS)
    assert run.epoch_losses[-1] < run.epoch_losses[0] - 0.3, run.epoch_losses
    state = torch.load(run.checkpoint_path, weights_only=True)
    assert "logit_bias" in state and float(state["logit_bias"]) != -10.0  # learnt
    loaded = load_model({"model_config": str(path), "pretrained": str(run.checkpoint_path)})
    assert torch.equal(loaded.model.logit_bias.detach(), state["logit_bias"])
    # the first step's loss is SigLIP's at initialisation (each positive pair costs about -log sigmoid(-10) = 10,
    # averaged per image), not InfoNCE's (about log 50 = 3.9 for a batch of 50)
    assert run.step_losses[0] > 8.0, run.step_losses[:3]
