"""TODO"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import jsonschema
import optuna
import pytest
import yaml
from helpers.builders import NET, builder_file, study
from helpers.processes import REPO, run_cli
from helpers.synthetic import easy_splits
from optuna.trial import TrialState

from models import BuilderChangedError, BuilderParams, build, load_builder
from search import (
    StudyMismatchError,
    StudySpecError,
    check_compatible,
    create_study,
    load_spec,
    parse_spec,
    trial_config,
)
from search.spec import study_json_schema
from search.spec._space import check_builders
from search.trial._objective import Objective
from search.worker._liveness import Background, Liveness
from search.worker._loop import run_loop
from search.worker._signals import StopFlag
from storage import attrs


def test_knobs_come_from_the_signature_typed_by_their_defaults(tmp_path):
    ref = builder_file(tmp_path)
    builder = load_builder(ref)
    assert builder.knobs == {"filters": 8, "dense_units": 16, "dropout": 0.1, "activation": "relu",
                             "batch_norm": False, "widths": (8,)}
    assert builder.kinds == {"filters": "int", "dense_units": "int", "dropout": "float", "activation": "str",
                             "batch_norm": "bool"}  # a tuple default: a knob no study can search
    space = ("  filters: {low: 4, high: 16, step: 4}\n  dense_units: {choices: [8, 16]}\n"
             "  dropout: {low: 0, high: 0.5}\n  activation: {choices: [relu, tanh]}\n"
             "  batch_norm: {choices: [true, false]}\n")
    spec = parse_spec(study(ref, space, "fixed: {optimizer: adam}\nwarm_start:\n  - {filters: 8, dense_units: 8}\n"),
                      name="own")
    assert spec.architecture == ref and spec.warm_start == ({"filters": 8, "dense_units": 8},)
    assert spec.builder_files == {ref: hashlib.sha256((tmp_path / "net.py").read_bytes()).hexdigest()}
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    from search import suggest

    values = suggest(trial, spec)
    assert set(values) == {"filters", "dense_units", "dropout", "activation", "batch_norm", "learning_rate"}
    assert isinstance(values["filters"], int) and values["filters"] in (4, 8, 12, 16)
    cfg = trial_config(spec, values, input_shape=(12, 12, 1), num_classes=3)
    assert cfg.model == BuilderParams(ref, spec.builder_files[ref], (12, 12, 1), 3,
                                      {k: v for k, v in values.items() if k != "learning_rate"})
    assert cfg.train.optimizer == "adam" and cfg.train.learning_rate == values["learning_rate"]

def test_a_path_is_relative_to_the_working_directory_and_a_module_path_is_imported(tmp_path, monkeypatch):
    builder_file(Path.cwd() / "models_dir")  # conftest runs each test in a working directory of its own
    assert parse_spec(study("models_dir/net.py:build"), name="own").architecture == "models_dir/net.py:build"
    builder_file(tmp_path / "own_pkg", name="nets.py")
    (tmp_path / "own_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = parse_spec(study("own_pkg.nets:build"), name="own")
    assert spec.builder_files["own_pkg.nets:build"] == hashlib.sha256(NET.encode()).hexdigest()

def test_a_builder_study_is_valid_under_the_published_json_schema(tmp_path):
    validator = jsonschema.Draft202012Validator(study_json_schema())
    assert not list(validator.iter_errors(yaml.safe_load(study(builder_file(tmp_path)))))
    assert not list(validator.iter_errors(yaml.safe_load((REPO / "search/studies/my_images.yaml").read_text())))

BAD_KNOBS = {
    "unknown knob": ("  depth: {low: 1, high: 3}\n", "",
                     r"space.depth: builder .*net.py:build has no knob 'depth'; its knobs: \['activation', "
                     r"'batch_norm', 'dense_units', 'dropout', 'filters', 'widths'\]; training knobs: optimizer"),
    "unknown fixed knob": ("  filters: {choices: [4]}\n", "fixed: {depth: 3}\n",
                           r"fixed: unknown field\(s\) \['depth'\]; allowed: \[.*'dense_units', .*'filters'"),
    "int knob with a float range": ("  filters: {low: 4, high: 8.5}\n", "", r"space.filters: filters takes integers"),
    "str knob with a range": ("  activation: {low: 1, high: 2}\n", "",
                              r"space.activation: activation is a str knob; give choices"),
    "bool knob given text": ("  batch_norm: {choices: [yes_please]}\n", "",
                             r"space.batch_norm.choices: 'yes_please' is not true or false \(knob 'batch_norm' of "),
    "fixed value of the wrong type": ("  filters: {choices: [4]}\n", "fixed: {dense_units: 'wide'}\n",
                                      r"fixed.dense_units: 'wide' is not an integer \(knob 'dense_units' of "
                                      r".*net.py:build defaults to 16\)"),
    "a knob with a tuple default": ("  widths: {choices: [1, 2]}\n", "",
                                    r"space.widths: knob 'widths' of .* has a default of type tuple \(\(8,\)\); "
                                    r"only int, float, bool and str knobs"),
    "warm start of an unknown knob": ("  filters: {choices: [4]}\n", "warm_start:\n  - {depth: 3}\n",
                                      r"warm_start\[0\].depth: unknown knob 'depth'; knobs: \["),
}

@pytest.mark.parametrize("case", sorted(BAD_KNOBS))
def test_knobs_are_checked_against_the_signature(tmp_path, case):
    space, extra, match = BAD_KNOBS[case]
    with pytest.raises(StudySpecError, match=match):
        parse_spec(study(builder_file(tmp_path), space, extra), name="own")

UNLOADABLE = {  # {dir}: this test's folder
    "missing file": (None, "{dir}/nowhere.py:build", r"builder file .*nowhere.py not found \(looked for .*; a relative "
                                                    r"path is relative to the working directory"),
    "syntax error": ("def build(input_shape, num_classes, *, filters=8)\n    pass\n", "{dir}/net.py:build",
                     r"builder file .*net.py has a syntax error at line 1: .*; fix the file"),
    "import error": ("import not_a_module_anywhere\n", "{dir}/net.py:build",
                     r"importing builder file .*net.py failed: ModuleNotFoundError: No module named "
                     r"'not_a_module_anywhere'; fix the file"),
    "missing function": ("def make(input_shape, num_classes):\n    pass\n", "{dir}/net.py:build",
                         r"builder .*net.py:build: .*net.py has no function 'build' \(it defines: make\)"),
    "knob without a default": ("def build(input_shape, num_classes, *, filters):\n    pass\n", "{dir}/net.py:build",
                               r"knob\(s\) filters have no default; give each one"),
    "knob before the star": ("def build(input_shape, num_classes, filters=8):\n    pass\n", "{dir}/net.py:build",
                             r"parameter 'filters' comes before '\*'; make every knob keyword-only"),
    "no shape and classes": ("def build(*, filters=8):\n    pass\n", "{dir}/net.py:build",
                             r"takes \[\] positionally; it must take the images' shape and the class count first"),
    "a training knob's name": ("def build(input_shape, num_classes, *, learning_rate=0.1):\n    pass\n",
                               "{dir}/net.py:build",
                               r"knob\(s\) \['learning_rate'\] of .*net.py:build are training knobs"),
    "not a reference": (None, "{dir}/net.py", r'give "path/to/file.py:function" .* or "package.module:function"'),
    "unknown module": (None, "no_such_pkg_anywhere.nets:build", r"no importable module 'no_such_pkg_anywhere.nets'"),
}

@pytest.mark.parametrize("case", sorted(UNLOADABLE))
def test_a_builder_that_cannot_be_loaded_is_a_spec_error_naming_the_file_and_the_fix(tmp_path, case):
    body, ref, match = UNLOADABLE[case]
    if body is not None:
        (tmp_path / "net.py").write_text(body)
    with pytest.raises(StudySpecError, match=r"^architecture.builder: .*" + match):
        parse_spec(study(ref.format(dir=tmp_path)), name="own")

BROKEN = {
    "not a model": ("    return layers.Dense(num_classes)\n", r"returned Dense, not a keras.Model; return keras.Model"),
    "wrong output shape": ("    return keras.Model(inputs, layers.Dense(num_classes + 1, activation='softmax')(x))\n",
                           r"whose output is \(None, 4\), not \(None, 3\) for 3 classes; end it with "
                           r"layers.Dense\(num_classes, activation='softmax'\)"),
    "logits, not probabilities": ("    return keras.Model(inputs, layers.Dense(num_classes)(x))\n",
                                  r"outputs are not probabilities .*; the study's loss takes a softmax"),
    "ignores input_shape": ("    inputs = keras.Input((8, 8, 1))\n    x = layers.Flatten()(inputs)\n"
                            "    return keras.Model(inputs, layers.Dense(num_classes, activation='softmax')(x))\n",
                            r"returned a model with input \(None, 8, 8, 1\), not \(None, 12, 12, 1\); start it with "
                            r"keras.Input\(input_shape\)"),
    "raises with its defaults": ("    raise RuntimeError('no GPU here')\n",
                                 r"\(knobs \{'filters': 8\}, input_shape \(12, 12, 1\)\) raised RuntimeError: no GPU "
                                 r"here; fix the builder or these defaults"),
    "does not compile": ("    def broken(weights):\n        raise ValueError('regulariser broke')\n"
                         "    out = layers.Dense(num_classes, activation='softmax', kernel_regularizer=broken)(x)\n"
                         "    return keras.Model(inputs, out)\n",
                         r"the model does not compile and evaluate with the study's loss "
                         r"sparse_categorical_crossentropy \(ValueError: regulariser broke\)"),
}

BROKEN_HEAD = ("import keras\nfrom keras import layers\n\n\ndef build(input_shape, num_classes, *, filters=8):\n"
               "    inputs = keras.Input(input_shape)\n    x = layers.Flatten()(inputs)\n")

@pytest.mark.parametrize("case", sorted(BROKEN))
def test_create_refuses_a_model_that_breaks_the_contract_naming_the_builder(tmp_path, case):
    tail, match = BROKEN[case]
    ref = builder_file(tmp_path, BROKEN_HEAD + tail)
    spec = parse_spec(study(ref), name="own")  # the signature is fine: only building tells
    with pytest.raises(StudySpecError, match=r"^architecture.builder: .*net.py:build.*" + match):
        check_builders(spec, input_shape=(12, 12, 1), num_classes=3)

def test_the_shipped_example_study_is_valid_and_its_builder_builds_on_mnist(monkeypatch):
    monkeypatch.chdir(REPO)  # the shipped study names the builder relative to the repository root
    spec = load_spec("my_images")
    assert set(load_builder(spec.architecture).knobs) == {"filters", "dense_units", "dropout", "activation"}
    check_builders(spec, input_shape=(28, 28, 1), num_classes=10)

def test_create_with_a_broken_builder_writes_nothing_to_the_store(tmp_path, shared_datasets, shared_cache):
    studies = tmp_path / "studies"
    studies.mkdir()
    tail, _ = BROKEN["wrong output shape"]
    ref = builder_file(tmp_path / "models_dir", BROKEN_HEAD + tail)
    (studies / "own.yaml").write_text(study(ref).replace("cifar10", "mnist"))
    journal = tmp_path / "s.journal"
    env = {"DATA_DIR": str(shared_datasets), "DATA_CACHE": str(shared_cache), "STUDIES_DIR": str(studies)}
    run = run_cli("create", "own", "--storage", f"journal://{journal}", env=env)
    assert run.returncode == 2, run.stderr[-3000:]
    assert f"error: architecture.builder: builder {ref} returned a model whose output is (None, 11)" in run.stderr
    assert "Traceback" not in run.stderr
    assert not journal.exists()

def _loop_study(ref: str, warm: str):
    spec = parse_spec(study(ref, "  filters: {choices: [8, 64]}\n", f"warm_start:\n{warm}"), name="own")
    study_ = create_study(spec, optuna.storages.InMemoryStorage())
    objective = Objective(spec, easy_splits(100, 20))
    return spec, study_, objective

def test_a_trial_the_builder_cannot_build_fails_with_reason_build_and_the_next_completes(tmp_path):
    ref = builder_file(tmp_path)
    warm = "  - {filters: 64, learning_rate: 0.005}\n  - {filters: 8, learning_rate: 0.005}\n"
    spec, study_, objective = _loop_study(ref, warm)
    assert run_loop(study_, spec, objective, StopFlag(), Background(study_, Liveness()), "w0") is None
    failed, done = study_.trials
    assert failed.state == TrialState.FAIL and failed.user_attrs[attrs.FAIL_REASON] == "build"
    assert (f"the architecture cannot be built: builder {ref} raised ValueError: filters=64 is too wide for this test"
            in failed.user_attrs[attrs.FAIL_MESSAGE])
    assert done.state == TrialState.COMPLETE and done.params["filters"] == 8 and 0 <= done.value <= 1

def test_an_import_error_inside_the_builder_for_some_knobs_fails_that_trial_as_build(tmp_path):
    """Issue (faults): it was fatal and uncapped: every worker that popped the retry died, and under
    compose's restart policy the trials table grew a FAIL and a WAITING row per restart. An import
    that fails only for some knob values is that configuration's failure, capped by the streak."""
    ref = builder_file(tmp_path, NET.replace('        raise ValueError(f"filters={filters} is too wide for this test")',
                                             "        import a_module_this_machine_lacks  # noqa: F401"))
    warm = "  - {filters: 64, learning_rate: 0.005}\n  - {filters: 8, learning_rate: 0.005}\n"
    spec, study_, objective = _loop_study(ref, warm)
    assert run_loop(study_, spec, objective, StopFlag(), Background(study_, Liveness()), "w0") is None
    failed, done = study_.trials
    assert failed.state == TrialState.FAIL and failed.user_attrs[attrs.FAIL_REASON] == "build"
    assert "raised ModuleNotFoundError: No module named 'a_module_this_machine_lacks'" in failed.user_attrs[
        attrs.FAIL_MESSAGE]
    assert done.state == TrialState.COMPLETE  # the worker went on; nothing was queued again

