"""A drop-in for scikit-learn's RandomizedSearchCV over a Keras classifier wrapper, with a study underneath.

Seed 002 searched its dense head with `RandomizedSearchCV(KerasClassifier(build_fn=create_model, ...),
param_distributions, n_iter=...)` for 47 minutes, then printed cv_results_. The same lines run on
`SearchCV` unchanged:

    search = SearchCV(KerasClassifier(build_fn=create_model, epochs=20, batch_size=32),
                      {"optimizer": ["SGD", "Adam"], "neurons_second": [0, 128, 512],
                       "activation": ["relu", "sigmoid"]}, n_iter=10, random_state=0, workers=2)
    grid_result = search.fit(x_train, y_train)
    print("Best: %f using %s" % (grid_result.best_score_, grid_result.best_params_))
    for mean, stdev, param in zip(grid_result.cv_results_["mean_test_score"],
                                  grid_result.cv_results_["std_test_score"], grid_result.cv_results_["params"]):
        print("%f (%f) with: %r" % (mean, stdev, param))

scikit-learn itself is not needed: this class has its interface, not its base classes.
`print(grid_result.best_estimator_.score(x_test, y_test))` then scores the refitted best model.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from search.api import Study
from search.errors import StudySpecError
from search.spec import KNOBS, OPTIMIZERS
from storage import attrs

TRAINING = {"optimizer", "learning_rate", "momentum", "batch_size"}  # the service's knobs, not the builder's


class SearchCV:
    """RandomizedSearchCV's interface over a study: `fit(X, y)`, then best_params_, best_score_,
    best_estimator_, cv_results_ (scikit-learn's keys and shape), predict/predict_proba/score, and study_.

    By default not K-fold: each sampled configuration trains once on a held-out validation split (the
    study's `val_fraction`, stratified), with early stopping and pruning, and its score is its best
    validation accuracy (std_test_score is 0: one split). That is how the service makes a search of
    `n_iter` configurations cost about `n_iter` trainings instead of `n_iter x cv`, pruned. `cv=K`
    asks for folds (the study's `data: {folds: K}`): a configuration's score is its mean over K
    stratified folds, split{i}_test_score each fold's and std_test_score their spread; it is pruned on
    the first fold, so only the survivors train K times.

    refit (True, as scikit-learn's): the best configuration is then trained on all of X for the
    epochs its search found best (search.Study.refit; no data is held out) and is best_estimator_.

    estimator: a Keras classifier wrapper (scikeras' KerasClassifier(model=...), Keras 2's
    KerasClassifier(build_fn=...)) or the build function itself: `build_fn(**searched)` returning a
    Keras model for the data's input shape, compiled or not (the study compiles it with the searched
    `optimizer`, `learning_rate`, `batch_size` when those are among the parameters, else with its
    defaults). param_distributions: lists, or scipy.stats' uniform, loguniform and randint.
    """

    def __init__(self, estimator: Any, param_distributions: Mapping[str, Any], *, n_iter: int = 10,
                 scoring: str | None = None, random_state: int | None = None, workers: int = 1, cv: int | None = None,
                 refit: bool = True, max_epochs: int | None = None, name: str = "searchcv",
                 workdir: str | Path | None = None, storage: str | None = None, progress: bool | None = None) -> None:
        if cv is not None and (isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2):
            raise ValueError(f"cv={cv!r}: give the number of folds (an integer of at least 2; the folds are "
                             "stratified and seeded by random_state), or None for one held-out validation split; "
                             "a splitter object or a list of index pairs is not taken")
        if scoring not in (None, "accuracy"):
            raise ValueError(f"scoring {scoring!r}: SearchCV scores by validation accuracy (scoring=None or "
                             "'accuracy'); other objectives are the study file's `objective: {metric: ...}`")
        self.estimator, self.param_distributions = estimator, dict(param_distributions)
        self.n_iter, self.random_state, self.workers, self.scoring, self.cv = n_iter, random_state, workers, scoring, cv
        self.refit, self.max_epochs, self.name, self.workdir, self.storage, self.progress = (
            refit, max_epochs, name, workdir, storage, progress)

    def fit(self, X: np.ndarray, y: np.ndarray) -> SearchCV:  # noqa: N803 (scikit-learn's names)
        build_fn, fixed = _build_fn(self.estimator)
        space, names = translate(self.param_distributions)
        epochs = self.max_epochs or int(fixed.pop("epochs", 20))
        batch = fixed.pop("batch_size", None)
        fixed_knobs = {"batch_size": int(batch)} if batch is not None and "batch_size" not in space else {}
        builder = _builder(build_fn, space)
        labels = _labels(np.asarray(y))
        self.study_ = Study(self.name, architecture=builder, dataset=(np.asarray(X), labels),
                            space=space, budget={"trials": self.n_iter, "max_epochs": epochs},
                            sampler={"name": "tpe", **({"seed": self.random_state} if self.random_state is not None
                                                       else {})},
                            **({"fixed": fixed_knobs} if fixed_knobs else {}),
                            **({"data": {"folds": int(self.cv)}} if self.cv else {}),
                            **({"seed": self.random_state} if self.random_state is not None else {}),
                            workdir=self.workdir, storage=self.storage)
        self.study_.run(workers=self.workers, progress=self.progress)
        self.n_splits_ = int(self.cv or 1)
        self._results(names)
        if self.refit:
            started = time.perf_counter()
            path = self.study_.refit(trial=self.cv_results_["trial_number"][self.best_index_])
            self.best_estimator_ = RefitClassifier(path, int(labels.max()) + 1, self.best_params_)
            self.refit_time_ = time.perf_counter() - started
        return self

    def _results(self, names: dict[str, dict[Any, Any]]) -> None:
        trials = [t for t in self.study_.optuna_study().trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL")]
        trials.sort(key=lambda t: t.number)
        scores = np.array([_score(t) for t in trials], dtype=float)
        splits = np.array([_split_scores(t, self.n_splits_) for t in trials], dtype=float).reshape(-1, self.n_splits_)
        params = [{k: names.get(k, {}).get(v, v) for k, v in t.params.items()} for t in trials]
        # Completed configurations first (scikit-learn's rank 1 is best_index_), then pruned ones by the
        # score they reached before pruning, failed ones (NaN) last.
        complete = np.array([t.state.name == "COMPLETE" for t in trials], dtype=bool)
        order = np.lexsort((-np.nan_to_num(scores, nan=-np.inf), ~complete))
        ranks = np.empty(len(trials), dtype=int)
        ranks[order] = np.arange(1, len(trials) + 1)
        self.cv_results_ = {
            "params": params, "mean_test_score": scores,
            # The spread over the folds where each was trained (0 for one split; NaN for a trial pruned on
            # its first fold, as scikit-learn's error_score for what was not measured).
            "std_test_score": np.array([np.std(row) if self.n_splits_ > 1 else 0.0 for row in splits]),
            **{f"split{i}_test_score": splits[:, i] for i in range(self.n_splits_)},
            "rank_test_score": ranks,
            "mean_fit_time": np.array([t.user_attrs.get(attrs.TRAIN_SECONDS, np.nan) for t in trials], dtype=float),
            "state": [t.state.name for t in trials], "trial_number": [t.number for t in trials],
            **{f"param_{k}": [p.get(k) for p in params] for k in self.param_distributions},
        }
        best = self.study_.best
        if best is None:
            raise RuntimeError(f"no configuration of study {self.name} completed; see {self.study_.workdir}")
        self.best_index_ = next(i for i, t in enumerate(trials) if t.number == best["trial"])
        self.best_params_ = params[self.best_index_]
        self.best_score_ = float(scores[self.best_index_])

    # scikit-learn's search delegates these to its best_estimator_.
    def predict(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        return self._refitted().predict(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        return self._refitted().predict_proba(X)

    def score(self, X: np.ndarray, y: np.ndarray) -> float:  # noqa: N803
        return self._refitted().score(X, y)

    def _refitted(self) -> RefitClassifier:
        if not hasattr(self, "best_estimator_"):
            raise AttributeError("no best_estimator_: " + ("call fit(X, y) first" if self.refit else
                                                          "this search was made with refit=False"))
        return self.best_estimator_


class RefitClassifier:
    """The best configuration trained on all of fit's data (a .keras file): predict, predict_proba
    and score (accuracy) as a scikit-learn classifier's, classes_, and the Keras model as `model_`,
    loaded on first use (Keras, and its backend, load then, in this process)."""

    def __init__(self, path: Path, n_classes: int, params: Mapping[str, Any]) -> None:
        self.path, self.classes_, self.params = Path(path), np.arange(n_classes), dict(params)
        self._model = None

    @property
    def model_(self) -> Any:
        if self._model is None:
            # Keras loads here, on first use: SearchCV itself runs its trainings in child processes.
            from search.trial import load_model

            self._model = load_model(self.path)
        return self._model

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        return np.asarray(self.model_.predict(np.asarray(X), verbose=0))

    def predict(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def score(self, X: np.ndarray, y: np.ndarray) -> float:  # noqa: N803
        predicted, labels = self.predict(X), _labels(np.asarray(y))
        if labels.shape != predicted.shape:
            raise ValueError(f"y has {labels.shape[0] if labels.ndim else 0} labels of shape {labels.shape[1:]} for "
                             f"{len(predicted)} images: give one integer label (or one-hot row) per image")
        return float((predicted == labels).mean())

    def __repr__(self) -> str:
        return f"RefitClassifier({self.params}, {self.path})"


def _split_scores(trial: Any, n: int) -> list[float]:
    """Each fold's best validation value; one split's is the score. A trial pruned on its first fold
    has that fold's best reported value and NaN for the folds it never trained on."""
    if n == 1:
        return [_score(trial)]
    folds = trial.user_attrs.get(attrs.FOLD_VALUES)
    return [float(v) for v in folds] if folds else [_score(trial), *[float("nan")] * (n - 1)]


def _score(trial: Any) -> float:
    """A completed trial's value; a pruned one's best reported epoch; a failed one's NaN (as
    scikit-learn's error_score)."""
    if trial.state.name == "COMPLETE" and trial.value is not None:
        return float(trial.value)
    if trial.state.name == "PRUNED" and trial.intermediate_values:
        return float(max(trial.intermediate_values.values()))
    return float("nan")


def translate(distributions: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[Any, Any]]]:
    """scikit-learn's param_distributions as the study's space, and how to name values back (an
    optimizer given as 'Adam' is the knob's 'adam'). A clear error for what cannot be translated."""
    space: dict[str, dict[str, Any]] = {}
    names: dict[str, dict[Any, Any]] = {}
    for raw, dist in distributions.items():
        key = raw.split("__", 1)[1] if raw.startswith("model__") else raw
        if key == "epochs":
            raise StudySpecError(f"param_distributions.{raw}", "epochs is the budget's max_epochs (trials stop "
                                                               "early and are pruned): pass max_epochs=N instead")
        if isinstance(dist, (list, tuple, np.ndarray)):
            values = [v.item() if isinstance(v, np.generic) else v for v in dist]
            if key == "optimizer":
                names[key] = {_optimizer(v, raw): v for v in values}
                values = list(names[key])
            space[key] = {"choices": values}
            continue
        space[key] = _distribution(dist, raw)
    return space, names


def _optimizer(value: Any, where: str) -> str:
    name = str(value).lower()
    if name not in OPTIMIZERS:
        raise StudySpecError(f"param_distributions.{where}", f"optimizer {value!r} is not one of "
                                                             f"{', '.join(OPTIMIZERS)} (names are case-insensitive)")
    return name


def _distribution(dist: Any, where: str) -> dict[str, Any]:
    kind = getattr(getattr(dist, "dist", None), "name", None)
    args = tuple(getattr(dist, "args", ())) + tuple(getattr(dist, "kwds", {}).values())
    if kind == "uniform":
        loc, scale = (list(args) + [0.0, 1.0][len(args):])[:2]
        return {"low": float(loc), "high": float(loc + scale)}
    if kind in ("loguniform", "reciprocal") and len(args) >= 2:
        return {"low": float(args[0]), "high": float(args[1]), "log": True}
    if kind == "randint" and len(args) >= 2:
        return {"low": int(args[0]), "high": int(args[1]) - 1}  # scipy's high is exclusive
    raise StudySpecError(f"param_distributions.{where}", (
        f"{kind or type(dist).__name__} cannot be translated to the study's space; give a list of values, or "
        "scipy.stats.uniform, loguniform or randint"))


def _labels(y: np.ndarray) -> np.ndarray:
    """Integer labels, one per row: one-hot rows (Keras 2 examples used to_categorical) as their
    argmax, a column (keras.datasets' (n, 1) labels) flattened."""
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(axis=1)
    return y.reshape(len(y)) if y.ndim == 2 else y


def _build_fn(estimator: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The build function and the wrapper's own fixed arguments (epochs, batch_size...)."""
    if inspect.isfunction(estimator):
        return estimator, {}
    fn = getattr(estimator, "model", None) or getattr(estimator, "build_fn", None)
    if not callable(fn):
        raise StudySpecError("estimator", "give a Keras classifier wrapper (KerasClassifier(model=...) or "
                                          "(build_fn=...)) or the build function itself")
    fixed = dict(getattr(estimator, "sk_params", {}) or {})
    for key in ("epochs", "batch_size"):
        if getattr(estimator, key, None) is not None:
            fixed[key] = getattr(estimator, key)
    return fn, fixed


def _builder(build_fn: Callable[..., Any], space: Mapping[str, Any]) -> Callable[..., Any]:
    """A builder of the service's contract around `build_fn(**params)`: its knobs are the searched
    parameters the service does not set itself (optimizer, learning_rate, batch_size), each
    defaulting to its first choice or its low bound."""
    knobs = {k: (d["choices"][0] if "choices" in d else d["low"]) for k, d in space.items()
             if k not in TRAINING and not (k in KNOBS and KNOBS[k].target != "model")}

    def build(input_shape, num_classes, **params):
        return build_fn(**params)

    build.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("input_shape", inspect.Parameter.POSITIONAL_OR_KEYWORD),
         inspect.Parameter("num_classes", inspect.Parameter.POSITIONAL_OR_KEYWORD),
         *(inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in knobs.items())])
    build.__qualname__ = getattr(build_fn, "__qualname__", "build")
    build.__wrapped__ = build_fn  # type: ignore[attr-defined]  # its source, in the builder file written for it
    return build


__all__ = ["RefitClassifier", "SearchCV", "translate"]
