"""MLflow: one parent run per study, one nested run per finished trial, the final model registered.

Exported from what the store holds, not streamed from training: a trial's run is written when it
has finished (its params, its per-epoch validation metric, its value, state, fail reason, time
breakdown, code version and dataset fingerprint are all on the trial by then), so a tracking server
that is down loses nothing. The worker logs each trial it finished right after telling it; a server
it cannot reach is logged once and the worker goes on; `python -m dashboards.tracking NAME` (which
`make study`'s runner calls as it ends) writes every finished trial that has no run yet.

Why not optuna-integration's MLflowCallback: it is a study.optimize callback (the workers run their
own ask/tell loop), it logs one flat run per trial without the per-epoch curve, and it cannot catch
up what a down server missed.

    python -m dashboards.tracking NAME [--storage URL] [--mlflow URI]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.settings import Settings
from storage import attrs, open_storage

logger = logging.getLogger(__name__)

EXPERIMENT = "cnn-search"
STUDY_TAG, TRIAL_TAG, KIND_TAG = "cnn_search.study", "cnn_search.trial", "cnn_search.kind"


class MlflowTracker:
    """The runs of one study on one tracking server. Every call survives a server that is down:
    it logs a warning the first time and returns False; the next call tries again."""

    def __init__(self, uri: str, study_name: str, *, timeout_s: float = 10.0) -> None:
        # mlflow takes about 2 s to import: only for a study that is tracked.
        from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT
        from mlflow.tracking import MlflowClient

        # A down server must not hold a worker up: MLflow retries each request for minutes by default.
        for variable, value in ((MLFLOW_HTTP_REQUEST_MAX_RETRIES, 0), (MLFLOW_HTTP_REQUEST_TIMEOUT, int(timeout_s))):
            if not variable.is_set():
                variable.set(value)
        self.uri, self.study_name = uri, study_name
        self.client = MlflowClient(tracking_uri=uri)
        self._parent: str | None = None
        self._warned = False

    # --- runs -----------------------------------------------------------------------------------

    def _experiment(self) -> str:
        found = self.client.get_experiment_by_name(EXPERIMENT)
        return found.experiment_id if found else self.client.create_experiment(EXPERIMENT)

    def _runs(self, kind: str) -> list[Any]:
        return self.client.search_runs([self._experiment()], max_results=10_000, filter_string=(
            f"tags.`{STUDY_TAG}` = '{self.study_name}' and tags.`{KIND_TAG}` = '{kind}'"))

    def parent(self, study: optuna.Study | None = None) -> str:
        """The study's run (made once, by `create` when it can reach the server)."""
        if self._parent is None:
            found = self._runs("study")
            if found:
                self._parent = found[0].info.run_id
            else:
                run = self.client.create_run(self._experiment(), run_name=self.study_name,
                                             tags={STUDY_TAG: self.study_name, KIND_TAG: "study"})
                self._parent = run.info.run_id
                if study is not None:
                    self._study_params(study)
        return self._parent

    def _study_params(self, study: optuna.Study) -> None:
        data = study.user_attrs.get(attrs.STUDY_DATASET, {})
        self.client.log_param(self._parent, "directions", ",".join(d.name.lower() for d in study.directions))
        for key in ("name", "fingerprint", "input_shape", "num_classes"):
            if key in data:
                self.client.log_param(self._parent, f"dataset_{key}", str(data[key])[:500])

    def log_trial(self, trial: FrozenTrial) -> str:
        """One nested run for a finished trial: params, per-epoch metric, value, state, reasons, times."""
        parent = self.parent()
        run = self.client.create_run(self._experiment(), run_name=f"{self.study_name}-trial-{trial.number}", tags={
            STUDY_TAG: self.study_name, KIND_TAG: "trial", TRIAL_TAG: str(trial.number),
            "mlflow.parentRunId": parent, "state": trial.state.name,
            **{k: str(trial.user_attrs[k])[:5000] for k in (attrs.FAIL_REASON, attrs.FAIL_MESSAGE, attrs.WORKER,
                                                            attrs.CODE_VERSION, attrs.DATASET_FINGERPRINT,
                                                            attrs.BACKEND, attrs.DEVICE) if k in trial.user_attrs}})
        run_id = run.info.run_id
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        metrics = [Metric("val_objective", float(v), now, int(step)) for step, v in sorted(
            trial.intermediate_values.items())]
        metrics += [Metric("val_accuracy", float(v), now, step) for step, v in enumerate(
            trial.user_attrs.get(attrs.VAL_ACCURACY_CURVE, []))]
        if trial.values:
            metrics += [Metric("value" if i == 0 else f"value_{i}", float(v), now, 0) for i, v in enumerate(trial.values)]
        for key in (attrs.TRAIN_SECONDS, attrs.EPOCHS_RUN, attrs.BEST_EPOCH, attrs.N_PARAMS, attrs.IMAGES_PER_S):
            if isinstance(trial.user_attrs.get(key), (int, float)):
                metrics.append(Metric(key, float(trial.user_attrs[key]), now, 0))
        for phase, seconds in (trial.user_attrs.get(attrs.TIME_BREAKDOWN) or {}).items():
            metrics.append(Metric(f"time_{phase}_s", float(seconds), now, 0))
        params = [Param(k, str(v)[:6000]) for k, v in trial.params.items()]
        self.client.log_batch(run_id, metrics=metrics, params=params)
        self.client.set_terminated(run_id, status="FINISHED" if trial.state != TrialState.FAIL else "FAILED")
        return run_id

    def log_final(self, record: dict[str, Any], model_path: Path) -> str:
        """`make evaluate`'s result on the study's run: its metrics, the model as an artifact, and a
        version of the registered model NAME with its test accuracy."""
        parent = self.parent()
        for key in ("test_accuracy", "val_accuracy_mean", "val_accuracy_std"):
            if isinstance(record.get(key), (int, float)):
                self.client.log_metric(parent, f"final_{key}", float(record[key]))
        self.client.log_artifact(parent, str(model_path), artifact_path="final_model")
        try:
            self.client.create_registered_model(self.study_name)
        except Exception as exc:  # noqa: BLE001 - it exists already (RESOURCE_ALREADY_EXISTS)
            if "already" not in str(exc).lower():
                raise
        version = self.client.create_model_version(
            self.study_name, source=f"runs:/{parent}/final_model/{model_path.name}", run_id=parent,
            tags={"test_accuracy": f"{record.get('test_accuracy', float('nan')):.4f}",
                  "trial": str(record.get("trial"))})
        return version.version

    # --- guarded entry points -----------------------------------------------------------------

    def safely(self, what: str, call, *args: Any) -> Any:
        """Run a call against the server; a failure is a warning (once per process), never an error."""
        try:
            result = call(*args)
        except Exception as exc:  # noqa: BLE001 - a tracking server never fails a trial or a worker
            if not self._warned:
                logger.warning("MLflow at %s: %s failed (%s: %s); training goes on, and `python -m "
                               "dashboards.tracking %s` writes what was missed", self.uri, what, type(exc).__name__,
                               str(exc)[:300], self.study_name)
                self._warned = True
            return None
        self._warned = False
        return result

    def trial_finished(self, study: optuna.Study, number: int) -> str | None:
        """A worker's hook, right after it told trial `number`: its run (None: the server is down)."""
        return self.safely(f"logging trial {number}", lambda: self.log_trial(study.get_trials(deepcopy=False)[number]))

    def sync(self, study: optuna.Study) -> int | None:
        """Write a run for every finished trial that has none; how many (None: the server is down)."""
        return self.safely("catching up", self._sync, study)

    def _sync(self, study: optuna.Study) -> int:
        self.parent(study)
        logged = {int(r.data.tags[TRIAL_TAG]) for r in self._runs("trial")}
        missing = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and t.number not in logged]
        for trial in missing:
            self.log_trial(trial)
        return len(missing)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.tracking", description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--storage", default=None)
    parser.add_argument("--mlflow", default=None, help="tracking URI (default: MLFLOW_TRACKING_URI)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings.from_env()
    uri = args.mlflow or settings.mlflow_tracking_uri
    if not uri:
        print("error: no MLflow tracking URI: pass --mlflow URI or set MLFLOW_TRACKING_URI", file=sys.stderr)
        return 2
    study = optuna.load_study(study_name=args.name, storage=open_storage(settings.store_url(args.storage)))
    written = MlflowTracker(uri, args.name).sync(study)
    if written is None:
        return 1
    print(f"study {args.name}: {written} trial run(s) written to MLflow at {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
