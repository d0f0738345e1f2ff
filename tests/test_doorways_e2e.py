"""Doorways end to end: the doorways-tiny exhibit through a real worker and a real store.

Live progress frames, the timelapse, PNG metadata, pre-emption by a tap with a
resume from the checkpoint, a SIGKILLed worker resuming from its last
optimisation checkpoint, and continuing a finished piece from an edited picture.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from exhibits.files import read_png_meta
from exhibits.show import ShowConfig
from exhibits.store import Store

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [["Entrance to the Heaven realm by James Gurney", 1.0], ["Entrance to the Hell realm by James Gurney", 1.0]]
TAP_TOML = """
title = "Quick tap"
series = "Test taps"
[canvas]
width = 48
height = 48
[generator]
name = "default"
[sigma]
min = 0.5
max = 1.0
"""
WORKER = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from pathlib import Path
from exhibits.show import ShowConfig
from renderer.worker import Worker
cfg = ShowConfig(data_dir=Path(sys.argv[1]), exhibits=("doorways-tiny",), device="cpu")
w = Worker(cfg, lease=1.0, poll=0.05, top_up=False)
w.install_signal_handlers()
w.run(idle_exit=float(sys.argv[2]))
"""


def wait_for(pred, timeout=60.0, what="condition", every=0.03):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def tap_dir(tmp_path):
    d = tmp_path / "exhibits"
    d.mkdir()
    (d / "quick_tap.toml").write_text(TAP_TOML)
    return d


def make_worker(data: Path, exhibit_dirs=(), tap: str | None = None):
    from renderer.worker import Worker

    cfg = ShowConfig(data_dir=data, exhibits=("doorways-tiny",), tap_exhibit=tap, exhibit_dirs=tuple(exhibit_dirs),
                     device="cpu")
    worker = Worker(cfg, Store(data), lease=10.0, poll=0.02, top_up=False)
    worker.setup()
    return worker


def submit_doorways(store: Store, **params):
    return store.submit("doorways-tiny", prompts=PROMPTS, prompt_text="Heaven | Hell", seed=11, params=params,
                        source="playlist")


def test_live_frames_timelapse_metadata_and_preemption_by_a_tap(tmp_path, tap_dir):
    data = tmp_path / "data"
    worker = make_worker(data, [tap_dir], tap="quick-tap")
    store = worker.store
    assert set(worker.runnable()) == {"doorways-tiny", "quick-tap"}
    job = submit_doorways(store, steps=60, checkpoint_every=10, progress_every=1)
    runner = threading.Thread(target=worker.run, kwargs={"max_jobs": 2}, daemon=True)
    runner.start()

    # Live view: the frame file exists, is replaced as the picture changes, and step/total advance.
    frames: dict[float, bytes] = {}
    steps: list[int] = []

    def sample():
        j = store.get_job(job.id)
        if j.status == "running" and j.frame_path and j.frame_at not in frames:
            frames[j.frame_at] = store.path(j.frame_path).read_bytes()
            steps.append(j.step)
            assert j.total == 60
        return len(frames) >= 3

    wait_for(sample, what="three progress frames")
    assert steps == sorted(steps) and steps[-1] > steps[0] > 0
    assert len(set(frames.values())) >= 2, "the progress frame never changed"
    assert Image.open(io.BytesIO(frames[max(frames)])).size == (256, 128)

    assert store.get_job(job.id).status == "running", "the piece finished before the tap could pre-empt it"
    tap = store.submit("quick-tap", source="tap", seed=1)
    runner.join(timeout=90)
    assert not runner.is_alive()
    tap_done, door_done = store.get_job(tap.id), store.get_job(job.id)
    assert tap_done.status == "done" and door_done.status == "done", (tap_done, door_done)
    assert worker.stats.released == 1 and worker.stats.done == 2
    assert tap_done.finished_at < door_done.finished_at and tap_done.piece_id < door_done.piece_id
    assert door_done.attempts == 0 and door_done.deaths == 0  # a pre-emption is neither a failure nor a death

    piece = store.get_piece(door_done.piece_id)
    meta = read_png_meta(store.path(piece.image_path))
    assert 0 < meta["resumed_from"] < 60 and meta["steps_done"] == 60
    assert meta["resumed_from"] >= steps[-1]  # it went on from where it was stopped, not from step 0
    assert meta["prompts"] == PROMPTS and meta["seed"] == 11 and piece.seed == 11
    assert meta["models"]["vqgan"] == {"name": "tiny", "weights": "random-init"}
    assert [m["name"] for m in meta["models"]["clip"]] == ["tiny"]
    assert "noise" in meta["label"] and "noise" in piece.label
    assert piece.models == meta["models"] and (piece.width, piece.height) == (256, 128)
    assert meta["params"]["symmetry"] == {"edge": 0.0, "tone": 0.5, "semantic": 0.1}

    gif = store.path(piece.extra["timelapse"])
    assert gif.suffix == ".gif"
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 60 // 5  # every 5th step; the last one is the final image
    assert not (store.work_dir / f"job-{job.id}").exists()
    assert store.verify_piece(piece)


