"""One device and precision helper for every model run (image tagging, evaluation, CLIP training).

* :func:`resolve_device`: ``None`` or ``"auto"`` mean CUDA when available, else the CPU; always a ``str``
  (``"cuda"``, ``"cuda:1"``, ``"cpu"``), which torch accepts wherever a device goes.
* :data:`PRECISIONS`: ``fp32`` | ``bf16`` | ``fp16``, the params' names (:mod:`helpers.params.base`).
* :func:`autocast`: the context a forward pass runs in: nothing for ``fp32``, else ``torch.autocast`` with
  the precision's dtype on the device's type (half precision is autocast over fp32 weights, as open_clip's
  own evaluation does, so weights stay exact and only matmuls/convolutions run in half precision).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from helpers.params.base import PRECISIONS

__all__ = ["PRECISIONS", "autocast", "autocast_dtype", "resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> str:
    """The device to run on as a string: ``None``/``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``.

    Raises ``RuntimeError`` (torch's) for a string torch does not know as a device.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(torch.device(device))


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (``None`` for fp32); a ``ValueError`` names the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: str | torch.device, precision: str) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
