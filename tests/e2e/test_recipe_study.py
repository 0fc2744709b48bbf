"""A study that searches the training recipe (schedules and warm-up, AdamW, weight decay, clipping,
EMA, label smoothing, augmentation policies), scores trials on macro-F1 and bounds them with
constraints, run end to end with two workers on the embedded store and on PostgreSQL."""

from __future__ import annotations

import json

import optuna
import pytest
from helpers.datasets import write_npz
from helpers.processes import run_cli

from storage import open_storage

RECIPE_STUDY = """
architecture: s003_mnist_cnn
dataset: {{path: {data}}}
space:
  optimizer: {{choices: [adamw, lion]}}
  learning_rate: {{low: 1.0e-3, high: 1.0e-2, log: true}}
  lr_schedule: {{choices: [cosine, inverse_time, plateau]}}
  decay_rate: {{low: 1.0e-5, high: 1.0e-3, log: true, when: {{lr_schedule: inverse_time}}}}
  label_smoothing: {{choices: [0.0, 0.1]}}
  batch_size: {{choices: [16]}}
  mixup: {{choices: [true, false]}}
fixed: {{warmup_epochs: 0.5, weight_decay: 0.01, clipnorm: 1.0, ema: true, min_lr_fraction: 0.1}}
augment: {{randaugment: true, randaugment_ops: 1, random_erasing: 0.25, cutmix: true}}
objective: {{metric: val_macro_f1}}
constraints: {{max_params: 5000000, max_epoch_seconds: 600}}
sampler: {{name: random, seed: 3}}
pruner: none
budget: {{trials: 3, max_epochs: 2}}
"""


@pytest.fixture(params=["embedded", "postgres"])
def store(request, tmp_path):
    if request.param == "embedded":
        return f"journal://{tmp_path / 'studies.journal'}"
    return request.getfixturevalue("journal_pg_url")


def test_a_recipe_study_runs_with_two_workers(tmp_path, store):
    data = write_npz(tmp_path / "digits.npz", n=120, shape=(28, 28, 1))
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "recipe.yaml").write_text(RECIPE_STUDY.format(data=data))
    env = {"STUDIES_DIR": str(studies), "ARTIFACTS_DIR": str(tmp_path / "artifacts"), "STORAGE": store}
    run = run_cli("run", "recipe", "--workers", "2", "--poll", "0.5", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[study recipe] 3/3 finished: 3 complete" in run.stdout, run.stdout[-2000:]
    assert "val_macro_f1=" in run.stderr  # each epoch's line shows the objective
    study = optuna.load_study(study_name="recipe", storage=open_storage(store))
    for trial in study.trials:
        assert {"optimizer", "lr_schedule", "label_smoothing", "mixup"} <= set(trial.params)
        assert 0.0 <= trial.value <= 1.0  # macro-F1
        assert set(trial.constraints) == {"params", "epoch_seconds"} and max(trial.constraints.values()) <= 0
        curve = [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
        assert trial.value == pytest.approx(max(curve))  # the reported metric's best epoch
    status = json.loads(run_cli("status", "recipe", "--json", env=env).stdout)
    assert status["best_value"] == pytest.approx(max(t.value for t in study.trials))
