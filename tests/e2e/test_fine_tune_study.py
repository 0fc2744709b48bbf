"""The fine-tuning stage (issue 23, part 8) end to end: a feature-cache study searches heads with two
workers, its best heads are promoted once to fine-tuning trials of the whole model in the same study,
and `make evaluate` confirms the best of either stage; on the embedded store and on PostgreSQL."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from helpers.processes import run_cli
from helpers.synthetic import easy_splits

from storage import open_storage

FINE_TUNE_STUDY = """
architecture: s000_model_3_1
dataset: {{path: {data}}}
fixed: {{freeze_base: true}}
space:
  optimizer: {{choices: [adam]}}
  learning_rate: {{low: 1.0e-3, high: 1.0e-2, log: true}}
  dense_units: {{choices: [32, 64]}}
  batch_size: {{choices: [64]}}
sampler: {{name: random, seed: 0}}
pruner: none
budget: {{trials: 3, max_epochs: 2}}
feature_cache: {{base_epochs: 1}}
fine_tune: {{top_k: 2, epochs: 2, space: {{unfreeze_blocks: {{choices: [1, 2]}}, learning_rate: {{low: 1.0e-5, high: 1.0e-4, log: true}}}}}}
"""


@pytest.fixture(params=["embedded", "postgres"])
def store(request, tmp_path):
    if request.param == "embedded":
        return f"journal://{tmp_path / 'studies.journal'}"
    return request.getfixturevalue("journal_pg_url")


def _study_env(tmp_path, store: str) -> dict[str, str]:
    splits = easy_splits(400, 100)  # learnable: class k is k steps brighter
    data = tmp_path / "bright.npz"
    np.savez(data, x_train=np.concatenate([splits.x_train, splits.x_val]),
             y_train=np.concatenate([splits.y_train, splits.y_val]), x_test=splits.x_val[:60], y_test=splits.y_val[:60])
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "ft.yaml").write_text(FINE_TUNE_STUDY.format(data=data))
    # A worker whose budget is met looks for work every HEARTBEAT_INTERVAL: 1 s, as these trials take seconds.
    return {"STUDIES_DIR": str(studies), "ARTIFACTS_DIR": str(tmp_path / "artifacts"), "STORAGE": store,
            "HEARTBEAT_INTERVAL": "1"}


def test_a_fine_tune_study_promotes_its_best_heads_once_and_evaluates_the_best_of_either_stage(tmp_path, store):
    env = _study_env(tmp_path, store)
    run = run_cli("run", "ft", "--workers", "2", "--poll", "0.5", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[study ft] 5/5 finished" in run.stdout, run.stdout[-2000:]  # 3 heads, then 2 promoted
    assert run.stderr.count("promoted trials") == 1, run.stderr[-3000:]  # one worker promoted, under the lock
    study = optuna.load_study(study_name="ft", storage=open_storage(store))
    heads = [t for t in study.trials if t.user_attrs.get("stage") != "fine_tune"]
    tuned = [t for t in study.trials if t.user_attrs.get("promoted_from") is not None]
    assert len(heads) == 3 and all(t.state.name == "COMPLETE" for t in heads)
    best_two = sorted(heads, key=lambda t: (-t.value, t.number))[:2]
    assert sorted(t.user_attrs["promoted_from"] for t in tuned) == sorted(t.number for t in best_two)
    assert min(t.number for t in tuned) > max(t.number for t in heads)  # after the head budget was met
    # Both workers fine-tune: the one that did not promote waits for the queued trials, it does not leave.
    assert {t.user_attrs["worker"].split("@")[0] for t in tuned} == {"w0", "w1"}, [t.user_attrs for t in tuned]
    for t in tuned:
        head = study.trials[t.user_attrs["promoted_from"]]
        assert t.state.name in ("COMPLETE", "PRUNED"), t.user_attrs
        assert {k: v for k, v in t.params.items() if not k.startswith("fine_tune_")} == head.params
        assert t.params["fine_tune_unfreeze_blocks"] in (1, 2) and 1e-5 <= t.params["fine_tune_learning_rate"] <= 1e-4
        assert 0.0 <= t.user_attrs["fine_tune_head_value"] <= 1.0  # the head retrained before the base thawed
        assert t.user_attrs["n_params"] > head.user_attrs["n_params"] >= 0  # the base's weights are the trial's now
        assert 0 < t.user_attrs["fine_tune_trainable_params"] < t.user_attrs["n_params"]  # the first block stays frozen
    # A trial asked for when another worker took the last queued one is the stage's, never trained.
    for t in study.trials:
        if t.user_attrs.get("stage") == "fine_tune" and "promoted_from" not in t.user_attrs:
            assert t.state.name == "PRUNED" and "not trained" in t.user_attrs["infeasible"]
    status = json.loads(run_cli("status", "ft", "--json", env=env).stdout)
    assert status["best_value"] == pytest.approx(max(t.value for t in study.trials if t.state.name == "COMPLETE"))
    assert status["fine_tune"]["promoted"] == [t.number for t in best_two]
    assert {r["trial"] for r in status["fine_tune"]["trials"]} == {t.number for t in tuned}
    shown = run_cli("status", "ft", env=env).stdout
    assert f"fine-tuning stage: heads {best_two[0].number}, {best_two[1].number} promoted" in shown, shown
    if not store.startswith("journal://"):
        return  # one evaluation is enough: it reads the study as any store gives it
    again = run_cli("run", "ft", "--workers", "1", "--poll", "0.5", env=env)  # both stages done: nothing to do
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr[-2000:]
    assert len(optuna.load_study(study_name="ft", storage=open_storage(store)).trials) == len(study.trials)
    evaluate = run_cli("evaluate", "ft", "--top-k", "5", env=env)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    record = optuna.load_study(study_name="ft", storage=open_storage(store)).user_attrs["final_evaluation"]
    done = {t.number for t in study.trials if t.state.name == "COMPLETE"}
    assert {c["trial"] for c in record["candidates"]} == done  # heads and fine-tuned alike, 5 at most
    assert record["trial"] == max(record["candidates"], key=lambda c: c["confirmed_mean"])["trial"]
    assert "fine-tune" in evaluate.stderr or not (done & {t.number for t in tuned})  # a tuned candidate is tuned again
    assert 0.0 <= record["test_accuracy"] <= 1.0 and record["n_test"] == 60
