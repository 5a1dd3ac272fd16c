"""The RAM++ adapter against the real recognize-anything package (Swin-L, 384 px, random weights).

The package cannot share this environment (it pins timm==0.4.12), so the comparison runs as a subprocess in
the RAM++ environment (README, "Image tagging with RAM++"): set ``FDP_RAMPP_PYTHON`` to that environment's
python. Without it, or when that python cannot import ``ram``, the test is skipped and says why. What is
compared, and how it runs offline, is in ``tests/rampp_reference.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "rampp_reference.py"


def _rampp_python() -> str:
    python = os.environ.get("FDP_RAMPP_PYTHON")
    if not python:
        pytest.skip("FDP_RAMPP_PYTHON is not set (the RAM++ environment's python; see README, RAM++)")
    if not Path(python).is_file():
        pytest.skip(f"FDP_RAMPP_PYTHON={python} does not exist")
    probe = subprocess.run([python, "-c", "import ram, clip, timm"], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot import ram, clip and timm: {probe.stderr.strip().splitlines()[-1:]}")
    return python


@pytest.mark.slow
def test_adapter_agrees_with_the_package():
    python = _rampp_python()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run([python, str(SCRIPT)], capture_output=True, text=True, timeout=1800, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    # closed set: 4,585 tags with 51 descriptions each, the package's generate_tag
    assert report["closed_max_abs_diff"] < 1e-5
    assert report["closed_tags_equal"]
    assert 0 < report["closed_n_tags"][1] < 4585  # the middle image gets some tags, in the package's order
    # open set: descriptions encoded by the package's build_openset_llm_label_embedding, generate_tag_openset
    assert report["openset_categories_equal"]
    assert report["openset_embedding_max_abs_diff"] == 0.0
    assert report["openset_cache_max_abs_diff"] == 0.0
    assert report["openset_max_abs_diff"] < 1e-5
    assert report["openset_tags_equal"]
    assert 0 < len(report["openset_package_tags"][1].split(" | ")) < 5
