"""bench-peers' own logic: what counts by the budget, the table, goal lines and headlines from fixed runs,
the study file every method reads, and Keras Tuner's translation of fc_head's space."""

from __future__ import annotations

import optuna
import pytest

from benchmarks import current, peers
from benchmarks.peers import Event, Run
from search import load_spec
from search.spec import suggest

INFO = {"train": 5_000, "val": 5_000, "shape": [2048], "base": "s003_vgg_blocks", "base_val_accuracy": 0.61,
        "max_epochs": 20, "patience": 5}


def _service(seed: int) -> Run:
    return Run("fc_head", "service", seed, 600, (
        Event(100, "complete", 0.60 + seed / 100, 20), Event(200, "pruned", None, 1), Event(300, "complete", 0.70, 9),
        Event(400, "failed", None, 0),  # not a finished trial
        Event(650, "complete", 0.90, 20)))  # after the budget: never counted


def _optuna(seed: int) -> Run:
    return Run("fc_head", "optuna", seed, 600, (Event(500, "complete", 0.65, 20),))


def _section(lines: list[str]) -> current.Section:
    text = ("## bench-peers: this service, a plain Optuna script and Keras Tuner's Hyperband (2026-12-07 02:19 UTC)\n\n"
            "Machine: AMD EPYC, 2 cores, 24 GiB RAM, no GPU\n\n```\n" + "\n".join(lines) + "\n```\n")
    [section] = current.parse_sections(text)
    return section


def test_only_trials_finished_by_the_budget_count():
    run = _service(0)
    assert run.finished == 3 and run.per_minute == pytest.approx(0.3)  # two complete and a pruned in 10 minutes
    assert (run.best_at(99), run.best_at(100), run.best_at(600)) == (None, 0.60, 0.70)
    assert peers.mean_best([_service(0), _service(2)], 150) == pytest.approx(0.61)
    assert peers.mean_best([_service(0), _optuna(0)], 150) is None  # until every seed has a complete trial
    record = peers.curve_record([_service(0), _service(2), _optuna(0)], 600, points=4)
    assert record["times"] == [0, 150, 300, 450, 600]
    assert record["curves"]["service"] == pytest.approx([None, 0.61, 0.70, 0.70, 0.70])
    assert record["curves"]["optuna"] == [None, None, None, None, 0.65]


def test_fc_heads_table_goal_and_headline_from_fixed_runs():
    runs = [run for seed in range(3) for run in (_service(seed), _optuna(seed))]
    args = peers.arguments().parse_args(["--seeds", "3"])
    lines = peers.case_lines("fc_head", runs, INFO, args, peers.Path("bench-out/peers/fc_head.html"))
    assert "    this service                0.6100      0.7000      0.7000      0.7000        0.30" in lines
    assert "    plain Optuna                     —           —           —      0.6500        0.10" in lines
    section = _section(lines)
    fc_head, simple_cnn, _ = peers.HEADLINES
    assert current.figure(fc_head, section) == ("fc_head quick, 600 s a run: 3.00x plain Optuna's trials a minute "
                                                "(0.30 vs 0.10), best validation accuracy 0.7000 vs 0.6500 (+0.0500); "
                                                "3 seeds")
    assert current.goal(fc_head, section) == ("at least 2x plain Optuna's trials a minute at equal or better best "
                                              "validation accuracy, mean of 3 seeds: met")
    assert current.matching(simple_cnn, [section]) == []
    two_seeds = peers.case_lines("fc_head", runs[:4], INFO, args, peers.Path("p.html"))
    assert two_seeds[-1].endswith("mean of 3 seeds: not met)")  # the goal asks for 3 seeds


def test_simple_cnns_goal_against_keras_tuner():
    def run(method: str, seed: int, value: float | None) -> Run:
        return Run("simple_cnn", method, seed, 3600, (Event(3000, "complete" if value else "failed", value, 15),))

    runs = [run("service", 0, 0.70), run("keras-tuner", 0, 0.66), run("service", 1, 0.72), run("keras-tuner", 1, 0.70)]
    line = peers.verdict("simple_cnn", runs, 3600)
    section = _section([line])
    assert current.figure(peers.HEADLINES[1], section) == (
        "simple_cnn, full CIFAR-10, 3600 s a run: best validation accuracy 0.7100 vs Keras Tuner's Hyperband's "
        "0.6800 (+0.0300); 2 seeds")
    assert current.goal(peers.HEADLINES[1], section).endswith(": met")
    runs[-1] = run("keras-tuner", 1, None)  # no complete trial in a seed: no figure rather than a biased mean
    assert peers.verdict("simple_cnn", runs, 3600) == ("simple_cnn: a method had no complete trial in some seed; "
                                                       "no comparison")
    assert peers.verdict("simple_cnn", runs[::2], 3600) is None  # Keras Tuner did not run


