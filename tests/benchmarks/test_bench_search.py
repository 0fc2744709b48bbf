"""bench-search's own logic: epochs counted until TPE first reaches random's best; its base trains
on images the heads never see."""

from __future__ import annotations

import json

import pytest

from search import (
    load_spec,
)


def test_bench_search_counts_epochs_until_ours_first_reaches_randoms_best():
    from benchmarks.search import Run, epochs_to_reach

    # Best-so-far after each trial and the cumulative epochs spent by then (a pruned trial adds few).
    ours = Run(best=[0.30, 0.30, 0.42, 0.45], epochs=[20, 21, 24, 44], seconds=1.0)
    assert epochs_to_reach(ours, 0.42) == (24, 3)  # reached by the third trial, after 24 epochs
    assert epochs_to_reach(ours, 0.30) == (20, 1)
    assert epochs_to_reach(ours, 0.46) == (None, None)  # never reached

def test_bench_search_trains_its_base_on_images_the_heads_never_see(monkeypatch, tmp_path):
    import types

    import numpy as np

    from benchmarks import search as bench
    from data._load import Dataset
    from data._specs import CIFAR10_CLASSES
    from search.trial._features import base_preset

    n = 2_000
    y = np.arange(n) % 10
    x = np.zeros((n, 32, 32, 3), np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(n) // 256, np.arange(n) % 256  # each image carries its index
    dataset = Dataset("cifar10", x, y, CIFAR10_CLASSES, "ids", "test", x[:10], y[:10])
    seen = {}

    def fake_base(spec, splits):
        seen["base"] = (spec, splits)
        (tmp_path / "base.json").write_text(json.dumps({"val_accuracy": 0.5}))
        return tmp_path / "base.weights.h5"

    def fake_features(spec, splits):
        seen["features"] = (spec, splits)
        return types.SimpleNamespace(splits=splits)

    monkeypatch.setattr(bench, "ensure_base", fake_base)
    monkeypatch.setattr(bench, "ensure_features", fake_features)
    spec = load_spec("fc_head", dataset="cifar10")
    heads, n_base, base_val = bench.bench_features(spec, dataset, base="s003_vgg_blocks", base_epochs=3,
                                                   base_images=600, max_train=500)

    def ids(images):
        return set((images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 0, 1]).tolist())

    base_spec, base_splits = seen["base"]
    feature_spec, _ = seen["features"]
    assert base_preset(base_spec) == "s003_vgg_blocks" and base_spec.feature_cache.base_epochs == 3
    assert feature_spec.feature_cache.base_weights == str(tmp_path / "base.weights.h5")
    assert base_preset(feature_spec) == "s003_vgg_blocks"  # features are run through the base that was trained
    assert len(heads.y_train) == 500 and n_base == len(base_splits.y_train) == 600 and base_val == 0.5
    assert not ids(base_splits.x_train) & ids(heads.x_train)  # the base never trains on the heads' images
    assert not ids(base_splits.x_train) & ids(heads.x_val)  # nor on the validation split
    assert ids(base_splits.x_val) == ids(heads.x_val)
    assert np.bincount(base_splits.y_train).tolist() == [60] * 10  # stratified
    with pytest.raises(ValueError, match="leaves no training images"):
        bench.bench_features(spec, dataset, base="s003_vgg_blocks", base_epochs=1, base_images=10, max_train=n)
