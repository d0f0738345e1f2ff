"""The display's state machine: ``showing``, ``making``, ``welcome`` and ``failsafe``.

Each state has ``enter``, ``do`` (returns the next state's name or None),
``draw`` and ``exit``. Any exception raised by a state, in any of these, sends
the machine to ``failsafe``, which shows a calm message, logs the traceback and
returns to ``showing`` after a timeout. A piece that was being prepared when the
exception happened is quarantined so it cannot break the show twice.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pygame

from kiosk.display import render
from kiosk.display.render import ACCENT, BLACK, DIM

if TYPE_CHECKING:
    from kiosk.display.app import Display

log = logging.getLogger(__name__)

TAP_MAKING_LIMIT = 900.0  # seconds a tap's live view may last before the show moves on regardless


class State:
    name = "state"

    def enter(self, d: "Display", now: float) -> None:
        pass

    def do(self, d: "Display", now: float) -> str | None:
        return None

    def draw(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        pass

    def exit(self, d: "Display", now: float) -> None:
        pass

    overlay = True  # draw the corner QR and notices on top


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
        if not self.visited or self.visited[-1] != name:
            self.visited.append(name)
        log.debug("display: %s -> %s", old.name, name)
        try:
            self.current.enter(d, now)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            self._fail(d, exc, now)

    def frame(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        if not self._entered:
            self.go(d, self._first, now)
        try:
            nxt = self.current.do(d, now)
            if nxt is not None:
                self.go(d, nxt, now)
            self.current.draw(d, screen, now)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            self._fail(d, exc, now)
            self.current.draw(d, screen, now)

    def _fail(self, d: "Display", exc: BaseException, now: float) -> None:
        self.errors += 1
        log.error("display state %s failed; showing the failsafe screen", self.current.name, exc_info=exc)
        d.on_state_error(exc)
        if self.current.name == "failsafe":
            return
        self.go(d, "failsafe", now)


# -- states -------------------------------------------------------------------------------

class Showing(State):
    """The latest finished piece, then older ones every ``hold_seconds``; crossfades between them."""

    name = "showing"
    REREQUEST = 5.0

    def __init__(self) -> None:
        self.shown_at = 0.0
        self.asked_at: float | None = None

    def enter(self, d: "Display", now: float) -> None:
        d.loader.want_frames(False)
        self.shown_at = now
        self.asked_at = None

    def do(self, d: "Display", now: float) -> str | None:
        if d.incoming is not None:
            d.take_incoming(now)
            self.shown_at = now
            self.asked_at = None
        if d.card is None:
            if d.status is not None and not d.status.has_pieces:
                return "welcome"
            return None
        if now - self.shown_at < d.cfg.hold_seconds + d.cfg.crossfade_seconds:
            return None
        progress = d.status.progress if d.status else None
        if progress is not None and progress.frame_at is not None and d.live_turn:
            d.live_turn = False
            return "making"
        if self.asked_at is None or now - self.asked_at > self.REREQUEST:
            d.loader.request_next(d.card_piece_id)
            self.asked_at = now
            d.live_turn = True
        return None

    def draw(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        if d.card is None:
            screen.fill(BLACK)
            return
        fade = d.cfg.crossfade_seconds
        t = (now - d.fade_start) / fade if fade > 0 else 1.0
        if d.prev_card is not None and t < 1.0:
            # first half: the old card (caption, QR) fades into the new picture alone;
            # second half: the new caption and QR fade in. Two captions never overlap.
            under, over, a = (d.prev_card, d.card_base, 2 * t) if t < 0.5 else (d.card_base, d.card, 2 * t - 1)
            screen.blit(under, (0, 0))
            over.set_alpha(max(0, min(255, round(255 * a))))
            screen.blit(over, (0, 0))
            over.set_alpha(None)
        else:
            d.prev_card = None
            screen.blit(d.card, (0, 0))


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
        if d.tap_job is not None:
            if d.incoming is not None and d.incoming.reason == "tap":
                return "showing"
            if now - self.entered_at > TAP_MAKING_LIMIT:
                return leave_to
            return None
        if d.incoming is not None and d.incoming.reason in ("new", "tap"):
            return "showing"
        progress = d.status.progress if d.status else None
        if now - self.entered_at > d.cfg.hold_seconds or (progress is None and now - self.entered_at > 2.0):
            return leave_to
        return None

    def draw(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        W, H = screen.get_size()
        screen.fill(BLACK)
        f = d.fonts
        frame = d.frame
        follow = d.tap_job
        if frame is not None and follow is not None and frame[0].job_id != follow:
            frame = None
        area = pygame.Rect(0, 0, W, d.frame_box[1])
        if frame is not None:
            surf = frame[1]
            screen.blit(surf, surf.get_rect(center=area.center))
        else:
            msg = "waiting for the renderer…" if follow is not None else "starting…"
            s = render.text(f, msg, round(H * 0.045), DIM)
            screen.blit(s, s.get_rect(center=area.center))
        progress = frame[0] if frame is not None else (d.status.progress if d.status and follow is None else None)
        m = max(8, round(H * 0.03))
        prompt = progress.prompt if progress is not None else (d.tap_prompt or "")
        head = "making your piece" if follow is not None else "making a new piece"
        y = area.bottom + m // 2
        title = render.text(f, head, round(H * 0.04), ACCENT)
        screen.blit(title, (m, y))
        if prompt:
            ps = render.wrap(f.get(round(H * 0.035), prompt), prompt, W - 2 * m - title.get_width() - m, 1)
            if ps:
                screen.blit(render.text(f, ps[0], round(H * 0.035)), (2 * m + title.get_width(), y + 2))
        bar = pygame.Rect(m, H - m - max(6, H // 60), W - 2 * m - round(W * 0.12), max(6, H // 60))
        step, total = (progress.step, progress.total) if progress is not None else (0, 0)
        render.progress_bar(screen, bar, step / total if total else 0.0)
        label = render.text(f, f"{step} / {total}" if total else "", round(H * 0.032), DIM)
        screen.blit(label, (bar.right + m, bar.centery - label.get_height() // 2))


class Welcome(State):
    """The empty archive: the first piece is being made; phones can already send prompts."""

    name = "welcome"
    overlay = False

    def enter(self, d: "Display", now: float) -> None:
        d.loader.want_frames(False)

    def do(self, d: "Display", now: float) -> str | None:
        if d.incoming is not None or d.card is not None:
            return "showing"
        return None

    def draw(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        W, H = screen.get_size()
        screen.fill((12, 12, 14))
        f = d.fonts
        title = render.text(f, "warming up — the first piece is being made", round(H * 0.06))
        screen.blit(title, title.get_rect(midtop=(W // 2, round(H * 0.1))))
        q = round(H * 0.42)
        qr = d.qrs.get(d.app_url, q)
        top = round(H * 0.22)
        screen.blit(qr, qr.get_rect(midtop=(W // 2, top)))
        y = top + qr.get_height() + round(H * 0.03)
        sub = render.text(f, "submit a prompt from your phone", round(H * 0.045), ACCENT)
        screen.blit(sub, sub.get_rect(midtop=(W // 2, y)))
        y += sub.get_height() + round(H * 0.015)
        url = render.text(f, d.app_url, round(H * 0.032), DIM)
        screen.blit(url, url.get_rect(midtop=(W // 2, y)))
        progress = d.status.progress if d.status else None
        if progress is not None and progress.total:
            bar = pygame.Rect(W // 4, H - round(H * 0.06), W // 2, max(6, H // 70))
            render.progress_bar(screen, bar, progress.step / progress.total)
        elif d.status is not None and not d.status.alive:
            s = render.text(f, "the renderer is starting", round(H * 0.03), DIM)
            screen.blit(s, s.get_rect(midbottom=(W // 2, H - round(H * 0.04))))


class Failsafe(State):
    """Something went wrong on screen: a calm message, then back to the show."""

    name = "failsafe"
    overlay = False

    def __init__(self, seconds: float = 5.0):
        self.seconds = seconds
        self.entered_at = 0.0

    def enter(self, d: "Display", now: float) -> None:
        self.entered_at = now
        d.loader.want_frames(False)

    def do(self, d: "Display", now: float) -> str | None:
        return "showing" if now - self.entered_at >= self.seconds else None

    def draw(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        W, H = screen.get_size()
        screen.fill((10, 10, 12))
        s = render.text(d.fonts, "one moment — the show continues shortly", round(H * 0.05), DIM)
        screen.blit(s, s.get_rect(center=(W // 2, H // 2)))
