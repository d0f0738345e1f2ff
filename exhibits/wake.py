"""A nudge from the worker to the display: "a frame / a piece is ready", without waiting for a poll.

The display binds a Unix datagram socket in the archive directory (``ROOT/run/display.sock``,
or a Linux abstract socket when that path is too long for ``AF_UNIX``); the worker sends a
one-word datagram after it publishes a progress frame or writes a piece. Sending never blocks
and never fails the sender: with no display listening the datagram is dropped and the
display's store poll (still running, as the fallback) finds the change a moment later.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)

_MAX_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin


def address(root: str | os.PathLike) -> str | bytes:
    """Where the display listens for ``root``: a socket file under it, or an abstract name when too long."""
    root = Path(root).resolve()
    path = root / "run" / "display.sock"
    if len(os.fsencode(path)) <= _MAX_PATH:
        return str(path)
    return b"\0kiosk-display-" + hashlib.sha256(os.fsencode(root)).hexdigest()[:24].encode()


def notify(root: str | os.PathLike, what: str = "changed") -> bool:
    """Tell a listening display that something changed in the archive at ``root``. True if it was delivered."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.sendto(what.encode()[:64], address(root))
        return True
    except OSError:  # nobody listening, or its buffer is full: the poll will find it
        return False


class Listener:
    """The display's end: ``wait(timeout)`` returns the word received, or None on timeout."""

    def __init__(self, root: str | os.PathLike):
        self.addr = address(root)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if isinstance(self.addr, str):
            path = Path(self.addr)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # a stale socket from a display that died
        self.sock.bind(self.addr)

    def wait(self, timeout: float) -> str | None:
        self.sock.settimeout(max(0.0, timeout))
        try:
            data = self.sock.recv(64)
        except (TimeoutError, BlockingIOError):
            return None
        return data.decode(errors="replace")

    def close(self) -> None:
        self.sock.close()
        if isinstance(self.addr, str):
            try:
                Path(self.addr).unlink(missing_ok=True)
            except OSError:
                pass
