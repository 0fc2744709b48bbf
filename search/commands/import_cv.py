"""`python -m search import-cv NAME FILE`: the best rows of an old scikit-learn search (cv_results_)
as warm starts of study NAME (search.commands._import_cv reads, maps and checks them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from search._cli import add_study_args, overrides
from search.commands._import_cv import enqueue, parse_mapping, plan_import
from search.settings import Settings
from search.spec import load_spec
from search.study import check_compatible, open_study

HELP = "enqueue the best configurations of an old scikit-learn search"


def add_parser(sub: argparse._SubParsersAction, settings: Settings) -> None:
    p = sub.add_parser("import-cv", help=HELP)
    add_study_args(p, settings)
    p.add_argument("file", help="cv_results_ saved by pandas as .csv or .json, or pickled (.pkl, --trust-pickle)")
    p.add_argument("--top-k", type=int, default=5, help="rows to import, best rank_test_score first")
    p.add_argument("--map", action="append", default=[], metavar="OLD=KNOB",
                   help="map an old parameter to a knob (OLD= ignores it); repeatable")
    p.add_argument("--trust-pickle", action="store_true", help="load a pickle (it runs code when loaded)")
    p.add_argument("--metric", default="score", help="the scorer of a multi-metric search (mean_test_<METRIC>)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    spec = load_spec(args.name, studies_dir=settings.studies_dir, **overrides(args))
    study = open_study(args.name, settings.store_url(args.storage))
    check_compatible(study, spec)
    # Every row is read and checked against the space before anything is enqueued.
    plan = plan_import(spec, Path(args.file), top_k=args.top_k, mapping=parse_mapping(args.map),
                       trust_pickle=args.trust_pickle, metric=args.metric)
    print("\n".join(enqueue(study, plan).lines(spec.name)))
    return 0
