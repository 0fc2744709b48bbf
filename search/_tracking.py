"""The study's experiment tracker, if it has one: MLflow (dashboards/tracking.py, which imports mlflow
only when a tracker is made). One place for `create`, the runner, the workers and `evaluate`.
"""

from __future__ import annotations

from dashboards.tracking import MlflowTracker
from search.settings import Settings


def tracker(name: str, spec_uri: str | None, settings: Settings) -> MlflowTracker | None:
    """The study file's tracking.mlflow, else MLFLOW_TRACKING_URI; None: the study is not tracked."""
    uri = spec_uri or settings.mlflow_tracking_uri
    if not uri:
        return None
    return MlflowTracker(uri, name)
