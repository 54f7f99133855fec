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

    # ---- records ---------------------------------------------------------------------------
    def load(self, program: str, examples: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """The cached records of ``program`` for ``examples`` ({id: content hash}) whose content is
        unchanged: {id: record}. Rows of an example's older content are never returned."""
        conn = self._connect()
        if conn is None or not examples:
            return {}
        where, args = self._where()
        out: dict[str, dict[str, Any]] = {}
        try:
            with closing(conn):
                rows = conn.execute(f"SELECT example_id, example_hash, record FROM results WHERE {where} AND program=?",
                                    (*args, program)).fetchall()
        except sqlite3.Error as e:
            self._fail("read", e)
            return {}
        for example_id, example_hash, record in rows:
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
        conn = self._connect()
        if conn is None or not examples:
            return 0
        where, args = self._where()
        try:
            with closing(conn):
                rows = conn.execute(f"SELECT example_id, example_hash FROM results WHERE {where} AND program=?",
                                    (*args, program)).fetchall()
        except sqlite3.Error as e:
            self._fail("read", e)
            return 0
        current = {i for i, h in rows if examples.get(i) == h}
        return len({i for i, h in rows if i in examples and examples[i] != h} - current)

    def save(self, program: str, records: Iterable[tuple[str, str, Mapping[str, Any]]]) -> bool:
        """Insert or replace ``(example id, content hash, record)`` rows of ``program`` in one
        transaction (rows of other examples and programs are untouched); rows of an example's older
        content are deleted. False, with a warning, when the cache cannot be written."""
        rows = [(example_id, example_hash, json.dumps(dict(record), sort_keys=True, allow_nan=False))
                for example_id, example_hash, record in records]
        conn = self._connect()
        if conn is None:
            return False
        where, args = self._where()
        try:
            with closing(conn), conn:
                conn.executemany(f"DELETE FROM results WHERE {where} AND program=? AND example_id=? AND example_hash!=?",
                                 [(*args, program, i, h) for i, h, _ in rows])
                conn.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 [(*args, program, i, h, r) for i, h, r in rows])
        except (sqlite3.Error, ValueError) as e:
            self._fail("write", e)
            return False
        return True

    # ---- timings ---------------------------------------------------------------------------
    def load_seconds(self, program: str, questions: str) -> float | None:
        """Seconds per example of ``program`` as last measured on the question set ``questions``."""
        conn = self._connect()
        if conn is None:
            return None
        where, args = self._where()
        try:
            with closing(conn):
                row = conn.execute(f"SELECT seconds FROM timings WHERE {where} AND program=? AND questions=?",
                                   (*args, program, questions)).fetchone()
        except sqlite3.Error as e:
            self._fail("read", e)
            return None
        return None if row is None else float(row[0])

    def save_seconds(self, program: str, questions: str, seconds: float) -> bool:
        """Keep ``seconds`` per example for ``questions``; only the :data:`MAX_TIMINGS` newest sets stay."""
        conn = self._connect()
        if conn is None:
            return False
        where, args = self._where()
        try:
            with closing(conn), conn:
                newest = conn.execute(f"SELECT COALESCE(MAX(measured), 0) FROM timings WHERE {where} AND program=?",
                                      (*args, program)).fetchone()[0]
                conn.execute("INSERT OR REPLACE INTO timings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (*args, program, questions, float(seconds), int(newest) + 1))
                conn.execute(f"DELETE FROM timings WHERE {where} AND program=? AND measured <= ?",
                             (*args, program, int(newest) + 1 - MAX_TIMINGS))
        except sqlite3.Error as e:
            self._fail("write", e)
            return False
        return True

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
