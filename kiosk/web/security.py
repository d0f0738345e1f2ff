"""Staff passwords, staff sessions, login throttling, reverse proxies and per-address connection caps.

* The staff password is kept as a salted scrypt hash (``staff_password_hash`` in kiosk.toml, written by
  ``python -m kiosk staff-password``). The web app re-reads the file when it changes, so a new password
  takes effect at once and ends every session made under the old one.
* A staff session holds a fingerprint of (password hash, this archive's secret key) and an expiry; the
  fingerprint is checked on every staff request.
* Failed logins are limited per address (Flask-Limiter) and, across all addresses, by a global budget
  with exponential backoff capped at a few minutes, so a distributed guesser is slowed and the right
  password always gets through again soon.
* ``trusted_proxies``: forwarded headers are believed only from the configured proxies (a hop count
  through werkzeug's ProxyFix, or a list of proxy addresses); without it they are ignored.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import os
import threading
import time
import tomllib
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.security import check_password_hash, generate_password_hash

log = logging.getLogger(__name__)

HASH_METHOD = "scrypt"


# -- passwords ------------------------------------------------------------------------------------
def hash_password(password: str) -> str:
    """A salted scrypt hash (werkzeug's format: ``scrypt:N:r:p$salt$hex``)."""
    if not password:
        raise ValueError("the staff password must not be empty")
    return generate_password_hash(password, method=HASH_METHOD)


def password_matches(stored_hash: str, given: str) -> bool:
    try:
        return check_password_hash(stored_hash, given)
    except (ValueError, TypeError):
        log.error("staff_password_hash in the configuration is not a hash written by `kiosk staff-password`")
        return False


def write_password_hash(config: Path, hashed: str) -> None:
    """Put ``staff_password_hash`` into kiosk.toml (under [show] when the file has one), dropping any plain
    ``staff_password`` line; the rest of the file is kept as written. Atomic."""
    from exhibits.files import atomic_write_bytes

    text = config.read_text(encoding="utf-8") if config.exists() else ""
    lines = [ln for ln in text.splitlines()
             if not ln.strip().startswith(("staff_password_hash", "staff_password ", "staff_password="))]
    entry = f'staff_password_hash = "{hashed}"'
    at = next((i + 1 for i, ln in enumerate(lines) if ln.strip() == "[show]"), None)
    if at is None:
        at = next((i for i, ln in enumerate(lines) if ln.strip().startswith("[")), len(lines))
    lines.insert(at, entry)
    new = "\n".join(lines) + "\n"
    tomllib.loads(new)  # never leave a file the show cannot read
    atomic_write_bytes(config, new.encode("utf-8"))
    os.chmod(config, 0o600)


class PasswordSource:
    """The current staff password hash: from the config file when it has one (re-read when it changes)."""

    def __init__(self, config_path: Path | None, hashed: str | None, plain: str | None):
        self.config_path = config_path
        self._hashed = hashed
        self._plain = plain
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        if plain and not hashed:
            log.warning("staff_password is stored as plain text in the configuration; "
                        "run `python -m kiosk staff-password --config FILE` to replace it with a hash")

    def current(self) -> tuple[str | None, str | None]:
        """(hash, plain) of the password in force now."""
        path = self.config_path
        if path is None:
            return self._hashed, self._plain
        try:
            st = path.stat()
        except OSError:
            return self._hashed, self._plain
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                try:
                    data = tomllib.loads(path.read_text(encoding="utf-8"))
                    table = data.get("show", data)
                    self._hashed = table.get("staff_password_hash") or None
                    self._plain = table.get("staff_password") or None
                    self._stamp = stamp
                except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                    log.error("could not re-read %s for the staff password: %s", path, exc)
            return self._hashed, self._plain

    def is_set(self) -> bool:
        hashed, plain = self.current()
        return bool(hashed or plain)

    def check(self, given: str) -> bool:
        hashed, plain = self.current()
        if hashed:
            return password_matches(hashed, given)
        if plain:
            return hmac.compare_digest(given.encode(), plain.encode())
        return False

    def fingerprint(self, secret: str) -> str:
        """Changes whenever the password (or the archive's secret key) changes; empty when none is set."""
        hashed, plain = self.current()
        material = hashed or (f"plain:{plain}" if plain else "")
        if not material:
            return ""
        return hmac.new(secret.encode(), material.encode(), hashlib.sha256).hexdigest()[:32]


# -- login throttling -----------------------------------------------------------------------------
class LoginThrottle:
    """A global budget of failed staff logins across all addresses, with exponential backoff.

    Up to ``budget`` failures in ``window`` seconds are free; each failure beyond that closes the login
    for ``base * 2**k`` seconds (k = failures over budget), never longer than ``cap``. The block always
    ends, so the right password is never locked out for long; a success resets nothing for attackers but
    needs no extra wait.
    """

    def __init__(self, budget: int = 30, window: float = 300.0, base: float = 2.0, cap: float = 300.0,
                 clock: Callable[[], float] = time.monotonic):
        self.budget, self.window, self.base, self.cap = budget, window, base, cap
        self.clock = clock
        self.failures: deque[float] = deque()
        self.blocked_until = 0.0
        self.lock = threading.Lock()

    def retry_after(self) -> int:
        """Seconds until a login may be tried (0: now)."""
        with self.lock:
            left = self.blocked_until - self.clock()
        return max(0, math.ceil(left))

    def failed(self) -> None:
        with self.lock:
            now = self.clock()
            self.failures.append(now)
            while self.failures and self.failures[0] < now - self.window:
                self.failures.popleft()
            over = len(self.failures) - self.budget
            if over > 0:
                delay = min(self.cap, self.base * 2 ** min(over - 1, 20))
                self.blocked_until = max(self.blocked_until, now + delay)
                log.warning("%d failed staff logins in %.0f s from all addresses: logins paused for %.0f s",
                            len(self.failures), self.window, delay)


# -- proxies --------------------------------------------------------------------------------------
def _networks(addresses: Iterable[str]) -> list[Any]:
    return [ipaddress.ip_network(a, strict=False) for a in addresses]


def _in(addr: str, nets: list[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(addr.strip())
    except ValueError:
        return False
    return any(ip in n for n in nets)


class TrustedProxyAddresses:
    """WSGI middleware: forwarded headers count only when the peer is one of the listed proxies.

    The client is the right-most X-Forwarded-For entry that is not itself a trusted proxy.
    """

    def __init__(self, app: Any, addresses: Iterable[str]):
        self.app = app
        self.nets = _networks(addresses)

    def __call__(self, environ: dict, start_response: Any) -> Any:
        peer = environ.get("REMOTE_ADDR", "")
        environ["kiosk.peer"] = peer
        if _in(peer, self.nets):
            chain = [a.strip() for a in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
            client = peer
            for hop in reversed(chain):
                client = hop
                if not _in(hop, self.nets):
                    break
            try:
                environ["REMOTE_ADDR"] = str(ipaddress.ip_address(client))
            except ValueError:
                pass  # a garbled header: keep the proxy's address
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[-1].strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
            host = environ.get("HTTP_X_FORWARDED_HOST", "").split(",")[-1].strip()
            if host:
                environ["HTTP_HOST"] = host
        return self.app(environ, start_response)


class _RememberPeer:
    def __init__(self, app: Any):
        self.app = app

    def __call__(self, environ: dict, start_response: Any) -> Any:
        environ.setdefault("kiosk.peer", environ.get("REMOTE_ADDR", ""))
        return self.app(environ, start_response)


def wrap_proxies(wsgi_app: Any, trusted: int | tuple[str, ...] | list[str]) -> Any:
    """Apply ``trusted_proxies``: a hop count (ProxyFix) or a list of proxy addresses."""
    if not trusted:
        return wsgi_app
    if isinstance(trusted, int):
        return _RememberPeer(ProxyFix(wsgi_app, x_for=trusted, x_proto=trusted, x_host=trusted))
    return TrustedProxyAddresses(wsgi_app, trusted)


# -- per-address connection caps in waitress ------------------------------------------------------
def capped_channel_class(base: type, cap: int, exempt: Iterable[str] = ()) -> type:
    """A waitress channel class that refuses a client's connection beyond ``cap`` open ones (``exempt``:
    the trusted proxies, which carry everyone's connections)."""
    nets = _networks(a for a in exempt) if not isinstance(exempt, int) else []

    class CappedChannel(base):  # type: ignore[misc, valid-type]
        def __init__(self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
            host = addr[0] if isinstance(addr, tuple) and addr else ""
            if cap > 0 and host and not _in(host, nets):
                open_ = sum(1 for ch in list((map or {}).values())
                            if isinstance(ch, base) and isinstance(ch.addr, tuple) and ch.addr[0] == host)
                if open_ >= cap:
                    log.warning("refused a connection from %s: %d already open (max_connections_per_address)",
                                host, open_)
                    try:
                        sock.send(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\n"
                                  b"Content-Length: 0\r\n\r\n")
                    except OSError:
                        pass
                    sock.close()
                    return
            super().__init__(server, sock, addr, adj, map)

    return CappedChannel
