"""Nudges between the processes of one show, so nobody waits for a poll.

The display binds a Unix datagram socket in the archive directory (``ROOT/run/display.sock``,
or a Linux abstract socket when that path is too long for ``AF_UNIX``); the worker sends a
one-word datagram after it publishes a progress frame or writes a piece. The other way round,
the display nudges the worker (``ROOT/run/worker.sock``) when a tap's job is queued. Sending
never blocks and never fails the sender: with nobody listening the datagram is dropped and the
receiver's store poll (still running, as the fallback) finds the change a moment later.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)

_MAX_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin


def address(root: str | os.PathLike, who: str = "display") -> str | bytes:
    """Where ``who`` listens for ``root``: a socket file under it, or an abstract name when that is too long."""
    root = Path(root).resolve()
    path = root / "run" / f"{who}.sock"
    if len(os.fsencode(path)) <= _MAX_PATH:
        return str(path)
    return f"\0kiosk-{who}-".encode() + hashlib.sha256(os.fsencode(root)).hexdigest()[:24].encode()


def notify(root: str | os.PathLike, what: str = "changed", who: str = "display") -> bool:
    """Tell ``who`` that something changed in the archive at ``root``. True if it was delivered."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.sendto(what.encode()[:64], address(root, who))
        return True
    except OSError:  # nobody listening, or its buffer is full: the poll will find it
        return False


class Listener:
    """The display's end: ``wait(timeout)`` returns the word received, or None on timeout."""

    def __init__(self, root: str | os.PathLike, who: str = "display"):
        self.addr = address(root, who)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if isinstance(self.addr, str):
            path = Path(self.addr)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # a stale socket from a display that died
        self.sock.bind(self.addr)

    @classmethod
    def open(cls, root: str | os.PathLike, who: str) -> "Listener | None":
        """A listener, or None (logged) where the socket cannot be bound: the caller polls instead."""
        try:
            return cls(root, who)
        except OSError as exc:
            log.warning("no wake-up socket for the %s (%s); polling instead", who, exc)
            return None

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
