"""Samplers and pruners by name: a registry of Optuna classes with the service's defaults.

What a study file may set for each is read from the Optuna constructor's signature: its arguments
that take plain data (numbers, strings, booleans, mappings), less those the service fills itself
from the study (`managed`). Arguments that take Python objects (callables, samplers) cannot come
from a data file and are not offered.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import operator
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from models import get_preset, is_builder_reference

_PLAIN_TYPES: dict[str, Any] = {
    "bool": bool, "int": int, "float": float, "str": str, "None": type(None), "dict[str, Any]": dict[str, Any],
}
_INVALID = (ValueError, TypeError, ArithmeticError)  # what a constructor raises for a bad value


class StudyLike(Protocol):
    """What the factories read from a search.spec._spec.StudySpec. (Not imported: the study file is
    validated against this registry, so search.spec._study_file imports this module.)"""

    @property
    def architecture(self) -> str: ...
    @property
    def space(self) -> tuple[Any, ...]: ...
    @property
    def fixed(self) -> dict[str, Any]: ...
    @property
    def sampler(self) -> str: ...
    @property
    def sampler_options(self) -> dict[str, Any]: ...
    @property
    def pruner(self) -> str: ...
    @property
    def pruner_options(self) -> dict[str, Any]: ...
    @property
    def max_epochs(self) -> int: ...
    @property
    def seed(self) -> int: ...
    def dimension(self, name: str) -> Any: ...


@dataclass(frozen=True)
class Strategy:
    """One sampler or pruner: its Optuna class, the service's defaults (a study may override them),
    the arguments the service sets from the study (a study may not give them), whether it handles
    two objectives, and a validation-time check of what the constructor leaves unchecked."""

    cls: type
    defaults: Mapping[str, Any] = field(default_factory=dict)
    managed: frozenset[str] = frozenset()
    multi_objective: bool = True
    check: Callable[[dict[str, Any]], None] | None = None

    def options(self) -> dict[str, Any]:
        """Option name -> the type it takes, for every option a study file may give."""
        return _options(self.cls, self.managed)

    @property
    def qualname(self) -> str:
        return f"{self.cls.__module__.split('._')[0]}.{self.cls.__name__}"

    def default(self, option: str) -> Any:
        if option in self.defaults:
            return self.defaults[option]
        value = inspect.signature(self.cls).parameters[option].default
        return None if value is inspect.Parameter.empty else value

    def build(self, options: Mapping[str, Any], **managed: Any) -> Any:
        return self.cls(**{**self.defaults, **options, **managed})


@functools.cache
def _options(cls: type, managed: frozenset[str]) -> dict[str, Any]:
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    out = {}
    for param in inspect.signature(cls).parameters.values():
        kind = _plain_type(param.annotation)
        if param.kind in named and param.name not in managed and kind is not None:
            out[param.name] = kind
    return out


def _plain_type(annotation: Any) -> Any:
    """`int`, `"float | None"`, ... as a type; None for anything that is not plain data."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    parts = [part.strip() for part in text.split("|")]
    if not all(part in _PLAIN_TYPES for part in parts):
        return None
    return functools.reduce(operator.or_, (_PLAIN_TYPES[part] for part in parts))


def _hyperband_brackets(kwargs: dict[str, Any]) -> None:
    """Hyperband builds its brackets, successive-halving pruners, at the first trial: build one now."""
    optuna.pruners.SuccessiveHalvingPruner(min_resource=kwargs["min_resource"],
                                           reduction_factor=kwargs["reduction_factor"],
                                           bootstrap_count=kwargs.get("bootstrap_count", 0))
    if kwargs["min_resource"] > kwargs["max_resource"]:
        raise ValueError(f"min_resource ({kwargs['min_resource']}) is above the study's budget.max_epochs "
                         f"({kwargs['max_resource']}), so no trial would ever be pruned")


