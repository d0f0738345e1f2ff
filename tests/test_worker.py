"""The worker as a real process: SIGKILL mid-job loses nothing, SIGTERM hands the job back."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from exhibits.show import ShowConfig
from exhibits.store import Store

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from pathlib import Path
from exhibits.show import ShowConfig
from renderer.worker import Worker
cfg = ShowConfig(data_dir=Path(sys.argv[1]), exhibits=("stepwise",), exhibit_dirs=(Path(sys.argv[2]),), device="cpu")
w = Worker(cfg, lease=1.0, poll=0.05, top_up=False)
w.install_signal_handlers()
w.run(idle_exit=float(sys.argv[3]))
"""


def start_worker(data, exdir, idle_exit=30.0):
    env = {**os.environ, "KIOSK_GENERATORS": "tests.plugins.stepwise", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(data), str(exdir), str(idle_exit)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(pred, timeout=30.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_worker_loses_nothing_and_the_job_resumes(tmp_path, stepwise_dir):
    data = tmp_path / "data"
    store = Store(data)
    job = store.submit("stepwise", source="visitor", prompt_text="do not lose me", seed=5)
    w1 = start_worker(data, stepwise_dir)
    try:
        wait_for(lambda: store.get_job(job.id).step >= 5, what="progress before the kill")
        assert store.get_job(job.id).frame_path, "no progress frame was published"
        w1.send_signal(signal.SIGKILL)
        w1.wait(timeout=10)
        mid = store.get_job(job.id)
        assert mid.status == "running" and mid.prompt_text == "do not lose me"
        w2 = start_worker(data, stepwise_dir, idle_exit=1.0)
        out, _ = w2.communicate(timeout=90)
        assert w2.returncode == 0, out
    finally:
        if w1.poll() is None:
            w1.kill()
    done = store.get_job(job.id)
    assert done.status == "done", (done, out)
    assert store.count_pieces() == 1
    piece = store.get_piece(done.piece_id)
    assert piece.prompt_text == "do not lose me" and piece.seed == 5
    assert store.verify_piece(piece)
    assert "re-queued" in out or "requeued" in out.replace("-", "")
    # the second worker continued from the checkpoint instead of starting over
    from exhibits.files import read_png_meta
    assert read_png_meta(store.path(piece.image_path))["resumed"] == 1
    assert not list(store.root.rglob(".*.tmp")) and not list(store.pieces_dir.rglob(".*.png"))


def test_sigterm_hands_the_job_back_and_exits_cleanly(tmp_path, stepwise_dir):
    data = tmp_path / "data"
    store = Store(data)
    job = store.submit("stepwise", source="playlist")
    w = start_worker(data, stepwise_dir)
    wait_for(lambda: store.get_job(job.id).step >= 2, what="progress")
    t0 = time.monotonic()
    w.send_signal(signal.SIGTERM)
    out, _ = w.communicate(timeout=20)
    assert w.returncode == 0, out
    assert time.monotonic() - t0 < 5
    back = store.get_job(job.id)
    assert back.status == "queued" and back.attempts == 0
    assert store.workers_alive() == []


def test_long_piece_is_preempted_by_a_tap(tmp_path, stepwise_dir):
    from renderer.worker import Worker

    os.environ["KIOSK_GENERATORS"] = "tests.plugins.stepwise"
    try:
        cfg = ShowConfig(data_dir=tmp_path / "d", exhibits=("stepwise", "quick"), exhibit_dirs=(stepwise_dir,),
                         device="cpu")
        store = Store(cfg.data_dir)
        long_job = store.submit("stepwise", source="playlist")
        worker = Worker(cfg, store, lease=5, poll=0.01, top_up=False)
        worker.setup()
        claimed = store.claim(worker.id, exhibits=worker.runnable())
        assert claimed.id == long_job.id
        tap = store.submit("quick", source="tap")
        worker.process(claimed)  # sees the tap waiting and checkpoints
        assert store.get_job(long_job.id).status == "queued" and worker.stats.released == 1
        stats = worker.run(max_jobs=2)
        assert store.get_job(tap.id).status == "done" and store.get_job(long_job.id).status == "done"
        first_done = min((store.get_job(tap.id), store.get_job(long_job.id)), key=lambda j: j.finished_at)
        assert first_done.id == tap.id and stats.done == 2
    finally:
        del os.environ["KIOSK_GENERATORS"]


def test_worker_renders_in_the_configured_precision_and_says_so(tmp_path, stepwise_dir):
    import torch

    from renderer.worker import Worker

    os.environ["KIOSK_GENERATORS"] = "tests.plugins.stepwise"
    try:
        for precision, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            cfg = ShowConfig(data_dir=tmp_path / precision, exhibits=("quick",), exhibit_dirs=(stepwise_dir,),
                             device="cpu", precision=precision)
            store = Store(cfg.data_dir)
            worker = Worker(cfg, store, lease=5, poll=0.01, top_up=False)
            worker.setup()
            assert worker.dtype == dtype and worker._ctx(store.submit("quick", source="tap")).dtype == dtype
            job = store.submit("quick", source="tap")
            worker.run(max_jobs=2)
            piece = store.get_piece(store.get_job(job.id).piece_id)
            from PIL import Image

            from exhibits.files import PNG_META_KEY

            with Image.open(store.path(piece.image_path)) as im:  # the PNG a visitor downloads says how it was made
                meta = json.loads(im.text[PNG_META_KEY])
            assert meta["device"].endswith(", " + precision), meta["device"]
            store.close()
    finally:
        del os.environ["KIOSK_GENERATORS"]
