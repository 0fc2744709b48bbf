"""TODO"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

from helpers.synthetic import FEATURE_STUDY, easy_splits

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
