"""Screenshots of the display's screens from a throw-away store: ``python -m kiosk.display.screenshot OUT_DIR``.

Writes ``kiosk-empty.png`` (empty archive), ``kiosk.png`` (a finished piece with
caption and QR codes), ``kiosk-making.png`` (the live view of a tap's job),
``kiosk-long-prompt.png`` (a visitor's piece with a long prompt), ``kiosk-attract.png``
(attract mode), ``kiosk-staff.png`` (the staff overlay), ``kiosk-portrait.png`` (a monitor
turned on its side, as visitors see it), ``kiosk-moving.png`` (a moving piece mid-play: its
loop, an MP4, decoded by the display's decoder thread) and ``kiosk-failsafe.png`` (a damaged archive).
Run it under a real X server (``xvfb-run``) or with ``SDL_VIDEODRIVER=dummy``.
"""
from __future__ import annotations

import argparse
import io
import logging
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pygame
from PIL import Image

from exhibits.show import ShowConfig
from exhibits.store import Store
from kiosk.display.app import Display

LONG_PROMPT = ("A lighthouse made of glass at dusk, its beam turning slowly over a sea of ink, drawn by a patient "
               "hand on a windy afternoon, with gulls, ropes and a small red boat waiting below the rocks")

log = logging.getLogger(__name__)
WORKER = "screenshot-worker"


def pattern_image(seed: int, size: int = 512, phase: float = 0.0) -> Image.Image:
    """A colourful interference pattern (stand-in for a rendered piece); ``phase`` (radians) moves its rings
    and turning it through 2π brings the pattern back (a seamless loop)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    r = np.hypot(x - rng.uniform(0.2, 0.8), y - rng.uniform(0.2, 0.8))
    chans = []
    for c in range(3):
        f1, f2, ph = rng.uniform(3, 14), rng.uniform(2, 9), rng.uniform(0, 6.28)
        chans.append(0.5 + 0.5 * np.sin(f1 * r * 6.28 + f2 * np.sin(3 * x + c + phase) + ph + phase))
    return Image.fromarray((np.stack(chans, -1) * 255).astype(np.uint8))


def moving_frames(seed: int, frames: int = 24, size: int = 512) -> list[Image.Image]:
    """A seamless loop: the pattern's rings turning once round (a stand-in for a latent loop walk)."""
    return [pattern_image(seed, size, 2 * np.pi * i / frames) for i in range(frames)]


def moving_loop(seed: int, path: Path, frames: int = 24, fps: int = 12) -> tuple[Image.Image, Path]:
    """The loop as the renderer writes it (H.264 MP4); returns (its first frame, the file)."""
    from renderer.guidance.video import write_mp4  # PyAV and Pillow only (no torch)

    images = moving_frames(seed, frames)
    return images[0], write_mp4(images, path, fps)


def add_demo_piece(store: Store, seed: int, prompt: str, sigma: float, source: str = "playlist",
                   image: Image.Image | None = None, extra_files: dict[str, Path] | None = None) -> None:
    job = store.submit("demo", prompts=[(prompt, 1.0)], prompt_text=prompt, seed=seed, params={"sigma": sigma},
                       source=source)
    job = store.claim(WORKER)
    assert job is not None
    meta = {"series": "Weights-free demo", "title": "Attractors (weights-free demo)", "generator": "default",
            "label": "weights-free pattern network (no trained model)", "params": {"sigma": sigma},
            "config": {}, "models": {}, "sigma": sigma}
    store.add_piece(job, WORKER, image if image is not None else pattern_image(seed), meta, extra_files=extra_files)


