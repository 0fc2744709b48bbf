"""make bench-confirm: the winner users get, with and without confirming the top trials.

fc_head with the quick profile on CIFAR-10 (DATA_DIR), searched once per `--seeds` sampler seed (TPE
seeded; the study's data seed, and so its base and feature cache, shared). For each search, the two
ways to pick what is tested, side by side on the same trials:
- top-1: `make evaluate` as it was, the search's best retrained over 3 seeds, then tested once;
- top-k: `make evaluate --top-k 5 --workers 2`, the 5 best confirmed over 3 seeds as trials of the
  confirmation stage on 2 workers, the best confirmed mean tested (`--retest`: a benchmark reads the
  test split of each pick, which a user's study would not).
It reports each pick's test accuracy, how much the search over-rated its best, and the wall time of
each evaluation (the confirmation's cost) on this machine. Everything runs as the commands a user
runs (`python -m search ...`), in a scratch store under `--workdir`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks.machine import publish, quiet_tensorflow
from benchmarks.runs import add_run_args, finished_rows, save_row, scratch, seeded_studies


def _cli(*args: str, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "search", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"python -m search {' '.join(args)} exited {run.returncode}:\n{run.stderr[-4000:]}")
    return seconds, run.stdout


def _record(name: str, env: dict[str, str]) -> dict:
    _, out = _cli("status", name, "--json", env=env)
    return json.loads(out)


def _brief(record: dict) -> dict:
    """What the table reads of an evaluation record."""
    return {"trial": record["trial"], "test_accuracy": record["test_accuracy"],
            "search_best_trial": record["search_best_trial"], "candidates": record["candidates"]}


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.confirm")
    add_run_args(parser, workdir="artifacts/bench-confirm", seeds=3)
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    work, _, env = scratch(args)
    common = ["--profile", "quick", "--dataset", "cifar10", "--trials", str(args.trials)]
    rows = finished_rows(args)
    for seed, name in seeded_studies(args, work, "fc_head", "fc_head_confirm", rows):
        search_s, _ = _cli("run", name, "--workers", str(args.workers), *common, env=env)
        top1_s, _ = _cli("evaluate", name, *common, "--top-k", "1", env=env)
        top1 = _record(name, env)["final_evaluation"]
        topk_s, _ = _cli("evaluate", name, *common, "--top-k", str(args.top_k), "--workers", str(args.workers),
                         "--retest", env=env)
        topk = _record(name, env)["final_evaluation"]
        best = next(c for c in topk["candidates"] if c["trial"] == topk["search_best_trial"])
        rows.append({"seed": seed, "search_s": search_s, "top1": top1, "top1_s": top1_s, "topk": topk,
                     "topk_s": topk_s, "over_rating": best["over_rating"]})
        save_row(args, {k: rows[-1][k] for k in ("seed", "search_s", "top1_s", "topk_s", "over_rating")}
                 | {"top1": _brief(top1), "topk": _brief(topk)})
        print(json.dumps(rows[-1]["topk"]["candidates"]), flush=True)
        print(f"seed {seed}: search {search_s:.0f} s; top-1 trial {top1['trial']} test {top1['test_accuracy']:.4f} "
              f"({top1_s:.0f} s); top-{args.top_k} pick trial {topk['trial']} test {topk['test_accuracy']:.4f} "
              f"({topk_s:.0f} s)", flush=True)
    rows.sort(key=lambda r: r["seed"])
    lines = [f"fc_head, quick profile, CIFAR-10 ({args.trials} trials a search, {args.workers} workers), "
             f"sampler seeds 0-{args.seeds - 1}; the top-1 pick (make evaluate --top-k 1: the search's best, 3 seeds) "
             f"against the top-{args.top_k} confirmed pick (3 seeds each, as trials on {args.workers} workers):"]
    for r in rows:
        lines.append(
            f"  seed {r['seed']}: search {r['search_s']:.0f} s, best trial {r['top1']['trial']} over-rated by "
            f"{r['over_rating']:+.4f}; top-1 test {r['top1']['test_accuracy']:.4f} (evaluate {r['top1_s']:.0f} s); "
            f"top-{args.top_k} pick trial {r['topk']['trial']}"
            f"{' (the same)' if r['topk']['trial'] == r['top1']['trial'] else ''} test "
            f"{r['topk']['test_accuracy']:.4f} (evaluate {r['topk_s']:.0f} s)")
    mean = statistics.mean
    lines.append(f"  mean test accuracy: top-1 {mean(r['top1']['test_accuracy'] for r in rows):.4f}, top-{args.top_k} "
                 f"confirmed {mean(r['topk']['test_accuracy'] for r in rows):.4f} "
                 f"({mean(r['topk']['test_accuracy'] - r['top1']['test_accuracy'] for r in rows):+.4f}); the "
                 f"confirmation's wall time {mean(r['topk_s'] for r in rows):.0f} s against "
                 f"{mean(r['top1_s'] for r in rows):.0f} s for the top-1's evaluation "
                 f"({mean(r['topk_s'] / r['top1_s'] for r in rows):.1f}x), {mean(r['search_s'] for r in rows):.0f} s "
                 "for the search itself")
    publish(args.output, f"bench-confirm: the top-1 pick against the top-{args.top_k} confirmed pick",
            os.environ.get("KERAS_BACKEND", "tensorflow"), lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
