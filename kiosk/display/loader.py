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
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exhibits.show import ShowConfig, piece_url, public_base_url
from exhibits.store import Job, Piece, Store

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
RECENT_LIMIT = 30


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
    reason: str  # "new" (it just landed), "cycle", "tap"


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
                 poll_seconds: float = POLL_SECONDS, queue_size: int = 8, seed: int | None = None):
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
        self.errors = 0
        self.base_url = ""

    # -- the display's side -------------------------------------------------
    def request_tap(self) -> None:
        self._commands.put(("tap", None))

    def request_next(self, after_id: int | None) -> None:
        self._commands.put(("next", after_id))

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
        try:
            self._store = Store(self.root)
            self.base_url = public_base_url(self.cfg)
        except Exception:  # noqa: BLE001 - the display keeps its last picture; say why in the log
            log.exception("the display cannot open the store at %s", self.root)
            self.errors += 1
            return
        next_poll = 0.0
        while not self._stop_event.is_set():
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
            except Exception as exc:  # noqa: BLE001 - one bad poll must not end the show
                self.errors += 1
                log.exception("display loader: %s failed", cmd)
                self._post(LoadFailed(None, cmd, f"{type(exc).__name__}: {exc}"), important=False)
                next_poll = time.monotonic() + self.poll_seconds
        if self._store is not None:
            self._store.close()

    def _handle(self, cmd: str, arg: Any) -> None:
        if cmd == "poll":
            self._poll()
        elif cmd == "tap":
            self._tap()
        elif cmd == "next":
            self._next(arg)
        elif cmd == "bad":
            self._bad.add(int(arg))

    def _post(self, msg: Any, *, important: bool = True) -> None:
        """Hand a message to the display; status and frames are dropped when it is behind, pieces wait."""
        while not self._stop_event.is_set():
            try:
                self.outbox.put(msg, timeout=0.2 if important else 0)
                return
            except queue.Full:
                if not important:
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
            first = self._last_new_id == 0
            self._last_new_id = latest
            if latest not in self._bad:
                self._load_piece(latest, "cycle" if first else "new")
        progress = _progress(progress_job) if progress_job else None
        self._post(Status(alive, self._ever_alive, latest > 0, progress),
                   important=False)
        if self._want_frames.is_set():
            job = store.get_job(self._follow.job_id) if self._follow else progress_job
            if job is not None and job.status == "running" and job.frame_path:
                key = (job.id, job.frame_at)
                if key != self._frame_at:
                    self._frame_at = key
                    pixels = decode_fitted(store.path(job.frame_path), self.frame_box)
                    self._post(FrameReady(_progress(job), pixels), important=False)

    def _load_piece(self, piece_id: int, reason: str) -> bool:
        store = self._store
        assert store is not None
        piece = store.get_piece(piece_id)
        if piece is None:
            return False
        try:
            pixels = decode_fitted(store.path(piece.image_path), self.piece_box)
        except Exception as exc:  # noqa: BLE001 - a broken file is skipped, never shown
            self.errors += 1
            self._bad.add(piece_id)
            log.warning("piece %d cannot be shown (%s): %s", piece_id, piece.image_path, exc)
            self._post(LoadFailed(piece_id, piece.image_path, f"{type(exc).__name__}: {exc}"))
            return False
        self._post(PieceReady(piece, pixels, piece_url(self.cfg, piece.id), reason))
        return True

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
        self._post(TapQueued(job))

    def _check_follow(self) -> None:
        if self._follow is None:
            return
        store = self._store
        assert store is not None
        job = store.get_job(self._follow.job_id)
        if job is None or job.status in ("done", "failed", "cancelled"):
            self._follow = None
            if job is not None and job.status == "done" and job.piece_id is not None:
                self._last_new_id = max(self._last_new_id, job.piece_id)
                self._load_piece(job.piece_id, "tap")
            if job is not None:
                self._post(TapFinished(job))


def _progress(job: Job) -> Progress:
    return Progress(job.id, job.step, job.total, job.prompt_text, job.exhibit, job.frame_at)