def _pump(d: Display, until: Callable[[], bool], seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not until():
        d.tick()
    for _ in range(5):
        d.tick()


def _config(root: Path, size: tuple[int, int], **kw) -> ShowConfig:
    base = dict(data_dir=root, fullscreen=False, width=size[0], height=size[1], fps=60, crossfade_seconds=0.0,
                hold_seconds=1000.0, public_url="http://192.168.1.20:8080", drift_pixels=0, attract_seconds=0)
    return ShowConfig(**{**base, **kw})


def take(out_dir: Path, size: tuple[int, int] = (1280, 720)) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "archive"
        store = Store(root)
        d = Display(_config(root, size), root, poll_seconds=0.1)
        d.open()
        try:
            store.worker_beat(WORKER, state="busy")
            _pump(d, lambda: d.state == "welcome")
            written.append(_save(d, out_dir / "kiosk-empty.png"))
            for i, (prompt, sigma) in enumerate([("Entrance to the Heaven realm by James Gurney", 0.8),
                                                 ("Strange attractor in a field of poppies", 1.7),
                                                 ("Tide pools under a violet moon", 2.4)]):
                add_demo_piece(store, 7 + i, prompt, sigma)
            latest = store.latest_piece_id()
            store.worker_beat(WORKER, state="idle")
            _pump(d, lambda: d.card_piece_id == latest)
            written.append(_save(d, out_dir / "kiosk.png"))
            d.tap(d.clock())
            _pump(d, lambda: d.tap_job is not None)
            job = store.claim(WORKER)
            assert job is not None
            buf = io.BytesIO()
            pattern_image(99).resize((512, 512)).save(buf, format="JPEG", quality=85)
            store.publish_frame(job.id, WORKER, buf.getvalue(), step=37, total=100)
            _pump(d, lambda: d.frame is not None and d.frame[0].job_id == job.id and d.state == "making")
            written.append(_save(d, out_dir / "kiosk-making.png"))
            store.cancel(job.id)
            _pump(d, lambda: d.tap_job is None)
            add_demo_piece(store, 21, LONG_PROMPT, 1.3, source="visitor")
            latest = store.latest_piece_id()
            _pump(d, lambda: d.card_piece_id == latest and d.state == "showing")
            written.append(_save(d, out_dir / "kiosk-long-prompt.png"))
            d.staff.open(d)
            _pump(d, lambda: True)
            written.append(_save(d, out_dir / "kiosk-staff.png"))
            d.staff.close(d)
            d.cfg = _config(root, size, attract_seconds=1.0, dwell_seconds=0.0)
            d.last_interaction = d.clock() - 5
            _pump(d, lambda: d.state == "attract")
            written.append(_save(d, out_dir / "kiosk-attract.png"))
        finally:
            d.close()
        # a monitor turned on its side (rotate = 90): what visitors see, upright
        d = Display(_config(root, size, rotate=90), root, poll_seconds=0.1)
        d.open()
        try:
            _pump(d, lambda: d.card_piece_id == latest)
            written.append(_save(d, out_dir / "kiosk-portrait.png"))
        finally:
            d.close()
        # a moving piece, mid-play
        still, loop = moving_loop(31, Path(tmp) / "animation.mp4")
        add_demo_piece(store, 31, "A slow tide of attractors, looping", 1.1, image=still,
                       extra_files={"animation": loop})
        latest = store.latest_piece_id()
        d = Display(_config(root, size), root, poll_seconds=0.1)
        d.open()
        try:
            _pump(d, lambda: d.card_piece_id == latest and d.stats.motion_frames >= 10)
            written.append(_save(d, out_dir / "kiosk-moving.png"))
            log.info("moving piece: frame %s of its loop on screen", d.motion.current.index if d.motion else "?")
        finally:
            d.close()
        store.close()
        # a damaged archive: the failsafe screen while the display keeps trying
        db = root / "kiosk.sqlite3"
        for extra in ("-wal", "-shm"):
            Path(f"{db}{extra}").unlink(missing_ok=True)
        db.write_bytes(db.read_bytes()[:4096] + b"\0garbage" * 4096)
        d = Display(_config(root, size), root, poll_seconds=0.1)
        d.open()
        try:
            _pump(d, lambda: d.state == "failsafe")
            written.append(_save(d, out_dir / "kiosk-failsafe.png"))
        finally:
            d.close()
    return written


def _save(d: Display, path: Path) -> Path:
    assert d.screen is not None
    pygame.image.save(d.screen, str(path))  # the picture as drawn (upright when the monitor is turned)
    log.info("screenshot %s (%s)", path, d.state)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT (default 1280x720)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    w, h = (int(v) for v in args.size.lower().split("x"))
    for p in take(args.out_dir, (w, h)):
        log.info("wrote %s", p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
