"""search.sklearn.SearchCV, the drop-in for RandomizedSearchCV (issue: where practitioners work, part 2):
scikit-learn's param_distributions translated to the study's space, and seed 002's print loop run
unchanged on a search with two workers underneath."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import scipy.stats
from helpers.notebook import notebook_function

from search import StudySpecError
from search.sklearn import RefitClassifier, SearchCV, translate

SEED_002_CELL = '''
import keras
from keras import layers

def create_model(optimizer="adam", neurons_second=0, activation="relu"):
    model = keras.Sequential([keras.Input((12, 12, 1)), layers.Flatten(), layers.Dense(16, activation=activation)])
    if neurons_second:
        model.add(layers.Dense(neurons_second, activation=activation))
    model.add(layers.Dense(3, activation="softmax"))
    model.compile(loss="categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    return model
'''


class KerasClassifier:
    """Keras 2's keras.wrappers.scikit_learn.KerasClassifier, as seed 002 built it (no scikit-learn here)."""

    def __init__(self, build_fn, **sk_params):
        self.build_fn, self.sk_params = build_fn, sk_params


def test_lists_and_scipy_distributions_become_the_studys_space():
    space, names = translate({
        "optimizer": ["SGD", "Adam"], "model__neurons_second": [0, 128, 512], "activation": ["relu", "sigmoid"],
        "learning_rate": scipy.stats.loguniform(1e-4, 1e-1), "dropout": scipy.stats.uniform(0.1, 0.4),
        "depth": scipy.stats.randint(1, 4)})
    assert space == {"optimizer": {"choices": ["sgd", "adam"]}, "neurons_second": {"choices": [0, 128, 512]},
                     "activation": {"choices": ["relu", "sigmoid"]},
                     "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
                     "dropout": {"low": 0.1, "high": pytest.approx(0.5)}, "depth": {"low": 1, "high": 3}}
    assert names["optimizer"] == {"sgd": "SGD", "adam": "Adam"}  # best_params_ names them as the user did


@pytest.mark.parametrize("distributions,says", [
    ({"dropout": scipy.stats.norm(0.3, 0.1)}, "norm cannot be translated"),
    ({"optimizer": ["Adadelata"]}, "optimizer 'Adadelata' is not one of"),  # seed 002's typo
    ({"epochs": [10, 20]}, "pass max_epochs=N instead"),
])
def test_what_cannot_be_translated_is_refused_naming_the_parameter(distributions, says):
    with pytest.raises(StudySpecError) as err:
        translate(distributions)
    assert f"param_distributions.{next(iter(distributions))}" in str(err.value) and says in str(err.value)


class StratifiedKFold:
    """scikit-learn's splitter, as a user would pass it (no scikit-learn here)."""

    def split(self, X, y):  # noqa: N803
        raise AssertionError("SearchCV takes the number of folds, not a splitter")


@pytest.mark.parametrize("cv", [StratifiedKFold(), [(np.arange(5), np.arange(5, 10))], 1, True, 2.5])
def test_a_cv_that_is_not_a_number_of_folds_and_other_scorings_are_refused_not_ignored(cv):
    with pytest.raises(ValueError, match=r"give the number of folds \(an integer of at least 2"):
        SearchCV(lambda: None, {}, cv=cv)
    with pytest.raises(ValueError, match="validation accuracy"):
        SearchCV(lambda: None, {}, scoring="f1_macro")


