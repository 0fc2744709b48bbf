"""The machine a benchmark ran on, and appending its figures to BENCHMARKS.md."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

from benchmarks import current


def quiet_tensorflow() -> None:
    """TensorFlow's C++ log at warnings and above; call before anything loads TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def machine_description(backend: str) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    from importlib.metadata import version

    versions = ", ".join(f"{p} {version(p)}" for p in ("keras", "tensorflow", "optuna") if _installed(p))
    return (f"{cpu}, {os.cpu_count()} cores{mem}, {_gpu()}; Python {platform.python_version()}, "
            f"{versions}; Keras backend {backend}")


def _gpu() -> str:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "no GPU"
    return f"GPU: {out.splitlines()[0]}" if out else "no GPU"


def _installed(package: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(package)
        return True
    except PackageNotFoundError:
        return False


def append_benchmark(path: str | os.PathLike, title: str, machine: str, lines: list[str]) -> None:
    target = Path(path)
    header = "" if target.exists() else "# Benchmarks\n\nFigures appended by the `make bench-*` targets; newest last.\n"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = [f"\n## {title} ({stamp})\n", f"Machine: {machine}\n", "```", *lines, "```\n"]
    with open(target, "a") as f:
        f.write(header + "\n".join(block))


def publish(path: str | os.PathLike, title: str, backend: str, lines: list[str]) -> None:
    """Print a benchmark's lines, append them with the machine to BENCHMARKS.md and update its current figures."""
    print("\n".join(lines), flush=True)
    append_benchmark(path, title, machine_description(backend), lines)
    print(f"appended to {path}")
    if current.update(path):
        print(f"updated the current-figures table in {path}")
