"""python -m search.worker NAME: pull trials of an existing study until its budget is met.

The same entry point runs as a local process (`make worker`, `make study`), in a compose service
and in a Kubernetes work-queue Job: it exits 0 once the budget is met and no trial it counts can
still need a retry, 2 (`FATAL_EXIT`) on an error a restart cannot fix.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import zlib
from typing import Any

from search._cli import add_stage_arg, add_study_args, settings_or_exit, setup_logging
from search.errors import FATAL, FATAL_EXIT
from search.settings import Settings
from search.worker._loop import RECYCLE
from search.worker._placement import place_worker

logger = logging.getLogger("search.worker")


def run_worker(name: str, settings: Settings, *, storage_url: str | None = None, worker_index: int = 0,
               prepare_only: bool = False, stage: str = "search", **spec_overrides: Any) -> str | int | None:
    """Pull trials until the budget is met: None, RECYCLE (go on in a fresh process), or the exit
    code of a stop by a signal. prepare_only: train the base and cache its features (a feature-cache
    study), then exit; `python -m search run` does this once, with every CPU thread, before it
    starts workers that each get a share of the cores."""
    artifacts = settings.artifacts()
    placement = place_worker(artifacts.root / "gpu-slots", per_gpu=settings.workers_per_gpu,
                             cuda_visible_devices=settings.cuda_visible_devices)
    # THE lazy boundary: settings (the backend's log level, set by settings_or_exit) -> placement
    # (CUDA_VISIBLE_DEVICES) -> Keras, which the session's module loads; nothing above loads a backend.
    from search.worker._session import WorkerSession

    with WorkerSession.open(name, settings, placement, artifacts, storage_url=storage_url, worker_index=worker_index,
                            stage=stage, **spec_overrides) as session:
        if session.budget_met():
            return None
        if session.prepare(only=prepare_only) and prepare_only:
            logger.info("%s: study %s is ready for its workers", session.label, name)
        elif not prepare_only and not session.stop.is_set():
            outcome = session.loop()
            if outcome is not None:
                return outcome
        return session.stop.exit_code()


def default_index() -> int:
    """A worker started without an index (a compose replica, a Kubernetes pod) still seeds its
    sampler apart from its peers: from its host name and process id."""
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 100_000


def main(argv: list[str] | None = None) -> int:
    settings = settings_or_exit()
    parser = argparse.ArgumentParser(prog="python -m search.worker")
    add_study_args(parser, settings)
    parser.add_argument("--worker-index", type=int, default=settings.worker_index)
    parser.add_argument("--prepare", action="store_true",
                        help="only train the study's base and cache its features, then exit")
    add_stage_arg(parser)
    args = parser.parse_args(argv)
    if args.worker_index is None:
        args.worker_index = default_index()
    setup_logging(prefix=f"[w{args.worker_index}] ")
    try:
        outcome = run_worker(args.name, settings, storage_url=args.storage, worker_index=args.worker_index,
                             prepare_only=args.prepare, stage=args.stage, dataset=args.dataset, trials=args.trials, epochs=args.epochs,
                             profile=args.profile)
    except FATAL as exc:
        print(f"error: {exc}", file=sys.stderr)
        return FATAL_EXIT
    if isinstance(outcome, int):
        return outcome  # stopped by a signal
    if outcome == RECYCLE:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # Same PID and arguments; the GPU slot lock (not inherited) is claimed afresh.
        os.execv(sys.executable, [sys.executable, "-m", "search.worker", *(argv if argv is not None else sys.argv[1:])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
