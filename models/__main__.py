"""python -m models list --dataset cifar10: one row per preset with its parameter counts."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _rows(dataset: str):
    from data import dataset_spec
    from models import PRESETS, build, count_params

    spec = dataset_spec(dataset)
    for preset in PRESETS.values():
        try:
            params = preset.params(input_shape=spec.input_shape, num_classes=spec.num_classes)
            total, trainable = count_params(build(params))
            yield preset, f"{total:,}", f"{trainable:,}", ""
        except ValueError as exc:  # the architecture does not fit this input shape
            yield preset, "-", "-", f"not buildable on {spec.input_shape}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models")
    sub = parser.add_subparsers(dest="command", required=True)
    list_cmd = sub.add_parser("list", help="list presets with parameter counts for a dataset")
    list_cmd.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100", "mnist"])
    args = parser.parse_args(argv)

    header = ("preset", "family", "seed", "total params", "trainable", "description")
    rows = [
        (p.name, p.family, p.source, total, trainable, note or p.summary) for p, total, trainable, note in _rows(args.dataset)
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
    print(f"presets on {args.dataset}")
    for row in [header, *rows]:
        cells = [str(c).rjust(w) if i in (3, 4) else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        print("  ".join(cells) + "  " + row[5])
    return 0


if __name__ == "__main__":
    sys.exit(main())
