"""Telling a broken store from a lost one, and local store paths checked before anything is written."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy.exc

from trainlib.errors import InvalidArgument
from trainlib.store_failures import (
    StoreDamaged,
    StoreUnavailable,
    call_patiently,
    check_sqlite_file,
    check_store_file,
    check_store_folder,
    database_unreachable,
    resume_waiting_for_stores,
    stop_waiting_for_stores,
    store_damage,
)


def wrapped(message: str) -> sqlalchemy.exc.OperationalError:
    """A driver error as SQLAlchemy raises it."""
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))


@pytest.mark.parametrize(
    ("message", "damage", "unreachable"),
    [
        ("attempt to write a readonly database", "read-only", False),
        ("file is not a database", "corrupt: not a database", False),
        ("database disk image is malformed", "corrupt: the database file is malformed", False),
        ("database is locked", None, True),
        ('connection to server at "127.0.0.1", port 1 failed: Connection refused', None, True),
    ],
)
def test_store_errors_are_told_apart(message: str, damage: str | None, unreachable: bool) -> None:
    error = wrapped(message)
    assert store_damage(error) == damage
    assert database_unreachable(error) is unreachable


def test_a_sqlite_file_that_is_not_a_database_or_half_migrated_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    check_sqlite_file(path, "MLflow store")  # missing: a new store
    path.write_bytes(b"")
    check_sqlite_file(path, "MLflow store")  # empty: a new store too
    path.write_bytes(b"not a database at all")
    with pytest.raises(StoreDamaged, match="not a sqlite database"):
        check_sqlite_file(path, "MLflow store")
    path.unlink()
    with contextlib.closing(sqlite3.connect(path)) as database:
        database.execute("create table runs (id integer)")
        database.commit()
    check_sqlite_file(path, "MLflow store")
    with contextlib.closing(sqlite3.connect(path)) as database:
        database.execute("create table _alembic_tmp_runs (id integer)")
        database.commit()
    with pytest.raises(StoreDamaged, match="migration was interrupted"):
        check_sqlite_file(path, "MLflow store")


def test_store_paths_wrong_is_invalid_read_only_is_damaged(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(InvalidArgument, match="is a folder"):
        check_store_file(tmp_path, "Optuna journal")
    with pytest.raises(InvalidArgument, match="is a file, not a folder"):
        check_store_file(a_file / "deeper" / "optuna.journal", "Optuna journal")
    with pytest.raises(InvalidArgument, match="is a file, not a folder"):
        check_store_folder(a_file, "MLflow artifact folder")
    with pytest.raises(InvalidArgument, match="shorter --study-name"):
        check_store_folder(tmp_path / "artifacts", "MLflow artifact folder", name="s" * 300)
    check_store_file(tmp_path / "new" / "optuna.journal", "Optuna journal")
    assert not (tmp_path / "new").exists()  # checked, nothing created

    subprocess.run(["chattr", "+i", str(a_file)], check=True)
    try:
        with pytest.raises(StoreDamaged, match="read-only"):
            check_store_file(a_file, "MLflow store")
    finally:
        subprocess.run(["chattr", "-i", str(a_file)], check=True)
    assert list(tmp_path.iterdir()) == [a_file]


def test_a_wait_for_a_lost_store_ends_when_the_command_is_told_to_stop() -> None:
    attempts = []

    def refused() -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 2:  # waiting out the first refusal now: stop it from another thread
            threading.Thread(target=stop_waiting_for_stores).start()
        raise wrapped("Connection refused")

    try:
        with pytest.raises(StoreUnavailable, match="not waiting"):
            call_patiently(
                refused, store="tracking", label="db", is_transient=database_unreachable, max_outage_seconds=3600
            )
    finally:
        resume_waiting_for_stores()
    assert 2 <= len(attempts) <= 3
