"""`python -m search schema`: the study file's JSON Schema, for editors."""

from __future__ import annotations

import argparse
import json

from search.settings import Settings
from search.spec import study_json_schema

HELP = "the study file's JSON Schema, for editors"


def add_parser(sub: argparse._SubParsersAction, settings: Settings) -> None:
    sub.add_parser("schema", help=HELP)


def run(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(study_json_schema(), indent=2))
    return 0
