"""Let It Wag! candidates from URL lists: img2dataset in its own environment, against a local HTTP server.

img2dataset pins pandas<3 and webdataset<0.3, so it runs in ``.venv-img2dataset`` (``./run.sh
img2dataset-env``; CI makes it). The end-to-end tests serve generated images -- some corrupt, some missing
(404) -- from ``http.server`` on 127.0.0.1 (never the internet), download them with the real img2dataset and
build the test set; they run when that environment exists (or ``FDP_IMG2DATASET_PYTHON`` names one) and are
skipped with the reason otherwise. The readers of img2dataset's output are also checked on hand-made output,
without the environment.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.controls import download, wag_stage
from helpers.params import ConfigError, validate
from helpers.params.controls import LetItWag

ROOT = Path(__file__).resolve().parents[1]

# class -> (good images, corrupt files, missing URLs); "zebra" is the most frequent concept, never selected
PLAN = {"okapi": (6, 1, 1), "quokka": (5, 0, 2), "aye aye": (2, 0, 3), "zebra": (4, 0, 0)}
COUNTS = {"okapi": 3, "quokka": 5, "aye aye": 1, "zebra": 900}


def _img2dataset_python() -> str:
    python = os.environ.get(download.ENV_VAR) or str(ROOT / ".venv-img2dataset" / "bin" / "python")
    if not Path(python).is_file():
        pytest.skip(f"no img2dataset environment at {python} (make it with ./run.sh img2dataset-env)")
    probe = subprocess.run([python, "-c", "import img2dataset"], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot import img2dataset: {probe.stderr.strip().splitlines()[-1:]}")
    return python


def _png(rng: np.random.Generator) -> bytes:
    # random noise: distinct pHashes, so the near-duplicate step keeps every image
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def served(tmp_path):
    """A local HTTP server with the PLAN's images; yields (URL list path, the paths requested)."""
    www = tmp_path / "www"
    www.mkdir()
    rng = np.random.default_rng(0)
    rows, requested = [], []
    for c, (good, corrupt, missing) in PLAN.items():
        stem = c.replace(" ", "_")
        for i in range(good):
            (www / f"{stem}{i}.png").write_bytes(_png(rng))
            rows.append((f"{stem}{i}.png", c.title()))  # the list spells classes its own way
        for i in range(corrupt):
            (www / f"{stem}_bad{i}.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
            rows.append((f"{stem}_bad{i}.jpg", c))
        rows += [(f"{stem}_gone{i}.png", c) for i in range(missing)]

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requested.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    lists = tmp_path / "urls.csv"
    pd.DataFrame({"image_url": [base + p for p, _ in rows], "label": [c for _, c in rows]}).to_csv(lists, index=False)
    try:
        yield lists, requested
    finally:
        server.shutdown()
        server.server_close()


def _counts(tmp_path: Path) -> Path:
    path = tmp_path / "counts.parquet"
    pd.DataFrame({"concept": list(COUNTS), "count": list(COUNTS.values())}).to_parquet(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("output_format", ["files", "webdataset"])
def test_url_lists_download_and_build_with_counted_skips(tmp_path, served, output_format):
    python = _img2dataset_python()
    lists, requested = served
    section = {
        "counts": str(_counts(tmp_path)), "n_concepts": 3, "min_images": 3, "per_class": None,
        "images": {"urls": {"lists": str(lists), "url_column": "image_url", "class_column": "label",
                            "python": python, "output_format": output_format, "encode_format": "png", "timeout": 5}},
        "out_dir": str(tmp_path / "wag"),
    }  # fmt: skip
    result = wag_stage.build_from_params(section, {}, base=tmp_path)
    assert result["selection"]["concept"].tolist() == ["aye aye", "okapi", "quokka"]  # the 3 rarest
    assert not any("zebra" in p for p in requested)  # only the selected classes' URLs are fetched
    skips = result["downloads"].set_index("class")
    for c in ("aye aye", "okapi", "quokka"):
        good, corrupt, missing = PLAN[c]
        assert skips.loc[c, "urls"] == good + corrupt + missing
        assert skips.loc[c, "downloaded"] == good
        assert skips.loc[c, "failed_download"] == missing
        assert skips.loc[c, "failed_decode"] == corrupt
    assert "404" in skips.loc["quokka", "first_error"]
    # aye aye: 2 images left < min_images 3, dropped and listed; the rest balanced to the smallest (5)
    assert result["classes"] == ["okapi", "quokka"] and "aye aye" in result["dropped"]
    sheet = json.loads(Path(result["datasheet"]).read_text())
    assert sheet["n_images"] == 10
    assert sheet["downloads"]["okapi"] == {"urls": 8, "downloaded": 6, "failed_download": 1, "failed_decode": 1}
    assert pd.read_parquet(tmp_path / "wag" / "downloads.parquet").equals(result["downloads"])
    with tarfile.open(tmp_path / "wag" / "00000.tar") as tar:
        pngs = [m for m in tar.getmembers() if m.name.endswith(".png")]
        assert len(pngs) == 10
        Image.open(tar.extractfile(pngs[0])).verify()


# ---------------------------------------------------------------------------------- without the environment


def _stats(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["key", "url", "status", "error_message", "wag_class", "wag_index"])


def test_read_back_files_and_webdataset_output(tmp_path):
    stats = _stats([("000000000", "u0", "success", None, "a", 0), ("000000001", "u1", "failed_to_download",
                    "HTTP Error 404: Not Found", "a", 1), ("000000002", "u2", "success", None, "b", 2),
                    ("000000003", "u3", "failed_to_resize", "Image decoding error", "b", 3)])  # fmt: skip
    files = tmp_path / "files"
    (files / "00000").mkdir(parents=True)
    stats.to_parquet(files / "00000.parquet")
    for key in ("000000000", "000000002"):
        (files / "00000" / f"{key}.jpg").write_bytes(b"jpg-" + key.encode())
    got = download.read_download_stats(files)
    assert got["class"].tolist() == ["a", "a", "b", "b"] and got["index"].tolist() == [0, 1, 2, 3]
    found = download.collect_images(files, got, "files", "jpg")
    assert {k: [p.name for p in v] for k, v in found.items()} == {"a": ["000000000.jpg"], "b": ["000000002.jpg"]}

    wds = tmp_path / "wds"
    wds.mkdir()
    stats.to_parquet(wds / "00000.parquet")
    with tarfile.open(wds / "00000.tar", "w") as tar:
        for name, data in (("000000000.jpg", b"A"), ("000000000.json", b"{}"), ("000000002.jpg", b"B")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    found = download.collect_images(wds, download.read_download_stats(wds), "webdataset", "jpg")
    assert [p.read_bytes() for p in found["a"]] == [b"A"] and [p.read_bytes() for p in found["b"]] == [b"B"]

    skips = download.skips_per_class(got, ["b", "a", "c"]).set_index("class")
    assert skips.loc["a"].tolist() == [2, 1, 1, 0, "HTTP Error 404: Not Found"]
    assert skips.loc["b"].tolist() == [2, 1, 0, 1, "Image decoding error"]
    assert skips.loc["c", "urls"] == 0 and pd.isna(skips.loc["c", "first_error"])

    failed = got.assign(status="failed_to_download")  # every URL failed: no candidates, all counted
    assert download.collect_images(files, failed, "files", "jpg") == {}
    assert download.skips_per_class(failed, ["a", "b"])["failed_download"].tolist() == [2, 2]


def test_bad_output_and_lists_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no img2dataset shard"):
        download.read_download_stats(tmp_path)
    pd.DataFrame({"key": ["0"], "url": ["u"]}).to_parquet(tmp_path / "00000.parquet")
    with pytest.raises(ValueError, match=r"00000\.parquet: not an img2dataset shard table.*status"):
        download.read_download_stats(tmp_path)
    with pytest.raises(ConfigError, match=r"let_it_wag\.images\.urls\.lists: no file matches"):
        download.read_url_lists(str(tmp_path / "nothing*.csv"), "url", "concept")
    (tmp_path / "l.csv").write_text("link,concept\nhttp://127.0.0.1/x.png,cat\n")
    with pytest.raises(ConfigError, match=r"l\.csv has no column\(s\) \['url'\]"):
        download.read_url_lists(str(tmp_path / "l.csv"), "url", "concept")
    (tmp_path / "m.csv").write_text("url,concept\nhttp://127.0.0.1/x.png,cat\n,dog\nhttp://127.0.0.1/x.png,cat\n")
    assert download.read_url_lists(str(tmp_path / "m.csv"), "url", "concept").to_dict("list") == {
        "url": ["http://127.0.0.1/x.png"], "class": ["cat"]}  # fmt: skip


def test_a_missing_download_environment_fails_before_anything_is_fetched(tmp_path, monkeypatch):
    monkeypatch.delenv(download.ENV_VAR, raising=False)
    with pytest.raises(ConfigError, match=r"let_it_wag\.images\.urls\.python: .*does not exist.*img2dataset-env"):
        download.find_python(str(tmp_path / "no-env" / "python"))
    monkeypatch.setenv(download.ENV_VAR, str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match=rf"{download.ENV_VAR}: .*elsewhere does not exist"):
        download.find_python(None)
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: img2dataset' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ConfigError, match=r"cannot import img2dataset \(ModuleNotFoundError: img2dataset\)"):
        download.find_python(str(fake))
    section = {"counts": str(_counts(tmp_path)), "n_concepts": 2, "out_dir": str(tmp_path / "wag"),
               "images": {"urls": {"lists": str(tmp_path / "urls.csv"), "python": str(fake)}}}  # fmt: skip
    with pytest.raises(ConfigError, match="cannot import img2dataset"):
        wag_stage.build_from_params(section, {}, base=tmp_path)
    assert not (tmp_path / "wag_candidates").exists()


@pytest.mark.parametrize(
    ("images", "error"),
    [
        ({"root": "r", "urls": {"lists": "u.csv"}}, "exactly one of root"),
        ({"urls": {"lists": "u.csv", "output_format": "tfrecord"}}, r"images\.urls\.output_format"),
        ({"urls": {"lists": []}}, r"images\.urls\.lists"),
        ({"urls": {"lists": "u.csv", "timeout": 0}}, r"images\.urls\.timeout"),
        ({"urls": {"lists": "u.csv", "proxy": "x"}}, r"images\.urls\.proxy"),
    ],
)
def test_url_source_params_are_checked(images, error):
    with pytest.raises(ConfigError, match=error):
        validate(LetItWag, {"counts": "c.parquet", "n_concepts": 2, "images": images}, "let_it_wag")


def test_url_source_defaults():
    spec = validate(LetItWag, {"counts": "c", "n_concepts": 2, "images": {"urls": {"lists": ["a.csv", "b.csv"]}}},
                    "let_it_wag")  # fmt: skip
    urls = spec.images.urls
    assert (urls.url_column, urls.class_column, urls.python, urls.output_format) == ("url", "concept", None, "files")
    assert urls.lists == ["a.csv", "b.csv"] and urls.timeout == 10 and urls.image_size is None
