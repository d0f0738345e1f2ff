"""Load on the phone web app while the worker writes: requests per second, latency, errors.

A real waitress server on 127.0.0.1 (a free port) over a real store with pieces; a
thread plays the worker (progress frames every 0.1 s, a new piece every second)
while client threads fetch the pages a crowd of phones fetches: home, piece pages,
thumbnails, job status JSON, and prompt submissions. Bounded in count and time;
nothing leaves this machine. The baseline is the same load with the worker idle.

    .venv/bin/python benchmarks/bench_web.py [--requests 1500] [--clients 16] [--seconds 30]
"""
from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exhibits.show import ShowConfig  # noqa: E402
from exhibits.store import Store  # noqa: E402
from kiosk.web import create_app  # noqa: E402
from kiosk.web.screenshots import live_server, make_piece  # noqa: E402


def jpeg(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (512, 256), (seed % 255, 80, 160)).save(buf, format="JPEG")
    return buf.getvalue()


def fake_worker(store: Store, stop: threading.Event) -> None:
    """Progress frames at 10 per second and a finished piece every second, as a busy worker writes them."""
    n = 0
    while not stop.is_set():
        store.submit("demo", prompt_text=f"worker piece {n}", source="playlist", seed=10_000 + n)
        claimed = store.claim("bench-worker", exhibits=["demo"])
        if claimed is None:
            break
        for step in range(10):
            if stop.is_set():
                break
            store.publish_frame(claimed.id, "bench-worker", jpeg(step), step=step, total=10)
            time.sleep(0.1)
        if stop.is_set():
            break
        make_piece_for(store, claimed)
        n += 1


def make_piece_for(store: Store, job) -> None:
    from PIL import Image

    store.add_piece(job, "bench-worker", Image.new("RGB", (256, 256), (job.seed % 255, 40, 90)),
                    {"series": "Bench", "title": "Bench", "generator": "default", "label": "bench", "params": {},
                     "config": {}, "models": {}})


def run_load(base: str, piece_ids: list[int], tokens: list[str], requests: int, clients: int,
             seconds: float) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + seconds

    def one(rng: random.Random) -> None:
        kind = rng.random()
        if kind < 0.25:
            url = "/"
        elif kind < 0.45:
            url = f"/p/{rng.choice(piece_ids)}"
        elif kind < 0.7:
            url = f"/p/{rng.choice(piece_ids)}/thumb.jpg"
        elif kind < 0.95:
            url = f"/api/job/{rng.choice(tokens)}"
        else:
            url = "/healthz"
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(base + url, timeout=10) as r:
                r.read()
                ok = r.status == 200
        except urllib.error.HTTPError as exc:
            ok = False
            msg = f"{url}: HTTP {exc.code}"
        except OSError as exc:
            ok = False
            msg = f"{url}: {exc}"
        dt = time.perf_counter() - t0
        with lock:
            lat.append(dt)
            if not ok:
                errors.append(msg)

    def client(i: int) -> None:
        rng = random.Random(i)
        while time.monotonic() < deadline:
            try:
                next(counter)
            except StopIteration:
                return
            one(rng)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"n": len(lat), "rps": len(lat) / wall, "p50": statistics.median(lat) * 1000,
            "p99": lat[int(0.99 * (len(lat) - 1))] * 1000, "max": lat[-1] * 1000, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store")
        pieces = [make_piece(store, f"piece {i}", seed=i, size=256) for i in range(40)]
        # visitors' jobs wait under another exhibit name, so the pretend worker only takes its own
        tokens = [store.submit("visitors", prompt_text=f"visitor {i}", source="visitor").token for i in range(20)]
        cfg = ShowConfig(data_dir=store.root, exhibits=("demo",), prompt_rate_limit="1000 per minute")
        app = create_app(cfg, store)
        ids = [p.id for p in pieces]
        rows = []
        with live_server(app, threads=6) as base:
            rows.append(("worker idle", run_load(base, ids, tokens, args.requests, args.clients, args.seconds)))
            stop = threading.Event()
            writer = threading.Thread(target=fake_worker, args=(Store(store.root), stop), daemon=True)
            writer.start()
            rows.append(("worker writing", run_load(base, ids, tokens, args.requests, args.clients, args.seconds)))
            stop.set()
            writer.join(timeout=10)
    print(f"waitress 6 threads, {args.clients} client threads on 127.0.0.1, up to {args.requests} requests / "
          f"{args.seconds:.0f} s per run")
    print(f"{'run':16s} {'requests':>8s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'errors':>7s}")
    for name, r in rows:
        print(f"{name:16s} {r['n']:8d} {r['rps']:8.1f} {r['p50']:8.1f} {r['p99']:8.1f} {r['max']:8.1f} "
              f"{len(r['errors']):7d}")
    idle, busy = rows[0][1], rows[1][1]
    print(f"ratio writing/idle: req/s {busy['rps'] / idle['rps']:.2f}, p99 {busy['p99'] / idle['p99']:.2f}")
    for name, r in rows:
        for e in r["errors"][:5]:
            print(f"  {name} error: {e}")
    return 1 if any(r["errors"] for _, r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
