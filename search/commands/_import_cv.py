"""`python -m search import-cv NAME FILE`: the best configurations of an old scikit-learn search
(`RandomizedSearchCV`/`GridSearchCV`'s `cv_results_`, e.g. over a scikeras `KerasClassifier`) as
warm-start trials of an existing study.

The file is read into rows (search.commands._cv_results: CSV, pandas' JSON orientations, a pickle only when
trusted, since loading one runs code), each `param_<name>` column is mapped to a knob (`NAMES`,
overridable with `--map old=knob`) and its values converted to the knob's type; the top-k rows by
`rank_test_score` are checked against the study's space, and only then enqueued. Each carries its
old mean CV score, std, rank and the file's name as trial attributes, never as a value: they were
measured on CV folds, not on this study's validation split.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from search.commands._cv_results import CvImportError, CvRow, cv_rows, from_text, rank_key, read_records
from search.spec import KNOBS, Dimension, StudySpec, parameter_knob
from storage import attrs

logger = logging.getLogger(__name__)

PREFIXES = ("model__", "fit__")  # scikeras routes these to the model builder and to fit()
# scikeras/Keras names (a prefix of PREFIXES stripped) -> the study's knob. A name not listed that
# is a knob itself (model__dropout, batch_size, model__l2) maps to that knob.
NAMES: dict[str, str] = {
    "optimizer__learning_rate": "learning_rate", "optimizer__lr": "learning_rate", "lr": "learning_rate",
    "optimizer__momentum": "momentum",
    "hidden_layers": "dense_layers", "n_layers": "dense_layers", "num_layers": "dense_layers",
    "n_hidden": "dense_layers", "dense_layers": "dense_layers",
    "units": "dense_units", "hidden_units": "dense_units", "neurons": "dense_units", "nodes": "dense_units",
    "hidden_layer_sizes": "dense_units",
    "dropout_rate": "dropout", "dense_activation": "activation",
}
# Names that map to no knob on purpose, and why (reported, then ignored).
IGNORED: dict[str, str] = {
    "epochs": "the study's budget sets max_epochs; early stopping and the pruner end trials sooner",
    "verbose": "logging only", "loss": "the study trains with cross-entropy", "callbacks": "not a knob",
    "validation_split": "the study holds out its own validation split (data.val_fraction)",
}


# --- names: old columns -> the study's knobs ---------------------------------------------------


def parse_mapping(items: Iterable[str]) -> dict[str, str | None]:
    """`--map old=knob` flags (`old=` ignores a column) as {old name: knob or None}."""
    mapping: dict[str, str | None] = {}
    for item in items:
        old, sep, new = (s.strip() for s in item.partition("="))
        if not sep or not old:
            raise CvImportError(f"--map {item!r}: expected OLD=KNOB (e.g. --map model__width=dense_units), "
                                "or OLD= to ignore a column")
        if new and parameter_knob(new) not in KNOBS:
            raise CvImportError(f"--map {item!r}: {new!r} is not a knob; knobs: {', '.join(KNOBS)}")
        mapping[old.removeprefix("param_")] = new or None
    return mapping


def _short(name: str) -> str:
    for prefix in PREFIXES:
        name = name.removeprefix(prefix)
    return name


def knob_for(name: str, mapping: dict[str, str | None] | None = None) -> str | None:
    """The knob an old parameter sets: --map first, then NAMES (IGNORED: none), then the name itself."""
    mapping = mapping or {}
    short = _short(name)
    for key in (name, short):
        if key in mapping:
            return mapping[key]
    if short in IGNORED:
        return None
    knob = NAMES.get(name) or NAMES.get(short) or short
    return knob if parameter_knob(knob) in KNOBS else None


def map_columns(rows: list[CvRow], spec: StudySpec, mapping: dict[str, str | None] | None = None,
                ) -> tuple[dict[str, str], dict[str, str]]:
    """{old name: knob} for the parameters the study searches; {old name: why} for the others."""
    mapped: dict[str, str] = {}
    ignored: dict[str, str] = {}
    for name in dict.fromkeys(n for row in rows for n in row.params):
        knob = knob_for(name, mapping)
        base = parameter_knob(knob)
        if knob is None:
            ignored[name] = IGNORED.get(_short(name), f"maps to no knob (--map {name}=KNOB to use it)")
        elif spec.dimension(base) is None:
            fixed = f"the study fixes it at {spec.fixed[base]!r}" if base in spec.fixed else "not searched"
            ignored[name] = f"{knob}: {fixed} in study {spec.name}"
        else:
            mapped[name] = knob
    return mapped, ignored


# --- values: the knob's type, and the study's space -------------------------------------------


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (a pickle's cells) as Python values."""
    if getattr(value, "ndim", None) == 0:
        return value.item()
    return value.tolist() if hasattr(value, "tolist") else value


