"""GPU placement: one worker per visible GPU by default, or 2-3 packed per GPU under a memory cap
(WORKERS_PER_GPU), or as many as fit (WORKERS_PER_GPU=auto: search.commands._packing decides how many).

Workers claim a slot with a lock file in a directory they share (the artifact volume in compose),
so N workers started at once on one box spread over its GPUs with no coordinator. Runs before
the backend touches a device: it only sets environment variables.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# No backend takes the whole card up front: TensorFlow grows its pool, JAX allocates on demand.
GROW_ENV = {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


@dataclass
class Placement:
    gpu: str | None
    slot: int
    memory_fraction: float | None
    handle: object = None  # the open lock file; the claim lasts as long as the process
    grow: bool = False  # WORKERS_PER_GPU=auto: no fixed share; the allocator takes memory as it needs it

    def describe(self) -> str:
        if self.gpu is None:
            return "no GPU visible: CPU"
        cap = f", capped at {self.memory_fraction:.0%} of its memory" if self.memory_fraction else ""
        cap = cap or (", its memory growing as needed" if self.grow else "")
        return f"GPU {self.gpu} (slot {self.slot}){cap}"


def visible_gpus(cuda_visible_devices: str | None) -> list[str]:
    """CUDA_VISIBLE_DEVICES (Settings.cuda_visible_devices) when set, else what nvidia-smi lists, else none."""
    if cuda_visible_devices is not None:
        return [g.strip() for g in cuda_visible_devices.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def memory_fraction(per_gpu: int) -> float | None:
    """Each packed worker's share of its card; None (no cap) for one worker per GPU."""
    return round(0.9 / per_gpu, 3) if per_gpu > 1 else None


def claim(lock_dir: Path, gpus: list[str], per_gpu: int, host: str | None = None) -> Placement:
    """The first free (gpu, slot): slot 0 on every GPU before slot 1 on any.

    The lock names carry the machine's name: many machines may share one artifact volume (a
    Kubernetes ReadWriteMany claim), and a GPU slot is a slot of one machine's GPU."""
    host = host or socket.gethostname()
    if per_gpu < 1:
        raise ValueError(f"WORKERS_PER_GPU must be at least 1 but got {per_gpu}")
    if not gpus:
        return Placement(None, 0, None)
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(per_gpu):
        for gpu in gpus:
            handle = open(lock_dir / f"{host}-gpu{gpu}-slot{slot}.lock", "w")
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
    for key, value in (GROW_ENV if placement.grow else {}).items():
        os.environ[key] = value
    logger.info("placement: %s", placement.describe())


def cap_tensorflow_memory(placement: Placement) -> None:
    """TensorFlow has no environment variable for a memory cap: set a logical device limit."""
    if placement.gpu is None or not placement.memory_fraction:
        return
    import tensorflow as tf  # called under the TensorFlow backend only; a JAX worker has no TensorFlow

    limit_mb = int(card_memory_mib(placement.gpu) * placement.memory_fraction)
    for device in tf.config.list_physical_devices("GPU"):
        tf.config.set_logical_device_configuration(device, [tf.config.LogicalDeviceConfiguration(memory_limit=limit_mb)])
    logger.info("TensorFlow limited to %d MB on GPU %s", limit_mb, placement.gpu)


def limit_cpu_threads(threads: int) -> int | None:
    """WORKER_THREADS, when set (> 0): the CPU threads one worker's TensorFlow ops may use.

    `python -m search run --workers N` sets it to cores // N, so N workers on one CPU do not each
    start a thread per core and compete for the same cores (measured in BENCHMARKS.md, "threads").
    """
    if threads < 1:
        return None
    import keras  # the session calls this after placement, when Keras may load; placement itself must not

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # a JAX worker has no TensorFlow

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        logger.info("TensorFlow ops limited to %d CPU thread(s) (WORKER_THREADS)", threads)
    return threads


def card_memory_mib(gpu: str) -> float:
    """The card's memory as nvidia-smi's memory.total gives it (MiB)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", gpu],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return float(out.split()[0])


def cpu_slots(gpus: int, cores: int | None = None) -> int:
    """The most workers one GPU gets when packing is automatic: half the cores, shared by the GPUs
    (each worker feeds its GPU from the CPU: input pipeline, Python, the store)."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, cores // 2 // max(1, gpus))


def place_worker(lock_dir: Path, *, per_gpu: int | str, cuda_visible_devices: str | None) -> Placement:
    """Claim a slot. WORKERS_PER_GPU=auto in a worker started on its own (compose, Kubernetes): the
    first free of `cpu_slots` slots per GPU, memory growing as needed; how many workers run is the
    deployment's replica count (`python -m search run` passes its packed workers a number instead)."""
    gpus = visible_gpus(cuda_visible_devices)
    auto = per_gpu == "auto"
    placement = claim(lock_dir, gpus, cpu_slots(len(gpus)) if auto else int(per_gpu))
    if auto and placement.gpu is not None:
        placement = dataclasses.replace(placement, memory_fraction=None, grow=True)
    apply(placement)
    return placement
