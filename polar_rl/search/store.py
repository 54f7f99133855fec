"""One per-example result store for fixed programs (the full model is the identity program).

A result is reused only when everything that determines it is unchanged, and that is its key:

    model     the weights hash (:func:`polar_rl.models.loading.model_hash`)
    dtype     float32 / bfloat16 / float16
    device    the device kind (cpu / cuda / mps round differently)
    scoring   what a value means (the scoring rule and the kind of record, e.g. the full model's
              reference or an evaluation record)
    program   the program's key (block size, loop runs, runs per block; "identity" for the full model)
    example   the example's id and a hash of its content (context, choices, gold)

The task's *name* is no part of the key: two tasks that hold the same question share its result, and
a question edited under the same name is a new key (its old result is never served). Timings
(seconds per example) are kept per question set, so a ``--limit`` subset never replaces a split's.

Storage is one sqlite3 database, ``$POLAR_RL_CACHE/results.sqlite`` (WAL journal, a busy timeout):
each save inserts or replaces only the rows it is given, in one transaction, so concurrent writers
(``sweep --parallel``) neither lose each other's rows nor rewrite a whole file. A cache that cannot
be opened or written costs a warning, never the run.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DB_FILE = "results.sqlite"
SCHEMA_VERSION = 1
MAX_TIMINGS = 16  # question sets whose timing a (scoring, program) keeps, newest last
_TIMEOUT_S = 60.0  # how long a writer waits for another's transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL, dtype TEXT NOT NULL, device TEXT NOT NULL, scoring TEXT NOT NULL,
    program TEXT NOT NULL, example_id TEXT NOT NULL, example_hash TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (model, dtype, device, scoring, program, example_id, example_hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS timings (
    model TEXT NOT NULL, dtype TEXT NOT NULL, device TEXT NOT NULL, scoring TEXT NOT NULL,
    program TEXT NOT NULL, questions TEXT NOT NULL, seconds REAL NOT NULL, measured INTEGER NOT NULL,
    PRIMARY KEY (model, dtype, device, scoring, program, questions)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS imported (path TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class StoreKey:
    """What a result depends on besides the program and the example."""

    model: str
    dtype: str
    device: str  # the device kind: "cuda:1" is stored as "cuda"
    scoring: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", self.device.split(":")[0])


class ResultStore:
    """Per-example records (JSON-able mappings) of programs under one :class:`StoreKey`."""

    def __init__(self, key: StoreKey, root: Path) -> None:
        self.key, self.path = key, Path(root) / DB_FILE
        self._broken = False  # set after the first failure: one warning, then no cache

    # ---- connection ------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection | None:
        if self._broken:
            return None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=_TIMEOUT_S)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                conn.close()
                raise sqlite3.DatabaseError(f"schema version {version}, this polar-rl writes {SCHEMA_VERSION}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return conn
        except (OSError, sqlite3.Error) as e:
            self._fail("open", e)
            return None

    def _fail(self, what: str, e: BaseException) -> None:
        if not self._broken:
            print(f"warning: result cache {self.path}: cannot {what} it ({type(e).__name__}: {e}); "
                  f"results are recomputed and not cached")
        self._broken = True

    def _where(self) -> tuple[str, tuple[str, ...]]:
        k = self.key
        return "model=? AND dtype=? AND device=? AND scoring=?", (k.model, k.dtype, k.device, k.scoring)

    def _select(self, columns: str, table: str, condition: str, *params: Any) -> list[tuple[Any, ...]] | None:
        """Rows of ``table`` under this key and ``condition``; None (after one warning) when unreadable."""
        conn = self._connect()
        if conn is None:
            return None
        where, args = self._where()
        try:
            with closing(conn):
                return conn.execute(f"SELECT {columns} FROM {table} WHERE {where} AND {condition}",
                                    (*args, *params)).fetchall()
        except sqlite3.Error as e:
            self._fail("read", e)
            return None

    def _write(self, statements: Sequence[tuple[str, Sequence[tuple[Any, ...]]]]) -> bool:
        """Run ``(sql, rows)`` pairs (each row after this key's four values) in one transaction."""
        conn = self._connect()
        if conn is None:
            return False
        _, args = self._where()
        try:
            with closing(conn), conn:
                for sql, rows in statements:
                    conn.executemany(sql, [(*args, *row) for row in rows])
        except sqlite3.Error as e:
            self._fail("write", e)
            return False
        return True

    # ---- records ---------------------------------------------------------------------------
    def _program_rows(self, program: str) -> list[tuple[Any, ...]]:
        return self._select("example_id, example_hash, record", "results", "program=?", program) or []

    def load(self, program: str, examples: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """The cached records of ``program`` for ``examples`` ({id: content hash}) whose content is
        unchanged: {id: record}. Rows of an example's older content are never returned."""
        out: dict[str, dict[str, Any]] = {}
        for example_id, example_hash, record in self._program_rows(program) if examples else ():
            if examples.get(example_id) == example_hash:
                try:
                    value = json.loads(record)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    out[example_id] = value
        return out

    def stale(self, program: str, examples: Mapping[str, str]) -> int:
        """How many of ``examples`` have a cached row only for other content (edited since)."""
        rows = self._program_rows(program) if examples else []
        current = {i for i, h, _ in rows if examples.get(i) == h}
        return len({i for i, h, _ in rows if i in examples and examples[i] != h} - current)

    def save(self, program: str, records: Iterable[tuple[str, str, Mapping[str, Any]]]) -> bool:
        """Insert or replace ``(example id, content hash, record)`` rows of ``program`` in one
        transaction (rows of other examples and programs are untouched); rows of an example's older
        content are deleted. False, with a warning, when the cache cannot be written."""
        try:
            rows = [(i, h, json.dumps(dict(r), sort_keys=True, allow_nan=False)) for i, h, r in records]
        except ValueError as e:  # a non-finite value: not a result worth keeping
            self._fail("write", e)
            return False
        where, _ = self._where()
        return self._write([
            (f"DELETE FROM results WHERE {where} AND program=? AND example_id=? AND example_hash!=?",
             [(program, i, h) for i, h, _ in rows]),
            ("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(program, i, h, r) for i, h, r in rows]),
        ])

    # ---- timings ---------------------------------------------------------------------------
    def load_seconds(self, program: str, questions: str) -> float | None:
        """Seconds per example of ``program`` as last measured on the question set ``questions``."""
        rows = self._select("seconds", "timings", "program=? AND questions=?", program, questions)
        return float(rows[0][0]) if rows else None

    def save_seconds(self, program: str, questions: str, seconds: float) -> bool:
        """Keep ``seconds`` per example for ``questions``; only the :data:`MAX_TIMINGS` newest sets stay."""
        rows = self._select("COALESCE(MAX(measured), 0)", "timings", "program=?", program)
        if rows is None:
            return False
        order = int(rows[0][0]) + 1
        where, _ = self._where()
        return self._write([
            ("INSERT OR REPLACE INTO timings VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(program, questions, float(seconds), order)]),
            (f"DELETE FROM timings WHERE {where} AND program=? AND measured <= ?", [(program, order - MAX_TIMINGS)]),
        ])

    # ---- files of earlier versions ---------------------------------------------------------------
    def import_once(self, path: Path, rows: Sequence[tuple[str, str, str, Mapping[str, Any]]]) -> bool:
        """Insert ``(program, example id, content hash, record)`` rows read from the legacy cache file
        ``path``, once per version of that file. True when they were imported now."""
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return False
        conn = self._connect()
        if conn is None:
            return False
        where, args = self._where()
        try:
            with closing(conn), conn:
                seen = conn.execute("SELECT mtime_ns FROM imported WHERE path=?", (str(path),)).fetchone()
                if seen is not None and seen[0] == mtime:
                    return False
                conn.executemany("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 [(*args, p, i, h, json.dumps(dict(r), sort_keys=True)) for p, i, h, r in rows])
                conn.execute("INSERT OR REPLACE INTO imported VALUES (?, ?)", (str(path), mtime))
        except (sqlite3.Error, ValueError, TypeError) as e:
            self._fail("import into", e)
            return False
        return True


__all__ = ["DB_FILE", "MAX_TIMINGS", "ResultStore", "StoreKey"]
