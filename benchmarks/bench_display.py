"""Display cost: CPU of the idle display, and frame times with a busy renderer.

    python benchmarks/bench_display.py [--seconds 10] [--sizes 1280x720,1920x1080]

For each screen size the display runs in this process through ``kiosk.display.run``:

1. idle CPU: an archive of finished pieces, no worker, the hold longer than the run (what a
   quiet gallery shows most of the time). The baseline is the same display with
   ``always_redraw=True``: the loop as it was, drawing and flipping every frame at 60 fps.
   CPU is this process's user+system time (``time.process_time``), loader thread included.
2. fades idle vs busy: a hold of 1.5 s and 1 s crossfades, first with nothing else running,
   then while a separate process plays the worker (claims a job and publishes 512 px JPEG
   progress frames through ``Store.publish_frame`` as fast as it can while burning CPU) and
   another process burns CPU. The display alternates finished pieces and the live view. Frame
   time is the time between two flips of an animation (fades, attract), the frame budget that
   must hold; a still picture is not redrawn at all.

3. a moving piece: one piece whose 512 px latent loop walk (96 frames at 24 fps, the loop walk's
   defaults, H.264 written by the renderer's own ``write_mp4``) plays over its still for the whole
   run, against the same piece as a still (``play_motion = "off"``) in the same run. Frame times are
   the time between two flips of video frames (the video's period is the budget), *late* the share
   over 1.25 periods; CPU per second is this process's, the decoder thread included.

The machine's load average is printed before and after. Uses SDL's dummy video driver unless
``--keep-driver`` is given (then e.g. under ``xvfb-run`` the frames go to a real X server).
"""
from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORKER = "bench-worker"
WARMUP_FRAMES = 10


def _pattern(seed: int, size: int = 512):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    chans = [0.5 + 0.5 * np.sin(rng.uniform(3, 15) * (x + rng.uniform(0, 1) * y) * 6.28 + c) for c in range(3)]
    return Image.fromarray((np.stack(chans, -1) * 255).astype(np.uint8))


def _fill_archive(root: Path, n: int = 6) -> None:
    from exhibits.store import Store

    store = Store(root)
    for i in range(n):
        store.submit("demo", prompt_text=f"benchmark piece {i}", seed=i)
        job = store.claim("filler")
        meta = {"series": "Weights-free demo", "title": f"piece {i}", "generator": "default",
                "label": "weights-free pattern network", "params": {}, "config": {}, "models": {}, "sigma": 1.0 + i}
        store.add_piece(job, "filler", _pattern(i, 768), meta)
    store.close()


def _moving_archive(root: Path, frames: int = 96, fps: int = 24, size: int = 512) -> None:
    """One piece with a loop walk: the screenshot helper's pattern turning once per loop (every frame differs)."""
    from exhibits.store import Store
    from kiosk.display.screenshot import moving_frames
    from renderer.guidance.video import write_mp4

    images = moving_frames(5, frames, size)
    root.mkdir(parents=True, exist_ok=True)
    video = write_mp4(images, root / "walk.mp4", fps)
    store = Store(root)
    store.submit("demo", prompt_text="a latent loop walk", seed=1)
    job = store.claim("filler")
    meta = {"series": "Strange Attractions", "title": "loop walk", "generator": "stylegan_walk",
            "label": "latent loop walk", "params": {}, "config": {}, "models": {}, "sigma": None}
    store.add_piece(job, "filler", images[0], meta, extra_files={"animation": video})
    store.close()
    video.unlink()


def _run_moving(root: Path, size: tuple[int, int], seconds: float, play: str) -> dict:
    from exhibits.show import ShowConfig
    from exhibits.store import Store
    from kiosk.display import run

    cfg = ShowConfig(data_dir=root, fullscreen=False, width=size[0], height=size[1], fps=60, hold_seconds=1e6,
                     crossfade_seconds=0.0, public_url="http://192.168.1.20:8080", attract_seconds=0,
                     play_motion=play)
    store = Store(root)
    try:
        stats = run(cfg, store, max_seconds=seconds)
    finally:
        store.close()
    times = sorted(stats.motion_times[WARMUP_FRAMES:])
    work = sorted(stats.work_times[WARMUP_FRAMES:])
    out = {"cpu_s": stats.cpu_seconds / stats.seconds, "drawn": stats.frames, "loops": stats.ticks,
           "shown": stats.motion_frames, "skipped": stats.motion_skipped, "failed": stats.motion_failed}
    if times:
        n = len(times)
        out.update(mean=1000 * statistics.fmean(times), p99=1000 * times[min(n - 1, round(0.99 * (n - 1)))],
                   worst=1000 * times[-1], late=sum(1 for t in times if t > 1.25 / 24) / n,
                   fps=stats.motion_frames / stats.seconds)
    if work:
        out.update(work_mean=1000 * statistics.fmean(work), work_p99=1000 * work[min(len(work) - 1,
                                                                                    round(0.99 * (len(work) - 1)))])
    return out


