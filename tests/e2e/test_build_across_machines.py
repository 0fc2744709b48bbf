"""A feature-cache study's base built once across two machines, and taken over when its builder is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers.synthetic import FEATURE_STUDY

MACHINES_STUDY = (FEATURE_STUDY.replace("dataset: cifar10", "dataset: mnist")
                  .replace("budget: {trials: 2, max_epochs: 2}",
                           "budget: {trials: 3, max_epochs: 1}\ndata: {max_train: 600, max_val: 200}")
                  .replace("feature_cache: {base_epochs: 1}",
                           "feature_cache: {base_epochs: EPOCHS, base_max_train: 200}"))

def _machines(tmp_path: Path, monkeypatch, store: str, shared_datasets: Path, shared_cache: Path,
              epochs: int) -> dict:
    """`python -m search create coord` (in this process, which has loaded Keras already), then the
    environment of two workers that share one artifact directory and the store."""
    from data import load_dataset
    from search.__main__ import main

    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "coord.yaml").write_text(MACHINES_STUDY.replace("EPOCHS", str(epochs)))
    env = {"STORAGE": store, "STUDIES_DIR": str(studies), "ARTIFACTS_DIR": str(tmp_path / "artifacts"),
           "DATA_DIR": str(shared_datasets), "DATA_CACHE": str(shared_cache), "CUDA_VISIBLE_DEVICES": "",
           "HEARTBEAT_INTERVAL": "1", "GRACE_PERIOD": "6"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["create", "coord"]) == 0
    load_dataset("mnist", data_dir=shared_datasets, cache_dir=shared_cache)  # decoded once, before the workers
    return {**os.environ, **env}

def _worker(env: dict, index: int, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "search.worker", "coord", "--worker-index", str(index)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)

BASE_EPOCHS = 10  # the builder is killed after the first; the other trains all of them

@contextlib.contextmanager
def _reaped(workers: list[subprocess.Popen]):
    try:
        yield
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

def _builder_after_its_first_epoch(workers: list[subprocess.Popen], logs: list[Path]) -> int:
    """The worker that trains the base, once it finished an epoch while the other waits on its lock."""
    deadline = time.monotonic() + 120
    while True:
        texts = [log.read_text() for log in logs]
        builder = next((i for i, t in enumerate(texts) if f"base epoch 1/{BASE_EPOCHS}" in t), None)
        if builder is not None and "waiting for the build lock on bases/" in texts[1 - builder]:
            return builder
        assert time.monotonic() < deadline and all(w.poll() is None for w in workers), "".join(texts)[-4000:]
        time.sleep(0.2)

def test_two_machines_train_the_base_once_and_both_use_it(tmp_path, monkeypatch, journal_pg_url, shared_datasets,
                                                          shared_cache):
    env = _machines(tmp_path, monkeypatch, journal_pg_url, shared_datasets, shared_cache, epochs=3)
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    workers = [_worker(env, i, log) for i, log in enumerate(logs)]
    with _reaped(workers):
        codes = [w.wait(timeout=240) for w in workers]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts[0][-3000:] + texts[1][-3000:]
    both = "".join(texts)
    assert both.count("training the s000_model_3_1 base once") == 1
    assert "waiting for the build lock on" in both  # the other machine waited on PostgreSQL (base or features)
    assert both.count("reusing trained base") == 1
    assert both.count("computing base features once") == 1 and both.count("reusing cached features") == 1
    assert all("trains only the head on cached" in text for text in texts)  # both used it
    assert not list((tmp_path / "artifacts").rglob("*.lock"))  # no file lock was taken: only PostgreSQL's
    assert "Traceback" not in both

def test_a_builder_killed_mid_build_lets_the_other_machine_take_over(tmp_path, monkeypatch, journal_pg_url,
                                                                     shared_datasets, shared_cache):
    env = _machines(tmp_path, monkeypatch, journal_pg_url, shared_datasets, shared_cache, epochs=BASE_EPOCHS)
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    workers = [_worker(env, i, log) for i, log in enumerate(logs)]
    with _reaped(workers):
        builder = _builder_after_its_first_epoch(workers, logs)
        texts = [log.read_text() for log in logs]
        folder = Path(texts[builder].split("(cached as ")[1].split(")")[0]).parent
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".tmp-deadhost-7-0badf00d.weights.h5").write_bytes(b"\x89HDF half")  # as if killed mid-write
        workers[builder].send_signal(signal.SIGKILL)
        assert workers[builder].wait(timeout=10) == -signal.SIGKILL
        assert "base trained" not in logs[builder].read_text()  # killed mid-build
        other = 1 - builder
        assert workers[other].wait(timeout=120) == 0, logs[other].read_text()[-3000:]
    text = logs[other].read_text()
    took_over = text.index("got the build lock on bases/")
    assert text.index("training the s000_model_3_1 base once") > took_over
    assert "removed 1 unfinished file(s) a killed builder left" in text
    assert f"base epoch {BASE_EPOCHS}/{BASE_EPOCHS}" in text and "base trained" in text and "reusing trained base" not in text
    assert sorted(p.name for p in folder.iterdir()) == ["base.json", "base.weights.h5"]
    assert "Traceback" not in text
