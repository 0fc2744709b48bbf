"""Reading an old scikit-learn search's `cv_results_` (RandomizedSearchCV/GridSearchCV), as pandas
saves it (`.to_csv`: read with the csv module; `.to_json` in its orientations: read with json) or
pickled (read only when trusted: loading a pickle runs code), into rows: each configuration's
`param_<name>` values and its mean, std and rank of the test score. search.commands._import_cv maps them to
a study's knobs.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import FatalError

logger = logging.getLogger(__name__)

SUFFIXES = (".csv", ".json", ".pkl", ".pickle")
_MISSING_TEXT = ("", "nan", "NaN", "--", "None")  # how pandas writes a masked or NaN cell


class CvImportError(FatalError, ValueError):
    """A results file that cannot be imported: unreadable, untrusted, or outside the study's space."""


# --- reading: row index -> {column: value} ----------------------------------------------------------


def read_records(path: Path, *, trust_pickle: bool = False) -> dict[int, dict[str, Any]]:
    """`cv_results_` as saved by pandas (`.to_csv`, `.to_json`) or pickled, one record per row."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CvImportError(f"{path}: unknown kind of file; expected cv_results_ saved as {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise CvImportError(f"{path}: no such file")
    if suffix in (".pkl", ".pickle"):
        return _read_pickle(path, trust=trust_pickle)
    return _read_csv(path) if suffix == ".csv" else _read_json(path)


def from_text(text: str) -> Any:
    """A CSV cell as the value pandas wrote: a Python literal ('0.001', '(512, 256)', 'True'), else
    the text itself ('adam'); an empty or NaN cell (a masked parameter) is None."""
    if text.strip() in _MISSING_TEXT:
        return None
    try:
        return ast.literal_eval(text.strip())  # literals only: never runs code
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _read_csv(path: Path) -> dict[int, dict[str, Any]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    first = (reader.fieldnames or [""])[0]
    index_column = first if first in ("", "Unnamed: 0") else None  # pandas writes its index first
    records = {}
    for n, row in enumerate(rows):
        label = row.pop(index_column, None) if index_column is not None else None
        records[_label(label, n)] = {k: from_text(v) for k, v in row.items() if k is not None and v is not None}
    return records


def _label(label: Any, n: int) -> int:
    return int(label) if str(label).isdigit() else n


def _read_json(path: Path) -> dict[int, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CvImportError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):  # orient="records"
        return dict(enumerate(data))
    if isinstance(data, dict) and {"columns", "data"} <= set(data):  # orient="split"
        index = data.get("index") or range(len(data["data"]))
        return {_label(i, n): dict(zip(data["columns"], row)) for n, (i, row) in enumerate(zip(index, data["data"]))}
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        if all(str(k).isdigit() for k in data):  # orient="index": {row: {column: value}}
            return {int(k): v for k, v in data.items()}
        keys = list(dict.fromkeys(k for column in data.values() for k in column))  # orient="columns"
        return {_label(k, n): {c: column.get(k) for c, column in data.items()} for n, k in enumerate(keys)}
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        return _column_lists(data)  # json.dump of cv_results_ with its arrays as lists
    raise CvImportError(f"{path}: not a layout of cv_results_ this reads; save it with pandas: "
                        "pd.DataFrame(search.cv_results_).to_json(path) (orient 'columns' or 'records')")


def _read_pickle(path: Path, *, trust: bool) -> dict[int, dict[str, Any]]:
    if not trust:
        raise CvImportError(
            f"{path}: a pickle runs code when it is loaded, so it is read only when you trust it (you made it): "
            "pass --trust-pickle, or save the results as CSV or JSON instead: "
            "pd.DataFrame(search.cv_results_).to_csv('cv_results.csv')")
    with path.open("rb") as f:
        data = pickle.load(f)  # noqa: S301  # nosec B301 - the user vouched for this file with --trust-pickle
    if not isinstance(data, dict) or not data:
        raise CvImportError(f"{path}: expected search.cv_results_, a dict of columns, but got {type(data).__name__}; "
                            "save pickle.dump(search.cv_results_, f), not the search itself")
    return _column_lists({str(k): v.tolist() if hasattr(v, "tolist") else list(v) for k, v in data.items()})


def _column_lists(data: dict[str, list]) -> dict[int, dict[str, Any]]:
    """{column: [value per row]} (masked entries None, as MaskedArray.tolist() gives them) -> records."""
    n = max(len(v) for v in data.values())
    return {i: {c: v[i] if i < len(v) else None for c, v in data.items()} for i in range(n)}


# --- rows ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CvRow:
    """One configuration of the old search: its parameters (old names, without `param_`) and scores."""

    index: int
    params: dict[str, Any]
    mean: float
    std: float | None
    rank: int | None

    def where(self, source: str) -> str:
        return f"{source} row {self.index} (rank {self.rank})"


def _number(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def cv_rows(records: dict[int, dict[str, Any]], *, source: str, metric: str = "score") -> list[CvRow]:
    """The rows that have a score (a fit that failed has NaN), with their parameters."""
    columns = {c for r in records.values() for c in r}
    mean_column = f"mean_test_{metric}"
    if mean_column not in columns:
        found = sorted(c.removeprefix("mean_test_") for c in columns if c.startswith("mean_test_"))
        hint = (f"its metrics are {', '.join(found)}: pass --metric NAME" if found else
                "is it a cv_results_? expected param_<name>, mean_test_score, std_test_score and rank_test_score")
        raise CvImportError(f"{source}: no column {mean_column}; {hint}")
    from_params = not any(c.startswith("param_") for c in columns)
    rows = []
    for index, record in records.items():
        mean = _number(record.get(mean_column))
        if mean is None or math.isnan(mean):
            logger.info("%s row %d has no %s (a failed fit); left out", source, index, mean_column)
            continue
        rank = _number(record.get(f"rank_test_{metric}"))
        rows.append(CvRow(index, _params(record, from_params, f"{source} row {index}"), mean,
                          _number(record.get(f"std_test_{metric}")), None if rank is None else int(rank)))
    return rows


def _params(record: dict[str, Any], from_params: bool, where: str) -> dict[str, Any]:
    """The row's `param_<name>` cells; only in a file without them, its `params` dict."""
    if not from_params:
        return {c.removeprefix("param_"): v for c, v in record.items()
                if c.startswith("param_") and not _missing(v)}
    params = record.get("params")
    params = from_text(params) if isinstance(params, str) else params
    if not isinstance(params, dict):
        raise CvImportError(f"{where}: no param_<name> columns, and its params cell is not a dict of plain "
                            f"values ({str(params)[:80]!r}); save the whole cv_results_, param_ columns included")
    return {k: v for k, v in params.items() if not _missing(v)}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def rank_key(row: CvRow) -> tuple:
    return (math.inf if row.rank is None else row.rank, -row.mean, row.index)
