"""The worker under faults: a job that keeps killing workers, a full disk on a real small filesystem, a locked
database, an archive that is missing until staff restore it. The show goes on and nothing is lost."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from exhibits.show import ShowConfig
from exhibits.store import MAX_WORKER_DEATHS, Store
from tests.test_worker import wait_for

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "KIOSK_GENERATORS": "tests.plugins.stepwise", "PYTHONPATH": str(ROOT)}

POISON_TOML = """
title = "Poison test"
[canvas]
width = 16
height = 16
[generator]
name = "stepwise"
steps = 6
step_seconds = 0.02
kill_prompt = "KILL THE WORKER"
"""

WORKER = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from pathlib import Path
from exhibits.show import ShowConfig
from renderer.worker import Worker
cfg = ShowConfig(data_dir=Path(sys.argv[1]), exhibits=("poison",), exhibit_dirs=(Path(sys.argv[2]),), device="cpu")
w = Worker(cfg, lease=0.6, poll=0.05, top_up=False)
w.install_signal_handlers()
w.run(idle_exit=30)
"""


def test_a_job_that_keeps_killing_workers_is_held_and_the_others_go_on(tmp_path):
    exdir = tmp_path / "ex"
    exdir.mkdir()
    (exdir / "poison.toml").write_text(POISON_TOML)
    data = tmp_path / "data"
    store = Store(data)
    poison = store.submit("poison", source="visitor", prompts=[("KILL THE WORKER", 1.0)], prompt_text="KILL THE WORKER")
    fine = store.submit("poison", source="visitor", prompts=[("a quiet lake", 1.0)], prompt_text="a quiet lake")
    starts, procs = 0, []
    try:
        end = time.monotonic() + 90
        while time.monotonic() < end:
            if store.get_job(fine.id).status == "done" and store.get_job(poison.id).status == "held":
                break
            if not procs or procs[-1].poll() is not None:  # restart a dead worker, as systemd does
                procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(data), str(exdir)], cwd=ROOT,
                                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                starts += 1
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(20)
    held, done = store.get_job(poison.id), store.get_job(fine.id)
    assert done.status == "done" and store.get_piece(done.piece_id).prompt_text == "a quiet lake"
    assert held.status == "held" and held.deaths == MAX_WORKER_DEATHS and held.attempts == 0
    assert held.prompt_text == "KILL THE WORKER"  # still there for staff to look at
    killed = [p.returncode for p in procs[:-1]]
    assert killed.count(-signal.SIGKILL) == MAX_WORKER_DEATHS, killed
    said = held.public()["error"]
    assert "staff" in said and ":" not in said and not any(str(p.pid) in said for p in procs)


def _unshare_ok() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                        "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d"], capture_output=True)
    return r.returncode == 0


DISK_SCENARIO = r"""
import json, logging, os, sys, threading, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from exhibits.show import ShowConfig
from exhibits.store import Store, StoreUnavailableError
from renderer.worker import Worker
from tests.plugins.stepwise import fill_disk

mnt, exdir = Path(sys.argv[1]), Path(sys.argv[2])
out = {}
def wait(pred, t=30):
    end = time.monotonic() + t
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    raise SystemExit(f"timed out: {pred}")
data, filler = mnt / "data", mnt / "filler"
cfg = ShowConfig(data_dir=data, exhibits=("stepwise", "endfull"), exhibit_dirs=(exdir,), device="cpu")
store = Store(data)
w = Worker(cfg, store, lease=2.0, poll=0.02, top_up=False)
w.backoff_first, w.backoff_max = 0.05, 0.3
w.setup()
t = threading.Thread(target=w.run, kwargs={"idle_exit": 60}, daemon=True)
t.start()
from kiosk.web import create_app  # the phone web app, running on the same disk when it fills up
client = create_app(cfg, Store(data), testing=True).test_client()

# 1. the disk fills up while a visitor's piece is being made (its checkpoint write fails)
a = store.submit("stepwise", source="visitor", prompt_text="made on a full disk", max_attempts=3)
wait(lambda: store.get_job(a.id).step >= 2)
fill_disk(filler)
wait(lambda: w.paused_for_disk >= 1)
time.sleep(1.0)  # several backoff rounds while the disk stays full
j = store.get_job(a.id)
out["a_while_full"] = [j.status, j.attempts, j.deaths]
try:
    store.submit("stepwise", source="visitor", prompt_text="sent while full")
    out["submit_while_full"] = "accepted"
except StoreUnavailableError as exc:
    out["submit_while_full"] = f"refused disk_full={exc.disk_full}"
token = client.get("/api/session").get_json()["csrf_token"]
r = client.post("/api/submit", json={"prompt": "from a phone while full"}, headers={"X-CSRFToken": token})
h = client.get("/healthz")
out["web_while_full"] = [r.status_code, int(r.headers.get("Retry-After", 0)) > 0, h.status_code, h.get_json()["ok"],
                         "disk is full" in h.get_json().get("error", "")]
filler.unlink()
wait(lambda: store.get_job(a.id).status == "done", 60)
j = store.get_job(a.id)
out["a_after"] = [j.status, j.attempts, j.deaths, store.verify_piece(store.get_piece(j.piece_id))]

# 2. the disk fills up just as a finished piece is to be written: the picture waits in memory
b = store.submit("endfull", source="visitor", prompt_text="written when space returns")
wait(lambda: filler.exists() and w.paused_for_disk >= 2)
time.sleep(0.8)
j = store.get_job(b.id)
out["b_while_full"] = [j.status, j.attempts, store.count_pieces()]
filler.unlink()
wait(lambda: store.get_job(b.id).status == "done", 60)
j = store.get_job(b.id)
out["b_after"] = [j.status, j.attempts, j.deaths, store.verify_piece(store.get_piece(j.piece_id))]
out["worker_alive"] = t.is_alive()
missing, orphans = store.file_report()
out["missing"], out["orphans"] = missing, orphans
w.stop()
t.join(20)
print("RESULT " + json.dumps(out))
"""


