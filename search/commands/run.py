"""`python -m search run NAME` (`make study`): create the study if needed, then run worker processes
on this machine until its budget is met (search.commands._runner)."""

from __future__ import annotations

import argparse

from search._cli import add_stage_arg, add_study_args, overrides
from search.commands._runner import Runner
from search.commands.create import create
from search.settings import Settings
from search.spec import load_data, load_spec

HELP = "create if needed, then run workers until the budget is met"


def add_parser(sub: argparse._SubParsersAction, settings: Settings) -> None:
    p = sub.add_parser("run", help=HELP)
    add_study_args(p, settings)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-create", action="store_true", help="the study must already exist")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between counter lines")
    add_stage_arg(p)


def run(args: argparse.Namespace, settings: Settings) -> int:
    spec = load_spec(args.name, studies_dir=settings.studies_dir, **overrides(args))
    # The data is found and decoded before the study is created: a missing dataset then fails
    # before anything is written to the store, and the workers all read the decoded cache.
    data = load_data(spec, settings)
    if not args.no_create and args.stage == "search":  # the confirmation stage is made by `make evaluate`
        create(args, settings, spec, data)
    return Runner(args, settings, spec).run()
