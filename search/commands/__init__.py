"""The subcommands of `python -m search`, one module each.

Each module declares `add_parser(sub, settings)` (its arguments) and `run(args, settings) -> int`.
Their module-level imports never load a deep-learning backend, so `status`, `config` or `schema`
start in a second; the commands that train (`evaluate`, `refit`) import their training where they run.
"""

from __future__ import annotations

from search.commands import config, create, evaluate, import_cv, proxy, refit, run, schema, status, validate

# The order `python -m search --help` lists them in.
COMMANDS = {
    "run": run,
    "create": create,
    "status": status,
    "validate": validate,
    "evaluate": evaluate,
    "refit": refit,
    "import-cv": import_cv,
    "proxy": proxy,
    "config": config,
    "schema": schema,
}

__all__ = ["COMMANDS"]
