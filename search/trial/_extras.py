"""A study's own training extras (`training:` in the study file): the user's callbacks(knobs) and
loss(knobs), loaded with the sha256 the study validated (a changed file is refused, as a builder's is)
and checked at create time by calling them once with the study's default knobs."""

from __future__ import annotations

from typing import Any

import keras

from models import load_function
from search.errors import FailReason, StudySpecError, TrialFailure
from search.spec import StudySpec


def _call(kind: str, references: dict[str, tuple[str, str]], knobs: dict[str, Any]) -> Any:
    reference, sha256 = references[kind]
    return load_function(reference, sha256=sha256).function(dict(knobs))


def _callbacks_problem(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, keras.callbacks.Callback) for c in value):
        return f"returned {type(value).__name__} {value!r:.80}; return a list of keras.callbacks.Callback"
    return None


def _loss_problem(value: Any) -> str | None:
    if isinstance(value, (str, keras.losses.Loss)) or callable(value):
        return None
    return f"returned {type(value).__name__} {value!r:.80}; return a keras.losses.Loss, a loss function or its name"


PROBLEMS = {"callbacks": _callbacks_problem, "loss": _loss_problem}


def user_callbacks(references: dict[str, tuple[str, str]], knobs: dict[str, Any]) -> list[keras.callbacks.Callback]:
    if "callbacks" not in references:
        return []
    value = _call("callbacks", references, knobs)
    problem = _callbacks_problem(value)
    if problem:
        raise TrialFailure(FailReason.ERROR, f"training.callbacks {references['callbacks'][0]} {problem}")
    return list(value)


def user_loss(references: dict[str, tuple[str, str]], knobs: dict[str, Any]) -> Any | None:
    if "loss" not in references:
        return None
    value = _call("loss", references, knobs)
    problem = _loss_problem(value)
    if problem:
        raise TrialFailure(FailReason.ERROR, f"training.loss {references['loss'][0]} {problem}")
    return value


def extras_of(spec: StudySpec) -> dict[str, tuple[str, str]]:
    """kind -> (the function's reference, its file's sha256), for FitOptions."""
    return {kind: (ref, spec.training_files[ref]) for kind, ref in spec.training.items()}


def check_extras(spec: StudySpec, knobs: dict[str, Any]) -> None:
    """Call each extra once with these knobs (create: the study's defaults); StudySpecError at its field."""
    references = extras_of(spec)
    for kind in references:
        try:
            value = _call(kind, references, knobs)
        except Exception as exc:  # noqa: BLE001 - the user's code: any error is reported at its field
            raise StudySpecError(f"training.{kind}", f"{references[kind][0]} raised {type(exc).__name__}: {exc} "
                                 f"when called with the knobs {knobs} (the fixed values, and each searched "
                                 "knob's first choice or low end)") from None
        problem = PROBLEMS[kind](value)
        if problem:
            raise StudySpecError(f"training.{kind}", f"{references[kind][0]} {problem}")
