"""The kiosk display: a pygame loop that only blits, fed by a background loader."""
from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pygame

from exhibits.show import ShowConfig, public_base_url
from exhibits.store import Store
from kiosk.display import render
from kiosk.display.loader import (FrameReady, LoadFailed, Loader, PieceReady, Pixels, Progress, Status,
                                  TapFinished, TapQueued)
from kiosk.display.states import Failsafe, Machine, Making, Showing, Welcome

log = logging.getLogger(__name__)

TAP_DEBOUNCE_SECONDS = 0.8
MAX_MESSAGES_PER_FRAME = 4
STAFF_QUIT_HELP = "Ctrl+Shift+Q quits the full-screen display; Escape or Q quits a window"


@dataclass
class DisplayStats:
    frames: int = 0
    seconds: float = 0.0
    frame_times: list[float] = field(default_factory=list)  # seconds between consecutive flips
    work_times: list[float] = field(default_factory=list)  # seconds of work per frame (before waiting)
    states_visited: list[str] = field(default_factory=list)
    state_errors: int = 0
    loader_errors: int = 0
    taps: int = 0
    taps_ignored: int = 0

    def percentile_ms(self, q: float, which: str = "frame") -> float:
        data = sorted(self.frame_times if which == "frame" else self.work_times)
        if not data:
            return 0.0
        return 1000.0 * data[min(len(data) - 1, int(round(q / 100.0 * (len(data) - 1))))]

    @property
    def mean_ms(self) -> float:
        return 1000.0 * sum(self.frame_times) / len(self.frame_times) if self.frame_times else 0.0

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(99)

    @property
    def worst_ms(self) -> float:
        return 1000.0 * max(self.frame_times) if self.frame_times else 0.0

    def held_fraction(self, fps: float, slack: float = 1.25) -> float:
        """Share of frames that arrived within ``slack`` times the frame period of ``fps``."""
        if not self.frame_times:
            return 0.0
        limit = slack / fps
        return sum(1 for t in self.frame_times if t <= limit) / len(self.frame_times)