@pytest.mark.skipif(not _unshare_ok(), reason="cannot mount a small tmpfs here (needs user namespaces or root)")
def test_a_full_disk_pauses_work_without_using_attempts_and_it_resumes_when_space_returns(tmp_path, stepwise_dir):
    """A real 24 MiB tmpfs, mounted in a private mount namespace, filled to the last byte by another file."""
    (stepwise_dir / "endfull.toml").write_text(textwrap.dedent(f"""
        title = "Fills the disk as it ends"
        [canvas]
        width = 32
        height = 32
        [generator]
        name = "stepwise"
        steps = 2
        step_seconds = 0.01
        fill_disk_file = "{tmp_path / 'mnt' / 'filler'}"
        """))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "scenario.py"
    script.write_text(DISK_SCENARIO)
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
           f'mount -t tmpfs -o size=24m tmpfs "{mnt}" && exec "{sys.executable}" "{script}" "{mnt}" "{stepwise_dir}"']
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stdout + r.stderr[-4000:]
    out = json.loads(lines[0][7:])
    assert out["a_while_full"] == ["running", 0, 0], out  # kept, paused, nothing counted, not failed
    assert out["submit_while_full"] == "refused disk_full=True", out
    assert out["web_while_full"] == [503, True, 503, False, True], out  # 503 with Retry-After, never 500
    assert out["a_after"] == ["done", 0, 0, True], out
    assert out["b_while_full"] == ["running", 0, 1], out  # the finished picture waits, its lease kept
    assert out["b_after"] == ["done", 0, 0, True], out
    assert out["worker_alive"] and out["missing"] == [] and out["orphans"] == [], out
    assert "work is paused until space is freed" in r.stderr and "work resumes" in r.stderr


def test_worker_waits_out_a_locked_database(tmp_path, stepwise_dir, monkeypatch):
    from renderer.worker import Worker

    monkeypatch.setenv("KIOSK_GENERATORS", "tests.plugins.stepwise")
    cfg = ShowConfig(data_dir=tmp_path / "d", exhibits=("quick",), exhibit_dirs=(stepwise_dir,), device="cpu")
    store = Store(cfg.data_dir, timeout=0.1)
    w = Worker(cfg, store, lease=5, poll=0.02, top_up=False)
    w.backoff_first, w.backoff_max = 0.05, 0.2
    w.setup()
    t = threading.Thread(target=w.run, kwargs={"idle_exit": 30}, daemon=True)
    t.start()
    first = store.submit("quick", source="visitor")
    wait_for(lambda: store.get_job(first.id).status == "done", what="the first piece")
    blocker = sqlite3.connect(cfg.data_dir / "kiosk.sqlite3", isolation_level=None)
    second = Store(cfg.data_dir).submit("quick", source="visitor", prompt_text="sent before the lock")
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the database for 2 s
    time.sleep(2.0)
    assert t.is_alive(), "the worker died on 'database is locked'"
    blocker.execute("ROLLBACK")
    wait_for(lambda: store.get_job(second.id).status == "done", what="the piece after the lock")
    assert store.get_job(second.id).attempts == 0
    w.stop()
    t.join(10)


def test_worker_waits_for_staff_to_restore_a_missing_archive(tmp_path, stepwise_dir):
    from exhibits.store import restore

    data = tmp_path / "data"
    store = Store(data)
    job = store.submit("quick", source="visitor", prompt_text="waits for the restore")
    store.backup()
    store.close()
    for f in ("kiosk.sqlite3", "kiosk.sqlite3-wal", "kiosk.sqlite3-shm"):
        (data / f).unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "kiosk", "worker", "--data", str(data), "--exhibits", "quick",
                             "--exhibit-dir", str(stepwise_dir), "--device", "cpu"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()[0]
        assert not (data / "kiosk.sqlite3").exists(), "the worker created a new archive in place of the old one"
        restore(data)
        wait_for(lambda: Store(data).get_job(job.id).status == "done", 60, "the job after the restore")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert f"{data / 'kiosk.sqlite3'} is missing" in out and "kiosk restore" in out
