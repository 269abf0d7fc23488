"""The results store: one SQLite database (WAL mode) and a folder of safetensors weights.

A store is a directory::

    <dir>/sparank.sqlite                  runs, measurements, brackets (WAL mode)
    <dir>/weights/<run_id>.safetensors    the weights of each run that has any

Tables:

- ``meta``: ``format = 'sparank'``, ``schema_version`` and the run counter;
- ``runs``: one trained (or imported) model: ``id`` (``r0001``, ``r0002``...),
  an optional unique content ``key`` (the study runner uses it to skip work
  already done), ``created`` (UTC, ISO 8601), ``kind`` (``'train'``,
  ``'import'``, ``'linear'``...), and JSON columns ``config`` (the resolved
  config), ``history`` (per-epoch records), ``metrics``, ``structure`` (from
  :mod:`sparank.structure`), plus ``weights``, the weights file relative to the
  store directory, or NULL;
- ``measurements``: one robustness measurement of a run: its ``config``
  (attack settings), ``summary`` (``Summary.to_dict()``) and an optional
  unique ``key`` (:func:`measurement_key`: run, attack, settings, evaluation
  indices), so that measuring the same thing twice reuses the first result;
- ``brackets``: the per-input verified brackets of a measurement, in the
  order measured: ``input_index`` (into the test split), ``label``,
  ``eps_lo``, ``eps_hi`` (+inf for censored inputs, stored as an IEEE REAL),
  ``status`` (:class:`sparank.robustness.Status`), ``distance`` (the verified
  adversarial's distance) and ``certified`` (1: proved, 0: scanned at the
  measurement's resolution, NULL: certification not asked).

JSON columns are strict JSON, readable by any SQLite client: a non-finite
float is stored as the string ``"inf"``, ``"-inf"`` or ``"nan"`` (the
convention of ``Summary.to_dict``) and comes back as that string.

Every write is one transaction, so an interrupted program loses nothing that
had finished and leaves nothing half-written: weights are written to a
temporary file, moved into place with ``os.replace``, and only then is the row
committed, so a row never points at a missing or partial file. Weights are
only ever read with safetensors, never with pickle. A writer killed while
writing weights can leave a ``weights/.rNNNN.safetensors.PID.tmp`` file or a
weights file whose row was never committed; opening the store for writing
removes both (under the write lock, so never a live writer's file).

Reading and writing: ``Store(path)`` opens for writing and checks at once
that it can write (a read-only file system, an immutable database file or a
read-only folder is a :class:`StoreError` before any work starts);
``Store(path, readonly=True)`` opens the database read-only (SQLite
``mode=ro``, or ``immutable=1`` where even that cannot work, e.g. a WAL
database on a read-only mount), so a store on a read-only mount can be read.
A damaged database file is a :class:`StoreError` naming it, never a bare
``sqlite3.DatabaseError``.

Example::

    with Store("sparank-results") as store:
        run_id = store.add_run(kind="train", config=config, state_dict=model.state_dict())
        store.add_measurement(run_id, config={"n": 500}, result=result, indices=indices)
        model.load_state_dict(store.load_weights(run_id))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sqlite3
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from sparank.robustness import jsonable

if TYPE_CHECKING:
    from sparank.robustness import RobustnessResult

#: the database file inside a store directory
DB_NAME = "sparank.sqlite"
#: the folder of weights files inside a store directory
WEIGHTS_DIR = "weights"
#: bumped whenever the tables change; a store with a larger version is refused.
#: 2: ``measurements.key`` (a store of version 1 is upgraded when opened for writing)
#: 3: ``brackets.distance``, the verified adversarial's ||x_adv − x|| (NULL in measurements stored before it)
#: 4: ``brackets.certified``, 1 where the input's result is proved (FGSM with certify), 0 where it is scanned,
#:    NULL where certification was not asked (and in measurements stored before it)
SCHEMA_VERSION = 4

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE runs (
    id        TEXT PRIMARY KEY,
    key       TEXT UNIQUE,
    created   TEXT NOT NULL,
    kind      TEXT NOT NULL,
    config    TEXT NOT NULL,
    history   TEXT,
    metrics   TEXT,
    structure TEXT,
    weights   TEXT
);
CREATE TABLE measurements (
    id      INTEGER PRIMARY KEY,
    run_id  TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    created TEXT NOT NULL,
    config  TEXT NOT NULL,
    summary TEXT NOT NULL,
    key     TEXT
);
CREATE INDEX measurements_by_run ON measurements(run_id);
CREATE UNIQUE INDEX measurements_by_key ON measurements(key);
CREATE TABLE brackets (
    measurement_id INTEGER NOT NULL REFERENCES measurements(id) ON DELETE CASCADE,
    position       INTEGER NOT NULL,
    input_index    INTEGER NOT NULL,
    label          INTEGER NOT NULL,
    eps_lo         REAL NOT NULL,
    eps_hi         REAL NOT NULL,
    status         INTEGER NOT NULL,
    distance       REAL,
    certified      INTEGER,
    PRIMARY KEY (measurement_id, position)
) WITHOUT ROWID;
"""


