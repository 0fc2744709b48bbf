from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest

import models
from data import dataset_spec
from models import PRESETS, ConvNetParams, ConvSpec, HeadParams, Stage, WRNParams, build, count_params, get_preset

# The preset each architecture is documented on.
HOME_DATASET = {name: "cifar10" for name in PRESETS} | {"s002_vgg_base": "cifar100", "s003_mnist_cnn": "mnist"}


def _build(name: str, dataset: str, **knobs):
    spec = dataset_spec(dataset)
    return build(get_preset(name).params(input_shape=spec.input_shape, num_classes=spec.num_classes, **knobs))


@pytest.mark.parametrize(
    "preset, dataset, total, trainable",
    [
        ("s000_model_1", "cifar10", 42_442, 42_442),
        ("s001_model_1", "cifar10", 181_162, 181_162),
        ("s001_model_2", "cifar10", 252_378, 252_378),
        ("s002_vgg_base", "cifar100", 8_739_492, 8_737_572),
    ],
)
def test_documented_parameter_counts(preset, dataset, total, trainable):
    assert count_params(_build(preset, dataset)) == (total, trainable)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_trains_one_step(name):
    spec = dataset_spec(HOME_DATASET[name])
    model = _build(name, spec.name)
    assert model.output_shape == (None, spec.num_classes)
    x = np.random.default_rng(0).random((2, *spec.input_shape), dtype=np.float32)
    y = np.array([0, 1])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    keras.backend.clear_session()


def test_depth_variants_are_one_builder_with_other_defaults():
    names = ("s000_model_2_1", "s000_model_2_2", "s000_model_2_3")
    assert [get_preset(n).knobs["depth"] for n in names] == [3, 4, 5]
    a = get_preset("s000_model_2_1").params(input_shape=(32, 32, 3), num_classes=10)
    b = get_preset("s000_model_2_3").params(input_shape=(32, 32, 3), num_classes=10, depth=3)
    assert a == b


def test_wrn_28_10_is_one_parameter_change():
    model = _build("s000_wrn_16_8", "cifar10", depth=28, width=10)
    total, _ = count_params(model)
    assert 36_000_000 < total < 37_000_000  # the paper's 36.5M
    keras.backend.clear_session()


def test_freeze_base_trains_only_the_head():
    model = _build("s002_vgg_base", "cifar100", freeze_base=True)
    total, trainable = count_params(model)
    assert total == 8_739_492
    assert trainable == 1_049_088 + 51_300  # dense 512 + dense 100


def test_layer_names_are_deterministic():
    a = [layer.name for layer in _build("s000_model_3_2", "cifar10").layers]
    b = [layer.name for layer in _build("s000_model_3_2", "cifar10").layers]
    assert a == b and "stage1_conv1" in a and "predictions" in a


def test_unknown_knob_names_the_known_ones():
    with pytest.raises(ValueError, match=r"preset 's000_model_1' has no knob depth; its knobs are \['activation'\]"):
        get_preset("s000_model_1").params(input_shape=(32, 32, 3), num_classes=10, depth=3)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ConvSpec(0), "filters must be positive but got 0"),
        (lambda: Stage((ConvSpec(8),), dropout=1.5), r"stage dropout must be in \[0, 1\) but got 1.5"),
        (lambda: HeadParams(activation="swish"), "activation must be one of"),
        (lambda: WRNParams(input_shape=(32, 32, 3), num_classes=10, depth=17), "WRN depth must be 6n\\+4"),
        (lambda: ConvNetParams(input_shape=(32, 32, 3), num_classes=1, stages=(Stage((ConvSpec(8),)),)),
         "num_classes must be at least 2"),
    ],
)
def test_params_validate_and_say_what_they_got(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_transfer_on_mnist_is_refused_clearly():
    with pytest.raises(ValueError, match=r"vgg19 needs 3-channel input of at least 32x32 but got \(28, 28, 1\)"):
        _build("s003_vgg19_transfer", "mnist")


def test_missing_weights_file_says_how_to_provide_it(tmp_path):
    with pytest.raises(models.WeightsUnavailableError, match="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        _build("s003_vgg19_transfer", "cifar10", weights=str(tmp_path / "nope.h5"))


def test_models_do_not_import_optuna():
    import ast
    from pathlib import Path

    for path in Path(models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("optuna", "search") for n in names), f"{path} imports {names}"


def test_models_cli_prints_the_documented_counts():
    out = subprocess.run([sys.executable, "-m", "dashboards.models_table", "--dataset", "cifar10"],
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "42,442" in rows["s000_model_1"] and "181,162" in rows["s001_model_1"] and "252,378" in rows["s001_model_2"]
    out100 = subprocess.run([sys.executable, "-m", "dashboards.models_table", "--dataset", "cifar100"],
                            capture_output=True, text=True, check=True).stdout
    assert "8,739,492" in next(line for line in out100.splitlines() if line.startswith("s002_vgg_base"))
    mnist = subprocess.run([sys.executable, "-m", "dashboards.models_table", "--dataset", "mnist"],
                           capture_output=True, text=True, check=True).stdout
    assert "not buildable" in next(line for line in mnist.splitlines() if line.startswith("s003_vgg19_transfer"))
