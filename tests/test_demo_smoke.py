"""The whole show as a user starts it: `python -m kiosk demo` with the worker and the web app as child processes."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from exhibits.store import Store

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_starts_makes_pieces_serves_phones_and_stops_cleanly(tmp_path):
    port = free_port()
    data = tmp_path / "archive"
    conf = tmp_path / "kiosk.toml"
    conf.write_text(f'[show]\nplaylist_interval = 0\nhold_seconds = 2\nhost = "127.0.0.1"\nport = {port}\n')
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    proc = subprocess.Popen([sys.executable, "-m", "kiosk", "demo", "--windowed", "--seconds", "300", "--config",
                             str(conf), "--data", str(data)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    health = None
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                if Store(data).count_pieces() >= 2:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        store = Store(data)
        pieces = store.recent_pieces(10)
        assert len(pieces) >= 2, "the demo made fewer than two pieces"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/p/{pieces[0].id}/download.png", timeout=5) as r:
            assert r.read() == store.path(pieces[0].image_path).read_bytes()
        assert health is not None and health.get("ok", True)
    finally:
        proc.send_signal(signal.SIGTERM)  # as systemd or Ctrl-C would stop it
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    for p in pieces:
        assert store.verify_piece(p)
        assert p.generator == "default" and "weights-free" in p.label
    assert "stopped" in out and not store.workers_alive()
    # the children are gone: nothing listens on the port any more
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
