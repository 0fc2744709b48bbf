"""Study files: every shipped study validates; every bad input is rejected, naming the field,
before anything is written to a store."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from helpers.processes import REPO
from helpers.synthetic import easy_splits

from data._augment import AugmentParams
from search import StudySpecError, available_studies, load_spec, make_pruner, make_sampler, parse_spec
from search.spec import STUDIES_DIR, FeatureCacheSpec, profiles, study_json_schema, study_path
from search.spec._knobs import KNOBS, OPTIMIZERS
from search.spec._schema import AugmentSection, FeatureCacheSection
from search.spec._strategies import PRUNERS, SAMPLERS

GOOD = """
architecture: s000_model_1
dataset: cifar10
space:
  optimizer: {choices: [adam, sgd]}
  learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}
  momentum: {low: 0.5, high: 0.99, when: {optimizer: sgd}}
  batch_size: {choices: [32, 64]}
"""


def test_every_shipped_study_is_valid(monkeypatch):
    monkeypatch.chdir(REPO)  # builders are named relative to the repository
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


def test_a_few_aliases_are_still_yaml():
    text = GOOD + "warm_start:\n  - &first {optimizer: adam, learning_rate: 0.01, batch_size: 32}\n  - *first\n"
    spec = parse_spec(text, name="aliased")
    assert spec.warm_start[0] == spec.warm_start[1]


def test_overrides_and_profile():
    spec = load_spec("simple_cnn", dataset="cifar10", trials=6, profile="smoke")
    assert spec.trials == 6 and spec.max_epochs == 2 and spec.max_train == 2000
    assert spec.space_hash() != load_spec("simple_cnn").space_hash()  # a smoke run is another study setup
    assert load_spec("simple_cnn", trials=99).space_hash() == load_spec("simple_cnn").space_hash()
    folds = parse_spec(GOOD + "data: {folds: 5}\n", name="good")
    assert folds.folds == 5 and folds.space_hash() != parse_spec(GOOD, name="good").space_hash()


def test_quick_profile_puts_a_lighter_base_under_fc_head_unless_the_file_names_one():
    quick = load_spec("fc_head", profile="quick").feature_cache
    assert (quick.base, quick.base_epochs, quick.base_max_train, quick.search_max_train, quick.base_precision) == (
        "s003_vgg_blocks", 8, 20000, 5000, "auto")
    assert load_spec("fc_head").feature_cache.base_precision == "study"
    # The main job in about 10 minutes (issue 26): at most 60 trials, unless a budget is given
    assert load_spec("fc_head", profile="quick").trials == 60 and load_spec("fc_head").trials == 100
    assert load_spec("fc_head", profile="quick", trials=100).trials == 100
    assert load_spec("mnist_cnn", profile="quick").trials == 30  # a cap: a smaller budget is kept
    assert load_spec("fc_head").feature_cache.base is None  # without a profile: seed 002's own base
    text = (REPO / "search/studies/fc_head.yaml").read_text()
    named = text.replace("feature_cache: {base_epochs: 15", "feature_cache: {base: s000_model_3_1, base_epochs: 15")
    assert named != text
    assert parse_spec(named, name="fc_head", profile="quick").feature_cache.base == "s000_model_3_1"


FC_HEAD = (REPO / "search/studies/fc_head.yaml").read_text()
BAD_CASES = {
    "unknown architecture": (GOOD.replace("s000_model_1", "resnet9000"),
                             r"architecture: unknown architecture 'resnet9000'; known: s000_model_1, "),
    "a dataset name that is a path": (GOOD.replace("cifar10", "../imagenet"),
                                      r"dataset: '../imagenet' is not a dataset name .*write dataset: \{path: ../imagenet\}"),
    "low > high": (GOOD.replace("low: 1.0e-4, high: 1.0e-1", "low: 1.0e-1, high: 1.0e-4"),
                   r"space.learning_rate: low \(0.1\) is greater than high \(0.0001\); swap them"),
    "log with low <= 0": (GOOD.replace("low: 1.0e-4", "low: 0.0"),
                          r"space.learning_rate.low: a log scale needs low > 0 but got 0.0"),
    "empty choices": (GOOD.replace("[32, 64]", "[]"), r"space.batch_size.choices: must be a non-empty list"),
    "unknown sampler": (GOOD + "sampler: bayesian-magic\n",
                        r"sampler.name: unknown sampler 'bayesian-magic'; known: tpe, random, grid"),
    "unknown pruner": (GOOD + "pruner: {name: early}\n", r"pruner.name: unknown pruner 'early'; known: hyperband"),
    "unknown knob": (GOOD + "  learning_rat: {low: 1, high: 2}\n",
                     r"space.learning_rat: unknown knob 'learning_rat'; knobs: optimizer, learning_rate"),
    "knob the preset lacks": (GOOD + "  depth: {low: 2, high: 4}\n",
                              r"space.depth: architecture s000_model_1 has no knob 'depth'; "
                              r"its knobs: \['activation'\]"),
    "bad choice": (GOOD.replace("[adam, sgd]", "[adam, sgdd]"), r"space.optimizer.choices: 'sgdd' is not one of"),
    "when on a later knob": (GOOD.replace("when: {optimizer: sgd}", "when: {batch_size: 32}"),
                             r"space.momentum.when.batch_size: must name a knob declared earlier"),
    "typo at top level": (GOOD + "budgt: {trials: 3}\n",
                          r"<study>: unknown field\(s\) \['budgt'\]; allowed: \[.*'budget'"),
    "typo in a section": (GOOD + "budget: {trails: 3}\n",
                          r"budget: unknown field\(s\) \['trails'\]; allowed: \[.*'trials'"),
    "a billion laughs": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                         "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                         "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                         "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
                         "i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\nj: &j [*i, *i, *i, *i, *i, *i, *i, *i, *i]\n"
                         "k: &k [*j, *j, *j, *j, *j, *j, *j, *j, *j]\nl: &l [*k, *k, *k, *k, *k, *k, *k, *k, *k]\n"
                         "m: [*l, *l, *l, *l, *l, *l, *l, *l, *l]\n",  # 9^12 leaves: 108 aliases
                         r"<study>: not valid YAML: more than 100 aliases"),
    "python object tag": ("!!python/object/apply:os.system ['touch /tmp/pwned-by-yaml']\n",
                          r"<study>: YAML tag not allowed .*; study files are plain data"),
    "hyperband with two objectives": (GOOD + "objective: {second: params}\npruner: hyperband\n",
                                      r"pruner: pruning needs one objective; with objective.second set, use pruner: "
                                      r"median or none"),
    "one-objective sampler with two": (GOOD + "objective: {second: params}\npruner: none\nsampler: cmaes\n",
                                       r"sampler: cmaes handles one objective; use one of tpe, random"),
    "missing space": ("architecture: s000_model_1\ndataset: cifar10\n", r"space: missing; give the searched knobs"),
    "zero trials": (GOOD + "budget: {trials: 0}\n", r"budget.trials: must be a positive integer but got 0"),
    "bad trials override": (GOOD, r"budget.trials: must be a positive integer but got 0"),
    "grid over a continuous range": (GOOD + "sampler: grid\n", r"space.learning_rate: the grid sampler needs choices"),
    "rate out of range": (GOOD.replace("high: 0.99", "high: 1.5"), r"space.momentum.high: 1.5 must be below 1.0"),
    "fixed and searched": (GOOD + "fixed: {optimizer: adam}\n",
                           r"fixed.optimizer: is also in space; keep it in one place"),
    "coarse labels of cifar10": (GOOD + "label_mode: coarse\n",
                                 r"label_mode: 'coarse': 'coarse' applies only to cifar100, otherwise 'fine'"),
    "feature cache without a base": (GOOD + "feature_cache: true\n",
                                     r"feature_cache: needs a convnet preset with a freezable base \(freeze_base\)"),
    "one fold": (GOOD + "data: {folds: 1}\n", r"data.folds: Input should be greater than or equal to 2"),
    "folds and a held-out split": (GOOD + "data: {folds: 5, val_fraction: 0.2}\n",
                                   r"data.val_fraction: with folds: 5 each fold is validated on in turn and "
                                   r"val_fraction is not used: drop one of the two"),
    "folds on a feature cache": ((REPO / "search/studies/fc_head.yaml").read_text() + "data: {folds: 3}\n",
                                 r"data.folds: a feature-cache study trains its base once on one training split"),
    "fine_tune without a feature cache": (GOOD + "fine_tune: {top_k: 3}\n",
                                          r"fine_tune: fine-tuning starts from the heads a feature-cache study "
                                          r"searched .*; add feature_cache .*, or drop fine_tune"),
    "fine_tune of an unknown knob": (FC_HEAD + "fine_tune: {space: {dropout: {choices: [0.1]}}}\n",
                                     r"fine_tune.space.dropout: unknown fine-tuning knob; known: unfreeze_blocks, "
                                     r"learning_rate"),
    "fine_tune unfreezing more blocks than the base has": (
        FC_HEAD + "fine_tune: {space: {unfreeze_blocks: {low: 1, high: 5}}}\n",
        r"fine_tune.space.unfreeze_blocks: unfreeze_blocks goes up to 5 but the base has 4 block\(s\); choose at most 4"),
    "fine_tune at a rate of 0": (FC_HEAD + "fine_tune: {space: {learning_rate: {choices: [0.0, 1.0e-4]}}}\n",
                                 r"fine_tune.space.learning_rate: takes rates > 0"),
    "fine_tune with a second objective": (
        FC_HEAD.replace("pruner: hyperband", "pruner: none") + "objective: {second: params}\nfine_tune: {}\n",
        r"fine_tune: a two-objective study has no single best head to promote"),
    "fine_tune of a base of one's own without its blocks": (
        FC_HEAD + "feature_cache: {base: {builder: " + str(REPO / "models_dir/example_net.py") + ":build}}\n"
        "fine_tune: {}\n", r"fine_tune.blocks: your base .* has no blocks the service knows: list them in order"),
    "warm start names no layer": (GOOD + "warm_start:\n  - {optimizer: adam, dense_units: 64}\n",
                                  r"warm_start\[0\].dense_units: a warm start names each dense layer's width"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_study_is_rejected_naming_the_field(case):
    text, match = BAD_CASES[case]
    with pytest.raises(StudySpecError, match=match):
        parse_spec(text, name="bad", trials=0 if case == "bad trials override" else None)


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


# --- the declared schema, published --------------------------------------------------------------


def test_the_json_schema_is_published_and_checks_study_files_offline():
    schema = study_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    printed = subprocess.run([sys.executable, "-m", "search", "schema"], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == schema
    validator = jsonschema.Draft202012Validator(schema)
    for name in available_studies():
        assert not list(validator.iter_errors(yaml.safe_load(study_path(name).read_text()))), name
    typo = yaml.safe_load(study_path("fc_head").read_text().replace("early_stopping:", "early_stoping:"))
    assert ["'early_stoping' was unexpected" in e.message for e in validator.iter_errors(typo)] == [True]
    bad_option = yaml.safe_load(GOOD + "sampler: {name: tpe, n_ei_candidate: 10}\n")
    assert list(validator.iter_errors(bad_option))


def test_file_sections_declare_every_field_of_their_typed_config():
    for section, config in ((AugmentSection, AugmentParams), (FeatureCacheSection, FeatureCacheSpec)):
        declared = {name: f.default for name, f in section.model_fields.items()}
        assert declared == {f.name: f.default for f in dataclasses.fields(config)}, section.__name__


# --- space hashes: existing stores check them -----------------------------------------------------

# Recorded before the study file became a declared schema: (no profile, smoke, quick).
SHIPPED_HASHES = {
    "conv_blocks": ("e65c2fd6c0876e5f", "ecf27172d5ac0cee", "e65c2fd6c0876e5f"),
    # fc_head and fc_head_ft quick changed on purpose (issue 26, the main job): the quick profile's base
    # trains under base_precision auto (mixed_bfloat16 on a CPU with bfloat16 instructions); was b9a490d157a47cf6
    "fc_head": ("0b85b2576b29fadc", "09ae0bbef75bfb35", "767fd217adf8b4bf"),
    "mnist_cnn": ("a15de6fa5c1d7614", "6674607f323dc25f", "a15de6fa5c1d7614"),
    # simple_cnn and vgg_bn changed on purpose: lr_schedule and decay_rate searched, so the seeds' warm starts
    # carry their rmsprop(decay=1e-6) (tests/search/trial/test_recipe.py)
    "simple_cnn": ("9844a597cea238f9", "73fc14221aded853", "9844a597cea238f9"),
    "vgg16": ("b65a8ebda52ea33d", "7994b208fe8aff26", "b65a8ebda52ea33d"),
    "vgg_bn": ("ae6b668c08d5765c", "f59f24df7cfe3cd7", "ae6b668c08d5765c"),
    "wrn": ("1cb721ea3c1ea8c1", "da16dc9fd3fd1b50", "1cb721ea3c1ea8c1"),
    "my_images": None,  # added since: a builder study, its hash covers the builder file (see below)
    "fc_head_ft": ("5bccbe839d6bdc9d", "71fbd1ac6bb44676", "5d36aba3bdaf4eff"),  # added with fine_tune; quick was 6b492156f76b7588
}


def test_space_hashes_of_shipped_studies_are_unchanged(monkeypatch):
    monkeypatch.chdir(REPO)
    assert set(SHIPPED_HASHES) == set(available_studies())
    for name, hashes in SHIPPED_HASHES.items():
        if hashes is not None:
            assert tuple(load_spec(name, profile=p).space_hash() for p in (None, "smoke", "quick")) == hashes, name


def test_profiles_are_data():
    assert set(profiles()) == {"smoke", "quick"}
    smoke = load_spec("vgg_bn", profile="smoke")
    assert (smoke.max_train, smoke.max_val, smoke.max_epochs, smoke.profile) == (2000, 500, 2, "smoke")
    assert load_spec("vgg_bn", profile="quick").max_epochs == 60  # quick changes feature-cache studies only
    with pytest.raises(StudySpecError, match=r"profile: unknown profile 'fast'; known: smoke, quick"):
        load_spec("vgg_bn", profile="fast")


# --- samplers and pruners: options from Optuna's signatures ---------------------------------------


def test_sampler_options_come_from_the_optuna_signature():
    assert {"n_ei_candidates", "n_startup_trials", "seed"} <= set(SAMPLERS["tpe"].options())
    assert "gamma" not in SAMPLERS["tpe"].options()  # takes a callable: not data
    assert "search_space" not in SAMPLERS["grid"].options() and "max_resource" not in PRUNERS["hyperband"].options()
    spec = parse_spec(GOOD + "sampler: {name: tpe, n_ei_candidates: 10}\n", name="opts")
    assert spec.sampler_options == {"n_ei_candidates": 10}
    assert make_sampler(spec).__class__.__name__ == "TPESampler"


def test_unknown_option_is_rejected_naming_the_options_it_takes():
    with pytest.raises(StudySpecError, match=r"sampler: tpe takes no option\(s\) \['n_ei_candidate'\]; "
                                             r"it takes \[.*'n_ei_candidates'.*\]"):
        parse_spec(GOOD + "sampler: {name: tpe, n_ei_candidate: 10}\n", name="opts")
    with pytest.raises(StudySpecError, match=r"pruner: hyperband takes no option\(s\) \['max_resource'\]; "
                                             r"it takes \['bootstrap_count', 'min_resource', 'reduction_factor'\]"):
        parse_spec(GOOD + "pruner: {name: hyperband, max_resource: 9}\n", name="opts")


@pytest.mark.parametrize("extra, match", [
    ("pruner: {name: hyperband, reduction_factor: 1}\n",
     r"pruner.reduction_factor: hyperband refuses reduction_factor=1: .*; give another value, or leave it out "
     r"for the default 3"),
    ("pruner: {name: median, n_startup_trials: -1}\n",
     r"pruner.n_startup_trials: median refuses n_startup_trials=-1: .*cannot be negative.*; give another value"),
    ("pruner: {name: hyperband, min_resource: 50}\n",
     r"pruner.min_resource: .*above the study's budget.max_epochs \(20\).*leave it out for the default 1"),
    ("sampler: {name: tpe, n_startup_trials: ten}\n",
     r"sampler.n_startup_trials: Input should be a valid integer but got 'ten'; tpe's n_startup_trials takes int"),
])
def test_bad_option_value_is_rejected_at_its_path(extra, match):
    with pytest.raises(StudySpecError, match=match):
        parse_spec(GOOD + extra, name="opts")


def test_service_defaults_still_apply():
    spec = parse_spec(GOOD, name="defaults")
    assert (spec.sampler, spec.pruner, spec.sampler_options, spec.pruner_options) == ("tpe", "hyperband", {}, {})
    assert SAMPLERS["tpe"].defaults == {"multivariate": True, "group": True, "constant_liar": True}
    assert PRUNERS["hyperband"].defaults == {"min_resource": 1, "reduction_factor": 3}
    assert make_pruner(spec).__class__.__name__ == "HyperbandPruner"


def test_fine_tune_is_hashed_but_not_how_many_heads_it_promotes():
    fc_head = parse_spec(FC_HEAD, name="fc_head")
    tuned = parse_spec(FC_HEAD + "fine_tune: {top_k: 3, epochs: 2}\n", name="fc_head")
    assert tuned.space_hash() != fc_head.space_hash() and "fine_tune" not in fc_head.hashed_fields()
    assert parse_spec(FC_HEAD + "fine_tune: {top_k: 7, epochs: 2}\n", name="fc_head").space_hash() == tuned.space_hash()
    assert parse_spec(FC_HEAD + "fine_tune: {top_k: 3, epochs: 4}\n", name="fc_head").space_hash() != tuned.space_hash()
    assert [d.name for d in tuned.fine_tune.space] == ["fine_tune_unfreeze_blocks", "fine_tune_learning_rate"]
    own = FC_HEAD + ("feature_cache: {base: {builder: " + str(REPO / "models_dir/example_net.py") + ":build}}\n"
                     "fine_tune: {blocks: [conv_a, conv_b], space: {unfreeze_blocks: {choices: [2]}}}\n")
    assert parse_spec(own, name="fc_head").fine_tune.blocks == ("conv_a", "conv_b")


def test_evaluate_confirms_the_five_best_by_default_and_is_not_hashed():
    """bench-confirm measured the top 5 confirmed testing better than the search's best alone, so 5 is
    the default; top_k: 1 keeps the old behaviour. Neither changes the study's identity."""
    spec = parse_spec(GOOD, name="confirm")
    assert (spec.evaluate_top_k, spec.evaluate_seeds) == (5, 3)
    one = parse_spec(GOOD + "evaluate: {top_k: 1}\n", name="confirm")
    assert one.evaluate_top_k == 1 and one.space_hash() == spec.space_hash()
    with pytest.raises(StudySpecError, match=r"evaluate\.top_k"):
        parse_spec(GOOD + "evaluate: {top_k: 0}\n", name="confirm")


