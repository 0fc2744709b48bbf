"""GPU placement: one worker per visible GPU by default, or 2-3 packed per GPU under a memory cap.

Workers claim a slot with a lock file in a directory they share (the artifact volume in compose),
so N workers started at once on one box spread over its GPUs with no coordinator. Runs before
the backend touches a device: it only sets environment variables.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass
class Placement:
    gpu: str | None
    slot: int
    memory_fraction: float | None
    handle: object = None  # the open lock file; the claim lasts as long as the process

    def describe(self) -> str:
        if self.gpu is None:
            return "no GPU visible: CPU"
        cap = f", capped at {self.memory_fraction:.0%} of its memory" if self.memory_fraction else ""
        return f"GPU {self.gpu} (slot {self.slot}){cap}"


def visible_gpus() -> list[str]:
    """CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists, else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def memory_fraction(per_gpu: int) -> float | None:
    """Each packed worker's share of its card; None (no cap) for one worker per GPU."""
    return round(0.9 / per_gpu, 3) if per_gpu > 1 else None


def claim(lock_dir: Path, gpus: list[str], per_gpu: int) -> Placement:
    """The first free (gpu, slot): slot 0 on every GPU before slot 1 on any."""
    if per_gpu < 1:
        raise ValueError(f"WORKERS_PER_GPU must be at least 1 but got {per_gpu}")
    if not gpus:
        return Placement(None, 0, None)
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(per_gpu):
        for gpu in gpus:
            handle = open(lock_dir / f"gpu{gpu}-slot{slot}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return Placement(gpu, slot, memory_fraction(per_gpu), handle)
    raise RuntimeError(f"all {len(gpus) * per_gpu} GPU slots ({len(gpus)} GPUs x {per_gpu}) are taken; "
                       "start fewer workers or raise WORKERS_PER_GPU")


def apply(placement: Placement) -> None:
    """Point this process at its GPU and cap its memory (both backends read these lazily)."""
    if placement.gpu is None:
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = placement.gpu
    if placement.memory_fraction:
        os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(placement.memory_fraction)  # JAX
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    logger.info("placement: %s", placement.describe())


def cap_tensorflow_memory(placement: Placement) -> None:
    """TensorFlow has no environment variable for a memory cap: set a logical device limit."""
    if placement.gpu is None or not placement.memory_fraction:
        return
    import tensorflow as tf

    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i",
                          placement.gpu], capture_output=True, text=True, timeout=10, check=True).stdout
    limit_mb = int(float(out.split()[0]) * placement.memory_fraction)
    for device in tf.config.list_physical_devices("GPU"):
        tf.config.set_logical_device_configuration(device, [tf.config.LogicalDeviceConfiguration(memory_limit=limit_mb)])
    logger.info("TensorFlow limited to %d MB on GPU %s", limit_mb, placement.gpu)


def limit_cpu_threads() -> int | None:
    """WORKER_THREADS, when set: the CPU threads one worker's TensorFlow ops may use.

    `python -m search run --workers N` sets it to cores // N, so N workers on one CPU do not each
    start a thread per core and compete for the same cores (measured in BENCHMARKS.md, "threads").
    """
    threads = int(os.environ.get("WORKER_THREADS") or 0)
    if threads < 1:
        return None
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        logger.info("TensorFlow ops limited to %d CPU thread(s) (WORKER_THREADS)", threads)
    return threads


def place_worker(lock_dir: Path) -> Placement:
    placement = claim(lock_dir, visible_gpus(), int(os.environ.get("WORKERS_PER_GPU", "1")))
    apply(placement)
    return placement
