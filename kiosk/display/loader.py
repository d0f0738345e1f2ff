"""The display's background loader: every store query and every image decode happens here.

The frame loop never touches SQLite or the disk. It sends small commands
(``tap``, ``next``, ``want_frames``) and receives ready-to-convert pixel data
(raw RGB bytes plus size) through a bounded queue. Errors while loading one
piece are reported as data (:class:`LoadFailed`) and the piece is skipped; the
loader itself keeps running whatever the store or the files do.
"""
from __future__ import annotations

import logging
import queue
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from exhibits import wake
from exhibits.show import ShowConfig, piece_url, public_base_url
from exhibits.store import Job, Piece, Store, StoreError
from kiosk.display.motion import motion_file

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
RECENT_LIMIT = 30
STORE_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)  # pauses before reopening a store that failed
PROTECTED_SOURCES = ("tap", "visitor", "staff")  # their pieces wait for their turn; they are never skipped
STORE_FAULTS = (sqlite3.Error, OSError, StoreError)
FAULT_LOG_SECONDS = 60.0


@dataclass(frozen=True)
class Pixels:
    """Decoded, already scaled RGB pixels: ``pygame.image.frombuffer(rgb, size, "RGB")``."""

    rgb: bytes
    size: tuple[int, int]


@dataclass(frozen=True)
class Status:
    alive: bool  # a worker answered within the last heartbeat window
    ever_alive: bool  # a worker has answered since the display started
    has_pieces: bool
    progress: "Progress | None"
    store_ok: bool = True  # False: the archive cannot be read right now (the display keeps what it has)
    queued: int = 0  # jobs waiting (for the staff overlay)
    pieces: int = 0


@dataclass(frozen=True)
class Progress:
    job_id: int
    step: int
    total: int
    prompt: str
    exhibit: str
    frame_at: float | None


@dataclass(frozen=True)
class PieceReady:
    piece: Piece
    pixels: Pixels
    url: str
    reason: str  # "new" (a playlist piece just landed), "cycle", "tap", "visitor" (a visitor's or staff prompt)
    motion: Path | None = None  # the moving version to play over the still (see kiosk.display.motion)

    @property
    def protected(self) -> bool:
        """A piece someone asked for: it holds the screen for the dwell time and is never skipped."""
        return self.reason in ("tap", "visitor")


@dataclass(frozen=True)
class FrameReady:
    progress: Progress
    pixels: Pixels


@dataclass(frozen=True)
class TapQueued:
    job: Job


@dataclass(frozen=True)
class TapFinished:
    job: Job  # done, failed or cancelled


@dataclass(frozen=True)
class LoadFailed:
    piece_id: int | None
    what: str
    error: str


@dataclass
class _Follow:
    job_id: int
    frame_at: float | None = None


