"""WORKERS_PER_GPU=auto on a CPU: a fake accelerator-memory probe, a fake card and fake worker processes.

The decision (search.commands._packing), the peak a trial records at its end (search.worker._loop), and the runner
starting the recommended number of workers and stopping the newest after an `oom`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import textwrap

import optuna
import pytest
from optuna.trial import TrialState

from search import create_study, parse_spec
from search.commands._packing import AutoPacking, GpuBox, recommend
from search.commands._runner import Runner
from search.settings import Settings
from search.worker._placement import cpu_slots
from storage import attrs, open_storage

STUDY = """
architecture: s000_model_1
dataset: cifar10
space:
  learning_rate: {low: 1.0e-3, high: 1.0e-1, log: true}
sampler: {name: random, seed: 0}
pruner: none
budget: {trials: 16, max_epochs: 1}
"""


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


FAKE_WORKER = textwrap.dedent("""
    import os, sys, time
    from optuna.trial import TrialState
    from search.study._study import budget_used, load_existing
    from storage import attrs, open_storage

    name, index = sys.argv[1], int(sys.argv[sys.argv.index("--worker-index") + 1])
    study = load_existing(name, open_storage(sys.argv[sys.argv.index("--storage") + 1]))
    oom_pending = index == int(os.environ.get("FAKE_OOM_WORKER", "-1"))
    while budget_used(study) < int(os.environ["FAKE_BUDGET"]):
        trial = study.ask()
        trial.set_user_attr(attrs.WORKER, f"w{index}@fake:{os.getpid()}")
        trial.set_user_attr("fake_env", [os.environ.get("WORKERS_PER_GPU"), os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH")])
        time.sleep(1.0)
        if oom_pending:
            oom_pending = False
            trial.set_user_attr(attrs.FAIL_REASON, "oom")
            study.tell(trial, state=TrialState.FAIL)
        else:
            trial.set_user_attr(attrs.WORKER_GPU_PEAK_END_MIB, float(os.environ["FAKE_PEAK_MIB"]))
            study.tell(trial, 0.5)
""")


def _run(tmp_path, monkeypatch, **env: str) -> tuple[Runner, int, optuna.Study]:
    """The runner of `make study` with WORKERS_PER_GPU=auto, a fake 10,000 MiB card on a 16-core box,
    and fake workers that report a peak of FAKE_PEAK_MIB."""
    spec = parse_spec(STUDY, name="packed")
    url = f"journal:///{tmp_path / 'studies.journal'}"
    create_study(spec, open_storage(url, create_schema=True))
    (tmp_path / "fake_worker.py").write_text(FAKE_WORKER)
    for key, value in {"FAKE_PEAK_MIB": "1500", "FAKE_BUDGET": str(spec.trials), **env}.items():
        monkeypatch.setenv(key, value)
    args = argparse.Namespace(name="packed", workers=1, poll=0.2, storage=url, dataset=None, trials=None, epochs=None,
                              profile=None)
    runner = Runner(args, Settings.from_env({"WORKERS_PER_GPU": "auto"}), spec,
                    box=GpuBox(("0",), total_mib=10_000, cores=16))
    runner.argv = [sys.executable, str(tmp_path / "fake_worker.py"), "packed", "--storage", url]
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        code = runner.run()
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    return runner, code, load_existing_study(url)


def load_existing_study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="packed", storage=open_storage(url))


def _workers(study: optuna.Study) -> dict[int, list]:
    """worker index -> the WORKERS_PER_GPU and TF_FORCE_GPU_ALLOW_GROWTH it ran with."""
    return {int(t.user_attrs[attrs.WORKER][1:].split("@")[0]): t.user_attrs["fake_env"] for t in study.trials
            if "fake_env" in t.user_attrs}


@pytest.mark.slow
def test_the_runner_starts_one_worker_per_gpu_then_packs_what_the_peaks_allow(tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.INFO):
        runner, code, study = _run(tmp_path, monkeypatch)
    assert code == 0 and runner.packing.k == 3
    assert _workers(study) == {0: ["1", "true"], 1: ["3", "true"], 2: ["3", "true"]}
    assert "WORKERS_PER_GPU=auto: 3 worker(s) per GPU: peak 1500 MiB" in caplog.text


@pytest.mark.slow
def test_after_an_oom_the_runner_lowers_the_packing_and_stops_the_newest_worker(tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.INFO):
        runner, code, study = _run(tmp_path, monkeypatch, FAKE_OOM_WORKER="2")
    assert code == 0 and runner.packing.k == 2 and runner.retired == {2}
    assert sorted(_workers(study)) == [0, 1, 2]  # worker 2 was not replaced
    assert "stopping worker w2 (packing is down to 2 per GPU)" in caplog.text
    assert sum(t.user_attrs.get(attrs.FAIL_REASON) == "oom" for t in study.trials) == 1


def test_auto_packing_is_a_no_op_on_a_machine_without_a_gpu():
    spec = parse_spec(STUDY, name="packed")
    args = argparse.Namespace(name="packed", workers=2, poll=0.2, storage=None, dataset=None, trials=None, epochs=None,
                              profile=None)
    settings = Settings.from_env({"WORKERS_PER_GPU": "auto", "CUDA_VISIBLE_DEVICES": ""})
    assert Runner(args, settings, spec)._auto_packing() is None
