"""GPU placement, per-worker limits and what the GPU bench reads back; no GPU needed.

The placement logic runs on simulated GPU lists here; on a real H100 it ran in `make bench-gpu`
(BENCHMARKS.md, "bench-gpu").
"""

from __future__ import annotations

import datetime
import os

import optuna
import pytest
from optuna.trial import TrialState

from benchmarks.gpu import summarize
from search.runtime import accelerator_memory_mib
from search.trial._train import is_oom, oom_message
from search.worker._loop import grown_past
from search.worker._placement import Placement, apply, claim, visible_gpus


def test_one_worker_per_gpu_by_default_and_a_clear_error_past_the_slots(tmp_path):
    first, second = claim(tmp_path, ["0", "1"], 1), claim(tmp_path, ["0", "1"], 1)
    assert (first.gpu, second.gpu) == ("0", "1") and first.memory_fraction is None
    with pytest.raises(RuntimeError, match=r"all 2 GPU slots \(2 GPUs x 1\) are taken.*WORKERS_PER_GPU"):
        claim(tmp_path, ["0", "1"], 1)
    first.handle.close()  # a worker that exits frees its slot
    assert claim(tmp_path, ["0", "1"], 1).gpu == "0"


def test_packed_workers_fill_slot_zero_of_every_gpu_first_each_under_a_cap(tmp_path):
    got = [claim(tmp_path, ["0", "1"], 3) for _ in range(6)]
    assert [(p.gpu, p.slot) for p in got] == [("0", 0), ("1", 0), ("0", 1), ("1", 1), ("0", 2), ("1", 2)]
    assert {p.memory_fraction for p in got} == {0.3}
    assert "capped at 30% of its memory" in got[0].describe()
    with pytest.raises(ValueError, match="WORKERS_PER_GPU must be at least 1"):
        claim(tmp_path, ["0"], 0)


def test_no_gpu_means_cpu_and_cuda_visible_devices_is_honoured(tmp_path, monkeypatch):
    assert claim(tmp_path, [], 3).describe() == "no GPU visible: CPU"
    assert visible_gpus("2, 3") == ["2", "3"]
    assert visible_gpus("-1") == [] and visible_gpus("") == []


