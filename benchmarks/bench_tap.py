"""Tap-to-screen latency: a visitor taps, how long until the new piece is on the display?

A real worker runs as its own process (``python -m kiosk worker``, CPU, its usual thread
count and 0.25 s claim poll) on a real store. The display's own background loader
(``kiosk.display.loader.Loader``, which needs no window) makes the taps exactly as the
display does (``request_tap``: a job with source ``tap``) and decodes the finished piece
for a full-HD screen. Per tap we measure

  (a) submit -> piece row committed   (job.created_at -> piece.created_at, both wall clock)
  (b) submit -> the loader hands the decoded piece to the display (its 0.25 s store poll included)

for the weights-free default generator at 512 and 1024 px and for randomly initialised
StyleGAN2 synthesis networks at 256 / 512 / 1024 px saved as NVlabs pickles. The StyleGAN2
networks use reduced channel widths (channel_base 8192, channel_max 128, as in
bench_stylegan.py) because the official widths (32768 / 512) take about 1 s at 256 px and
2 s at 512 px per forward pass on one core of this CPU; ``--full-width`` uses them anyway.

The baseline, measured in this process with the worker's thread count after the worker has
stopped: the bare generator render (``generator.render`` on the same exhibit settings,
no store, no files). The ratio (b) / bare is the cost of the whole pipeline around one
forward pass: claim poll, PNG + thumbnail writing, SQLite, the loader's poll and decode.

    python benchmarks/bench_tap.py [--taps 5] [--full-width]
"""
from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exhibits.show import ShowConfig  # noqa: E402
from exhibits.store import Store  # noqa: E402
from kiosk.display.loader import POLL_SECONDS, Loader, PieceReady, TapQueued  # noqa: E402

SCREEN = (1920, 1080)  # the display's piece box on a full-HD exhibit screen
SIGMA = (0.6, 2.4)
REDUCED = (8192, 128)
OFFICIAL = (32768, 512)

DEFAULT_TOML = """title = "Tap default {size}"
series = "Bench"
[canvas]
width = {size}
height = {size}
[generator]
name = "default"
[sigma]
min = {lo}
max = {hi}
"""

def write_exhibits(root: Path, widths: tuple[int, int]) -> tuple[Path, list[str]]:
    """Exhibit TOMLs (and the random StyleGAN2 pickles they name); returns the directory and exhibit names."""
    import torch

    from renderer.stylegan.sg2 import SG2Synthesis, sg2_channels
    from tests.stylegan_helpers import stylegan_exhibit_toml, write_nvlabs_pkl

    exdir = root / "exhibits"
    exdir.mkdir()
    names = []
    for size in (512, 1024):
        (exdir / f"tap_default_{size}.toml").write_text(DEFAULT_TOML.format(size=size, lo=SIGMA[0], hi=SIGMA[1]))
        names.append(f"tap-default-{size}")
    for size in (256, 512, 1024):
        torch.manual_seed(size)
        net = SG2Synthesis(512, size, 3, sg2_channels(size, *widths)).eval().requires_grad_(False)
        ckpt = write_nvlabs_pkl(net, root / f"random-sg2-{size}.pkl", marker=root / "never-executed")
        (exdir / f"tap_sg2_{size}.toml").write_text(
            stylegan_exhibit_toml(ckpt, size, SIGMA, title=f"Tap StyleGAN2 {size}", series="Bench"))
        names.append(f"tap-sg2-{size}")
    return exdir, names


def start_worker(root: Path, data: Path, exdir: Path, names: list[str]) -> subprocess.Popen:
    conf = root / "kiosk.toml"
    # queue_depth 0: no playlist pieces, so every render is a tap's.
    conf.write_text("[show]\nexhibits = [%s]\nqueue_depth = 0\ndevice = \"cpu\"\n" % ", ".join(f'"{n}"' for n in names))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "kiosk", "worker", "--config", str(conf), "--data", str(data),
                             "--exhibit-dir", str(exdir)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(root / "worker.log", "w"))


