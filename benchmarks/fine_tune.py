"""make bench-finetune: the head search alone against the head search + the fine-tuning stage.

The shipped `fc_head_ft` (fc_head's head search, then its 5 best heads fine-tuned for 3 epochs with
the base's last 1-2 blocks unfrozen) with the quick profile on CIFAR-10 (DATA_DIR), run once per
`--seeds` sampler seed (TPE seeded; the base and its feature cache shared) by `python -m search run`
with `--workers` workers, as a user runs it. One run gives both arms, side by side on the same
trials: the head search alone is the run up to its last head trial (its best validation accuracy,
its wall time from the first trial's start), the head search + fine-tuning is the whole run (the
best of either stage, the wall time to the last fine-tuning trial). The one-time base training is
the same for both and reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import publish, quiet_tensorflow
from benchmarks.runs import add_run_args, finished_rows, save_row, scratch, seeded_studies


def _run(name: str, args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "search", "run", name, *args], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"python -m search run {name} exited {run.returncode}:\n{run.stderr[-4000:]}")
    return time.perf_counter() - started


def _stages(name: str, journal: Path) -> dict:
    """Each stage's best validation value and wall time, read from the study's trials."""
    import optuna

    from storage import attrs, open_storage

    study = optuna.load_study(study_name=name, storage=open_storage(f"journal://{journal}"))
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    heads = [t for t in trials if t.user_attrs.get(attrs.STAGE) != "fine_tune"]
    tuned = [t for t in trials if attrs.PROMOTED_FROM in t.user_attrs]
    start = min(t.datetime_start for t in trials)

    def best(group):
        return max((t.value for t in group if t.state.name == "COMPLETE"), default=float("nan"))

    return {"head_best": best(heads), "all_best": best(trials),
            "head_s": (max(t.datetime_complete for t in heads) - start).total_seconds(),
            "all_s": (max(t.datetime_complete for t in trials) - start).total_seconds(),
            "tuned": [{"trial": t.number, "from": t.user_attrs[attrs.PROMOTED_FROM], "state": t.state.name,
                       "value": t.value, "head_value": study.trials[t.user_attrs[attrs.PROMOTED_FROM]].value,
                       "unfreeze": t.params.get("fine_tune_unfreeze_blocks"),
                       "lr": t.params.get("fine_tune_learning_rate")} for t in tuned]}


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fine_tune")
    add_run_args(parser, workdir="artifacts/bench-finetune", seeds=2)
    args = parser.parse_args(argv)
    work, journal, env = scratch(args)
    common = ["--profile", "quick", "--dataset", "cifar10", "--workers", str(args.workers), "--poll", "1",
              "--trials", str(args.trials)]
    rows = finished_rows(args)
    for seed, name in seeded_studies(args, work, "fc_head_ft", "fc_head_ft", rows):
        run_s = _run(name, common, env)
        rows.append({"seed": seed, "run_s": run_s, **_stages(name, journal)})
        save_row(args, rows[-1])
        print(json.dumps(rows[-1]), flush=True)
    rows.sort(key=lambda r: r["seed"])
    lines = [f"fc_head_ft, quick profile, CIFAR-10 ({args.trials} head trials, then the 5 best heads "
             f"fine-tuned for 3 epochs on the search's 5,000 images; {args.workers} workers), sampler seeds "
             f"0-{args.seeds - 1}; wall times from the first trial's start (the base, trained once, apart):"]
    for r in rows:
        tuned = "; ".join(f"head {t['from']} {t['head_value']:.4f} -> "
                          f"{'' if t['state'] == 'COMPLETE' else t['state'].lower() + ' at '}"
                          f"{'-' if t['value'] is None else format(t['value'], '.4f')} "
                          f"({t['unfreeze']} block(s), lr {t['lr']:.1e})" for t in r["tuned"])
        lines.append(f"  seed {r['seed']}: head search alone best {r['head_best']:.4f} in {r['head_s']:.0f} s; "
                     f"+ fine-tuning best {r['all_best']:.4f} in {r['all_s']:.0f} s (the run: {r['run_s']:.0f} s)")
        lines.append(f"    {tuned}")
    mean = statistics.mean
    lines.append(f"  mean: head search alone {mean(r['head_best'] for r in rows):.4f} in "
                 f"{mean(r['head_s'] for r in rows):.0f} s;"
                 f" + fine-tuning {mean(r['all_best'] for r in rows):.4f} in {mean(r['all_s'] for r in rows):.0f} s "
                 f"({mean(r['all_best'] - r['head_best'] for r in rows):+.4f} best validation accuracy at "
                 f"{mean(r['all_s'] / r['head_s'] for r in rows):.2f}x the wall time)")
    publish(args.output, "bench-finetune: the head search alone against the head search + fine-tuning",
            os.environ.get("KERAS_BACKEND", "tensorflow"), lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