# --- the failure streak, the studies folder, the optimisers ----------------------------------------


def test_max_consecutive_failures():
    assert parse_spec(GOOD, name="streak").max_consecutive_failures == 5
    three = parse_spec(GOOD + "max_consecutive_failures: 3\n", name="streak")
    assert three.max_consecutive_failures == 3
    assert three.space_hash() == parse_spec(GOOD, name="streak").space_hash()  # like the budget: not hashed
    for value in ("0", "-2", "2.5", "true"):
        with pytest.raises(StudySpecError, match=r"max_consecutive_failures: must be an integer >= 1 but got .*; "
                                                 r"give how many failures in a row"):
            parse_spec(GOOD + f"max_consecutive_failures: {value}\n", name="streak")


def test_studies_folder_is_an_argument_not_the_environment(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text(GOOD)
    monkeypatch.setenv("STUDIES_DIR", str(tmp_path))  # no longer read
    assert "mine" not in available_studies() and available_studies(tmp_path) == ["mine"]
    assert study_path("mine") == STUDIES_DIR / "mine.yaml"
    assert load_spec("mine", studies_dir=tmp_path).name == "mine"
    with pytest.raises(StudySpecError, match=r"name: no study file .*mine.yaml; known studies: conv_blocks"):
        load_spec("mine")


def test_optimizers_are_listed_once():
    assert KNOBS["optimizer"].allowed == tuple(OPTIMIZERS)
    assert all(name in KNOBS["optimizer"].doc for name in OPTIMIZERS)


def test_the_base_precision_of_a_feature_cache_study(monkeypatch):
    """feature_cache.base_precision: the study's (default), one policy, or auto: mixed_bfloat16 on a CPU that
    computes bfloat16 natively and no GPU, else the study's. It is part of the base's cache key."""
    from search import runtime
    from search.trial._features import base_key, base_precision

    text = (REPO / "search/studies/fc_head.yaml").read_text().replace("dataset: cifar100", "dataset: cifar10")
    study = parse_spec(text, name="fc_head")
    auto = parse_spec(text.replace("base_batch_size: 128}", "base_batch_size: 128, base_precision: auto}"),
                      name="fc_head")
    fixed = parse_spec(text.replace("base_batch_size: 128}", "base_batch_size: 128, base_precision: mixed_float16}"),
                       name="fc_head")
    assert base_precision(study) == "float32" and base_precision(fixed) == "mixed_float16"
    for native, device, expected in ((True, "cpu", "mixed_bfloat16"), (False, "cpu", "float32"),
                                     (True, "gpu:1", "float32")):
        monkeypatch.setattr(runtime, "cpu_bfloat16", lambda native=native: native)
        monkeypatch.setattr(runtime, "device", lambda device=device: device)
        assert base_precision(auto) == expected, (native, device)
    splits = easy_splits(20, 10)
    monkeypatch.setattr(runtime, "cpu_bfloat16", lambda: False)
    without_bf16 = base_key(auto, splits)
    monkeypatch.setattr(runtime, "cpu_bfloat16", lambda: True)
    monkeypatch.setattr(runtime, "device", lambda: "cpu")
    assert base_key(auto, splits) == without_bf16  # every machine of the study takes the first builder's base
    assert base_key(auto, splits) != base_key(study, splits) == base_key(
        parse_spec(text.replace("base_batch_size: 128}", "base_batch_size: 128, base_precision: study}"),
                   name="fc_head"), splits)
    with pytest.raises(StudySpecError, match="base_precision"):
        parse_spec(text.replace("base_batch_size: 128}", "base_batch_size: 128, base_precision: float64}"),
                   name="fc_head")