def test_apply_points_the_process_at_its_gpu_and_caps_jax(monkeypatch):
    env: dict = {}  # apply() writes os.environ; a stand-in keeps the GPU out of later tests' workers
    monkeypatch.setattr(os, "environ", env)
    apply(Placement("1", 2, 0.3))
    assert env == {"CUDA_VISIBLE_DEVICES": "1", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.3",
                   "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    apply(Placement(None, 0, None))  # no GPU: nothing is set
    assert len(env) == 3


def test_no_accelerator_memory_is_reported_on_a_cpu():
    import keras  # noqa: F401  (loaded, as in a worker that trains)

    assert accelerator_memory_mib() is None


def test_a_process_without_keras_is_not_made_to_load_a_backend_for_its_memory_figures():
    import subprocess
    import sys

    code = ("import sys; from search.worker._loop import memory_now; m = memory_now(); "
            "print(sorted(k for k, v in m.items() if v is not None), 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["['rss']", "False"], out.stderr[-2000:]


def test_a_worker_recycles_on_rss_or_gpu_growth_past_its_limit():
    base = {"rss": 1000.0, "gpu": 2.0}
    limits = {"rss": 512, "gpu": 1024}
    assert grown_past(None, {"rss": 9999.0}, limits) is None  # no baseline yet
    assert grown_past(base, {"rss": 1500.0, "gpu": 1000.0}, limits) is None
    assert "rss grew 600 MiB" in grown_past(base, {"rss": 1600.0, "gpu": 2.0}, limits)
    assert "gpu grew 1100 MiB" in grown_past(base, {"rss": 1000.0, "gpu": 1102.0}, limits)
    assert grown_past(base, {"rss": 1600.0, "gpu": None}, {"rss": 0, "gpu": 1024}) is None  # 0 is off; CPU


# What XLA raised on the H100 for a trial past its cap (BENCHMARKS.md, "bench-gpu"), shortened.
XLA_OOM = """NOT_FOUND: Failed to get configs for: 3 out of 52 instructions. See logs for all failures. Example failure:
Could not get config for HLO: %gemm_fusion_dot = f32[1024,4000000]{1,0} fusion(...)
Failures (12):
EXECUTION FAILED: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 15.27GiB with allocator GPU_0_bfc on device 0."""


def test_the_oom_reason_keeps_the_allocators_line_not_xlas_first():
    exc = RuntimeError(XLA_OOM)
    assert is_oom(exc)
    assert oom_message(exc) == ("out of memory: EXECUTION FAILED: RESOURCE_EXHAUSTED: Out of memory while trying "
                                "to allocate 15.27GiB with allocator GPU_0_bfc on device 0.")
    assert oom_message(MemoryError()) == "out of memory: MemoryError"
    assert not is_oom(ValueError("shapes do not match"))


def _trial(number, worker, start, seconds, gpu, state=TrialState.COMPLETE, **attrs):
    begin = datetime.datetime(2026, 11, 22, 18, 0) + datetime.timedelta(seconds=start)
    trial = optuna.trial.create_trial(
        state=state, value=0.9 if state == TrialState.COMPLETE else None, params={}, distributions={},
        user_attrs={"worker": worker, "device": "gpu:H100", "worker_gpu_mib": gpu, "worker_gpu_peak_mib": 100 + gpu,
                    **attrs})
    trial.number, trial.datetime_start = number, begin
    trial.datetime_complete = begin + datetime.timedelta(seconds=seconds)
    return trial


def test_bench_gpu_reads_placement_pace_and_memory_per_worker_back():
    trials = [_trial(0, "w0", 0, 10, 0.0), _trial(1, "w1", 1, 12, 0.0), _trial(2, "w0", 11, 8, 2.4),
              _trial(3, "w1", 14, 9, 3.0, state=TrialState.PRUNED),
              _trial(4, "w0", 20, 1, 2.0, state=TrialState.FAIL, fail_reason="oom", fail_message="out of memory: X")]
    log = "18:00:00 [w0] placement: GPU 0 (slot 0), capped at 45% of its memory\n" \
          "18:00:00 [w1] placement: GPU 0 (slot 1), capped at 45% of its memory\n"
    phase = {"name": "packed", "rc": 0, "wall_s": 30.0, "trials": trials, "smi_peaks": {11: 900, 12: 950}, "log": log}
    lines = summarize(phase, total_mib=80000, per_gpu=2)
    assert lines[0] == "packed: exit 0, 5 trials (3 complete, 1 fail, 1 pruned) in 30 s"
    assert lines[1] == ("  placements: GPU 0 (slot 0), capped at 45% of its memory; "
                        "GPU 0 (slot 1), capped at 45% of its memory")
    w0 = next(line for line in lines if line.startswith("  w0:"))
    assert w0 == ("  w0: 3 trials, median 8.0 s a trial; GPU MiB in use at trial start: first 0.0, after warm-up 2.4, "
                  "last 2.0, max 2.4; allocator peak so far 102")
    assert "  nvidia-smi peak per process, MiB: 900, 950 (cap 45% of 80,000 = 36,000 MiB)" in lines
    assert "  pace: 8.0 finished trials a minute (wall time, start-up included)" in lines
    assert "  trial 4 failed (oom): out of memory: X" in lines


def test_two_machines_sharing_one_artifact_volume_each_get_their_own_gpu_slots(tmp_path):
    """GPU slots are per machine: the lock names carry the host, so box b's worker does not find
    box a's GPU 0 taken (issue: many GPU machines on one ReadWriteMany volume)."""
    a0, b0 = claim(tmp_path, ["0"], 1, host="box-a"), claim(tmp_path, ["0"], 1, host="box-b")
    assert (a0.gpu, a0.slot, b0.gpu, b0.slot) == ("0", 0, "0", 0)
    with pytest.raises(RuntimeError, match="all 1 GPU slots"):
        claim(tmp_path, ["0"], 1, host="box-a")  # box a's one slot is taken by its first worker
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box-a-gpu0-slot0.lock", "box-b-gpu0-slot0.lock"]


def test_auto_in_a_worker_started_on_its_own_takes_a_slot_and_grows_its_memory_on_a_gpu_only(tmp_path, monkeypatch):
    """WORKERS_PER_GPU=auto outside `python -m search run`: a free slot of up to half the cores per
    GPU, no fixed share, no backend taking the card up front; on a CPU nothing changes."""
    from search.worker._placement import cpu_slots, place_worker

    env: dict = {}
    monkeypatch.setattr(os, "environ", env)
    got = [place_worker(tmp_path, per_gpu="auto", cuda_visible_devices="0,1") for _ in range(2 * cpu_slots(2))]
    assert {(p.gpu, p.slot) for p in got} == {(g, s) for g in "01" for s in range(cpu_slots(2))}
    assert all(p.grow and p.memory_fraction is None for p in got)
    assert "GPU 0 (slot 0), its memory growing as needed" == got[0].describe()
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" and env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env
    cpu = place_worker(tmp_path / "cpu", per_gpu="auto", cuda_visible_devices="-1")
    assert cpu.gpu is None and not cpu.grow
