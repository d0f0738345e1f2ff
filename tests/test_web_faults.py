"""The web app when the store cannot be read or written: 503 with a clear message (never a 500), /healthz not ok
with the file and SQLite's words, and back by itself once the archive is restored. Real waitress on 127.0.0.1."""
from __future__ import annotations

import json
import random
import sqlite3
import urllib.error
import urllib.request

import pytest

from exhibits.show import ShowConfig
from exhibits.store import Store, restore
from kiosk.web import StoreGuardedApp
from kiosk.web.screenshots import live_server, make_piece
from tests.phone_helpers import Phone


def get(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def submit(base, text="a lighthouse"):
    return Phone(base).submit(text)


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "data"
    s = Store(root)
    for i in range(30):
        make_piece(s, f"sample {i}", seed=i, size=16)
    return root, s


def test_a_damaged_page_gives_503_and_a_not_ok_healthz(archive, monkeypatch):
    monkeypatch.setattr("kiosk.web.INTEGRITY_EVERY", 0.0)  # quick_check on every health check, not once a minute
    root, s = archive
    cfg = ShowConfig(data_dir=root, exhibits=("demo",))
    app = StoreGuardedApp(cfg)
    with live_server(app) as base:
        assert get(f"{base}/healthz")[0] == 200 and get(f"{base}/")[0] == 200
        s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db = root / "kiosk.sqlite3"
        data = bytearray(db.read_bytes())
        page = 4096
        at = data.index(b"sample 29") // page * page  # the page that holds the newest piece's row
        data[at:at + page] = random.Random(5).randbytes(page)
        db.write_bytes(bytes(data))
        status, body, headers = get(f"{base}/healthz")
        assert status == 503, body
        health = json.loads(body)
        assert health["ok"] is False and str(db) in health["error"]
        assert "quick_check" in health["error"] or "malformed" in health["error"]
        codes = {}
        for path in ("/", "/p/3", "/staff"):
            codes[path], text, headers = get(f"{base}{path}")
        status, text, headers = submit(base)
        codes["submit"] = status
        # Threads whose connection still caches the page may serve it; none may answer 500.
        assert set(codes.values()) <= {503, 200, 403, 404}, codes  # /staff: 403 without a password
        assert codes["submit"] == 503, codes
        assert headers.get("Retry-After") and json.loads(text)["retry_after"] == 30 and str(db) not in text  # plain
    with live_server(StoreGuardedApp(cfg)) as base:  # the web app restarted (systemd, the demo supervisor)
        status, text, headers = get(f"{base}/")
        assert status == 503 and "try again" in text.lower() and headers["Retry-After"]
        status, body, _ = get(f"{base}/healthz")
        detail = json.loads(body)["detail"]
        assert status == 503 and str(db) in detail and "kiosk restore" in detail


def test_a_missing_archive_answers_503_until_it_is_restored(archive):
    root, s = archive
    s.backup()
    s.close()
    for f in ("kiosk.sqlite3", "kiosk.sqlite3-wal", "kiosk.sqlite3-shm"):
        (root / f).unlink(missing_ok=True)
    app = StoreGuardedApp(ShowConfig(data_dir=root, exhibits=("demo",)), retry=0.0)
    with live_server(app) as base:
        status, text, _ = get(f"{base}/")
        assert status == 503 and "try again" in text.lower() and "kiosk.sqlite3" not in text
        status, body, _ = get(f"{base}/healthz")
        assert status == 503 and "kiosk.sqlite3 is missing" in json.loads(body)["detail"]
        assert submit(base)[0] == 503
        assert not (root / "kiosk.sqlite3").exists(), "the web app started a new archive in place of the old one"
        restore(root)
        assert get(f"{base}/healthz")[0] == 200
        status, text, _ = get(f"{base}/")
        assert status == 200 and "sample 29" in text


def test_a_locked_store_gives_503_not_500_and_heals(archive):
    root, s = archive
    store = Store(root, timeout=0.2)
    app = StoreGuardedApp(ShowConfig(data_dir=root, exhibits=("demo",)), store=store)
    with live_server(app) as base:
        assert submit(base)[0] in (200, 201, 202)
        blocker = sqlite3.connect(root / "kiosk.sqlite3", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            status, body, headers = submit(base, "while locked")
            assert status == 503 and json.loads(body)["status"] == 503 and headers["Retry-After"]
            status, body, _ = get(f"{base}/healthz")
            assert status == 503 and "locked" in json.loads(body)["error"]
        finally:
            blocker.execute("ROLLBACK")
        assert submit(base, "after the lock")[0] in (200, 201, 202)
        assert get(f"{base}/healthz")[0] == 200
    texts = [j.prompt_text for j in Store(root).jobs(["queued"], source="visitor")]
    assert "after the lock" in texts and "while locked" not in texts
