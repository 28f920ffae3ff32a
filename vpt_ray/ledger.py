"""The run ledger: what every run is doing, and which labeling work items are finished.

Stages are separate Ray jobs; they share state only through files and this ledger. Two backends hold the same
records:

- **SQLite** (default, ``~/.vpt_ray/ledger.sqlite`` or ``$VPT_LEDGER``): one file, safe for several processes
  on one machine (WAL journal, busy timeout). Its path ends in ``.sqlite``, ``.sqlite3`` or ``.db`` (so a
  mistyped URL is refused rather than becoming a new database file).
- **Redis** (``redis://[:PASSWORD@]HOST:PORT/DB``): for a cluster, where jobs run on many nodes.

The location comes from the caller, else the file ``$VPT_LEDGER_FILE`` names (one line holding the location:
a password stays out of the environment, e.g. of a Ray job's ``runtime_env``), else ``$VPT_LEDGER``, else the
default file. A malformed location is refused by :func:`check_location` before anything is opened.

Records are field maps with msgpack values, identical on both backends:

- run ``run_id``: ``kind``, ``spec``, ``run_dir``, ``status``, ``iteration``, ``checkpoint``, ``items``
  (item -> fraction of episodes that obtained it, in the task's item order), ``metrics``,
  ``desired_env_runners``, ``created_at``, ``updated_at``.
- labeling job ``job_id``: finished keys, each with the info of the FIRST writer. ``mark_done`` is atomic
  (Redis ``HSETNX``, SQLite ``INSERT OR IGNORE``) and idempotent, so of several workers racing on one key
  exactly one gets ``True``.

A writer (a training job) never stops because the ledger is unreachable: a write that fails is queued in
memory (bounded, coalesced per record) and replayed, in order, at the next operation once the backend answers
again. Reads during an outage answer from what this process last saw plus its own queued writes and say so:
``RunRecord.stale`` / ``DoneKeys.stale`` are True, and a warning is logged once per outage. If the server came
back empty (a Redis without persistence), a queued run update re-creates the run from this process's last
copy of it rather than losing it.

Passwords in Redis URLs are never logged: every message uses :func:`redact_url`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import msgpack

logger = logging.getLogger(__name__)

ENV_VAR = "VPT_LEDGER"
FILE_ENV_VAR = "VPT_LEDGER_FILE"
DEFAULT_PATH = Path("~/.vpt_ray/ledger.sqlite")
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
REDIS_SCHEMES = ("redis", "rediss", "unix")

RUN_STATUSES = ("pending", "running", "succeeded", "failed", "stopped")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "stopped"})
# Fields update_run may change; desired_env_runners has its own setter so a training job's updates can never
# overwrite what `vpt-ray scale` asked for.
UPDATABLE_FIELDS = ("status", "iteration", "checkpoint", "items", "metrics")
RUN_FIELDS = (
    "kind",
    "spec",
    "run_dir",
    *UPDATABLE_FIELDS,
    "desired_env_runners",
    "created_at",
    "updated_at",
)


class LedgerError(RuntimeError):
    """A ledger request that cannot be honoured (unknown run, bad value, unreachable backend for a read)."""


class LedgerUnavailable(LedgerError):
    """The backend did not answer and this process has no copy of the value asked for."""


class _BackendDown(Exception):
    """Raised by backends when the store cannot be reached right now (the call may be retried later)."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    run_id: str
    kind: str
    spec: dict
    run_dir: str
    status: str
    iteration: int | None
    checkpoint: str | None
    items: dict[str, float]
    metrics: dict[str, Any]
    desired_env_runners: int | None
    created_at: float | None
    updated_at: float | None
    # True when the backend could not be read (or this process has writes to it not yet stored): the record is
    # this process's last copy and may be out of date.
    stale: bool = False

    @classmethod
    def from_fields(cls, run_id: str, fields: dict[str, Any], stale: bool) -> RunRecord:
        return cls(
            run_id=run_id,
            kind=fields.get("kind", "?"),
            spec=fields.get("spec") or {},
            run_dir=fields.get("run_dir", ""),
            status=fields.get("status", "pending"),
            iteration=fields.get("iteration"),
            checkpoint=fields.get("checkpoint"),
            items=fields.get("items") or {},
            metrics=fields.get("metrics") or {},
            desired_env_runners=fields.get("desired_env_runners"),
            created_at=fields.get("created_at"),
            updated_at=fields.get("updated_at"),
            stale=stale,
        )


