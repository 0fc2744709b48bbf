"""How a study's confirmation of its top trials reads in a terminal: `make evaluate` as it ends and
`make status` afterwards, from the record `evaluate` stores (attrs.FINAL_EVALUATION)."""

from __future__ import annotations

from typing import Any


def confirmation_lines(record: dict[str, Any]) -> list[str]:
    """Each candidate's search value, confirmed mean ± spread and over-rating, the pick marked; a
    warning when the pick is not the search's best. Nothing for a study that confirmed one trial."""
    candidates = record.get("candidates") or []
    if len(candidates) < 2:
        return []
    lines = [f"confirmed the top {len(candidates)} trials over {len(record['seeds'])} seeds each on the "
             f"training split ({record['metric']}):"]
    lines += [f"  trial {c['trial']}: search {c['search_value']:.4f}, confirmed {c['confirmed_mean']:.4f} "
              f"± {c['confirmed_std']:.4f}, over-rated by {c['over_rating']:+.4f}"
              f"{'  <- picked' if c['trial'] == record['trial'] else ''}" for c in candidates]
    if record["trial"] != record["search_best_trial"]:
        lines.append(f"warning: the confirmed winner is trial {record['trial']}, not the search's best "
                     f"(trial {record['search_best_trial']})")
    return lines


def evaluation_summary(record: dict[str, Any] | None, reads: int) -> dict[str, Any] | None:
    """What `status --json` says of the final evaluation: the pick, its test figure, the candidates."""
    if not record:
        return None
    return {"trial": record["trial"], "search_best_trial": record.get("search_best_trial", record["trial"]),
            "test_accuracy": record["test_accuracy"], "n_test": record["n_test"], "metric": record.get("metric"),
            "val_metric_mean": record.get("val_metric_mean"), "val_metric_std": record.get("val_metric_std"),
            "test_reads": reads, "candidates": record.get("candidates", [])}
