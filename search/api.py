"""The Python API: a study from a notebook, with the same study file, store and workers as `make study`.

    import search
    study = search.Study("my_net", architecture=build, dataset=(x_train, y_train),
                         space={"dense_units": {"choices": [128, 256]}, "dropout": {"low": 0.0, "high": 0.5}},
                         budget={"trials": 30, "max_epochs": 15})
    study.run(workers=2)
    study.best, study.trials_dataframe(), study.evaluate(), study.report()

What a notebook holds in memory reaches the worker processes as files: arrays as an .npz under the
data cache, named by their fingerprint; a builder function pickled by value (cloudpickle) into a
.py file beside the study file, which the drift guard hashes like any builder file. The study file
itself is written to `workdir/NAME.yaml` (`study.to_yaml()` gives its text), so `make status`, the
report and the dashboard see an ordinary study. The commands run as child processes of the notebook
(`python -m search ...`): training never runs in the notebook's kernel, whose crash ended the
randomized search of seed 002, and nothing here imports a deep-learning backend.
"""

from __future__ import annotations

import base64
import html
import inspect
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import optuna
import yaml

from data import Arrays, DatasetError, array_fingerprint, check_arrays, publish_file
from search._progress import StudyBar, watched
from search.errors import StudySpecError
from search.settings import Settings
from search.spec import parse_spec
from search.study import counts, open_study
from storage import attrs

ROOT = Path(__file__).resolve().parents[1]  # the project: on the children's PYTHONPATH


class StudyRunError(RuntimeError):
    """A command of the study failed in its child process; the message ends with what it printed."""