def _learnable(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    return (y[:, None, None, None] * 80 + rng.integers(0, 40, (n, 12, 12, 1))).astype(np.uint8), y


def test_cv_scores_each_configuration_by_its_folds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STUDIES_DIR", raising=False)
    monkeypatch.delenv("STORAGE", raising=False)
    x, y = _learnable()
    search = SearchCV(notebook_function(SEED_002_CELL, "create_model"), {"optimizer": ["Adam"],
                      "neurons_second": [0, 8]}, n_iter=2, random_state=0, cv=3, refit=False, max_epochs=2,
                      progress=False, name="folded")
    search.fit(x, y)
    results = search.cv_results_
    assert search.n_splits_ == 3 and search.study_.spec.folds == 3
    splits = np.stack([results[f"split{i}_test_score"] for i in range(3)], axis=1)
    trials = search.study_.optuna_study().trials
    assert [t.state.name for t in trials] == results["state"] and "COMPLETE" in results["state"]
    for i, trial in enumerate(trials):
        if trial.state.name == "COMPLETE":
            assert splits[i].tolist() == trial.user_attrs["fold_values"]
            assert results["mean_test_score"][i] == pytest.approx(splits[i].mean()) == trial.value
            assert results["std_test_score"][i] == pytest.approx(splits[i].std())
        else:  # pruned on its first fold: the folds it never trained on are not scores
            assert "fold_values" not in trial.user_attrs and np.isnan(splits[i, 1:]).all()
            assert splits[i, 0] == results["mean_test_score"][i] == max(trial.intermediate_values.values())
    with pytest.raises(AttributeError, match="refit=False"):
        search.predict(x)


def test_seed_002s_search_and_print_loop_run_unchanged(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STUDIES_DIR", raising=False)
    monkeypatch.delenv("STORAGE", raising=False)
    x, y = _learnable()
    one_hot = np.eye(3)[y]  # as Keras 2 examples passed them (to_categorical)
    param_distributions = {"optimizer": ["SGD", "Adam"], "neurons_second": [0, 8],
                           "activation": ["relu", "sigmoid"]}
    model = KerasClassifier(build_fn=notebook_function(SEED_002_CELL, "create_model"), epochs=3, batch_size=16)
    search = SearchCV(model, param_distributions, n_iter=3, random_state=0, workers=2, progress=False)
    grid_result = search.fit(x, one_hot)
    # Seed 002's lines, verbatim:
    print("Best: %f using %s" % (grid_result.best_score_, grid_result.best_params_))
    means = grid_result.cv_results_['mean_test_score']
    stds = grid_result.cv_results_['std_test_score']
    params = grid_result.cv_results_['params']
    for mean, stdev, param in zip(means, stds, params):
        print("%f (%f) with: %r" % (mean, stdev, param))
    out = capsys.readouterr().out.splitlines()
    print("\n".join(out))  # for -s
    assert re.fullmatch(r"Best: [01]\.\d{6} using \{'optimizer': '(SGD|Adam)', 'neurons_second': (0|8), "
                        r"'activation': '(relu|sigmoid)'\}", out[0]), out
    assert len(out) == 4 and all(re.fullmatch(r"\d\.\d{6} \(0\.000000\) with: \{.*\}", line) for line in out[1:])
    assert grid_result.best_score_ == max(means) and grid_result.best_params_ == params[int(np.argmax(means))]
    assert list(grid_result.cv_results_["rank_test_score"]).count(1) >= 1
    trials = grid_result.study_.optuna_study().trials
    assert len(trials) == 3 and {t.params["optimizer"] for t in trials} <= {"sgd", "adam"}
    assert grid_result.study_.spec.fixed == {"batch_size": 16}  # the wrapper's batch_size; its epochs the cap
    assert grid_result.study_.spec.max_epochs == 3
    # refit (scikit-learn's default): the best configuration trained on all of x, then used as a classifier.
    best = grid_result.best_estimator_
    best_trial = trials[grid_result.cv_results_["trial_number"][grid_result.best_index_]]
    assert best.model_.count_params() == best_trial.user_attrs["n_params"]  # the best trial's architecture
    assert best.model_.input_shape == (None, 12, 12, 1) and best.classes_.tolist() == [0, 1, 2]
    predicted = grid_result.predict(x)
    assert predicted.shape == (300,) and set(predicted.tolist()) <= {0, 1, 2}
    assert grid_result.score(x, one_hot) == pytest.approx((predicted == y).mean())


def test_the_refitted_classifier_scores_keras_datasets_column_labels_and_refuses_a_mismatch():
    best = RefitClassifier(Path("unused.keras"), 3, {})
    best._model = SimpleNamespace(predict=lambda x, verbose=0: np.eye(3)[np.asarray(x) % 3])  # predicts x mod 3
    x = np.arange(6)
    assert best.score(x, np.array([[0], [1], [2], [0], [1], [0]])) == pytest.approx(5 / 6)  # keras.datasets' (n, 1)
    assert best.score(x, np.eye(3)[[0, 1, 2, 0, 1, 2]]) == 1.0  # one-hot rows
    with pytest.raises(ValueError, match="one integer label .* per image"):
        best.score(x, np.arange(5))


def test_completed_configurations_rank_first_so_rank_1_is_the_best_index():
    study = optuna.create_study(direction="maximize")
    dist = {"neurons_second": optuna.distributions.CategoricalDistribution([0, 8, 16])}
    for value, units, state, curve in ((0.5, 0, "COMPLETE", {0: 0.5}), (None, 8, "PRUNED", {0: 0.9}),
                                       (0.7, 16, "COMPLETE", {0: 0.7})):
        study.add_trial(optuna.trial.create_trial(value=value, params={"neurons_second": units}, distributions=dist,
                                                  state=optuna.trial.TrialState[state], intermediate_values=curve))
    search = SearchCV(lambda: None, {"neurons_second": [0, 8, 16]})
    search.n_splits_ = 1
    search.study_ = SimpleNamespace(optuna_study=lambda: study, best={"trial": 2}, workdir=".")
    search._results({})
    results = search.cv_results_
    assert search.best_index_ == 2 and results["rank_test_score"].tolist() == [2, 3, 1]
    assert results["mean_test_score"][1] == 0.9  # the pruned one's best epoch before pruning, ranked after
