"""helpers.devices: one device resolver, one list of precisions, one autocast context."""

from __future__ import annotations

import contextlib

import pytest
import torch

from helpers import devices
from helpers.params.base import Precision


def test_resolve_device_returns_a_string_and_auto_means_cuda_when_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert devices.resolve_device(None) == devices.resolve_device("auto") == expected
    assert devices.resolve_device("cpu") == "cpu"
    assert devices.resolve_device(torch.device("cpu")) == "cpu"
    assert devices.resolve_device("cuda:1") == "cuda:1"  # named, not opened
    with pytest.raises(RuntimeError):
        devices.resolve_device("gpu0")


def test_precisions_are_the_params_choices():
    assert devices.PRECISIONS == ("fp32", "bf16", "fp16") == Precision.__args__


def test_autocast_is_a_no_op_for_fp32_and_casts_matmuls_otherwise():
    assert isinstance(devices.autocast("cpu", "fp32"), contextlib.nullcontext)
    a = torch.ones(4, 4)
    with devices.autocast("cpu", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with devices.autocast("cpu", "fp32"):
        assert (a @ a).dtype == torch.float32
    with pytest.raises(ValueError, match="'fp8' is not one of fp32, bf16, fp16"):
        devices.autocast("cpu", "fp8")


def test_no_module_defines_its_own_precisions_or_device_resolver():
    from pathlib import Path

    src = Path(devices.__file__).parent
    for path in src.rglob("*.py"):
        if path.name == "devices.py" or "params" in path.parts:
            continue
        text = path.read_text()
        assert "PRECISIONS = (" not in text, path
        assert "def resolve_device" not in text, path