def test_an_edited_builder_file_is_refused_naming_the_file(tmp_path):
    ref = builder_file(tmp_path)
    spec = parse_spec(study(ref), name="own")
    created = create_study(spec, optuna.storages.InMemoryStorage())
    params = trial_config(spec, {}, input_shape=(12, 12, 1), num_classes=3).model
    (tmp_path / "net.py").write_text(NET.replace("filters > 32", "filters > 16"))
    edited = parse_spec(study(ref), name="own")
    assert edited.space_hash() != spec.space_hash()
    quoted = re.escape(json.dumps(ref))
    refused = (rf"builder_files: study has \{{{quoted}: \"sha256:[0-9a-f]{{16}}\"\}}, "
               rf"this file has \{{{quoted}: \"sha256:")
    with pytest.raises(StudyMismatchError, match=refused):
        check_compatible(created, edited)
    # This process goes on building the version it validated; one that never saw it refuses the new file.
    assert build(params).output_shape == (None, 3)
    stale = BuilderParams(ref, "0" * 64, (12, 12, 1), 3)
    with pytest.raises(BuilderChangedError, match=r"builder file .*net.py changed after the study was validated"):
        build(stale)
    assert issubclass(BuilderChangedError, ImportError)  # fatal in a worker (search.errors.FATAL)