class StoreError(ValueError):
    """The store, a run in it, or a weights file is missing, unreadable, read-only, damaged or not what was asked for."""


class DuplicateKeyError(StoreError):
    """A run or measurement with this content key is already stored; ``existing`` is its id."""

    def __init__(self, message: str, existing: str | int) -> None:
        super().__init__(message)
        self.existing = existing


def measurement_key(run_id: str, settings: dict[str, Any], indices: Tensor | list[int]) -> str:
    """The content key of a measurement: the run, the attack and its settings, and the evaluation indices.

    Two measurements with the same key measure the same thing and give the
    same brackets; the store keeps one (see :meth:`Store.add_measurement`).
    Leave settings that do not change the result (batch size, threads) out
    of ``settings``.
    """
    index_list = torch.as_tensor(indices).tolist() if isinstance(indices, Tensor) else [int(i) for i in indices]
    payload = {"run": run_id, "settings": jsonable(settings), "indices": index_list}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class RunRecord:
    """One run as stored: a trained or imported model and what was recorded about it."""

    id: str
    key: str | None
    created: str  # UTC, ISO 8601
    kind: str
    config: dict[str, Any]
    history: list[dict[str, Any]] | None
    metrics: dict[str, Any] | None
    structure: dict[str, Any] | None
    weights: Path | None  # absolute path of the safetensors file, or None


@dataclass(frozen=True)
class MeasurementRecord:
    """One robustness measurement of a run: its settings and its summary (brackets: :meth:`Store.brackets`)."""

    id: int
    run_id: str
    created: str  # UTC, ISO 8601
    config: dict[str, Any]
    summary: dict[str, Any]  # Summary.to_dict(): inf appears as the string "inf"
    key: str | None = None  # measurement_key(...), or None for one stored without a key


@dataclass(frozen=True)
class BracketTable:
    """The per-input brackets of one measurement, in the order measured. Every tensor is ``(N,)``."""

    input_index: Tensor  # int64, index into the test split
    label: Tensor  # int64, the true label
    eps_lo: Tensor  # float64
    eps_hi: Tensor  # float64; ε* = eps_hi (0 clean-wrong, inf censored)
    status: Tensor  # int64, values of sparank.robustness.Status
    distance: Tensor  # float64, ||x_adv − x|| of the verified adversarial (inf none); NaN where not recorded (before schema 3)
    # bool: the input's result is proved (FGSM with certify) rather than scanned; None where certification was not asked
    certified: Tensor | None = None

    def __len__(self) -> int:
        return len(self.status)


# --------------------------------------------------------------------------- weights files