class DoneKeys(set):
    """The finished keys of a labeling job; ``stale`` is True when the backend could not be read."""

    stale: bool = False


class RunList(list):
    """Runs from ``list_runs``; ``stale`` is True when the backend could not be read (this process's copies)."""

    stale: bool = False


def redact_url(url: str) -> str:
    """``redis://:secret@host:6379/0`` -> ``redis://:***@host:6379/0`` (user names are kept)."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", str(url))


def default_location() -> str:
    """The contents of the file ``$VPT_LEDGER_FILE`` names, else ``$VPT_LEDGER``, else the default file."""
    file = os.environ.get(FILE_ENV_VAR)
    if file:
        try:
            location = Path(file).expanduser().read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise LedgerError(f"${FILE_ENV_VAR} {file}: cannot read the ledger location: {e}") from None
        if not location or "\n" in location:
            raise LedgerError(f"${FILE_ENV_VAR} {file}: expected one line holding the ledger location")
        return location
    return os.environ.get(ENV_VAR) or str(DEFAULT_PATH.expanduser())


def is_redis_url(location: str) -> bool:
    return str(location).startswith(tuple(f"{s}://" for s in REDIS_SCHEMES))


def check_location(location: str | os.PathLike) -> str:
    """``location`` if it is a well-formed ledger location, else a LedgerError saying what is wrong with it.

    Only the form is checked (nothing is opened or contacted): a Redis URL with a host (or a socket path) and an
    integer port and database; ``sqlite:///PATH`` or a path ending in one of :data:`SQLITE_SUFFIXES`.
    """
    from urllib.parse import urlsplit

    text = str(location)
    shown = redact_url(text)
    suffixes = "/".join(SQLITE_SUFFIXES)
    expected = f"expected redis://[:PASSWORD@]HOST:PORT/DB, sqlite:///PATH or a SQLite file path ending in {suffixes}"
    if is_redis_url(text):
        url = urlsplit(text)
        if url.scheme == "unix":
            if not url.path:
                raise LedgerError(f"ledger location {shown!r}: a unix:// URL needs the socket's path")
            return text
        if not url.hostname:
            raise LedgerError(f"ledger location {shown!r}: no host; {expected}")
        try:
            url.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
        except ValueError:
            raise LedgerError(f"ledger location {shown!r}: the port is not a number in 0-65535; {expected}") from None
        db = url.path.lstrip("/")
        if db and not db.isdigit():
            raise LedgerError(f"ledger location {shown!r}: database {db!r} is not a number; {expected}")
        return text
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):(/{0,2})", text)
    if scheme and scheme.group(2) != "//" and len(scheme.group(1)) > 1:  # "redis:/h:1/0", "redis:h" (not "C:")
        raise LedgerError(f"ledger location {shown!r}: a malformed URL (did you mean {scheme.group(1)}://...?); "
                          f"{expected}")  # fmt: skip
    if re.match(r"(?:%s|sqlite)//" % "|".join(REDIS_SCHEMES), text):  # "redis//h": the colon is missing
        raise LedgerError(f"ledger location {shown!r}: a malformed URL (no ':' after the scheme); {expected}")
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") :]
    elif "://" in text:
        raise LedgerError(f"ledger location {shown!r}: {expected}")
    if not text.endswith(SQLITE_SUFFIXES):
        raise LedgerError(f"ledger location {shown!r}: a SQLite file path must end in {suffixes}; {expected}")
    return str(location)


def open_ledger(
    url: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    *,
    create: bool = True,
    timeout_s: float = 5.0,
    max_pending: int = 10_000,
    retry_interval_s: float = 1.0,
) -> Ledger:
    """Open the ledger at ``url`` (a Redis URL, ``sqlite:///PATH`` or a file path) or SQLite file ``path``.

    With neither, the default location (:func:`default_location`). A ``url`` must pass :func:`check_location`
    (a ``path`` is a file path as given). ``create=False`` opens only an existing ledger (for commands that
    read, or change one field of a run): a missing, empty or foreign SQLite file is refused, never initialised. ``timeout_s`` is how long one call waits for the backend (Redis socket,
    SQLite lock held by another process) before it counts as an outage. ``max_pending`` bounds the outage queue; ``retry_interval_s`` is the
    first wait before trying an unreachable backend again (doubling up to 30 s).
    """
    if url is not None and path is not None:
        raise LedgerError("open_ledger: give a url or a path, not both")
    location = str(path if path is not None else url if url is not None else default_location())
    if path is None:
        check_location(location)
    if is_redis_url(location):
        backend: _Backend = _RedisBackend(location, timeout_s=timeout_s)
    else:
        if location.startswith("sqlite:///"):
            location = location[len("sqlite:///") :]  # SQLAlchemy style: sqlite:////abs, sqlite:///rel
        backend = _SQLiteBackend(Path(location).expanduser(), create=create, timeout_s=timeout_s)
    return Ledger(backend, max_pending=max_pending, retry_interval_s=retry_interval_s)


# --------------------------------------------------------------------------------------------------- values


def _default(obj: Any) -> Any:
    # numpy scalars and arrays come straight out of metrics code; store them as plain Python values.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in the ledger: {obj!r}")


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _check_status(status: Any) -> None:
    if status not in RUN_STATUSES:
        raise LedgerError(f"status {status!r} is not one of {list(RUN_STATUSES)}")


# ------------------------------------------------------------------------------------------------- backends


class _Backend:
    """Primitive, atomic operations. Raise ``_BackendDown`` when the store cannot be reached."""

    location: str

    def write_run(self, run_id: str, set_fields: dict, nx_fields: dict, must_exist: bool) -> dict | None:
        """Atomically: unless ``must_exist`` fails, set ``set_fields``, set each ``nx_fields`` only where absent,
        and index the run; return every field after the write (None when the run does not exist)."""
        raise NotImplementedError

    def read_run(self, run_id: str) -> dict | None:
        raise NotImplementedError

    def read_runs(self) -> dict[str, dict]:
        raise NotImplementedError

    def mark_done(self, job_id: str, key: str, info: dict) -> bool:
        raise NotImplementedError

    def done_info(self, job_id: str, key: str) -> dict | None:
        raise NotImplementedError

    def done_keys(self, job_id: str) -> set[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _check_is_ledger(path: Path) -> None:
    """A LedgerError unless ``path`` already is a ledger database; looks without writing (an empty or foreign
    file must not become a database because a read-only command opened it)."""
    if path.is_dir():
        raise LedgerError(f"ledger {path}: a directory, not a SQLite file")
    if path.stat().st_size == 0:
        raise LedgerError(f"ledger {path}: an empty file, not a SQLite database")
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise LedgerError(f"ledger {path}: not a SQLite database ({e})") from None
    if not {"run_fields", "done"} <= tables:
        raise LedgerError(f"ledger {path}: a SQLite database, but not a vpt_ray ledger (tables: {sorted(tables)})")


class _SQLiteBackend(_Backend):
    def __init__(self, path: Path, create: bool, timeout_s: float):
        self.path = path
        self.location = str(path)
        if not path.exists():
            if not create:
                raise LedgerError(f"no ledger at {path} (nothing has been recorded there yet)")
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not create:
            _check_is_ledger(path)
        # busy_timeout makes a writer wait for another process's transaction instead of failing at once; past
        # it the write is queued like any outage.
        self.busy_timeout_ms = int(timeout_s * 1000)
        self._local = threading.local()
        try:
            with self._tx() as db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS run_fields (run_id TEXT NOT NULL, field TEXT NOT NULL, "
                    "value BLOB NOT NULL, PRIMARY KEY (run_id, field))"
                )
                db.execute(
                    "CREATE TABLE IF NOT EXISTS done (job_id TEXT NOT NULL, key TEXT NOT NULL, info BLOB NOT NULL, "
                    "PRIMARY KEY (job_id, key))"
                )
        except _BackendDown as e:
            raise LedgerError(f"ledger {path}: cannot open: {e}") from None

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread: sqlite3 connections must not be shared across threads mid-transaction.
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
                db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                # WAL: readers never block the writer and vice versa; several processes can share the file.
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error as e:
                raise _BackendDown(str(e)) from None
            self._local.db = db
        return db

    class _Tx:
        def __init__(self, backend: _SQLiteBackend, write: bool):
            self.backend, self.write = backend, write

        def __enter__(self) -> sqlite3.Connection:
            self.db = self.backend._conn()
            try:
                # IMMEDIATE takes the write lock up front, so read-then-write sequences are atomic.
                self.db.execute("BEGIN IMMEDIATE" if self.write else "BEGIN")
            except sqlite3.OperationalError as e:
                raise _BackendDown(str(e)) from None
            return self.db

        def __exit__(self, exc_type, exc, tb):
            if exc_type is None:
                try:
                    self.db.execute("COMMIT")
                    return False
                except sqlite3.OperationalError as e:
                    self.db.execute("ROLLBACK")
                    raise _BackendDown(str(e)) from None
            self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise _BackendDown(str(exc)) from None
            return False

    def _tx(self, write: bool = True) -> _SQLiteBackend._Tx:
        return self._Tx(self, write)

    @staticmethod
    def _fields(db: sqlite3.Connection, run_id: str) -> dict | None:
        rows = db.execute("SELECT field, value FROM run_fields WHERE run_id = ?", (run_id,)).fetchall()
        return {f: _unpack(v) for f, v in rows} if rows else None

    def write_run(self, run_id, set_fields, nx_fields, must_exist):
        with self._tx() as db:
            exists = db.execute("SELECT 1 FROM run_fields WHERE run_id = ? LIMIT 1", (run_id,)).fetchone()
            if must_exist and not exists:
                return None
            db.executemany(
                "INSERT OR IGNORE INTO run_fields VALUES (?, ?, ?)",
                [(run_id, f, _pack(v)) for f, v in nx_fields.items()],
            )
            db.executemany(
                "INSERT OR REPLACE INTO run_fields VALUES (?, ?, ?)",
                [(run_id, f, _pack(v)) for f, v in set_fields.items()],
            )
            return self._fields(db, run_id)

    def read_run(self, run_id):
        with self._tx(write=False) as db:
            return self._fields(db, run_id)

    def read_runs(self):
        with self._tx(write=False) as db:
            runs: dict[str, dict] = {}
            for run_id, field, value in db.execute("SELECT run_id, field, value FROM run_fields ORDER BY run_id"):
                runs.setdefault(run_id, {})[field] = _unpack(value)
            return runs

    def mark_done(self, job_id, key, info):
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO done VALUES (?, ?, ?)", (job_id, key, _pack(info)))
            return cur.rowcount == 1

    def done_info(self, job_id, key):
        with self._tx(write=False) as db:
            row = db.execute("SELECT info FROM done WHERE job_id = ? AND key = ?", (job_id, key)).fetchone()
            return _unpack(row[0]) if row else None

    def done_keys(self, job_id):
        with self._tx(write=False) as db:
            return {k for (k,) in db.execute("SELECT key FROM done WHERE job_id = ?", (job_id,))}

    def close(self):
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


# One atomic step per run write: check existence, HSET the changes, HSETNX the defaults, index the run and
# return the whole record. ARGV: must_exist, run_id, n_set, then n_set field/value pairs, then the nx pairs.
_WRITE_RUN_LUA = """
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then return false end
local i = 4
for _ = 1, tonumber(ARGV[3]) do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2 end
while i < #ARGV do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2 end
redis.call('SADD', KEYS[2], ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""


class _RedisBackend(_Backend):
    PREFIX = "vpt:"

    def __init__(self, url: str, timeout_s: float):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._redis_mod = redis
        self.location = redact_url(url)
        self._has_password = self.location != url
        try:
            # One quick retry covers a pooled connection that died with a server restart; anything longer is
            # the ledger's own queue-and-replay, which never blocks a training iteration for long.
            self.client = redis.Redis.from_url(
                url,
                socket_connect_timeout=min(2.0, timeout_s),
                socket_timeout=timeout_s,
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as e:
            raise LedgerError(f"ledger {self.location}: bad Redis URL: {redact_url(str(e))}") from None
        self._write_run_script = self.client.register_script(_WRITE_RUN_LUA)

    def _call(self, fn, *args):
        redis = self._redis_mod
        try:
            return fn(*args)
        except (redis.AuthenticationError, redis.AuthenticationWrongNumberOfArgsError):
            if self._has_password:
                raise LedgerError(f"ledger {self.location}: Redis refused the password") from None
            raise LedgerError(
                f"ledger {self.location}: Redis needs a password (redis://:PASSWORD@HOST:PORT/DB)"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise _BackendDown(f"{type(e).__name__}: {redact_url(str(e))}") from None

    def _run_key(self, run_id: str) -> str:
        return f"{self.PREFIX}run:{run_id}"

    def _decode(self, raw: dict | list | None) -> dict | None:
        if not raw:
            return None
        if isinstance(raw, list):
            raw = dict(zip(raw[::2], raw[1::2]))
        return {k.decode(): _unpack(v) for k, v in raw.items()}

    def write_run(self, run_id, set_fields, nx_fields, must_exist):
        args: list[Any] = ["1" if must_exist else "0", run_id, len(set_fields)]
        for f, v in set_fields.items():
            args += [f, _pack(v)]
        for f, v in nx_fields.items():
            args += [f, _pack(v)]
        keys = [self._run_key(run_id), f"{self.PREFIX}runs"]
        return self._decode(self._call(self._write_run_script, keys, args))

    def read_run(self, run_id):
        return self._decode(self._call(self.client.hgetall, self._run_key(run_id)))

    def read_runs(self):
        def read() -> dict[str, dict]:
            ids = sorted(i.decode() for i in self.client.smembers(f"{self.PREFIX}runs"))
            pipe = self.client.pipeline(transaction=True)
            for run_id in ids:
                pipe.hgetall(self._run_key(run_id))
            return {run_id: rec for run_id, raw in zip(ids, pipe.execute()) if (rec := self._decode(raw))}

        return self._call(read)

    def mark_done(self, job_id, key, info):
        return bool(self._call(self.client.hsetnx, f"{self.PREFIX}done:{job_id}", key, _pack(info)))

    def done_info(self, job_id, key):
        raw = self._call(self.client.hget, f"{self.PREFIX}done:{job_id}", key)
        return None if raw is None else _unpack(raw)

    def done_keys(self, job_id):
        return {k.decode() for k in self._call(self.client.hkeys, f"{self.PREFIX}done:{job_id}")}

    def close(self):
        self.client.close()


# --------------------------------------------------------------------------------------------------- ledger


@dataclasses.dataclass
class _PendingRun:
    set_fields: dict = dataclasses.field(default_factory=dict)
    nx_fields: dict = dataclasses.field(default_factory=dict)
    registers: bool = False


class Ledger:
    """Runs and labeling progress, on SQLite or Redis; see the module docstring for the semantics."""

    MAX_RETRY_INTERVAL_S = 30.0

    def __init__(self, backend: _Backend, *, max_pending: int = 10_000, retry_interval_s: float = 1.0):
        if max_pending < 1:
            raise LedgerError(f"max_pending must be >= 1, got {max_pending}")
        self._backend = backend
        self.max_pending = max_pending
        self._retry_interval_s = retry_interval_s
        self._lock = threading.RLock()
        # Outage queue, oldest first: ("run", run_id) -> _PendingRun, ("done", job_id, key) -> info.
        self._pending: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._known_runs: dict[str, dict] = {}
        self._known_done: dict[str, set[str]] = {}
        self._down_since: float | None = None
        self._next_try = 0.0
        self._backoff = retry_interval_s
        self.dropped = 0

    @property
    def location(self) -> str:
        """Where the ledger lives (passwords redacted)."""
        return self._backend.location

    def __repr__(self) -> str:
        return f"Ledger({self.location!r}, pending={len(self._pending)})"

    # ------------------------------------------------------------------------------------------- health

    @property
    def pending(self) -> int:
        """Writes queued during an outage and not yet stored."""
        return len(self._pending)

    @property
    def available(self) -> bool:
        """False while the backend is known to be unreachable."""
        return self._down_since is None

    def flush(self) -> int:
        """Try to store every queued write now (ignoring the retry backoff); return how many are left."""
        with self._lock:
            self._next_try = 0.0
            self._replay()
            return len(self._pending)

    def close(self) -> None:
        """Try once more to store queued writes, then close; writes still queued are lost (and logged)."""
        with self._lock:
            left = self.flush()
            if left:
                logger.warning("ledger %s: closing with %d write(s) not stored (backend unreachable)", self.location, left)
            self._backend.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------------------------------------- runs

    def register_run(self, run_id: str, kind: str, spec: dict, run_dir: str | os.PathLike) -> None:
        """Create run ``run_id`` (or refresh kind/spec/run_dir of an existing one, e.g. a resumed job: its
        status, iteration and progress are kept)."""
        if not run_id or not isinstance(run_id, str):
            raise LedgerError(f"run_id must be a non-empty string, got {run_id!r}")
        if not isinstance(spec, dict):
            raise LedgerError(f"run {run_id}: spec must be a mapping, got {type(spec).__name__}")
        now = time.time()
        set_fields = {"kind": str(kind), "spec": spec, "run_dir": str(run_dir), "updated_at": now}
        nx_fields = {"status": "pending", "created_at": now}
        self._write_run(run_id, set_fields, nx_fields, registers=True)

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set any of status, iteration, checkpoint, items (item -> fraction), metrics on a registered run."""
        unknown = sorted(set(fields) - set(UPDATABLE_FIELDS))
        if unknown:
            raise LedgerError(f"update_run({run_id!r}): unknown field {unknown[0]!r} (allowed: {list(UPDATABLE_FIELDS)})")
        if "status" in fields:
            _check_status(fields["status"])
        if "iteration" in fields and not isinstance(fields["iteration"], int):
            raise LedgerError(f"update_run({run_id!r}): iteration must be an integer, got {fields['iteration']!r}")
        if "checkpoint" in fields and fields["checkpoint"] is not None:
            fields["checkpoint"] = str(fields["checkpoint"])
        for name in ("items", "metrics"):
            if name in fields and not isinstance(fields[name], dict):
                raise LedgerError(f"update_run({run_id!r}): {name} must be a mapping, got {fields[name]!r}")
        if "items" in fields:
            fields["items"] = {str(k): float(v) for k, v in fields["items"].items()}
        self._write_run(run_id, {**fields, "updated_at": time.time()}, {})

    def set_desired_env_runners(self, run_id: str, n: int) -> None:
        """Ask the RL job of ``run_id`` to run ``n`` env runners from its next iteration on."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise LedgerError(f"run {run_id}: the env-runner count must be an integer >= 1, got {n!r}")
        self._write_run(run_id, {"desired_env_runners": n}, {})

    def get_desired_env_runners(self, run_id: str) -> int | None:
        """The env-runner count asked for by ``vpt-ray scale``; None if none was asked for or it cannot be read
        now (the job then keeps its current count)."""
        try:
            run = self.get_run(run_id)
        except LedgerUnavailable:
            return None
        return None if run is None else run.desired_env_runners

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or None if it does not exist. During an outage: this process's last copy (``stale``), or
        ``LedgerUnavailable`` if it has none."""
        with self._lock:
            self._maybe_replay()
            stale = ("run", run_id) in self._pending
            try:
                fields = self._attempt(self._backend.read_run, run_id)
                if fields is not None:
                    self._known_runs[run_id] = dict(fields)
                down = False
            except _BackendDown:
                fields = self._known_runs.get(run_id)
                down = stale = True
            fields = self._overlay(run_id, fields)
            if fields is None:
                if down:
                    raise LedgerUnavailable(f"ledger {self.location} is unreachable and run {run_id!r} is not known here")
                return None
            return RunRecord.from_fields(run_id, fields, stale=stale)

    def list_runs(self, kind: str | None = None) -> RunList:
        """Every run (oldest first), optionally only those of ``kind``; ``.stale`` during an outage."""
        with self._lock:
            self._maybe_replay()
            try:
                runs = self._attempt(self._backend.read_runs)
                self._known_runs.update({k: dict(v) for k, v in runs.items()})
                down = False
            except _BackendDown:
                runs = {k: dict(v) for k, v in self._known_runs.items()}
                down = True
            ids = set(runs) | {k[1] for k in self._pending if k[0] == "run"}
            records = []
            for run_id in ids:
                fields = self._overlay(run_id, runs.get(run_id))
                if fields is None or "kind" not in fields:
                    continue
                stale = down or ("run", run_id) in self._pending
                records.append(RunRecord.from_fields(run_id, fields, stale))
            records.sort(key=lambda r: (r.created_at or 0.0, r.run_id))
            out = RunList(r for r in records if kind is None or r.kind == kind)
            out.stale = down or any(r.stale for r in out)
            return out

    # --------------------------------------------------------------------------------- labeling progress

    def mark_done(self, job_id: str, key: str, info: dict | None = None) -> bool:
        """Record ``key`` of labeling job ``job_id`` as finished, atomically and idempotently.

        Returns True if this call recorded it, False if it was already done (the first ``info`` is kept).
        During an outage the mark is queued and True is returned unless this process already knows the key is
        done; the replay keeps whichever mark reached the backend first.
        """
        info = {} if info is None else info
        if not isinstance(info, dict):
            raise LedgerError(f"mark_done({job_id!r}, {key!r}): info must be a mapping, got {type(info).__name__}")
        _pack(info)  # refuse unstorable info now, not at replay time
        with self._lock:
            self._maybe_replay()
            if not self._pending:
                try:
                    newly = self._attempt(self._backend.mark_done, job_id, key, info)
                    self._known_done.setdefault(job_id, set()).add(key)
                    return newly
                except _BackendDown:
                    pass
            if key in self._known_done.get(job_id, ()) or ("done", job_id, key) in self._pending:
                return False
            self._enqueue(("done", job_id, key), info)
            return True

    def is_done(self, job_id: str, key: str) -> bool:
        """Whether ``key`` is finished. During an outage answers from this process's knowledge (logged)."""
        with self._lock:
            self._maybe_replay()
            if ("done", job_id, key) in self._pending:
                return True
            try:
                done = self._attempt(self._backend.done_info, job_id, key) is not None
            except _BackendDown:
                return key in self._known_done.get(job_id, ())
            if done:
                self._known_done.setdefault(job_id, set()).add(key)
            return done

    def done_info(self, job_id: str, key: str) -> dict | None:
        """The info recorded by the first ``mark_done`` of ``key`` (None if not done or not readable now)."""
        with self._lock:
            self._maybe_replay()
            try:
                return self._attempt(self._backend.done_info, job_id, key)
            except _BackendDown:
                return self._pending.get(("done", job_id, key))

    def done_keys(self, job_id: str) -> DoneKeys:
        """Every finished key of ``job_id`` (``.stale`` True when the backend could not be read)."""
        with self._lock:
            self._maybe_replay()
            out = DoneKeys()
            try:
                keys = self._attempt(self._backend.done_keys, job_id)
                self._known_done[job_id] = set(keys)
                out.stale = False
            except _BackendDown:
                keys = self._known_done.get(job_id, set())
                out.stale = True
            out.update(keys)
            queued = {k[2] for k in self._pending if k[0] == "done" and k[1] == job_id}
            if queued:
                out.update(queued)
                out.stale = True
            return out

    # ---------------------------------------------------------------------------------------- internals

    def _write_run(self, run_id: str, set_fields: dict, nx_fields: dict, registers: bool = False) -> None:
        for name, value in {**set_fields, **nx_fields}.items():
            try:
                _pack(value)
            except (TypeError, ValueError) as e:
                raise LedgerError(f"run {run_id}: field {name!r}: {e}") from None
        with self._lock:
            self._maybe_replay()
            if not self._pending:
                try:
                    fields = self._attempt(self._backend.write_run, run_id, set_fields, nx_fields, not registers)
                except _BackendDown:
                    pass
                else:
                    if fields is None:
                        raise LedgerError(f"run {run_id!r} is not registered in ledger {self.location}")
                    self._known_runs[run_id] = fields
                    return
            entry = self._pending.get(("run", run_id)) or _PendingRun()
            entry.set_fields.update(set_fields)
            for f, v in nx_fields.items():
                entry.nx_fields.setdefault(f, v)
            entry.registers = entry.registers or registers
            self._enqueue(("run", run_id), entry)

    def _enqueue(self, key: tuple, value: Any) -> None:
        if key in self._pending:
            self._pending.move_to_end(key)
        self._pending[key] = value
        while len(self._pending) > self.max_pending:
            dropped, _ = self._pending.popitem(last=False)
            self.dropped += 1
            logger.warning(
                "ledger %s: outage queue full (%d); dropped the oldest queued write %s",
                self.location,
                self.max_pending,
                dropped[:2],
            )

    def _overlay(self, run_id: str, fields: dict | None) -> dict | None:
        entry = self._pending.get(("run", run_id))
        if entry is None:
            return fields
        merged = dict(entry.nx_fields) if fields is None else {**entry.nx_fields, **fields}
        merged.update(entry.set_fields)
        return merged

    def _attempt(self, fn, *args):
        """Call the backend unless it is in its retry backoff; track outages."""
        if self._down_since is not None and time.monotonic() < self._next_try:
            raise _BackendDown("in retry backoff")
        try:
            result = fn(*args)
        except _BackendDown as e:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                self._backoff = self._retry_interval_s
                logger.warning(
                    "ledger %s unreachable (%s): writes are queued and replayed when it is back; "
                    "reads may be stale",
                    self.location,
                    e,
                )
            else:
                self._backoff = min(self._backoff * 2, self.MAX_RETRY_INTERVAL_S)
            self._next_try = now + self._backoff
            raise
        if self._down_since is not None:
            logger.warning(
                "ledger %s reachable again after %.1f s", self.location, time.monotonic() - self._down_since
            )
            self._down_since = None
        return result

    def _maybe_replay(self) -> None:
        if self._pending:
            self._replay()

    def _replay(self) -> None:
        """Store queued writes oldest first; stop at the first that fails (keeping it and all after it)."""
        while self._pending:
            key, value = next(iter(self._pending.items()))
            try:
                if key[0] == "done":
                    self._attempt(self._backend.mark_done, key[1], key[2], value)
                    self._known_done.setdefault(key[1], set()).add(key[2])
                else:
                    run_id = key[1]
                    # If the server lost the run (a Redis restarted without persistence), re-create it from
                    # this process's last copy instead of dropping the update.
                    nx = {**self._known_runs.get(run_id, {}), **value.nx_fields}
                    for f in value.set_fields:
                        nx.pop(f, None)
                    recreate = "kind" in nx or "kind" in value.set_fields
                    fields = self._attempt(self._backend.write_run, run_id, value.set_fields, nx, not recreate)
                    if fields is None:
                        logger.warning("ledger %s: dropped a queued update of unknown run %r", self.location, run_id)
                    else:
                        self._known_runs[run_id] = fields
            except _BackendDown:
                return
            del self._pending[key]
        logger.info("ledger %s: replayed every queued write", self.location)

