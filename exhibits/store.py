"""The store: one SQLite file (WAL) plus a directory of images, shared by three processes.

* ``jobs``: what to make. A worker claims a job with a lease and renews it with
  heartbeats; a job whose lease runs out (the worker was killed) goes back to
  the queue. A visitor's prompt is a row from the moment it is submitted and is
  never deleted: it ends as ``done``, ``failed`` (kept, retryable by staff) or
  ``cancelled`` by staff.
* ``pieces``: what was made: one row per image with generator, prompts, seed,
  parameters, the full config, model identities, timings and the file's sha256.
  The PNG's text chunks carry the same metadata.
* ``workers``: heartbeats, so the display can say "warming up" instead of
  waiting on a dead renderer.

Every write is a short transaction; claims use ``BEGIN IMMEDIATE`` so two
workers never take the same job.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from exhibits.files import atomic_write_bytes, png_bytes

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# Higher runs first. A tap wants its piece now; a visitor's prompt comes next.
PRIORITY = {"tap": 30, "staff": 25, "visitor": 20, "playlist": 0, "batch": -10}
JOB_STATES = ("held", "queued", "running", "done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL UNIQUE,
    exhibit TEXT NOT NULL,
    prompts TEXT NOT NULL DEFAULT '[]',
    prompt_text TEXT NOT NULL DEFAULT '',
    seed INTEGER NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    source TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    worker TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    frame_path TEXT,
    frame_at REAL,
    piece_id INTEGER,
    error TEXT,
    visitor TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(status, priority DESC, id);
CREATE TABLE IF NOT EXISTS pieces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER REFERENCES jobs(id),
    exhibit TEXT NOT NULL,
    series TEXT NOT NULL DEFAULT '',
    title TEXT NOT NULL DEFAULT '',
    generator TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    prompts TEXT NOT NULL DEFAULT '[]',
    prompt_text TEXT NOT NULL DEFAULT '',
    seed INTEGER NOT NULL,
    sigma REAL,
    params TEXT NOT NULL DEFAULT '{}',
    config TEXT NOT NULL DEFAULT '{}',
    models TEXT NOT NULL DEFAULT '{}',
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    image_path TEXT NOT NULL,
    thumb_path TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    render_seconds REAL,
    hidden INTEGER NOT NULL DEFAULT 0,
    curation TEXT
);
CREATE INDEX IF NOT EXISTS pieces_recent ON pieces(hidden, id DESC);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    pid INTEGER,
    started_at REAL NOT NULL,
    beat_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'idle',
    message TEXT NOT NULL DEFAULT '',
    device TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS exports (
    piece_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    path TEXT,
    size INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT,
    error TEXT,
    requested_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    accessed_at REAL,
    PRIMARY KEY (piece_id, kind)
);
CREATE INDEX IF NOT EXISTS exports_pending ON exports(status, requested_at);
"""

# Columns added to a table after stores were first created in the field, as
# (table, column, declaration). Append to this list, never edit an entry: Store()
# adds whatever an older file lacks, so an exhibit's archive upgrades in place.
# (A new table goes into _SCHEMA with CREATE TABLE IF NOT EXISTS.)
_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("jobs", "held_reason", "TEXT"),  # why moderation held a visitor's prompt (for the staff)
    # workers that died (lease ran out) while holding the job; not render failures (those are ``attempts``)
    ("jobs", "deaths", "INTEGER NOT NULL DEFAULT 0"),
)

# A job whose worker died this many times is held for staff instead of being queued again: it is
# probably what kills the worker (out of memory, a hung step the watchdog restarts).
MAX_WORKER_DEATHS = 3
ARCHIVE_ID_FILE = "ARCHIVE"  # beside the SQLite file: the archive's identity, kept in both places
BACKUP_DIR = "backups"
HELD_FOR_STAFF = ("This prompt stopped the machine several times, so it is waiting for the gallery staff "
                  "to look at it.")


def _add_missing_columns(c: sqlite3.Connection, added: Sequence[tuple[str, str, str]]) -> None:
    """Run inside a write transaction, so two processes opening one old store add each column once."""
    for table, column, decl in added:
        have = {row[1] for row in c.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            log.info("store: adding column %s.%s", table, column)
            c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


_JOB_FILE = re.compile(r"job(\d+)-")


def _marks(values: Sequence[Any]) -> str:
    """``?,?,?``: one SQL placeholder per value of an IN (...) list."""
    return ",".join("?" * len(values))


class StoreError(RuntimeError):
    """Anything the store refuses or cannot do; the message is meant for people."""


class StoreFault(StoreError):
    """The store cannot be read or written right now (the web app answers 503, /healthz is not ok)."""


class StoreUnavailableError(StoreFault):
    """A passing fault: the database is locked or the disk is full. Wait and try again."""

    def __init__(self, message: str, *, disk_full: bool = False):
        super().__init__(message)
        self.disk_full = disk_full


class StoreDamagedError(StoreFault):
    """SQLite says the file is damaged ("not a database", "malformed", integrity_check's findings)."""


class ArchiveIdentityError(StoreFault):
    """The store file is missing, emptied or belongs to another archive while this archive's pieces are here."""


_TRANSIENT = ("database is locked", "database table is locked", "database or disk is full", "disk i/o error",
              "unable to open database file")
_DAMAGED = ("malformed", "not a database", "file is encrypted", "database corrupt")


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC/EDQUOT from a file write and for SQLite's "database or disk is full"."""
    if isinstance(exc, StoreUnavailableError):
        return exc.disk_full
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.Error) and "full" in str(exc).lower()


def classify_fault(exc: BaseException, db_path: Path) -> StoreError | None:
    """The store error a raw SQLite/OS error amounts to, naming the file; None if it is not a store fault."""
    if isinstance(exc, StoreError):
        return exc
    text = str(exc).lower()
    if isinstance(exc, sqlite3.Error) and any(t in text for t in _DAMAGED):
        return StoreDamagedError(f"{db_path}: the archive's database is damaged ({exc}). {_restore_hint(db_path)}")
    if is_disk_full(exc):
        return StoreUnavailableError(f"{db_path}: the disk is full ({exc}); work resumes when space is freed",
                                     disk_full=True)
    if isinstance(exc, sqlite3.OperationalError) and any(t in text for t in _TRANSIENT):
        return StoreUnavailableError(f"{db_path}: {exc}; retrying")
    if isinstance(exc, sqlite3.DatabaseError):
        return StoreDamagedError(f"{db_path}: the archive's database cannot be read ({exc}). {_restore_hint(db_path)}")
    return None


