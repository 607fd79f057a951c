"""The journal file, Optuna's storage for one machine: checked before use, a torn last record set aside.

Optuna appends each change as one JSON line under a lock. A crash in the middle of an append leaves a last line
without its newline; Optuna skips it when reading, but the next append would be written onto it, and from then
on the study could not be loaded. So before the study is opened, holding Optuna's own lock, an incomplete last
record is copied aside (``<journal>.torn-<time>``) and cut off. A damaged record in the middle cannot be mended
that way: the command stops with one line naming the file and the byte offset.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import BinaryIO

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage

from trainlib.store_failures import StoreDamaged

log = logging.getLogger(__name__)
_CHUNK = 1 << 16


def open_journal(path: Path) -> JournalStorage:
    """Optuna's journal storage on ``path`` (created if missing), after setting aside a torn last record."""
    lock = JournalFileSymlinkLock(str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(path), lock_obj=lock)
        lock.acquire()
        try:
            set_aside_torn_record(path)
        finally:
            lock.release()
        return JournalStorage(backend)
    except OSError as error:  # a read-only file, folder or file system; a full disk
        raise StoreDamaged(f"Optuna journal {path} cannot be written: {error.strerror}") from None
    except ValueError:  # Optuna could not read a record: say which and where
        offset, reason = first_damaged_record(path)
        raise StoreDamaged(
            f"Optuna journal {path} is damaged at byte {offset} ({reason}); restore it from a backup, "
            "or cut it at that byte to keep the records before it"
        ) from None


def set_aside_torn_record(path: Path) -> Path | None:
    """Cut an incomplete last record (no final newline) off ``path``, keeping a copy; return the copy's path.

    Call it holding the journal's lock, so that no writer is in the middle of an append.
    """
    size = path.stat().st_size
    if size == 0:
        return None
    with path.open("rb") as journal:
        journal.seek(size - 1)
        if journal.read(1) == b"\n":
            return None
        complete = _end_of_last_line(journal, size)
    backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    shutil.copy2(path, backup)
    os.truncate(path, complete)
    log.warning(
        "Optuna journal %s: its last record was incomplete (%d bytes, written by a command that crashed); "
        "removed it, the whole file is kept in %s",
        path,
        size - complete,
        backup,
    )
    return backup


def _end_of_last_line(journal: BinaryIO, size: int) -> int:
    """The offset just past the last newline of the open file ``journal`` of ``size`` bytes (0 if it has none)."""
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        journal.seek(start)
        chunk = journal.read(end - start)
        newline = chunk.rfind(b"\n")
        if newline != -1:
            return start + newline + 1
        end = start
    return 0


def first_damaged_record(path: Path) -> tuple[int, str]:
    """The byte offset of the first record of ``path`` that is not a JSON line, and what is wrong with it."""
    offset = 0
    with path.open("rb") as journal:
        for line in journal:
            if not line.endswith(b"\n"):
                return offset, "an incomplete record"
            try:
                json.loads(line)
            except UnicodeDecodeError:
                return offset, "bytes that are not text"
            except json.JSONDecodeError as error:
                return offset, f"not a JSON record: {error.msg}"
            offset += len(line)
    return offset, "a record Optuna cannot read"
