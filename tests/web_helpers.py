"""Helpers for the web app tests: a real store with real pieces, CSRF tokens, a live server."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from kiosk.web.screenshots import CHROMIUM, chromium, live_server, make_piece, sample_image  # noqa: F401

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf(client: Any, url: str = "/submit") -> str:
    """The CSRF token the page at ``url`` hands out (and the session now holds)."""
    r = client.get(url)
    assert r.status_code == 200, (url, r.status_code)
    m = CSRF_RE.search(r.get_data(as_text=True))
    assert m, f"no CSRF field on {url}"
    return m.group(1)


def post_prompt(client: Any, text: str, token: str, **extra: str) -> Any:
    return client.post("/submit", data={"prompt": text, "csrf_token": token, **extra})


def error_text(html: str) -> str:
    m = re.search(r'class="error"[^>]*>([^<]*)<', html)
    assert m, "no error message on the page"
    import html as _html

    return _html.unescape(m.group(1))


def require_chromium() -> str:
    """Path of Debian's chromium; skip without it locally, fail on CI."""
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not path:
        msg = f"chromium not found at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def read(path: Path) -> bytes:
    return Path(path).read_bytes()


def api_submit(client: Any, payload: Any, **kw: Any) -> Any:
    """POST JSON to /api/submit the way a script on the page does: the CSRF token in X-CSRFToken."""
    r = client.get("/api/session")
    tok = r.get_json()["csrf_token"] if r.status_code == 200 else ""
    headers = {"X-CSRFToken": tok, **kw.pop("headers", {})}
    return client.post("/api/submit", json=payload, headers=headers, **kw)


def wait_export(client: Any, url: str, timeout: float = 60.0) -> Any:
    """GET an export until it is no longer "being prepared" (202); returns the final response."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        r = client.get(url)
        if r.status_code != 202 or time.monotonic() > deadline:
            return r
        time.sleep(0.2)
