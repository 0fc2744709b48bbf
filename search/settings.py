"""Every environment variable the service reads, declared once: typed, with its default and meaning.

`Settings.from_env()` is called once, in a command's `main()`, and the object is passed down;
nothing reads the environment at import time. `python -m search config` prints the effective
values (the store's password redacted); the README's variable table is `python -m search config
--markdown`, and a test keeps the two identical.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage import READER, WRITER, Artifacts, StorageConfigError, StoreRole, redact, resolve_url

STUDIES_DIR = Path(__file__).parent / "studies"


class Settings(BaseSettings):
    """The service's settings. Field names are the environment variables, lowercased."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    # --- where things are ------------------------------------------------------------------------
    storage: str = Field("", description="store URL; empty: the embedded journal file studies.journal")
    storage_password_file: Path | None = Field(
        None, description="file holding the store's password (a compose or Kubernetes secret)")
    storage_user: str = Field("", description=(
        "connect to a PostgreSQL store as this user instead of STORAGE's (a role the create step made: "
        "STORE_WORKER_ROLE, STORE_DASHBOARD_ROLE); empty: STORAGE's"))
    artifacts_dir: Path = Field(Path("artifacts"), description=(
        "files shared by workers: checkpoints, caches, models (with ARTIFACTS_URL: this machine's own copy)"))
    artifacts_url: str = Field("", description=(
        "s3://bucket/prefix: checkpoints, base and feature caches and final models in object storage, so "
        "workers need no shared volume (credentials: boto3's usual places); empty: ARTIFACTS_DIR is shared"))
    artifacts_endpoint_url: str = Field("", description=(
        "an S3-compatible server for ARTIFACTS_URL (MinIO, Ceph, a cloud's own), e.g. http://minio:9000; empty: AWS"))
    data_dir: Path | None = Field(None, description="folder holding the datasets (e.g. ../shared/datasets)")
    data_cache: Path = Field(Path(".cache/data"), description="decoded datasets, cached as uint8 arrays")
    data_offline: bool = Field(False, description="never download a dataset; fail naming what was looked for")
    studies_dir: Path = Field(STUDIES_DIR, description="folder of study files <name>.yaml")
    store_worker_role: str = Field("", description=(
        "the create step makes this PostgreSQL login role, which may only read and write the store's rows; "
        "workers then connect as it (README, Reliability, row 13); empty: none"))
    store_worker_password_file: Path | None = Field(None, description="the worker role's password (a secret file)")
    store_dashboard_role: str = Field("", description=(
        "the create step makes this role, which may only read the store (the dashboard's); empty: none"))
    store_dashboard_password_file: Path | None = Field(None, description="the dashboard role's password")
    store_dashboard_writes: bool = Field(False, description=(
        "grant the dashboard role the worker's writes (notes, telling trials from the dashboard)"))
    dashboard_auth_file: Path | None = Field(None, description=(
        "the dashboard asks for a user and password from this file (user:password lines; Kubernetes "
        "mounts a Secret); unset: no login, so bind 127.0.0.1 only"))
    mlflow_tracking_uri: str = Field("", description=(
        "record each study and its trials in MLflow there (a study file's tracking.mlflow wins); empty: no MLflow"))
    # --- study overrides (what compose and Kubernetes pass) --------------------------------------
    dataset: str | None = Field(None, description="override the study file's dataset")
    trials: int | None = Field(None, ge=1, description="override the trial budget (total across workers)")
    epochs: int | None = Field(None, ge=1, description="override the maximum epochs per trial")
    profile: str | None = Field(None, description="smoke or quick (see 'Targets and variables')")
    # --- liveness --------------------------------------------------------------------------------
    heartbeat_interval: float = Field(10.0, gt=0, description="seconds between a training worker's heartbeats")
    grace_period: float = Field(60.0, gt=0, description=(
        "seconds a reaper in contact with the store sees a trial's heartbeat unchanged before it fails the trial"))
    max_stale_retries: int = Field(1, ge=0, description="retries of a lineage whose worker went silent")
    checkpoint_every_s: float = Field(60.0, ge=0, description=(
        "least seconds between a trial's checkpoints (written at epoch ends, always at a stop); 0: every epoch"))
    # --- a trial's overheads (BENCHMARKS.md, bench-breakdown) ------------------------------------
    steps_per_execution: Annotated[int, Field(ge=1)] | Literal["auto"] = Field("auto", description=(
        "training steps per call into the compiled function; auto: 16 for models of at most 2,000,000 "
        "parameters whose epochs have at least 128 batches, else 1"))
    gc_freeze: bool = Field(True, description=(
        "gc.freeze() after a worker's set-up, so the collection after each trial walks only what trials made"))
    validation_batch_size: Annotated[int, Field(ge=1)] | Literal["auto", "train"] = Field("auto", description=(
        "a worker's trials' validation batch; train: the training batch size (Keras's default); auto: a model "
        "on feature vectors (a head on cached features) validates the whole validation set (at most 16,384 "
        "rows and 256 MiB a batch) from tensors held for the worker's life, an image model at its training "
        "batch size; the same results either way (evaluate and refit use auto)"))
    build_optimizer_first: bool = Field(True, description=(
        "make a trial's optimizer variables right after compile, so TensorFlow traces the train step once, not "
        "twice; the same results either way (evaluate and refit always do)"))
    journal_settle_deadline: float = Field(
        120.0, gt=0, description="seconds a journal read after an append waits through an outage")
    store_max_backoff: float = Field(30.0, gt=0, description="longest wait between retries of a store call")
    # --- placement and memory --------------------------------------------------------------------
    worker_index: int | None = Field(
        None, ge=0, description="this worker's index (seeds its sampler); unset: drawn from host name and PID")
    workers_per_gpu: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(1, description=(
        "workers packed on one GPU, each under a memory cap; auto: as many as the first trials' peak GPU "
        "memory allows (python -m search run)"))
    worker_threads: int = Field(0, ge=0, description="CPU threads per worker's TensorFlow ops; 0: all")
    input_pipeline: Literal["auto", "stream", "arrays"] = Field("auto", description=(
        "how a worker's trials read their images; stream: batch by batch from the memory-mapped data cache, "
        "which the workers of a machine share (no copy per worker); arrays: the split copied into the worker "
        "and handed to Keras's array adapter (which copies it again per fit), 1.08-1.12x faster a trial on a "
        "2-core CPU; auto: stream when the dataset's training images take more than 1/32 of the machine's "
        "memory (or its container's limit), else arrays"))
    cuda_visible_devices: str | None = Field(None, description="GPUs this process may use (unset: all)")
    worker_max_rss_growth_mb: float = Field(
        512.0, ge=0, description="RSS growth after which a worker restarts itself between trials; 0: off")
    worker_max_gpu_growth_mb: float = Field(
        1024.0, ge=0, description="GPU memory growth after which a worker restarts itself; 0: off")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any,
                                   **_other_sources: Any) -> tuple:
        # The environment is read by from_env() alone: an empty value means "unset" there, except
        # CUDA_VISIBLE_DEVICES, where empty means "no GPU"; and tests pass an environment of their own.
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **values: Any) -> Settings:
        """Read the environment (or `environ`) once; keyword values win over it."""
        if environ is None:
            environ = dict(os.environ)
        names = {name.upper() for name in cls.model_fields}
        found = {k.lower(): v for k, v in environ.items() if k.upper() in names}
        if found.get("cuda_visible_devices") == "":
            found["cuda_visible_devices"] = "-1"  # set but empty hides every GPU; unset shows all
        # compose passes `VAR:` or `VAR=""` for "not set", and so does make's `export VAR`: the default.
        found = {k: v for k, v in found.items() if v != ""}
        return cls.model_validate({**found, **values})

    def store_url(self, url: str | None = None) -> str:
        """The store to open: `url` (a --storage flag), else STORAGE, else the embedded journal;
        a password-less URL takes its password from STORAGE_PASSWORD_FILE."""
        return resolve_url(url or self.storage, password_file=self.storage_password_file, user=self.storage_user or None)

    def artifacts(self, root: str | os.PathLike | None = None) -> Artifacts:
        """ARTIFACTS_DIR (or `root`, a command's own flag), with ARTIFACTS_URL's object storage when set
        (the folder created)."""
        return Artifacts.open(root or self.artifacts_dir, self.artifacts_url, self.artifacts_endpoint_url)

    def store_roles(self) -> list[tuple[str, StoreRole]]:
        """The least-privilege roles the create step makes, named by the setting that asks for each."""
        roles = []
        for what, name, password, access in (
                ("STORE_WORKER_ROLE", self.store_worker_role, self.store_worker_password_file, WRITER),
                ("STORE_DASHBOARD_ROLE", self.store_dashboard_role, self.store_dashboard_password_file,
                 WRITER if self.store_dashboard_writes else READER)):
            if name:
                if password is None:
                    raise StorageConfigError(f"{what}={name} needs its password file: set {what[:-4]}PASSWORD_FILE")
                roles.append((what, StoreRole(name, password, access)))
        return roles

    def child_env(self, **extra: str) -> dict[str, str]:
        """The environment for a worker process this one starts: this one's, plus `extra`."""
        return {**os.environ, **extra}

    def study_overrides(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "trials": self.trials, "epochs": self.epochs, "profile": self.profile}

    def redacted(self) -> dict[str, Any]:
        """The effective values, safe to print: the store's password never appears."""
        values = self.model_dump(mode="json")
        values["storage"] = redact(self.storage) if self.storage else ""
        values["artifacts_endpoint_url"] = redact(self.artifacts_endpoint_url) if self.artifacts_endpoint_url else ""
        return values


def markdown_table() -> str:
    """The README's variable table, generated from the declaration."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if name == "studies_dir":
            default = "search/studies"
        shown = "unset" if default in (None, "") else f"`{default}`"
        rows.append(f"| `{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)


def quiet_backend_logs() -> None:
    """TensorFlow's C++ INFO and WARNING lines (e.g. cpu_feature_guard's) are off unless the user set
    TF_CPP_MIN_LOG_LEVEL; call before the backend is imported. In TF 2.21 it does not reach the lines
    printed before TensorFlow's logging starts: oneDNN's notice, and on a machine without a GPU the
    CUDA build's `Could not find cuda drivers` and `failed call to cuInit`, which the CPU build
    (the `cpu` extra, tensorflow-cpu) has no CUDA code to print."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
