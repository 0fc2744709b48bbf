"""python -m search {run,create,status,validate,evaluate,import-cv,proxy,config,schema} ...

run: create the study if needed, then start --workers worker processes and print a study-level
counter until its budget is met. status: a readable summary, or one JSON object with --json.
config: the effective settings (environment variables), the store's password redacted.
Each subcommand is one module of search.commands.
"""

from __future__ import annotations

import argparse
import sys

from search._cli import settings_or_exit, setup_logging
from search.commands import COMMANDS
from search.errors import FATAL, FATAL_EXIT
from search.settings import Settings


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub, settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = settings_or_exit()
    args = _parser(settings).parse_args(argv)
    setup_logging()
    try:
        return COMMANDS[args.command].run(args, settings)
    except FATAL as exc:
        print(f"error: {exc}", file=sys.stderr)
        return FATAL_EXIT


if __name__ == "__main__":
    sys.exit(main())
