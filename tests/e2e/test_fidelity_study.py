"""Fidelity by data (issue 26, part 2) end to end: a Hyperband study whose epochs 1-2 train on a ninth
of the training images, 3-4 on a third and the fifth on all, run by `python -m search run` with two workers."""

from __future__ import annotations

import json

import optuna
from helpers.datasets import write_npz
from helpers.processes import run_cli

from storage import open_storage

STUDY = """
architecture: s003_mnist_cnn
dataset: {{path: {data}}}
space:
  learning_rate: {{low: 1.0e-3, high: 3.0e-2, log: true}}
  batch_size: {{choices: [16]}}
sampler: {{name: random, seed: 1}}
pruner: hyperband
budget: {{trials: 6, max_epochs: 5, fidelity: data}}
early_stopping: {{patience: 4}}
"""


def test_a_study_with_fidelity_by_data_runs_and_says_what_each_epoch_trained_on(tmp_path):
    data = write_npz(tmp_path / "digits.npz", n=270, shape=(28, 28, 1), k=3)
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "fid.yaml").write_text(STUDY.format(data=data))
    store = f"journal://{tmp_path / 'studies.journal'}"
    env = {"STUDIES_DIR": str(studies), "ARTIFACTS_DIR": str(tmp_path / "artifacts"), "STORAGE": store}
    checked = run_cli("validate", "fid", env=env)
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert ("fidelity by data: epochs 1-2: 11% of the training set; epochs 3-4: 33%; epoch 5: all of it"
            in checked.stdout)
    run = run_cli("run", "fid", "--workers", "2", "--poll", "0.5", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[study fid] 6/6 finished" in run.stdout, run.stdout[-2000:]
    assert "epoch 2/5 (on 11% of the training set)" in run.stderr
    assert "epoch 3/5 (on 33% of the training set)" in run.stderr
    study = optuna.load_study(study_name="fid", storage=open_storage(store))
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 6
    for trial in finished:  # one report an epoch, from the first, at the pruner's steps
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(len(steps))) and 1 <= len(steps) <= 5
    # A pruned trial stopped where a share ends (steps 1 and 3: the last epochs on 1/9 and on 1/3).
    shares = (1 / 9, 1 / 9, 1 / 3, 1 / 3, 1)
    for trial in finished:
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert shares[trial.last_step] < 1 and shares[trial.last_step + 1] != shares[trial.last_step]
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all(len(t.intermediate_values) == 5 or t.user_attrs["epochs_run"] < 5 for t in complete)
    status = json.loads(run_cli("status", "fid", "--json", env=env).stdout)
    assert status["best_value"] == max(t.value for t in complete)
