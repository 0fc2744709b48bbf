"""make bench-decode: decoding a large folder of one's own images, memory and time.

Generates N (100,000) 64x64 RGB JPEGs in class folders (no test folder, so 20% is held out) in a
temporary folder, then decodes them through the loader (load_dataset with a path: list, plan,
decode into arrays allocated once, cache) in a child process, and reads the child's peak RSS
(maxrss) against the decoded arrays' size; goal: at most 2x. Prints the figures and appends them
with the machine to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-decode-", dir=args.dir))
    try:
        made_s = generate(work / "images", args.images, args.size, args.classes, args.format)
        disk = sum(f.stat().st_size for f in (work / "images").rglob("*") if f.is_file())
        child, peak = decode_in_child(work / "images", work / "cache")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    publish(args.output, "bench-decode: a folder of one's own images, decoded once", "not used (no Keras)",
            report(args, made_s, child, peak, disk))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
