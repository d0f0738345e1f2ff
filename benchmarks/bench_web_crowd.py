"""A crowd at the venue: 50 phones polling their prompt's status while six clients download prints and AR packs
and the worker renders.

Each phone has its own address (127.0.x.y, so per-address limits apply as they would on a LAN) and polls
``/api/job/<token>`` every 0.5 s. Six downloaders fetch print PDFs and AR packs of pieces that were never
exported, waiting on "being prepared" (202) as the page does, then read the whole file. A separate process
plays the worker (progress frames ten times a second, a piece a second, through the real store). The
baseline, in the same run, is the same 50 phones with nothing else going on.

    .venv/bin/python benchmarks/bench_web_crowd.py [--seconds 30] [--phones 50] [--downloaders 6]

Everything stays on 127.0.0.0/8 and stops after the given time.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from exhibits.show import ShowConfig  # noqa: E402
from exhibits.store import Store  # noqa: E402
from kiosk.web import create_app  # noqa: E402
from kiosk.web.screenshots import Phone, live_server, make_piece  # noqa: E402


def worker_process(root: str, stop: "multiprocessing.synchronize.Event") -> None:
    from bench_web import fake_worker

    fake_worker(Store(root), stop)


def phone_address(i: int) -> str:
    return f"127.0.{1 + i // 250}.{2 + i % 250}"


def run(base: str, tokens: list[str], seconds: float, downloaders: int, piece_ids: list[int]) -> dict:
    lat: list[float] = []
    codes: dict[int, int] = {}
    downloads = {"files": 0, "bytes": 0, "waits": 0, "codes": {}}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def phone(i: int) -> None:
        p = Phone(base, phone_address(i), timeout=30)
        rng = random.Random(i)
        time.sleep(rng.random() * 0.5)
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                code = p.get(f"/api/job/{tokens[i]}")[0]
            except OSError:
                code = 599
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                codes[code] = codes.get(code, 0) + 1
            time.sleep(max(0.0, 0.5 - dt))
        p.close()

    def downloader(i: int) -> None:
        p = Phone(base, f"127.0.9.{10 + i}", timeout=60)
        rng = random.Random(100 + i)
        while time.monotonic() < deadline:
            pid = rng.choice(piece_ids)
            url = f"/p/{pid}/print.pdf" if rng.random() < 0.5 else f"/p/{pid}/ar.zip"
            while time.monotonic() < deadline:
                try:
                    code, _, body = p.get(url, Accept="application/json")
                except OSError:
                    code, body = 599, b""
                with lock:
                    downloads["codes"][code] = downloads["codes"].get(code, 0) + 1
                if code == 202:
                    with lock:
                        downloads["waits"] += 1
                    time.sleep(1.0)
                    continue
                if code == 200:
                    with lock:
                        downloads["files"] += 1
                        downloads["bytes"] += len(body)
                break
        p.close()

    threads = [threading.Thread(target=phone, args=(i,)) for i in range(len(tokens))]
    threads += [threading.Thread(target=downloader, args=(i,)) for i in range(downloaders)]
    load0 = os.getloadavg()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat.sort()
    return {"n": len(lat), "p50": statistics.median(lat) * 1000, "p99": lat[int(0.99 * (len(lat) - 1))] * 1000,
            "max": lat[-1] * 1000, "codes": codes, "downloads": downloads, "load_before": load0,
            "load_after": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--phones", type=int, default=50)
    ap.add_argument("--downloaders", type=int, default=6)
    ap.add_argument("--pieces", type=int, default=40, help="pieces in the archive, none exported yet")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store")
        pieces = [make_piece(store, f"piece {i}", seed=i, size=512) for i in range(args.pieces)]
        cfg = ShowConfig(data_dir=store.root, exhibits=("demo",), prompt_rate_limit="1000 per minute")
        app = create_app(cfg, store)
        app.extensions["kiosk"].exports.start()
        # the phones' prompts wait under another exhibit, so the pretend worker keeps making its own pieces
        tokens = [store.submit("visitors", prompt_text=f"phone {i}", source="visitor").token
                  for i in range(args.phones)]
        rows = []
        with live_server(app, threads=6) as base:
            rows.append(("phones only", run(base, tokens, args.seconds, 0, [])))
            ctx = multiprocessing.get_context("spawn")
            stop = ctx.Event()
            worker = ctx.Process(target=worker_process, args=(str(store.root), stop), daemon=True)
            worker.start()
            rows.append(("+ downloads + worker", run(base, tokens, args.seconds, args.downloaders,
                                                     [p.id for p in pieces])))
            stop.set()
            worker.join(timeout=20)
        made = store.conn.execute("SELECT COUNT(*) FROM exports WHERE status='ready'").fetchone()[0]
        new_pieces = store.count_pieces() - args.pieces
        app.extensions["kiosk"].exports.stop()
    print(f"{args.phones} phones (each its own 127.0.x.y) polling status every 0.5 s; waitress 6 threads; "
          f"{args.seconds:.0f} s per run; {os.cpu_count()} CPUs")
    print(f"{'run':22s} {'polls':>6s} {'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s} {'5xx':>4s}  load avg before -> after")
    for name, r in rows:
        fivexx = sum(n for c, n in r["codes"].items() if c >= 500)
        print(f"{name:22s} {r['n']:6d} {r['p50']:7.1f} {r['p99']:7.1f} {r['max']:7.1f} {fivexx:4d}  "
              f"{r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}")
    base_r, busy = rows[0][1], rows[1][1]
    d = busy["downloads"]
    print(f"downloads: {d['files']} files ({d['bytes'] / 1e6:.1f} MB) served, {d['waits']} 'being prepared' answers, "
          f"codes {d['codes']}; exports made: {made}; pieces the worker finished meanwhile: {new_pieces}")
    print(f"ratio loaded/baseline: p50 {busy['p50'] / base_r['p50']:.2f}, p99 {busy['p99'] / base_r['p99']:.2f}")
    bad = sum(n for _, r in rows for c, n in r["codes"].items() if c >= 500) + \
        sum(n for c, n in d["codes"].items() if c >= 500)
    return 1 if bad or busy["p99"] >= 100 else 0


if __name__ == "__main__":
    raise SystemExit(main())
