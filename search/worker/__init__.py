"""One worker process (`python -m search.worker NAME`): GPU placement, the session, the trial loop,
memory and recycling, the heartbeat and reaper threads, signals.

The lazy boundary of the service: a worker reads its Settings, sets the backend's log level and its
GPU placement, and only then loads Keras (search.worker.__main__ imports the session, which imports
search.trial). So nothing this package's `__init__` imports may load a backend.
"""

from search.worker._liveness import Background, Liveness
from search.worker._loop import RECYCLE, LoopLimits, run_loop, worker_label
from search.worker._placement import GROW_ENV, card_memory_mib, cpu_slots, visible_gpus
from search.worker._signals import StopFlag

__all__ = [
    "GROW_ENV",
    "RECYCLE",
    "Background",
    "Liveness",
    "LoopLimits",
    "StopFlag",
    "card_memory_mib",
    "cpu_slots",
    "run_loop",
    "visible_gpus",
    "worker_label",
]