def _named(text: str, allowed: tuple) -> str:
    """A name as the study spells it: 'Adam', 'keras.optimizers.Adam' and "<class '...Adam'>" are adam."""
    low = text.strip().lower()
    if not allowed or low in allowed:
        return low
    found = [w for w in re.findall(r"[a-z_][a-z0-9_]*", low) if w in allowed]
    return found[-1] if found else low


def _convert(kind: str, value: Any, allowed: tuple = ()) -> Any:
    if isinstance(value, str) and kind != "str":
        value = from_text(value)  # JSON may hold "128" or "True" as text
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int" and number and float(value).is_integer():
        return int(value)
    if kind == "float" and number:
        return float(value)
    if kind == "bool" and (isinstance(value, bool) or (number and value in (0, 1))):
        return bool(value)
    if kind == "bool" and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if kind == "str" and isinstance(value, str):
        return _named(value, allowed)
    raise ValueError(f"{value!r} is not {'an' if kind == 'int' else 'a'} {kind}")


def _typed(knob: str, value: Any, where: str) -> Any:
    """An old value as the knob's type; dense_units may be a tuple of widths, one per layer."""
    declared = KNOBS[parameter_knob(knob)]
    value = _plain(value)
    try:
        if knob == "dense_units" and isinstance(value, (list, tuple)):
            return tuple(_convert("int", v) for v in value)
        return _convert(declared.kind, value, declared.allowed)
    except ValueError as exc:
        raise CvImportError(f"{where}: {exc} (the knob {knob} takes {declared.kind} values)") from None


def _dense(values: dict[str, Any], spec: StudySpec, where: str) -> dict[str, Any]:
    """dense_units as the trial's parameters dense_units_0, _1, ...: a tuple gives each layer's width
    (and the layer count); one width applies to each of the row's dense_layers, else to the first."""
    units = values.pop("dense_units", None)
    if units is None:
        return values
    layers = values.get("dense_layers")
    widths = list(units) if isinstance(units, tuple) else [units] * (1 if layers is None else layers)
    if layers is not None and layers != len(widths):
        raise CvImportError(f"{where}: dense_layers={layers} but {len(widths)} widths {tuple(widths)}")
    if layers is None and isinstance(units, tuple) and spec.dimension("dense_layers") is not None:
        values["dense_layers"] = len(widths)
    return {**values, **{f"dense_units_{i}": w for i, w in enumerate(widths)}}


def _active(values: dict[str, Any], spec: StudySpec, where: str) -> dict[str, Any]:
    """Leave out a conditional knob whose `when` the row's own values contradict (momentum with adam)."""
    out = dict(values)
    for key in values:
        dim = spec.dimension(parameter_knob(key))
        for other, allowed in dim.when if dim else ():
            if other in values and values[other] not in allowed:
                logger.info("%s: %s applies only when %s is one of %s; left out", where, key, other,
                            ", ".join(map(str, allowed)))
                out.pop(key, None)
    return out


def describe_dimension(dim: Dimension) -> str:
    if dim.choices is not None:
        return "one of " + ", ".join(map(str, dim.choices))
    step = f" in steps of {dim.step}" if dim.step else ""
    return f"a value in [{dim.low}, {dim.high}]{step}{' (log scale)' if dim.log else ''}"


def _fits(dim: Dimension, value: Any) -> bool:
    if not dim.contains(value):
        return False
    if dim.choices is not None or not dim.step:
        return True
    steps = (value - dim.low) / dim.step  # type: ignore[operator]
    return math.isclose(steps, round(steps), abs_tol=1e-9)


