"""`python -m search run` refuses what it cannot run before anything is written to the store."""

from __future__ import annotations

import optuna
from helpers.processes import run_cli


def test_run_with_a_dataset_that_is_not_there_fails_before_the_study_is_created(tmp_path, shared_datasets,
                                                                                 shared_cache):
    """Seen by hand: `make study NAME=fc_head` offline (CIFAR-100 has no copy here) created the study,
    then failed in the base-preparing child; the corrected `DATASET=cifar10` was then refused as a
    changed setup. The data is now looked for first."""
    env = {"DATA_DIR": str(shared_datasets), "DATA_CACHE": str(shared_cache), "DATA_OFFLINE": "1"}  # no download try
    journal = tmp_path / "studies.journal"
    store = f"journal://{journal}"
    run = run_cli("run", "fc_head", "--workers", "2", "--profile", "smoke", "--storage", store, env=env, timeout=120)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "no copy of cifar100 found" in run.stderr and "Set DATA_DIR" in run.stderr
    assert "Traceback" not in run.stderr
    if journal.exists():
        from storage import open_storage

        assert optuna.get_all_study_names(open_storage(store)) == []


def test_a_store_password_reaches_the_workers_in_their_environment_not_their_argv():
    """Issue (faults and security): `--storage` with a password appeared in the workers' argv, which
    every user of the machine reads with `ps`."""
    import argparse

    from search._cli import child_store_env, override_argv
    from search.commands._runner import Runner
    from search.settings import Settings
    from search.spec import load_spec

    url = "postgresql+psycopg2://search:s3cret@db.example:5432/optuna"
    args = argparse.Namespace(name="mnist_cnn", storage=url, dataset=None, trials=4, epochs=None, profile="smoke",
                              workers=2, poll=1.0, no_create=True)
    assert "s3cret" not in " ".join(override_argv(args)) and "--trials" in override_argv(args)
    assert child_store_env(args) == {"STORAGE": url}
    runner = Runner(args, Settings.from_env({}), load_spec("mnist_cnn"))
    assert "s3cret" not in " ".join(runner.argv)
    assert runner._worker_env()["STORAGE"] == url


def test_the_runner_exits_non_zero_when_its_workers_left_the_budget_unmet(capsys):
    """Issue (faults): `make study` exited 0 one configuration short when every worker had exited 0."""
    import argparse
    import dataclasses
    import types

    from search.commands._runner import Runner
    from search.settings import Settings
    from search.spec import load_spec

    args = argparse.Namespace(name="mnist_cnn", storage=None, dataset=None, trials=None, epochs=None, profile=None,
                              workers=2, poll=1.0, no_create=True)
    spec = dataclasses.replace(load_spec("mnist_cnn"), trials=3, timeout_s=None)
    runner = Runner(args, Settings.from_env({}), spec)
    runner.study = optuna.create_study()
    for _ in range(2):
        runner.study.tell(runner.study.ask(), 0.5)
    runner.procs = {0: types.SimpleNamespace(returncode=0), 1: types.SimpleNamespace(returncode=0)}
    assert runner._exit_code() == 1
    assert "the workers exited with the budget unmet (2 of 3)" in capsys.readouterr().err
    runner.study.tell(runner.study.ask(), 0.5)
    assert runner._exit_code() == 0
    runner.spec = dataclasses.replace(spec, trials=5, timeout_s=60.0)  # a timeout ends it short, as asked
    assert runner._exit_code() == 0