def _state_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def test_sigkilled_worker_resumes_from_the_last_optimisation_checkpoint(tmp_path):
    data = tmp_path / "data"
    store = Store(data)
    job = submit_doorways(store, steps=30, checkpoint_every=5, progress_every=1, timelapse=0)
    state = store.work_dir / f"job-{job.id}" / "optim_state.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", WORKER, str(data)]
    first = subprocess.Popen([*cmd, "60"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: state.is_file() and store.get_job(job.id).step >= 12, what="two checkpoints")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    killed_at = store.get_job(job.id).step
    checkpoint = _state_step(state)
    assert 10 <= checkpoint <= killed_at and checkpoint % 5 == 0
    assert store.get_job(job.id).status == "running"  # nobody told the store: the lease has to run out

    second = subprocess.run([*cmd, "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    done = store.get_job(job.id)
    # the killed worker counts as a death, not as a failed attempt of the visitor's job
    assert done.status == "done" and done.attempts == 0 and done.deaths == 1, (done, second.stderr[-3000:])
    assert f"resuming optimisation from step {checkpoint}" in second.stderr
    meta = read_png_meta(store.path(store.get_piece(done.piece_id).image_path))
    assert meta["resumed_from"] == checkpoint and meta["steps_done"] == 30


def _edit(src: Path, dest: Path) -> Path:
    """What the artist does in an image editor: paint out a region, then blur the whole picture a little."""
    with Image.open(src) as im:
        edited = im.convert("RGB")
    ImageDraw.Draw(edited).rectangle((96, 32, 160, 112), fill=(40, 30, 60))
    edited.filter(ImageFilter.GaussianBlur(2)).save(dest)
    return dest


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "kiosk", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_continue_a_finished_piece_from_an_edited_picture(tmp_path):
    data = tmp_path / "data"
    worker = make_worker(data)
    store = worker.store
    parent_job = submit_doorways(store, steps=6, checkpoint_every=0, progress_every=3, timelapse=0)
    worker.run(max_jobs=1)
    parent = store.get_piece(store.get_job(parent_job.id).piece_id)
    edited = _edit(store.path(parent.image_path), tmp_path / "edited.png")

    # A file that is not a picture is refused by name, and nothing is queued.
    jobs_before = len(store.jobs(limit=1000))
    bogus = tmp_path / "not-a-picture.png"
    bogus.write_text("these are my notes, not a picture")
    bad = _cli("continue", str(parent.id), "--image", str(bogus), "--data", str(data))
    assert bad.returncode == 1 and str(bogus) in bad.stderr and "not an image" in bad.stderr, bad.stderr
    assert len(store.jobs(limit=1000)) == jobs_before and not (store.root / "inits").exists()

    ok = _cli("continue", str(parent.id), "--image", str(edited), "--steps", "4", "--lr", "0.05", "--cut-pow", "3",
              "--data", str(data))
    assert ok.returncode == 0, ok.stderr
    job = store.jobs(["queued"], limit=10)[0]
    assert f"job {job.id} queued" in ok.stdout
    assert not Path(job.params["init_image"]).is_absolute(), "kept relative so a moved archive still works"
    init = store.path(job.params["init_image"])
    assert job.source == "staff" and job.exhibit == "doorways-tiny" and job.seed == parent.seed
    assert [list(p) for p in job.prompts] == PROMPTS and job.prompt_text == parent.prompt_text
    assert init.parent == (store.root / "inits").resolve() and init.is_file()
    assert job.params["parent_piece"] == parent.id and job.params["init_cut_pow"] == 3.0
    assert job.params["steps"] == 4 and job.params["lr"] == 0.05
    assert (job.params["width"], job.params["height"]) == (256, 128)
    with Image.open(init) as im:
        assert im.size == (256, 128) and im.format == "PNG"
    assert read_png_meta(init)["parent_piece"] == parent.id

    worker.run(max_jobs=2)
    child = store.get_piece(store.get_job(job.id).piece_id)
    meta = read_png_meta(store.path(child.image_path))
    assert meta["init_image"] == str(init) and child.params["init_image"] == str(init)
    assert child.config["request"]["parent_piece"] == parent.id == meta["config"]["request"]["parent_piece"]
    assert meta["params"]["init_cut_pow"] == 3.0 and meta["params"]["lr"] == 0.05
    assert meta["steps_done"] == 4 and meta["resumed_from"] == 0 and child.seed == parent.seed
    assert (child.width, child.height) == (256, 128)


def test_continue_checks_its_input_and_resizes_a_picture_of_another_shape(tmp_path, caplog):
    from kiosk.surgery import SurgeryError, continue_piece

    store = Store(tmp_path / "data")
    job = submit_doorways(store, steps=5)
    claimed = store.claim("w", exhibits=["doorways-tiny"])
    piece = store.add_piece(claimed, "w", Image.new("RGB", (64, 32), (200, 100, 0)),
                            {"generator": "vqgan_clip", "params": {"seed": None, "init_image": None}})

    square = tmp_path / "square.png"
    Image.new("RGB", (50, 50), (0, 0, 255)).save(square)
    with caplog.at_level("WARNING", logger="kiosk.surgery"):
        cont = continue_piece(store, piece.id, square, seed=99)
    assert "resizing" in caplog.text and str(square) in caplog.text
    with Image.open(store.path(cont.params["init_image"])) as im:
        assert im.size == (64, 32) and im.getpixel((0, 0)) == (0, 0, 255)
    assert cont.seed == 99 and cont.params["steps"] == 5 and "init_cut_pow" not in cont.params

    itself = continue_piece(store, piece.id)  # no edit: continue from the piece as it is
    with Image.open(store.path(itself.params["init_image"])) as im:
        assert im.size == (64, 32) and im.getpixel((0, 0)) == (200, 100, 0)
    assert itself.seed == job.seed

    with pytest.raises(SurgeryError, match="no piece with id 999"):
        continue_piece(store, 999)
    with pytest.raises(SurgeryError, match=r"missing\.png: no such file"):
        continue_piece(store, piece.id, tmp_path / "missing.png")
    with pytest.raises(SurgeryError, match="cut_pow"):
        continue_piece(store, piece.id, cut_pow=-1)