def _restore_hint(db_path: Path) -> str:
    root = db_path.parent
    return (f"Fix: stop the kiosk (systemctl stop kiosk.target), then restore the newest backup with "
            f"`python -m kiosk restore --data {root}` (backups are in {root / BACKUP_DIR}); "
            f"`python -m kiosk doctor --data {root}` shows what is wrong.")


def integrity_words(db_path: Path, *, quick: bool = False) -> list[str]:
    """PRAGMA integrity_check's findings for ``db_path`` (["ok"] when healthy), or SQLite's refusal."""
    try:
        c = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
        try:
            rows = c.execute("PRAGMA quick_check" if quick else "PRAGMA integrity_check").fetchall()
        finally:
            c.close()
    except sqlite3.Error as exc:
        return [str(exc)]
    return [str(r[0]) for r in rows]


@dataclass(frozen=True)
class Job:
    id: int
    token: str
    exhibit: str
    prompts: tuple[tuple[str, float], ...]
    prompt_text: str
    seed: int
    params: dict
    source: str
    priority: int
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    worker: str | None
    lease_until: float | None
    attempts: int
    step: int
    total: int
    frame_path: str | None
    frame_at: float | None
    piece_id: int | None
    error: str | None
    deaths: int = 0

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        return cls(
            id=row["id"], token=row["token"], exhibit=row["exhibit"],
            prompts=tuple((t, float(w)) for t, w in json.loads(row["prompts"])),
            prompt_text=row["prompt_text"], seed=row["seed"], params=json.loads(row["params"]),
            source=row["source"], priority=row["priority"], status=row["status"],
            created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
            worker=row["worker"], lease_until=row["lease_until"], attempts=row["attempts"],
            step=row["step"], total=row["total"], frame_path=row["frame_path"], frame_at=row["frame_at"],
            piece_id=row["piece_id"], error=row["error"],
            deaths=row["deaths"] if "deaths" in row.keys() else 0,
        )

    @property
    def held_for_staff(self) -> bool:
        """Held because it kept stopping the renderer (not waiting for moderation)."""
        return self.status == "held" and self.deaths >= MAX_WORKER_DEATHS

    def public_error(self) -> str | None:
        """What went wrong, in plain words for a visitor: never a host name, a pid or a traceback."""
        if self.status == "failed":
            return "the machine could not make this piece; the gallery staff can try it again"
        if self.held_for_staff:
            return HELD_FOR_STAFF
        return None

    def public(self) -> dict:
        """What a phone may see about its own job."""
        return {
            "id": self.id, "status": self.status, "exhibit": self.exhibit, "prompt": self.prompt_text,
            "step": self.step, "total": self.total, "piece_id": self.piece_id,
            "error": self.public_error(),
        }


@dataclass(frozen=True)
class Piece:
    id: int
    job_id: int | None
    exhibit: str
    series: str
    title: str
    generator: str
    label: str
    prompts: tuple[tuple[str, float], ...]
    prompt_text: str
    seed: int
    sigma: float | None
    params: dict
    config: dict
    models: dict
    width: int
    height: int
    image_path: str
    thumb_path: str | None
    extra: dict
    sha256: str
    created_at: float
    render_seconds: float | None
    hidden: bool
    curation: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Piece":
        return cls(
            id=row["id"], job_id=row["job_id"], exhibit=row["exhibit"], series=row["series"], title=row["title"],
            generator=row["generator"], label=row["label"],
            prompts=tuple((t, float(w)) for t, w in json.loads(row["prompts"])), prompt_text=row["prompt_text"],
            seed=row["seed"], sigma=row["sigma"], params=json.loads(row["params"]), config=json.loads(row["config"]),
            models=json.loads(row["models"]), width=row["width"], height=row["height"],
            image_path=row["image_path"], thumb_path=row["thumb_path"], extra=json.loads(row["extra"]),
            sha256=row["sha256"], created_at=row["created_at"], render_seconds=row["render_seconds"],
            hidden=bool(row["hidden"]), curation=row["curation"],
        )

    def caption(self) -> str:
        text = self.prompt_text or self.title
        bits = [self.series or self.exhibit]
        if text and text != bits[0]:
            bits.append(text)
        if self.sigma is not None:
            bits.append(f"sigma {self.sigma:.2f}")
        bits.append(f"seed {self.seed}")
        return " · ".join(bits)

    def public(self) -> dict:
        return {
            "id": self.id, "exhibit": self.exhibit, "series": self.series, "title": self.title,
            "generator": self.generator, "label": self.label, "prompt": self.prompt_text, "seed": self.seed,
            "sigma": self.sigma, "width": self.width, "height": self.height, "caption": self.caption(),
            "created_at": self.created_at, "sha256": self.sha256,
        }


