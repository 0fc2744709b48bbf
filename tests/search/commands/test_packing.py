"""TODO"""

from __future__ import annotations

import argparse
import logging

import optuna
import pytest
from helpers.packing import STUDY
from optuna.trial import TrialState

from search import create_study, parse_spec
from search.commands._packing import AutoPacking, GpuBox, recommend
from search.commands._runner import Runner
from search.settings import Settings
from search.worker._placement import cpu_slots
from storage import attrs


def test_workers_per_gpu_is_what_fits_under_the_margin_and_the_cpu_limit():
    assert recommend(1500, 10_000, cpu_limit=8) == 3  # floor(0.8 x 10,000 / (1,500 + 512 MiB of CUDA context))
    assert recommend(100, 141_000, cpu_limit=8) == 8  # an H200 and small models: the CPU limit decides
    assert recommend(9000, 10_000, cpu_limit=8) == 1  # never fewer than one
    assert recommend(1500, 10_000, cpu_limit=8, margin=0.5) == 2
    assert (cpu_slots(1, 16), cpu_slots(2, 16), cpu_slots(1, 2), cpu_slots(4, 2)) == (8, 4, 1, 1)
    with pytest.raises(ValueError, match="total_mib > 0 but got 1500 and 0"):
        recommend(1500, 0, cpu_limit=8)

def _trial(number, *, peak=None, oom=False):
    user_attrs = {} if peak is None else {attrs.WORKER_GPU_PEAK_END_MIB: peak}
    if oom:
        user_attrs[attrs.FAIL_REASON] = "oom"
    trial = optuna.trial.create_trial(state=TrialState.FAIL if oom else TrialState.COMPLETE,
                                      value=None if oom else 0.5, user_attrs=user_attrs)
    trial.number = number
    return trial

def test_packing_waits_for_two_measured_trials_and_an_oom_lowers_it_for_good(caplog):
    packing = AutoPacking(GpuBox(("0",), total_mib=10_000, cores=16))
    trials = [_trial(0, peak=1200.0)]
    assert packing.update(trials) == 1  # one measurement is not enough
    trials.append(_trial(1, peak=1500.0))
    with caplog.at_level(logging.INFO, logger="search.commands._packing"):
        assert packing.update(trials) == 3  # the largest peak decides
    assert "3 worker(s) per GPU: peak 1500 MiB" in caplog.text
    trials.append(_trial(2, oom=True))
    assert packing.update(trials) == 2
    assert "trial(s) [2] ran out of GPU memory with 3 workers per GPU: packing 2 from now on" in caplog.text
    trials += [_trial(3, peak=100.0), _trial(4, peak=100.0)]
    assert packing.update(trials) == 2  # smaller peaks later do not raise it past the oom
    assert packing.update(trials + [_trial(5, peak=6000.0)]) == 1  # a larger one lowers it

def test_an_oom_with_one_worker_per_gpu_says_nothing_about_packing():
    packing = AutoPacking(GpuBox(("0",), total_mib=10_000, cores=16))
    assert packing.update([_trial(0, oom=True)]) == 1 and packing.ceiling is None
    assert packing.update([_trial(0, oom=True), _trial(1, peak=1500.0), _trial(2, peak=1500.0)]) == 3

def test_each_trial_records_its_workers_peak_gpu_memory_at_its_end(monkeypatch):
    """A fake accelerator probe whose peak grows as trials run (on a GPU it is the allocator's)."""
    from search.worker import _loop
    from search.worker._liveness import Background, Liveness
    from search.worker._loop import run_loop
    from search.worker._signals import StopFlag

    spec = parse_spec(STUDY.replace("trials: 16", "trials: 3"), name="packed")
    study = create_study(spec, optuna.storages.InMemoryStorage())
    peak = [0.0]
    monkeypatch.setattr(_loop, "accelerator_memory_mib", lambda: (10.0, peak[0]))

    def objective(trial):
        peak[0] = max(peak[0], 1000.0 + 100 * trial.number)
        return 0.5

    assert run_loop(study, spec, objective, StopFlag(), Background(study, Liveness()), "w0") is None
    assert [t.user_attrs[attrs.WORKER_GPU_PEAK_END_MIB] for t in study.trials] == [1000.0, 1100.0, 1200.0]
    assert [t.user_attrs[attrs.WORKER_GPU_PEAK_MIB] for t in study.trials] == [0.0, 1000.0, 1100.0]  # at the start

def test_auto_packing_is_a_no_op_on_a_machine_without_a_gpu():
    spec = parse_spec(STUDY, name="packed")
    args = argparse.Namespace(name="packed", workers=2, poll=0.2, storage=None, dataset=None, trials=None, epochs=None,
                              profile=None)
    settings = Settings.from_env({"WORKERS_PER_GPU": "auto", "CUDA_VISIBLE_DEVICES": ""})
    assert Runner(args, settings, spec)._auto_packing() is None