class Display:
    """One display window. ``open()``, then ``tick()`` once per frame (``run()`` does this), then ``close()``."""

    def __init__(self, cfg: ShowConfig, root: Path, *, clock: Callable[[], float] | None = None,
                 failsafe_seconds: float = 5.0, poll_seconds: float = 0.25):
        self.cfg = cfg
        self.root = Path(root)
        self.clock = clock or time.monotonic
        self.poll_seconds = poll_seconds
        self.fonts = render.Fonts()
        self.qrs = render.QRCache()
        self.machine = Machine([Showing(), Making(), Welcome(), Failsafe(failsafe_seconds)], "showing")
        self.stats = DisplayStats()
        self.screen: pygame.Surface | None = None
        self.loader: Loader | None = None  # type: ignore[assignment]
        self.running = False
        # what the loader told us
        self.status: Status | None = None
        self.incoming: PieceReady | None = None
        self.incoming_surface: pygame.Surface | None = None
        self.frame: tuple[Progress, pygame.Surface] | None = None
        # what is on screen
        self.card: pygame.Surface | None = None
        self.card_base: pygame.Surface | None = None  # the card's picture without caption and QR
        self.card_piece_id: int | None = None
        self.prev_card: pygame.Surface | None = None
        self.fade_start = 0.0
        self.culprit: int | None = None
        self.live_turn = True
        # taps
        self.tap_job: int | None = None
        self.tap_prompt: str | None = None
        self.tap_requested = False
        self.last_tap = -1e9
        self.app_url = ""
        self.frame_box = (1, 1)
        self._last_flip = 0.0
        self._corner: pygame.Surface | None = None
        self._pace = pygame.time.Clock()

    # -- lifecycle ------------------------------------------------------------
    def open(self) -> None:
        pygame.display.init()
        pygame.font.init()
        if self.cfg.fullscreen:
            self.screen = pygame.display.set_mode((0, 0), pygame.FULLSCREEN)
            pygame.mouse.set_visible(False)
        else:
            self.screen = pygame.display.set_mode((self.cfg.width, self.cfg.height))
        pygame.display.set_caption("kiosk")
        W, H = self.screen.get_size()
        self.frame_box = (W, round(H * 0.82))
        self.app_url = public_base_url(self.cfg)
        self.loader = Loader(self.cfg, self.root, piece_box=(W, H), frame_box=self.frame_box,
                             poll_seconds=self.poll_seconds)
        self.loader.start()
        self.running = True
        self._last_flip = time.perf_counter()

    def close(self) -> None:
        if self.loader is not None:
            self.loader.stop()
            self.stats.loader_errors = self.loader.errors
        self.stats.states_visited = list(self.machine.visited)
        self.stats.state_errors = self.machine.errors
        pygame.display.quit()
        self.running = False

    @property
    def state(self) -> str:
        return self.machine.current.name

    @property
    def size(self) -> tuple[int, int]:
        assert self.screen is not None
        return self.screen.get_size()

    # -- one frame --------------------------------------------------------------
    def tick(self) -> None:
        assert self.screen is not None and self.loader is not None
        start = time.perf_counter()
        now = self.clock()
        for event in pygame.event.get():
            self.handle_event(event, now)
        self.drain(now)
        self.machine.frame(self, self.screen, now)
        if self.machine.current.overlay:
            self.draw_overlay(self.screen)
        pygame.display.flip()
        done = time.perf_counter()
        self.stats.work_times.append(done - start)
        if self.cfg.fps > 0:
            self._pace.tick(self.cfg.fps)
        end = time.perf_counter()
        self.stats.frame_times.append(end - self._last_flip)
        self._last_flip = end
        self.stats.frames += 1
        self.stats.states_visited = list(self.machine.visited)
        self.stats.state_errors = self.machine.errors

    # -- input ----------------------------------------------------------------
    def handle_event(self, event: pygame.event.Event, now: float) -> None:
        if event.type == pygame.QUIT:
            self.running = False
        elif event.type == pygame.KEYDOWN:
            if event.key in (pygame.K_ESCAPE, pygame.K_q):
                staff = (event.mod & pygame.KMOD_CTRL) and (event.mod & pygame.KMOD_SHIFT)
                if not self.cfg.fullscreen or (staff and event.key == pygame.K_q):
                    log.info("display: quit key")
                    self.running = False
            elif event.key in (pygame.K_SPACE, pygame.K_RETURN, pygame.K_KP_ENTER):
                self.tap(now)
        elif event.type in (pygame.MOUSEBUTTONUP, pygame.FINGERUP):
            self.tap(now)

    def tap(self, now: float) -> bool:
        """A visitor asked for a new piece. Returns False when debounced (a tap job is already pending)."""
        assert self.loader is not None
        if self.tap_requested or self.tap_job is not None or now - self.last_tap < TAP_DEBOUNCE_SECONDS:
            self.stats.taps_ignored += 1
            return False
        self.last_tap = now
        self.tap_requested = True
        self.stats.taps += 1
        self.loader.request_tap()
        return True

    # -- messages from the loader -----------------------------------------------
    def drain(self, now: float) -> None:
        assert self.loader is not None
        for _ in range(MAX_MESSAGES_PER_FRAME):
            try:
                msg = self.loader.outbox.get_nowait()
            except queue.Empty:
                return
            try:
                self.receive(msg, now)
            except Exception:  # noqa: BLE001 - a message that cannot be used is dropped, the show goes on
                log.exception("display: dropped a message from the loader (%s)", type(msg).__name__)

    def receive(self, msg: object, now: float) -> None:
        if isinstance(msg, Status):
            self.status = msg
        elif isinstance(msg, PieceReady):
            if self.incoming is not None and self.incoming.reason == "tap" and msg.reason != "tap":
                return  # a visitor's own piece goes first
            self.incoming, self.incoming_surface = msg, to_surface(msg.pixels)
        elif isinstance(msg, FrameReady):
            self.frame = (msg.progress, to_surface(msg.pixels))
        elif isinstance(msg, TapQueued):
            self.tap_requested = False
            self.tap_job = msg.job.id
            self.tap_prompt = msg.job.prompt_text
            self.frame = None if self.frame is None or self.frame[0].job_id != msg.job.id else self.frame
            self.machine.go(self, "making", now)
        elif isinstance(msg, TapFinished):
            if msg.job.id == self.tap_job:
                self.tap_job = None
                if msg.job.status != "done":
                    log.warning("tap job %d ended %s: %s", msg.job.id, msg.job.status, msg.job.error)
        elif isinstance(msg, LoadFailed):
            log.warning("display: could not load %s: %s", msg.what, msg.error)

    def take_incoming(self, now: float) -> None:
        """Turn the waiting piece into a full-screen card and start the crossfade (called by ``showing``)."""
        ready, surface = self.incoming, self.incoming_surface
        self.incoming = self.incoming_surface = None
        if ready is None or surface is None:
            return
        self.culprit = ready.piece.id
        base, card = render.build_card(self.fonts, self.qrs, self.size, surface, ready.piece, ready.url)
        self.culprit = None
        self.prev_card = self.card if self.card is not None and self.cfg.crossfade_seconds > 0 else None
        self.card, self.card_base, self.card_piece_id = card, base, ready.piece.id
        self.fade_start = now

    def on_state_error(self, exc: BaseException) -> None:
        """A state raised: never show the piece that was being prepared again."""
        if self.culprit is not None and self.loader is not None:
            log.warning("display: piece %d broke the display and is skipped from now on", self.culprit)
            self.loader.quarantine(self.culprit)
            self.culprit = None

    # -- overlay --------------------------------------------------------------------
    @property
    def notice(self) -> str | None:
        """The unobtrusive worker notice, or None when a renderer is answering."""
        if self.status is None or self.status.alive:
            return None
        if self.status.ever_alive:
            return "renderer offline — showing the archive"
        return "warming up — new pieces soon"

    def draw_overlay(self, screen: pygame.Surface) -> None:
        W, H = screen.get_size()
        m = max(8, round(H * 0.03))
        if self._corner is None:
            self._corner = self._corner_qr(H)
        screen.blit(self._corner, (m - m // 3, m - m // 3))
        notice = self.notice
        if notice:
            small = round(H * 0.028)
            s = render.text(self.fonts, notice, small, render.DIM)
            pad = m // 3
            box = render.panel((s.get_width() + 2 * pad, s.get_height() + 2 * pad), radius=pad)
            screen.blit(box, (W - m - box.get_width(), m))
            screen.blit(s, (W - m - box.get_width() + pad, m + pad))

    def _corner_qr(self, H: int) -> pygame.Surface:
        """The web app's QR with its two-line label on a translucent panel (composed once)."""
        m = max(8, round(H * 0.03))
        pad = m // 3
        qr = self.qrs.get(self.app_url, round(H * 0.14))
        small = round(H * 0.028)
        lines = [render.text(self.fonts, "make your own:", small, render.DIM),
                 render.text(self.fonts, "scan to send a prompt", small, render.DIM)]
        w = max(qr.get_width(), *(s.get_width() for s in lines)) + 2 * pad
        h = qr.get_height() + pad + sum(s.get_height() + 2 for s in lines) + 2 * pad
        surf = render.panel((w, h), radius=pad)
        surf.blit(qr, (pad, pad))
        render.blit_lines(surf, lines, pad, 2 * pad + qr.get_height(), 2)
        return surf


def to_surface(pixels: Pixels) -> pygame.Surface:
    """Loader pixels to a surface in the screen's format (``convert`` once; blits stay fast)."""
    return pygame.image.frombuffer(pixels.rgb, pixels.size, "RGB").convert()


def run(cfg: ShowConfig, store: Store | None = None, *, max_frames: int | None = None,
        max_seconds: float | None = None, screenshot: Path | None = None,
        clock: Callable[[], float] | None = None) -> DisplayStats:
    """Run the display until quit (or ``max_frames`` / ``max_seconds``); optionally save the last frame."""
    root = store.root if store is not None else Path(cfg.data_dir)
    if store is None:
        Store(root).close()  # create the archive before the loader opens it
    display = Display(cfg, root, clock=clock)
    display.open()
    started = time.monotonic()
    try:
        while display.running:
            display.tick()
            if max_frames is not None and display.stats.frames >= max_frames:
                break
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                break
        if screenshot is not None and display.screen is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            pygame.image.save(display.screen, str(screenshot))
    finally:
        display.stats.seconds = time.monotonic() - started
        display.close()
    return display.stats