FEATURE_BASE = """
architecture: s000_model_3_1
dataset: cifar10
fixed: {{freeze_base: true}}
space:
  dense_units: {{choices: [16]}}
  learning_rate: {{low: 1.0e-3, high: 1.0e-2, log: true}}
sampler: {{name: random, seed: 0}}
pruner: none
budget: {{trials: 1, max_epochs: 1}}
feature_cache: {{base: {{builder: "{ref}"}}, base_epochs: 1}}
"""

def test_a_builder_with_a_features_layer_serves_as_the_feature_cache_base(tmp_path):
    from search.trial._features import base_key, trial_builder

    ref = builder_file(tmp_path)
    spec = parse_spec(FEATURE_BASE.format(ref=ref), name="own_base")
    assert spec.feature_cache.base == ref and ref in spec.builder_files
    check_builders(spec, input_shape=(32, 32, 3), num_classes=10)
    splits = easy_splits(200, 50)
    features, make_model = trial_builder(spec, splits)
    assert features.x_train.shape == (200, 15 * 15 * 8)  # conv 3x3 valid (30x30x8), pooled: Flatten 'features'
    assert base_key(spec, splits).startswith("user_net_build-cifar10-")
    study_ = optuna.create_study(direction="maximize")
    study_.optimize(Objective(spec, features, make_model=make_model, image_shape=splits.input_shape), n_trials=1)
    assert study_.trials[0].state == TrialState.COMPLETE
    (tmp_path / "net.py").write_text(NET + "\n# edited\n")
    assert base_key(parse_spec(FEATURE_BASE.format(ref=ref), name="own_base"), splits) != base_key(spec, splits)

def test_a_base_without_a_features_layer_is_refused_at_create(tmp_path):
    ref = builder_file(tmp_path, NET.replace('layers.Flatten(name="features")', "layers.Flatten()"))
    spec = parse_spec(FEATURE_BASE.format(ref=ref), name="own_base")
    with pytest.raises(StudySpecError, match=r"^feature_cache.base.builder: .*as feature_cache.base the model needs a "
                                             r"layer named 'features'"):
        check_builders(spec, input_shape=(32, 32, 3), num_classes=10)
