"""`python -m search validate NAME`: check a study file (and nothing else) without touching a store."""

from __future__ import annotations

import argparse

from search._cli import add_study_args, overrides
from search.settings import Settings
from search.spec import describe_fractions, load_spec

HELP = "check a study file"


def add_parser(sub: argparse._SubParsersAction, settings: Settings) -> None:
    add_study_args(sub.add_parser("validate", help=HELP), settings)


def run(args: argparse.Namespace, settings: Settings) -> int:
    spec = load_spec(args.name, studies_dir=settings.studies_dir, **overrides(args))
    print(f"{spec.name}: valid ({len(spec.space)} knobs, {len(spec.warm_start)} warm starts, hash {spec.space_hash()})")
    if spec.data_fractions:
        print(f"  fidelity by data: {describe_fractions(spec.data_fractions)}")
    return 0