def wait_ready(store: Store, names: list[str], proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the worker exited with {proc.returncode}")
        avail = store.get_setting("exhibits_available") or {}
        if store.workers_alive() and all(avail.get(n) == "ok" for n in names):
            return
        bad = {n: why for n, why in avail.items() if why != "ok"}
        if bad:
            raise SystemExit(f"exhibits unavailable: {bad}")
        time.sleep(0.1)
    raise SystemExit("the worker did not get ready in time")


def tap_once(loader: Loader, store: Store, timeout: float = 120.0) -> dict:
    loader.request_tap()
    job = None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            msg = loader.outbox.get(timeout=0.5)
        except queue.Empty:
            continue
        if isinstance(msg, TapQueued):
            job = msg.job
        elif isinstance(msg, PieceReady) and job is not None and msg.piece.job_id == job.id:
            shown = time.time()
            piece = store.get_piece(msg.piece.id)
            return {"committed": piece.created_at - job.created_at, "shown": shown - job.created_at,
                    "render": piece.render_seconds or 0.0}
    raise SystemExit("a tap did not come back in time")


def measure_taps(data: Path, exdir: Path, name: str, taps: int) -> dict[str, list[float]]:
    cfg = ShowConfig(data_dir=data, exhibit_dirs=(exdir,), exhibits=(name,), tap_exhibit=name,
                     public_url="http://127.0.0.1:8080")
    store = Store(data)
    loader = Loader(cfg, data, piece_box=SCREEN, frame_box=(SCREEN[0], round(SCREEN[1] * 0.82)), seed=1)
    loader.start()
    try:
        tap_once(loader, store)  # warm-up: first forward pass of this network in the worker
        runs = [tap_once(loader, store) for _ in range(taps)]
    finally:
        loader.stop()
        store.close()
    return {k: [r[k] for r in runs] for k in ("committed", "shown", "render")}


def bare_render_seconds(exdir: Path, name: str, weights: Path, reps: int) -> float:
    """Median ``generator.render`` time in this process (same exhibit settings, same thread count)."""
    import torch

    from exhibits.config import load_exhibits
    from renderer import base

    ex = load_exhibits([name], (exdir,))[name]
    ctx = base.RenderContext(device=torch.device("cpu"), dtype=torch.float32, weights_dir=weights,
                             work_dir=weights.parent / "bench-work")
    gen = base.build(ex.generator, ex.settings_dict(), ctx)
    times = []
    for i in range(reps + 1):
        req = base.RenderRequest(job_id=0, exhibit=name, generator=ex.generator, prompts=(), seed=1000 + i,
                                 width=ex.width, height=ex.height, params={**ex.settings_dict(), "sigma": 1.5})
        t0 = time.perf_counter()
        gen.render(req, ctx)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ms(values: list[float]) -> str:
    v = [x * 1000 for x in values]
    return f"{statistics.mean(v):7.0f} {statistics.median(v):7.0f} {max(v):7.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--taps", type=int, default=5, help="timed taps per generator (after one warm-up)")
    ap.add_argument("--full-width", action="store_true", help="official StyleGAN2 channel widths (slow on a CPU)")
    args = ap.parse_args()
    import torch

    threads = max(1, (os.cpu_count() or 2) - 1)  # what the worker uses (it leaves one core to the display)
    torch.set_num_threads(threads)
    widths = OFFICIAL if args.full_width else REDUCED
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-tap-") as tmp:
        root = Path(tmp)
        data = root / "data"
        store = Store(data)
        exdir, names = write_exhibits(root, widths)
        proc = start_worker(root, data, exdir, names)
        results = {}
        try:
            wait_ready(store, names, proc)
            for name in names:
                results[name] = measure_taps(data, exdir, name, args.taps)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        bare = {name: bare_render_seconds(exdir, name, data / "weights", args.taps) for name in names}
        print(f"tap-to-screen latency on {os.cpu_count()} CPU cores, worker and baseline with {threads} torch "
              f"thread(s); StyleGAN2 channel_base/max {widths[0]}/{widths[1]}; display poll {POLL_SECONDS} s; "
              f"screen {SCREEN[0]}x{SCREEN[1]}; {args.taps} taps each after a warm-up")
        print(f"{'generator':18s} | {'(a) submit->row ms':>23s} | {'(b) submit->screen ms':>23s} | "
              f"{'worker render':>13s} | {'bare render':>11s} | {'(b)/bare':>8s}")
        print(f"{'':18s} | {'mean     p50     max':>23s} | {'mean     p50     max':>23s} | {'p50 ms':>13s} | "
              f"{'p50 ms':>11s} |")
        for name in names:
            r = results[name]
            ratio = statistics.mean(r["shown"]) / bare[name]
            print(f"{name:18s} | {ms(r['committed']):>23s} | {ms(r['shown']):>23s} | "
                  f"{statistics.median(r['render']) * 1000:13.0f} | {bare[name] * 1000:11.0f} | {ratio:8.2f}")
    print(f"total {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
