"""Tap-to-screen latency: a visitor taps, how long until the screen answers, shows live frames, shows the piece?

A real worker runs as its own process (``python -m kiosk worker`` at ``nice 10`` as in the demo and
the systemd unit, CPU, its usual thread count and 0.25 s claim poll) on a real store. The real
display (``kiosk.display.Display``, SDL's dummy video driver, full-HD, 60 fps target, its own loop
with its idle sleep) takes the taps as a visitor's touch would (``Display.tap``). Per tap we measure

  answer      tap -> the first flip of the screen showing the live view ("your piece is starting")
  first frame tap -> the first flip showing a progress frame of the tap's job
  card        tap -> the first flip showing the finished piece's card (its crossfade begins)
  (row)       tap -> the piece row committed by the worker (wall clock)

for the weights-free default generator at 512 and 1024 px and for randomly initialised StyleGAN2
synthesis networks at 256 / 512 / 1024 px saved as NVlabs pickles (reduced channel widths,
channel_base 8192 / channel_max 128, as in bench_stylegan.py: a quick mode; ``--full-width`` uses
the official 32768 / 512). StyleGAN renders publish no intermediate image, so there "first frame" is
empty and the card comes straight after the answer.

Baselines in the same run: the display without the worker's wake-up datagram (the store poll alone,
as before), taps alternating with and without it; and the bare generator render (``generator.render``
on the same exhibit settings, no store, no files), measured in this process after the worker stopped.
``--busy`` keeps a playlist piece always queued so a tap arrives while the worker is busy (the demo's
situation); ``--burn N`` adds N CPU-burning processes. The load average is printed before and after.

    python benchmarks/bench_tap.py [--taps 5] [--busy] [--burn 1] [--only tap-default-512] [--full-width]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

from exhibits.show import ShowConfig  # noqa: E402
from exhibits.store import Store  # noqa: E402
from kiosk.display import Display  # noqa: E402
from kiosk.display.loader import POLL_SECONDS  # noqa: E402

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


def start_worker(root: Path, data: Path, exdir: Path, names: list[str], busy: bool) -> subprocess.Popen:
    conf = root / "kiosk.toml"
    # queue_depth 0: no playlist pieces, so every render is a tap's; --busy: one always waiting, as in the demo.
    conf.write_text("[show]\nexhibits = [%s]\nqueue_depth = %d\nplaylist_interval = 0\ndevice = \"cpu\"\n"
                    % (", ".join(f'"{n}"' for n in names), 1 if busy else 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "kiosk", "worker", "--config", str(conf), "--data", str(data),
                             "--exhibit-dir", str(exdir)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(root / "worker.log", "w"), preexec_fn=lambda: os.nice(10))


def _burn(stop) -> None:
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x ^= i * i


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


def tap_once(d: Display, store: Store, timeout: float = 120.0) -> dict:
    """One tap on the real display; ticks its loop until the tap's card is on screen."""
    # a visitor taps once the previous piece is on screen: its crossfade over, nothing else arriving
    while d.tap_job is not None or d.tap_requested or d.tap_follow is not None or d.prev_card is not None \
            or d.dwell_left(d.clock()) > 0:
        d.tick()
    for _ in range(3):
        d.tick()
    # Times are taken when the screen is flipped (``Display._present``), not when ``tick`` returns: a tick ends
    # with the loop's idle wait, which would add the time until the next message to every figure.
    flips: list[tuple[float, str, int | None, int | None]] = []
    present = type(d)._present

    def stamped_present() -> None:
        present(d)
        shown = d.shown.job_id if d.shown is not None else None
        flips.append((time.perf_counter(), d.state, d.frame[0].job_id if d.frame is not None else None, shown))

    d._present = stamped_present
    t0 = time.perf_counter()
    wall0 = time.time()
    d.last_tap = -1e9
    assert d.tap(d.clock())
    job_id = None
    answer = first = card = None
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            d.tick()
            if job_id is None and d.tap_job is not None:
                job_id = d.tap_job
            if job_id is not None and d.shown is not None and d.shown.job_id == job_id:
                break
    finally:
        del d._present
    for at, state, frame_job, shown_job in flips:
        now = at - t0
        if answer is None and state == "making":
            answer = now
        if first is None and job_id is not None and state == "making" and frame_job == job_id:
            first = now
        if card is None and job_id is not None and shown_job == job_id:
            card = now
    if card is None:
        raise SystemExit("a tap did not come back in time")
    piece = store.get_piece(d.card_piece_id)
    return {"answer": answer or card, "first": first, "card": card, "row": piece.created_at - wall0,
            "render": piece.render_seconds or 0.0}


