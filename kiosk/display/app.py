"""The kiosk display: a pygame loop that draws only when something changed, fed by a background loader.

What is on screen is decided here, in :mod:`kiosk.display.turns` (whose piece goes up next) and in
:mod:`kiosk.display.states`:

- a piece someone asked for (a tap, a visitor's or staff prompt) holds the screen for ``cfg.dwell``
  seconds before anything may replace it; such pieces queue for their turn and are never skipped;
  playlist pieces never pre-empt them;
- a tap shows its live frames, then crossfades from exactly what is on screen to the finished piece;
- the frame loop redraws only on change (a fade, a live frame, a caption, a notice) and otherwise
  sleeps until the loader or an input event wakes it;
- burn-in protection: the picture drifts a few pixels, slowly; pieces alternate sides; the screen
  fades through black at least every ``refresh_minutes``;
- attract mode, opening hours (a dark screen at night), rotation for portrait monitors, the choice of
  monitor, a hidden cursor, and a staff overlay (F12, Ctrl+Shift+S, or a 3-second press in the
  top-left corner) with the show's status and a safe quit.
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pygame

from exhibits import service
from exhibits.show import ShowConfig, is_open, public_base_url
from exhibits.store import Store
from kiosk.display import render
from kiosk.display.loader import STORE_FAULTS, Loader, PieceReady, Progress, Status
from kiosk.display.motion import Decoder, Playback, pixel_format
from kiosk.display.staff import EXIT_STAFF_QUIT, StaffOverlay
from kiosk.display.states import Attract, Failsafe, Machine, Making, Night, Showing, Welcome
from kiosk.display.turns import Shown, Turns, to_surface  # noqa: F401  (Shown, to_surface: part of this API)

log = logging.getLogger(__name__)

TAP_DEBOUNCE_SECONDS = 0.8
IDLE_WAIT_SECONDS = 0.25  # with nothing moving the loop wakes at least this often (timers: hold, dwell, drift)
STAFF_HOLD_SECONDS = 3.0  # press this long in the top-left corner for the staff overlay
STAFF_CORNER = 0.1  # the corner's size as a fraction of the screen's short side
OPEN_CHECK_SECONDS = 10.0
STAFF_QUIT_HELP = "Ctrl+Shift+Q quits the full-screen display; Escape or Q quits a window; F12: staff overlay"


@dataclass
class DisplayStats:
    frames: int = 0  # frames drawn and shown
    ticks: int = 0  # loop iterations (most draw nothing when nothing changed)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time while the display ran
    frame_times: list[float] = field(default_factory=list)  # seconds between consecutive flips of an animation
    work_times: list[float] = field(default_factory=list)  # seconds of work per drawn frame (before waiting)
    states_visited: list[str] = field(default_factory=list)
    state_errors: int = 0
    loader_errors: int = 0
    store_faults: int = 0
    taps: int = 0
    taps_ignored: int = 0
    staff_quit: bool = False
    motion_times: list[float] = field(default_factory=list)  # seconds between consecutive frames of a moving piece
    motion_frames: int = 0  # frames of moving pieces put on screen
    motion_skipped: int = 0  # decoded frames that were overtaken by a newer due frame
    motion_failed: int = 0  # moving pieces that fell back to their still

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
        """Share of animation frames that arrived within ``slack`` times the frame period of ``fps``."""
        if not self.frame_times:
            return 0.0
        limit = slack / fps
        return sum(1 for t in self.frame_times if t <= limit) / len(self.frame_times)


class Display(Turns):
    """One display window. ``open()``, then ``tick()`` once per loop (``run()`` does this), then ``close()``."""

    def __init__(self, cfg: ShowConfig, root: Path, *, clock: Callable[[], float] | None = None,
                 failsafe_seconds: float = 5.0, poll_seconds: float = 0.25, always_redraw: bool = False,
                 open_now: Callable[[], bool] | None = None, listen: bool = True):
        self.cfg = cfg
        self.root = Path(root)
        self.clock = clock or time.monotonic
        self.poll_seconds = poll_seconds
        self.always_redraw = always_redraw  # the old loop: draw every frame (kept as the benchmark's baseline)
        self.listen = listen  # wake on the worker's datagrams (False: the store poll alone, a benchmark baseline)
        self.open_now = open_now or (lambda: is_open(cfg))
        self.fonts: render.Fonts | None = None
        self.qrs = render.QRCache()
        self.machine = Machine([Showing(), Attract(), Making(), Welcome(), Failsafe(failsafe_seconds), Night()],
                               "showing")
        self.stats = DisplayStats()
        self.window: pygame.Surface | None = None  # the real window
        self.screen: pygame.Surface | None = None  # what states draw on (the window unless rotated/drifting)
        self.loader: Loader | None = None  # type: ignore[assignment]
        self.running = False
        # what the loader told us
        self.status: Status | None = None
        self.pending: deque[PieceReady] = deque()  # pieces someone asked for, in order: each gets its turn
        self.incoming: PieceReady | None = None  # the newest playlist piece or the next in the cycle
        self.frame: tuple[Progress, pygame.Surface] | None = None
        # what is on screen
        self.shown: Shown | None = None
        self.card: pygame.Surface | None = None
        self.card_base: pygame.Surface | None = None  # the card's picture without caption and QR
        self.prev_card: pygame.Surface | None = None  # what was on screen when the crossfade began
        self.fade_start = 0.0
        self.fade_black = False  # this crossfade goes through black (burn-in refresh)
        self.last_black = 0.0
        self.asked_at: float | None = None
        self.culprit: int | None = None
        self.live_turn = True
        self.flip_side = False
        # taps
        self.tap_job: int | None = None
        self.tap_follow: int | None = None  # the tap job whose piece goes on screen next, straight from its live view
        self.tap_prompt: str | None = None
        self.live_tap_done = False  # the tap's live view just ended: its piece goes next, ahead of the queue
        self.tap_requested = False
        self.last_tap = -1e9
        self.last_interaction = 0.0
        self.press: tuple[float, tuple[int, int]] | None = None
        self.staff = StaffOverlay()
        self.exit_code = 0
        # night
        self.closed = False
        self._open_checked = -1e9
        self.night_touch = -1e9
        # drawing
        self.dirty = True
        self.app_url = ""
        self.frame_box = (1, 1)
        self.drift = (0, 0)
        self._last_flip: float | None = None
        self._corner: pygame.Surface | None = None
        self._pace = pygame.time.Clock()
        self._wake_type = 0
        self._held: list[pygame.event.Event] = []
        self._signature: tuple = ()
        # a moving piece on screen: its decoder's frames go into the card where the still is
        self.motion: Playback | None = None
        self.motion_rect: pygame.Rect | None = None
        self.motion_still: pygame.Surface | None = None
        self._motion_surf: pygame.Surface | None = None
        self._motion_last: float | None = None
        self._notice_rect: pygame.Rect | None = None  # where the notice was last drawn

    # -- lifecycle ------------------------------------------------------------
    def open(self) -> None:
        pygame.display.init()
        pygame.font.init()
        self.fonts = render.Fonts()
        cfg = self.cfg
        displays = pygame.display.get_num_displays()
        index = cfg.display_index
        if index >= displays:
            log.warning("display_index %d: only %d monitor(s) found; using the first", index, displays)
            index = 0
        if cfg.fullscreen:
            self.window = pygame.display.set_mode((0, 0), pygame.FULLSCREEN, display=index)
        else:  # a window the size of the (unturned) screen
            self.window = pygame.display.set_mode((cfg.width, cfg.height), display=index)
        if cfg.hide_cursor and cfg.fullscreen:
            pygame.mouse.set_visible(False)  # touches still arrive as FINGER*/MOUSEBUTTON* events
        pygame.display.set_caption("kiosk")
        W, H = self.window.get_size()
        if cfg.rotate in (90, 270):
            W, H = H, W
        # states draw straight onto the window; a monitor on its side gets an upright canvas turned onto it
        self.screen = self.window if cfg.rotate == 0 else pygame.Surface((W, H)).convert()
        self.frame_box = (W, round(H * 0.82)) if W >= H else (W, round(H * 0.7))
        self.app_url = public_base_url(cfg)
        self._wake_type = pygame.event.custom_type()
        self.loader = Loader(cfg, self.root, piece_box=(W, H), frame_box=self.frame_box,
                             poll_seconds=self.poll_seconds, on_message=self._wake, listen=self.listen)
        self.loader.start()
        self.running = True
        self.last_interaction = self.clock()
        self.last_black = self.clock()

    def _wake(self) -> None:
        """Called from the loader thread: wake the frame loop (SDL's event queue is thread-safe)."""
        try:
            pygame.event.post(pygame.event.Event(self._wake_type))
        except pygame.error:
            pass  # the window is closing

    def close(self) -> None:
        self.stop_motion(restore=False)
        if self.loader is not None:
            self.loader.stop()
            self.stats.loader_errors = self.loader.errors
            self.stats.store_faults = self.loader.store_faults
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

    @property
    def card_piece_id(self) -> int | None:
        return self.shown.piece_id if self.shown is not None else None

    @property
    def unit(self) -> int:
        return render.unit(self.size)

    # -- one loop ------------------------------------------------------------------
    def tick(self) -> None:
        assert self.screen is not None and self.loader is not None
        start = time.perf_counter()
        now = self.clock()
        events, self._held = self._held + pygame.event.get(), []
        for event in events:
            self.handle_event(event, now)
        self.drain(now)
        self._check_hours(now)
        self.machine.step(self, now)
        moved = self._step_motion(now)
        fps = self.machine.current.animating(self, now)
        drift = self._drift(now)
        if drift != self.drift:
            self.drift, self.dirty = drift, True
        if self.staff.shown:
            self.dirty = True  # its figures change; it is up only while staff look at it
        full = self.dirty or fps > 0 or self.always_redraw or (moved and not self._picture_alone(self.drift))
        draw = full or moved
        if full:
            self.dirty = False
            self.machine.draw(self, self.screen, now)
            if self.machine.current.overlay:
                self.draw_overlay(self.screen)
            if self.staff.shown:
                self.staff.draw(self, self.screen, now)
            self._present()
        elif moved:  # only the moving picture changed: copy and send just its rectangle
            assert self.card is not None and self.motion_rect is not None
            rect = self.motion_rect.move(self.drift)
            self.screen.blit(self.card, rect, area=self.motion_rect)
            if self._notice_rect is not None and rect.colliderect(self._notice_rect):
                self.draw_overlay(self.screen)  # the notice sits inside the picture (_picture_alone checked)
            pygame.display.update(rect)
        if draw:
            done = time.perf_counter()
            self.stats.work_times.append(done - start)
            self.stats.frames += 1
        self.stats.ticks += 1
        if draw and moved:
            end = time.perf_counter()
            if self._motion_last is not None:
                self.stats.motion_times.append(end - self._motion_last)
            self._motion_last = end
        self._wait(fps if fps > 0 else (self.cfg.fps if self.always_redraw else 0.0))
        animated = draw and (fps > 0 or self.always_redraw)
        if animated:  # frame times are measured between consecutive frames of an animation only
            end = time.perf_counter()
            if self._last_flip is not None:
                self.stats.frame_times.append(end - self._last_flip)
            self._last_flip = end
        else:
            self._last_flip = None
        self.stats.states_visited = list(self.machine.visited)
        self.stats.state_errors = self.machine.errors

    def _present(self) -> None:
        assert self.window is not None and self.screen is not None
        if self.screen is not self.window:
            self.window.blit(pygame.transform.rotate(self.screen, -self.cfg.rotate), (0, 0))
        pygame.display.flip()

    def blit_drifted(self, screen: pygame.Surface, surf: pygame.Surface) -> None:
        """A full-screen card at the burn-in drift offset, the edges it uncovers black (no extra copy per frame)."""
        dx, dy = self.drift
        screen.blit(surf, (dx, dy))
        W, H = screen.get_size()
        for strip in (pygame.Rect(0, 0, dx, H), pygame.Rect(W + dx, 0, -dx, H),
                      pygame.Rect(0, 0, W, dy), pygame.Rect(0, H + dy, W, -dy)):
            if strip.width > 0 and strip.height > 0:
                screen.fill(render.BLACK, strip)

    def _wait(self, fps: float) -> None:
        """Hold the frame budget while animating; otherwise sleep until an event, a message, a timer or the
        next frame of a moving piece."""
        if self.cfg.fps <= 0:
            return  # tests drive the loop by hand
        if fps > 0:
            self._pace.tick(min(fps, self.cfg.fps))
            return
        wait = IDLE_WAIT_SECONDS
        if self.motion is not None:
            due = self.motion.wait_seconds(self.clock())
            if due is not None:  # (none decoded yet: the decoder wakes the loop when one is)
                wait = min(wait, due)
        if wait <= 0:  # a frame is due already
            self._pace.tick()
            return
        ev = pygame.event.wait(max(1, math.ceil(1000 * wait)))  # never wake just before it is due
        if ev.type != pygame.NOEVENT:
            self._held.append(ev)
        self._pace.tick()  # keep the pacing clock's idea of the last frame current

    def _drift(self, now: float) -> tuple[int, int]:
        """A slow Lissajous wander of up to ``drift_pixels`` (about one pixel a minute), against burn-in."""
        a = self.cfg.drift_pixels
        if a <= 0:
            return (0, 0)
        period = max(60.0, 4 * 60.0 * a)
        t = 2 * math.pi * now / period
        return (round(a * math.sin(t)), round(a * math.sin(1.37 * t + 1.0)))

    def _check_hours(self, now: float) -> None:
        if now - self._open_checked < OPEN_CHECK_SECONDS:
            return
        self._open_checked = now
        closed = not self.open_now()
        if closed != self.closed:
            self.closed = closed
            log.info("display: %s (opening hours)", "closed for the night" if closed else "open")
            self.machine.go(self, "night" if closed else "showing", now)

    # -- moving pieces --------------------------------------------------------------
    def start_motion(self, path: Path, still: pygame.Surface, rect: pygame.Rect, now: float) -> None:
        """Play ``path`` over the still at ``rect`` of the card; a decoder thread does all the decoding."""
        assert self.card is not None
        self.stop_motion(restore=False)
        surf = pygame.Surface(rect.size, 0, self.card)
        fmt, kind = pixel_format(surf.get_bitsize(), surf.get_masks())
        if surf.get_pitch() != 4 * rect.width:
            fmt, kind = "rgb24", "RGB"
        self._motion_surf = surf if kind == "native" else None
        decoder = Decoder(path, rect.size, fmt, on_frame=self._wake)
        decoder.start()
        self.motion = Playback(decoder, now)
        self.motion_rect, self.motion_still = rect, still
        self._motion_last = None

    def stop_motion(self, restore: bool = True) -> None:
        """End the playback; ``restore`` puts the still back where the frames were."""
        if self.motion is None:
            return
        self.motion.stop()
        if restore and self.motion_still is not None and self.motion_rect is not None:
            for surf in (self.card, self.card_base):
                if surf is not None:
                    surf.blit(self.motion_still, self.motion_rect)
            self.dirty = True
        self.stats.motion_skipped += self.motion.skipped
        self.motion = self.motion_rect = self.motion_still = self._motion_surf = None
        self._motion_last = None

    def _picture_alone(self, drift: tuple[int, int]) -> bool:
        """The moving picture can be sent alone: an upright window, no fade or staff overlay, and the notice
        (if any) either clear of the picture or wholly inside it."""
        if not (self.state == "showing" and self.prev_card is None and not self.staff.shown
                and self.screen is self.window and self.card is not None and self.motion_rect is not None):
            return False
        rect, box = self.motion_rect.move(drift), self._notice_rect
        return box is None or not rect.colliderect(box) or rect.contains(box)

    def _step_motion(self, now: float) -> bool:
        """Put the newest due frame of the moving piece into the card; True when one went in."""
        if self.motion is None:
            return False
        if self.state not in ("showing", "attract"):  # the card is not on screen: the still waits for it
            self.stop_motion()
            return False
        frame = self.motion.due(now)
        if self.motion.failed is not None:
            self.stats.motion_failed += 1
            self.stop_motion()
            return False
        if frame is None:
            return False
        if self._motion_surf is not None:
            self._motion_surf.get_buffer().write(frame.data, 0)
            surf = self._motion_surf
        else:
            surf = pygame.image.frombuffer(frame.data, frame.size, "RGB")
        for card in (self.card, self.card_base):
            if card is not None:
                card.blit(surf, self.motion_rect)
        self.stats.motion_frames += 1
        return True

    # -- input ----------------------------------------------------------------
    def handle_event(self, event: pygame.event.Event, now: float) -> None:
        if event.type == pygame.QUIT:
            self.running = False
        elif event.type == self._wake_type:
            pass  # the loader has a message; drain() takes it
        elif event.type in (pygame.WINDOWEXPOSED, pygame.VIDEOEXPOSE, pygame.WINDOWRESTORED):
            self.dirty = True
        elif event.type == pygame.KEYDOWN:
            self._key(event, now)
        elif event.type in (pygame.MOUSEBUTTONDOWN, pygame.FINGERDOWN):
            self.press = (now, self._event_pos(event))
        elif event.type in (pygame.MOUSEBUTTONUP, pygame.FINGERUP):
            pos = self._event_pos(event)
            press, self.press = self.press, None
            if self.staff.shown:
                self.staff.touch(self, pos, now)
            elif press is not None and now - press[0] >= STAFF_HOLD_SECONDS and self._in_corner(press[1]):
                self.staff.open(self)
            else:
                self.tap(now)

    def _key(self, event: pygame.event.Event, now: float) -> None:
        staff = (event.mod & pygame.KMOD_CTRL) and (event.mod & pygame.KMOD_SHIFT)
        if event.key == pygame.K_F12 or (staff and event.key == pygame.K_s):
            self.staff.close(self) if self.staff.shown else self.staff.open(self)
        elif self.staff.shown and event.key == pygame.K_ESCAPE:
            self.staff.close(self)
        elif self.staff.shown and event.key == pygame.K_q:
            self.staff.quit(self, now)
        elif event.key in (pygame.K_ESCAPE, pygame.K_q):
            if not self.cfg.fullscreen or (staff and event.key == pygame.K_q):
                log.info("display: quit key")
                self.running = False
        elif event.key in (pygame.K_SPACE, pygame.K_RETURN, pygame.K_KP_ENTER):
            self.tap(now)

    def _event_pos(self, event: pygame.event.Event) -> tuple[int, int]:
        """Where on the drawn (unrotated) picture a touch or click landed."""
        assert self.window is not None
        ww, wh = self.window.get_size()
        if event.type in (pygame.FINGERDOWN, pygame.FINGERUP):
            x, y = event.x * ww, event.y * wh
        else:
            x, y = getattr(event, "pos", (0, 0))
        r = self.cfg.rotate
        if r == 90:
            x, y = y, ww - x
        elif r == 180:
            x, y = ww - x, wh - y
        elif r == 270:
            x, y = wh - y, x
        return round(x), round(y)

    def _in_corner(self, pos: tuple[int, int]) -> bool:
        c = self.unit * STAFF_CORNER
        return pos[0] <= c and pos[1] <= c

    def tap(self, now: float) -> bool:
        """A visitor asked for a new piece. Returns False when debounced (a tap job is already pending)."""
        assert self.loader is not None
        self.last_interaction = now
        if self.closed:
            self.night_touch, self.dirty = now, True
            self.stats.taps_ignored += 1
            return False
        if self.tap_requested or self.tap_job is not None or now - self.last_tap < TAP_DEBOUNCE_SECONDS:
            self.stats.taps_ignored += 1
            return False
        self.last_tap = now
        self.tap_requested = True
        self.stats.taps += 1
        self.loader.request_tap()
        self.dirty = True
        return True

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
        if self.status is None:
            return None
        if not self.status.store_ok:
            return "the archive cannot be read — showing what is on screen"
        if self.status.alive:
            return None
        if self.status.ever_alive:
            return "renderer offline — showing the archive"
        return "warming up — new pieces soon"

    def draw_overlay(self, screen: pygame.Surface) -> None:
        W, H = screen.get_size()
        u = self.unit
        m = max(8, round(u * 0.03))
        if self.state == "making":
            if self._corner is None:
                self._corner = self._corner_qr(u)
            screen.blit(self._corner, (m - m // 3, m - m // 3))
        notice = self.notice
        self._notice_rect = None
        if notice:
            pad = m // 3
            lines = render.paragraph(self.fonts, notice, round(u * render.MIN_TEXT), W - 2 * m - 2 * pad, 2,
                                     render.DIM)
            w = max(s.get_width() for s in lines) + 2 * pad
            box = render.panel((w, sum(s.get_height() for s in lines) + 2 * pad), radius=pad)
            screen.blit(box, (W - m - w, m))
            self._notice_rect = box.get_rect(topleft=(W - m - w, m))
            render.blit_lines(screen, lines, W - m - w + pad, m + pad, 0)

    def _corner_qr(self, u: int) -> pygame.Surface:
        """The web app's QR with its label on a translucent panel (composed once)."""
        m = max(8, round(u * 0.03))
        pad = m // 3
        qr = self.qrs.get(self.app_url, round(u * 0.15))
        small = round(u * render.MIN_TEXT)
        lines = render.paragraph(self.fonts, "send your own prompt", small, max(qr.get_width(), round(u * 0.3)), 2,
                                 render.DIM)
        w = max(qr.get_width(), *(s.get_width() for s in lines)) + 2 * pad
        h = qr.get_height() + pad + sum(s.get_height() + 2 for s in lines) + 2 * pad
        surf = render.panel((w, h), radius=pad)
        surf.blit(qr, (pad, pad))
        render.blit_lines(surf, lines, pad, 2 * pad + qr.get_height(), 2)
        return surf

def run(cfg: ShowConfig, store: Store | None = None, *, max_frames: int | None = None,
        max_seconds: float | None = None, screenshot: Path | None = None,
        clock: Callable[[], float] | None = None, always_redraw: bool = False) -> DisplayStats:
    """Run the display until quit (or ``max_frames`` loops / ``max_seconds``); optionally save the last frame.

    A store that cannot be opened does not stop the display: the loader keeps trying (and says so)."""
    root = store.root if store is not None else Path(cfg.data_dir)
    if store is None:
        try:
            Store(root).close()  # create the archive before the loader opens it
        except STORE_FAULTS as exc:
            log.error("the archive at %s cannot be opened (%s: %s); the display starts anyway and keeps trying",
                      root, type(exc).__name__, exc)
    display = Display(cfg, root, clock=clock, always_redraw=always_redraw)
    display.open()
    started = time.monotonic()
    cpu0 = time.process_time()
    try:
        while display.running:
            display.tick()
            service.loop_alive()  # READY=1, then systemd's watchdog: a frozen display gets restarted
            if max_frames is not None and display.stats.ticks >= max_frames:
                break
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                break
        if screenshot is not None and display.window is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            pygame.image.save(display.window, str(screenshot))
    finally:
        display.stats.seconds = time.monotonic() - started
        display.stats.cpu_seconds = time.process_time() - cpu0
        display.close()
    display.stats.staff_quit = display.exit_code == EXIT_STAFF_QUIT
    return display.stats
