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