def _contiguous_clones(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, unshared copies: what safetensors accepts."""
    tensors: dict[str, Tensor] = {}
    for name, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"state_dict[{name!r}] is a {type(value).__name__}, not a tensor; safetensors stores tensors only")
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    return tensors


def _write_atomically(path: Path, tensors: dict[str, Tensor]) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then ``os.replace`` it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_weights(path: str | Path, state_dict: dict[str, Tensor]) -> Path:
    """Save a state dict as a safetensors file (atomically: a reader never sees a partial file).

    Tensors are copied to contiguous CPU clones first, so views, shared
    storage (tied weights) and GPU tensors are all fine. Returns the path.
    """
    path = Path(path)
    _write_atomically(path, _contiguous_clones(state_dict))
    return path


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Load a safetensors file into a state dict (CPU tensors), never through pickle.

    Raises:
        StoreError: the file is missing or is not a valid safetensors file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"weights file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise StoreError(f"{path} is not a valid safetensors file ({e}); export weights with safetensors.torch.save_file") from None


# --------------------------------------------------------------------------- JSON columns


def _to_json(field: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(jsonable(value), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{field} cannot be stored as JSON ({e}); give plain dicts, lists, strings and numbers") from None


def _from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the store

#: what a killed writer can leave in ``weights/``
_TMP_NAME = re.compile(r"\..+\.safetensors\.\d+\.tmp")
_WEIGHTS_NAME = re.compile(r"r(\d+)\.safetensors")


class Store:
    """A results store directory: SQLite (WAL) for records, safetensors for weights.

    Args:
        path: the store directory (created if missing, with ``create=True``).
            The path of its ``sparank.sqlite`` file is accepted too.
        create: make a new store if there is none; with ``False`` a missing
            store is an error (for commands that only read).
        readonly: open the database read-only (never created, never
            upgraded, never written); works on a read-only mount.

    Raises:
        StoreError: ``path`` is not a sparank store, was written by a newer
            sparank (its schema_version is larger than this one's), is damaged,
            cannot be created, or (without ``readonly``) cannot be written.
    """

    def __init__(self, path: str | Path, *, create: bool = True, readonly: bool = False) -> None:
        path = Path(path)
        if path.is_file() and path.name == DB_NAME:
            path = path.parent
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not a sparank store (a store is a directory holding {DB_NAME})")
        db = path / DB_NAME
        self.path = path
        self.readonly = readonly
        self._db = db
        self._version = SCHEMA_VERSION
        if not db.is_file() and (readonly or not create):
            if db.exists():
                raise StoreError(f"{db} is not a file; a sparank store holds its database in a file named {DB_NAME}")
            raise StoreError(f"no sparank store at {path} (no {DB_NAME} there); run a study or `sparank train` to make one")
        if readonly:
            self._con = self._connect_readonly(db)
            return
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create a store at {path}: {e.strerror or e}; choose a writable --store directory") from None
        # isolation_level=None: no implicit transactions; every write below opens its own
        try:
            self._con = sqlite3.connect(db, timeout=60.0, isolation_level=None)
        except sqlite3.OperationalError as e:
            raise self._translate(e) from None
        try:
            self._open_schema()  # first, so that a database that is not a store is left as it was
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA foreign_keys=ON")
            self._check_writable()
            self._remove_orphans()
        except sqlite3.OperationalError as e:
            self._con.close()
            raise self._translate(e) from None
        except sqlite3.DatabaseError as e:
            self._con.close()
            raise self._not_a_store(e) from None
        except BaseException:
            self._con.close()
            raise

    # ----------------------------------------------------------------- opening

    def _connect_readonly(self, db: Path) -> sqlite3.Connection:
        """``mode=ro`` first; ``immutable=1`` where SQLite cannot even open read-only (a WAL file on a read-only mount)."""
        uri = "file:" + urllib.parse.quote(str(db.resolve()))
        last: sqlite3.DatabaseError | None = None
        for flags in ("mode=ro", "mode=ro&immutable=1"):
            con = sqlite3.connect(f"{uri}?{flags}", uri=True, timeout=60.0, isolation_level=None)
            try:
                self._con = con
                self._check_schema(tables=None)
                con.execute("PRAGMA foreign_keys=ON")
                return con
            except sqlite3.OperationalError as e:  # unable to open: try the next way
                con.close()
                last = e
            except sqlite3.DatabaseError as e:
                con.close()
                raise self._not_a_store(e) from None
            except BaseException:
                con.close()
                raise
        raise StoreError(f"cannot read {db} ({last}); check that the file is readable")

    def _open_schema(self) -> None:
        """Create the tables in an empty database; upgrade an older one; check the format and version."""
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:  # a new (empty) database: make it a store
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        con.execute(statement)
                con.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("format", "sparank"), ("schema_version", str(SCHEMA_VERSION)), ("last_run_number", "0")],
                )
                tables = {"meta", "runs", "measurements", "brackets"}
            self._check_schema(tables=tables)
            if self._version == 1:  # version 1 had no measurement keys: add the column
                con.execute("ALTER TABLE measurements ADD COLUMN key TEXT")
                con.execute("CREATE UNIQUE INDEX measurements_by_key ON measurements(key)")
            if self._version <= 2:  # version 2 had no adversarial distances: add the column (NULL for old rows)
                con.execute("ALTER TABLE brackets ADD COLUMN distance REAL")
            if self._version <= 3:  # version 3 had no certified flag: add the column (NULL: not asked)
                con.execute("ALTER TABLE brackets ADD COLUMN certified INTEGER")
            if self._version < SCHEMA_VERSION:
                con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
                self._version = SCHEMA_VERSION
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def _check_schema(self, *, tables: set[str] | None) -> None:
        con = self._con
        db = self._db
        if tables is None:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
        if meta.get("format") != "sparank":
            raise StoreError(f"{db} is an SQLite database but not a sparank store (its tables: {', '.join(sorted(tables)) or 'none'})")
        version = int(meta.get("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{db} has schema_version {version} but this sparank reads up to {SCHEMA_VERSION}; upgrade sparank to read it"
            )
        self._version = version

    def _check_writable(self) -> None:
        """Fail now, before any work, if a write would fail later (read-only mount, immutable file, read-only folder)."""
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("UPDATE meta SET value = value WHERE key = 'format'")
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        weights = self.path / WEIGHTS_DIR
        try:
            weights.mkdir(exist_ok=True)
        except OSError as e:
            raise StoreError(f"store {self.path} is read-only (cannot create {weights}: {e.strerror or e}); use a writable --store") from None
        if not os.access(weights, os.W_OK | os.X_OK):
            raise StoreError(f"store {self.path} is read-only ({weights} is not writable); use a writable --store, or only read it")

    def _remove_orphans(self) -> None:
        """Remove what a killed writer left: temporary weights files and weights files of runs never committed.

        Runs under the write lock: every writer writes weights only while it
        holds that lock, so no file removed here belongs to a live writer.
        """
        con = self._con
        weights = self.path / WEIGHTS_DIR
        con.execute("BEGIN IMMEDIATE")
        try:
            last = int(con.execute("SELECT value FROM meta WHERE key = 'last_run_number'").fetchone()[0])
            for entry in weights.iterdir():
                temporary = _TMP_NAME.fullmatch(entry.name)
                uncommitted = _WEIGHTS_NAME.fullmatch(entry.name)
                if temporary or (uncommitted and int(uncommitted.group(1)) > last):
                    entry.unlink(missing_ok=True)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def _not_a_store(self, e: sqlite3.DatabaseError) -> StoreError:
        if "not a database" in str(e):
            return StoreError(f"{self._db} is not a sparank store ({e})")
        return self._translate(e)

    def _translate(self, e: sqlite3.DatabaseError) -> StoreError:
        """A one-line StoreError for an SQLite failure: read-only, locked, or a damaged file."""
        text = str(e)
        writable = os.access(self.path, os.W_OK) and (not self._db.exists() or os.access(self._db, os.W_OK))
        if "readonly" in text or "read-only" in text or ("unable to open" in text and not writable):
            return StoreError(f"store {self.path} is read-only ({text}); reading commands work, to write use a writable --store")
        if "locked" in text or "busy" in text:
            return StoreError(f"store {self.path} is locked by another process for over a minute ({text}); try again later")
        if "unable to open" in text:
            return StoreError(f"cannot open {self._db} ({text}); check that the folder is readable and writable")
        return StoreError(f"{self._db} is damaged ({text}); restore it from a backup, or start a new --store")

    @contextlib.contextmanager
    def _sql(self) -> Iterator[sqlite3.Connection]:
        """The connection, with SQLite failures of the file (damaged, read-only, locked) as StoreError."""
        try:
            yield self._con
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise  # a bug in sparank, not a fault of the file
        except sqlite3.DatabaseError as e:
            raise self._translate(e) from None

    def _check_can_write(self) -> None:
        if self.readonly:
            raise StoreError(f"store {self.path} was opened read-only; open it with Store(path) to write")

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connection (safe to call twice)."""
        self._con.close()

    # ----------------------------------------------------------------- runs

    def add_run(
        self,
        *,
        kind: str,
        config: dict[str, Any],
        history: list[dict[str, Any]] | None = None,
        metrics: dict[str, Any] | None = None,
        structure: dict[str, Any] | None = None,
        state_dict: dict[str, Tensor] | None = None,
        key: str | None = None,
    ) -> str:
        """Record a run (and its weights, if given) in one transaction; returns its id (``r0001``...).

        Args:
            kind: what made the run: ``'train'``, ``'import'``, ``'linear'``...
            config: the resolved config (dataset, architecture, training,
                regulariser, seed...).
            history: per-epoch records (e.g. ``asdict(EpochRecord)``).
            metrics: e.g. ``{"clean_accuracy": 0.97}``.
            structure: ``ModelStructure.to_dict()``.
            state_dict: the weights, saved as ``weights/<id>.safetensors``.
            key: an optional unique content key, found again by :meth:`find_run`.

        Raises:
            DuplicateKeyError: a run with this ``key`` already exists (its id is
                ``.existing``; e.g. another process stored the same run first).
            StoreError: the store was opened read-only, or its file is damaged or read-only.
            ValueError: a field cannot be stored as JSON, or a state dict value is not a tensor.
        """
        self._check_can_write()
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind must be a non-empty string such as 'train', got {kind!r}")
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        columns = {
            "config": _to_json("config", config),
            "history": _to_json("history", history),
            "metrics": _to_json("metrics", metrics),
            "structure": _to_json("structure", structure),
        }
        tensors = None if state_dict is None else _contiguous_clones(state_dict)

        with self._sql() as con:
            written: Path | None = None
            con.execute("BEGIN IMMEDIATE")  # takes the write lock: the run number below is ours
            try:
                if key is not None:
                    row = con.execute("SELECT id FROM runs WHERE key = ?", (key,)).fetchone()
                    if row is not None:
                        raise DuplicateKeyError(
                            f"a run with key {key!r} already exists ({row[0]}) in store {self.path}; use find_run(key) to reuse it", row[0]
                        )
                number = int(con.execute("SELECT value FROM meta WHERE key = 'last_run_number'").fetchone()[0]) + 1
                run_id = f"r{number:04d}"
                relative = None
                if tensors is not None:
                    relative = f"{WEIGHTS_DIR}/{run_id}.safetensors"
                    written = self.path / relative
                    _write_atomically(written, tensors)
                con.execute(
                    "INSERT INTO runs (id, key, created, kind, config, history, metrics, structure, weights)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, key, _now(), kind, columns["config"], columns["history"], columns["metrics"], columns["structure"], relative),
                )
                con.execute("UPDATE meta SET value = ? WHERE key = 'last_run_number'", (str(number),))
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                if written is not None:
                    written.unlink(missing_ok=True)
                raise
        return run_id

    def _run_from_row(self, row: tuple[Any, ...]) -> RunRecord:
        run_id, key, created, kind, config, history, metrics, structure, weights = row
        return RunRecord(
            id=run_id,
            key=key,
            created=created,
            kind=kind,
            config=_from_json(config),
            history=_from_json(history),
            metrics=_from_json(metrics),
            structure=_from_json(structure),
            weights=None if weights is None else (self.path / weights).resolve(),
        )

    _RUN_COLUMNS = "id, key, created, kind, config, history, metrics, structure, weights"

    def get_run(self, run_id: str) -> RunRecord:
        """The run with this id; raises :class:`StoreError` if there is none."""
        with self._sql() as con:
            row = con.execute(f"SELECT {self._RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id!r} in store {self.path}; see `sparank show --store {self.path}`")
        return self._run_from_row(row)

    def find_run(self, key: str) -> RunRecord | None:
        """The run recorded with this content key, or None."""
        with self._sql() as con:
            row = con.execute(f"SELECT {self._RUN_COLUMNS} FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else self._run_from_row(row)

    def runs(self, *, kind: str | None = None) -> list[RunRecord]:
        """Every run (of this ``kind``, if given), oldest first."""
        query = f"SELECT {self._RUN_COLUMNS} FROM runs"
        params: tuple[Any, ...] = ()
        if kind is not None:
            query += " WHERE kind = ?"
            params = (kind,)
        with self._sql() as con:
            rows = con.execute(query + " ORDER BY rowid", params).fetchall()
        return [self._run_from_row(row) for row in rows]

    def load_weights(self, run_id: str) -> dict[str, Tensor]:
        """The run's state dict, read with safetensors (never pickle).

        Raises:
            StoreError: no such run, the run has no weights, or its file is missing or invalid.
        """
        run = self.get_run(run_id)
        if run.weights is None:
            raise StoreError(f"run {run_id!r} in store {self.path} has no weights (kind {run.kind!r})")
        if not run.weights.is_file():
            raise StoreError(f"the weights file of run {run_id!r} is missing: {run.weights}; was the store's {WEIGHTS_DIR}/ folder moved?")
        return load_weights_file(run.weights)

    # ----------------------------------------------------------------- measurements

    def add_measurement(
        self,
        run_id: str,
        *,
        config: dict[str, Any],
        result: RobustnessResult,
        indices: Tensor,
        key: str | None = None,
        replace: bool = False,
        extra_summary: dict[str, Any] | None = None,
    ) -> int:
        """Record a robustness measurement of a run and all its brackets in one transaction; returns its id.

        Args:
            run_id: the run measured.
            config: the attack settings (n, evaluation seed, ...). The result's
                own ``norm``, ``eps_max``, ``resolution`` and ``tol`` are added;
                a different value for one of them in ``config`` is an error.
            result: the measurement; ``result.summary().to_dict()`` is stored
                as the summary, the brackets row by row (directions are not stored).
            indices: ``(N,)`` integers, the index in the test split of each input of ``result``.
            key: an optional unique content key (:func:`measurement_key`),
                found again by :meth:`find_measurement`.
            replace: if a measurement with ``key`` exists, delete it (and its
                brackets) in the same transaction instead of refusing.
            extra_summary: more entries for the stored summary (e.g. the masking flags of a best-ε* record).

        Raises:
            DuplicateKeyError: a measurement with this ``key`` exists and ``replace`` is False.
            StoreError: no such run; the store is read-only or damaged.
            ValueError: ``indices`` does not match ``result``, a bracket is NaN, or
                ``config`` contradicts the result's settings.
        """
        self._check_can_write()
        self.get_run(run_id)  # a clear error for an unknown run
        n = len(result)
        indices = torch.as_tensor(indices)
        if indices.shape != (n,) or indices.is_floating_point():
            raise ValueError(f"indices must be {n} integers, one per input of the result, got shape {tuple(indices.shape)} {indices.dtype}")
        settings: dict[str, Any] = {"norm": result.norm, "eps_max": result.eps_max, "resolution": result.resolution, "tol": result.tol}
        settings.update(attack=result.attack, attack_settings=result.settings or {"attack": result.attack})
        for name, value in settings.items():
            if name in config and config[name] != value:
                raise ValueError(f"config[{name!r}] = {config[name]!r} but the result was measured with {name} = {value!r}")
        eps_lo = result.eps_lo.detach().to("cpu", torch.float64)
        eps_hi = result.eps_hi.detach().to("cpu", torch.float64)
        if bool(eps_lo.isnan().any() or eps_hi.isnan().any()):
            raise ValueError("the result has NaN brackets; it cannot be stored (SQLite stores NaN as NULL)")
        distance = None if result.distance is None else result.distance.detach().to("cpu", torch.float64)
        if distance is not None and bool(distance.isnan().any()):
            raise ValueError("the result has NaN distances; it cannot be stored")
        config_json = _to_json("config", {**config, **settings})
        summary_json = _to_json("summary", {**result.summary().to_dict(), **(extra_summary or {})})
        rows = zip(
            range(n),
            indices.tolist(),
            result.labels.tolist(),
            eps_lo.tolist(),
            eps_hi.tolist(),
            result.status.tolist(),
            [None] * n if distance is None else distance.tolist(),
            [None] * n if result.certified is None else [int(c) for c in result.certified.tolist()],
            strict=True,
        )

        with self._sql() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                if key is not None:
                    row = con.execute("SELECT id FROM measurements WHERE key = ?", (key,)).fetchone()
                    if row is not None and not replace:
                        raise DuplicateKeyError(
                            f"a measurement with key {key!r} already exists ({row[0]}) in store {self.path}; "
                            "use find_measurement(key) to reuse it, or replace=True (--force) to measure again",
                            int(row[0]),
                        )
                    if row is not None:
                        con.execute("DELETE FROM measurements WHERE id = ?", (row[0],))  # brackets: ON DELETE CASCADE
                cursor = con.execute(
                    "INSERT INTO measurements (run_id, created, config, summary, key) VALUES (?, ?, ?, ?, ?)",
                    (run_id, _now(), config_json, summary_json, key),
                )
                measurement_id = int(cursor.lastrowid)  # type: ignore[arg-type]
                con.executemany(
                    "INSERT INTO brackets (measurement_id, position, input_index, label, eps_lo, eps_hi, status, distance, certified)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    ((measurement_id, *row) for row in rows),
                )
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        return measurement_id

    def _measurement_query(self) -> str:
        key = "key" if self._version >= 2 else "NULL"  # a version-1 store opened read-only has no key column
        return f"SELECT id, run_id, created, config, summary, {key} FROM measurements"

    def measurements(self, run_id: str | None = None) -> list[MeasurementRecord]:
        """Every measurement (of ``run_id``, if given), oldest first."""
        query = self._measurement_query()
        params: tuple[Any, ...] = ()
        if run_id is not None:
            query += " WHERE run_id = ?"
            params = (run_id,)
        with self._sql() as con:
            rows = con.execute(query + " ORDER BY id", params).fetchall()
        return [_measurement_from_row(row) for row in rows]

    def find_measurement(self, key: str) -> MeasurementRecord | None:
        """The measurement recorded with this content key (:func:`measurement_key`), or None."""
        if self._version < 2:
            return None
        with self._sql() as con:
            row = con.execute(self._measurement_query() + " WHERE key = ?", (key,)).fetchone()
        return None if row is None else _measurement_from_row(row)

    def brackets(self, measurement_id: int) -> BracketTable:
        """The per-input brackets of a measurement, in the order measured."""
        with self._sql() as con:
            if con.execute("SELECT 1 FROM measurements WHERE id = ?", (measurement_id,)).fetchone() is None:
                raise StoreError(f"no measurement {measurement_id} in store {self.path}; see `sparank show --store {self.path}`")
            rows = con.execute(
                f"SELECT input_index, label, eps_lo, eps_hi, status, {'distance' if self._version >= 3 else 'NULL'},"
                f" {'certified' if self._version >= 4 else 'NULL'} FROM brackets"
                " WHERE measurement_id = ? ORDER BY position",
                (measurement_id,),
            ).fetchall()
        columns = list(zip(*rows, strict=True)) if rows else [()] * 7
        flags = columns[6]
        return BracketTable(
            input_index=torch.tensor(columns[0], dtype=torch.int64),
            label=torch.tensor(columns[1], dtype=torch.int64),
            eps_lo=torch.tensor(columns[2], dtype=torch.float64),
            eps_hi=torch.tensor(columns[3], dtype=torch.float64),
            status=torch.tensor(columns[4], dtype=torch.int64),
            distance=torch.tensor([math.nan if d is None else d for d in columns[5]], dtype=torch.float64),
            certified=None if not flags or any(f is None for f in flags) else torch.tensor(flags, dtype=torch.bool),
        )


def _measurement_from_row(row: tuple[Any, ...]) -> MeasurementRecord:
    mid, rid, created, config, summary, key = row
    return MeasurementRecord(id=mid, run_id=rid, created=created, config=json.loads(config), summary=json.loads(summary), key=key)
