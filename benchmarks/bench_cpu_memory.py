"""Freed memory kept for the next step (``renderer.cpu_memory``) against glibc's defaults, at real size.

A stand-in for the worker's day: pieces of two series in turn, each piece several steps of real-size
work with random weights --

- Doorways: the ``vqgan_imagenet_f16_16384`` decoder's forward + backward at 512x512 (channels-last,
  float32), the bulk of a Doorways step;
- Strange Attractions: official-size StyleGAN2 synthesis at 512 px, batch 1 (float32, no grad).

Each mode runs in a child process of its own (the malloc settings are per process), alternately:
``system`` is glibc's defaults; ``reuse`` is what the worker does (``reuse_freed_memory`` at start,
``release_freed_memory`` before a piece of the other series and at the end, as when it goes idle).
Per piece it prints the median step time, the kernel (system) CPU time and page faults of its steps,
and the resident memory after the piece, so that memory held over a long run shows as a trend.

    python benchmarks/bench_cpu_memory.py [--pieces 6] [--steps 3] [--sg-steps 4]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(mode: str, pieces: int, steps: int, sg_steps: int) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch

    from renderer import cpu_memory
    from bench_stylegan import official_net, OFFICIAL, W_DIM
    from renderer.vqgan_clip.vqgan import VQGAN, VQGANConfig
    from bench_doorways import F16_DDCONFIG

    if mode == "reuse" and not cpu_memory.reuse_freed_memory():
        raise SystemExit("this C library is not glibc: nothing to compare")
    torch.manual_seed(0)
    vq = VQGAN(VQGANConfig(ddconfig=dict(F16_DDCONFIG), n_embed=16384, embed_dim=256)).eval().requires_grad_(False)
    vq.to(memory_format=torch.channels_last)
    z = vq.random_latent(512, 512, torch.Generator().manual_seed(0)).requires_grad_(True)
    sg = official_net(512, OFFICIAL, seed=512).eval().requires_grad_(False)
    ws = torch.randn(1, sg.num_ws, W_DIM, generator=torch.Generator().manual_seed(1))

    def doorways() -> None:
        vq.synth(z).float().sum().backward()

    def attractions() -> None:
        with torch.no_grad():
            sg(ws)

    work = {"doorways": (doorways, steps), "attractions": (attractions, sg_steps)}
    last = None
    for i in range(pieces):
        series = ("doorways", "attractions")[i % 2]
        if mode == "reuse" and last not in (None, series):
            cpu_memory.release_freed_memory()  # as the worker does before a piece of another exhibit
        last = series
        fn, n = work[series]
        times = []
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps(dict(mode=mode, piece=i, series=series, step_s=statistics.median(times),
                              sys_s=r1.ru_stime - r0.ru_stime, user_s=r1.ru_utime - r0.ru_utime,
                              faults=r1.ru_minflt - r0.ru_minflt, rss_mb=cpu_memory.resident_bytes() >> 20, load=os.getloadavg()[0])),
              flush=True)
    if mode == "reuse":
        cpu_memory.release_freed_memory()
    print(json.dumps(dict(mode=mode, end=True, rss_mb=cpu_memory.resident_bytes() >> 20,
                          peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10)), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pieces", type=int, default=6, help="pieces per mode, the two series in turn")
    ap.add_argument("--steps", type=int, default=3, help="decoder steps per Doorways piece")
    ap.add_argument("--sg-steps", type=int, default=4, help="syntheses per Strange Attractions piece")
    ap.add_argument("--child", choices=("system", "reuse"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.pieces, args.steps, args.sg_steps)
        return
    import torch

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}  # as the worker runs when reusing
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"THP_MEM_ALLOC_ENABLE unset in both; {args.pieces} pieces per mode, Doorways {args.steps} steps, "
          f"Strange Attractions {args.sg_steps} syntheses")
    print(f"{'mode':>7} {'piece':>5} {'series':>12} {'step s':>7} {'sys s':>6} {'user s':>7} {'faults':>9} "
          f"{'RSS after MB':>12} {'load':>5}")
    summary: dict[str, dict[str, list[float]]] = {}
    for mode in ("system", "reuse"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--pieces", str(args.pieces), "--steps",
                              str(args.steps), "--sg-steps", str(args.sg_steps)], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=3600)
        if out.returncode != 0:
            raise SystemExit(f"the {mode} run failed:\n{out.stderr[-2000:]}")
        for line in out.stdout.splitlines():
            row = json.loads(line)
            if row.get("end"):
                print(f"{mode:>7} end: resident {row['rss_mb']} MB after the last hand-back, peak {row['peak_mb']} MB")
                continue
            print(f"{mode:>7} {row['piece']:>5} {row['series']:>12} {row['step_s']:>7.2f} {row['sys_s']:>6.2f} "
                  f"{row['user_s']:>7.2f} {row['faults']:>9} {row['rss_mb']:>12} {row['load']:>5.2f}", flush=True)
            summary.setdefault(mode, {}).setdefault(row["series"], []).append(row["step_s"])
    for series in ("doorways", "attractions"):
        s, r = statistics.median(summary["system"][series]), statistics.median(summary["reuse"][series])
        print(f"{series}: median step {s:.3f} s with glibc's defaults, {r:.3f} s reused: {s / r:.2f}x")


if __name__ == "__main__":
    main()
