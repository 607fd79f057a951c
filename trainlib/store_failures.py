"""A store that fails: lost (waited out, then exit 3), broken (read-only, corrupt: exit 3 at once), or a wrong path.

Waiting: every call to a database or tracking server that fails because the store is unreachable is retried
with bounded backoff, one log line per retry, for at most ``--max-outage`` seconds (call_patiently); a signal
ends every such wait at once. Broken: what a store's error says (read-only, not a database, a half-done
migration) is read by ``store_damage``; local sqlite files are checked before a library retries them for
minutes. Paths: a local store path that cannot name the store (a folder given for a file, a path through a
file, a name the file system cannot hold) is the user's mistake, InvalidArgument; a path that is right but
cannot be written is StoreDamaged. Writability is tried, not read from the permission bits, which say nothing
for root or a read-only mount.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from trainlib.errors import InvalidArgument
from trainlib.stores import scrub, with_installed_driver

log = logging.getLogger(__name__)
T = TypeVar("T")

HEARTBEAT_INTERVAL_SECONDS = 10
GRACE_PERIOD_SECONDS = 30
MAX_OUTAGE_SECONDS = 120
_MAX_DELAY_SECONDS = 30.0


class StoreUnavailable(RuntimeError):
    """A store stayed unreachable past the outage budget; ``store`` is 'tracking' or 'storage'."""

    def __init__(self, message: str, store: str) -> None:
        super().__init__(message)
        self.store = store


class StoreDamaged(RuntimeError):
    """A store that answers but cannot be used: read-only, corrupt, or in a state this tool must not repair.

    Waiting does not help, so the command stops at once (exit code 3) with one line naming the store and cause.
    """


_stop_waiting = threading.Event()


def stop_waiting_for_stores() -> None:
    """Make every wait for a lost store end now (a signal asked the command to stop)."""
    _stop_waiting.set()


def sleep_unless_stopped(seconds: float) -> None:
    """Sleep ``seconds``, or less if stop_waiting_for_stores is called meanwhile."""
    _stop_waiting.wait(seconds)


def resume_waiting_for_stores() -> None:
    """Wait out lost stores again (a new command in the same process)."""
    _stop_waiting.clear()


def retry_delays(max_outage_seconds: float) -> list[float]:
    """Waits between attempts: 1, 2, 4, ... s (at most 30 s each), adding up to ``max_outage_seconds``."""
    delays: list[float] = []
    total, delay = 0.0, 1.0
    while total < max_outage_seconds:
        step = min(delay, _MAX_DELAY_SECONDS, max_outage_seconds - total)
        delays.append(step)
        total += step
        delay *= 2
    return delays


def call_patiently(
    call: Callable[[], T],
    *,
    store: str,
    label: str,
    is_transient: Callable[[BaseException], bool],
    max_outage_seconds: float,
    secret_url: str = "",
) -> T:
    """``call()``, retried with backoff while it fails with a transient error, for at most ``max_outage_seconds``.

    Each retry logs one line naming ``label`` (a redacted URL); giving up raises StoreUnavailable (one line).
    """
    delays = retry_delays(max_outage_seconds)
    attempts = len(delays) + 1
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as error:
            elapsed = time.monotonic() - started
            if not is_transient(error):
                raise
            reason = scrub(first_line(error), secret_url)
            if _stop_waiting.is_set():
                raise StoreUnavailable(f"{label} unreachable; not waiting (stopping). Last: {reason}", store) from None
            if attempt == attempts or elapsed >= max_outage_seconds:
                raise StoreUnavailable(
                    f"{label} unreachable for {elapsed:.0f} s ({attempt} attempts); giving up. Last error: {reason}",
                    store,
                ) from None
            delay = delays[attempt - 1]
            log.warning("%s unreachable, retrying in %g s (attempt %d/%d)", label, delay, attempt + 1, attempts)
            sleep_unless_stopped(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


# What a store's error says about a store that waiting cannot mend (read from the error and its causes).
_DAMAGE_SIGNS = {
    "readonly database": "read-only",
    "read-only file system": "read-only",
    "permission denied": "read-only (permission denied)",
    "operation not permitted": "read-only (operation not permitted)",
    "unable to open database file": "the database file cannot be opened (a read-only or missing folder?)",
    "file is not a database": "corrupt: not a database",
    "database disk image is malformed": "corrupt: the database file is malformed",
    "no such table": "damaged: a table is missing (an interrupted schema migration?)",
    "_alembic_tmp": "damaged: a schema migration was interrupted",
    "out-of-date database schema": "its schema is out of date (mlflow db upgrade)",
    "can't locate revision": "its schema is from another MLflow version",
    "disk i/o error": "disk I/O error",
    "database or disk is full": "the disk is full",
    "no space left on device": "the disk is full",
}


def store_damage(error: BaseException) -> str | None:
    """Why ``error`` means a store that cannot be used (read-only, corrupt, ...), or None if it does not say so."""
    seen: BaseException | None = error
    while seen is not None:
        text = str(seen).lower()
        for sign, cause in _DAMAGE_SIGNS.items():
            if sign in text:
                return cause
        seen = seen.__cause__ or seen.__context__
    return None


def connect_args(storage_url: str) -> dict[str, int]:
    """Driver options so a lost database shows up as an error within seconds, never as a hang."""
    if storage_url.startswith(("postgresql://", "postgresql+psycopg2://", "postgresql+psycopg://")):
        # libpq: give up connecting after 10 s; notice a silently dead server on an idle connection within ~30 s.
        return {"connect_timeout": 10, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
    if storage_url.startswith(("mysql://", "mysql+pymysql://", "mysql+mysqldb://")):
        return {"connect_timeout": 10}
    return {}


SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_file(path: Path, what: str) -> None:
    """Raise StoreDamaged if ``path`` exists but is not a usable sqlite database (before a library retries it).

    Checks the file's header, that its table list can be read, and that no schema migration was left half done
    (MLflow's migrations copy a table to ``_alembic_tmp_<name>`` and drop the copy when they finish).
    """
    import sqlite3

    if not path.is_file() or path.stat().st_size == 0:
        return  # a new store: created on first use
    with path.open("rb") as database:
        if database.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise StoreDamaged(f"{what} {path} is corrupt: not a sqlite database")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as database:
            tables = [name for (name,) in database.execute("select name from sqlite_master where type = 'table'")]
    except sqlite3.DatabaseError as error:
        raise StoreDamaged(f"{what} {path} is corrupt: {error}") from None
    unfinished = [table for table in tables if table.startswith("_alembic_tmp_")]
    if unfinished:
        raise StoreDamaged(
            f"{what} {path} is damaged: a schema migration was interrupted (table {unfinished[0]}); "
            "restore it from a backup"
        )


def probe_database(url: str) -> None:
    """Connect to the database of ``url`` once (PostgreSQL, MySQL), raising the driver's error if it is down."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        with_installed_driver(url), connect_args=connect_args(url), poolclass=sqlalchemy.pool.NullPool
    )
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def database_unreachable(error: BaseException) -> bool:
    """True when ``error`` (or what caused it) is a lost or refused database connection, not a bad query.

    A busy sqlite file ('database is locked') counts as unreachable: it is waited out like a lost server.
    """
    import sqlalchemy.exc

    if store_damage(error) is not None:
        return False
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (at most 300 characters), or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


