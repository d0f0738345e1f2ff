"""The kiosk display: a full-screen pygame loop that shows pieces from the store and never waits on it.

``run(cfg, store)`` opens the window and runs until quit; ``Display`` is the same
loop one ``tick()`` at a time. All store access and image decoding happen in a
background thread (:mod:`kiosk.display.loader`).
"""
import os

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

from kiosk.display.app import Display, DisplayStats, run  # noqa: E402

__all__ = ["Display", "DisplayStats", "run"]