def test_fidelity_by_data_is_its_own_study_and_its_own_lines():
    def run(method: str, seed: int, value: float, trials: int) -> Run:
        return Run("simple_cnn", method, seed, 1200, tuple(Event(100 + i, "pruned", None, 1) for i in range(trials - 1))
                   + (Event(1100, "complete", value, 15),))

    runs = [run("service", s, 0.60 + s / 100, 4) for s in range(2)] + [
        run("service-data", s, 0.64 + s / 100, 10) for s in range(2)] + [run("keras-tuner", s, 0.62, 3) for s in range(2)]
    args = peers.arguments().parse_args(["--seeds", "2", "--methods", "service", "service-data", "keras-tuner"])
    lines = peers.case_lines("simple_cnn", runs, INFO, args, peers.Path("p.html"))
    assert lines[-3].startswith("simple_cnn: this service's best validation accuracy 0.6050 against Keras Tuner's "
                                "Hyperband's 0.6200 (-0.0150) after 1200 s, mean of 2 seeds")
    assert lines[-2].startswith("simple_cnn (fidelity by data): this service's best validation accuracy 0.6450 "
                                "against Keras Tuner's Hyperband's 0.6200 (+0.0250)") and lines[-2].endswith("met)")
    assert lines[-1] == ("simple_cnn: fidelity by data 0.6450 against epochs only 0.6050 (+0.0400) best validation "
                         "accuracy after 1200 s, 0.50 against 0.20 trials/min, mean of 2 seeds")
    assert any(line.startswith("    this service, data fid.") for line in lines)
    # The headline stays the service's own line (epochs only), as before; fidelity by data has its own.
    assert "0.6050 vs Keras Tuner's Hyperband's 0.6200" in current.figure(peers.HEADLINES[1], _section(lines))
    assert current.figure(peers.HEADLINES[2], _section(lines)) == (
        "simple_cnn, full CIFAR-10, 1200 s a run: fidelity by data 0.6450 vs epochs only 0.6050 (+0.0400) best "
        "validation accuracy, 0.50 vs 0.20 trials/min; 2 seed(s)")
    assert peers.arguments().parse_args([]).methods == ["service", "optuna", "keras-tuner"]


def test_every_method_reads_the_shipped_study_seeded_unbounded_and_without_warm_start(tmp_path):
    args = peers.arguments().parse_args(["--max-train", "1000", "--max-val", "500", "--base-epochs", "1"])
    name = peers.write_study(tmp_path, "fc_head", 4, args)
    spec = load_spec(name, studies_dir=tmp_path, **peers.OVERRIDES)
    shipped = load_spec("fc_head", profile="quick", dataset="cifar10")
    assert spec.space == shipped.space and spec.max_epochs == shipped.max_epochs == 20
    assert (spec.sampler, spec.sampler_options, spec.trials, spec.warm_start) == ("tpe", {"seed": 4},
                                                                                  peers.UNBOUNDED_TRIALS, ())
    assert (spec.max_train, spec.max_val, spec.feature_cache.base_epochs) == (1000, 500, 1)
    data = load_spec(peers.write_study(tmp_path, "simple_cnn", 4, args, "service-data"), studies_dir=tmp_path,
                     **peers.OVERRIDES)
    epochs = load_spec(peers.write_study(tmp_path, "simple_cnn", 4, args), studies_dir=tmp_path, **peers.OVERRIDES)
    assert data.name == "peers_simple_cnn_s4_data" and data.space == epochs.space
    assert (data.fidelity, epochs.fidelity) == ("data", "epochs") and data.data_fractions[:5] == pytest.approx(
        (1 / 9, 1 / 9, 1 / 3, 1 / 3, 1))
    warm = peers.write_study(tmp_path, "fc_head", 0, peers.arguments().parse_args(["--warm-start"]))
    assert load_spec(warm, studies_dir=tmp_path).warm_start == shipped.warm_start != ()


def test_keras_tuners_space_is_fc_heads():
    import keras_tuner as kt  # a dev dependency: missing, the test fails

    from benchmarks.peer_methods import kt_values

    spec = load_spec("fc_head", profile="quick", dataset="cifar10")
    study = optuna.create_study()
    study.enqueue_trial({"optimizer": "sgd", "dense_layers": 3})  # every conditional knob active
    trial = study.ask()
    suggest(trial, spec)  # the service's own sampling of the space
    expected = trial.distributions
    hp = kt.HyperParameters()
    kt_values(hp, spec)
    declared = {h.name: h for h in hp.space}
    assert set(declared) == set(expected)
    for name, dist in expected.items():
        h = declared[name]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            assert tuple(h.values) == dist.choices, name
        else:
            assert (h.min_value, h.max_value, h.sampling == "log") == (dist.low, dist.high, dist.log), name
            integer = isinstance(dist, optuna.distributions.IntDistribution)
            assert isinstance(h, kt.engine.hyperparameters.Int) == integer, name
    parents = {name: [(c.name, sorted(c.values)) for c in h.conditions] for name, h in declared.items() if h.conditions}
    assert parents == {"momentum": [("optimizer", ["rmsprop", "sgd"])], "dense_units_0": [("dense_layers", [1, 2, 3])],
                       "dense_units_1": [("dense_layers", [2, 3])], "dense_units_2": [("dense_layers", [3])]}
    hp.values.update(optimizer="adam", dense_layers=2, dense_units_1=256)  # as Keras Tuner's oracle samples them
    values = kt_values(hp, spec)
    assert "momentum" not in values and "dense_units_2" not in values and values["dense_units_1"] == 256
    assert set(values) == set(expected) - {"momentum", "dense_units_2"}
