"""ARTIFACTS_URL=s3://...: the object store, cache entries published marker-last and create-only, a
feature cache built on one machine and reused on another with no folder in common, checkpoints and
final models in the bucket. Against a real S3-compatible server (moto's server mode) started here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers.s3_server import CREDENTIALS, s3_server
from helpers.synthetic import FEATURE_STUDY, easy_splits

from storage import Artifacts, ObjectStore, StorageConfigError


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(autouse=True)
def _credentials(monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def _machine(s3, tmp_path: Path, name: str, prefix: str) -> Artifacts:
    """One machine's artifacts: a folder of its own, the bucket in common."""
    return Artifacts.open(tmp_path / name, s3.url(prefix), s3.endpoint)


def test_objects_round_trip_and_a_create_only_put_keeps_the_first(s3, tmp_path):
    store = ObjectStore.from_url(s3.url("rt/one"), endpoint_url=s3.endpoint)
    store.check()
    (tmp_path / "a").write_bytes(b"first")
    (tmp_path / "b").write_bytes(b"second")
    assert store.upload(tmp_path / "a", "x/marker", if_absent=True)
    assert not store.upload(tmp_path / "b", "x/marker", if_absent=True)  # refused whole: the first stands
    assert store.download("x/marker", tmp_path / "got") and (tmp_path / "got").read_bytes() == b"first"
    assert not store.download("x/absent", tmp_path / "absent") and not (tmp_path / "absent").exists()
    store.upload(tmp_path / "b", "x/other")
    assert sorted(store.names("x")) == ["x/marker", "x/other"]
    assert s3.keys("rt/") == ["rt/one/x/marker", "rt/one/x/other"]
    assert store.delete_under("x") == 2 and s3.keys("rt/") == []
    assert not list(tmp_path.glob(".*part"))  # downloads went through a temporary name, none left


@pytest.mark.parametrize("url, says", [
    ("file:///tmp/x", "write s3://BUCKET/PREFIX"),
    ("s3://", "write s3://BUCKET/PREFIX"),
    ("s3://no-such-bucket/p", "create the bucket"),
])
def test_a_bad_artifacts_url_is_refused_naming_the_fix(s3, url, says):
    with pytest.raises(StorageConfigError, match="ARTIFACTS_URL") as raised:
        ObjectStore.from_url(url, endpoint_url=s3.endpoint).check()
    assert says in str(raised.value)


def test_object_storage_with_the_storage_proxy_is_refused_before_anything_is_written(s3, tmp_path):
    artifacts = _machine(s3, tmp_path, "m", "proxy")
    with pytest.raises(StorageConfigError, match="storage proxy.*shared volume, or connect the workers to PostgreSQL"):
        artifacts.check("grpcs://proxy:13000?ca_file=/ca.pem&token_file=/t")
    artifacts.check("postgresql+psycopg2://u@db/optuna")  # the advisory locks are there
    assert s3.keys("proxy/") == []


def test_an_entry_is_fetched_only_once_its_marker_is_published_and_a_late_builder_takes_the_first(s3, tmp_path):
    one, two = _machine(s3, tmp_path, "one", "entries"), _machine(s3, tmp_path, "two", "entries")
    names = ("data.bin", "done.json")
    folder = one.cache("kind", "key1")
    folder.mkdir(parents=True)
    (folder / "data.bin").write_bytes(b"one's data")
    assert not two.fetch(two.cache("kind", "key1"), names)
    one.remote.upload(folder / "data.bin", "cache/kind/key1/data.bin")  # as if its builder died before the marker
    assert not two.fetch(two.cache("kind", "key1"), names)  # no marker: not finished
    (folder / "done.json").write_text("{}")
    assert one.publish(folder, names)
    assert two.fetch(two.cache("kind", "key1"), names)
    assert (two.cache("kind", "key1") / "data.bin").read_bytes() == b"one's data"

    late = two.cache("kind", "key1")  # a builder whose build lock was not shared publishes second
    (late / "data.bin").write_bytes(b"two's data")
    (late / "done.json").write_text('{"two": 1}')
    three = _machine(s3, tmp_path, "three", "entries")
    other = three.cache("kind", "key2")
    other.mkdir(parents=True)
    (other / "data.bin").write_bytes(b"three's")
    (other / "done.json").write_text("{}")
    assert three.publish(other, names)
    (other / "data.bin").write_bytes(b"late")
    (other / "done.json").write_text('{"late": 1}')
    assert not three.publish(other, names)  # the marker was there: the first entry stands ...
    assert json.loads((other / "done.json").read_text()) == {}  # ... and is what this machine now holds


