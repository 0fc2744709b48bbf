"""Reports: records asserted directly; the HTML and the live dashboard opened in headless Chromium."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from optuna.distributions import CategoricalDistribution, FloatDistribution

from dashboards import _records
from dashboards.report import build_report, write_report

OUTPUT = Path(__file__).resolve().parent.parent / "test-output"
DISTS = {"learning_rate": FloatDistribution(1e-4, 1e-1, log=True), "optimizer": CategoricalDistribution(["adam", "sgd"])}


def _trial(number, value, params, state=TrialState.COMPLETE, curve=(), n_params=1000, seconds=10.0):
    return create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None, params=params, distributions=DISTS,
        intermediate_values=dict(enumerate(curve)),
        user_attrs={"n_params": n_params, "train_seconds": seconds, "epochs_run": len(curve)},
    )


def _study(storage=None, name="demo") -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.add_trial(_trial(0, 0.50, {"learning_rate": 1e-3, "optimizer": "adam"}, curve=[0.3, 0.5], n_params=100, seconds=5))
    study.add_trial(_trial(1, 0.70, {"learning_rate": 3e-3, "optimizer": "adam"}, curve=[0.4, 0.7], n_params=900, seconds=30))
    study.add_trial(_trial(2, None, {"learning_rate": 5e-2, "optimizer": "sgd"}, state=TrialState.PRUNED, curve=[0.1]))
    study.add_trial(_trial(3, 0.60, {"learning_rate": 2e-3, "optimizer": "sgd"}, curve=[0.5, 0.6], n_params=200, seconds=8))
    study.add_trial(_trial(4, 0.55, {"learning_rate": 1e-2, "optimizer": "sgd"}, curve=[0.4, 0.55], n_params=950, seconds=40))
    return study


def test_history_record_tracks_best_so_far():
    h = _records.history(_study())
    assert h.numbers == [0, 1, 3, 4]
    assert h.best_so_far == [0.5, 0.7, 0.7, 0.7]


def test_learning_curves_flag_pruned_trials():
    c = _records.curves(_study())
    assert c.trials == [0, 1, 2, 3, 4]
    assert c.pruned == [False, False, True, False, False]
    assert c.epochs[2] == [1] and c.values[1] == [0.4, 0.7]


def test_pareto_front_of_accuracy_against_parameters():
    p = _records.cost_points(_study())
    # trial 4 (0.55 acc, 950 params) is dominated by 1 (0.70, 900) and 3 (0.60, 200)
    assert p.pareto_params == [0, 1, 3]
    assert p.pareto_seconds == [0, 1, 3]


def test_top_trials_and_best_against_epochs():
    top = _records.top_trials(_study(), k=2)
    assert [t["trial"] for t in top] == [1, 3]
    xs, ys = _records.best_vs_epochs(_study())
    assert xs == [2, 4, 5, 7, 9] and ys == [0.5, 0.7, 0.7, 0.7, 0.7]


def test_importances_need_enough_trials():
    assert _records.importances(_study()).keys() == {"learning_rate", "optimizer"}
    assert _records.importances(optuna.create_study(direction="maximize")) == {}


def test_report_has_every_section_and_works_offline(tmp_path):
    study = _study()
    study.set_user_attr("final_evaluation", {"trial": 1, "seeds": [0, 1, 2], "val_accuracy_mean": 0.69,
                                             "val_accuracy_std": 0.01, "test_accuracy": 0.68,
                                             "class_names": ["a", "b"], "per_class_accuracy": [0.7, 0.66]})
    study.set_user_attr("final_confusion_matrix", [[7, 3], [4, 6]])
    page = build_report(study)
    for title in ("History", "Learning curves", "Importances", "Parallel coordinates", "Slice", "Accuracy vs parameters",
                  "Accuracy vs training time", "Confusion matrix", "Per-class accuracy", "Top trials"):
        assert title in page, title
    assert "test accuracy (once) <b>0.6800</b>" in page
    import re

    assert not re.search(r"<script[^>]+src=", page)  # nothing fetched: every script is inline
    assert len(page) > 3_000_000  # plotly.js is embedded, not fetched


def test_report_compares_with_a_random_baseline_when_there_is_one(tmp_path):
    storage = optuna.storages.InMemoryStorage()
    _study(storage, name="demo")
    _study(storage, name="demo-random")
    page = build_report(optuna.load_study(study_name="demo", storage=storage))
    assert "random baseline (demo-random)" in page


# --- in the browser --------------------------------------------------------------------------


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("headless Chromium is needed: `make test` installs Debian's chromium (apt-get install chromium)")
    return path


def _browse(url: str, screenshot: Path) -> tuple[str, str]:
    """The rendered DOM and the console/error log of one page load, plus a screenshot."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    common = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
              "--v=0", "--virtual-time-budget=15000", "--window-size=1400,1000", f"--user-data-dir={screenshot.parent}/.chrome"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    shot = subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=120)
    return dom.stdout, dom.stderr + shot.stderr


def _js_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]


def test_report_renders_in_chromium_without_errors(tmp_path):
    path = write_report(_study(), tmp_path)
    dom, log = _browse(path.as_uri(), OUTPUT / "report.png")
    assert dom.count('class="plot-container plotly"') >= 8
    assert "Study demo" in dom
    assert _js_errors(log) == []
    assert (OUTPUT / "report.png").stat().st_size > 10_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study_in_chromium(tmp_path):
    journal = tmp_path / "studies.journal"
    from storage import open_storage

    _study(open_storage(f"journal://{journal}"), name="demo")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "dashboards.launcher", "--storage", f"journal://{journal}",
                               "--port", str(port), "--artifacts", str(tmp_path / "artifacts")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=2) as r:
                    studies = json.loads(r.read())["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the dashboard did not answer within 60 s")
        assert [s["study_name"] for s in studies] == ["demo"]
        dom, log = _browse(f"{base}/dashboard/studies/{studies[0]['study_id']}", OUTPUT / "dashboard.png")
        assert "demo" in dom and "Trial" in dom
        assert _js_errors(log) == []
        with socket.socket() as s:  # bound to loopback only
            assert s.connect_ex(("127.0.0.1", port)) == 0
    finally:
        server.terminate()
        server.wait(timeout=20)
