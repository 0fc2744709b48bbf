"""What the benchmarks that run whole studies as a user runs them (`python -m search ...`) share:
the scratch store and studies folder under `--workdir`, and `--rows`, the finished seeds of an
interrupted run (bench-confirm, bench-finetune)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path


def _root() -> Path:
    return Path(__file__).resolve().parents[1]


def add_run_args(parser: argparse.ArgumentParser, *, workdir: str, seeds: int) -> None:
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--seeds", type=int, default=seeds)
    # Given on the command line: the quick profile would cap an unstated budget at 60 (the main job's).
    parser.add_argument("--trials", type=int, default=100, help="the search's budget (fc_head's own: 100)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", default=workdir)
    parser.add_argument("--output", default="BENCHMARKS.md")
    parser.add_argument("--rows", default=None, help=(
        "a JSON-lines file of finished seeds: each seed's row is appended as it ends, and a seed already "
        "there is not run again (an interrupted run goes on where it stopped)"))


def scratch(args: argparse.Namespace) -> tuple[Path, Path, dict[str, str]]:
    """The work folder, its journal (a fresh store each run; the base and feature cache under
    artifacts/ stay) and the environment the commands run with."""
    work = Path(args.workdir).resolve()
    (work / "studies").mkdir(parents=True, exist_ok=True)
    journal = work / "studies.journal"
    journal.unlink(missing_ok=True)
    env = {**os.environ, "DATA_DIR": str(Path(args.data_dir).resolve()), "STUDIES_DIR": str(work / "studies"),
           "STORAGE": f"journal://{journal}", "ARTIFACTS_DIR": str(work / "artifacts"), "PYTHONPATH": str(_root())}
    return work, journal, env


def finished_rows(args: argparse.Namespace) -> list[dict]:
    path = Path(args.rows) if args.rows else None
    done = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path is not None and path.is_file() else []
    return [r for r in done if r["seed"] < args.seeds]


def save_row(args: argparse.Namespace, row: dict) -> None:
    if args.rows:
        with Path(args.rows).open("a") as f:
            f.write(json.dumps(row) + "\n")


def seeded_studies(args: argparse.Namespace, work: Path, study_file: str, prefix: str,
                   rows: list[dict]) -> Iterator[tuple[int, str]]:
    """(seed, study name) for each seed not in `rows`: the shipped study file with its TPE sampler
    seeded, written to the work folder's studies as `<prefix>_s<seed>`."""
    text = (_root() / "search" / "studies" / f"{study_file}.yaml").read_text()
    for seed in range(args.seeds):
        if any(r["seed"] == seed for r in rows):
            continue
        name = f"{prefix}_s{seed}"
        seeded = text.replace("sampler: tpe", f"sampler: {{name: tpe, seed: {seed}}}")
        (work / "studies" / f"{name}.yaml").write_text(seeded)
        yield seed, name