class Study:
    """A study made from Python objects, or loaded (`Study.load`): the same study as `make study`'s.

    architecture: a preset's name, a builder reference ("file.py:build"), or a builder function
    `build(input_shape, num_classes, *, knob=default, ...)` (docs/own_model.md). dataset: a name under
    DATA_DIR, a path, or arrays: (x_train, y_train) or (x_train, y_train, x_test, y_test), uint8
    images (N, H, W[, C]) and integer labels 0..k-1. space, budget and `**study` are the study
    file's keys (README, "Study files") with the same validation: nothing is written to the store,
    and no file but the arrays and the builder, before they pass. workdir: where the study file
    goes (default: STUDIES_DIR if set, else ./studies). storage: a store URL (default: STORAGE, else
    the embedded journal in the working directory).
    """

    def __init__(self, name: str, *, architecture: str | Callable[..., Any], dataset: Any,
                 space: Mapping[str, Any], budget: Mapping[str, Any] | None = None, workdir: str | Path | None = None,
                 storage: str | None = None, **study: Any) -> None:
        self.name = name
        self.settings = Settings.from_env()
        self.workdir = Path(workdir) if workdir else _default_workdir(self.settings)
        self.storage = storage
        pickled = _pickled(architecture) if callable(architecture) else None  # both checked before either is written
        data = _dataset(dataset, self.settings.data_cache, name)
        document = {"architecture": _architecture(architecture, pickled, self.workdir / f"{name}.files"),
                    "dataset": data, "space": dict(space),
                    **({"budget": dict(budget)} if budget else {}), **study}
        self._text = yaml.safe_dump(_plain(document), sort_keys=False)
        self.spec = parse_spec(self._text, name=name)  # StudySpecError naming the field
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / f"{name}.yaml").write_text(self._text)
        self._command("create")  # the data and the builder checked, then the study created (idempotent)

    @classmethod
    def load(cls, name: str, *, workdir: str | Path | None = None, storage: str | None = None) -> Study:
        """A study that exists: its file in `workdir` (else STUDIES_DIR, where the presets are) and
        its trials in the store."""
        settings = Settings.from_env()
        folders = [Path(workdir)] if workdir else [_default_workdir(settings), settings.studies_dir]
        found = next((f for f in folders if (f / f"{name}.yaml").is_file()), None)
        if found is None:
            raise StudySpecError("name", f"no study file {name}.yaml in {' or '.join(map(str, folders))}; "
                                         "make one with search.Study(...)")
        self = cls.__new__(cls)
        self.name, self.settings, self.workdir, self.storage = name, settings, found, storage
        self._text = (found / f"{name}.yaml").read_text()
        self.spec = parse_spec(self._text, name=name)
        return self

    # --- running ------------------------------------------------------------------------------

    def run(self, workers: int = 1, *, progress: bool | None = None, poll_s: float = 1.0) -> Study:
        """Run `workers` worker processes until the budget is met (`make study`). A progress bar
        (trials finished of the budget, best so far, running) where a person watches (a terminal or a
        notebook; `progress` forces it on or off); the workers' own log goes to workdir/NAME.log."""
        progress = watched(sys.stderr) if progress is None else progress
        log_path = self.workdir / f"{self.name}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(self._argv("run", "--workers", str(workers), "--no-create", "--poll", str(poll_s)),
                                    env=self._env(), stdout=log, stderr=subprocess.STDOUT)
            try:
                self._watch(proc, progress, poll_s)
            except BaseException:
                proc.terminate()  # the runner stops its workers (they checkpoint and queue their trials)
                proc.wait(timeout=120)
                raise
        if proc.returncode != 0:
            raise StudyRunError(f"`python -m search run {self.name}` exited {proc.returncode}; the end of "
                                f"{log_path}:\n{_tail(log_path.read_text())}")
        return self

    def _watch(self, proc: subprocess.Popen, progress: bool, poll_s: float) -> None:
        if not progress:
            proc.wait()
            return
        bar = StudyBar(self.name, self.spec.trials, bar=True, file=sys.stderr)
        try:
            while proc.poll() is None:
                time.sleep(poll_s)
                bar.update(self._counts())
            bar.update(self._counts())
        finally:
            bar.close()

    def evaluate(self, seeds: int = 3, *, top_k: int | None = None, workers: int = 1,
                 retest: bool = False) -> dict[str, Any]:
        """Confirm the `top_k` best trials (default the study file's evaluate.top_k, 5; 1: the best alone)
        with `seeds` seeds each, as trials on `workers` worker processes, then score the pick once on the test
        split (`make evaluate`); the record stored with the study. A study tested already gives its
        recorded result, unless `retest`."""
        self._command("evaluate", "--seeds", str(seeds), *(["--top-k", str(top_k)] if top_k else []),
                      "--workers", str(workers), *(["--retest"] if retest else []), timeout=None)
        return dict(self.optuna_study().user_attrs[attrs.FINAL_EVALUATION])

    def refit(self, path: str | Path | None = None, *, trial: int | None = None) -> Path:
        """Train the best configuration (or `trial`'s) once on all the training data, for the epochs
        its search found best, and save the model (`python -m search refit`); the .keras file's path
        (default: workdir/NAME.files/refit.keras). The test split is not read: that is evaluate()'s."""
        out = Path(path).resolve() if path else (self.workdir / f"{self.name}.files" / "refit.keras").resolve()
        self._command("refit", "--output", str(out), *(["--trial", str(trial)] if trial is not None else []),
                      timeout=None)
        return out

    def report(self, out: str | Path = "reports") -> Report:
        """Write the HTML report (`make report`); shown inline when it is a notebook cell's value."""
        subprocess.run([sys.executable, "-m", "dashboards.report", self.name, "--out", str(out)],  # STORAGE: _env
                       env=self._env(), check=True, capture_output=True, text=True, timeout=600)
        return Report(Path(out) / self.name / "index.html")

    # --- reading ------------------------------------------------------------------------------

    def optuna_study(self) -> optuna.Study:
        """The Optuna study itself, from the store: opened once, then read incrementally (a journal
        store replays only what was appended since), not reconnected at every poll of the bar."""
        if getattr(self, "_study", None) is None:
            self._study = open_study(self.name, self.settings.store_url(self.storage))
        return self._study

    @property
    def best(self) -> dict[str, Any] | None:
        """The best trial so far: value, params and trial number (None before one completed)."""
        c = self._counts()
        return None if c.best_trial is None else {"value": c.best_value, "params": c.best_params,
                                                  "trial": c.best_trial}

    def trials_dataframe(self):
        """One row per trial (pandas), with its attributes: Optuna's trials_dataframe."""
        return self.optuna_study().trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs",
                                                           "duration", "datetime_start"))

    def to_yaml(self) -> str:
        """The study file (arrays and a builder function by the paths they were saved to)."""
        return self._text

    def _counts(self):
        return counts(self.optuna_study())

    # --- child processes ----------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = self.settings.child_env(STUDIES_DIR=str(self.workdir.resolve()))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        if self.storage:
            env["STORAGE"] = self.storage
        return env

    def _argv(self, command: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "search", command, self.name, *args]

    def _command(self, command: str, *args: str, timeout: float | None = 600) -> str:
        run = subprocess.run(self._argv(command, *args), env=self._env(), capture_output=True, text=True,
                             timeout=timeout)
        if run.returncode != 0:
            errors = [line[len("error: "):] for line in run.stderr.splitlines() if line.startswith("error: ")]
            if command == "create" and errors:
                raise StudySpecError("study", errors[-1])  # what `create` refused, before the store was touched
            raise StudyRunError(f"`python -m search {command} {self.name}` exited {run.returncode}:\n"
                                f"{_tail(run.stderr)}")
        return run.stdout

    def __repr__(self) -> str:
        return f"search.Study({self.name!r}, {self.spec.architecture} on {self.spec.dataset}, {self.workdir})"


