"""The GPU paths of renderer.accel at real size: eager, autocast, float16 loss scaling, torch.compile modes, CUDA graphs.

Two kinds of work on an official-size StyleGAN2 synthesis network (channel_base 32768, channel_max 512,
conv_clamp 256, random weights, built as ``bench_stylegan.py`` builds it):

* synthesis (inference, ``noise_mode="const"``): eager float32, bfloat16 and float16 autocast, each
  ``torch.compile`` mode, and replay from a CUDA graph (``accel.synthesis_runner``, as the stylegan
  generator's ``cuda_graphs`` setting runs it, copy of the output included);
* a guidance step (``ws`` optimised by Adam towards a target image, as StyleGAN+CLIP steers W+):
  eager float32, bfloat16 autocast, float16 autocast with the loss scaler (``accel.LossScaling``, as the
  guidance loop runs it), and float32 compiled with mode ``default``.

For each: seconds per call (median of interleaved rounds after a warm-up, whose time -- compilation,
capture -- is printed apart), the ratio to eager float32 (> 1 is faster), peak memory of one call (CUDA:
the allocator's peak above what was allocated before; CPU: peak RSS growth, sampled), and the largest
absolute difference of the image from eager float32's (images are about -1..1).  Paths that need CUDA
print "cuda only" on the CPU; a compile that failed prints why instead of a time.

    python benchmarks/bench_gpu_paths.py [--device cuda] [--quick] [--resolutions 256,512,1024] [--batch 1]
        [--rounds 3] [--compile-modes default,reduce-overhead,max-autotune] [--no-step]

``--quick``: reduced widths (channel_base 8192, channel_max 128), 256 px, labelled as such on every line.
On the CPU, ``reduce-overhead`` is inductor without CUDA graphs, and compiling takes minutes at full size.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_doorways import PeakMemory  # noqa: E402
from bench_stylegan import OFFICIAL, QUICK, W_DIM, official_net, sync  # noqa: E402

from renderer import accel  # noqa: E402
from renderer.device import describe  # noqa: E402


class Run:
    """One way of running the work: a callable, and whether it runs here (``skip`` says why not)."""

    def __init__(self, name: str, fn: Callable[[], torch.Tensor] | None, skip: str = "",
                 compiled: accel.Compiled | None = None, note: Callable[[], str] = lambda: "") -> None:
        self.name, self.fn, self.skip, self.compiled, self.note = name, fn, skip, compiled, note
        self.first_s = 0.0
        self.times: list[float] = []
        self.peak = 0
        self.diff: float | None = None


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def measure(paths: list[Run], rounds: int, device: torch.device, mem: PeakMemory) -> list[float]:
    """Warm-up (timed apart), the difference from the first path's image, interleaved rounds, then peak memory."""
    live = [p for p in paths if not p.skip]
    ref = None
    for p in live:
        sync(device)
        t = time.perf_counter()
        out = p.fn()
        sync(device)
        p.first_s = time.perf_counter() - t
        if p.compiled is not None and not p.compiled.active:
            p.skip = f"compile failed, not timed: {p.compiled.failure}"
            continue
        out = out.detach().float().clone()
        if ref is None:
            ref = out
        p.diff = float((out - ref).abs().max())
        del out
    live = [p for p in live if not p.skip]
    loads = []
    for _ in range(rounds):
        for p in live:
            sync(device)
            t = time.perf_counter()
            p.fn()
            sync(device)
            p.times.append(time.perf_counter() - t)
            loads.append(os.getloadavg()[0])
    for p in live:
        base = mem.start()
        p.fn()
        p.peak = mem.stop() - base
    return loads


def report(title: str, paths: list[Run], loads: list[float], quick: str) -> None:
    print(f"\n{title}{quick}")
    print(f"  {'path':<28} {'s/call':>9} {'vs fp32':>8} {'peak MiB':>9} {'max |d|':>9} {'first call s':>13}  note")
    eager = statistics.median(paths[0].times) if paths[0].times else None
    for p in paths:
        if p.skip:
            print(f"  {p.name:<28} {p.skip}")
            continue
        med = statistics.median(p.times)
        ratio = f"{eager / med:.2f}x" if eager else "-"
        print(f"  {p.name:<28} {med:>9.4f} {ratio:>8} {p.peak / 2**20:>9.1f} {p.diff:>9.2e} {p.first_s:>13.2f}  "
              f"{p.note()}")
    if loads:
        print(f"  load average {statistics.median(loads):.2f} ({min(loads):.1f}-{max(loads):.1f}) during the rounds")


def compile_path(name: str, fn: Callable[..., torch.Tensor], mode: str, device: torch.device,
                 call: Callable[[Callable[..., torch.Tensor]], torch.Tensor]) -> Run:
    c = accel.Compiled(fn, mode, name=name)

    def run() -> torch.Tensor:
        if mode == "reduce-overhead" and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # each call a new step: outputs of the last may be reused
        return call(c)

    note = (lambda: "on the CPU: no CUDA graphs, the same code as default") \
        if mode == "reduce-overhead" and device.type != "cuda" else (lambda: "")
    return Run(f"compile {mode}", run, compiled=c, note=note)


