"""Phone screenshots of the web app: ``python -m kiosk.web.screenshots OUT_DIR``.

Builds a throw-away store with a few sample pieces, serves the app with waitress on a
free local port and photographs the pages with headless Chromium (Playwright) at a
phone viewport. Also provides the live-server and browser helpers the browser tests use.
"""
from __future__ import annotations

import argparse
import io
import logging
import math
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from exhibits.show import ShowConfig
from exhibits.store import Piece, Store

log = logging.getLogger(__name__)

CHROMIUM = os.environ.get("KIOSK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1280, "height": 900}, "device_scale_factor": 1}
SAMPLE_LABEL = "Weights-free pattern network (no trained model)"


def sample_image(seed: int, size: int = 256) -> Any:
    """A small deterministic abstract picture (PIL RGB) standing in for a generated piece."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    f = rng.uniform(2, 9, size=3)
    ph = rng.uniform(0, 2 * math.pi, size=3)
    chans = [np.sin(f[i] * (x * math.cos(ph[i]) + y * math.sin(ph[i])) * math.pi + ph[i] * 3 * x * y) for i in range(3)]
    rgb = (np.stack(chans, -1) * 0.5 + 0.5) ** 1.4
    return Image.fromarray((rgb * 255).astype("uint8"), "RGB")


def make_piece(store: Store, prompt: str, *, seed: int = 1, exhibit: str = "demo", size: int = 256,
               label: str = SAMPLE_LABEL, sigma: float | None = 1.25, worker: str = "sample",
               image: Any = None) -> Piece:
    """Queue, claim and finish one job through the store, as the worker would (``image``: a real piece's picture)."""
    job = store.submit(exhibit, prompts=[(prompt, 1.0)], prompt_text=prompt, seed=seed, source="batch")
    claimed = store.claim(worker, exhibits=[exhibit])
    assert claimed is not None and claimed.id == job.id, "another job was waiting in the sample store"
    meta = {"series": "Weights-free demo", "title": "Attractors", "generator": "default", "label": label,
            "sigma": sigma, "params": {"sigma": sigma}, "config": {}, "models": {}}
    picture = image if image is not None else sample_image(seed, size)
    return store.add_piece(claimed, worker, picture, meta, thumb_size=size // 2 if image is None else 384)


SAMPLE_PROMPTS = ("a doorway to the ocean realm", "strange attractor in brass and ink", "Heaven | Hell:0.5",
                  "a lighthouse in a storm of moths", "the orchard realm at dusk", "glass bees")


@contextmanager
def live_server(app: Any, threads: int = 4) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 on a free port in a thread, as ``kiosk web`` does (waitress with its time-outs
    and per-address caps); yields the base URL."""
    from kiosk.web import make_server

    srv = make_server(app, "127.0.0.1", 0, threads=threads)
    t = threading.Thread(target=srv.run, name="waitress", daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.effective_port}"
    finally:
        srv.close()
        t.join(timeout=5)


class Phone:
    """A minimal HTTP client with its own source address (127.0.x.y) and cookie jar: one visitor's phone."""

    def __init__(self, base: str, source: str = "127.0.0.1", timeout: float = 15.0):
        from urllib.parse import urlsplit

        u = urlsplit(base)
        self.host, self.port, self.source, self.timeout = u.hostname, u.port, source, timeout
        self.cookies: dict[str, str] = {}
        self.conn: Any = None

    def _connect(self) -> Any:
        import http.client

        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout,
                                                   source_address=(self.source, 0))
        return self.conn

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        import http.client

        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in (0, 1):
            conn = self._connect()
            try:
                conn.request(method, path, body=body, headers=h)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt:
                    raise
        for value in resp.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        if resp.headers.get("Connection", "").lower() == "close":
            self.close()
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, data

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, headers=headers)

    def submit(self, prompt: str, exhibit: str | None = None, **headers: str) -> tuple[int, dict[str, str], bytes]:
        """POST /api/submit as the page's script would (CSRF token from /api/session)."""
        import json

        if "csrf" not in self.__dict__:
            code, _, body = self.get("/api/session")
            self.csrf = json.loads(body)["csrf_token"] if code == 200 else ""
        payload = {"prompt": prompt} | ({"exhibit": exhibit} if exhibit else {})
        return self.request("POST", "/api/submit", json.dumps(payload).encode(),
                            {"Content-Type": "application/json", "X-CSRFToken": self.csrf, **headers})

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@contextmanager
def chromium(**context: Any) -> Iterator[Any]:
    """A headless Chromium browser context (Debian's package; the network stays closed)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(**(context or PHONE))
            yield ctx
            ctx.close()
        finally:
            browser.close()


def take(out_dir: str | os.PathLike, work: str | os.PathLike | None = None,
         images: list[Path] | None = None) -> list[Path]:
    """Write phone-home/piece/submit/status.png and staff.png into ``out_dir``.

    ``images``: real pieces' PNGs to show instead of the built-in sample patterns.
    """
    from PIL import Image

    from kiosk.web import create_app

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="kiosk-shots-") if work is None else None
    root = Path(work or tmp.name)
    try:
        store = Store(root / "store")
        pictures = [Image.open(p).convert("RGB") for p in images or []]
        pieces = [make_piece(store, p, seed=i + 11, image=pictures[i % len(pictures)] if pictures else None)
                  for i, p in enumerate(SAMPLE_PROMPTS)]
        running = store.submit("demo", prompts=[("a cathedral of ferns", 1.0)], prompt_text="a cathedral of ferns",
                               source="visitor", seed=5)
        store.claim("sample")
        live = (pictures[0] if pictures else sample_image(5)).convert("RGB")
        buf = io.BytesIO()
        live.resize((512, 256)).save(buf, format="JPEG")
        store.publish_frame(running.id, "sample", buf.getvalue(), step=37, total=120)
        store.worker_beat("sample", state="rendering", message="job %d" % running.id, device="cpu")
        cfg = ShowConfig(data_dir=root / "store", exhibits=("demo", "doorways"), prompt_rate_limit="100 per minute",
                         staff_local_only=True)
        app = create_app(cfg, store)
        written = []
        with live_server(app) as base, chromium(**PHONE) as ctx:
            page = ctx.new_page()
            page.goto(base + "/")
            written.append(_shot(page, out / "phone-home.png"))
            page.goto(f"{base}/p/{pieces[-1].id}")
            written.append(_shot(page, out / "phone-piece.png"))
            page.goto(base + "/submit")
            page.fill("#prompt", "a lighthouse:|storm")
            page.click("button[type=submit]")
            page.wait_for_selector(".error")
            written.append(_shot(page, out / "phone-submit.png"))
            page.fill("#prompt", "a lighthouse in a storm of moths")
            page.click("button[type=submit]")
            page.wait_for_selector("#position")
            written.append(_shot(page, out / "phone-status.png"))
        store.submit("demo", prompts=[("a rude word", 1.0)], prompt_text="a rude word", source="visitor", held=True)
        store.set_curation(pieces[0].id, "keep")
        store.set_curation(pieces[1].id, "reject")
        store.set_hidden(pieces[2].id, True)
        with live_server(app) as base, chromium(**DESKTOP) as ctx:
            page = ctx.new_page()
            page.goto(base + "/staff/")
            written.append(_shot(page, out / "staff.png", full=True))
            page.goto(base + "/staff/curate?filter=all")
            written.append(_shot(page, out / "staff-curate.png", full=True))
        store.close()
        return written
    finally:
        if tmp is not None:
            tmp.cleanup()


def _shot(page: Any, path: Path, full: bool = False) -> Path:
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(path), full_page=full)
    log.info("wrote %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kiosk.web.screenshots", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", help="folder for the PNG screenshots")
    ap.add_argument("--images", nargs="+", type=Path, help="real pieces' PNGs to show instead of sample patterns")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for p in take(args.out_dir, images=args.images):
        log.info("%s", p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
