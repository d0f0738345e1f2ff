"""Soak: display, worker and web app on the demo, each SIGKILLed at random and restarted by the demo's supervisor
(as systemd would), while visitors' prompts arrive throughout. At the end every accepted prompt has its piece, no
job is stuck, no piece file lacks its row and no row its file, and the web app never answered 500.

CI runs a short soak (about 20 s of kills). A technician runs the long one by hand, e.g. an hour:

    KIOSK_SOAK_SECONDS=3600 scripts/test.sh tests/test_soak.py      (or: python -m pytest tests/test_soak.py)
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from exhibits.store import Store
from kiosk.cli import Supervisor
from tests.phone_helpers import Phone
from tests.test_worker import wait_for

ROOT = Path(__file__).resolve().parents[1]
SOAK_SECONDS = float(os.environ.get("KIOSK_SOAK_SECONDS", "20"))
pytestmark = pytest.mark.timeout(int(SOAK_SECONDS * 2 + 180))

DEMO_SMALL = """title = "Attractors (weights-free demo)"
series = "Weights-free demo"
[canvas]
width = 128
height = 128
[generator]
name = "default"
[sigma]
min = 0.5
max = 3.0
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Visitors(threading.Thread):
    """Phones sending prompts throughout; a prompt counts as accepted only when the app answered 201."""

    def __init__(self, base: str, rng: random.Random):
        super().__init__(name="visitors", daemon=True)
        self.base, self.rng = base, rng
        self.phones = [Phone(base, timeout=5) for _ in range(4)]
        self.accepted: dict[str, str] = {}  # token -> prompt
        self.answers: Counter = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.wait(self.rng.uniform(0.1, 0.4)):
            n += 1
            text = f"soak prompt {n} {self.rng.choice(['fire', 'ice', 'a quiet lake', 'Kelp Forest'])}"
            phone = self.phones[n % len(self.phones)]
            try:
                status, body, _ = phone.submit(text)
            except OSError:  # the web app is down (killed) or restarting: the visitor tries again
                self.answers["no answer"] += 1
                continue
            self.answers[status] += 1
            if status == 201:
                self.accepted[json.loads(body)["token"]] = text


def test_soak_random_kills_lose_nothing(tmp_path):
    rng = random.Random(int(os.environ.get("KIOSK_SOAK_SEED", "9")))
    data, exdir, port = tmp_path / "data", tmp_path / "exhibits", _port()
    exdir.mkdir()
    (exdir / "demo.toml").write_text(DEMO_SMALL)
    conf = tmp_path / "kiosk.toml"
    conf.write_text(f"""[show]
prompt_rate_limit = "100000 per minute"
playlist_interval = 1.0
worker_lease = 2.0
hold_seconds = 1.0
crossfade_seconds = 0.0
fullscreen = false
width = 320
height = 180
fps = 20
public_url = "http://kiosk.test:{port}"
min_free_mb = 1
""")
    common = ["--config", str(conf), "--data", str(data), "--exhibit-dir", str(exdir)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    kw = {"env": env, "cwd": ROOT, "stdout": open(tmp_path / "out.log", "ab"), "stderr": subprocess_stdout()}
    exe = [sys.executable, "-m", "kiosk"]
    Store(data).close()  # the archive exists before the three start (as after install)
    sup = Supervisor({
        "display": ([*exe, "display", *common], kw),
        "worker": ([*exe, "worker", "--device", "cpu", *common], kw),
        "web": ([*exe, "web", "--host", "127.0.0.1", "--port", str(port), *common], kw),
    }, first=0.2, most=1.0).start()
    visitors = Visitors(f"http://127.0.0.1:{port}", rng)
    kills: Counter = Counter()
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz") == 200, 60, "the web app")
        visitors.start()
        end = time.monotonic() + SOAK_SECONDS
        while time.monotonic() < end:
            time.sleep(rng.uniform(1.0, 3.0))
            name = rng.choice(["display", "worker", "web"]) if sum(kills.values()) >= 3 else \
                ["worker", "web", "display"][sum(kills.values())]  # each one at least once
            proc = sup.procs[name]
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills[name] += 1
        time.sleep(1.0)
        visitors.stop.set()
        visitors.join(10)
        store = Store(data)

        def all_made() -> bool:
            return all((j := store.job_by_token(t)) is not None and j.status == "done" for t in visitors.accepted)

        wait_for(all_made, 60, "every accepted prompt's piece")
        # a kill in the last second may still be in its restart backoff: the supervisor must catch up
        wait_for(lambda: all(sup.restarts[n] >= kills[n] for n in kills), 30, "every killed process restarted")
    finally:
        visitors.stop.set()
        sup.stop(timeout=20)
        kw["stdout"].close()
    log = (tmp_path / "out.log").read_text(errors="replace")
    assert all(kills[n] >= 1 for n in ("display", "worker", "web")), kills
    assert all(sup.restarts[n] >= kills[n] for n in kills), (sup.restarts, kills)
    assert len(visitors.accepted) >= 10, visitors.answers
    assert visitors.answers[500] == 0, visitors.answers
    store = Store(data)
    for token, text in visitors.accepted.items():
        job = store.job_by_token(token)
        piece = store.get_piece(job.piece_id)
        assert job.status == "done" and piece is not None and piece.prompt_text == text and store.verify_piece(piece)
    stuck = store.jobs(["running"])
    assert not stuck, [(j.id, j.worker, j.lease_until) for j in stuck]
    assert not store.jobs(["failed", "held"]), [(j.id, j.status, j.error) for j in store.jobs(["failed", "held"])]
    missing, orphans = store.file_report()
    assert missing == [] and orphans == [], (missing, orphans)
    assert "Traceback" not in log, log[-6000:]
    print(f"soak {SOAK_SECONDS:.0f} s: kills {dict(kills)}, restarts {sup.restarts}, accepted "
          f"{len(visitors.accepted)}, answers {dict(visitors.answers)}, pieces {store.count_pieces()}, "
          f"load {os.getloadavg()}")


def subprocess_stdout():
    import subprocess

    return subprocess.STDOUT


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None
