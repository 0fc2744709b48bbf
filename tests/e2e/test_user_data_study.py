"""A study on data of one's own (a folder, an npz) run and evaluated end to end."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.datasets import (
    FLOWERS,
    write_images,
    write_npz,
    write_study_file,
)
from helpers.processes import run_cli


# An .npz of one's own runs end to end in tests/e2e/test_python_api.py (search.Study saves a notebook's
# arrays as one); its named classes are read in tests/data/test_user_data.py.
@pytest.mark.parametrize("kind", ["folder"])
def test_run_and_evaluate_a_study_on_data_of_ones_own(tmp_path, kind):
    if kind == "folder":  # 40x48 grayscale PNGs, 7 classes, 20 a class, no test folder
        dataset, names = f"{{path: {write_images(tmp_path / 'flowers')}}}", FLOWERS
    else:  # 24x24x3 arrays, 5 classes, named
        names = ("ant", "bee", "cat", "dog", "eel")
        dataset = f"{{path: {write_npz(tmp_path / 'bugs.npz', n=100, class_names=np.array(names))}}}"
    write_study_file(tmp_path / "studies", "own", dataset)
    journal = tmp_path / "studies.journal"
    env = {"STUDIES_DIR": str(tmp_path / "studies"), "ARTIFACTS_DIR": str(tmp_path / "artifacts"),
           "STORAGE": f"journal://{journal}"}
    run = run_cli("run", "own", "--workers", "2", "--trials", "3", "--epochs", "1", "--poll", "0.5", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[study own] 3/3 finished: 3 complete" in run.stdout, run.stdout[-2000:]
    evaluated = run_cli("evaluate", "own", env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    weakest = next(line for line in evaluated.stdout.splitlines() if line.startswith("weakest classes: "))
    printed = [part.rsplit(" ", 1)[0] for part in weakest.removeprefix("weakest classes: ").split(", ")]
    assert len(printed) == 3 and set(printed) <= set(names), weakest
    import optuna

    from storage import attrs, open_storage

    study = optuna.load_study(study_name="own", storage=open_storage(f"journal://{journal}"))
    assert study.user_attrs[attrs.FINAL_EVALUATION]["class_names"] == list(names)
    assert study.user_attrs[attrs.STUDY_DATASET]["class_names"] == list(names)
    # The test split is read once (issue: the winner users get, part 4): a second evaluate shows the
    # recorded result and reads nothing; --retest would, and says the figure is then biased.
    [access] = study.user_attrs[attrs.TEST_ACCESSES]
    assert access["trial"] == study.user_attrs[attrs.FINAL_EVALUATION]["trial"] and "@" in access["who"]
    again = run_cli("evaluate", "own", env=env)
    assert again.returncode == 0 and "was tested already: test accuracy" in again.stdout, again.stderr[-2000:]
    assert "pass --retest" in again.stdout
    study = optuna.load_study(study_name="own", storage=open_storage(f"journal://{journal}"))
    assert len(study.user_attrs[attrs.TEST_ACCESSES]) == 1
