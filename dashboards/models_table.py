"""python -m dashboards.models_table --dataset cifar10: one row per preset with its parameter counts
on that dataset's images (`make models`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from data import DATASETS, dataset_spec
from models import PRESETS, Preset, build, count_params

HEADER = ("preset", "family", "seed", "total params", "trainable", "description")


def rows(dataset: str) -> Iterator[tuple[str, str, str, str, str, str]]:
    """A row per preset: its counts on dataset, or why it cannot be built on that input shape."""
    spec = dataset_spec(dataset)
    for preset in PRESETS.values():
        try:
            params = preset.params(input_shape=spec.input_shape, num_classes=spec.num_classes)
            total, trainable = count_params(build(params))
            yield _row(preset, f"{total:,}", f"{trainable:,}", preset.summary)
        except ValueError as exc:  # the architecture does not fit this input shape
            yield _row(preset, "-", "-", f"not buildable on {spec.input_shape}: {exc}")


def _row(preset: Preset, total: str, trainable: str, note: str) -> tuple[str, str, str, str, str, str]:
    return (preset.name, preset.family, preset.source, total, trainable, note)


def render(dataset: str, table: list[tuple[str, ...]]) -> str:
    """The table, columns aligned (counts right-aligned), the description last and unpadded."""
    widths = [max(len(str(r[i])) for r in [HEADER, *table]) for i in range(5)]
    lines = [f"presets on {dataset}"]
    for row in [HEADER, *table]:
        cells = [str(c).rjust(w) if i in (3, 4) else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells) + "  " + row[5])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.models_table",
                                     description="the presets with total and trainable parameter counts")
    parser.add_argument("--dataset", default="cifar10", choices=list(DATASETS))
    args = parser.parse_args(argv)
    print(render(args.dataset, list(rows(args.dataset))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
