"""Least-privilege PostgreSQL roles for the workers and the dashboard, made by the create step.

The create step runs as the database's owner (it makes the tables); nothing else needs to. With
STORE_WORKER_ROLE and STORE_DASHBOARD_ROLE set, it also makes (or updates) two login roles, each
with the password from its own file, and grants each exactly what it needs on the store's tables:

| role      | journal layout (`journal+postgresql+psycopg2://`)                | RDB layout (`postgresql+psycopg2://`)     |
| --------- | ----------------------------------------------------------------- | ----------------------------------------- |
| worker    | the log: SELECT, INSERT (never rewritten or erased); snapshots: SELECT, INSERT, UPDATE | every table: SELECT, INSERT, UPDATE, DELETE; sequences |
| dashboard | SELECT on both tables (STORE_DASHBOARD_WRITES: the worker's grants) | SELECT on every table (writes: the worker's) |

Neither may create, alter or drop the store's tables, nor write Optuna's schema version; every run
revokes what a role held on the schema's tables and sequences before granting, so those grants are
exactly these after any run (and a role made by hand is brought to them). The password reaches the
server only as a SCRAM verifier. (PostgreSQL's defaults for PUBLIC, such as temporary tables, are
the database's and left alone.)
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from storage._errors import StorageConfigError
from storage._locks import lock_database
from storage._urls import JOURNAL_PG_PREFIX, PG_KEEPALIVES, redact

ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
WRITER, READER = "writer", "reader"
VERSION_TABLES = ("version_info", "alembic_version")  # Optuna's RDB schema version (its migrations')


@dataclasses.dataclass(frozen=True)
class StoreRole:
    name: str
    password_file: Path
    access: str  # WRITER or READER

    def check(self, what: str) -> str:
        """The role's password; a StorageConfigError naming the setting and the fix otherwise."""
        if not ROLE_RE.match(self.name):
            raise StorageConfigError(f"{what} {self.name!r} is not a role name this service makes: lowercase "
                                     "letters, digits and '_', starting with a letter or '_' (e.g. cnn_worker)")
        try:
            password = Path(self.password_file).read_text().strip()
        except OSError as exc:
            raise StorageConfigError(f"{what}'s password file {self.password_file}: cannot read it ({exc.strerror});"
                                     " e.g. openssl rand -hex 24 > FILE") from None
        if not password:
            raise StorageConfigError(f"{what}'s password file {self.password_file} is empty")
        return password

    def grants(self, journal: bool) -> list[tuple[str, str | None]]:
        """(rights, table) pairs; table None: every table in the schema."""
        if journal:
            from storage._journal_pg import SNAPSHOT_TABLE, TABLE

            if self.access == WRITER:
                return [("SELECT, INSERT", TABLE), ("SELECT, INSERT, UPDATE", SNAPSHOT_TABLE)]
            return [("SELECT", TABLE), ("SELECT", SNAPSHOT_TABLE)]
        return [("SELECT, INSERT, UPDATE, DELETE" if self.access == WRITER else "SELECT", None)]


def check_roles(store_url: str, roles: list[tuple[str, StoreRole]]) -> dict[str, str]:
    """Each role's password, checked before anything is written: the store must be PostgreSQL."""
    if roles and lock_database(store_url) is None:
        raise StorageConfigError(f"{roles[0][0]} is set, but the store ({redact(store_url)}) is not PostgreSQL: "
                                 "least-privilege roles are PostgreSQL's; unset it for this store")
    passwords = {role.name: role.check(what) for what, role in roles}
    if len({role.name for _, role in roles}) < len(roles):
        raise StorageConfigError("STORE_WORKER_ROLE and STORE_DASHBOARD_ROLE name the same role; give each its own")
    return passwords


def ensure_roles(store_url: str, roles: list[tuple[str, StoreRole]]) -> list[str]:
    """Make or update each role and grant it exactly its rights on the store's tables (the schema
    the store URL's search_path selects). Runs as the store URL's user, which needs CREATEROLE."""
    import psycopg2
    import sqlalchemy
    from psycopg2 import sql

    passwords = check_roles(store_url, roles)
    journal = store_url.startswith(JOURNAL_PG_PREFIX)
    engine = sqlalchemy.create_engine(lock_database(store_url), poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={"connect_timeout": 10, **PG_KEEPALIVES})
    done = []
    raw = engine.raw_connection()
    try:
        raw.autocommit = False  # all of it or nothing
        cur = raw.cursor()
        cur.execute("SELECT current_database(), current_schema(), current_user")
        database, schema, owner = cur.fetchone()
        for what, role in roles:
            if role.name == owner:
                raise StorageConfigError(f"{what}={role.name} is the store URL's own user (the owner, which makes the "
                                         "tables); name another role, e.g. cnn_worker")
        for _, role in roles:
            who = sql.Identifier(role.name)
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role.name,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            # The password leaves this process only as a SCRAM verifier computed here (libpq's
            # PQencryptPasswordConn), so no server log or statement statistics can show it.
            verifier = psycopg2.extensions.encrypt_password(passwords[role.name], role.name, raw.driver_connection,
                                                             "scram-sha-256")
            cur.execute(sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                who, sql.Literal(verifier)))
            for kind in ("TABLES", "SEQUENCES"):  # whatever a role held before: these grants, exactly, after
                cur.execute(sql.SQL(f"REVOKE ALL ON ALL {kind} IN SCHEMA {{}} FROM {{}}").format(
                    sql.Identifier(schema), who))
            cur.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(sql.Identifier(schema), who))
            cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), who))
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), who))
            for rights, table in role.grants(journal):
                target = (sql.SQL("ALL TABLES IN SCHEMA {}").format(sql.Identifier(schema)) if table is None
                          else sql.Identifier(schema, table))
                cur.execute(sql.SQL("GRANT " + rights + " ON {} TO {}").format(target, who))
            if not journal and role.access == WRITER:
                cur.execute(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
                    sql.Identifier(schema), who))
                for table in VERSION_TABLES:  # Optuna's schema version: read, never written, by a worker
                    cur.execute("SELECT to_regclass(%s)", (f"{schema}.{table}",))
                    if cur.fetchone()[0] is not None:
                        cur.execute(sql.SQL("REVOKE INSERT, UPDATE, DELETE ON {} FROM {}").format(
                            sql.Identifier(schema, table), who))
            done.append(f"{role.name} ({'reads and writes rows' if role.access == WRITER else 'reads'})")
        raw.commit()
    except psycopg2.errors.InsufficientPrivilege as exc:
        raw.rollback()
        raise StorageConfigError(
            f"the store's user may not make or grant roles ({str(exc).splitlines()[0]}); give it CREATEROLE, or "
            "make the roles yourself (README, \"Reliability\", row 13) and unset STORE_WORKER_ROLE and "
            "STORE_DASHBOARD_ROLE") from None
    except BaseException:
        raw.rollback()
        raise
    finally:
        raw.close()
        engine.dispose()
    return done
