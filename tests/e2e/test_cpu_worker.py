"""A worker process on a machine without a GPU starts without TensorFlow's alarming CUDA lines."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers.synthetic import ONE_TRIAL_STUDY

CUDA_NOISE = ("cuInit", "cuda drivers", "CUDA error")

WORKER_STUDY = ONE_TRIAL_STUDY

def test_a_worker_process_on_a_cpu_prints_no_cuda_lines(tmp_path):
    """TensorFlow's CUDA build prints `Could not find cuda drivers` as it loads and `failed call to
    cuInit` as it looks for devices, on every worker start, whatever TF_CPP_MIN_LOG_LEVEL says; the
    CPU build (the `cpu` extra, what `make` installs) has no CUDA code to complain. This passes once
    the virtualenv holds tensorflow-cpu rather than tensorflow."""
    from helpers.datasets import write_cifar10_pickles

    from search import create_study, load_spec
    from storage import open_storage

    write_cifar10_pickles(tmp_path / "datasets", n_per_batch=20)  # not ./data: it would shadow the package
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "tiny.yaml").write_text(WORKER_STUDY)
    url = f"journal://{tmp_path / 'studies.journal'}"
    create_study(load_spec("tiny", studies_dir=tmp_path / "studies"), open_storage(url, create_schema=True))
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "TF_CPP_MIN_LOG_LEVEL")}
    env.update(STUDIES_DIR=str(tmp_path / "studies"), DATA_DIR=str(tmp_path / "datasets"), KERAS_BACKEND="tensorflow",
               ARTIFACTS_DIR=str(tmp_path / "artifacts"))
    run = subprocess.run([sys.executable, "-m", "search.worker", "tiny", "--storage", url], capture_output=True,
                         text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "trial 0 complete" in run.stderr
    noise = [line for line in (run.stdout + run.stderr).splitlines() if any(word in line for word in CUDA_NOISE)]
    assert not noise, noise
