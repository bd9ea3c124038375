"""Where conversations live between turns: SQLite by default, PostgreSQL (or any SQL database) by URL.

    store = open_store(None, run_dir)                 # run_dir/sessions.sqlite
    store = open_store("/var/lib/bank/sessions.db")   # SQLite at that path (standard library)
    store = open_store("postgresql+psycopg://bot@db:5432/bank")   # SQLAlchemy (pip install 'nanonlp[sessions]')

A store keeps one row per session: its id, its state as JSON and when it was last touched. A session
idle longer than `expiry` seconds reads as absent and is deleted. Ids come from `secrets`
(128 random bits), so nobody can guess another customer's session. Every write is one transaction,
so a process killed mid-turn leaves the previous turn's state, and a restarted process (or another
process on the same database) continues the conversation.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from pathlib import Path

from nanonlp.dialogue.state import DialogueState
from nanonlp.errors import NanoNLPError

SESSION_ID_BYTES = 16
TABLE = "nanonlp_sessions"


def new_session_id() -> str:
    return secrets.token_urlsafe(SESSION_ID_BYTES)


class SessionStore:
    """The interface: get, put, delete, new_id. `expiry` in seconds (0: never)."""

    expiry: float = 0.0

    def new_id(self) -> str:
        return new_session_id()

    def get(self, session_id: str) -> DialogueState | None:
        raise NotImplementedError

    def put(self, state: DialogueState) -> None:
        raise NotImplementedError

    def delete(self, session_id: str) -> None:
        raise NotImplementedError

    def purge_expired(self) -> int:
        """Delete the expired sessions; returns how many."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _expired(self, updated: float, now: float) -> bool:
        return bool(self.expiry) and now - updated > self.expiry


class SQLiteSessionStore(SessionStore):
    """Sessions in one SQLite file (WAL mode: readers never wait for the writer). One connection per thread."""

    def __init__(self, path: str | Path, expiry: float = 3600.0):
        self.path, self.expiry = Path(path), expiry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as db:
            db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, state TEXT NOT NULL, updated REAL NOT NULL)")

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, check_same_thread=True)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as err:
                raise NanoNLPError(f"cannot open the session database '{self.path}' ({err}); pass a writable path.") from None
            self._local.db = db
        return db

    def get(self, session_id: str) -> DialogueState | None:
        db = self._connection()
        row = db.execute(f"SELECT state, updated FROM {TABLE} WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            return None
        if self._expired(row[1], time.time()):
            self.delete(session_id)
            return None
        return DialogueState.from_json(row[0])

    def put(self, state: DialogueState) -> None:
        with self._connection() as db:  # one transaction, committed on leaving
            db.execute(f"INSERT INTO {TABLE} (id, state, updated) VALUES (?, ?, ?) "
                       "ON CONFLICT(id) DO UPDATE SET state = excluded.state, updated = excluded.updated",
                       (state.session_id, state.to_json(), state.updated))

    def delete(self, session_id: str) -> None:
        with self._connection() as db:
            db.execute(f"DELETE FROM {TABLE} WHERE id = ?", (session_id,))

    def purge_expired(self) -> int:
        if not self.expiry:
            return 0
        with self._connection() as db:
            return db.execute(f"DELETE FROM {TABLE} WHERE updated < ?", (time.time() - self.expiry,)).rowcount

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class SQLAlchemySessionStore(SessionStore):
    """Sessions in any database SQLAlchemy reaches by URL; meant for PostgreSQL, where several
    server processes or machines serve one assistant."""

    def __init__(self, url: str, expiry: float = 3600.0):
        try:
            import sqlalchemy as sa
        except ImportError:
            raise NanoNLPError(f"sessions at '{url}' need SQLAlchemy and a driver: pip install 'nanonlp[sessions]'.") from None
        self.expiry, self.sa = expiry, sa
        try:
            self.engine = sa.create_engine(url, pool_pre_ping=True)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as err:
            raise NanoNLPError(f"cannot use the session database URL '{url}' ({err}); write it as "
                               "postgresql+psycopg://user:password@host:port/database.") from None
        metadata = sa.MetaData()
        self.table = sa.Table(TABLE, metadata, sa.Column("id", sa.String(64), primary_key=True),
                              sa.Column("state", sa.Text, nullable=False), sa.Column("updated", sa.Float, nullable=False))
        try:
            metadata.create_all(self.engine)
        except sa.exc.OperationalError as err:
            raise NanoNLPError(f"cannot reach the session database ({str(err.orig).strip()}); check the URL and that the server runs.") from None

    def get(self, session_id: str) -> DialogueState | None:
        sa = self.sa
        with self.engine.connect() as db:
            row = db.execute(sa.select(self.table.c.state, self.table.c.updated).where(self.table.c.id == session_id)).first()
        if row is None:
            return None
        if self._expired(row[1], time.time()):
            self.delete(session_id)
            return None
        return DialogueState.from_json(row[0])

    def put(self, state: DialogueState) -> None:
        values = {"id": state.session_id, "state": state.to_json(), "updated": state.updated}
        with self.engine.begin() as db:
            if self.engine.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            elif self.engine.dialect.name == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:  # others: delete and insert in one transaction
                db.execute(self.sa.delete(self.table).where(self.table.c.id == state.session_id))
                db.execute(self.sa.insert(self.table).values(**values))
                return
            statement = insert(self.table).values(**values)
            db.execute(statement.on_conflict_do_update(index_elements=["id"], set_={"state": values["state"], "updated": values["updated"]}))

    def delete(self, session_id: str) -> None:
        with self.engine.begin() as db:
            db.execute(self.sa.delete(self.table).where(self.table.c.id == session_id))

    def purge_expired(self) -> int:
        if not self.expiry:
            return 0
        with self.engine.begin() as db:
            return db.execute(self.sa.delete(self.table).where(self.table.c.updated < time.time() - self.expiry)).rowcount

    def close(self) -> None:
        self.engine.dispose()


def open_store(where, run_dir: str | Path | None = None, expiry: float = 3600.0) -> SessionStore:
    """A store from a setting: a SessionStore as is; None -> run_dir/sessions.sqlite; a URL with '://'
    -> SQLAlchemy; any other string -> a SQLite file at that path."""
    if isinstance(where, SessionStore):
        return where
    if where is None or where == "":
        if run_dir is None:
            raise NanoNLPError("no session store given and no run directory to keep sessions in.")
        return SQLiteSessionStore(Path(run_dir) / "sessions.sqlite", expiry)
    where = str(where)
    if "://" in where:
        if where.startswith("sqlite:///"):
            return SQLiteSessionStore(where[len("sqlite:///"):], expiry)
        return SQLAlchemySessionStore(where, expiry)
    return SQLiteSessionStore(where, expiry)
