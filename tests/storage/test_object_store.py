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
    ("s3://Bucket_Name/p", "lower-case letters"),
    ("s3://minio:9000/p", "its port go in ARTIFACTS_ENDPOINT_URL"),
    ("s3://AKIAKEY:s3cr3t@bucket/p", "holds credentials"),
    ("s3://no-such-bucket/p", "create the bucket"),
])
def test_a_bad_artifacts_url_is_refused_naming_the_fix(s3, url, says):
    with pytest.raises(StorageConfigError, match="ARTIFACTS_URL") as raised:
        ObjectStore.from_url(url, endpoint_url=s3.endpoint).check()
    assert says in str(raised.value) and "s3cr3t" not in str(raised.value)


def test_no_credentials_is_a_config_error_and_an_unreachable_server_is_not(s3, monkeypatch, tmp_path):
    import boto3
    from botocore.config import Config

    from storage import StorageUnavailableError

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a process that never had credentials (boto3 caches them)
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageConfigError, match="no credentials"):
        ObjectStore.from_url(s3.url("p"), endpoint_url=s3.endpoint).check()
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    once = Config(retries={"total_max_attempts": 1}, connect_timeout=2)  # the service's client retries 8 times
    closed = ObjectStore(s3.bucket, "p", endpoint_url="http://127.0.0.1:9",  # nothing listens on port 9
                         client=boto3.client("s3", endpoint_url="http://127.0.0.1:9", config=once))
    with pytest.raises(StorageUnavailableError, match="cannot reach http://127.0.0.1:9"):
        closed.check()


def test_object_storage_with_the_storage_proxy_is_refused_before_anything_is_written(s3, tmp_path):
    artifacts = _machine(s3, tmp_path, "m", "proxy")
    with pytest.raises(StorageConfigError, match="storage proxy.*shared volume, or connect the workers to PostgreSQL"):
        artifacts.check("grpcs://proxy:13000?ca_file=/ca.pem&token_file=/t")
    artifacts.check("postgresql+psycopg2://u@db/optuna")  # the advisory locks are there


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

    three = _machine(s3, tmp_path, "three", "entries")
    other = three.cache("kind", "key2")
    other.mkdir(parents=True)
    (other / "data.bin").write_bytes(b"three's")
    (other / "done.json").write_text("{}")
    assert three.publish(other, names)
    (other / "data.bin").write_bytes(b"late")  # a builder whose build lock was not shared publishes second
    (other / "done.json").write_text('{"late": 1}')
    assert not three.publish(other, names)  # the marker was there: the first entry stands, whole ...
    assert json.loads((other / "done.json").read_text()) == {}  # ... and is what this machine now holds
    assert (other / "data.bin").read_bytes() == b"three's"
    assert s3.client().get_object(Bucket=s3.bucket, Key="entries/cache/kind/key2/data.bin")["Body"].read() == b"three's"

    four = _machine(s3, tmp_path, "four", "entries")  # finished here, its upload failed: published when next fetched
    healed = four.cache("kind", "key3")
    healed.mkdir(parents=True)
    (healed / "data.bin").write_bytes(b"four's")
    (healed / "done.json").write_text("{}")
    assert four.fetch(healed, names)
    assert s3.keys("entries/cache/kind/key3/") == ["entries/cache/kind/key3/data.bin", "entries/cache/kind/key3/done.json"]


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


def _fit_attempt(trial, root: Path, remote, *, epochs: int, die: bool = False):
    """One attempt of `trial` on the machine whose folder is `root`: the epochs trained (its worker
    dies after them when `die`, keeping its checkpoint)."""
    import keras

    from search.trial._checkpoints import Checkpoints

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    try:
        with Checkpoints(root / "checkpoints", "s", every_s=0, remote=remote).attempt(trial) as backup:
            history = model.fit(x, y, epochs=epochs, verbose=0, callbacks=[backup])
            if die:
                raise SystemExit
    except SystemExit:
        pass
    return history.epoch


