"""`python -m search refit NAME --output model.keras` (`make refit`): the best configuration trained
once on all the training data, for scikit-learn's `refit` (search.sklearn.SearchCV.best_estimator_)
and for whoever wants the model without testing it (search.commands._refit)."""

from __future__ import annotations

import argparse
from pathlib import Path

from search._cli import add_study_args, overrides
from search.settings import Settings
from search.spec import load_spec
from search.study import check_compatible, open_study

HELP = "train the best configuration on all the training data and save the model (no test)"


def add_parser(sub: argparse._SubParsersAction, settings: Settings) -> None:
    p = sub.add_parser("refit", help=HELP)
    add_study_args(p, settings)
    p.add_argument("--output", type=Path, required=True, help="where to write the model (.keras)")
    p.add_argument("--trial", type=int, default=None, help="this trial's configuration instead of the best's")


def run(args: argparse.Namespace, settings: Settings) -> int:
    spec = load_spec(args.name, studies_dir=settings.studies_dir, **overrides(args))
    study = open_study(args.name, settings.store_url(args.storage))
    check_compatible(study, spec)
    # Keras loads here, and only for this command (and evaluate): every other command starts without a backend.
    from search.commands._refit import refit

    record = refit(spec, study, settings, args.output, trial=args.trial)
    print(f"study {spec.name}: trial {record['trial']}'s configuration trained on all {record['n_train']} training "
          f"images for {record['epochs']} epochs in {record['seconds']:.1f} s (no validation: the search's best "
          f"epoch); model written to {record['path']}")
    return 0
