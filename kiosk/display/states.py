"""The display's state machine: ``showing``, ``attract``, ``making``, ``welcome``, ``failsafe`` and ``night``.

Each state has ``enter``, ``do`` (returns the next state's name or None), ``draw``, ``exit`` and
``animating`` (the frame rate it needs right now; 0 when the picture only changes on an event, so
the loop sleeps). Any exception raised by a state sends the machine to ``failsafe``, which shows a
calm message, logs the traceback and returns to ``showing`` after a timeout. A piece that was being
prepared when the exception happened is quarantined so it cannot break the show twice.
"""
from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import pygame

from kiosk.display import render
from kiosk.display.render import ACCENT, BLACK, DIM, MIN_TEXT, TEXT

if TYPE_CHECKING:
    from kiosk.display.app import Display

log = logging.getLogger(__name__)

TAP_MAKING_LIMIT = 900.0  # seconds a tap's live view may last before the show moves on regardless
TAP_QUEUE_LIMIT = 15.0  # seconds a tap may wait for its job to be queued (the archive may be unreadable)
ATTRACT_FPS = 12.0  # the invitation's gentle pulse needs no more


class State:
    name = "state"
    overlay = True  # draw the notices (and in ``making`` the corner QR) on top

    def enter(self, d: "Display", now: float) -> None:
        pass

    def do(self, d: "Display", now: float) -> str | None:
        return None

    def draw(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        pass

    def exit(self, d: "Display", now: float) -> None:
        pass

    def animating(self, d: "Display", now: float) -> float:
        return 0.0


class Machine:
    """Runs one state at a time; exceptions fall into ``failsafe``."""

    def __init__(self, states: list[State], first: str):
        self.states = {s.name: s for s in states}
        self.current = self.states[first]
        self.visited: list[str] = []
        self.errors = 0
        self._entered = False
        self._first = first

    def go(self, d: "Display", name: str, now: float) -> None:
        if name not in self.states:
            raise KeyError(f"unknown display state {name!r}; one of {', '.join(self.states)}")
        if self._entered and name == self.current.name:
            return
        old = self.current
        if self._entered:
            try:
                old.exit(d, now)
            except Exception:  # noqa: BLE001 - a failing exit must not block the next state
                log.exception("display state %s failed while leaving", old.name)
        self.current = self.states[name]
        self._entered = True
        d.dirty = True
        if not self.visited or self.visited[-1] != name:
            self.visited.append(name)
        log.debug("display: %s -> %s", old.name, name)
        try:
            self.current.enter(d, now)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            self._fail(d, exc, now)

    def step(self, d: "Display", now: float) -> None:
        if not self._entered:
            self.go(d, self._first, now)
        try:
            for _ in range(3):  # a state just entered decides at once (e.g. takes the piece it came for)
                nxt = self.current.do(d, now)
                if nxt is None:
                    break
                self.go(d, nxt, now)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            self._fail(d, exc, now)

    def draw(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        try:
            self.current.draw(d, screen, now)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            self._fail(d, exc, now)
            self.current.draw(d, screen, now)

    def frame(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        self.step(d, now)
        self.draw(d, screen, now)

    def _fail(self, d: "Display", exc: BaseException, now: float) -> None:
        self.errors += 1
        log.error("display state %s failed; showing the failsafe screen", self.current.name, exc_info=exc)
        d.on_state_error(exc)
        if self.current.name == "failsafe":
            return
        self.go(d, "failsafe", now)


# -- states -------------------------------------------------------------------------------

class Showing(State):
    """Finished pieces: a piece someone asked for holds the screen for the dwell time, then the queue,
    then the newest playlist piece or older ones every ``hold_seconds``; crossfades between them."""

    name = "showing"
    REREQUEST = 5.0

    def enter(self, d: "Display", now: float) -> None:
        d.loader.want_frames(False)

    def do(self, d: "Display", now: float) -> str | None:
        if d.next_ready() is not None and d.dwell_left(now) <= 0 and not self._tap_first(d):
            d.take_next(now)
        if d.card is None:
            if d.status is not None and not d.status.store_ok:
                return "failsafe"
            if d.status is not None and not d.status.has_pieces:
                return "welcome"
            if d.status is not None and (d.asked_at is None or now - d.asked_at > self.REREQUEST):
                d.loader.request_next(None)  # the newest could not be shown: an older one can
                d.asked_at = now
            return None
        if d.dwell_left(now) > 0:
            return None
        if d.tap_waiting() and not d.pending:
            return "making"  # at once (its job is being queued meanwhile), or after the piece on screen had its turn
        if d.pending:
            return None  # the next one someone asked for goes on screen on the next loop
        nxt = self._attract(d, now)
        if nxt:
            return nxt
        if now - d.shown.since < d.cfg.hold_seconds + d.cfg.crossfade_seconds:
            return None
        progress = d.status.progress if d.status else None
        if progress is not None and progress.frame_at is not None and d.live_turn:
            d.live_turn = False
            return "making"
        if d.asked_at is None or now - d.asked_at > self.REREQUEST:
            d.loader.request_next(d.card_piece_id)
            d.asked_at = now
            d.live_turn = True
        return None

    @staticmethod
    def _tap_first(d: "Display") -> bool:
        """A tap's live view is due: the next playlist piece waits until the tap's piece has been shown."""
        return d.tap_waiting() and not d.pending and d.card is not None

    def _attract(self, d: "Display", now: float) -> str | None:
        a = d.cfg.attract_seconds
        return "attract" if a > 0 and now - d.last_interaction >= a and d.card is not None else None

    def animating(self, d: "Display", now: float) -> float:
        if d.prev_card is not None:
            return float(d.cfg.fps or 60)
        return 2.0 if d.tap_waiting() and d.dwell_left(now) > 0 else 0.0  # the notice counts down

    def draw(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        t = _fade_progress(d, d.card, screen, now)
        if t is None:
            return
        if d.prev_card is not None and t < 1.0:
            if d.fade_black:  # burn-in refresh: out to black, then the new card in
                screen.fill(BLACK)
                over, a = (d.prev_card, 1 - 2 * t) if t < 0.5 else (d.card, 2 * t - 1)
            else:
                # first half: what was on screen fades into the new picture alone;
                # second half: the new caption and QR fade in. Two captions never overlap.
                under, over, a = (d.prev_card, d.card_base, 2 * t) if t < 0.5 else (d.card_base, d.card, 2 * t - 1)
                screen.blit(under, (0, 0)) if under is d.prev_card else d.blit_drifted(screen, under)
            over.set_alpha(max(0, min(255, round(255 * a))))
            screen.blit(over, (0, 0)) if over is d.prev_card else d.blit_drifted(screen, over)
            over.set_alpha(None)
        else:
            d.prev_card = None
            d.blit_drifted(screen, d.card)
        if d.tap_waiting() and d.dwell_left(now) > 0:
            _tap_notice(d, screen, now)


def _fade_progress(d: "Display", card: pygame.Surface | None, screen: pygame.Surface, now: float) -> float | None:
    """How far the crossfade is (0..1, 1 when done); None (and a black screen) when there is no card yet."""
    if card is None:
        screen.fill(BLACK)
        return None
    fade = d.cfg.crossfade_seconds
    return (now - d.fade_start) / fade if fade > 0 else 1.0


def _tap_notice(d: "Display", screen: pygame.Surface, now: float) -> None:
    """A tap while someone's piece has the screen: say when the tapper's turn comes."""
    W, H = screen.get_size()
    u = d.unit
    m = max(8, round(u * 0.03))
    secs = math.ceil(d.dwell_left(now))
    s = render.text(d.fonts, f"your piece is being made — on screen in {secs} s", round(u * TEXT["prompt"]), ACCENT)
    pad = m // 2
    box = render.panel((s.get_width() + 2 * pad, s.get_height() + 2 * pad), radius=pad)
    r = box.get_rect(midbottom=(W // 2, H - m))
    screen.blit(box, r)
    screen.blit(s, (r.left + pad, r.top + pad))


class Attract(Showing):
    """Nobody has tapped for a while: the pieces go on, with an invitation to touch the screen."""

    name = "attract"
    overlay = False

    def do(self, d: "Display", now: float) -> str | None:
        if d.tap_waiting() or d.pending or now - d.last_interaction < d.cfg.attract_seconds:
            return "showing"
        return super().do(d, now)

    def _attract(self, d: "Display", now: float) -> str | None:
        return None

    def animating(self, d: "Display", now: float) -> float:
        return max(super().animating(d, now), ATTRACT_FPS)

    def draw(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        t = _fade_progress(d, d.card_base, screen, now)
        if t is None:
            return
        d.blit_drifted(screen, d.card_base)
        if d.prev_card is not None and t < 1.0:
            d.prev_card.set_alpha(max(0, min(255, round(255 * (1 - t)))))
            screen.blit(d.prev_card, (0, 0))
            d.prev_card.set_alpha(None)
        else:
            d.prev_card = None
        W, H = screen.get_size()
        u = d.unit
        m = round(u * 0.04)
        big = render.text(d.fonts, "Touch the screen", round(u * 0.085), render.WHITE, bold=True)
        sub = render.text(d.fonts, "a new piece is made for you, live", round(u * TEXT["prompt"]), render.WHITE)
        qr = d.qrs.get(d.app_url, round(u * 0.15))
        hint = render.paragraph(d.fonts, "or scan to send your own prompt", round(u * MIN_TEXT),
                                max(qr.get_width() * 2, round(u * 0.5)), 2, DIM)
        band_h = max(big.get_height() + sub.get_height() + 3 * m, qr.get_height() + 2 * m)
        band = pygame.Rect(0, H - band_h - round(u * 0.08), W, band_h)
        screen.blit(render.panel(band.size, (0, 0, 0, 190)), band.topleft)
        text_w = max(big.get_width(), sub.get_width())
        qr_w = qr.get_width() + m + max(s.get_width() for s in hint)
        ring = round(u * 0.16)  # room for the ripple left of the words
        x0 = (W - ring - text_w - 2 * m - qr_w) // 2 + ring if W >= H else m
        ring_x = x0 - m
        y = band.top + m
        screen.blit(big, (x0, y))
        screen.blit(sub, (x0, y + big.get_height() + m // 2))
        if W >= H:
            qx = x0 + text_w + 2 * m
            screen.blit(qr, (qx, band.top + m))
            render.blit_lines(screen, hint, qx + qr.get_width() + m, band.top + m, 2)
        # a slow ripple beside the words, where a finger would go
        phase = (now % 2.4) / 2.4
        radius = round(u * (0.02 + 0.05 * phase))
        colour = tuple(round(c * (1 - phase)) for c in ACCENT)
        centre = (ring_x - round(u * 0.06), band.top + big.get_height() // 2 + m)
        if W >= H and centre[0] - radius > 0:
            pygame.draw.circle(screen, colour, centre, radius, max(2, round(u * 0.006)))
            pygame.draw.circle(screen, ACCENT, centre, round(u * 0.015))


class Making(State):
    """Live view of a job: its newest progress frame, a progress bar and the prompt."""

    name = "making"

    def __init__(self) -> None:
        self.entered_at = 0.0

    def enter(self, d: "Display", now: float) -> None:
        self.entered_at = now
        d.loader.want_frames(True)

    def exit(self, d: "Display", now: float) -> None:
        d.loader.want_frames(False)

    def do(self, d: "Display", now: float) -> str | None:
        has_pieces = d.card is not None or (d.status is not None and d.status.has_pieces)
        leave_to = "showing" if has_pieces else "welcome"
        if d.tap_requested and d.tap_job is None and now - self.entered_at > TAP_QUEUE_LIMIT:
            log.warning("display: the tap's job could not be queued; back to the show")
            d.tap_requested = False
            return leave_to
        if d.tap_follow is not None or d.tap_waiting():
            if d.tap_piece_ready():
                d.live_tap_done = True
                return "showing"  # straight to the tap's piece, from this very picture
            if d.tap_job is None:  # the tap's job ended; its piece is on its way from the loader
                return None if now - self.entered_at < TAP_MAKING_LIMIT else leave_to
            if now - self.entered_at > TAP_MAKING_LIMIT:
                return leave_to
            return None
        if d.pending or (d.incoming is not None and d.incoming.reason == "new"):
            return "showing"
        progress = d.status.progress if d.status else None
        if now - self.entered_at > d.cfg.hold_seconds or (progress is None and now - self.entered_at > 2.0):
            return leave_to
        return None

    def draw(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        W, H = screen.get_size()
        u = d.unit
        screen.fill(BLACK)
        f = d.fonts
        frame = d.frame
        follow = d.tap_job or d.tap_follow
        mine = follow is not None or d.tap_requested  # a visitor's tap (its job may still be being queued)
        if frame is not None and mine and frame[0].job_id != follow:
            frame = None
        area = pygame.Rect(0, 0, W, d.frame_box[1])
        if frame is not None:
            surf = frame[1]
            screen.blit(surf, surf.get_rect(center=area.center))
        else:
            msg = "your piece is starting…" if mine else "starting…"
            s = render.text(f, msg, round(u * TEXT["title"]), DIM)
            screen.blit(s, s.get_rect(center=area.center))
        progress = frame[0] if frame is not None else (d.status.progress if d.status and not mine else None)
        m = max(8, round(u * 0.03))
        prompt = progress.prompt if progress is not None else (d.tap_prompt or "")
        head = "making your piece" if mine else "making a new piece"
        y = area.bottom + m // 2
        title = render.text(f, head, round(u * TEXT["prompt"]), ACCENT, bold=True)
        screen.blit(title, (m, y))
        if prompt:
            size = round(u * TEXT["prompt"])
            if W >= H:
                ps = render.paragraph(f, prompt, size, W - 3 * m - title.get_width(), 1)
                if ps:
                    screen.blit(ps[0], (2 * m + title.get_width(), y))
            else:
                render.blit_lines(screen, render.paragraph(f, prompt, size, W - 2 * m, 3), m,
                                  y + title.get_height() + m // 2, 2)
        bar_h = max(6, round(u * 0.017))
        bar = pygame.Rect(m, H - m - bar_h, W - 2 * m - round(W * 0.16), bar_h)
        step, total = (progress.step, progress.total) if progress is not None else (0, 0)
        render.progress_bar(screen, bar, step / total if total else 0.0)
        label = render.text(f, f"{step} / {total}" if total else "", round(u * MIN_TEXT), DIM)
        screen.blit(label, (bar.right + m, bar.centery - label.get_height() // 2))


class Welcome(State):
    """The empty archive: the first piece is being made; phones can already send prompts."""

    name = "welcome"
    overlay = False

    def enter(self, d: "Display", now: float) -> None:
        d.loader.want_frames(False)

    def do(self, d: "Display", now: float) -> str | None:
        if d.tap_waiting():
            return "making"
        if d.next_ready() is not None or d.card is not None:
            return "showing"
        if d.status is not None and not d.status.store_ok:
            return "failsafe"
        if d.status is not None and d.status.has_pieces:
            return "showing"  # pieces exist (the newest may be broken): showing finds one that can be shown
        return None

    def draw(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        W, H = screen.get_size()
        u = d.unit
        screen.fill((12, 12, 14))
        f = d.fonts
        title = render.paragraph(f, "warming up — the first piece is being made", round(u * TEXT["title"]),
                                 W - round(u * 0.1), 2)
        y = render.blit_lines(screen, title, W // 2, round(H * 0.08), 4, center=True)
        q = round(u * 0.42)
        qr = d.qrs.get(d.app_url, q)
        top = max(y + round(u * 0.03), round(H * 0.22))
        screen.blit(qr, qr.get_rect(midtop=(W // 2, top)))
        y = top + qr.get_height() + round(u * 0.03)
        sub = render.text(f, "submit a prompt from your phone", round(u * TEXT["prompt"]), ACCENT)
        screen.blit(sub, sub.get_rect(midtop=(W // 2, y)))
        y += sub.get_height() + round(u * 0.015)
        url = render.text(f, d.app_url, round(u * MIN_TEXT), DIM)
        screen.blit(url, url.get_rect(midtop=(W // 2, y)))
        progress = d.status.progress if d.status else None
        if progress is not None and progress.total:
            bar = pygame.Rect(W // 4, H - round(u * 0.06), W // 2, max(6, round(u * 0.014)))
            render.progress_bar(screen, bar, progress.step / progress.total)
        elif d.status is not None and not d.status.alive:
            s = render.text(f, "the renderer is starting", round(u * MIN_TEXT), DIM)
            screen.blit(s, s.get_rect(midbottom=(W // 2, H - round(u * 0.04))))


class Failsafe(State):
    """Something went wrong on screen, or the archive cannot be read and nothing is on screen yet:
    a calm message, then back to the show by itself."""

    name = "failsafe"
    overlay = False

    def __init__(self, seconds: float = 5.0):
        self.seconds = seconds
        self.entered_at = 0.0

    def enter(self, d: "Display", now: float) -> None:
        self.entered_at = now
        d.loader.want_frames(False)

    def do(self, d: "Display", now: float) -> str | None:
        if now - self.entered_at < self.seconds:
            return None
        if d.card is None and d.status is not None and not d.status.store_ok:
            return None  # nothing to show until the archive can be read again
        return "showing"

    def draw(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        W, H = screen.get_size()
        u = d.unit
        screen.fill((10, 10, 12))
        lines = render.paragraph(d.fonts, "one moment — the show continues shortly", round(u * TEXT["title"]),
                                 W - round(u * 0.12), 2, render.WHITE)
        y = render.blit_lines(screen, lines, W // 2, H // 2 - sum(s.get_height() for s in lines), 6, center=True)
        sub = render.paragraph(d.fonts, "meanwhile, send a prompt from your phone", round(u * MIN_TEXT),
                               W - round(u * 0.12), 2, DIM)
        y = render.blit_lines(screen, sub, W // 2, y + round(u * 0.03), 4, center=True)
        qr = d.qrs.get(d.app_url, round(u * 0.2))
        screen.blit(qr, qr.get_rect(midtop=(W // 2, y + round(u * 0.03))))


class Night(State):
    """Outside the opening hours: a dark screen (the worker pauses the playlist too). A touch says when
    the show opens again, for a few seconds."""

    name = "night"
    overlay = False
    TOUCH_SECONDS = 15.0

    def enter(self, d: "Display", now: float) -> None:
        d.loader.want_frames(False)

    def do(self, d: "Display", now: float) -> str | None:
        if self._message and now - d.night_touch >= self.TOUCH_SECONDS:
            d.dirty = True  # take the message away again
        return None  # the display leaves at opening time (Display._check_hours)

    _message = False

    def draw(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        screen.fill(BLACK)
        self._message = now - d.night_touch < self.TOUCH_SECONDS
        if self._message:
            W, H = screen.get_size()
            u = d.unit
            opens = _next_opening(d)
            s = render.text(d.fonts, f"the show is closed — it opens again at {opens}" if opens
                            else "the show is closed", round(u * TEXT["prompt"]), DIM)
            screen.blit(s, s.get_rect(center=(W // 2, H // 2)))

    def animating(self, d: "Display", now: float) -> float:
        return 0.0


def _next_opening(d: "Display") -> str:
    hours = d.cfg.opening_hours
    if not hours:
        return ""
    t = time.localtime()
    minute = t.tm_hour * 60 + t.tm_min
    nxt = min(hours, key=lambda w: (w[0] - minute) % 1440)[0]
    return f"{nxt // 60:02d}:{nxt % 60:02d}"