def _retry(study, failed: list[int]):
    from storage import attrs

    retry = study.ask()
    study._storage.set_trial_system_attr(retry._trial_id, attrs.RETRY_HISTORY, failed)
    study._storage.set_trial_system_attr(retry._trial_id, "failed_trial", failed[0])
    return retry


def test_checkpoints_reach_a_retry_on_another_machine_and_are_deleted_when_the_lineage_ends(s3, tmp_path):
    from storage import attrs

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.set_user_attr(attrs.STUDY_UID, "u1")
    first = study.ask()
    assert _fit_attempt(first, tmp_path / "one", _machine(s3, tmp_path, "one", "ckpt").checkpoints(), epochs=2,
                        die=True) == [0, 1]  # the worker dies after two epochs were checkpointed
    assert s3.keys("ckpt/") == [f"ckpt/checkpoints/s-u1-{first.number}/latest.weights.h5",
                                f"ckpt/checkpoints/s-u1-{first.number}/training_metadata.json"]
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    # Its retry, on a second machine, dies before it wrote a checkpoint of its own (at once) ...
    second = _retry(study, [first.number])
    assert _fit_attempt(second, tmp_path / "two", _machine(s3, tmp_path, "two", "ckpt").checkpoints(), epochs=0,
                        die=True) == []
    assert s3.keys("ckpt/") == [f"ckpt/checkpoints/s-u1-{second.number}/latest.weights.h5",
                                f"ckpt/checkpoints/s-u1-{second.number}/training_metadata.json"]
    study.tell(second, state=optuna.trial.TrialState.FAIL)
    # ... and the next, on a third, still resumes after the first machine's second epoch.
    third = _retry(study, [second.number, first.number])
    assert _fit_attempt(third, tmp_path / "three", _machine(s3, tmp_path, "three", "ckpt").checkpoints(),
                        epochs=4) == [2, 3]
    assert s3.keys("ckpt/") == []  # the lineage ended: its checkpoints are gone from the bucket


def test_a_first_attempt_that_wrote_no_checkpoint_ends_without_a_call_to_the_bucket(s3, tmp_path):
    from storage import attrs

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.set_user_attr(attrs.STUDY_UID, "u3")
    remote = _machine(s3, tmp_path, "one", "quiet").checkpoints()
    calls = []

    class Counting(type(remote)):
        def names(self, under=""):
            calls.append(under)
            return super().names(under)

    counting = Counting(remote.bucket, remote.prefix, client=remote.client)
    _fit_attempt(study.ask(), tmp_path / "one", counting, epochs=0)  # finished, nothing written: no call
    assert calls == []
    written = study.ask()
    _fit_attempt(written, tmp_path / "one", counting, epochs=2)  # wrote: its objects are deleted at the end
    assert calls == [f"s-u3-{written.number}"] and s3.keys("quiet/") == []


def test_a_half_uploaded_checkpoint_is_not_resumed_and_a_failed_upload_does_not_fail_the_trial(s3, tmp_path, caplog):
    from storage import attrs

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.set_user_attr(attrs.STUDY_UID, "u2")
    first = study.ask()
    remote = _machine(s3, tmp_path, "one", "half").checkpoints()
    _fit_attempt(first, tmp_path / "one", remote, epochs=2, die=True)
    # as if killed between its two uploads: the weights are there, not the epoch they are of
    s3.client().delete_object(Bucket=s3.bucket, Key=f"half/checkpoints/s-u2-{first.number}/training_metadata.json")
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    retry = _retry(study, [first.number])

    class Unreachable(type(remote)):
        def upload(self, *args, **kwargs):
            raise OSError("the object store is unreachable")

    broken = Unreachable(remote.bucket, remote.prefix, client=remote.client)
    assert _fit_attempt(retry, tmp_path / "two", broken, epochs=3) == [0, 1, 2]  # from scratch, to the end
    assert "not uploaded to" in caplog.text


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
