"""Helpers for the display tests: a real store with real pieces, a hand-driven clock, frame pumping."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Callable

import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from exhibits.show import ShowConfig  # noqa: E402
from exhibits.store import Job, Piece, Store  # noqa: E402

WORKER = "test-worker"


class FakeClock:
    """A clock the test moves by hand (the display's states read time only through it)."""

    def __init__(self, start: float = 1000.0):
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def show_config(root: Path, **kw) -> ShowConfig:
    base = dict(data_dir=root, fullscreen=False, width=320, height=180, fps=0, hold_seconds=1000.0,
                crossfade_seconds=0.0, public_url="http://kiosk.test:8080", drift_pixels=0, attract_seconds=0)
    base.update(kw)
    return ShowConfig(**base)


def solid(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, color)


def pattern(seed: int, size: int = 256) -> Image.Image:
    """A colourful smooth pattern (sines of a few random frequencies per channel)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    chans = []
    for _ in range(3):
        fx, fy, ph = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 6.28)
        chans.append(0.5 + 0.5 * np.sin(6.28 * (fx * x + fy * y * x) + ph))
    return Image.fromarray((np.stack(chans, -1) * 255).astype(np.uint8))


def add_piece(store: Store, image: Image.Image, *, exhibit: str = "demo", prompt: str = "a test piece",
              sigma: float | None = 1.5, label: str = "weights-free pattern network (no trained model)",
              series: str = "Weights-free demo") -> Piece:
    job = store.submit(exhibit, prompt_text=prompt, prompts=[(prompt, 1.0)], source="playlist")
    claimed = store.claim(WORKER)
    assert claimed is not None and claimed.id == job.id
    meta = {"series": series, "title": prompt, "generator": "default", "label": label, "params": {},
            "config": {}, "models": {}, "sigma": sigma}
    return store.add_piece(claimed, WORKER, image, meta)


def start_job(store: Store, prompt: str = "live job", exhibit: str = "demo") -> Job:
    store.submit(exhibit, prompt_text=prompt, prompts=[(prompt, 1.0)], source="playlist")
    job = store.claim(WORKER)
    assert job is not None
    return job


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def pump(display, until: Callable[[], bool], timeout: float = 5.0, clock: FakeClock | None = None,
         step: float = 0.02) -> bool:
    """Tick the display (moving the fake clock by ``step`` per frame) until ``until()`` or ``timeout`` real seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        display.tick()
        if clock is not None:
            clock.advance(step)
        if until():
            return True
        time.sleep(0.002)  # let the loader thread run
    return False


def near(a, b, tol: int = 12) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(tuple(a)[:3], tuple(b)[:3]))


def center_color(display) -> tuple[int, int, int]:
    w, h = display.size
    return tuple(display.screen.get_at((w // 2, h // 2)))[:3]


def finish_job(store: Store, job: Job, image: Image.Image, prompt: str = "a tapped piece") -> Piece:
    meta = {"series": "Weights-free demo", "title": prompt, "generator": "default",
            "label": "weights-free pattern network", "params": dict(job.params), "config": {}, "models": {},
            "sigma": job.params.get("sigma")}
    return store.add_piece(job, WORKER, image, meta)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "archive")
    yield s
    s.close()


@pytest.fixture
def opened():
    """``opened(store_or_root, clock, **show_config)``: an open display window, closed after the test.
    ``failsafe_seconds`` and ``open_now`` go to the display itself."""
    from kiosk.display import Display

    displays = []

    def _open(where, clock: FakeClock | None = None, **cfg):
        root = where.root if isinstance(where, Store) else Path(where)
        kw = {k: cfg.pop(k) for k in ("open_now", "failsafe_seconds") if k in cfg}
        d = Display(show_config(root, **cfg), root, clock=clock, poll_seconds=0.02, **kw)
        d.open()
        displays.append(d)
        return d

    yield _open
    for d in displays:
        d.close()
