"""python -m search {run,create,status,validate,evaluate,import-cv,schema,config,proxy} ...

run: create the study if needed, then start --workers worker processes and print a study-level
counter until its budget is met. status: a readable summary, or one JSON object with --json.
config: the effective settings (environment variables), the store's password redacted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from search._cli_common import add_study_args, overrides, settings_or_exit, setup_logging
from search.errors import FATAL, FATAL_EXIT
from search.settings import Settings, markdown_table

logger = logging.getLogger("search")


def _load_data(spec, settings: Settings):
    from data import load_dataset

    return load_dataset(spec.dataset_ref, label_mode=spec.label_mode, data_dir=settings.data_dir,
                        cache_dir=settings.data_cache, allow_download=not settings.data_offline)


def _check_preset_fits(spec, data) -> None:
    """A preset built once on the user's data with its default knobs: images too small for its
    downsampling fail here, before the store is touched, rather than in every trial."""
    from models import build
    from search._space import trial_config
    from search.errors import StudySpecError

    try:
        build(trial_config(spec, {}, input_shape=data.input_shape, num_classes=data.num_classes).model)
    except ValueError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = next((line for line in lines if "output size" in line), lines[0] if lines else type(exc).__name__)
        raise StudySpecError("architecture", (
            f"{spec.architecture} cannot be built on the {'x'.join(map(str, data.input_shape))} images of "
            f"{spec.dataset_ref} ({why[:200]}); choose an architecture with fewer downsampling stages, or give "
            "the dataset a larger image_size")) from None


def cmd_create(args: argparse.Namespace, settings: Settings, spec=None, data=None):
    from data import dataset_spec
    from search._spec import load_spec
    from search._study import create_study
    from storage import describe, open_storage

    # A bad file fails here, before the store is touched; so does data of the user's own (read and checked here).
    spec = spec or load_spec(args.name, studies_dir=settings.studies_dir, **overrides(args))
    if data is None and (spec.builder_files or not spec.dataset_ref.named):
        data = _load_data(spec, settings)
    if spec.builder_files:  # a model of the user's: built once on the data's shape, before the store is touched
        from search._space import check_builders

        check_builders(spec, input_shape=data.input_shape, num_classes=data.num_classes)
    elif data is not None and not spec.dataset_ref.named:
        _check_preset_fits(spec, data)
    url = settings.store_url(args.storage)
    described = (data.description if data is not None
                 else dataset_spec(spec.dataset, label_mode=spec.label_mode).describe())
    study = create_study(spec, open_storage(url, create_schema=True), dataset_description=described)
    base = spec.feature_cache and spec.feature_cache.base
    print(f"study {spec.name}: {spec.architecture}{f' (conv base: {base})' if base else ''} on {spec.dataset}, "
          f"budget {spec.trials} trials, <= {spec.max_epochs} epochs each, sampler {spec.sampler}, "
          f"pruner {spec.pruner}; {describe(url)}")
    return study


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from search._runner import Runner
    from search._spec import load_spec

    spec = load_spec(args.name, studies_dir=settings.studies_dir, **overrides(args))
    # The data is found and decoded before the study is created: a missing dataset then fails
    # before anything is written to the store, and the workers all read the decoded cache.
    data = _load_data(spec, settings)
    if not args.no_create:
        cmd_create(args, settings, spec, data)
    return Runner(args, settings, spec).run()


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from search._study import counter_line, counts, load_existing
    from storage import attrs, describe, open_storage

    url = settings.store_url(args.storage)
    study = load_existing(args.name, open_storage(url))
    c = counts(study)
    if args.json:
        print(json.dumps({k: c[k] for k in ("study", "n_complete", "n_pruned", "n_fail", "n_running",
                                             "n_waiting", "best_value", "best_params", "best_trial", "stopped")}))
        return 0
    print(counter_line(c))
    print(f"  {describe(url)}; {c['n_waiting']} waiting (enqueued)")
    if c["best_params"]:
        print("  best params: " + ", ".join(f"{k}={v}" for k, v in c["best_params"].items()))
    failed = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(attrs.FAIL_REASON)]
    for t in failed[-5:]:
        print(f"  trial {t.number} failed ({t.user_attrs[attrs.FAIL_REASON]}): "
              f"{t.user_attrs.get(attrs.FAIL_MESSAGE, '')}")
    for line in time_lines(study):
        print(line)
    return 0


def time_lines(study) -> list[str]:
    """Where the trials' time went: seconds per phase summed over the trials (attrs.TIME_BREAKDOWN)."""
    from storage import attrs

    timed = [t.user_attrs[attrs.TIME_BREAKDOWN] for t in study.get_trials(deepcopy=False)
             if isinstance(t.user_attrs.get(attrs.TIME_BREAKDOWN), dict)]
    totals = {phase: sum(float(b.get(phase, 0.0)) for b in timed) for phase in attrs.TIME_PHASES}
    whole = sum(totals.values())
    if not whole:
        return []
    return [f"  time of {len(timed)} trials, {whole:,.1f} s in all:",
            *(f"    {phase:<11}{s:>10,.1f} s {s / whole:>6.1%}" for phase, s in totals.items())]


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from search._evaluate import evaluate
    from search._spec import load_spec
    from search._study import check_compatible, load_existing
    from storage import open_storage

    spec = load_spec(args.name, studies_dir=settings.studies_dir, **overrides(args))
    study = load_existing(args.name, open_storage(settings.store_url(args.storage)))
    check_compatible(study, spec)
    seeds = tuple(range(args.seeds))
    record = evaluate(spec, study, settings, store_url=settings.store_url(args.storage), seeds=seeds)
    per_seed = ", ".join(f"{a:.4f}" for a in record["val_accuracy_per_seed"])
    print(f"study {spec.name}, best trial {record['trial']} (search value {record['study_best_value']:.4f})")
    print(f"validation accuracy over {len(seeds)} seeds: {record['val_accuracy_mean']:.4f} "
          f"± {record['val_accuracy_std']:.4f} ({per_seed})")
    print(f"test accuracy (evaluated once): {record['test_accuracy']:.4f} on {record['n_test']} images")
    worst = sorted(zip(record["per_class_accuracy"], record["class_names"]))[:3]
    print("weakest classes: " + ", ".join(f"{n} {a:.3f}" for a, n in worst))
    print(f"stored with the study: final model (artifact {record['model_artifact_id']}), confusion matrix, "
          f"per-class accuracy (artifact {record['evaluation_artifact_id']})")
    return 0


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    from search._spec import load_spec

    spec = load_spec(args.name, studies_dir=settings.studies_dir, **overrides(args))
    print(f"{spec.name}: valid ({len(spec.space)} knobs, {len(spec.warm_start)} warm starts, hash {spec.space_hash()})")
    return 0


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print(markdown_table())
        return 0
    for name, value in settings.redacted().items():
        print(f"{name.upper()}={'' if value is None else value}")
    return 0


