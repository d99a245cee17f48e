"""Opening the DuckDB file: short-lived connections, so the daemon and readers can take turns.

DuckDB lets one process hold a file read-write, and while it does no other process can open it at all. The daemon
therefore never keeps the file open: its single writer opens it for one batched transaction and closes it again
(see storage/writer.py), and readers (`sentimon status`, a plain `duckdb -readonly` client) get it in between.
Both sides retry while the other holds the lock.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from storage.migrations import is_current, migrate

_LOCK_MESSAGE = re.compile(r"lock|being used by another process", re.IGNORECASE)


class DatabaseError(Exception):
    """The database can't be used; the message says which file and why."""


class DatabaseLocked(DatabaseError):
    """Another process held the file for longer than we were willing to wait."""


class Database:
    def __init__(self, path: Path | str, *, lock_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self._migrated = False

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One read-write transaction: committed when the block ends, rolled back if it raises."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect(read_only=False)
        try:
            if not self._migrated:
                migrate(conn)
                self._migrated = True
            conn.begin()
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        finally:
            conn.close()

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if not self.path.exists():
            raise DatabaseError(f"{self.path}: no database yet (run `sentimon run --once` or `sentimon run` first)")
        conn = self._connect(read_only=True)
        if not self._migrated and not is_current(conn):
            conn.close()
            self._update_schema()
            conn = self._connect(read_only=True)
        self._migrated = True
        try:
            yield conn
        finally:
            conn.close()

    def _update_schema(self) -> None:
        """A file written by an older sentimon (the daemon not restarted since an upgrade): readers bring its
        schema up to date as the daemon would at start, so new queries find what they read."""
        try:
            with self.write():
                pass
        except DatabaseLocked:
            raise
        except DatabaseError as exc:
            raise DatabaseError(
                f"{self.path}: its schema is older than this sentimon's and cannot be updated here "
                f"({exc.__cause__ or exc}); start the daemon once, or run this with write access to the file"
            ) from exc

    def _connect(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.02
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.Error as exc:
                if not _LOCK_MESSAGE.search(str(exc)):
                    raise DatabaseError(
                        f"{self.path}: cannot open as a DuckDB database ({exc}). If the file is damaged, move it "
                        "aside; sentimon creates a new one"
                    ) from exc
                if time.monotonic() >= deadline:
                    raise DatabaseLocked(
                        f"{self.path}: held by another process for over {self.lock_timeout:.0f}s ({exc}). "
                        "Close long-lived connections to it: sentimon opens the file only briefly"
                    ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
