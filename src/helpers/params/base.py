"""Building blocks of the params models: the strict base model, names DVC can take, probabilities."""

from __future__ import annotations

import re
import typing
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

#: a key of corpora, taggers, image_corpora, evaluation.models/datasets, studies becomes part of a stage
#: name (``text_search@<key>``) and of output paths: DVC splits stage names at ``@`` and ``.`` has a meaning
#: in its params keys, so only these characters are allowed
NAME_PATTERN = re.compile(r"^[\w-]+$")
NAME_RULE = "a name may hold letters, digits, '_' and '-' only (no '.', '@', '/', ':' or whitespace)"


def _check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"{name!r} cannot name a DVC stage: {NAME_RULE}")
    return name


#: an entry name DVC can take (see ``NAME_RULE``)
Name = Annotated[str, AfterValidator(_check_name)]
#: a probability in [0, 1]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


#: a string with something besides whitespace in it
NonEmptyStr = Annotated[str, Field(min_length=1), AfterValidator(_non_blank)]
Precision = Literal["fp32", "bf16", "fp16"]

#: precisions of every model run (autocast over fp32 weights), defined here once; :mod:`helpers.devices`
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
#: the "weights"/"data" docstring of the per-entry DVC dependency keys
DVC_PATH_DOC = "the path DVC tracks as this entry's input; not read by the code"

#: the ``trusted`` key of an open_clip model entry (``evaluation.models.<m>`` and the open_clip tagger's)
TRUSTED_DOC = (
    "load the checkpoint with torch.load(weights_only=False), which runs any code the file holds: only for a "
    "file you trust (a training checkpoint holding e.g. an argparse.Namespace or numpy scalars)"
)


class Section(BaseModel):
    """A params section: unknown keys are errors, and values keep their YAML type (no "5" -> 5)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
