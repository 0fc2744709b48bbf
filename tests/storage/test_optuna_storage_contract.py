"""Optuna's own storage contract (optuna.testing.pytest_storages.StorageTestCase, the suite Optuna
runs against its storages) run against the service's PostgreSQL journal backend: bare, behind the
resilient store the workers use, and through Optuna's gRPC proxy (issue: faults a real store brings). Each test gets an empty journal
in a scratch schema (the journal_pg_url fixture)."""

from __future__ import annotations

import optuna
import pytest
from helpers.processes import free_port
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.testing.pytest_storages import StorageTestCase
from optuna.trial import TrialState

from search.study import resilient
from storage import close_storage, open_storage


class TestPostgresJournal(StorageTestCase):
    @pytest.fixture
    def storage(self, journal_pg_url):
        store = open_storage(journal_pg_url, create_schema=True)
        yield store
        close_storage(store)


class TestResilientPostgresJournal(StorageTestCase):
    @pytest.fixture
    def storage(self, journal_pg_url):
        store = open_storage(journal_pg_url, create_schema=True)
        yield resilient(store, max_backoff=1.0)
        close_storage(store)


class TestGrpcProxyOverPostgresJournal(StorageTestCase):
    """What workers see through `python -m search proxy`: Optuna's gRPC storage proxy, in front of
    the PostgreSQL journal, on a free loopback port per test."""

    # Optuna 5.0's proxy sends a trial's params as a protobuf map, whose order is unspecified: they come
    # back in either order from run to run, the one clause of the contract it breaks. The service keys
    # params by sorted JSON everywhere, so nothing here depends on the order; the params and their
    # values must still all arrive.
    @pytest.mark.parametrize("param_names", [["a", "b"], ["b", "a"]])
    def test_get_all_trials_params_order(self, storage, param_names):
        study_id = storage.create_new_study(directions=[StudyDirection.MINIMIZE])
        trial_id = storage.create_new_trial(study_id, optuna.trial.create_trial(state=TrialState.RUNNING))
        for value, name in enumerate(param_names):
            storage.set_trial_param(trial_id, name, float(value), distribution=FloatDistribution(0.0, 2.0))
        [trial] = storage.get_all_trials(study_id)
        assert trial.params == {name: float(value) for value, name in enumerate(param_names)}
        assert sorted(trial.distributions) == sorted(param_names)

    @pytest.fixture
    def storage(self, journal_pg_url):
        from optuna.storages._grpc.server import make_server

        from storage._grpc import open_grpc

        store = open_storage(journal_pg_url, create_schema=True)
        port = free_port()
        server = make_server(store, "127.0.0.1", port)
        server.start()
        proxy = open_grpc(f"grpc://127.0.0.1:{port}")
        yield proxy
        proxy.close()
        server.stop(0).wait()
        close_storage(store)
