"""search.sklearn.SearchCV, the drop-in for RandomizedSearchCV (issue: where practitioners work, part 2):
scikit-learn's param_distributions translated to the study's space, and seed 002's print loop run
unchanged on a search with two workers underneath."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.stats
from helpers.notebook import notebook_function

from search import StudySpecError
from search.sklearn import SearchCV, translate

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


def test_folds_and_other_scorings_are_refused_not_ignored():
    with pytest.raises(ValueError, match="K-fold"):
        SearchCV(lambda: None, {}, cv=5)
    with pytest.raises(ValueError, match="validation accuracy"):
        SearchCV(lambda: None, {}, scoring="f1_macro")


def test_seed_002s_search_and_print_loop_run_unchanged(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STUDIES_DIR", raising=False)
    monkeypatch.delenv("STORAGE", raising=False)
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    x = (y[:, None, None, None] * 80 + rng.integers(0, 40, (300, 12, 12, 1))).astype(np.uint8)
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