class Store:
    """Open (and create) the store in ``root``: ``root/kiosk.sqlite3`` plus ``root/pieces``, ``root/progress``."""

    def __init__(self, root: str | os.PathLike, *, timeout: float = 30.0):
        self.root = Path(root)
        self.db_path = self.root / "kiosk.sqlite3"
        self.pieces_dir = self.root / "pieces"
        self.progress_dir = self.root / "progress"
        self.work_dir = self.root / "work"
        self.id_path = self.root / ARCHIVE_ID_FILE
        self._timeout = timeout
        self._local = threading.local()
        for d in (self.root, self.pieces_dir, self.progress_dir, self.work_dir):
            d.mkdir(parents=True, exist_ok=True)
        # One process at a time checks the archive's identity, so two starting together on a fresh
        # directory never see each other's half-created file as an emptied store.
        with open(self.root / ".store.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._open_checked()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _open_checked(self) -> None:
        fresh = not self.db_path.exists() or self.db_path.stat().st_size == 0
        if fresh:
            self._refuse_replacing_an_archive()
        try:
            if not fresh:
                words = integrity_words(self.db_path, quick=True)
                if words != ["ok"]:
                    raise StoreDamagedError(
                        f"{self.db_path}: the archive's database is damaged; PRAGMA quick_check says: "
                        f"{'; '.join(words[:5])}. {_restore_hint(self.db_path)}")
            self.conn.executescript(_SCHEMA)
            with self._tx() as c:
                _add_missing_columns(c, _ADDED_COLUMNS)
                c.execute("INSERT OR IGNORE INTO settings(key, value) VALUES ('schema_version', ?)",
                          (json.dumps(SCHEMA_VERSION),))
                row = c.execute("SELECT value FROM settings WHERE key='archive_id'").fetchone()
                archive_id = json.loads(row["value"]) if row else None
                if archive_id is None:  # a new archive, or one from before archives had an identity
                    archive_id = secrets.token_hex(8)
                    c.execute("INSERT INTO settings(key, value) VALUES ('archive_id', ?)", (json.dumps(archive_id),))
        except StoreError:
            self.close()
            raise
        except sqlite3.Error as exc:
            self.close()
            raise classify_fault(exc, self.db_path) from exc
        self.archive_id = archive_id
        on_disk = self._archive_id_on_disk()
        if on_disk is None:
            atomic_write_bytes(self.id_path, (json.dumps({"archive_id": archive_id, "created_at": time.time()})
                                              + "\n").encode())
            if fresh:
                log.info("store: new archive %s in %s", archive_id, self.root)
        elif on_disk != archive_id:
            self.close()
            raise ArchiveIdentityError(
                f"{self.db_path} belongs to archive {archive_id}, but {self.id_path} says this directory holds "
                f"archive {on_disk}: the database was swapped for another archive's. Refusing to mix them. "
                f"{_restore_hint(self.db_path)}")

    def _archive_id_on_disk(self) -> str | None:
        try:
            return str(json.loads(self.id_path.read_text(encoding="utf-8"))["archive_id"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchiveIdentityError(f"{self.id_path}: unreadable archive identity ({exc}); it should hold "
                                       f'{{"archive_id": "..."}} as written when the archive was created') from exc

    def _refuse_replacing_an_archive(self) -> None:
        """A missing or empty store next to an archive's identity file or its pieces is never replaced."""
        archive_id = self._archive_id_on_disk()
        pieces = sum(1 for _ in self.pieces_dir.rglob("*.png"))
        if archive_id is None and pieces == 0:
            return
        state = "is empty (0 bytes)" if self.db_path.exists() else "is missing"
        what = [f"archive {archive_id}" if archive_id else "an archive", f"{pieces} piece image(s) in {self.pieces_dir}"]
        raise ArchiveIdentityError(
            f"{self.db_path} {state}, but {self.root} holds {' with '.join(what)}. Refusing to start a new empty "
            f"archive in its place (ids would restart at 1 and old QR codes would show other pieces). "
            f"{_restore_hint(self.db_path)} To start a new archive on purpose, move {self.pieces_dir} and "
            f"{self.id_path} elsewhere first.")

    # -- connection ---------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        # One connection per thread (waitress serves from several; the worker renews leases from
        # a heartbeat thread) and per process (a forked child opens its own).
        loc = self._local
        if getattr(loc, "conn", None) is None or loc.pid != os.getpid():
            c = sqlite3.connect(self.db_path, timeout=self._timeout, isolation_level=None)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("PRAGMA foreign_keys=ON")
            c.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
            loc.conn, loc.pid = c, os.getpid()
        return loc.conn

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        if getattr(self._local, "conn", None) is not None:
            self._local.conn.close()
            self._local.conn = None

    @contextmanager
    def _tx(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        """A short write transaction. SQLite faults come out as StoreUnavailableError (locked, disk full:
        try again later) or StoreDamagedError, each naming the file."""
        try:
            c = self.conn
            c.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        except sqlite3.Error as exc:
            raise classify_fault(exc, self.db_path) from exc
        try:
            yield c
        except BaseException as exc:
            if c.in_transaction:
                try:
                    c.execute("ROLLBACK")
                except sqlite3.Error:
                    log.warning("store: rollback failed after %s", exc)
            if isinstance(exc, sqlite3.Error):
                fault = classify_fault(exc, self.db_path)
                if fault is not None:
                    raise fault from exc
            raise
        else:
            try:
                c.execute("COMMIT")
            except sqlite3.Error as exc:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise classify_fault(exc, self.db_path) from exc

    # -- settings -----------------------------------------------------------
    def get_setting(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return json.loads(row["value"]) if row else default

    def set_setting(self, key: str, value: Any) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                      (key, json.dumps(value)))

    # -- jobs ---------------------------------------------------------------
    def submit(self, exhibit: str, *, prompts: Sequence[Sequence[Any]] = (), prompt_text: str = "",
               seed: int | None = None, params: Mapping[str, Any] | None = None, source: str = "playlist",
               priority: int | None = None, held: bool = False, visitor: str | None = None,
               max_attempts: int = 3, held_reason: str | None = None) -> Job:
        """Queue a job (or hold it for moderation). Returns the stored row, with its status token."""
        if source not in PRIORITY:
            raise StoreError(f"unknown job source {source!r}; one of {', '.join(PRIORITY)}")
        if seed is None:
            seed = secrets.randbelow(2**31)
        prompts_json = json.dumps([[str(t), float(w)] for t, w in prompts])
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO jobs(token, exhibit, prompts, prompt_text, seed, params, source, priority, status,"
                " created_at, visitor, max_attempts, held_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (secrets.token_urlsafe(12), exhibit, prompts_json, prompt_text, int(seed),
                 json.dumps(dict(params or {}), sort_keys=True), source,
                 PRIORITY[source] if priority is None else int(priority), "held" if held else "queued",
                 time.time(), visitor, max_attempts, held_reason if held else None),
            )
            row = c.execute("SELECT * FROM jobs WHERE id=?", (cur.lastrowid,)).fetchone()
        job = Job.from_row(row)
        log.info("job %d queued: %s %s (%s)", job.id, exhibit, prompt_text or "", job.status)
        return job

    def _expire_leases(self, c: sqlite3.Connection, now: float) -> None:
        """A job whose worker stopped answering goes back to the queue without using up its attempts (those
        count render failures). Only a job whose workers died MAX_WORKER_DEATHS times is held for staff."""
        for row in c.execute("SELECT id, deaths, worker FROM jobs WHERE status='running' AND lease_until < ?",
                             (now,)).fetchall():
            deaths = row["deaths"] + 1
            if deaths >= MAX_WORKER_DEATHS:
                why = (f"its worker stopped answering {deaths} times (last: {row['worker']}); "
                       f"held for staff: approve to try again, or cancel")
                c.execute("UPDATE jobs SET status='held', deaths=?, error=?, held_reason=?, worker=NULL,"
                          " lease_until=NULL WHERE id=?", (deaths, why, why, row["id"]))
                log.warning("job %d held for staff: its worker died %d times while making it", row["id"], deaths)
            else:
                c.execute("UPDATE jobs SET status='queued', deaths=?, worker=NULL, lease_until=NULL WHERE id=?",
                          (deaths, row["id"]))
                log.warning("job %d re-queued: the lease of worker %s ran out", row["id"], row["worker"])
            self._sweep_job_files(c, row["id"])

    def _sweep_job_files(self, c: sqlite3.Connection, job_id: int) -> None:
        """Remove piece files a killed worker left for ``job_id`` (written, but its row never committed; or a
        half-written temporary file). Only called while nobody holds the job, so nothing in progress is touched."""
        recorded = set()
        for row in c.execute("SELECT image_path, thumb_path, extra FROM pieces WHERE job_id=?", (job_id,)):
            recorded.update(p for p in (row["image_path"], row["thumb_path"], *json.loads(row["extra"]).values()) if p)
        for pattern in (f"*/job{job_id:06d}-*", f"*/.job{job_id:06d}-*"):
            for f in self.pieces_dir.glob(pattern):
                if str(f.relative_to(self.root)) not in recorded:
                    f.unlink(missing_ok=True)
                    log.info("removed %s: left by a worker that died writing job %d", f, job_id)

    def requeue_expired(self) -> None:
        with self._tx() as c:
            self._expire_leases(c, time.time())

    def claim(self, worker: str, *, lease: float = 30.0, exhibits: Sequence[str] | None = None,
              batch: str | None = None) -> Job | None:
        """Atomically take the most urgent queued job (optionally only of ``exhibits``, or of one batch), or None."""
        now = time.time()
        with self._tx() as c:
            self._expire_leases(c, now)
            sql = "SELECT id FROM jobs WHERE status='queued'"
            args: list[Any] = []
            if exhibits is not None:
                if not exhibits:
                    return None
                sql += f" AND exhibit IN ({_marks(exhibits)})"
                args += list(exhibits)
            if batch is not None:
                sql += " AND source='batch' AND json_extract(params, '$.batch') = ?"
                args.append(batch)
            row = c.execute(sql + " ORDER BY priority DESC, id LIMIT 1", args).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE jobs SET status='running', worker=?, lease_until=?, started_at=COALESCE(started_at, ?),"
                " error=NULL WHERE id=? AND status='queued'",
                (worker, now + lease, now, row["id"]),
            )
            job = Job.from_row(c.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone())
        log.info("worker %s claimed job %d (failed before: %d, workers lost: %d)", worker, job.id, job.attempts,
                 job.deaths)
        return job

    def _owned(self, c: sqlite3.Connection, job_id: int, worker: str) -> sqlite3.Row:
        row = c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise StoreError(f"job {job_id} does not exist")
        if row["status"] != "running" or row["worker"] != worker:
            raise StoreError(f"job {job_id} is no longer held by worker {worker} (status {row['status']})")
        return row

    def heartbeat(self, job_id: int, worker: str, *, lease: float = 30.0, step: int | None = None,
                  total: int | None = None) -> bool:
        """Renew the lease. Returns False if the job was taken away (cancelled, expired and re-claimed)."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE jobs SET lease_until=?, step=COALESCE(?, step), total=COALESCE(?, total)"
                " WHERE id=? AND worker=? AND status='running'",
                (time.time() + lease, step, total, job_id, worker),
            )
            return cur.rowcount == 1

    def publish_frame(self, job_id: int, worker: str, jpeg: bytes, *, step: int, total: int, lease: float = 30.0) -> bool:
        """Newest progress frame wins: one file per job, replaced atomically, and a heartbeat."""
        path = self.progress_dir / f"job-{job_id}.jpg"
        atomic_write_bytes(path, jpeg, durable=False)  # a live frame is not worth an fsync (see atomic_path)
        with self._tx() as c:
            cur = c.execute(
                "UPDATE jobs SET frame_path=?, frame_at=?, step=?, total=?, lease_until=?"
                " WHERE id=? AND worker=? AND status='running'",
                (str(path.relative_to(self.root)), time.time(), step, total, time.time() + lease, job_id, worker),
            )
            return cur.rowcount == 1

    def release(self, job_id: int, worker: str, reason: str = "worker stopped") -> None:
        """Give a running job back to the queue without counting the attempt (clean shutdown, pre-emption)."""
        with self._tx() as c:
            c.execute("UPDATE jobs SET status='queued', worker=NULL, lease_until=NULL"
                      " WHERE id=? AND worker=? AND status='running'", (job_id, worker))
        log.info("job %d released by %s: %s", job_id, worker, reason)

    def fail(self, job_id: int, worker: str, error: str, *, retry: bool = False) -> Job:
        """Record a render failure (one attempt used). With ``retry`` and attempts left, the job is queued again."""
        now = time.time()
        with self._tx() as c:
            row = self._owned(c, job_id, worker)
            attempts = row["attempts"] + 1
            if retry and attempts < row["max_attempts"]:
                c.execute("UPDATE jobs SET status='queued', worker=NULL, lease_until=NULL, error=?, attempts=?"
                          " WHERE id=?", (error, attempts, job_id))
            else:
                c.execute("UPDATE jobs SET status='failed', worker=NULL, lease_until=NULL, error=?, finished_at=?,"
                          " attempts=? WHERE id=?", (error, now, attempts, job_id))
            job = Job.from_row(c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())
        if job.status == "failed":
            self._drop_frame(job_id)
        log.warning("job %d %s: %s", job_id, job.status, error)
        return job

    def _drop_frame(self, job_id: int) -> None:
        """A finished job's live frame is no longer needed (a week of them would fill the disk)."""
        with self._tx() as c:
            c.execute("UPDATE jobs SET frame_path=NULL WHERE id=?", (job_id,))
        (self.progress_dir / f"job-{job_id}.jpg").unlink(missing_ok=True)

    def get_job(self, job_id: int) -> Job | None:
        row = self.conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def job_by_token(self, token: str) -> Job | None:
        row = self.conn.execute("SELECT * FROM jobs WHERE token=?", (token,)).fetchone()
        return Job.from_row(row) if row else None

    def jobs(self, statuses: Sequence[str] | None = None, limit: int = 100, source: str | None = None) -> list[Job]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if statuses:
            sql += f" AND status IN ({_marks(statuses)})"
            args += list(statuses)
        if source:
            sql += " AND source=?"
            args.append(source)
        sql += " ORDER BY priority DESC, id LIMIT ?"
        args.append(limit)
        return [Job.from_row(r) for r in self.conn.execute(sql, args)]

    def queue_position(self, job_id: int) -> int | None:
        """1 for the next job to run; None if the job is not waiting."""
        row = self.conn.execute("SELECT status, priority, id FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None or row["status"] not in ("queued", "held"):
            return None
        ahead = self.conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE status='queued' AND (priority > ? OR (priority = ? AND id < ?))",
            (row["priority"], row["priority"], row["id"])).fetchone()[0]
        return ahead + 1

    def visitor_jobs(self, visitor: str, limit: int = 30) -> list[Job]:
        """A phone's own prompts, newest first (``visitor`` is its anonymous cookie)."""
        rows = self.conn.execute("SELECT * FROM jobs WHERE visitor=? ORDER BY id DESC LIMIT ?", (visitor, limit))
        return [Job.from_row(r) for r in rows]

    def held_reason(self, job_id: int) -> str | None:
        row = self.conn.execute("SELECT held_reason FROM jobs WHERE id=?", (job_id,)).fetchone()
        return row[0] if row else None

    def render_seconds(self, exhibit: str, last: int = 20) -> float | None:
        """Median render time of the exhibit's last ``last`` pieces (None before the first one)."""
        rows = [r[0] for r in self.conn.execute(
            "SELECT render_seconds FROM pieces WHERE exhibit=? AND render_seconds > 0 ORDER BY id DESC LIMIT ?",
            (exhibit, last))]
        if not rows:
            return None
        rows.sort()
        return float(rows[len(rows) // 2])

    def queue_ahead(self, job_id: int) -> list[tuple[str, int, int]]:
        """(exhibit, step, total) of the running jobs and the queued jobs that run before ``job_id``."""
        row = self.conn.execute("SELECT priority, id FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            return []
        return [(r[0], r[1], r[2]) for r in self.conn.execute(
            "SELECT exhibit, step, total FROM jobs WHERE status='running' OR (status='queued' AND"
            " (priority > ? OR (priority = ? AND id < ?)))", (row["priority"], row["priority"], row["id"]))]

    def count_queued(self, source: str | None = None) -> int:
        if source is None:
            return self.conn.execute("SELECT COUNT(*) FROM jobs WHERE status='queued'").fetchone()[0]
        return self.conn.execute("SELECT COUNT(*) FROM jobs WHERE status='queued' AND source=?", (source,)).fetchone()[0]

    def higher_priority_waiting(self, priority: int, exhibits: Sequence[str] | None = None) -> bool:
        """A more urgent job is queued (only among ``exhibits``, the ones the asking worker can make)."""
        sql, args = "SELECT 1 FROM jobs WHERE status='queued' AND priority > ?", [priority]
        if exhibits is not None:
            sql += f" AND exhibit IN ({_marks(exhibits)})"
            args += list(exhibits)
        return self.conn.execute(sql + " LIMIT 1", args).fetchone() is not None

    def running(self) -> list[Job]:
        return [Job.from_row(r) for r in self.conn.execute("SELECT * FROM jobs WHERE status='running' ORDER BY id")]

    def current_progress(self) -> Job | None:
        """The running job with the newest progress frame (for the live view)."""
        row = self.conn.execute(
            "SELECT * FROM jobs WHERE status='running' ORDER BY frame_at IS NULL, frame_at DESC, id DESC LIMIT 1"
        ).fetchone()
        return Job.from_row(row) if row else None

    # moderation
    def approve(self, job_id: int) -> bool:
        with self._tx() as c:
            return c.execute("UPDATE jobs SET status='queued', deaths=0, error=NULL WHERE id=? AND status='held'",
                             (job_id,)).rowcount == 1

    def cancel(self, job_id: int, reason: str = "cancelled by staff") -> bool:
        with self._tx() as c:
            done = c.execute(
                "UPDATE jobs SET status='cancelled', error=?, finished_at=?, worker=NULL, lease_until=NULL"
                " WHERE id=? AND status IN ('held','queued','running')", (reason, time.time(), job_id)).rowcount == 1
        if done:
            self._drop_frame(job_id)
        return done

    def retry(self, job_id: int) -> bool:
        with self._tx() as c:
            return c.execute(
                "UPDATE jobs SET status='queued', attempts=0, deaths=0, error=NULL, finished_at=NULL"
                " WHERE id=? AND status='failed'",
                (job_id,)).rowcount == 1

    # -- pieces -------------------------------------------------------------
    def add_piece(self, job: Job, worker: str, image: Any, meta: Mapping[str, Any], *,
                  extra_files: Mapping[str, os.PathLike | str] | None = None, thumb_size: int = 512) -> Piece:
        """Write the image (and thumbnail) atomically, then record the piece and finish the job in one transaction.

        ``meta`` carries at least exhibit, series, title, generator, label, params, config, models and may carry
        sigma and render_seconds. The PNG's text chunks hold the same metadata as the row.
        """
        now = time.time()
        day = time.strftime("%Y%m%d", time.gmtime(now))
        stem = f"{day}/job{job.id:06d}-{job.seed}"
        full_meta = {
            "exhibit": job.exhibit, "prompt": job.prompt_text, "prompts": [list(p) for p in job.prompts],
            "seed": job.seed, "job_id": job.id, "created_at": now, **dict(meta),
        }
        data = png_bytes(image, full_meta)
        sha = hashlib.sha256(data).hexdigest()
        image_rel = f"pieces/{stem}.png"
        thumb_rel = f"pieces/{stem}.thumb.jpg"
        self._owned(self.conn, job.id, worker)  # early refusal; the final check is in the transaction below
        self._sweep_job_files(self.conn, job.id)  # what an earlier, killed attempt at this job left behind
        written: list[Path] = []
        try:
            written.append(atomic_write_bytes(self.root / image_rel, data))
            thumb = image.copy()
            thumb.thumbnail((thumb_size, thumb_size))
            buf = io.BytesIO()
            thumb.convert("RGB").save(buf, format="JPEG", quality=88)
            written.append(atomic_write_bytes(self.root / thumb_rel, buf.getvalue()))
            extra = {}
            for key, p in (extra_files or {}).items():
                p = Path(p)
                dest_rel = f"pieces/{stem}.{key}{p.suffix}"
                written.append(atomic_write_bytes(self.root / dest_rel, p.read_bytes()))
                extra[key] = dest_rel
            row = self._record_piece(job, worker, image, meta, image_rel, thumb_rel, extra, sha, now)
        except BaseException:
            for f in written:  # no file without its row: the job was taken away or the write failed
                f.unlink(missing_ok=True)
            raise
        self._drop_frame(job.id)
        log.info("piece %d written: %s", row["id"], image_rel)
        return Piece.from_row(row)

    def _record_piece(self, job: Job, worker: str, image: Any, meta: Mapping[str, Any], image_rel: str,
                      thumb_rel: str, extra: dict, sha: str, now: float) -> sqlite3.Row:
        with self._tx() as c:
            self._owned(c, job.id, worker)
            cur = c.execute(
                "INSERT INTO pieces(job_id, exhibit, series, title, generator, label, prompts, prompt_text, seed, sigma,"
                " params, config, models, width, height, image_path, thumb_path, extra, sha256, created_at,"
                " render_seconds) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (job.id, job.exhibit, meta.get("series", ""), meta.get("title", ""), meta.get("generator", ""),
                 meta.get("label", ""), json.dumps([list(p) for p in job.prompts]), job.prompt_text, job.seed,
                 meta.get("sigma"), json.dumps(meta.get("params", {}), sort_keys=True, default=str),
                 json.dumps(meta.get("config", {}), sort_keys=True, default=str),
                 json.dumps(meta.get("models", {}), sort_keys=True, default=str),
                 image.width, image.height, image_rel, thumb_rel, json.dumps(extra), sha, now,
                 meta.get("render_seconds")),
            )
            piece_id = cur.lastrowid
            c.execute("UPDATE jobs SET status='done', piece_id=?, finished_at=?, worker=NULL, lease_until=NULL,"
                      " step=total WHERE id=?", (piece_id, now, job.id))
            return c.execute("SELECT * FROM pieces WHERE id=?", (piece_id,)).fetchone()

    def get_piece(self, piece_id: int, *, include_hidden: bool = False) -> Piece | None:
        row = self.conn.execute("SELECT * FROM pieces WHERE id=?", (piece_id,)).fetchone()
        if row is None or (row["hidden"] and not include_hidden):
            return None
        return Piece.from_row(row)

    def _image_exists(self, row: sqlite3.Row) -> bool:
        """The piece's image is on disk (a row whose file was deleted is left out of listings, and `kiosk doctor`
        reports it; its own page, reached by an old QR code, says the image is missing)."""
        try:
            return self.path(row["image_path"]).is_file()
        except StoreError:
            return False

    def recent_pieces(self, limit: int = 20, *, exhibit: str | None = None, include_hidden: bool = False,
                      before_id: int | None = None, curation: str | None = None) -> list[Piece]:
        sql, args = "SELECT * FROM pieces WHERE 1=1", []
        if not include_hidden:
            sql += " AND hidden=0"
        if exhibit:
            sql += " AND exhibit=?"
            args.append(exhibit)
        if before_id is not None:
            sql += " AND id < ?"
            args.append(before_id)
        if curation == "unreviewed":
            sql += " AND curation IS NULL"
        elif curation:
            sql += " AND curation=?"
            args.append(curation)
        out: list[Piece] = []
        cursor = None
        while len(out) < limit:  # rows whose image is gone are skipped: read on until the page is full
            page_sql, page_args = sql, list(args)
            if cursor is not None:
                page_sql += " AND id < ?"
                page_args.append(cursor)
            want = limit - len(out)
            rows = self.conn.execute(page_sql + " ORDER BY id DESC LIMIT ?", [*page_args, want]).fetchall()
            out += [Piece.from_row(r) for r in rows if include_hidden or self._image_exists(r)]
            if len(rows) < want:
                break
            cursor = rows[-1]["id"]
        return out

    def latest_piece_id(self) -> int:
        newest = self.recent_pieces(1)
        return newest[0].id if newest else 0

    def count_pieces(self, exhibit: str | None = None) -> int:
        if exhibit is None:
            return self.conn.execute("SELECT COUNT(*) FROM pieces").fetchone()[0]
        return self.conn.execute("SELECT COUNT(*) FROM pieces WHERE exhibit=?", (exhibit,)).fetchone()[0]

    def set_hidden(self, piece_id: int, hidden: bool) -> bool:
        with self._tx() as c:
            return c.execute("UPDATE pieces SET hidden=? WHERE id=?", (int(hidden), piece_id)).rowcount == 1

    def set_curation(self, piece_id: int, verdict: str | None) -> bool:
        if verdict not in (None, "keep", "reject"):
            raise StoreError(f"curation must be 'keep', 'reject' or empty, got {verdict!r}")
        with self._tx() as c:
            return c.execute("UPDATE pieces SET curation=? WHERE id=?", (verdict, piece_id)).rowcount == 1

    def prune_playlist_pieces(self, keep: int) -> int:
        """Delete the oldest playlist pieces beyond the newest ``keep`` (never visitors', taps', batches' or
        curated ones), files first, then rows. Returns how many were removed."""
        rows = self.conn.execute(
            "SELECT p.id, p.image_path, p.thumb_path, p.extra FROM pieces p JOIN jobs j ON j.id = p.job_id"
            " WHERE j.source = 'playlist' AND p.curation IS NULL ORDER BY p.id DESC LIMIT -1 OFFSET ?",
            (max(0, keep),)).fetchall()
        for row in rows:
            for rel in [row["image_path"], row["thumb_path"], *json.loads(row["extra"]).values()]:
                if rel:
                    self.path(rel).unlink(missing_ok=True)
            shutil.rmtree(self.root / "exports" / str(row["id"]), ignore_errors=True)  # the web app's cached prints
            with self._tx() as c:
                c.execute("UPDATE jobs SET piece_id=NULL WHERE piece_id=?", (row["id"],))
                c.execute("DELETE FROM pieces WHERE id=?", (row["id"],))
        if rows:
            log.info("pruned %d old playlist pieces (keeping the newest %d)", len(rows), keep)
        return len(rows)

    # -- exports (made off the web app's request threads, served as plain files) --------
    def export_row(self, piece_id: int, kind: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM exports WHERE piece_id=? AND kind=?", (piece_id, kind)).fetchone()
        return dict(row) if row else None

    def request_export(self, piece_id: int, kind: str, *, retry_failed_after: float = 600.0) -> dict:
        """Ask for an export (idempotent): a new or long-failed one becomes ``pending``. Returns the row."""
        now = time.time()
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO exports(piece_id, kind, status, requested_at) VALUES (?,?,'pending',?)",
                      (piece_id, kind, now))
            c.execute("UPDATE exports SET status='pending', error=NULL, requested_at=? WHERE piece_id=? AND kind=?"
                      " AND status='failed' AND finished_at < ?", (now, piece_id, kind, now - retry_failed_after))
            return dict(c.execute("SELECT * FROM exports WHERE piece_id=? AND kind=?", (piece_id, kind)).fetchone())

    def claim_export(self, *, stale_after: float = 900.0) -> dict | None:
        """The oldest pending export, now ``running`` (one left running longer than ``stale_after`` is retaken)."""
        now = time.time()
        with self._tx() as c:
            row = c.execute("SELECT piece_id, kind FROM exports WHERE status='pending' OR (status='running' AND"
                            " started_at < ?) ORDER BY requested_at LIMIT 1", (now - stale_after,)).fetchone()
            if row is None:
                return None
            c.execute("UPDATE exports SET status='running', started_at=? WHERE piece_id=? AND kind=?",
                      (now, row["piece_id"], row["kind"]))
            return dict(c.execute("SELECT * FROM exports WHERE piece_id=? AND kind=?", tuple(row)).fetchone())

    def finish_export(self, piece_id: int, kind: str, *, path: str | None = None, size: int = 0,
                      sha256: str | None = None, error: str | None = None) -> None:
        with self._tx() as c:
            c.execute("UPDATE exports SET status=?, path=?, size=?, sha256=?, error=?, finished_at=?, accessed_at=?"
                      " WHERE piece_id=? AND kind=?", ("failed" if error else "ready", path, size, sha256, error,
                                                       time.time(), time.time(), piece_id, kind))

    def touch_export(self, piece_id: int, kind: str, *, every: float = 60.0) -> None:
        """Note a download (at most one write a minute per file), for least-recently-used pruning."""
        now = time.time()
        with self._tx() as c:
            c.execute("UPDATE exports SET accessed_at=? WHERE piece_id=? AND kind=? AND accessed_at < ?",
                      (now, piece_id, kind, now - every))

    def forget_export(self, piece_id: int, kind: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM exports WHERE piece_id=? AND kind=?", (piece_id, kind))

    def exports_to_prune(self, max_bytes: int, *, incoming: int = 0) -> list[dict]:
        """Ready exports beyond ``max_bytes`` in total, least recently downloaded first. ``incoming`` is the size
        of a file about to be announced ready: it counts as the most recent one. The most recent file is always
        kept, even when it alone is larger than the bound: it is the one a phone is waiting for."""
        rows = [dict(r) for r in self.conn.execute(
            "SELECT * FROM exports WHERE status='ready' ORDER BY accessed_at DESC, finished_at DESC")]
        total, out = incoming, []
        for i, r in enumerate(rows):
            total += r["size"]
            if total > max_bytes and (i > 0 or incoming):
                out.append(r)
        return out[::-1]

    def path(self, rel: str) -> Path:
        """Absolute path of a file recorded relative to the store root (refuses to leave the root)."""
        p = (self.root / rel).resolve()
        if self.root.resolve() not in p.parents:
            raise StoreError(f"path {rel!r} is outside the store")
        return p

    def verify_piece(self, piece: Piece) -> bool:
        """True if the image on disk still has the sha256 recorded in the row."""
        try:
            return hashlib.sha256(self.path(piece.image_path).read_bytes()).hexdigest() == piece.sha256
        except FileNotFoundError:
            return False

    def file_report(self) -> tuple[list[tuple[int, str]], list[str]]:
        """(rows whose image is gone as (piece id, path), piece images on disk without a row)."""
        recorded: set[str] = set()
        missing: list[tuple[int, str]] = []
        for row in self.conn.execute("SELECT id, image_path, thumb_path, extra FROM pieces ORDER BY id"):
            recorded.update(p for p in (row["image_path"], row["thumb_path"], *json.loads(row["extra"]).values()) if p)
            if not self._image_exists(row):
                missing.append((row["id"], row["image_path"]))
        orphans = sorted(rel for f in self.pieces_dir.rglob("*")  # half-written temporary files count too
                         if f.is_file() and (rel := str(f.relative_to(self.root))) not in recorded)
        return missing, orphans

    # -- backups ------------------------------------------------------------
    def backup(self, dest_dir: str | os.PathLike | None = None, *, keep: int = 14) -> Path:
        """Copy the database with SQLite's online backup API (safe while the show runs), check the copy,
        then keep only the newest ``keep`` backups. The piece images are files: copy those with rsync."""
        dest_dir = Path(dest_dir) if dest_dir else self.root / BACKUP_DIR
        dest_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        dest = dest_dir / f"kiosk-{stamp}-{self.archive_id}.sqlite3"
        tmp = dest.with_name(f".{dest.name}.tmp")
        try:
            target = sqlite3.connect(tmp)
            try:
                self.conn.backup(target, pages=256, sleep=0.01)
            finally:
                target.close()
            words = integrity_words(tmp)
            if words != ["ok"]:
                raise StoreDamagedError(f"{self.db_path}: the backup copy fails PRAGMA integrity_check: "
                                        f"{'; '.join(words[:5])}; the live database is probably damaged")
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except sqlite3.Error as exc:
            raise classify_fault(exc, self.db_path) from exc
        finally:
            tmp.unlink(missing_ok=True)
        olds = sorted(dest_dir.glob(f"kiosk-*-{self.archive_id}.sqlite3"))
        for old in olds[:-keep] if keep > 0 else []:
            old.unlink(missing_ok=True)
            log.info("backup: removed old %s", old)
        log.info("backup: %s", dest)
        return dest

    # -- web app ------------------------------------------------------------
    def record_web_address(self, host: str, port: int, url: str) -> None:
        """Where the web app really listens (``kiosk status`` and ``kiosk doctor`` read it)."""
        self.set_setting("web_listen", {"host": host, "port": int(port), "url": url, "pid": os.getpid(),
                                        "started_at": time.time()})

    # -- workers ------------------------------------------------------------
    def worker_beat(self, worker: str, *, state: str, message: str = "", device: str = "") -> None:
        now = time.time()
        with self._tx() as c:
            c.execute(
                "INSERT INTO workers(id, pid, started_at, beat_at, state, message, device) VALUES (?,?,?,?,?,?,?)"
                " ON CONFLICT(id) DO UPDATE SET beat_at=excluded.beat_at, state=excluded.state,"
                " message=excluded.message, device=excluded.device, pid=excluded.pid",
                (worker, os.getpid(), now, now, state, message, device))

    def worker_gone(self, worker: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE workers SET state='stopped', beat_at=? WHERE id=?", (time.time(), worker))

    def workers_alive(self, within: float = 15.0) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM workers WHERE beat_at > ? AND state != 'stopped'",
                                 (time.time() - within,)).fetchall()
        return [dict(r) for r in rows]


def pid_alive(pid: int | None) -> bool:
    """A process with this pid runs on this machine (the kiosk's processes all run on one)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_backups(root: str | os.PathLike, dest_dir: str | os.PathLike | None = None) -> list[Path]:
    """Backups of the archive in ``root``, oldest first."""
    d = Path(dest_dir) if dest_dir else Path(root) / BACKUP_DIR
    return sorted(d.glob("kiosk-*.sqlite3"))


def restore(root: str | os.PathLike, backup: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Put a backup in place of the archive's database (stop the kiosk's processes first).

    The backup must pass ``PRAGMA integrity_check`` and belong to this archive (its identity file), unless
    ``force``. The current database, if any, is kept beside it as ``kiosk.sqlite3.replaced-STAMP``. Ids given
    out after the backup was made are never given out again: the id counters move past the newest job id
    found among the piece files, so an old QR code cannot come to show another piece.
    """
    root = Path(root)
    db = root / "kiosk.sqlite3"
    if backup is None:
        found = list_backups(root)
        if not found:
            raise StoreError(f"no backups in {root / BACKUP_DIR}; name a backup file to restore from")
        backup = found[-1]
    backup = Path(backup)
    if not backup.is_file():
        raise StoreError(f"{backup}: backup file not found")
    words = integrity_words(backup)
    if words != ["ok"]:
        raise StoreDamagedError(f"{backup}: this backup fails PRAGMA integrity_check: {'; '.join(words[:5])}; "
                                f"choose an older one (python -m kiosk restore --list)")
    src = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    try:
        row = src.execute("SELECT value FROM settings WHERE key='archive_id'").fetchone()
    except sqlite3.Error as exc:
        src.close()
        raise StoreDamagedError(f"{backup}: not a kiosk archive backup ({exc})") from exc
    backup_id = json.loads(row[0]) if row else None
    id_path = root / ARCHIVE_ID_FILE
    try:
        ours = str(json.loads(id_path.read_text(encoding="utf-8"))["archive_id"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        ours = None
    if ours and backup_id != ours and not force:
        src.close()
        raise ArchiveIdentityError(f"{backup} is a backup of archive {backup_id}, but {root} holds archive {ours}; "
                                   f"restore a backup of this archive, or add --force to replace it")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    if db.exists():
        kept = db.with_name(f"{db.name}.replaced-{stamp}")
        os.replace(db, kept)
        log.info("restore: the previous database is kept as %s", kept)
    for side in ("-wal", "-shm"):
        side_file = db.with_name(db.name + side)
        if side_file.exists():
            os.replace(side_file, db.with_name(f"{db.name}{side}.replaced-{stamp}"))
    tmp = db.with_name(f".{db.name}.restoring")
    try:
        target = sqlite3.connect(tmp, isolation_level=None)
        try:
            src.backup(target)
            job_ids = [int(m.group(1)) for f in (root / "pieces").rglob("job*.png")
                       if (m := _JOB_FILE.match(f.name))]
            seq = dict(target.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
            newest_job = max(job_ids, default=0)
            later = max(0, newest_job - seq.get("jobs", 0))  # jobs (so at most pieces) made after the backup
            target.execute("UPDATE sqlite_sequence SET seq=? WHERE name='jobs'",
                           (max(seq.get("jobs", 0), newest_job) + 100,))
            target.execute("UPDATE sqlite_sequence SET seq=? WHERE name='pieces'",
                           (seq.get("pieces", 0) + later + 100,))
        finally:
            target.close()
        os.replace(tmp, db)
    finally:
        src.close()
        tmp.unlink(missing_ok=True)
    if backup_id and (ours is None or force):
        atomic_write_bytes(id_path, (json.dumps({"archive_id": backup_id, "restored_from": str(backup),
                                                 "restored_at": time.time()}) + "\n").encode())
    log.info("restore: %s now holds %s", db, backup)
    return db
