"""make bench-decode: decoding a large folder of one's own images, memory and time; then the memory
of workers packed on one machine that train on it.

1. Generates N (100,000) 64x64 RGB JPEGs in class folders (no test folder, so 20% is held out) in a
   temporary folder, decodes them through the loader (load_dataset with a path: list, plan, decode
   into arrays allocated once, cache) in a child process, and reads the child's peak RSS (maxrss)
   against the decoded arrays' size; goal: at most 2x.
2. Packed workers (issue 26): W (4) worker processes on the cache at once, each as a worker's trial
   reads its data: load the dataset, split it (train/validation, 10%), read one epoch of batches of
   its training split, then train a small model on it with Keras's fit, held inside fit's first
   step. With every worker there, the parent reads each one's proportional set size (PSS:
   /proc/PID/smaps_rollup; a page mapped by k of them counts 1/k in each, so the sum counts a
   shared page once) and subtracts what each held before it touched the data (Python, TensorFlow,
   a warm-up fit on a few images). The sum of those increments against one copy of the training
   images is the figure, for INPUT_PIPELINE=stream (rows of the memory-mapped cache, Batches) and
   arrays (a split copied into each worker; Keras's array adapter copies it again per fit); goal
   for stream: at most 1.3x. RSS is printed too: it counts a shared page in every process.
Prints the figures and appends them with the machine to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import publish

# Run in the child: what the loader costs, nothing else (no Keras: the data layer does not need it).
CHILD = """
import json, logging, sys, time
from pathlib import Path
import data
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
rss_kib = int(next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS")).split()[1])
start = time.perf_counter()
ds = data.load_dataset(data.DatasetRef(path=sys.argv[1]), cache_dir=sys.argv[2])
seconds = time.perf_counter() - start
with data.final_evaluation():
    nbytes = ds.x_train.nbytes + ds.test_split()[0].nbytes
print(json.dumps({"seconds": seconds, "nbytes": nbytes, "import_rss_kib": rss_kib, "n_train": len(ds.y_train),
                  "n_test": ds.n_test, "shape": list(ds.input_shape)}))
"""


# Run in each packed worker (part 2): sync points on stdin/stdout, so that the parent measures every
# worker at the same moment, while all of them hold what they hold.
WORKER = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import data
from search.trial._batches import Batches  # search first: it loads psycopg2 before TensorFlow
import keras, numpy as np
mode, root, cache = sys.argv[1:4]

def sync(word):
    print(word, flush=True)
    sys.stdin.readline()

def model(shape):
    inputs = keras.Input(shape, dtype="uint8")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    out = keras.layers.Dense(10, activation="softmax")(x)
    m = keras.Model(inputs, out)
    m.compile("sgd", "sparse_categorical_crossentropy")
    return m

class Hold(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        sync("holding")

ds = data.load_dataset(data.DatasetRef(path=root), cache_dir=cache)
warm = np.zeros((64, *ds.input_shape), np.uint8)
model(ds.input_shape).fit(warm, np.zeros(64), batch_size=32, epochs=1, verbose=0)  # TensorFlow's own memory
sync("before")
splits = data.train_val_splits(ds, stream=mode == "stream")
m = model(splits.input_shape)
if splits.streamed:
    batches = Batches(splits.x_train, splits.y_train, 128, shuffle=True, seed=0)
    for i in range(len(batches)):  # an epoch's reads: every page of the split mapped into this worker
        batches[i]
    m.fit(batches, epochs=1, steps_per_epoch=1, verbose=0, callbacks=[Hold()])
else:
    for i in range(0, len(splits.x_train), 128):  # the same epoch's reads, from the copy
        splits.x_train[i:i + 128].sum()
    m.fit(splits.x_train, splits.y_train, batch_size=128, epochs=1, steps_per_epoch=1, verbose=0, callbacks=[Hold()])
print("done", flush=True)
"""


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of a process in KiB, from /proc/PID/smaps_rollup."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return int(fields["Pss"].split()[0]), int(fields["Rss"].split()[0])


def packed_workers(mode: str, workers: int, root: Path, cache: Path) -> dict:
    """Start `workers` WORKER processes, measure them all before and while they hold the data."""
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"), "CUDA_VISIBLE_DEVICES": ""}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, mode, str(root), str(cache)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(workers)]
    figures: dict[str, list[tuple[int, int]]] = {}
    started = time.perf_counter()
    try:
        for word in ("before", "holding"):
            for p in procs:
                line = p.stdout.readline().strip()
                if line != word:
                    raise SystemExit(f"a {mode} worker said {line!r}, not {word!r} (exit {p.poll()})")
            figures[word] = [_memory_kib(p.pid) for p in procs]
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
        for p in procs:
            if p.stdout.readline().strip() != "done" or p.wait(timeout=300) != 0:
                raise SystemExit(f"a {mode} worker failed (exit {p.poll()})")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    pss = sum(h[0] - b[0] for h, b in zip(figures["holding"], figures["before"], strict=True))
    rss = sum(h[1] - b[1] for h, b in zip(figures["holding"], figures["before"], strict=True))
    return {"mode": mode, "pss_kib": pss, "rss_kib": rss, "seconds": time.perf_counter() - started,
            "per_worker_pss_kib": [h[0] - b[0] for h, b in zip(figures["holding"], figures["before"], strict=True)]}


def generate(root: Path, n: int, size: int, classes: int, image_format: str) -> float:
    """n smooth random images (a gradient, a colour and some noise: JPEG sizes like photos'), in class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    start = time.perf_counter()
    for c in range(classes):
        (root / f"class_{c:02d}").mkdir(parents=True)
    for i in range(n):
        colour = rng.integers(0, 256, 3)
        field = np.outer(ramp, rng.random(size, dtype=np.float32))[..., None] * colour
        image = np.clip(field + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"class_{i % classes:02d}" / f"{i:06d}.{image_format}")
        if (i + 1) % 20_000 == 0:
            print(f"generated {i + 1:,} images ({time.perf_counter() - start:.0f} s)", flush=True)
    return time.perf_counter() - start


def decode_in_child(root: Path, cache: Path) -> tuple[dict, int]:
    """The child's own figures, and its peak RSS in bytes (ru_maxrss of the waited-for children, KiB)."""
    result = subprocess.run([sys.executable, "-c", CHILD, str(root), str(cache)], stdout=subprocess.PIPE, text=True,
                            check=False)  # its progress lines (stderr) show as they come
    if result.returncode != 0:
        raise SystemExit(f"the decoding child failed (exit {result.returncode})")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return json.loads(result.stdout.strip().splitlines()[-1]), peak


def packed_report(runs: list[dict], workers: int, copy_bytes: int) -> list[str]:
    mb = 1024 * 1024
    lines = [f"{workers} packed workers on the cache at once, each: split (10% validation), one epoch of batches "
             f"read, Keras fit held in its first step; one copy of the training images = {copy_bytes / mb:,.0f} MiB "
             "(all of the dataset's training array, the validation rows included)"]
    for run in runs:
        ratio = run["pss_kib"] * 1024 / copy_bytes
        goal = f" (goal: at most 1.3x: {'met' if ratio <= 1.3 else 'MISSED'})" if run["mode"] == "stream" else ""
        lines.append(f"  INPUT_PIPELINE={run['mode']}: {workers} workers hold {ratio:.2f}x one copy{goal}: summed PSS "
                     f"increments {run['pss_kib'] / 1024:,.0f} MiB (per worker: "
                     f"{', '.join(f'{k / 1024:,.0f}' for k in run['per_worker_pss_kib'])}); summed RSS increments "
                     f"{run['rss_kib'] / 1024:,.0f} MiB (a shared page counted in each); {run['seconds']:.0f} s")
    if len(runs) == 2:
        lines.append(f"  stream / arrays: {runs[0]['pss_kib'] / max(runs[1]['pss_kib'], 1):.2f}x the memory")
    return lines


def report(args: argparse.Namespace, made_s: float, child: dict, peak: int, disk: int) -> list[str]:
    from importlib.metadata import version

    mb = 1024 * 1024
    ratio = peak / child["nbytes"]
    h, w, c = child["shape"]
    return [
        f"{args.images:,} {h}x{w}x{c} {args.format.upper()}s in {args.classes} class folders, no test folder "
        f"({disk / mb:,.0f} MiB on disk; generated in {made_s:.0f} s); Pillow {version('Pillow')}, "
        f"numpy {np.__version__}, Python {platform.python_version()}; one run",
        f"decode + cache through load_dataset(DatasetRef(path=...)), in a child process: {child['seconds']:.1f} s "
        f"({args.images / child['seconds']:,.0f} images/s)",
        f"   train {child['n_train']:,} + held-out test {child['n_test']:,} images",
        f"decoded arrays (uint8): {child['nbytes'] / mb:,.0f} MiB",
        f"peak RSS of the child (maxrss): {peak / mb:,.0f} MiB = {ratio:.2f}x the arrays (goal: at most 2x: "
        f"{'met' if ratio <= 2 else 'MISSED'}); of it {child['import_rss_kib'] / 1024:,.0f} MiB before decoding "
        "(Python, numpy, the loader)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode")
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64, help="height and width of each image")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--format", choices=["jpg", "png"], default="jpg")
    parser.add_argument("--dir", default=None, help="where to generate (default: a temporary folder, removed after)")
    parser.add_argument("--workers", type=int, default=4, help="packed workers in part 2 (0: skip it)")
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-decode-", dir=args.dir))
    try:
        made_s = generate(work / "images", args.images, args.size, args.classes, args.format)
        disk = sum(f.stat().st_size for f in (work / "images").rglob("*") if f.is_file())
        child, peak = decode_in_child(work / "images", work / "cache")
        lines = report(args, made_s, child, peak, disk)
        if args.workers:
            runs = [packed_workers(mode, args.workers, work / "images", work / "cache") for mode in ("stream", "arrays")]
            copy_bytes = child["n_train"] * int(np.prod(child["shape"]))
            lines += packed_report(runs, args.workers, copy_bytes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    title = "bench-decode: a folder of one's own images, decoded once" + (
        f"; {args.workers} packed workers on it" if args.workers else "")
    publish(args.output, title, "tensorflow (packed workers)" if args.workers else "not used (no Keras)", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
