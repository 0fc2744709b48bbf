"""The Python API (search/api.py) without training: what a notebook hands it is checked before
anything reaches the store, arrays and a builder function become files the workers can load, and the
study it makes is an ordinary study file."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers.notebook import notebook_function

import search
from models import load_builder
from search import StudySpecError


def arrays(n: int = 60, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 12, 12, 1), dtype=np.uint8), np.arange(n) % k


@pytest.fixture
def places(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STUDIES_DIR", raising=False)
    monkeypatch.delenv("STORAGE", raising=False)
    return tmp_path


def _study(places, **changes):
    kwargs = dict(architecture=notebook_function(), dataset=arrays(),
                  space={"dense_units": {"choices": [8, 16]}, "dropout": {"low": 0.0, "high": 0.5}},
                  budget={"trials": 2, "max_epochs": 1})
    return search.Study("nb", **{**kwargs, **changes})


@pytest.mark.parametrize("dataset,says", [
    ((np.random.default_rng(0).random((20, 8, 8)), np.arange(20) % 2), "(x * 255).round().astype(np.uint8)"),
    ((np.zeros((20, 8, 8), np.uint8), (np.arange(20) % 2).astype(float)), "labels are integer class indices"),
    ((np.zeros((20, 8, 8), np.uint8), np.arange(19) % 2), "give one label per image"),
    ((np.zeros((20, 8, 8), np.uint8),), "(x_train, y_train)"),
])
def test_bad_arrays_are_refused_before_anything_is_written(places, dataset, says):
    with pytest.raises(StudySpecError) as err:
        _study(places, dataset=dataset)
    assert "dataset" in str(err.value) and says in str(err.value)
    assert not (places / "studies.journal").exists() and not (places / "studies").exists()


def test_a_builder_that_cannot_be_pickled_by_value_is_refused_naming_the_fix(places):
    lock = threading.Lock()

    def build(input_shape, num_classes, *, dense_units: int = 16):
        with lock:
            return None

    with pytest.raises(StudySpecError) as err:
        _study(places, architecture=build)
    assert "cannot be pickled by value" in str(err.value) and 'architecture="file.py:build"' in str(err.value)
    assert not (places / "studies.journal").exists()


def test_a_knob_the_builder_lacks_is_refused_at_its_field(places):
    with pytest.raises(StudySpecError) as err:
        _study(places, space={"filters": {"choices": [8]}})
    assert "space.filters" in str(err.value)
    assert not (places / "studies.journal").exists()


def test_a_notebook_study_is_an_ordinary_study_file_with_its_arrays_and_builder_as_files(places):
    study = _study(places)
    text = study.to_yaml()
    assert (places / "studies" / "nb.yaml").read_text() == text
    assert "nb.files/builder.py:build" in text and "/cache/arrays/nb-" in text
    npz = next((places / "cache" / "arrays").glob("nb-*.npz"))
    with np.load(npz) as saved:
        np.testing.assert_array_equal(saved["x_train"], arrays()[0])
    file = places / "studies" / "nb.files" / "builder.py"
    builder = load_builder(f"{file}:build")
    assert builder.knobs == {"dense_units": 16, "dropout": 0.1}  # read from the pickled function's signature
    assert "#     def build(input_shape, num_classes" in file.read_text()  # its source, for the reader
    assert (places / "studies.journal").exists()  # created in the embedded store
    assert study.best is None and len(study.trials_dataframe()) == 0
    # Made again from the same objects: the same files, the same study (create is idempotent).
    assert _study(places).spec.space_hash() == study.spec.space_hash()
    study.run(workers=2, progress=False, poll_s=0.5)  # the embedded store (on PostgreSQL: tests/e2e)
    frame = study.trials_dataframe()
    assert len(frame) == 2 and set(frame["state"]) == {"COMPLETE"}, (places / "studies" / "nb.log").read_text()[-3000:]
    again = search.Study.load("nb")
    assert again.spec.space_hash() == study.spec.space_hash() and again.best == study.best is not None
