"""Whose turn it is on screen: the loader's messages, the queue of pieces people asked for, the dwell.

A mixin of :class:`kiosk.display.app.Display` (it uses the display's fields and draws nothing):

- a piece someone asked for (a tap, a visitor's or staff prompt) holds the screen for ``cfg.dwell``
  seconds after its crossfade; such pieces queue in arrival order and are never skipped;
- the newest playlist piece (or the next in the cycle) goes up only when nobody's piece is waiting;
- a tap's piece goes up straight from its live view (ahead of the queue, since the tapper is watching),
  crossfading from whatever is on screen at that moment.
"""
from __future__ import annotations

import logging
import queue
from dataclasses import dataclass, replace

import pygame

from kiosk.display import render
from kiosk.display.loader import FrameReady, LoadFailed, PieceReady, Pixels, Status, TapFinished, TapQueued

log = logging.getLogger(__name__)

MAX_MESSAGES_PER_FRAME = 4
MAX_PENDING_PIXELS = 6  # queued pieces beyond this keep only their id; they are decoded again at their turn


@dataclass
class Shown:
    """The piece on screen."""

    piece_id: int
    job_id: int | None
    reason: str
    since: float  # when its crossfade began

    @property
    def protected(self) -> bool:
        return self.reason in ("tap", "visitor")


class Turns:
    """The display's turn-taking (see the module docstring)."""

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
            sig = (self.notice, msg.store_ok, msg.progress.step if msg.progress else None, msg.alive)
            if sig != self._signature:
                self._signature, self.dirty = sig, True
        elif isinstance(msg, PieceReady):
            if msg.protected:
                if any(p.piece.id == msg.piece.id for p in self.pending) or self.card_piece_id == msg.piece.id:
                    return
                if len(self.pending) >= MAX_PENDING_PIXELS:
                    msg = replace(msg, pixels=Pixels(b"", (0, 0)))  # decoded again later
                self.pending.append(msg)
            elif msg.reason == "reload":
                for i, p in enumerate(self.pending):
                    if p.piece.id == msg.piece.id:
                        self.pending[i] = replace(msg, reason=p.reason)
            else:
                self.incoming = msg  # the newest wins
        elif isinstance(msg, FrameReady):
            self.frame = (msg.progress, to_surface(msg.pixels))
            if self.state == "making":
                self.dirty = True
        elif isinstance(msg, TapQueued):
            self.tap_requested = False
            self.tap_job = self.tap_follow = msg.job.id
            self.tap_prompt = msg.job.prompt_text
            self.frame = None if self.frame is None or self.frame[0].job_id != msg.job.id else self.frame
            self.dirty = True
        elif isinstance(msg, TapFinished):
            if msg.job.id == self.tap_job:
                self.tap_job = None
                if msg.job.status != "done":
                    self.tap_follow = None
                    log.warning("tap job %d ended %s: %s", msg.job.id, msg.job.status, msg.job.error)
        elif isinstance(msg, LoadFailed):
            if msg.piece_id is not None:
                for p in [p for p in self.pending if p.piece.id == msg.piece_id]:
                    self.pending.remove(p)
            log.warning("display: could not load %s: %s", msg.what, msg.error)

    # -- what goes on screen next -------------------------------------------------
    def dwell_left(self, now: float) -> float:
        """Seconds the piece on screen still holds it against anything else (0 when it may be replaced)."""
        if self.shown is None or not self.shown.protected:
            return 0.0
        return max(0.0, self.shown.since + self.cfg.crossfade_seconds + self.cfg.dwell - now)

    def tap_piece_ready(self) -> bool:
        return self.tap_follow is not None and any(p.piece.job_id == self.tap_follow for p in self.pending)

    def next_ready(self) -> PieceReady | None:
        """What would go on screen next: the followed tap's piece, else the first piece someone asked for,
        else the newest playlist piece (or the next in the cycle)."""
        if self.live_tap_done:
            for p in self.pending:
                if self.tap_follow is not None and p.piece.job_id == self.tap_follow:
                    return p
        return self.pending[0] if self.pending else self.incoming

    def tap_waiting(self) -> bool:
        """A tap's job is being made but the screen is still promised to another piece."""
        return self.tap_job is not None or self.tap_requested

    def take_next(self, now: float) -> bool:
        """Put the next piece on screen with a crossfade from whatever is there now (called by ``showing``)."""
        ready = self.next_ready()
        if ready is None:
            return False
        if ready in self.pending:
            self.pending.remove(ready)
            if not ready.pixels.rgb:  # it waited without its pixels: decode it again, keep its place
                assert self.loader is not None
                self.pending.appendleft(ready)
                self.loader.request_reload(ready.piece.id)
                return False
            if ready.piece.job_id == self.tap_follow:
                self.tap_follow = None
                self.live_tap_done = False
        else:
            self.incoming = None
        self.culprit = ready.piece.id
        surface = to_surface(ready.pixels)
        self.flip_side = not self.flip_side
        base, card = render.build_card(self.fonts, self.qrs, self.size, surface, ready.piece, ready.url,
                                       self.app_url, flip=self.flip_side)
        self.culprit = None
        fade = self.cfg.crossfade_seconds > 0
        self.prev_card = self.screen.copy() if fade and self.screen is not None and self._last_drawn else None
        refresh = self.cfg.refresh_minutes
        self.fade_black = fade and refresh > 0 and now - self.last_black >= refresh * 60
        if self.fade_black:
            self.last_black = now
        self.card, self.card_base = card, base
        self.stop_motion(restore=False)
        if ready.motion is not None:
            rect = render.card_layout(self.size, surface.get_size(), self.flip_side).image
            self.start_motion(ready.motion, surface, rect, now)
        self.shown = Shown(ready.piece.id, ready.piece.job_id, ready.reason, now)
        self.fade_start = now
        self.asked_at = None
        self.dirty = True
        return True

    @property
    def _last_drawn(self) -> bool:
        return self.stats.frames > 0


def to_surface(pixels: Pixels) -> pygame.Surface:
    """Loader pixels to a surface in the screen's format (``convert`` once; blits stay fast)."""
    return pygame.image.frombuffer(pixels.rgb, pixels.size, "RGB").convert()
