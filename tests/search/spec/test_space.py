"""From a study's space to a trial's values and config: conditional knobs, dense widths, augmentation;
seeded samplers and a changed space refused."""

from __future__ import annotations

import optuna
import pytest
from helpers.synthetic import TINY, memory_study

from search import (
    StudyMismatchError,
    check_compatible,
    load_spec,
    make_sampler,
    parse_spec,
    suggest,
    trial_config,
)
from search.spec._strategies import worker_seed


def test_conditional_knob_only_when_its_condition_holds():
    spec = parse_spec(TINY, name="tiny")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = []
    for _ in range(20):
        trial = study.ask()
        values = suggest(trial, spec)
        seen.append(values)
        assert ("momentum" in values) == (values["optimizer"] == "sgd")
        study.tell(trial, 0.0)
    assert {v["optimizer"] for v in seen} == {"adam", "sgd"}

def test_dense_units_follow_dense_layers():
    spec = load_spec("fc_head")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        values = suggest(trial, spec)
        units = [k for k in values if k.startswith("dense_units_")]
        assert len(units) == values["dense_layers"]
        cfg = trial_config(spec, values, input_shape=(32, 32, 3), num_classes=100)
        assert cfg.model.head.dense_units == tuple(values[k] for k in units)
        assert cfg.model.head.activation == values["activation"]
        assert cfg.train.batch_size == values["batch_size"]
        study.tell(trial, 0.0)

def test_augmentation_knobs_reach_the_config():
    spec = load_spec("vgg_bn")
    on = trial_config(spec, {"augment": True, "rotation": 5.0}, input_shape=(32, 32, 3), num_classes=10)
    off = trial_config(spec, {"augment": False}, input_shape=(32, 32, 3), num_classes=10)
    assert on.augment.rotation == 5.0 and on.augment.width_shift == 0.1 and on.augment.horizontal_flip
    assert off.augment is None

def test_changed_space_is_refused_naming_the_difference():
    spec, study = memory_study(TINY)
    changed = parse_spec(TINY.replace("choices: [32]", "choices: [32, 64]"), name="tiny")
    with pytest.raises(StudyMismatchError, match=r"space: study has .*this file has"):
        check_compatible(study, changed)
    check_compatible(study, parse_spec(TINY.replace("trials: 3", "trials: 30"), name="tiny"))  # budget may change

def test_seeded_workers_sample_differently():
    spec = parse_spec(TINY.replace("{name: random, seed: 0}", "tpe"), name="tiny")
    first = []
    for worker in range(4):
        study = optuna.create_study(sampler=make_sampler(spec, worker_index=worker))
        first.append(suggest(study.ask(), spec)["learning_rate"])
    assert len(set(first)) == 4
    # Two studies of nearby seeds share no worker's stream (seed + index gave seed 0's worker 1 and seed 1's
    # worker 0 the same first trial).
    seeds = {worker_seed(seed, worker) for seed in range(8) for worker in range(8)}
    assert len(seeds) == 64 and worker_seed(5, 0) == 5
