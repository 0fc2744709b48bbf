"""On a machine without a GPU: an early, honest estimate of a long one-time base training, and
workers that start without TensorFlow's alarming CUDA lines."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import ONE_TRIAL_STUDY, easy_splits
from test_features import FEATURE_STUDY

from search import parse_spec
from search.trial._base_estimate import BaseTimeEstimate, SlowBase
from search.trial._features import ensure_base

SMALL_BATCHES = FEATURE_STUDY.replace("feature_cache: {base_epochs: 1}", "feature_cache: {base_epochs: 2, base_batch_size: 32}")


def _clock(step_s: float):
    """A clock that moves `step_s` seconds each time it is read (after the first batch, then after
    `batches` more)."""
    ticks = itertools.count()
    return lambda: next(ticks) * step_s


def test_a_long_base_training_on_a_cpu_is_estimated_early_and_the_quick_profile_offered(caplog):
    spec = parse_spec(SMALL_BATCHES, name="feat")
    with caplog.at_level(logging.WARNING, logger="search.trial._base_estimate"):
        ensure_base(spec, easy_splits(200, 50), artifacts=Path("artifacts"),
                    slow=SlowBase(threshold_s=600, batches=2, clock=_clock(200.0)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    # 200 s over 2 batches (the fake clock): 100 s a batch x 7 batches of 32 of 200 images x 2 epochs = 1,400 s
    assert warnings[0].startswith("feat: the one-time training of its s000_model_3_1 base (2 epochs x 7 batches of "
                                  "32 images, 200 images) will take about 23 minutes on this machine's CPU")
    assert "`make study NAME=feat PROFILE=quick` (python -m search run feat --profile quick)" in warnings[0]
    assert "STORAGE=quick.journal" in warnings[0] and warnings[0].endswith("Going on with the full base.")


def test_a_short_base_training_or_one_already_quick_says_no_more_than_it_must(caplog):
    def batches(spec, threshold_s):
        estimate = BaseTimeEstimate(spec, 200, SlowBase(threshold_s=threshold_s, batches=2, clock=_clock(200.0)))
        for batch in range(7):
            estimate.on_train_batch_end(batch)
        return estimate.estimate_s

    with caplog.at_level(logging.WARNING, logger="search.trial._base_estimate"):
        assert batches(parse_spec(SMALL_BATCHES, name="feat"), threshold_s=10_000) == 1400.0
        assert not caplog.records  # under the threshold
        quick = parse_spec(SMALL_BATCHES, name="feat", profile="quick")
        assert batches(quick, threshold_s=600) == 100.0 * 7 * 2
    assert "(Profile quick is already applied.) Going on." in caplog.text and "Ctrl-C" not in caplog.text


CUDA_NOISE = ("cuInit", "cuda drivers", "CUDA error")


WORKER_STUDY = ONE_TRIAL_STUDY


@pytest.mark.slow
def test_a_worker_process_on_a_cpu_prints_no_cuda_lines(tmp_path):
    """TensorFlow's CUDA build prints `Could not find cuda drivers` as it loads and `failed call to
    cuInit` as it looks for devices, on every worker start, whatever TF_CPP_MIN_LOG_LEVEL says; the
    CPU build (the `cpu` extra, what `make` installs) has no CUDA code to complain. This passes once
    the virtualenv holds tensorflow-cpu rather than tensorflow."""
    from conftest import write_cifar10_pickles

    from search import create_study, load_spec
    from storage import open_storage

    write_cifar10_pickles(tmp_path / "datasets", n_per_batch=20)  # not ./data: it would shadow the package
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "tiny.yaml").write_text(WORKER_STUDY)
    url = f"journal://{tmp_path / 'studies.journal'}"
    create_study(load_spec("tiny", studies_dir=tmp_path / "studies"), open_storage(url, create_schema=True))
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "TF_CPP_MIN_LOG_LEVEL")}
    env.update(STUDIES_DIR=str(tmp_path / "studies"), DATA_DIR=str(tmp_path / "datasets"), KERAS_BACKEND="tensorflow",
               ARTIFACTS_DIR=str(tmp_path / "artifacts"))
    run = subprocess.run([sys.executable, "-m", "search.worker", "tiny", "--storage", url], capture_output=True,
                         text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "trial 0 complete" in run.stderr
    noise = [line for line in (run.stdout + run.stderr).splitlines() if any(word in line for word in CUDA_NOISE)]
    assert not noise, noise
