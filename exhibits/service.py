"""systemd's service notifications (sd_notify) for the three processes, through the sdnotify package.

``Type=notify`` units wait for ``ready()``; with ``WatchdogSec=`` systemd restarts a process whose main loop
stops calling ``watchdog()`` (a frozen display, a hung render step). Outside systemd (no ``NOTIFY_SOCKET``)
every call is a no-op, so the same code runs in a terminal and in the tests.
"""
from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger(__name__)

_lock = threading.Lock()
_notifier = None
_last_ping = float("-inf")
_ready_sent = False


def _send(message: str) -> None:
    global _notifier
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    with _lock:
        if _notifier is None:
            import sdnotify

            _notifier = sdnotify.SystemdNotifier()
            if _notifier.socket is not None:
                # Never block a frame loop on a slow reader: a full socket queue drops the ping instead
                # (sdnotify ignores the send error), and the next one goes through.
                _notifier.socket.setblocking(False)
        _notifier.notify(message)


def watchdog_interval() -> float | None:
    """Seconds systemd allows between pings (WATCHDOG_USEC), or None when no watchdog is set for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6
    except ValueError:
        return None


def ready(status: str = "") -> None:
    """Tell systemd the process is up (``Type=notify``)."""
    global _ready_sent
    _ready_sent = True
    _send("READY=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> None:
    """One line that ``systemctl status`` shows."""
    _send(f"STATUS={text[:200]}")


def stopping() -> None:
    _send("STOPPING=1")


def watchdog() -> None:
    """Ping the watchdog from the main loop (cheap: sends at most a few times per watchdog period)."""
    global _last_ping
    now = time.monotonic()
    interval = watchdog_interval()
    if interval is None or now - _last_ping < min(1.0, interval / 4):
        return
    _last_ping = now
    _send("WATCHDOG=1")


def loop_alive() -> None:
    """For a process whose main loop running means it is ready (the display): READY=1 once, then watchdog pings."""
    global _ready_sent
    if not _ready_sent:
        _ready_sent = True
        ready()
    watchdog()