SAMPLERS: dict[str, Strategy] = {
    # multivariate + group handle conditional knobs jointly; constant_liar keeps parallel workers
    # from sampling on top of each other's running trials.
    "tpe": Strategy(optuna.samplers.TPESampler, {"multivariate": True, "group": True, "constant_liar": True}),
    "random": Strategy(optuna.samplers.RandomSampler),
    "grid": Strategy(optuna.samplers.GridSampler, managed=frozenset({"search_space"})),
    "cmaes": Strategy(optuna.samplers.CmaEsSampler, multi_objective=False),
    "gp": Strategy(optuna.samplers.GPSampler, multi_objective=False),
    "nsga2": Strategy(optuna.samplers.NSGAIISampler),
}
PRUNERS: dict[str, Strategy] = {
    "hyperband": Strategy(optuna.pruners.HyperbandPruner, {"min_resource": 1, "reduction_factor": 3},
                          managed=frozenset({"max_resource"}), multi_objective=False, check=_hyperband_brackets),
    "successive_halving": Strategy(optuna.pruners.SuccessiveHalvingPruner, {"min_resource": 1, "reduction_factor": 3},
                                   multi_objective=False),
    # With a second objective, the median rule runs on the first objective's curve
    # (search/trial/_pareto_pruning.py): Optuna's own pruners cannot see it there.
    "median": Strategy(optuna.pruners.MedianPruner, {"n_startup_trials": 5, "n_warmup_steps": 1}),
    "none": Strategy(optuna.pruners.NopPruner),
}
REGISTRIES = {"sampler": SAMPLERS, "pruner": PRUNERS}


@functools.cache
def options_model(kind: str, name: str) -> type[BaseModel]:
    """The options of one sampler or pruner as a strict pydantic model: for their types, and for
    the study file's JSON Schema."""
    strategy = REGISTRIES[kind][name]
    fields = {option: (type_, Field(strategy.default(option), description=f"{strategy.qualname}({option}=...)"))
              for option, type_ in strategy.options().items()}
    config = ConfigDict(extra="forbid", frozen=True, strict=True, title=f"{kind} {name}")
    return create_model(f"{name}_{kind}", __config__=config, __doc__=f"{strategy.qualname}, with the service's "
                        "defaults", name=(Literal[name], ...), **fields)


def options_problem(kind: str, name: str, options: Mapping[str, Any]) -> tuple[str | None, str] | None:
    """None if a study may give these options, else (the option to blame, or None; what is wrong)."""
    allowed = REGISTRIES[kind][name].options()
    unknown = sorted(set(options) - set(allowed), key=str)
    if unknown:
        return None, f"{name} takes no option(s) {unknown}; it takes {sorted(allowed)}"
    try:
        options_model(kind, name).model_validate({"name": name, **options})
    except ValidationError as exc:
        err = exc.errors()[0]
        option = err["loc"][0]
        shown = getattr(allowed[option], "__name__", None) or str(allowed[option]).replace("NoneType", "None")
        return option, f"{err['msg']} but got {err['input']!r}; {name}'s {option} takes {shown}"
    return None


def managed_values(strategy: Strategy, *, max_epochs: int, search_space: Callable[[], dict]) -> dict[str, Any]:
    """The arguments the service sets from the study."""
    values = {"max_resource": lambda: max_epochs, "search_space": search_space}
    return {name: values[name]() for name in strategy.managed}


def build_problem(name: str, strategy: Strategy, options: Mapping[str, Any], *,
                  max_epochs: int) -> tuple[str | None, str] | None:
    """Build the strategy once with these options, so that a value Optuna refuses fails before the
    study exists: None if that works, else (the option to blame, or None; what is wrong and the fix)."""
    managed = managed_values(strategy, max_epochs=max_epochs, search_space=lambda: {"probe": [0]})
    error = _build_error(strategy, options, managed)
    if error is None:
        return None
    said = f"{type(error).__name__}: {error}" if isinstance(error, ArithmeticError) else str(error).rstrip(".")
    culprit = next((k for k in options if _build_error(strategy, {k: options[k]}, managed)), None)
    if culprit is None:
        return None, f"{name} refuses the options {dict(options)} together: {said}; change them"
    return culprit, (f"{name} refuses {culprit}={options[culprit]!r}: {said}; give another value, or leave it "
                     f"out for the default {strategy.default(culprit)!r}")