def measure_taps(data: Path, exdir: Path, name: str, taps: int) -> dict[str, dict[str, list]]:
    """``taps`` taps with the wake-up datagram and as many with the store poll alone, alternating."""
    store = Store(data)
    out: dict[str, dict[str, list]] = {}
    displays = {}
    for listen in (True, False):
        cfg = ShowConfig(data_dir=data, exhibit_dirs=(exdir,), exhibits=(name,), tap_exhibit=name,
                         public_url="http://127.0.0.1:8080", fullscreen=False, width=SCREEN[0], height=SCREEN[1],
                         fps=60, crossfade_seconds=1.0, hold_seconds=1000.0, attract_seconds=0,
                         dwell_seconds=0.0)  # taps back to back: the latency, not the dwell policy
        displays[listen] = Display(cfg, data, listen=listen)
    try:
        for listen in (True, False):
            d = displays[listen]
            d.open()
            try:
                tap_once(d, store)  # warm-up: first forward pass of this network in the worker
                runs = [tap_once(d, store) for _ in range(taps)]
            finally:
                d.close()
            out["wake" if listen else "poll"] = {k: [r[k] for r in runs] for k in runs[0]}
    finally:
        store.close()
    return out


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


def ms(values: list) -> str:
    v = [x * 1000 for x in values if x is not None]
    if not v:
        return f"{'-':>7} {'-':>7}"
    return f"{statistics.median(v):7.0f} {max(v):7.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--taps", type=int, default=5, help="timed taps per generator and mode (after one warm-up)")
    ap.add_argument("--full-width", action="store_true", help="official StyleGAN2 channel widths (slow on a CPU)")
    ap.add_argument("--busy", action="store_true", help="keep a playlist piece queued (the worker is busy)")
    ap.add_argument("--burn", type=int, default=0, help="extra CPU-burning processes")
    ap.add_argument("--only", nargs="+", help="only these exhibits (tap-default-512, tap-sg2-256, ...)")
    args = ap.parse_args()
    import multiprocessing as mp

    import torch

    threads = max(1, (os.cpu_count() or 2) - 1)  # what the worker uses (it leaves one core to the display)
    torch.set_num_threads(threads)
    widths = OFFICIAL if args.full_width else REDUCED
    t_start = time.monotonic()
    load_before = os.getloadavg()
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    burners = [ctx.Process(target=_burn, args=(stop,)) for _ in range(args.burn)]
    for b in burners:
        b.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-tap-") as tmp:
            root = Path(tmp)
            data = root / "data"
            store = Store(data)
            exdir, names = write_exhibits(root, widths)
            if args.only:
                names = [n for n in names if n in args.only]
            proc = start_worker(root, data, exdir, names, args.busy)
            results = {}
            try:
                wait_ready(store, names, proc)
                for name in names:
                    results[name] = measure_taps(data, exdir, name, args.taps)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            load_after = os.getloadavg()
            bare = {name: bare_render_seconds(exdir, name, data / "weights", args.taps) for name in names}
    finally:
        stop.set()
        for b in burners:
            b.join(10)
    print(f"tap latency on {os.cpu_count()} CPU cores; worker at nice 10 with {threads} torch thread(s)"
          f"{', a playlist piece always queued' if args.busy else ''}{f', {args.burn} CPU burner(s)' if args.burn else ''};"
          f" StyleGAN2 channel_base/max {widths[0]}/{widths[1]}"
          f"{' (quick mode)' if widths == REDUCED else ''}; display poll {POLL_SECONDS} s, {SCREEN[0]}x{SCREEN[1]},"
          f" SDL {os.environ.get('SDL_VIDEODRIVER')}; {args.taps} taps per mode after a warm-up")
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"{'generator':16s} {'mode':4s} | {'answer ms':>15s} | {'first frame ms':>15s} | {'card ms':>15s} | "
          f"{'row ms':>15s} | {'bare p50':>8s} | {'card/bare':>9s}")
    print(f"{'':21s} | {'p50     max':>15s} | {'p50     max':>15s} | {'p50     max':>15s} | {'p50     max':>15s} |")
    for name in names:
        for mode in ("wake", "poll"):
            r = results[name][mode]
            ratio = statistics.median(r["card"]) / bare[name]
            print(f"{name:16s} {mode:4s} | {ms(r['answer']):>15s} | {ms(r['first']):>15s} | {ms(r['card']):>15s} | "
                  f"{ms(r['row']):>15s} | {bare[name] * 1000:8.0f} | {ratio:9.2f}")
        w, p = results[name]["wake"], results[name]["poll"]
        print(f"{'':16s} poll/wake card p50: {statistics.median(p['card']) / statistics.median(w['card']):.2f}")
    print(f"total {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