def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    from search._spec import study_json_schema

    print(json.dumps(study_json_schema(), indent=2))
    return 0


def cmd_proxy(args: argparse.Namespace, settings: Settings) -> int:
    """Optuna's gRPC storage proxy in front of the RDB store named by --storage or STORAGE."""
    from storage import StorageConfigError, proxy, redact

    if not (args.storage or settings.storage):
        raise StorageConfigError("no store: pass --storage or set STORAGE to the RDB store, "
                                 "postgresql+psycopg2://user@host:5432/db")
    url = proxy.check_rdb_url(settings.store_url(args.storage))
    storage = proxy.open_backend(url, threads=args.threads)
    logger.info("serving %s", redact(url))
    proxy.serve(storage, host=args.host, port=args.port, threads=args.threads)
    return 0


def cmd_import_cv(args: argparse.Namespace, settings: Settings) -> int:
    """The best rows of an old scikit-learn search (cv_results_) as warm starts of study NAME."""
    from pathlib import Path

    from search._import_cv import enqueue, parse_mapping, plan_import
    from search._spec import load_spec
    from search._study import check_compatible, load_existing
    from storage import open_storage

    spec = load_spec(args.name, studies_dir=settings.studies_dir, **overrides(args))
    study = load_existing(args.name, open_storage(settings.store_url(args.storage)))
    check_compatible(study, spec)
    # Every row is read and checked against the space before anything is enqueued.
    plan = plan_import(spec, Path(args.file), top_k=args.top_k, mapping=parse_mapping(args.map),
                       trust_pickle=args.trust_pickle, metric=args.metric)
    print("\n".join(enqueue(study, plan).lines(spec.name)))
    return 0


def _import_cv_parser(sub: argparse._SubParsersAction, settings: Settings) -> None:
    p = sub.add_parser("import-cv", help="enqueue the best configurations of an old scikit-learn search")
    add_study_args(p, settings)
    p.add_argument("file", help="cv_results_ saved by pandas as .csv or .json, or pickled (.pkl, --trust-pickle)")
    p.add_argument("--top-k", type=int, default=5, help="rows to import, best rank_test_score first")
    p.add_argument("--map", action="append", default=[], metavar="OLD=KNOB",
                   help="map an old parameter to a knob (OLD= ignores it); repeatable")
    p.add_argument("--trust-pickle", action="store_true", help="load a pickle (it runs code when loaded)")
    p.add_argument("--metric", default="score", help="the scorer of a multi-metric search (mean_test_<METRIC>)")


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("run", "create if needed, then run workers until the budget is met"),
                           ("create", "create the study (idempotent) and enqueue warm starts"),
                           ("status", "summary of a study"), ("validate", "check a study file"),
                           ("evaluate", "retrain the best trial with several seeds, then test once")):
        p = sub.add_parser(name, help=helptext)
        add_study_args(p, settings)
        if name == "run":
            p.add_argument("--workers", type=int, default=1)
            p.add_argument("--no-create", action="store_true", help="the study must already exist")
            p.add_argument("--poll", type=float, default=2.0, help="seconds between counter lines")
        if name == "evaluate":
            p.add_argument("--seeds", type=int, default=3, help="retrains of the best trial (at least 3)")
        if name == "status":
            p.add_argument("--json", action="store_true")
    proxy = sub.add_parser("proxy", help="Optuna's gRPC storage proxy in front of the RDB store (STORAGE)")
    proxy.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    proxy.add_argument("--port", type=int, default=13000)
    proxy.add_argument("--storage", default=None, help="the RDB store URL (default: $STORAGE)")
    proxy.add_argument("--threads", type=int, default=10, help="server threads, and database connections")
    config = sub.add_parser("config", help="the effective settings, password redacted")
    config.add_argument("--markdown", action="store_true", help="the README's table of variables")
    sub.add_parser("schema", help="the study file's JSON Schema, for editors")
    _import_cv_parser(sub, settings)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "run": cmd_run, "create": lambda a, s: cmd_create(a, s) and 0, "status": cmd_status, "validate": cmd_validate,
    "evaluate": cmd_evaluate, "config": cmd_config, "proxy": cmd_proxy, "schema": cmd_schema,
    "import-cv": cmd_import_cv,
}


def main(argv: list[str] | None = None) -> int:
    settings = settings_or_exit()
    args = _parser(settings).parse_args(argv)
    setup_logging()
    try:
        return COMMANDS[args.command](args, settings)
    except FATAL as exc:
        print(f"error: {exc}", file=sys.stderr)
        return FATAL_EXIT


if __name__ == "__main__":
    sys.exit(main())