def objectives_problem(sampler: str, pruner: str) -> tuple[str, str] | None:
    """None if this sampler and pruner handle two objectives, else (which does not; the fix)."""
    if not PRUNERS[pruner].multi_objective:
        usable = " or ".join(n for n, s in PRUNERS.items() if s.multi_objective)
        return "pruner", f"pruning needs one objective; with objective.second set, use pruner: {usable}"
    if not SAMPLERS[sampler].multi_objective:
        return "sampler", f"{sampler} handles one objective; use one of " + ", ".join(
            n for n, s in SAMPLERS.items() if s.multi_objective)
    return None


def _build_error(strategy: Strategy, options: Mapping[str, Any], managed: dict[str, Any]) -> Exception | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental and deprecated arguments warn on every build
            strategy.build(options, **managed)
            if strategy.check is not None:
                strategy.check({**strategy.defaults, **options, **managed})
    except _INVALID as exc:
        return exc
    return None


def worker_seed(seed: int, worker_index: int) -> int:
    """Worker 0's sampler seed is the study's; worker i's is drawn from (seed, i) by numpy's SeedSequence,
    so that workers started together do not sample alike, and neither do two studies of nearby seeds
    (seed + i gave seed 0's worker 1 and seed 1's worker 0 one stream: the same first trials)."""
    if worker_index == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(worker_index)]).generate_state(1)[0])


def make_sampler(spec: StudyLike, *, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """Each worker gets its worker_seed, so workers started together do not sample alike."""
    opts = dict(spec.sampler_options)
    seed = opts.pop("seed", spec.seed)
    seed = None if seed is None else worker_seed(seed, worker_index)
    if spec.sampler == "gp" and importlib.util.find_spec("torch") is None:
        raise RuntimeError("sampler 'gp' needs PyTorch, which is not installed by default; "
                           "run `make venv EXTRAS=dev,gp` or choose sampler tpe")
    strategy = _known(SAMPLERS, spec.sampler, "sampler")
    return strategy.build(opts, seed=seed, **managed_values(strategy, max_epochs=spec.max_epochs,
                                                             search_space=lambda: grid_search_space(spec)))


def make_pruner(spec: StudyLike) -> optuna.pruners.BasePruner:
    strategy = _known(PRUNERS, spec.pruner, "pruner")
    return strategy.build(spec.pruner_options, **managed_values(strategy, max_epochs=spec.max_epochs,
                                                                search_space=lambda: grid_search_space(spec)))


def _known(registry: dict[str, Strategy], name: str, kind: str) -> Strategy:
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(registry)}")
    return registry[name]


def grid_search_space(spec: StudyLike) -> dict[str, list]:
    """GridSampler's search space: each knob's choices, or its range in steps (the study file is
    validated to give one or the other); one dense_units_<i> per dense layer there can be."""
    out: dict[str, list] = {}
    for dim in spec.space:
        if dim.choices is not None:
            grid = list(dim.choices)
        else:
            n = int(round((dim.high - dim.low) / dim.step)) + 1
            grid = [dim.low + i * dim.step for i in range(n)]
        if dim.name != "dense_units" or is_builder_reference(spec.architecture):  # a builder's knob is one value
            out[dim.name] = grid
            continue
        layers = spec.dimension("dense_layers")
        if layers is not None:
            n_max = int(max(layers.choices) if layers.choices else layers.high)
        elif "dense_layers" in spec.fixed:
            n_max = int(spec.fixed["dense_layers"])
        else:
            n_max = len(get_preset(spec.architecture).knobs.get("dense_units") or ())
        out.update({f"dense_units_{i}": grid for i in range(n_max)})
    return out
