"""Screenshots of the display's screens from a throw-away store: ``python -m kiosk.display.screenshot OUT_DIR``.

Writes ``kiosk-empty.png`` (empty archive), ``kiosk.png`` (a finished piece with
caption and QR codes) and ``kiosk-making.png`` (the live view of a tap's job).
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

log = logging.getLogger(__name__)
WORKER = "screenshot-worker"


def pattern_image(seed: int, size: int = 512) -> Image.Image:
    """A colourful interference pattern (stand-in for a rendered piece)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    r = np.hypot(x - rng.uniform(0.2, 0.8), y - rng.uniform(0.2, 0.8))
    chans = []
    for c in range(3):
        f1, f2, ph = rng.uniform(3, 14), rng.uniform(2, 9), rng.uniform(0, 6.28)
        chans.append(0.5 + 0.5 * np.sin(f1 * r * 6.28 + f2 * np.sin(3 * x + c) + ph))
    return Image.fromarray((np.stack(chans, -1) * 255).astype(np.uint8))


def add_demo_piece(store: Store, seed: int, prompt: str, sigma: float) -> None:
    job = store.submit("demo", prompts=[(prompt, 1.0)], prompt_text=prompt, seed=seed, params={"sigma": sigma})
    job = store.claim(WORKER)
    assert job is not None
    meta = {"series": "Weights-free demo", "title": "Attractors (weights-free demo)", "generator": "default",
            "label": "weights-free pattern network (random init, no trained model)", "params": {"sigma": sigma},
            "config": {}, "models": {}, "sigma": sigma}
    store.add_piece(job, WORKER, pattern_image(seed), meta)


def _pump(d: Display, until: Callable[[], bool], seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not until():
        d.tick()
    for _ in range(5):
        d.tick()


def take(out_dir: Path, size: tuple[int, int] = (1280, 720)) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = Store(root)
        cfg = ShowConfig(data_dir=root, fullscreen=False, width=size[0], height=size[1], fps=60,
                         crossfade_seconds=0.0, hold_seconds=1000.0, public_url="http://192.168.1.20:8080")
        d = Display(cfg, root, poll_seconds=0.1)
        d.open()
        try:
            store.worker_beat(WORKER, state="busy")
            _pump(d, lambda: d.state == "welcome")
            written.append(_save(d, out_dir / "kiosk-empty.png"))
            for i, (prompt, sigma) in enumerate([("Entrance to the Heaven realm by James Gurney", 0.8),
                                                 ("Strange attractor in a field of poppies", 1.7),
                                                 ("A lighthouse made of glass at dusk, drawn in ink", 2.4)]):
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
        finally:
            d.close()
            store.close()
    return written


def _save(d: Display, path: Path) -> Path:
    assert d.screen is not None
    pygame.image.save(d.screen, str(path))
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
