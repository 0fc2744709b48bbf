"""Where a trial ran: backend, device, code version, accelerator memory.

A leaf any layer may import. It loads a backend only inside the functions that ask it something
(`device`, `accelerator_memory_mib`), and only the one Keras runs on: importing this module loads none.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


@functools.cache
def code_version() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        return rev or "unknown"
    except (OSError, subprocess.SubprocessError):
        try:
            return version("cnn-search")
        except PackageNotFoundError:
            return "unknown"


@functools.cache
def backend() -> str:
    """Keras's backend: "tensorflow", "jax" or "torch"."""
    import keras

    return keras.backend.backend()


def _jax_device():
    import jax

    return jax.local_devices()[0]


def _tensorflow():
    import tensorflow as tf

    return tf


@functools.cache
def device() -> str:
    if backend() == "jax":
        d = _jax_device()
        return f"{d.platform}:{getattr(d, 'device_kind', d.platform)}"
    if backend() == "tensorflow":
        gpus = _tensorflow().config.list_physical_devices("GPU")
        return f"gpu:{len(gpus)}" if gpus else "cpu"
    return backend()


@functools.cache
def cpu_bfloat16() -> bool:
    """Whether this machine's CPU computes bfloat16 natively (AVX512_BF16 or AMX): there the quick base
    trained 1.14x as fast under mixed_bfloat16 as under float32 (BENCHMARKS.md, the main job); elsewhere
    bfloat16 is emulated, and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = {word for line in f if line.startswith("flags") for word in line.split(":", 1)[1].split()}
    except OSError:  # not Linux
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def memory_bytes() -> int:
    """This machine's memory as this process may use it: MemTotal, or the cgroup's limit when lower
    (a container's memory limit, cgroup v2 or v1)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def rss_mib() -> float:
    """This process's resident memory now (MiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def accelerator_memory_mib() -> tuple[float, float] | None:
    """(in use, peak) MiB on this process's first GPU as its backend's allocator counts them; None on a CPU.

    JAX's and TensorFlow's allocators keep freed blocks for reuse, so nvidia-smi shows a high-water
    mark; "in use" is what live arrays hold, the figure that must not grow from trial to trial.
    """
    if "keras" not in sys.modules:  # nothing trained here (a trivial worker): no backend to load for this
        return None
    if not device().startswith("gpu"):
        return None
    mib = 2**20
    if backend() == "jax":
        stats = _jax_device().memory_stats() or {}
        if "bytes_in_use" not in stats:
            return None
        return stats["bytes_in_use"] / mib, stats.get("peak_bytes_in_use", stats["bytes_in_use"]) / mib
    try:
        info = _tensorflow().config.experimental.get_memory_info("GPU:0")
    except (ValueError, RuntimeError):
        return None
    return info["current"] / mib, info["peak"] / mib
