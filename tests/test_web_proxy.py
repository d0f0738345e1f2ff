"""Behind a real reverse proxy (Debian's nginx on 127.0.0.1), and slow clients against waitress."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from exhibits.show import ShowConfig
from kiosk.web import create_app
from kiosk.web.screenshots import Phone
from tests.web_helpers import api_submit, live_server

pytestmark = pytest.mark.timeout(120)

# The same server block as the README's example, with paths for a throw-away prefix.
NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    limit_conn_zone $binary_remote_addr zone=per_phone:1m;
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 64k;
        client_body_timeout 10s;
        client_header_timeout 10s;
        limit_conn per_phone 24;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering on;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nginx() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not path:
        if os.environ.get("CI"):
            pytest.fail("nginx not found (apt-get install -y nginx-light)")
        pytest.skip("nginx not found (apt-get install -y nginx-light)")
    return path


@contextmanager
def nginx_in_front(upstream: str, tmp: Path) -> Iterator[str]:
    exe = _nginx()
    port = _free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, upstream=upstream.rsplit(":", 1)[1]))
    proc = subprocess.Popen([exe, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {proc.stderr.read().decode()[-500:]}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_behind_nginx_each_visitor_has_their_own_budget_and_loopback_is_not_staff(store, tmp_path):
    cfg = ShowConfig(data_dir=store.root, exhibits=("demo",), trusted_proxies=1, prompt_rate_limit="2 per minute",
                     staff_password="a long staff password")
    app = create_app(cfg, store)
    with live_server(app) as upstream, nginx_in_front(upstream, tmp_path) as base:
        phones = [Phone(base, f"127.0.0.{i}") for i in range(2, 14)]
        for p in phones:  # 12 visitors behind one proxy: before, 5 accepted and 7 refused
            code, _, body = p.submit(f"a prompt from {p.source}")
            assert code == 201, body[:200]
        first = phones[0]
        assert first.submit("second")[0] == 201
        code, headers, _ = first.submit("third", **{"X-Forwarded-For": "10.9.9.9"})  # a spoofed header changes nothing
        assert code == 429 and "retry-after" in headers
        assert phones[1].submit("still has budget")[0] == 201
        assert len(store.jobs(source="visitor")) == 14
        # the proxy connects from 127.0.0.1: that grants no staff access
        staff = Phone(base, "127.0.0.1")
        code, headers, _ = staff.get("/staff/")
        assert code == 302 and "/staff/login" in headers["location"]
        assert staff.get("/staff/pieces")[0] == 302
    app.extensions["kiosk"].exports.stop()


def test_without_trusted_proxies_forwarded_headers_are_ignored(store):
    app = create_app(ShowConfig(data_dir=store.root, exhibits=("demo",), prompt_rate_limit="1 per minute"), store,
                     testing=True)
    c = app.test_client()
    assert api_submit(c, {"prompt": "one"}, headers={"X-Forwarded-For": "10.0.0.1"}).status_code == 201
    assert api_submit(c, {"prompt": "two"}, headers={"X-Forwarded-For": "10.0.0.2"}).status_code == 429


def test_trusted_proxy_addresses_pick_the_first_untrusted_hop(store):
    cfg = ShowConfig(data_dir=store.root, exhibits=("demo",), prompt_rate_limit="1 per minute",
                     trusted_proxies=("10.0.0.0/8",))
    c = create_app(cfg, store, testing=True).test_client()
    via = {"REMOTE_ADDR": "10.0.0.5"}
    for client in ("203.0.113.7", "203.0.113.8"):
        r = api_submit(c, {"prompt": client}, headers={"X-Forwarded-For": f"{client}, 10.1.2.3"}, environ_base=via)
        assert r.status_code == 201
    r = api_submit(c, {"prompt": "again"}, headers={"X-Forwarded-For": "1.1.1.1, 203.0.113.7"}, environ_base=via)
    assert r.status_code == 429  # the left-most entry is the client's own claim, and is not believed
    # a peer that is not a trusted proxy cannot claim another address
    direct = {"REMOTE_ADDR": "198.51.100.4"}
    assert api_submit(c, {"prompt": "x"}, headers={"X-Forwarded-For": "9.9.9.9"}, environ_base=direct).status_code == 201
    assert api_submit(c, {"prompt": "y"}, headers={"X-Forwarded-For": "9.9.9.8"}, environ_base=direct).status_code == 429


def test_150_slow_connections_from_one_host_do_not_stop_others(store):
    app = create_app(ShowConfig(data_dir=store.root, exhibits=("demo",)), store)
    with live_server(app) as base:
        port = int(base.rsplit(":", 1)[1])
        slow = []
        try:
            for _ in range(150):  # unfinished requests, as a slow or hostile client leaves them
                s = socket.socket()
                s.bind(("127.0.0.2", 0))
                s.settimeout(5)
                s.connect(("127.0.0.1", port))
                s.sendall(b"GET / HTTP/1.1\r\nHost: kiosk\r\nX-Slow: ")
                slow.append(s)
            time.sleep(0.5)
            for i in range(5):
                t0 = time.perf_counter()
                code, _, body = Phone(base, f"127.0.0.{3 + i}", timeout=5).get("/submit")
                assert code == 200 and time.perf_counter() - t0 < 3
        finally:
            for s in slow:
                s.close()
    app.extensions["kiosk"].exports.stop()
