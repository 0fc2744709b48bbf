"""import-cv: an old scikit-learn randomized search (seed 002's scikeras KerasClassifier) brought into
a study as warm starts. Its cv_results_ are written here as pandas writes them (CSV, JSON in two
orientations, a pickle), from one table of eight configurations."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from dashboards import _records
from search import create_study, parse_spec, suggest
from search.__main__ import main
from search.commands._import_cv import IGNORED, NAMES, CvImportError, enqueue, knob_for, parse_mapping, plan_import
from search.spec._knobs import KNOBS
from storage import attrs, open_storage

STUDY = """description: seed 002's dense head, searched with TPE instead of a randomized grid
source: seed 002
architecture: s002_vgg_base
dataset: cifar100
fixed: {freeze_base: true}
space:
  optimizer: {choices: [sgd, adam, adamax, rmsprop, nadam]}
  learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}
  momentum: {low: 0.5, high: 0.99, when: {optimizer: [sgd, rmsprop]}}
  dense_layers: {low: 1, high: 2}
  dense_units: {choices: [128, 256, 512, 1024]}
  activation: {choices: [relu, elu, tanh, sigmoid]}
  batch_size: {choices: [64, 128, 256]}
budget: {trials: 20, max_epochs: 5}
"""
ADAM_CLASS = "<class 'keras.src.optimizers.adam.Adam'>"  # scikeras also takes optimizer classes
# seed 002's search: optimizer, one or two dense layers, their width, their activation (+ rate, batch, epochs)
PARAMS = ("optimizer", "optimizer__learning_rate", "optimizer__momentum", "model__hidden_layers",
          "model__dense_units", "model__activation", "batch_size", "epochs")
ROWS = [  # one row per configuration, in cv_results_ order: PARAMS, then mean, std and rank of the test score
    ("SGD", 0.01, 0.9, 2, 256, "relu", 64, 30, 0.581, 0.014, 3),
    ("Adam", 0.001, 0.5, 1, 512, "sigmoid", 128, 30, 0.612, 0.011, 1),
    ("RMSprop", 0.0005, 0.9, 1, 1024, "tanh", 256, 20, 0.402, 0.030, 7),
    ("adamax", 0.002, 0.7, 2, 512, "elu", 128, 20, 0.598, 0.009, 2),
    ("nadam", None, 0.9, 1, 128, "relu", 64, 30, 0.556, 0.020, 5),  # learning rate masked (another grid)
    ("sgd", 0.05, 0.95, 2, 128, "sigmoid", 256, 20, 0.311, 0.041, 8),
    (ADAM_CLASS, 0.0003, 0.8, 2, 256, "tanh", 128, 30, 0.563, 0.017, 4),
    ("SGD", 0.005, 0.6, 1, 512, "elu", 256, 20, 0.497, 0.025, 6),
]
# The top five by rank, as the study's parameters: momentum only where the optimizer takes it.
EXPECTED = [
    {"optimizer": "adam", "learning_rate": 0.001, "dense_layers": 1, "activation": "sigmoid", "batch_size": 128,
     "dense_units_0": 512},
    {"optimizer": "adamax", "learning_rate": 0.002, "dense_layers": 2, "activation": "elu", "batch_size": 128,
     "dense_units_0": 512, "dense_units_1": 512},
    {"optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9, "dense_layers": 2, "activation": "relu",
     "batch_size": 64, "dense_units_0": 256, "dense_units_1": 256},
    {"optimizer": "adam", "learning_rate": 0.0003, "dense_layers": 2, "activation": "tanh", "batch_size": 128,
     "dense_units_0": 256, "dense_units_1": 256},
    {"optimizer": "nadam", "dense_layers": 1, "activation": "relu", "batch_size": 64, "dense_units_0": 128},
]


def cv_results(rows=ROWS) -> dict[str, list]:
    """cv_results_ as GridSearchCV/RandomizedSearchCV build it (lists here; arrays in the pickle)."""
    rng = np.random.default_rng(0)
    out: dict[str, list] = {c: rng.uniform(1, 60, len(rows)).round(3).tolist()
                            for c in ("mean_fit_time", "std_fit_time", "mean_score_time", "std_score_time")}
    for i, name in enumerate(PARAMS):
        out[f"param_{name}"] = [row[i] for row in rows]
    out["params"] = [{n: row[i] for i, n in enumerate(PARAMS) if row[i] is not None} for row in rows]
    for split in range(3):
        out[f"split{split}_test_score"] = [round(row[8] + (split - 1) * row[9], 4) for row in rows]
    for i, column in enumerate(("mean_test_score", "std_test_score", "rank_test_score"), start=8):
        out[column] = [row[i] for row in rows]
    return out


def write_csv(path: Path, results: dict[str, list]) -> Path:
    """As pd.DataFrame(results).to_csv(path): the index first, unnamed; a masked cell empty; a dict as its repr."""
    columns = list(results)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["", *columns])
        for i in range(len(results["mean_test_score"])):
            writer.writerow([i, *("" if results[c][i] is None else str(results[c][i]) for c in columns)])
    return path


def write_json(path: Path, results: dict[str, list], orient: str) -> Path:
    """As pd.DataFrame(results).to_json(path, orient=...): 'columns' (the default) or 'records'."""
    n = len(results["mean_test_score"])
    if orient == "columns":
        data: object = {c: {str(i): v[i] for i in range(n)} for c, v in results.items()}
    else:
        data = [{c: v[i] for c, v in results.items()} for i in range(n)]
    path.write_text(json.dumps(data))
    return path


def write_pickle(path: Path, results: dict[str, list]) -> Path:
    """pickle.dump(search.cv_results_): param_ columns are masked object arrays, scores numpy arrays."""
    data: dict[str, object] = {}
    for column, values in results.items():
        if column.startswith("param_"):
            data[column] = np.ma.MaskedArray(np.array(values, dtype=object), mask=[v is None for v in values])
        elif column == "params":
            data[column] = values
        else:
            data[column] = np.asarray(values, dtype=np.int32 if column.startswith("rank_") else float)
    path.write_bytes(pickle.dumps(data))
    return path


@pytest.fixture
def study(tmp_path):
    """Study `s002_head` created in a journal file, its study file in tmp_path/studies."""
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "s002_head.yaml").write_text(STUDY)
    url = f"journal://{tmp_path / 's.journal'}"
    return create_study(parse_spec(STUDY, name="s002_head"), open_storage(url, create_schema=True)), url


def _spec():
    return parse_spec(STUDY, name="s002_head")


def _cli(url: str, *args: str) -> list[str]:
    return ["import-cv", "s002_head", *args, "--storage", url]


def test_the_top_five_of_a_csv_are_enqueued_with_their_old_scores_as_attributes(study, tmp_path):
    study, _ = study
    plan = enqueue(study, plan_import(_spec(), write_csv(tmp_path / "cv_results.csv", cv_results())))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.WAITING] * 5
    assert [t.system_attrs[attrs.FIXED_PARAMS] for t in trials] == EXPECTED
    assert [t.user_attrs[attrs.CV_RANK] for t in trials] == [1, 2, 3, 4, 5]
    assert [t.user_attrs[attrs.CV_MEAN_TEST_SCORE] for t in trials] == [0.612, 0.598, 0.581, 0.563, 0.556]
    assert [t.user_attrs[attrs.CV_STD_TEST_SCORE] for t in trials] == [0.011, 0.009, 0.014, 0.017, 0.020]
    assert {t.user_attrs[attrs.CV_SOURCE] for t in trials} == {"cv_results.csv"}
    assert all(t.value is None and t.values is None for t in trials)  # old scores are never values
    assert list(plan.ignored) == ["epochs"] and "max_epochs" in plan.ignored["epochs"]
    assert "column ignored: epochs" in "\n".join(plan.lines("s002_head"))


def test_importing_again_enqueues_nothing_new(study, tmp_path):
    study, _ = study
    path = write_csv(tmp_path / "cv.csv", cv_results())
    enqueue(study, plan_import(_spec(), path, top_k=3))
    again = enqueue(study, plan_import(_spec(), path, top_k=4))
    assert len(again.enqueued) == 1 and len(again.skipped) == 3
    assert len(study.get_trials()) == 4


@pytest.mark.parametrize("orient", ["columns", "records"])
def test_pandas_json_in_either_orientation_gives_the_same_trials(tmp_path, orient):
    plan = plan_import(_spec(), write_json(tmp_path / "cv.json", cv_results(), orient))
    assert [w.params for w in plan.warm] == EXPECTED
    assert [w.row.rank for w in plan.warm] == [1, 2, 3, 4, 5]


def test_a_row_outside_the_space_fails_the_command_before_anything_is_enqueued(study, tmp_path, monkeypatch, capsys):
    study, url = study
    rows = list(ROWS)
    rows[6] = (ADAM_CLASS, 0.5, *rows[6][2:])  # rank 4: a learning rate above the study's range
    path = write_csv(tmp_path / "cv.csv", cv_results(rows))
    monkeypatch.setenv("STUDIES_DIR", str(tmp_path / "studies"))
    assert main(_cli(url, str(path))) == 2
    err = capsys.readouterr().err
    assert "cv.csv row 6 (rank 4)" in err and "learning_rate=0.5" in err and "[0.0001, 0.1]" in err
    assert study.get_trials() == []  # ranks 1-3 fit, yet nothing was enqueued


def test_a_pickle_is_refused_without_trust_and_read_with_it(study, tmp_path, monkeypatch, capsys):
    study, url = study
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return open, (str(marker), "w")

    path = tmp_path / "cv.pkl"
    path.write_bytes(pickle.dumps({**cv_results(), "evil": [RunsCode()]}))
    monkeypatch.setenv("STUDIES_DIR", str(tmp_path / "studies"))
    assert main(_cli(url, str(path))) == 2
    assert "--trust-pickle" in capsys.readouterr().err and not marker.exists()
    with pytest.raises(CvImportError, match="runs code when it is loaded"):
        plan_import(_spec(), path)
    trusted = write_pickle(tmp_path / "cv_results.pickle", cv_results())
    assert main(_cli(url, str(trusted), "--trust-pickle")) == 0
    assert [t.system_attrs[attrs.FIXED_PARAMS] for t in study.get_trials()] == EXPECTED


def test_names_map_to_knobs_and_map_flags_override_them(tmp_path):
    assert [knob_for(n) for n in PARAMS] == ["optimizer", "learning_rate", "momentum", "dense_layers",
                                             "dense_units", "activation", "batch_size", None]
    assert set(NAMES.values()) <= set(KNOBS) and not set(IGNORED) & set(KNOBS)
    assert knob_for("model__size") is None
    assert knob_for("model__size", parse_mapping(["model__size=dense_units"])) == "dense_units"
    assert knob_for("batch_size", parse_mapping(["batch_size="])) is None
    with pytest.raises(CvImportError, match="'sizes' is not a knob"):
        parse_mapping(["model__size=sizes"])
    results = cv_results()
    results["param_model__size"] = results.pop("param_model__dense_units")
    plan = plan_import(_spec(), write_csv(tmp_path / "cv.csv", results), mapping=parse_mapping(["model__size=dense_units"]))
    assert [w.params for w in plan.warm] == EXPECTED


def test_tuples_of_widths_set_each_layer_and_the_layer_count(tmp_path):
    results = cv_results()
    layers = results.pop("param_model__hidden_layers")
    results["param_model__dense_units"] = [(w, 128) if n == 2 else w
                                           for n, w in zip(layers, results["param_model__dense_units"])]
    plan = plan_import(_spec(), write_csv(tmp_path / "cv.csv", results), top_k=2)
    assert plan.warm[0].params["dense_units_0"] == 512 and "dense_layers" not in plan.warm[0].params
    assert plan.warm[1].params["dense_layers"] == 2
    assert (plan.warm[1].params["dense_units_0"], plan.warm[1].params["dense_units_1"]) == (512, 128)
    assert plan.ignored.keys() == {"epochs"}


def test_the_report_record_pairs_old_scores_with_new_accuracy(study, tmp_path):
    study, _ = study
    enqueue(study, plan_import(_spec(), write_csv(tmp_path / "cv.csv", cv_results()), top_k=4))
    spec = _spec()
    for value in (0.41, 0.47):  # two trials run to the end, one is running, one still waits
        trial = study.ask()
        suggest(trial, spec)
        study.tell(trial, value)
    suggest(study.ask(), spec)
    rows = _records.imported_trials(study)
    assert [(r.trial, r.cv_rank, r.cv_mean, r.value, r.state) for r in rows] == [
        (0, 1, 0.612, 0.41, "complete"), (1, 2, 0.598, 0.47, "complete"), (2, 3, 0.581, None, "running"),
        (3, 4, 0.563, None, "waiting")]
    assert rows[0].params == EXPECTED[0] and rows[3].params == EXPECTED[3]  # the waiting one: its enqueued params


def test_the_cli_imports_into_a_study_it_created(tmp_path):
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "s002_head.yaml").write_text(STUDY)
    url = f"journal://{tmp_path / 's.journal'}"
    env = {**os.environ, "STUDIES_DIR": str(tmp_path / "studies")}
    path = write_csv(tmp_path / "cv_results.csv", cv_results())

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "search", *args, "--storage", url], env=env, capture_output=True,
                              text=True, timeout=120)

    missing = cli("import-cv", "s002_head", str(path))
    assert missing.returncode == 2 and "does not exist in this store; create it first" in missing.stderr
    assert cli("create", "s002_head").returncode == 0
    done = cli("import-cv", "s002_head", str(path), "--top-k", "3")
    assert done.returncode == 0, done.stderr
    assert "3 warm-start trial(s) enqueued from cv_results.csv" in done.stdout and "epochs" in done.stdout
    study = optuna.load_study(study_name="s002_head", storage=open_storage(url))
    assert [t.user_attrs[attrs.CV_RANK] for t in study.get_trials()] == [1, 2, 3]
