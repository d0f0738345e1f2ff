"""The staff overlay: the show's status at a glance and a safe quit, hidden from visitors.

Opened with F12 or Ctrl+Shift+S, or by pressing the top-left corner of the screen for three
seconds; Escape or "close" hides it. "quit" asks again before the display exits with
``EXIT_STAFF_QUIT`` (a systemd unit can leave the display stopped on that status with
``RestartPreventExitStatus=4``).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pygame

from kiosk.display import render

if TYPE_CHECKING:
    from kiosk.display.app import Display

log = logging.getLogger(__name__)

EXIT_STAFF_QUIT = 4
CONFIRM_SECONDS = 5.0


class StaffOverlay:
    def __init__(self) -> None:
        self.shown = False
        self.confirm_until = -1.0
        self.buttons: dict[str, pygame.Rect] = {}

    def open(self, d: "Display") -> None:
        log.info("display: staff overlay opened")
        self.shown, d.dirty = True, True
        self.confirm_until = -1.0

    def close(self, d: "Display") -> None:
        self.shown, d.dirty = False, True

    def quit(self, d: "Display", now: float) -> None:
        if now <= self.confirm_until:
            log.info("display: staff quit from the overlay")
            d.stats.staff_quit = True
            d.exit_code = EXIT_STAFF_QUIT
            d.running = False
        else:
            self.confirm_until = now + CONFIRM_SECONDS
            d.dirty = True

    def touch(self, d: "Display", pos: tuple[int, int], now: float) -> None:
        for name, rect in self.buttons.items():
            if rect.collidepoint(pos):
                if name == "quit":
                    self.quit(d, now)
                else:
                    self.close(d)
                return

    def lines(self, d: "Display", now: float) -> list[str]:
        st = d.status
        hours = ", ".join(f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}" for a, b in d.cfg.opening_hours)
        lines = [
            f"state: {d.state}" + (" (closed: outside opening hours)" if d.closed else ""),
            f"on screen: piece {d.card_piece_id}" if d.card_piece_id else "on screen: no piece yet",
            f"waiting their turn: {len(d.pending)} piece(s)",
            "renderer: " + ("?" if st is None else "running" if st.alive else "offline"),
            "archive: " + ("?" if st is None else f"{st.pieces} pieces, {st.queued} jobs queued" if st.store_ok
                           else "CANNOT BE READ (see the log)"),
            f"opening hours: {hours or 'always open'}",
            f"web app: {d.app_url}",
            f"screen: {d.size[0]}x{d.size[1]}, rotate {d.cfg.rotate}, monitor {d.cfg.display_index}",
            f"errors: {d.machine.errors} on screen, {d.loader.errors if d.loader else 0} loading",
        ]
        return lines

    def draw(self, d: "Display", screen: pygame.Surface, now: float) -> None:
        W, H = screen.get_size()
        u = d.unit
        m = round(u * 0.04)
        size = round(u * render.MIN_TEXT)
        box = pygame.Rect(m, m, W - 2 * m, H - 2 * m)
        screen.blit(render.panel(box.size, (10, 10, 12, 250), radius=m // 2), box.topleft)
        y = box.top + m
        title = render.text(d.fonts, "Staff", round(u * render.TEXT["title"]), render.ACCENT, bold=True)
        screen.blit(title, (box.left + m, y))
        y += title.get_height() + m // 2
        for line in self.lines(d, now):
            s = render.text(d.fonts, line, size)
            screen.blit(s, (box.left + m, y))
            y += s.get_height() + m // 4
        confirm = now <= self.confirm_until
        labels = {"close": "close (Esc)", "quit": "really quit? tap again" if confirm else "quit the display (Q)"}
        bx = box.left + m
        by = box.bottom - m - round(u * 0.1)
        self.buttons = {}
        for name, label in labels.items():
            s = render.text(d.fonts, label, size, render.BLACK)
            r = pygame.Rect(bx, by, s.get_width() + m, round(u * 0.1))
            pygame.draw.rect(screen, (200, 60, 50) if name == "quit" and confirm else render.ACCENT if name == "quit"
                             else render.WHITE, r, border_radius=m // 3)
            screen.blit(s, s.get_rect(center=r.center))
            self.buttons[name] = r
            bx = r.right + m
