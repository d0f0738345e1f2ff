"""Speed of the weights-free default generator on the CPU.

    python benchmarks/bench_default.py [--sizes 512,1024] [--threads 0,1] [--first-frame-repeats 5]

First, the tap to first frame: the generator's own time from a request to its first frame at
512 px (built and rendered in fresh worker processes, then the next tap); the display's and the
worker's signalling around it is measured by ``bench_tap.py``.

For each image size and torch thread count, renders through the generator
(float32 and under bfloat16 autocast) and through the plain NumPy reference of
the same network (one image row at a time, nothing folded or fused), followed
by the same colouring, and prints images per second with the ratio against the
reference.  Timings are medians (and best) of a few renders; on a shared
machine the best is the steadier number.  ``--threads 0`` means torch's default.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from renderer.base import RenderContext, RenderRequest  # noqa: E402
from renderer.device import describe  # noqa: E402
from renderer.generators import default as dg  # noqa: E402

SIGMA = 1.5


def timed(fn: Callable[[int], object], repeats: int, warm_up: bool = True) -> tuple[float, float]:
    if warm_up:
        fn(0)  # thread pools, caches, the network's first build
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i + 1)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def reference_render(net: dg.PatternNet, settings: dg.Settings, seed: int, size: int) -> object:
    ws = dg.sample_ws(seed, settings.num_ws, SIGMA)
    raw = torch.from_numpy(dg.reference_forward(net, ws, size, size)).float()
    return dg.to_image(dg.colourise(raw, seed, settings.palette), size, size)


def bench(sizes: list[int], threads: list[int]) -> list[tuple]:
    rows = []
    default_threads = torch.get_num_threads()
    render_threads = dg.RENDER_THREADS
    settings = dg.parse_settings({})
    net = dg.build_network(settings)
    for n in threads:
        torch.set_num_threads(n or default_threads)
        nthreads = torch.get_num_threads()
        dg.RENDER_THREADS = nthreads  # the generator's own setting, for this row
        for size in sizes:
            fast_repeats, ref_repeats = (4, 1) if size <= 512 else (2, 1)

            def ref(i: int, size: int = size) -> object:
                return reference_render(net, settings, i, size)

            ref_med, ref_best = timed(ref, ref_repeats, warm_up=False)  # NumPy has nothing to warm
            for label, dtype in (("torch float32", torch.float32), ("torch bf16 autocast", torch.bfloat16)):
                ctx = RenderContext(device=torch.device("cpu"), dtype=dtype, weights_dir=Path("."), work_dir=Path("."))
                gen = dg.DefaultGenerator({}, ctx)

                def fast(i: int, size: int = size, gen: dg.DefaultGenerator = gen, ctx: RenderContext = ctx) -> object:
                    req = RenderRequest(0, "bench", "default", (), i, size, size, {"sigma": SIGMA})
                    return gen.render(req, ctx)

                med, best = timed(fast, fast_repeats)
                rows.append((nthreads, size, label, med, best, ref_med / med, ref_best / best))
            rows.append((nthreads, size, "numpy reference (per row)", ref_med, ref_best, 1.0, 1.0))
    torch.set_num_threads(default_threads)
    dg.RENDER_THREADS = render_threads
    return rows


_FIRST_FRAME = r"""
import json, os, sys, time
t0 = time.perf_counter()
import torch
from pathlib import Path
from renderer.base import RenderContext, RenderRequest
from renderer.generators import default as dg
imported = time.perf_counter() - t0
size, seed = int(sys.argv[1]), int(sys.argv[2])
ctx = RenderContext(device=torch.device("cpu"), dtype=torch.bfloat16, weights_dir=Path("."), work_dir=Path("."))
frames = []
ctx.progress = lambda info: frames.append(time.perf_counter()) if "image" in info else None
t = time.perf_counter()
gen = dg.DefaultGenerator({}, ctx)
built = time.perf_counter() - t
t1 = time.perf_counter()
gen.render(RenderRequest(0, "tap", "default", (), seed, size, size, {"sigma": 1.5}), ctx)
cold, first = frames[-1] - t, frames[-1] - t1
t = time.perf_counter()
gen.render(RenderRequest(1, "tap", "default", (), seed + 1, size, size, {"sigma": 1.5}), ctx)
warm = frames[-1] - t
print(json.dumps({"import": imported, "built": built, "cold": cold, "first": first, "warm": warm,
                  "load": os.getloadavg()[0]}))
"""


def first_frame(size: int, repeats: int) -> list[dict]:
    """The generator's own time from a tap's request to its first frame, in fresh worker processes.

    ``built``: the generator's construction (the worker does it at start-up, before it says it is
    ready); ``first``: the first tap's picture after that; ``cold``: both together, in a process that
    has only imported torch and the renderer; ``warm``: the next tap's picture.
    """
    import json
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = []
    for i in range(repeats):
        res = subprocess.run([sys.executable, "-c", _FIRST_FRAME, str(size), str(100 + i)], capture_output=True,
                             text=True, env=env, check=True, timeout=300)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def check_agreement() -> float:
    settings = dg.parse_settings({"sigma": SIGMA})
    net = dg.build_network(settings)
    ws = dg.sample_ws(1, settings.num_ws, SIGMA)
    fast = dg.forward(net, ws, 128, 96).numpy()
    return float(np.abs(fast - dg.reference_forward(net, ws, 128, 96)).max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--threads", default="0,1", help="comma-separated torch thread counts; 0 = default")
    parser.add_argument("--first-frame-repeats", type=int, default=5, help="fresh processes for tap to first frame")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    print(f"device: {describe(torch.device('cpu'))}, torch {torch.__version__}, sigma {SIGMA}")
    print(f"fast vs reference raw outputs, max abs difference: {check_agreement():.2e}")
    ff = first_frame(512, args.first_frame_repeats)
    med = {k: statistics.median(r[k] for r in ff) for k in ("import", "built", "cold", "first", "warm", "load")}
    print(f"tap to first frame at 512 px, the generator's own time (median of {len(ff)} fresh worker processes): "
          f"first tap {med['first'] * 1e3:.0f} ms (after the worker built the generator at start-up, "
          f"{med['built'] * 1e3:.0f} ms), next tap {med['warm'] * 1e3:.0f} ms, built + first "
          f"{med['cold'] * 1e3:.0f} ms; goal < 150 ms; [torch + renderer import at worker start-up: "
          f"{med['import']:.2f} s]; load {med['load']:.2f}")
    rows = bench(sizes, threads)
    head = f"{'threads':>7} {'size':>5}  {'implementation':<26} {'median s':>9} {'best s':>8} {'img/s':>7} {'x ref (med)':>11} {'x ref (best)':>12}"
    print(head)
    print("-" * len(head))
    for nthreads, size, label, med, best, ratio_med, ratio_best in rows:
        print(f"{nthreads:>7} {size:>5}  {label:<26} {med:>9.3f} {best:>8.3f} {1 / med:>7.2f} {ratio_med:>11.1f} {ratio_best:>12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