class Report(type(Path())):  # type: ignore[misc]
    """The report's path; a notebook shows the report itself (an iframe of the self-contained page)."""

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(self.read_text(), quote=True)}" style="width:100%;height:800px;'
                f'border:0"></iframe>')


# --- what a notebook holds, as files --------------------------------------------------------------


def _default_workdir(settings: Settings) -> Path:
    """STUDIES_DIR when it is set; else ./studies (the default STUDIES_DIR holds the presets)."""
    return settings.studies_dir if "studies_dir" in settings.model_fields_set else Path.cwd() / "studies"


def _architecture(architecture: Any, pickled: tuple[bytes, str, str] | None, files: Path) -> Any:
    if isinstance(architecture, str):
        return {"builder": architecture} if ":" in architecture else architecture
    if pickled is None:
        raise StudySpecError("architecture", f"a preset's name, \"file.py:build\" or a builder function, not a "
                                             f"{type(architecture).__name__}")
    return {"builder": f"{_write_builder(*pickled, files)}:build"}


def _pickled(function: Callable[..., Any]) -> tuple[bytes, str, str]:
    """The function by value (cloudpickle), its name and its source (where Python can find it)."""
    label = getattr(function, "__qualname__", repr(function))
    if getattr(function, "__module__", None) not in (None, "__main__"):
        module = sys.modules.get(function.__module__)
        if module is not None and not getattr(module, "__file__", None):  # defined in no file: keep it by value
            cloudpickle.register_pickle_by_value(module)
    try:
        payload = cloudpickle.dumps(function)
    except Exception as exc:
        raise StudySpecError("architecture", (
            f"the builder function {label} cannot be pickled by value ({type(exc).__name__}: {exc}); it must "
            "reach the worker processes: keep what it uses importable (keras, numpy, your packages) or move "
            "it to a .py file and pass architecture=\"file.py:build\"")) from None
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        source = f"(the source of {label} is not available)"
    return payload, label, source


def _write_builder(payload: bytes, label: str, source: str, files: Path) -> Path:
    """A .py file whose content the drift guard hashes, with the function's source as comments."""
    files.mkdir(parents=True, exist_ok=True)
    path = (files / "builder.py").resolve()
    path.write_text("".join([
        f"# The builder of a study made with search.Study, from the function {label}, pickled by value below;\n",
        "# written again each time the study is made. Its source, as written:\n#\n",
        *(f"#     {line}\n" for line in source.splitlines()),
        "\nimport base64\n\nimport cloudpickle\n\n",
        f"build = cloudpickle.loads(base64.b64decode(\n    \"{base64.b64encode(payload).decode()}\"))\n"]))
    return path


def _dataset(dataset: Any, cache: Path, name: str) -> Any:
    if isinstance(dataset, (str, Path)):
        text = str(dataset)
        return {"path": text} if isinstance(dataset, Path) or "/" in text or text.endswith(".npz") else text
    if isinstance(dataset, Mapping):
        return dict(dataset)
    if not isinstance(dataset, (tuple, list)) or len(dataset) not in (2, 4):
        raise StudySpecError("dataset", "give a dataset's name, a path, or arrays: (x_train, y_train) or "
                                        "(x_train, y_train, x_test, y_test)")
    x, y, *test = (np.asarray(a) for a in dataset)
    where = Path(f"{name} dataset arrays")
    try:
        arrays = check_arrays(Arrays(x, y, test[0] if test else None, test[1] if test else None, None), where)
    except DatasetError as exc:
        raise StudySpecError("dataset", str(exc)) from None
    keep = {"x_train": arrays.x_train, "y_train": arrays.y_train}
    if arrays.x_test is not None:
        keep.update(x_test=arrays.x_test, y_test=arrays.y_test)
    path = (cache / "arrays" / f"{name}-{array_fingerprint(*keep.values())}.npz").resolve()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npz")
        np.savez(partial, **keep)
        publish_file(partial, path)
    return {"path": str(path)}


def _plain(value: Any) -> Any:
    """YAML-safe: numpy scalars and tuples as Python's."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


__all__ = ["Report", "Study", "StudyRunError"]
