"""The technician's commands: doctor on a healthy and a broken archive, backup/restore, status telling the truth,
the demo's supervisor restarting a dead child, and the sd_notify protocol spoken to a real socket."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from exhibits.store import Store, list_backups

ROOT = Path(__file__).resolve().parents[1]


def kiosk(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "kiosk", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _archive(root: Path, n: int = 3) -> Store:
    s = Store(root)
    for i in range(n):
        s.submit("demo", source="visitor", prompt_text=f"piece {i}", seed=i)
        s.add_piece(s.claim("w"), "w", Image.new("RGB", (8, 8)), {"generator": "default"})
    s.set_setting("exhibits_available", {"demo": "ok"})
    return s


def test_doctor_on_a_healthy_archive(tmp_path):
    data = tmp_path / "data"
    _archive(data).backup()
    r = kiosk("doctor", "--data", str(data))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "ok    store" in out and "PRAGMA integrity_check ok" in out
    assert "every piece row has its image" in out and "every image in the archive has its row" in out
    assert "exhibit demo: ready" in out and "1 backup(s)" in out and "QR codes point at http://" in out
    assert "FAIL" not in out


def test_doctor_on_a_broken_archive_says_what_to_fix(tmp_path):
    data = tmp_path / "data"
    s = _archive(data, 4)
    gone = s.recent_pieces(10)[1]
    s.path(gone.image_path).unlink()
    r = kiosk("doctor", "--data", str(data), "--config", str(_conf(tmp_path, public_url="http://127.0.0.1:8080")))
    assert r.returncode == 1
    assert f"1 piece row(s) whose image is gone (hidden from visitors): piece {gone.id}" in r.stdout
    assert "FAIL  QR codes point at http://127.0.0.1:8080: phones cannot reach" in r.stdout
    assert "fix: set public_url" in r.stdout
    s.close()
    (data / "kiosk.sqlite3").write_bytes(b"")
    r = kiosk("doctor", "--data", str(data))
    assert r.returncode == 1
    assert "FAIL  store:" in r.stdout and "is empty (0 bytes)" in r.stdout and "kiosk restore" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_doctor_reports_a_damaged_page_with_integrity_checks_words(tmp_path):
    data = tmp_path / "data"
    s = _archive(data, 30)
    s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    db = data / "kiosk.sqlite3"
    raw = bytearray(db.read_bytes())
    at = raw.index(b"piece 29") // 4096 * 4096
    raw[at + 100:at + 4096] = os.urandom(3996)
    db.write_bytes(bytes(raw))
    r = kiosk("doctor", "--data", str(data))
    assert r.returncode == 1 and f"FAIL  store {db} is damaged: PRAGMA integrity_check says:" in r.stdout
    assert "python -m kiosk restore" in r.stdout


def _conf(tmp_path, **show):
    p = tmp_path / "kiosk.toml"
    p.write_text("[show]\n" + "".join(f'{k} = "{v}"\n' for k, v in show.items()))
    return p


def test_backup_and_restore_commands(tmp_path):
    data = tmp_path / "data"
    s = _archive(data, 2)
    s.close()
    r = kiosk("backup", "--data", str(data), "--keep", "2")
    assert r.returncode == 0 and Path(r.stdout.strip()).is_file()
    (data / "kiosk.sqlite3").unlink()
    for f in ("kiosk.sqlite3-wal", "kiosk.sqlite3-shm"):
        (data / f).unlink(missing_ok=True)
    r = kiosk("status", "--data", str(data))
    assert r.returncode == 1 and "is missing" in r.stderr and "kiosk restore" in r.stderr
    assert "Traceback" not in r.stderr
    assert str(list_backups(data)[0]) in kiosk("restore", "--list", "--data", str(data)).stdout
    r = kiosk("restore", "--data", str(data))
    assert r.returncode == 0, r.stderr
    assert Store(data).count_pieces() == 2


def test_status_reports_the_real_web_port_and_no_finished_batch_worker(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "kiosk", "web", "--data", str(data), "--port", str(port),
                            "--host", "127.0.0.1"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if data.joinpath("kiosk.sqlite3").exists() and (Store(data).get_setting("web_listen") or {}).get("port"):
                break
            time.sleep(0.2)
        assert kiosk("render", "demo", "--count", "1", "--data", str(data)).returncode == 0
        r = kiosk("status", "--data", str(data))
        assert f"web app: listening on 127.0.0.1:{port}" in r.stdout, r.stdout
        assert "workers alive: 0" in r.stdout, r.stdout  # the batch worker has finished
    finally:
        web.send_signal(signal.SIGTERM)
        web.wait(20)
    r = kiosk("status", "--data", str(data))
    assert "web app: not running" in r.stdout


def test_demo_supervisor_restarts_a_killed_child_with_backoff():
    from kiosk.cli import Supervisor

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    sup = Supervisor({"a": (sleeper, {}), "b": (sleeper, {})}, first=0.3, most=1.0).start()
    try:
        first = sup.procs["a"].pid
        os.kill(first, signal.SIGKILL)
        end = time.monotonic() + 10
        while time.monotonic() < end and sup.procs["a"].pid == first:
            time.sleep(0.05)
        assert sup.procs["a"].pid != first and sup.procs["a"].poll() is None and sup.restarts == {"a": 1, "b": 0}
        second = sup.procs["a"].pid
        t0 = time.monotonic()
        os.kill(second, signal.SIGKILL)
        while time.monotonic() - t0 < 10 and sup.procs["a"].pid == second:
            time.sleep(0.05)
        assert time.monotonic() - t0 >= 0.55  # the second restart waited twice as long
    finally:
        sup.stop(timeout=5)
    assert all(p.poll() is not None for p in sup.procs.values())


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.5)
    yield path, sock
    sock.close()


def _collect(sock, until, timeout=60.0):
    got = []
    end = time.monotonic() + timeout
    while time.monotonic() < end and not until(got):
        try:
            got.append(sock.recv(4096).decode())
        except socket.timeout:
            pass
    return got


@pytest.mark.parametrize("command", ["worker", "web"])
def test_processes_speak_sd_notify_ready_and_watchdog(tmp_path, notify_socket, command):
    """systemd's side of Type=notify + WatchdogSec, played by a real datagram socket."""
    path, sock = notify_socket
    args = [sys.executable, "-m", "kiosk", command, "--data", str(tmp_path / "d")]
    if command == "web":
        args += ["--port", str(free_port()), "--host", "127.0.0.1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        got = _collect(sock, lambda g: any("READY=1" in m for m in g) and sum("WATCHDOG=1" in m for m in g) >= 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert any("READY=1" in m for m in got), got
    assert sum("WATCHDOG=1" in m for m in got) >= 2, got


def test_display_loop_speaks_sd_notify(tmp_path, notify_socket, monkeypatch):
    from exhibits import service
    from kiosk.display import run as run_display
    from tests.display_helpers import show_config

    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setattr(service, "_notifier", None)
    monkeypatch.setattr(service, "_ready_sent", False)
    run_display(show_config(tmp_path / "d", fps=30), max_seconds=1.5)
    got = _collect(sock, lambda g: False, timeout=0.6)
    assert got and got[0].startswith("READY=1") and sum("WATCHDOG=1" in m for m in got) >= 2, got
