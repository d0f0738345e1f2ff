"""Staff at a public venue: hashed passwords, sessions bound to the password and the archive, throttled
logins across addresses, CSRF on every POST whatever its content type."""
from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from exhibits.show import ShowConfig, load_show
from kiosk.web import create_app
from tests.web_helpers import csrf, make_piece

ROOT = Path(__file__).resolve().parents[1]


def _app(store, **kw):
    return create_app(ShowConfig(data_dir=store.root, **({"exhibits": ("demo",)} | kw)), store, testing=True)


def _login(c, password, addr="127.0.0.1"):
    tok = csrf(c, "/staff/login")
    return c.post("/staff/login", data={"password": password, "csrf_token": tok, "next": "/staff/"},
                  environ_base={"REMOTE_ADDR": addr})


def _set_password(config: Path, password: str) -> None:
    r = subprocess.run([sys.executable, "-m", "kiosk", "staff-password", "--config", str(config), "--stdin"],
                       input=password + "\n", text=True, capture_output=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr


def test_default_config_keeps_staff_pages_closed_even_on_loopback(store):
    c = _app(store).test_client()
    for url in ("/staff/", "/staff/pieces", "/staff/login"):
        r = c.get(url)  # the test client comes from 127.0.0.1
        assert r.status_code == 403 and "staff-password" in r.get_data(as_text=True), url


def test_staff_password_command_stores_a_salted_hash_and_the_app_uses_it(store, tmp_path):
    config = tmp_path / "kiosk.toml"
    config.write_text('[show]\nexhibits = ["demo"]\nstaff_password = "old plain"\n')
    _set_password(config, "correct horse battery")
    text = config.read_text()
    assert "correct horse battery" not in text and "old plain" not in text
    stored = tomllib.loads(text)["show"]["staff_password_hash"]
    assert stored.startswith("scrypt:")
    _set_password(config, "correct horse battery")
    assert tomllib.loads(config.read_text())["show"]["staff_password_hash"] != stored  # salted: differs each time
    cfg = load_show(config).with_overrides(data_dir=store.root)
    c = create_app(cfg, store, testing=True).test_client()
    assert _login(c, "old plain").status_code == 401
    assert _login(c, "correct horse battery").status_code == 303
    assert c.get("/staff/").status_code == 200


def test_changing_the_password_ends_every_session(store, tmp_path):
    config = tmp_path / "kiosk.toml"
    config.write_text('exhibits = ["demo"]\n')
    _set_password(config, "first password")
    app = create_app(load_show(config).with_overrides(data_dir=store.root), store, testing=True)
    a, b = app.test_client(), app.test_client()
    assert _login(a, "first password").status_code == 303 and _login(b, "first password").status_code == 303
    assert a.get("/staff/").status_code == 200
    _set_password(config, "second password")  # while the app runs
    for c in (a, b):
        r = c.get("/staff/")
        assert r.status_code == 302 and "/staff/login" in r.headers["Location"]
    assert _login(a, "first password").status_code == 401
    assert _login(a, "second password").status_code == 303 and a.get("/staff/").status_code == 200


def test_a_session_from_another_app_or_archive_opens_nothing(store, tmp_path):
    from exhibits.store import Store

    # the old design: a loopback visit wrote {"staff": true} into the cookie, which another app accepted
    local = _app(store, staff_local_only=True).test_client()
    assert local.get("/staff/").status_code == 200
    guarded = _app(store, staff_password="hunter2").test_client()
    guarded.set_cookie("session", local.get_cookie("session").value if local.get_cookie("session") else "x")
    assert guarded.get("/staff/").status_code == 302
    # same archive, a different password: a session made under one does not open the other
    one = _app(store, staff_password="one-password")
    c = one.test_client()
    assert _login(c, "one-password").status_code == 303
    cookie = c.get_cookie("session").value
    other = _app(store, staff_password="two-password").test_client()
    other.set_cookie("session", cookie)
    assert other.get("/staff/").status_code == 302
    # same password, another archive
    elsewhere = Store(tmp_path / "other-store")
    third = _app(elsewhere, staff_password="one-password").test_client()
    third.set_cookie("session", cookie)
    assert third.get("/staff/").status_code == 302


def test_staff_sessions_expire(store):
    app = _app(store, staff_password="hunter2", staff_session_hours=1 / 3600)  # one second
    c = app.test_client()
    assert _login(c, "hunter2").status_code == 303
    assert c.get("/staff/").status_code == 200
    time.sleep(1.2)
    assert c.get("/staff/").status_code == 302


def test_loopback_grants_nothing_behind_a_proxy(store):
    app = _app(store, staff_local_only=True, trusted_proxies=1)
    c = app.test_client()
    r = c.get("/staff/", headers={"X-Forwarded-For": "127.0.0.1"})
    assert r.status_code == 403
    assert c.get("/staff/").status_code == 403


def test_right_password_is_not_refused_by_the_per_address_limit(store):
    c = _app(store, staff_password="hunter2").test_client()
    for _ in range(15):  # the old limit counted every login: the 11th was 429 even when right
        assert _login(c, "hunter2").status_code == 303
    for _ in range(10):
        assert _login(c, "wrong").status_code == 401
    assert _login(c, "wrong").status_code == 429  # failures from one address are limited


def test_guessing_from_many_addresses_is_slowed_then_the_right_password_works_again(store):
    app = _app(store, staff_password="hunter2")
    throttle = app.extensions["kiosk"].login_throttle
    throttle.budget, throttle.base, throttle.cap = 20, 0.5, 1.0
    c = app.test_client()
    codes = [_login(c, f"guess{i}", addr=f"10.0.{i // 3}.{i % 3 + 1}").status_code for i in range(120)]
    assert codes[:20] == [401] * 20
    assert codes.count(429) > 50, codes  # the old app never slowed 120 guesses over 40 addresses
    r = _login(c, "hunter2", addr="192.168.7.7")
    assert r.status_code == 429 and "Retry-After" in r.headers and "paused for 1 seconds" in r.get_data(as_text=True)
    time.sleep(1.1)  # the backoff is capped: the right password gets through
    assert _login(c, "hunter2", addr="192.168.7.7").status_code == 303


def test_csrf_is_checked_whatever_the_content_type(store):
    piece = make_piece(store, "p", size=32)
    app = _app(store, staff_password="hunter2")
    c = app.test_client()
    _login(c, "hunter2")
    for kw in ({"json": {}}, {"data": "{}", "content_type": "application/json"},
               {"data": "x", "content_type": "text/plain"}, {"data": {}}):
        r = c.post(f"/staff/piece/{piece.id}/keep", **kw)
        assert r.status_code == 400, kw
    assert store.get_piece(piece.id).curation is None
    tok = csrf(c, "/staff/")
    assert c.post(f"/staff/piece/{piece.id}/keep", json={}, headers={"X-CSRFToken": tok}).status_code == 303
    assert store.get_piece(piece.id).curation == "keep"
    visitor = app.test_client()
    r = visitor.post("/api/submit", json={"prompt": "cross-site"})
    assert r.status_code == 400 and "did not come from this site" in r.get_json()["error"]
    assert not store.jobs(source="visitor")


@pytest.mark.parametrize("bad", ["[1,2]", "notanumber", "-1", "true"])
def test_trusted_proxies_config_is_checked(tmp_path, bad):
    from exhibits.config import ConfigError

    f = tmp_path / "kiosk.toml"
    f.write_text(f"trusted_proxies = {bad}\n" if bad != "notanumber" else 'trusted_proxies = ["not an address"]\n')
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_show(f)
    f.write_text('trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]\nstaff_local_only = false\n')
    assert load_show(f).trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    f.write_text("trusted_proxies = 1\nstaff_local_only = true\n")
    with pytest.raises(ConfigError, match="staff_local_only"):
        load_show(f)
