"""Study files: every shipped study validates; every bad input is rejected, naming the field,
before anything is written to a store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from search import StudySpecError, available_studies, load_spec, parse_spec

GOOD = """
architecture: s000_model_1
dataset: cifar10
space:
  optimizer: {choices: [adam, sgd]}
  learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}
  momentum: {low: 0.5, high: 0.99, when: {optimizer: sgd}}
  batch_size: {choices: [32, 64]}
"""


def test_every_shipped_study_is_valid():
    names = available_studies()
    assert {"fc_head", "simple_cnn", "conv_blocks", "vgg_bn", "vgg16", "wrn", "mnist_cnn"} <= set(names)
    for name in names:
        spec = load_spec(name)
        assert spec.name == name and spec.space


def test_documented_warm_starts_are_kept():
    fc_head = load_spec("fc_head")
    assert fc_head.warm_start[0]["optimizer"] == "adam" and fc_head.warm_start[0]["dense_units_0"] == 512
    assert fc_head.warm_start[0]["activation"] == "sigmoid"
    vgg = load_spec("vgg_bn")
    assert {(w["optimizer"], w["learning_rate"], w["batch_size"]) for w in vgg.warm_start} == {
        ("rmsprop", 0.001, 128), ("sgd", 0.01, 64)}


def test_overrides_and_profile():
    spec = load_spec("simple_cnn", dataset="cifar10", trials=6, profile="smoke")
    assert spec.trials == 6 and spec.max_epochs == 2 and spec.max_train == 2000
    assert spec.space_hash() != load_spec("simple_cnn").space_hash()  # a smoke run is another study setup
    assert load_spec("simple_cnn", trials=99).space_hash() == load_spec("simple_cnn").space_hash()


def test_quick_profile_puts_a_lighter_base_under_fc_head_unless_the_file_names_one():
    quick = load_spec("fc_head", profile="quick").feature_cache
    assert (quick.base, quick.base_epochs, quick.base_max_train, quick.search_max_train) == (
        "s003_vgg_blocks", 8, 20000, 5000)
    assert load_spec("fc_head").feature_cache.base is None  # without a profile: seed 002's own base
    text = (Path(__file__).resolve().parent.parent / "search/studies/fc_head.yaml").read_text()
    named = text.replace("feature_cache: {base_epochs: 15", "feature_cache: {base: s000_model_3_1, base_epochs: 15")
    assert named != text
    assert parse_spec(named, name="fc_head", profile="quick").feature_cache.base == "s000_model_3_1"


BAD_CASES = {
    "unknown architecture": (GOOD.replace("s000_model_1", "resnet9000"), r"architecture: unknown architecture 'resnet9000'"),
    "unknown dataset": (GOOD.replace("cifar10", "imagenet"), r"dataset: unknown dataset 'imagenet'"),
    "low > high": (GOOD.replace("low: 1.0e-4, high: 1.0e-1", "low: 1.0e-1, high: 1.0e-4"),
                   r"space.learning_rate: low \(0.1\) is greater than high \(0.0001\); swap them"),
    "log with low <= 0": (GOOD.replace("low: 1.0e-4", "low: 0.0"), r"space.learning_rate.low: a log scale needs low > 0"),
    "empty choices": (GOOD.replace("[32, 64]", "[]"), r"space.batch_size.choices: must be a non-empty list"),
    "unknown sampler": (GOOD + "sampler: bayesian-magic\n", r"sampler.name: unknown sampler 'bayesian-magic'"),
    "unknown pruner": (GOOD + "pruner: {name: early}\n", r"pruner.name: unknown pruner 'early'"),
    "unknown knob": (GOOD + "  learning_rat: {low: 1, high: 2}\n", r"space.learning_rat: unknown knob"),
    "knob the preset lacks": (GOOD + "  depth: {low: 2, high: 4}\n", r"space.depth: architecture s000_model_1 has no knob 'depth'"),
    "bad choice": (GOOD.replace("[adam, sgd]", "[adam, sgdd]"), r"space.optimizer.choices: 'sgdd' is not one of"),
    "when on a later knob": (GOOD.replace("when: {optimizer: sgd}", "when: {batch_size: 32}"),
                             r"space.momentum.when.batch_size: must name a knob declared earlier"),
    "typo at top level": (GOOD + "budgt: {trials: 3}\n", r"unknown field\(s\) \['budgt'\]"),
    "python object tag": ("!!python/object/apply:os.system ['touch /tmp/pwned-by-yaml']\n", r"YAML tag not allowed"),
    "pruning with two objectives": (GOOD + "objective: {second: params}\n", r"pruner: pruning needs one objective"),
    "grid over a continuous range": (GOOD + "sampler: grid\n", r"space.learning_rate: the grid sampler needs choices"),
    "rate out of range": (GOOD.replace("high: 0.99", "high: 1.5"), r"space.momentum.high: 1.5 must be below 1.0"),
    "warm start names no layer": (GOOD + "warm_start:\n  - {optimizer: adam, dense_units: 64}\n",
                                  r"warm_start\[0\].dense_units: a warm start names each dense layer's width"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_study_is_rejected_naming_the_field(case):
    text, match = BAD_CASES[case]
    with pytest.raises(StudySpecError, match=match):
        parse_spec(text, name="bad")


@pytest.mark.parametrize("name", ["../etc/passwd", "a" * 600, "Upper", "", "x/y", ".hidden"])
def test_bad_names_are_rejected(name):
    with pytest.raises(StudySpecError, match="not a valid study name"):
        load_spec(name)


def _run_create(tmp_path: Path, text: str, name: str = "bad") -> subprocess.CompletedProcess:
    studies = tmp_path / "studies"
    studies.mkdir(exist_ok=True)
    (studies / f"{name}.yaml").write_text(text)
    journal = tmp_path / "store.journal"
    env = {**__import__("os").environ, "STUDIES_DIR": str(studies)}
    return subprocess.run([sys.executable, "-m", "search", "create", name, "--storage", f"journal://{journal}"],
                          capture_output=True, text=True, env=env, timeout=120)


def test_bad_study_file_writes_nothing_and_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    result = _run_create(tmp_path, f"!!python/object/apply:os.system ['touch {marker}']\n")
    assert result.returncode == 2
    assert "YAML tag not allowed" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "store.journal").exists()
    result = _run_create(tmp_path, BAD_CASES["low > high"][0])
    assert result.returncode == 2 and "space.learning_rate: low (0.1) is greater than high" in result.stderr
    assert not (tmp_path / "store.journal").exists()


def test_good_study_file_creates_the_study_once(tmp_path):
    first = _run_create(tmp_path, GOOD, name="good")
    second = _run_create(tmp_path, GOOD, name="good")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    import optuna

    from storage import open_storage

    storage = open_storage(f"journal://{tmp_path / 'store.journal'}")
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["good"]
