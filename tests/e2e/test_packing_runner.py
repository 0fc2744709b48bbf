"""The runner with WORKERS_PER_GPU=auto on a fake card with fake worker processes: packing by measured
peaks, and lowered after an oom."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import textwrap

import optuna
from helpers.packing import STUDY

from search import create_study, parse_spec
from search.commands._packing import GpuBox
from search.commands._runner import Runner
from search.settings import Settings
from storage import attrs, open_storage

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

def test_the_runner_starts_one_worker_per_gpu_then_packs_what_the_peaks_allow(tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.INFO):
        runner, code, study = _run(tmp_path, monkeypatch)
    assert code == 0 and runner.packing.k == 3
    assert _workers(study) == {0: ["1", "true"], 1: ["3", "true"], 2: ["3", "true"]}
    assert "WORKERS_PER_GPU=auto: 3 worker(s) per GPU: peak 1500 MiB" in caplog.text

def test_after_an_oom_the_runner_lowers_the_packing_and_stops_the_newest_worker(tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.INFO):
        runner, code, study = _run(tmp_path, monkeypatch, FAKE_OOM_WORKER="2")
    assert code == 0 and runner.packing.k == 2 and runner.retired == {2}
    assert sorted(_workers(study)) == [0, 1, 2]  # worker 2 was not replaced
    assert "stopping worker w2 (packing is down to 2 per GPU)" in caplog.text
    assert sum(t.user_attrs.get(attrs.FAIL_REASON) == "oom" for t in study.trials) == 1
