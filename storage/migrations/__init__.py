"""Versioned schema migrations: NNN_name.sql files applied in order, each once, each in its own transaction."""

from __future__ import annotations

from importlib import resources

import duckdb


def available() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration file shipped with this package, in order."""
    found = []
    for entry in resources.files(__package__).iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append((int(version), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def current_version(conn: duckdb.DuckDBPyConnection) -> int:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


def is_current(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether every shipped migration is applied; works on a read-only connection."""
    tracked = conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_migrations'").fetchone()[0]
    done = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0] if tracked else 0
    return done >= available()[-1][0]


def migrate(conn: duckdb.DuckDBPyConnection) -> list[int]:
    """Bring the schema up to date; returns the versions applied now."""
    applied = []
    done = current_version(conn)
    for version, name, sql in available():
        if version <= done:
            continue
        conn.begin()
        try:
            conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        applied.append(version)
    return applied
