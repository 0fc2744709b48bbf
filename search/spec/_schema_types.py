"""The study file's building blocks: the error a validator raises at a precise place, the value types
numbers and flags are read as, and Section, a mapping that names unknown and missing keys.
search.spec._schema_sources and search.spec._schema declare the study file's parts with them."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator

from models import PRESETS
from search.errors import StudySpecError
from search.spec._knobs import KNOBS

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # Keras dtype policies a study may train under
FEATURE_BASES = tuple(sorted(n for n, p in PRESETS.items() if p.family in ("convnet", "wrn")))


class Problem(ValueError):
    """What is wrong and how to fix it, at `path` below the value a validator checks."""

    def __init__(self, problem: str, *path: str | int) -> None:
        super().__init__(problem)
        self.path = path


def spec_error(exc: ValidationError, where: str) -> StudySpecError:
    """The first error, at its dotted path (`where`, the file, for the top level)."""
    err = exc.errors()[0]
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, Exception):
        path, problem = (*err["loc"], *getattr(cause, "path", ())), str(cause)
    else:
        path, problem = err["loc"], f"{err['msg']} but got {err['input']!r}"
    dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return StudySpecError(dotted or where, problem)


# --- value types: numbers keep the type the file gives (the space hash is over these values) -----


def _finite(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a finite number but got {value!r}")
    return value


def _positive(value: Any) -> Any:
    if _finite(value) <= 0:
        raise ValueError("must be positive")
    return value


def _boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _int_at_least(minimum: int, problem: str, fix: str = "") -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{problem} but got {value!r}{fix}")
        return value

    return Annotated[int, BeforeValidator(check), Field(ge=minimum)]


Number = Annotated[int | float, BeforeValidator(_finite), WithJsonSchema({"type": "number"})]
PositiveNumber = Annotated[int | float, BeforeValidator(_positive),
                           WithJsonSchema({"type": "number", "exclusiveMinimum": 0})]
Bool = Annotated[bool, BeforeValidator(_boolean)]
Text = Annotated[str, BeforeValidator(lambda v: "" if v is None else str(v))]
PositiveInt = _int_at_least(1, "must be a positive integer")
AtLeastOne = _int_at_least(1, "must be >= 1")
AtLeastThree = _int_at_least(3, "must be >= 3 (fewer seeds say nothing about the noise)")
NonNegativeInt = _int_at_least(0, "must be a non-negative integer")
SubsetSize = _int_at_least(10, "must be an integer >= 10 or absent")
FailureStreak = _int_at_least(1, "must be an integer >= 1", "; give how many failures in a row, all for one "
                              "reason, stop the study (or leave it out for 5)")
KnobName = Literal[tuple(KNOBS)]
FeatureBase = Literal[FEATURE_BASES]


class Section(BaseModel):
    """A mapping of the study file: null means empty; an unknown or a missing key is named."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, raw: Any) -> Any:
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ValueError(f"expected a mapping but got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(cls.model_fields), key=str)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; allowed: {sorted(cls.model_fields)}")
        for key, field in cls.model_fields.items():
            if field.is_required() and key not in raw:
                raise Problem(f"missing; give {field.description}", key)
        return raw