def _busy_worker(root: str, stop: "mp.synchronize.Event", nice: int = 0) -> None:
    """Play the renderer: a running job whose progress frame is replaced as fast as possible, plus CPU burn."""
    import numpy as np

    os.nice(nice)

    from exhibits.store import Store

    store = Store(root)
    store.worker_beat(WORKER, state="busy")
    store.submit("demo", prompt_text="a busy renderer", seed=1)
    job = store.claim(WORKER, lease=600)
    step, total = 0, 10_000
    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    while not stop.is_set():
        img = _pattern(step % 50)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        store.publish_frame(job.id, WORKER, buf.getvalue(), step=step % total, total=total, lease=600)
        if step % 20 == 0:
            store.worker_beat(WORKER, state="busy")
        for _ in range(4):  # the "optimisation step"
            a = np.tanh(a @ a.T * 1e-3)
        step += 1
    store.worker_gone(WORKER)
    store.close()


def _burn(stop: "mp.synchronize.Event", nice: int = 0) -> None:
    os.nice(nice)
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x ^= i * i


def _summary(stats) -> dict:
    times = sorted(stats.frame_times[WARMUP_FRAMES:])
    work = sorted(stats.work_times[WARMUP_FRAMES:])
    n = len(times)
    return {
        "frames": n,
        "mean": 1000 * statistics.fmean(times),
        "p99": 1000 * times[min(n - 1, round(0.99 * (n - 1)))],
        "worst": 1000 * times[-1],
        "held60": sum(1 for t in times if t <= 1.25 / 60) / n,
        "under33": sum(1 for t in times if t <= 0.033) / n,
        "work_mean": 1000 * statistics.fmean(work),
        "work_p99": 1000 * work[min(n - 1, round(0.99 * (n - 1)))],
        "states": ",".join(stats.states_visited),
    }