def fit_size(src: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The largest size with ``src``'s aspect ratio that fits inside ``box`` (at least 1x1)."""
    sw, sh = src
    bw, bh = box
    if sw <= 0 or sh <= 0:
        raise ValueError(f"image size must be positive, got {sw}x{sh}")
    scale = min(bw / sw, bh / sh)
    return max(1, round(sw * scale)), max(1, round(sh * scale))


def decode_fitted(path: Path, box: tuple[int, int]) -> Pixels:
    """Decode an image file and scale it to fit ``box`` (letterboxing is the caller's job)."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", box)  # JPEG: decode at a reduced scale when that is enough
        rgb = im.convert("RGB")
    size = fit_size(rgb.size, box)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR if size[0] > rgb.size[0] else Image.Resampling.LANCZOS)
    return Pixels(rgb.tobytes(), size)


class Loader(threading.Thread):
    """Polls the store and decodes images for the display; talk to it only through its methods and ``outbox``."""

    def __init__(self, cfg: ShowConfig, root: Path, *, piece_box: tuple[int, int], frame_box: tuple[int, int],
                 poll_seconds: float = POLL_SECONDS, queue_size: int = 8, seed: int | None = None,
                 on_message: Callable[[], None] | None = None, listen: bool = True):
        """``listen=False``: no wake-up datagrams either way, the store polls alone (a benchmark's baseline)."""
        super().__init__(name="kiosk-display-loader", daemon=True)
        self.cfg = cfg
        self.root = Path(root)
        self.piece_box = piece_box
        self.frame_box = frame_box
        self.poll_seconds = poll_seconds
        self.outbox: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop_event = threading.Event()
        self._want_frames = threading.Event()
        self._rng = random.Random(seed)
        self._store: Store | None = None
        self._last_new_id = 0
        self._bad: set[int] = set()
        self._follow: _Follow | None = None
        self._frame_at: tuple[int, float | None] | None = None
        self._ever_alive = False
        self._tap_exhibits: dict[str, Any] | None = None
        self._posted: set[int] = set()  # pieces someone asked for that were handed to the display
        self._sources: dict[int, str] = {}  # job id -> source, for the pieces seen
        self.errors = 0
        self.store_faults = 0
        self.base_url = ""
        self.on_message = on_message  # called after each message (the display wakes its frame loop)
        self._listen = listen
        self._listener: wake.Listener | None = None
        self._store_ok = True
        self._fault_logged = float("-inf")
        self._shown_any = False
        self.wakes = 0

    # -- the display's side -------------------------------------------------
    def request_tap(self) -> None:
        self._commands.put(("tap", None))

    def request_next(self, after_id: int | None) -> None:
        self._commands.put(("next", after_id))

    def request_reload(self, piece_id: int) -> None:
        """Decode a queued piece again (the display let go of its pixels while it waited)."""
        self._commands.put(("reload", piece_id))

    def quarantine(self, piece_id: int) -> None:
        """Never hand this piece out again (it broke the display)."""
        self._commands.put(("bad", piece_id))

    def want_frames(self, on: bool) -> None:
        (self._want_frames.set if on else self._want_frames.clear)()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop_event.set()
        self._commands.put(("stop", None))
        if self.is_alive():
            self.join(timeout)

    # -- the thread ---------------------------------------------------------
    def run(self) -> None:
        self.base_url = public_base_url(self.cfg)
        self._start_listener()
        next_poll = 0.0
        failures = 0
        while not self._stop_event.is_set():
            if self._store is None:
                if not self._open_store():
                    failures += 1
                    pause = STORE_RETRY_SECONDS[min(failures, len(STORE_RETRY_SECONDS)) - 1]
                    if self._stop_event.wait(pause):
                        break
                    continue
            timeout = max(0.0, next_poll - time.monotonic())
            try:
                cmd, arg = self._commands.get(timeout=timeout)
            except queue.Empty:
                cmd, arg = "poll", None
            if cmd == "stop":
                break
            try:
                self._handle(cmd, arg)
                if cmd == "poll":
                    next_poll = time.monotonic() + self.poll_seconds
                    failures = 0
                    self._set_store_ok(True)
            except STORE_FAULTS as exc:  # damaged, missing, locked, full: drop the connection, try again soon
                self.errors += 1
                self.store_faults += 1
                failures += 1
                self._log_fault("display loader: the archive cannot be read (%s: %s); keeping the screen as it is, "
                                "retrying", type(exc).__name__, exc)
                self._close_store()
                self._set_store_ok(False)
                pause = STORE_RETRY_SECONDS[min(failures, len(STORE_RETRY_SECONDS)) - 1]
                if self._stop_event.wait(pause):
                    break
                next_poll = 0.0
            except Exception as exc:  # noqa: BLE001 - one bad poll must not end the show
                self.errors += 1
                log.exception("display loader: %s failed", cmd)
                self._post(LoadFailed(None, cmd, f"{type(exc).__name__}: {exc}"), important=False)
                next_poll = time.monotonic() + self.poll_seconds
        self._close_store()
        if self._listener is not None:
            self._listener.close()

    def _open_store(self) -> bool:
        try:
            self._store = Store(self.root)
            self._store.latest_piece_id()  # a file that is not a database fails here, not later
            return True
        except STORE_FAULTS as exc:
            self.errors += 1
            self.store_faults += 1
            self._log_fault("the display cannot open the archive at %s (%s: %s); retrying", self.root,
                            type(exc).__name__, exc)
            self._close_store()
            self._set_store_ok(False)
            return False

    def _log_fault(self, msg: str, *args: Any) -> None:
        """An error the first time, then at most once a minute while the fault lasts (a week of retries
        must not fill the journal)."""
        now = time.monotonic()
        if now - self._fault_logged >= FAULT_LOG_SECONDS:
            self._fault_logged = now
            log.error(msg, *args)
        else:
            log.debug(msg, *args)

    def _close_store(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except STORE_FAULTS:
                pass
            self._store = None

    def _set_store_ok(self, ok: bool) -> None:
        if ok != self._store_ok:
            self._store_ok = ok
            if ok:
                self._fault_logged = float("-inf")
                log.info("display loader: the archive can be read again")
            if not ok:
                self._post(Status(False, self._ever_alive, self._shown_any, None, store_ok=False), important=False)

    def _start_listener(self) -> None:
        """Wake on the worker's datagrams (see exhibits.wake); without them the poll alone does the work."""
        if not self._listen:
            return
        self._listener = wake.Listener.open(self.root, "display")
        if self._listener is None:
            return
        threading.Thread(target=self._listen_loop, name="kiosk-display-wake", daemon=True).start()

    def _listen_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stop_event.is_set():
            try:
                word = listener.wait(0.5)
            except OSError:
                return
            if word is not None:
                self.wakes += 1
                self._commands.put(("wake", word))

    def _handle(self, cmd: str, arg: Any) -> None:
        if cmd in ("poll", "wake"):
            self._poll()
        elif cmd == "tap":
            self._tap()
        elif cmd == "next":
            self._next(arg)
        elif cmd == "reload":
            if not self._load_piece(int(arg), "reload"):
                piece = self._store.get_piece(int(arg)) if self._store is not None else None
                self._post(LoadFailed(int(arg), piece.image_path if piece else "piece", "gone"), important=False)
        elif cmd == "bad":
            self._bad.add(int(arg))

    def _post(self, msg: Any, *, important: bool = True) -> None:
        """Hand a message to the display; status and frames are dropped when it is behind, pieces wait."""
        while not self._stop_event.is_set():
            try:
                self.outbox.put(msg, timeout=0.2 if important else 0)
            except queue.Full:
                if not important:
                    return
                continue
            if self.on_message is not None:
                self.on_message()
            return

    def _poll(self) -> None:
        store = self._store
        assert store is not None
        alive = bool(store.workers_alive())
        self._ever_alive = self._ever_alive or alive
        progress_job = store.current_progress()
        self._check_follow()
        latest = store.latest_piece_id()
        if latest > self._last_new_id:
            self._new_pieces(latest)
        progress = _progress(progress_job) if progress_job else None
        self._post(Status(alive, self._ever_alive, latest > 0, progress, store_ok=True,
                          queued=store.count_queued(), pieces=store.count_pieces()), important=False)
        if self._want_frames.is_set():
            job = store.get_job(self._follow.job_id) if self._follow else progress_job
            if job is not None and job.status == "running" and job.frame_path:
                key = (job.id, job.frame_at)
                if key != self._frame_at:
                    self._frame_at = key
                    try:
                        pixels = decode_fitted(store.path(job.frame_path), self.frame_box)
                    except (OSError, ValueError, SyntaxError) as exc:  # replaced or removed as we read it
                        log.debug("progress frame of job %d not readable: %s", job.id, exc)
                    else:
                        self._post(FrameReady(_progress(job), pixels), important=False)

    def _new_pieces(self, latest: int) -> None:
        """Pieces that landed since the last poll: every one someone asked for (oldest first, each gets its
        turn on screen), and of the playlist's only the newest. On the first poll: the newest piece that can
        be shown (a broken newest file does not leave the screen empty)."""
        store = self._store
        assert store is not None
        first = self._last_new_id == 0
        since = self._last_new_id
        self._last_new_id = latest
        if first:
            if not self._load_piece(latest, "cycle"):
                self._next(latest)
            return
        fresh = [p for p in store.recent_pieces(RECENT_LIMIT) if p.id > since and p.id not in self._bad]
        fresh.reverse()  # oldest first
        asked = [p for p in fresh if self._source(p) in PROTECTED_SOURCES and p.id not in self._posted]
        for piece in asked:
            self._load_piece(piece.id, "tap" if self._source(piece) == "tap" else "visitor", piece)
        rest = [p for p in fresh if p not in asked and p.id not in self._posted]
        for piece in reversed(rest):  # the newest playlist piece that can be shown
            if self._load_piece(piece.id, "new", piece):
                break

    def _source(self, piece: Piece) -> str:
        if piece.job_id is None:
            return "playlist"
        if piece.job_id not in self._sources:
            job = self._store.get_job(piece.job_id) if self._store is not None else None
            self._sources[piece.job_id] = job.source if job is not None else "playlist"
        return self._sources[piece.job_id]

    def _load_piece(self, piece_id: int, reason: str, piece: Piece | None = None) -> bool:
        store = self._store
        assert store is not None
        piece = piece or store.get_piece(piece_id)
        if piece is None or piece_id in self._bad:
            return False
        try:
            pixels = decode_fitted(store.path(piece.image_path), self.piece_box)
        except Exception as exc:  # noqa: BLE001 - a broken file is skipped, never shown
            self.errors += 1
            self._bad.add(piece_id)
            log.warning("piece %d cannot be shown (%s): %s", piece_id, piece.image_path, exc)
            self._post(LoadFailed(piece_id, piece.image_path, f"{type(exc).__name__}: {exc}"), important=False)
            return False
        if reason in ("tap", "visitor"):
            self._posted.add(piece_id)
            if len(self._posted) > 1000:
                self._posted = set(sorted(self._posted)[-500:])
        self._shown_any = True
        self._post(PieceReady(piece, pixels, piece_url(self.cfg, piece.id), reason, self._motion(piece)))
        return True

    def _motion(self, piece: Piece) -> Path | None:
        """The piece's moving version that ``play_motion`` wants played, if its file is there."""
        rel = motion_file(piece.extra, self.cfg.play_motion)
        if rel is None:
            return None
        try:
            path = self._store.path(rel) if self._store is not None else None
            there = path is not None and path.is_file()
        except (StoreError, OSError) as exc:  # a path outside the archive: the still alone
            log.warning("piece %d: its moving version %s cannot be used (%s)", piece.id, rel, exc)
            return None
        if not there:
            log.warning("piece %d: its moving version %s is missing; showing the still", piece.id, rel)
            return None
        return path

    def _next(self, after_id: int | None) -> None:
        """The next older piece after ``after_id`` (wrapping to the newest), skipping broken ones."""
        store = self._store
        assert store is not None
        before = after_id
        for _ in range(2):
            for piece in store.recent_pieces(RECENT_LIMIT, before_id=before):
                if piece.id not in self._bad and piece.id != after_id and self._load_piece(piece.id, "cycle"):
                    return
            before = None  # wrap around to the newest
        if after_id is not None and after_id not in self._bad:
            self._load_piece(after_id, "cycle")  # the only piece there is

    # -- taps -----------------------------------------------------------------
    def _runnable(self) -> dict[str, str]:
        """What the worker reported it can make ({} before any worker has started: assume everything)."""
        assert self._store is not None
        return self._store.get_setting("exhibits_available") or {}

    def _exhibit_for_tap(self) -> Any:
        """cfg.tap_exhibit, else the first instant exhibit, among those the worker can make right now."""
        if self._tap_exhibits is None:
            from exhibits.config import load_exhibits

            names = ([self.cfg.tap_exhibit] if self.cfg.tap_exhibit else []) + list(self.cfg.exhibits)
            self._tap_exhibits = load_exhibits(list(dict.fromkeys(names)), self.cfg.exhibit_dirs)
        available = self._runnable()
        exhibits = [e for e in self._tap_exhibits.values() if available.get(e.name, "ok") == "ok"] \
            or list(self._tap_exhibits.values())
        preferred = [e for e in exhibits if e.name == self.cfg.tap_exhibit]
        return (preferred or [e for e in exhibits if e.instant] or exhibits)[0]

    def _tap(self) -> None:
        from exhibits.playlist import spec_for

        store = self._store
        assert store is not None
        available = self._runnable()
        # one pending tap at a time, also across restarts of the display; a tap the worker cannot make
        # (its exhibit lost its weights) does not block the next one
        waiting = [j for j in store.jobs(("queued", "running"), limit=20, source="tap")
                   if available.get(j.exhibit, "ok") == "ok"]
        if waiting:
            job = waiting[0]
        else:
            exhibit = self._exhibit_for_tap()
            spec = spec_for(exhibit, self._rng)
            job = store.submit(spec.exhibit, prompts=spec.prompts, prompt_text=spec.prompt_text, seed=spec.seed,
                               params=spec.params, source="tap")
        self._follow = _Follow(job.id)
        if self._listen:
            wake.notify(self.root, "tap", who="worker")  # claim it now, not at the worker's next poll
        self._post(TapQueued(job))

    def _check_follow(self) -> None:
        if self._follow is None:
            return
        store = self._store
        assert store is not None
        job = store.get_job(self._follow.job_id)
        if job is None or job.status in ("done", "failed", "cancelled"):
            self._follow = None
            if job is not None and job.status == "done" and job.piece_id is not None \
                    and job.piece_id not in self._posted:
                self._load_piece(job.piece_id, "tap")
            if job is not None:
                self._post(TapFinished(job))


def _progress(job: Job) -> Progress:
    return Progress(job.id, job.step, job.total, job.prompt_text, job.exhibit, job.frame_at)