def test_a_feature_cache_built_on_one_machine_is_reused_on_another_without_a_shared_folder(s3, tmp_path, monkeypatch):
    from search import parse_spec
    from search.trial import _features

    spec = parse_spec(FEATURE_STUDY, name="feat")
    splits = easy_splits(200, 50)
    one, two = _machine(s3, tmp_path, "one", "feat"), _machine(s3, tmp_path, "two", "feat")
    first = _features.ensure_features(spec, splits, artifacts=one)
    keys = s3.keys("feat/cache/")
    assert [k.rsplit("/", 1)[1] for k in keys if "/bases/" in k] == ["base.json", "base.weights.h5"]
    assert [k.rsplit("/", 1)[1] for k in keys if "/features/" in k] == ["meta.json", "x_train.npy", "x_val.npy"]

    def no_training(*args, **kwargs):
        raise AssertionError("the second machine trained the base again")

    monkeypatch.setattr(_features, "train", no_training)
    monkeypatch.setattr(_features, "extract", no_training)
    again = _features.ensure_features(spec, splits, artifacts=two)
    assert again.key == first.key
    assert again.base_weights.is_relative_to(tmp_path / "two")  # its own copy
    np.testing.assert_array_equal(again.splits.x_train, first.splits.x_train)


def test_checkpoints_reach_a_retry_on_another_machine_and_are_deleted_when_the_lineage_ends(s3, tmp_path):
    import keras

    from search.trial._checkpoints import Checkpoints
    from storage import attrs

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.set_user_attr(attrs.STUDY_UID, "u1")
    first = study.ask()
    remote_one = _machine(s3, tmp_path, "one", "ckpt").checkpoints()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    with pytest.raises(SystemExit):  # the worker dies mid-trial, after two epochs were checkpointed
        with Checkpoints(tmp_path / "one" / "checkpoints", "s", every_s=0, remote=remote_one).attempt(first) as backup:
            model.fit(x, y, epochs=2, verbose=0, callbacks=[backup])
            raise SystemExit
    assert s3.keys("ckpt/") == [f"ckpt/checkpoints/s-u1-{first.number}/latest.weights.h5",
                                f"ckpt/checkpoints/s-u1-{first.number}/training_metadata.json"]
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    retry = study.ask()
    study._storage.set_trial_system_attr(retry._trial_id, attrs.RETRY_HISTORY, [first.number])
    study._storage.set_trial_system_attr(retry._trial_id, "failed_trial", first.number)
    fresh = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    fresh.compile(optimizer="adam", loss="mse")
    remote_two = _machine(s3, tmp_path, "two", "ckpt").checkpoints()
    with Checkpoints(tmp_path / "two" / "checkpoints", "s", every_s=0, remote=remote_two).attempt(retry) as backup:
        history = fresh.fit(x, y, epochs=4, verbose=0, callbacks=[backup])
    assert len(history.epoch) == 2  # epochs 3 and 4: it resumed after the dead machine's second epoch
    assert s3.keys("ckpt/") == []  # the lineage ended: its checkpoints are gone from the bucket


def test_final_models_go_to_the_bucket_through_optunas_artifact_api(s3, tmp_path):
    from optuna.artifacts import download_artifact

    from storage import artifact_store, upload

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    artifacts = _machine(s3, tmp_path, "m", "final")
    (tmp_path / "model.keras").write_bytes(b"a model")
    artifact_id = upload(study, tmp_path / "model.keras", root=artifacts, mimetype="application/zip")
    assert s3.keys("final/") == [f"final/artifacts/{artifact_id}"]
    download_artifact(artifact_store=artifact_store(_machine(s3, tmp_path, "dashboard", "final")),
                      artifact_id=artifact_id, file_path=str(tmp_path / "back.keras"))
    assert (tmp_path / "back.keras").read_bytes() == b"a model"