def row_params(row: CvRow, columns: dict[str, str], spec: StudySpec, source: str) -> dict[str, Any]:
    """The row's values as the trial's parameters; a value outside the study's space is refused."""
    where = row.where(source)
    values: dict[str, Any] = {}
    for name, knob in columns.items():
        if name in row.params:
            value = _typed(knob, row.params[name], f"{where}, column param_{name}")
            if knob in values and values[knob] != value:
                raise CvImportError(f"{where}: two columns set {knob}: {values[knob]!r} and {value!r} "
                                    f"(param_{name}); ignore one with --map {name}=")
            values[knob] = value
    values = _active(_dense(values, spec, where), spec, where)
    order = {dim.name: i for i, dim in enumerate(spec.space)}  # the study's order, dense_units_<i> by i
    values = dict(sorted(values.items(), key=lambda kv: order.get(parameter_knob(kv[0]), len(order))))
    for key, value in values.items():
        dim = spec.dimension(parameter_knob(key))
        if dim is not None and not _fits(dim, value):
            raise CvImportError(
                f"{where}: {key}={value!r} is outside the space of study {spec.name}: space.{dim.name} takes "
                f"{describe_dimension(dim)}. Nothing was enqueued; import fewer rows (--top-k), or search a "
                "space that holds it (a new study name)")
    return values


# --- the import --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Warm:
    row: CvRow
    params: dict[str, Any]


@dataclass
class CvImport:
    """What import-cv found and did: the columns used and ignored, the rows enqueued or already there."""

    source: str  # the file's name, recorded on each trial
    n_rows: int
    mapped: dict[str, str]
    ignored: dict[str, str]
    warm: list[Warm]
    enqueued: list[Warm] = field(default_factory=list)
    skipped: list[Warm] = field(default_factory=list)  # an equal trial was already in the study

    def user_attrs(self, w: Warm) -> dict[str, Any]:
        return {attrs.WARM_START: True, attrs.CV_MEAN_TEST_SCORE: w.row.mean, attrs.CV_STD_TEST_SCORE: w.row.std,
                attrs.CV_RANK: w.row.rank, attrs.CV_SOURCE: self.source}

    def lines(self, study_name: str) -> list[str]:
        """What the command prints."""
        out = [f"study {study_name}: {len(self.enqueued)} warm-start trial(s) enqueued from {self.source} "
               f"(the top {len(self.warm)} of {self.n_rows} rows by rank)"]
        for w in self.enqueued:
            std = "" if w.row.std is None else f" ± {w.row.std:.4f}"
            out.append(f"  rank {w.row.rank} (row {w.row.index}, CV score {w.row.mean:.4f}{std}): "
                       + ", ".join(f"{k}={v}" for k, v in w.params.items()))
        out += [f"  already in the study, skipped: rank {w.row.rank} (row {w.row.index})" for w in self.skipped]
        out.append("  columns used: " + ", ".join(f"{old} -> {knob}" for old, knob in self.mapped.items()))
        out += [f"  column ignored: {old} ({why})" for old, why in self.ignored.items()]
        out.append("  the old CV scores are trial attributes, not values: they were measured on CV folds, "
                   "not on this study's validation split")
        return out


def plan_import(spec: StudySpec, path: Path, *, top_k: int = 5, mapping: dict[str, str | None] | None = None,
                trust_pickle: bool = False, metric: str = "score") -> CvImport:
    """Read the file and check its top-k rows against the study's space; nothing is written."""
    if top_k < 1:
        raise CvImportError(f"--top-k must be at least 1 but got {top_k}")
    rows = cv_rows(read_records(path, trust_pickle=trust_pickle), source=path.name, metric=metric)
    if not rows:
        raise CvImportError(f"{path.name}: no row has a score (mean_test_{metric}); nothing to import")
    mapped, ignored = map_columns(rows, spec, mapping)
    if not mapped:
        found = "; ".join(f"{old}: {why}" for old, why in ignored.items()) or "no parameters"
        raise CvImportError(f"{path.name}: no column maps to a knob study {spec.name} searches ({found}); "
                            "pass --map OLD=KNOB")
    best = sorted(rows, key=rank_key)[:top_k]
    warm = [Warm(row, row_params(row, mapped, spec, path.name)) for row in best]
    return CvImport(path.name, len(rows), mapped, ignored, [w for w in warm if w.params])


def enqueue(study: optuna.Study, plan: CvImport) -> CvImport:
    """Enqueue the planned warm starts (an equal trial already in the study is skipped)."""
    for w in plan.warm:
        before = len(study.get_trials(deepcopy=False))
        study.enqueue_trial(w.params, user_attrs=plan.user_attrs(w), skip_if_exists=True)
        (plan.enqueued if len(study.get_trials(deepcopy=False)) > before else plan.skipped).append(w)
    logger.info("study %s: %d warm starts enqueued from %s", study.study_name, len(plan.enqueued), plan.source)
    return plan