def _run_display(root: Path, size: tuple[int, int], seconds: float, *, hold: float = 1.5,
                 always_redraw: bool = False, fade: float = 1.0) -> dict:
    from exhibits.show import ShowConfig
    from exhibits.store import Store
    from kiosk.display import run

    cfg = ShowConfig(data_dir=root, fullscreen=False, width=size[0], height=size[1], fps=60, hold_seconds=hold,
                     crossfade_seconds=fade, public_url="http://192.168.1.20:8080", attract_seconds=0)
    store = Store(root)
    try:
        stats = run(cfg, store, max_seconds=seconds, always_redraw=always_redraw)
    finally:
        store.close()
    out = _summary(stats) if len(stats.frame_times) > WARMUP_FRAMES else {}
    out.update(cpu=stats.cpu_seconds, wall=stats.seconds, drawn=stats.frames, loops=stats.ticks,
               cpu_frame=1000 * stats.cpu_seconds / max(1, stats.frames))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="display CPU when idle, frame times idle vs busy")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per run (default 10)")
    ap.add_argument("--sizes", default="1280x720,1920x1080")
    ap.add_argument("--worker-nice", type=int, default=10,
                    help="niceness of the busy processes (default 10, as the systemd unit and the demo give the worker)")
    ap.add_argument("--keep-driver", action="store_true", help="do not force SDL_VIDEODRIVER=dummy")
    ap.add_argument("--only", choices=("all", "moving"), default="all", help="moving: the moving-piece case alone")
    args = ap.parse_args(argv)
    if not args.keep_driver:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    ctx = mp.get_context("spawn")
    rows = []
    moving = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            root = Path(tmp) / f"moving-{size[0]}x{size[1]}"
            _moving_archive(root)
            load = os.getloadavg()[0]
            still = _run_moving(root, size, args.seconds, "off")
            plays = _run_moving(root, size, args.seconds, "loop")
            moving.append((size, "idle", still, plays, load, os.getloadavg()[0]))
            stop = ctx.Event()
            procs = [ctx.Process(target=_busy_worker, args=(str(root), stop, args.worker_nice)),
                     ctx.Process(target=_burn, args=(stop, args.worker_nice))]
            for p in procs:
                p.start()
            time.sleep(1.0)
            load = os.getloadavg()[0]
            try:
                still = _run_moving(root, size, args.seconds, "off")
                plays = _run_moving(root, size, args.seconds, "loop")
            finally:
                stop.set()
                for p in procs:
                    p.join(10)
            moving.append((size, "busy", still, plays, load, os.getloadavg()[0]))
        for size in sizes if args.only == "all" else ():
            root = Path(tmp) / f"{size[0]}x{size[1]}"
            _fill_archive(root)
            still_old = _run_display(root, size, args.seconds, hold=1e6, fade=0.0, always_redraw=True)
            still_new = _run_display(root, size, args.seconds, hold=1e6, fade=0.0)
            idle = _run_display(root, size, args.seconds)
            stop = ctx.Event()
            procs = [ctx.Process(target=_busy_worker, args=(str(root), stop, args.worker_nice)),
                     ctx.Process(target=_burn, args=(stop, args.worker_nice))]
            for p in procs:
                p.start()
            time.sleep(1.0)  # let the worker publish its first frames
            try:
                busy = _run_display(root, size, args.seconds)
            finally:
                stop.set()
                for p in procs:
                    p.join(10)
            rows.append((size, still_old, still_new, idle, busy))
    load_after = os.getloadavg()
    print(f"display cost, 60 fps target, {args.seconds:g} s per run, {os.cpu_count()} CPUs, "
          f"SDL driver {os.environ.get('SDL_VIDEODRIVER', 'default')}, busy processes at nice {args.worker_nice}")
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print()
    print("a moving piece: 512 px loop walk, 96 frames at 24 fps (period 41.7 ms), vs the same piece as a still")
    print("busy: a process playing the worker (progress frames into the store) and a CPU burner, both at nice "
          f"{args.worker_nice}")
    head = (f"{'size':>10} {'run':>5} {'shown/s':>7} {'mean ms':>8} {'p99 ms':>7} {'worst ms':>8} {'late':>6} {'skipped':>7} "
            f"{'work mean':>9} {'work p99':>8} {'cpu/s still':>11} {'cpu/s moving':>12} {'ratio':>6}  load 1 min")
    print(head)
    print("-" * len(head))
    for size, run_name, still, plays, l0, l1 in moving:
        if "mean" not in plays:
            print(f"{size[0]}x{size[1]:<5} {run_name:>5} (no video frames shown; failed={plays['failed']})")
            continue
        print(f"{size[0]}x{size[1]:<5} {run_name:>5} {plays['fps']:>7.1f} {plays['mean']:>8.2f} {plays['p99']:>7.2f} "
              f"{plays['worst']:>8.2f} {plays['late']:>6.1%} {plays['skipped']:>7} {plays['work_mean']:>9.2f} "
              f"{plays['work_p99']:>8.2f} {still['cpu_s']:>11.3f} {plays['cpu_s']:>12.3f} "
              f"{plays['cpu_s'] / max(still['cpu_s'], 1e-9):>6.1f}  {l0:.2f} -> {l1:.2f}")
    if not rows:
        return 0
    print()
    print("idle display (finished piece on screen, no worker): CPU seconds per wall second")
    print(f"{'size':>10} {'redraw every frame':>19} {'redraw on change':>17} {'ratio':>7}  frames drawn (old / new)")
    for size, old, new, _, _ in rows:
        a, b = old["cpu"] / old["wall"], new["cpu"] / new["wall"]
        print(f"{size[0]}x{size[1]:<5} {a:>19.3f} {b:>17.3f} {a / max(b, 1e-9):>7.1f}  {old['drawn']} / {new['drawn']}")
    print()
    print("frame times during fades and the live view (between flips of an animation); cpu ms/frame: this"
          " process's CPU per drawn frame, which a loaded machine does not inflate")
    head = (f"{'size':>10} {'run':>5} {'frames':>6} {'mean ms':>8} {'p99 ms':>7} {'worst ms':>8} {'held 60':>7} "
            f"{'<33ms':>6} {'work mean':>9} {'work p99':>8} {'cpu/s':>6} {'cpu ms/frame':>12}  states")
    print(head)
    print("-" * len(head))
    for size, _, _, idle, busy in rows:
        for name, r in (("idle", idle), ("busy", busy)):
            if "mean" not in r:
                print(f"{size[0]}x{size[1]:<5} {name:>5} (no animation frames)")
                continue
            print(f"{size[0]}x{size[1]:<5} {name:>5} {r['frames']:>6} {r['mean']:>8.2f} {r['p99']:>7.2f} "
                  f"{r['worst']:>8.2f} {r['held60']:>7.1%} {r['under33']:>6.1%} {r['work_mean']:>9.2f} "
                  f"{r['work_p99']:>8.2f} {r['cpu'] / r['wall']:>6.2f} {r['cpu_frame']:>12.2f}  {r['states']}")
        if "mean" in idle and "mean" in busy:
            print(f"{'':>10} {'ratio':>5} {'':>6} {busy['mean'] / idle['mean']:>8.2f} {busy['p99'] / idle['p99']:>7.2f} "
                  f"{busy['worst'] / idle['worst']:>8.2f}   busy/idle")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