# ---- local store paths, checked before anything is written ----


def check_store_file(path: Path, what: str) -> None:
    """``path`` can be a store file: not a folder, under folders only, and writable (or creatable) here."""
    path = path.absolute()
    if path.is_dir():
        raise InvalidArgument(f"{what} {path} is a folder; give the path of a file (created if missing)")
    folder = nearest_existing(path.parent, what, path)
    if path.exists():
        _try_open_for_writing(path, what)
    else:
        _try_create_in(folder, what, path)


def check_store_folder(path: Path, what: str, name: str | None = None) -> None:
    """``path`` can be a store folder (created if missing) and, if given, ``name`` fits as a file name in it."""
    path = path.absolute()
    if path.exists() and not path.is_dir():
        raise InvalidArgument(f"{what} {path} is a file, not a folder")
    folder = nearest_existing(path, what, path)
    if name is not None:
        limit = os.pathconf(folder, "PC_NAME_MAX")
        if len(name.encode()) > limit:
            raise InvalidArgument(
                f"study name of {len(name.encode())} bytes is longer than a file name in {what} {path} can be "
                f"({limit} bytes); give a shorter --study-name"
            )
    _try_create_in(folder, what, path)


def nearest_existing(path: Path, what: str, target: Path) -> Path:
    """The nearest existing folder at or above ``path``; InvalidArgument if a file stands in the way."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise InvalidArgument(f"{what} {target} cannot be created: {candidate} is a file, not a folder")
            return candidate
    raise AssertionError("the root folder exists")


def _try_open_for_writing(path: Path, what: str) -> None:
    try:
        with path.open("r+b"):
            pass
    except OSError as error:
        raise StoreDamaged(f"{what} {path} cannot be written: read-only ({error.strerror})") from None


def _try_create_in(folder: Path, what: str, target: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise StoreDamaged(f"{what} {target} cannot be written: {folder} is read-only ({error.strerror})") from None
