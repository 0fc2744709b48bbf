"""`python -m search config`: the effective settings (environment variables), the store's password redacted."""

from __future__ import annotations

import argparse

from search.settings import Settings, markdown_table

HELP = "the effective settings, password redacted"


def add_parser(sub: argparse._SubParsersAction, settings: Settings) -> None:
    p = sub.add_parser("config", help=HELP)
    p.add_argument("--markdown", action="store_true", help="the README's table of variables")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print(markdown_table())
        return 0
    for name, value in settings.redacted().items():
        print(f"{name.upper()}={'' if value is None else value}")
    return 0