def synthesis_paths(net: torch.nn.Module, ws: torch.Tensor, device: torch.device, modes: list[str]) -> list[Run]:
    def under(dtype: torch.dtype | None) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad(), autocast(device, dtype):
                return net(ws, noise_mode="const")
        return run

    paths = [Run("eager fp32", under(None)), Run("autocast bf16", under(torch.bfloat16)),
             Run("autocast fp16", under(torch.float16))]
    for mode in modes:
        def call(c: Callable[..., torch.Tensor]) -> torch.Tensor:
            with torch.no_grad():
                return c(ws, noise_mode="const")
        paths.append(compile_path(mode, net, mode, device, call))
    if device.type == "cuda":
        runner = accel.synthesis_runner(net, "const")
        paths.append(Run("CUDA graphs (fp32)", lambda: runner(ws),
                           note=lambda: f"{runner.captures} capture(s); output copied out of the static buffer"))
    else:
        paths.append(Run("CUDA graphs (fp32)", None, skip="cuda only"))
    return paths


class GuidanceStep:
    """One step of steering W+: synthesis, loss against a target, backward, Adam (loss scaled under float16)."""

    def __init__(self, fn: Callable[..., torch.Tensor], ws0: torch.Tensor, target: torch.Tensor,
                 amp: torch.dtype | None, device: torch.device) -> None:
        self.fn, self.target, self.amp, self.device = fn, target, amp, device
        self.ws = ws0.clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.ws], lr=0.01)
        self.scaling = accel.LossScaling(device, amp)
        self.steps = self.skipped = 0

    def __call__(self) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp):
            img = self.fn(self.ws, noise_mode="const")
        loss = (img.float() - self.target).square().mean()
        self.steps += 1
        if not self.scaling.step(loss, self.opt):
            self.skipped += 1
        return img

    def note(self) -> str:
        if not self.scaling.enabled:
            return ""
        text = f"loss scale {self.scaling.scale:g}, {self.skipped} of {self.steps} steps skipped"
        if self.device.type == "cpu":
            text += "; float16 backward is slow on the CPU (the path is for CUDA)"
        return text


def step_paths(net: torch.nn.Module, ws: torch.Tensor, device: torch.device, compile_step: bool) -> list[Run]:
    with torch.no_grad():
        target = net(torch.randn(ws.shape, generator=torch.Generator().manual_seed(99)).to(device)).clamp(-1, 1)
    paths = []
    for name, amp in (("eager fp32", None), ("autocast bf16", torch.bfloat16),
                      ("autocast fp16 + loss scaler", torch.float16)):
        step = GuidanceStep(net, ws, target, amp, device)
        paths.append(Run(name, step, note=step.note))
    if compile_step:
        c = accel.Compiled(net, "default", name="synthesis (training)")
        step = GuidanceStep(c, ws, target, None, device)
        paths.append(Run("compile default (fp32)", step, compiled=c))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--quick", action="store_true", help="reduced widths, 256 px (labelled quick)")
    ap.add_argument("--resolutions", default="", help="e.g. 256,512 (default 256,512,1024; quick 256)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile-modes", default="default,reduce-overhead,max-autotune",
                    help="torch.compile modes for synthesis, comma-separated; '' for none")
    ap.add_argument("--no-step", action="store_true", help="skip the guidance-step table")
    ap.add_argument("--no-step-compile", action="store_true", help="guidance step without the compiled row")
    args = ap.parse_args()
    import torch._dynamo

    device = torch.device(args.device)
    # Each compile mode adds its own cache entries to the same code objects (and a graph break splits the
    # network into per-block frames): without room for them all, dynamo stops compiling and runs them eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    modes = [m for m in args.compile_modes.split(",") if m]
    for m in modes:
        if m not in accel.COMPILE_MODES or m == "off":
            ap.error(f"--compile-modes: {m!r}; allowed: {', '.join(accel.COMPILE_MODES[1:])}")
    widths = QUICK if args.quick else OFFICIAL
    quick = "  [quick: reduced width]" if args.quick else ""
    resolutions = [int(r) for r in args.resolutions.split(",")] if args.resolutions else \
        ([256] if args.quick else [256, 512, 1024])
    print(f"GPU paths on StyleGAN2, channel_base {widths['channel_base']} channel_max {widths['channel_max']} "
          f"({'QUICK MODE, not the official size' if args.quick else 'official size'}), batch {args.batch}; "
          f"device {describe(device)}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.2f} at the start")
    mem = PeakMemory(device)
    try:
        for res in resolutions:
            net = official_net(res, widths, seed=res).to(device)
            ws = torch.randn(args.batch, net.num_ws, W_DIM, generator=torch.Generator().manual_seed(1)).to(device)
            paths = synthesis_paths(net, ws, device, modes)
            loads = measure(paths, args.rounds, device, mem)
            report(f"synthesis {res} px, batch {args.batch} (inference, noise const)", paths, loads, quick)
            if not args.no_step:
                paths = step_paths(net, ws, device, not args.no_step_compile)
                loads = measure(paths, args.rounds, device, mem)
                report(f"guidance step {res} px, batch {args.batch} (synthesis forward+backward, Adam on W+)",
                       paths, loads, quick)
            del net, paths
            torch._dynamo.reset()
    finally:
        mem.close()
    print(f"\nmedians of {args.rounds} interleaved rounds after one warm-up each (first call s: that warm-up, "
          "compilation or capture included); vs fp32 = eager fp32 s / path s; max |d| against eager fp32's image "
          "(step: the first step's image, from the same W+)")


if __name__ == "__main__":
    main()
